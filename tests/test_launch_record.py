"""How a run was started (issue 12 item 6): env.json and on_start's `launch` section, from real runs."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from thesis_lib.cli import main
from thesis_lib.config import config_origin, load_config
from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import read_events
from thesis_lib.record.launch import describe_launch
from thesis_lib.sweep import sweep
from thesis_lib.workflow import train

TINY_MODEL = {"encoder": "mlp", "bottleneck": "identity", "latent_dim": 8, "hidden_dim": 16, "num_layers": 1,
              "token_embed_dim": 4}
JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NAME",
                 "SLURM_NODELIST", "SLURM_JOB_NODELIST", "SLURM_PROCID", "_CONDOR_JOB_AD", "CONDOR_ID", "_CONDOR_SLOT",
                 "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "events.h5"
    make_synthetic_events(path, n_events=600, seed=0, n_tokens=6)
    return path


@pytest.fixture(autouse=True)
def no_job_environment(monkeypatch):
    """The tests' own batch system (a CI job under SLURM) must not leak into what they check."""
    for name in JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _config(events, tmp_path):
    return {
        "output_root": str(tmp_path / "outputs"),
        "run_name": "launch",
        "data": {"path": str(events), "batch_size": 128},
        "model": dict(TINY_MODEL),
        "trainer": {"epochs": 1, "seed": 1, "test": False},
        "telemetry": {"enabled": False},
        "report": {"enabled": False},
    }


def _yaml_config(events, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(_config(events, tmp_path)))
    return path


def _launch(run_dir):
    env = json.loads((Path(run_dir) / "env.json").read_text())
    start = next(e for e in read_events(run_dir) if e["moment"] == "on_start")
    assert start["launch"] == env["launch"]  # one dict, two places
    return env["launch"]


def test_a_run_records_argv_overrides_and_its_yaml_config(events, tmp_path):
    path = _yaml_config(events, tmp_path)
    result = train(str(path), ["model.latent_dim=4", "trainer.seed=7"], dashboard=None)
    launch = _launch(result.run_dir)
    assert launch["argv"] == sys.argv
    assert launch["overrides"] == ["model.latent_dim=4", "trainer.seed=7"]
    assert launch["config_source"] == {"kind": "yaml", "path": str(path), "resolved": str(path.resolve())}
    assert launch["executor"] == "direct"
    for absent in ("slurm", "htcondor", "torchrun", "sweep_dir", "sweep_point", "notebook", "errors"):
        assert absent not in launch, absent
    # config.yaml stays the resolved config: the provenance is not in it
    written = yaml.safe_load((Path(result.run_dir) / "config.yaml").read_text())
    assert written == load_config(str(path), ["model.latent_dim=4", "trainer.seed=7"]).to_dict()
    assert "launch" not in written and "_origin" not in json.dumps(written)
    assert written["model"]["latent_dim"] == 4


def test_job_ids_of_slurm_htcondor_and_torchrun_are_recorded(events, tmp_path, monkeypatch):
    ad = tmp_path / ".job.ad"
    ad.write_text('ClusterId = 4242\nProcId = 3\nNumJobStarts = 2\nGlobalJobId = "sched#4242.3#1700000000"\n'
                  'Owner = "someone"\n')
    fake = {"SLURM_JOB_ID": "991", "SLURM_ARRAY_JOB_ID": "990", "SLURM_ARRAY_TASK_ID": "5",
            "SLURM_RESTART_COUNT": "1", "SLURM_JOB_NAME": "thesis", "SLURM_NODELIST": "gpu[01-02]",
            "_CONDOR_JOB_AD": str(ad), "CONDOR_ID": "4242.3",
            "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "gpu01", "TORCHELASTIC_RESTART_COUNT": "0"}
    for name, value in fake.items():
        monkeypatch.setenv(name, value)
    # WORLD_SIZE stays unset: >1 would start DDP; torchrun's other variables are read alone
    result = train(_config(events, tmp_path), ["trainer.seed=2"], dashboard=None)
    launch = _launch(result.run_dir)
    assert launch["slurm"] == {k: v for k, v in fake.items() if k.startswith("SLURM_")}
    assert launch["htcondor"] == {"CONDOR_ID": "4242.3", "job_ad": str(ad), "ClusterId": 4242, "ProcId": 3,
                                  "NumJobStarts": 2, "GlobalJobId": "sched#4242.3#1700000000"}
    assert launch["torchrun"] == {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "gpu01",
                                  "TORCHELASTIC_RESTART_COUNT": "0"}
    assert launch["config_source"] == {"kind": "dict"} and launch["overrides"] == ["trainer.seed=2"]


def test_an_unreadable_job_ad_is_named_not_raised(tmp_path):
    launch = describe_launch(None, environ={"_CONDOR_JOB_AD": str(tmp_path / "gone.ad")}, argv=["x"])
    assert launch["htcondor"] == {"job_ad": str(tmp_path / "gone.ad")}
    assert "gone.ad" in launch["errors"]["htcondor"]
    assert launch["argv"] == ["x"] and launch["executor"] == "direct" and launch["config_source"] is None


def test_cli_train_records_its_argv_and_overrides(events, tmp_path, monkeypatch, capsys):
    path = _yaml_config(events, tmp_path)
    argv = ["thesis-lib", "train", "--config", str(path), "model.hidden_dim=8", "trainer.seed=5"]
    monkeypatch.setattr(sys, "argv", argv)
    assert main(argv[1:]) == 0
    capsys.readouterr()
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    launch = _launch(run_dir)
    assert launch["argv"] == argv
    assert launch["overrides"] == ["model.hidden_dim=8", "trainer.seed=5"]
    assert launch["config_source"]["kind"] == "yaml" and launch["config_source"]["path"] == str(path)
    assert launch["executor"] == "direct"


def test_an_inline_sweep_point_records_the_executor_sweep_and_point(events, tmp_path, capsys):
    result = sweep(_config(events, tmp_path), {"model.latent_dim": [4]}, [1], name="prov", executor="inline")
    capsys.readouterr()
    (point,) = result.points
    assert point.status == "COMPLETED"
    launch = _launch(point.run_dir)
    assert launch["executor"] == "inline"
    assert launch["sweep_dir"] == str(result.sweep_dir)
    assert launch["sweep_point"] == point.name
    assert launch["config_source"] == {"kind": "dict"}


def test_origin_follows_the_config_through_load_config_and_never_into_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_name: a\n")
    first = load_config(path, ["trainer.seed=3"])
    again = load_config(first, {"run_name": "b"})
    assert config_origin(again) == {"config_source": {"kind": "yaml", "path": str(path),
                                                      "resolved": str(path.resolve())},
                                    "overrides": ["trainer.seed=3", {"run_name": "b"}]}
    assert config_origin(load_config()) == {"config_source": {"kind": "default"}, "overrides": []}
    assert again.to_dict() == load_config({"run_name": "b", "trainer": {"seed": 3}}).to_dict()
