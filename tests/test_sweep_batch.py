"""Sweeps as batch jobs (executor="slurm" / "htcondor", thesis_lib.sweep.batch_jobs) without a batch system.

The executor options are checked before anything is written, the job scripts dask-jobqueue builds
from them carry the directives they should (the dry run), the CLI's flags map onto the options
and refuse the ones the chosen batch system has no use for, and a sweep whose jobs the batch
system refuses stops with the batch system's own message, its options recorded in sweep.yaml.
The refusal is played by a stand-in `sbatch` on PATH; a real cluster is in test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_sweep import data_path, tiny_base  # noqa: F401  (the sweep tests' data and tiny base config)

from thesis_lib.cli import main as cli_main
from thesis_lib.errors import ConfigError
from thesis_lib.sweep import EXECUTORS, sweep
from thesis_lib.sweep.batch_jobs import BATCH_OPTIONS, check_options, job_script

pytest.importorskip("dask_jobqueue")  # the [dev] extra installs it; without it every batch path is a ConfigError


def _header(script: str, prefix: str = "#SBATCH ") -> list[str]:
    return [line[len(prefix):] for line in script.splitlines() if line.startswith(prefix)]


def _submit_lines(script: str) -> dict[str, str]:
    """An HTCondor submit description's `key = value` lines as a mapping."""
    return dict(line.split(" = ", 1) for line in script.splitlines() if " = " in line)


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """A stand-in `sbatch` first on PATH that refuses every job as SLURM does an unknown partition:
    (`.bin`: its folder, `.called`: the file it touches when it runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "sbatch-was-called"
    command = bin_dir / "sbatch"
    command.write_text(f"#!/bin/sh\ntouch {called}\n"
                       "echo 'sbatch: error: invalid partition specified: nope' >&2\n"
                       "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\n"
                       "exit 1\n")
    command.chmod(command.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return SimpleNamespace(bin=bin_dir, called=called)


# --- the options ----------------------------------------------------------------------------

@pytest.mark.parametrize("executor, options, message", [
    ("slurm", {"core": 4}, ("executor option 'core' is not known (did you mean 'cores'?); allowed for "
                            "executor='slurm': cores, memory, gpus, walltime, partition, queue, account")),
    ("htcondor", {"partition": "gpu"}, ("executor option 'partition' has no meaning for executor='htcondor' "
                                        "(HTCondor has no partitions: choose machines with a requirements directive")),
    ("slurm", {"disk": "10GB"}, ("'disk' has no meaning for executor='slurm' (SLURM jobs request no disk: ask for "
                                 "node-local scratch with the directive your site documents, e.g. "
                                 "job_extra_directives=['--tmp=10G'])")),
    ("slurm", {"cores": 0}, "executor option cores=0: expected an integer >= 1"),
    ("slurm", {"gpus": True}, "executor option gpus=True: expected an integer >= 0"),
    ("slurm", {"max_jobs": 2.5}, "executor option max_jobs=2.5: expected an integer >= 1"),
    ("slurm", {"memory": "lots"}, "executor option memory='lots': expected a size such as '16GB'"),
    ("htcondor", {"disk": -1}, "executor option disk=-1: expected a size above 0"),
    ("slurm", {"walltime": "4 hours"}, "executor option walltime='4 hours': expected a time limit in SLURM's format"),
    ("slurm", {"job_extra_directives": "--constraint=a100"}, "expected a list of sbatch options"),
    ("slurm", {"job_extra_directives": ["#SBATCH --qos=long"]}, "give '#SBATCH --qos=long' without '#SBATCH'"),
    ("htcondor", {"job_extra_directives": ["requirements=x"]}, "expected a mapping of HTCondor submit commands"),
    ("slurm", {"partition": "a", "queue": "b"}, "partition='a' and queue='b' name the same thing"),
    ("slurm", {"python": ""}, "executor option python='': expected a non-empty string"),
    ("slurm", ["cores"], "executor_options=['cores']: expected a mapping"),
])
def test_bad_executor_options_are_named(executor, options, message):
    with pytest.raises(ConfigError) as raised:
        check_options(executor, options)
    assert message in str(raised.value)


def test_options_are_checked_into_one_spelling_in_table_order():
    checked = check_options("slurm", {"max_jobs": 3, "queue": "gpu", "cores": 2, "walltime": "1-00:00:00",
                                      "memory": None})
    assert checked == {"cores": 2, "walltime": "1-00:00:00", "partition": "gpu", "max_jobs": 3}
    assert list(checked) == [name for name in BATCH_OPTIONS if name in checked]
    assert {"slurm", "htcondor"} <= set(EXECUTORS)


def test_options_are_refused_before_the_sweep_writes_anything(tmp_path, data_path, fake_sbatch, monkeypatch):  # noqa: F811
    base = tiny_base(data_path, tmp_path / "out")
    cases = [
        ({"executor": "inline", "executor_options": {"cores": 2}},
         "executor_options={'cores': 2} given with executor='inline', which takes none: they are for 'slurm' and 'htcondor'"),
        ({"executor": "process", "executor_options": {}}, "given with executor='process', which takes none"),
        ({"executor": "slurm", "max_workers": 2}, ("max_workers=2 has no meaning for executor='slurm' (it is for "
                                                    "'process' and 'dask'); the number of jobs is "
                                                    "executor_options={'max_jobs': N}")),
        ({"executor": "slurm", "scheduler": "tcp://x:8786"}, "scheduler='tcp://x:8786' has no meaning"),
        ({"executor": "htcondor", "executor_options": {"queue": "q"}}, "'queue' has no meaning for executor='htcondor'"),
        ({"executor": "htcondor"}, "executor='htcondor' submits jobs with condor_submit, which is not on PATH"),
    ]
    monkeypatch.setenv("PATH", str(fake_sbatch.bin))  # sbatch (the stand-in) and nothing else
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as raised:
            sweep(base, {"model.latent_dim": [4]}, [1], **kwargs)
        assert message in str(raised.value)
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"dask-jobqueue, which is not installed: pip install 'thesis-lib\[hpc\]'"):
        sweep(base, {"model.latent_dim": [4]}, [1], executor="slurm")
    assert not (tmp_path / "out").exists() and not fake_sbatch.called.exists()


# --- the job scripts (dry run) --------------------------------------------------------------

def test_slurm_job_script_carries_the_options():
    script = job_script("slurm", {"cores": 4, "memory": "16GiB", "gpus": 1, "walltime": "04:00:00", "partition": "gpu",
                                  "account": "proj42", "job_extra_directives": ["--constraint=a100", "--qos=long"],
                                  "python": "/opt/env/bin/python", "local_directory": "$TMPDIR",
                                  "scheduler_host": "login1"})
    assert _header(script) == ["-J thesis-lib-sweep", "-p gpu", "-A proj42", "-n 1", "--cpus-per-task=4", "--mem=16G",
                               "-t 04:00:00", "--constraint=a100", "--qos=long", "--gres=gpu:1"]
    (command,) = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    # one worker thread: the job runs one point at a time; the point's torch gets the job's 4 cores
    assert command.startswith("/opt/env/bin/python -m distributed.cli.dask_worker tcp://login1:<port> ")
    assert "--nthreads 1 " in command and "--local-directory $TMPDIR" in command
    assert "\"{'OMP_NUM_THREADS': 4, 'MKL_NUM_THREADS': 4, 'OPENBLAS_NUM_THREADS': 4}\"" in script


def test_slurm_job_script_defaults():
    script = job_script("slurm")
    header = _header(script)
    assert "--cpus-per-task=1" in header and "--mem=4G" in header  # 4GB: 4e9 bytes, rounded up to SLURM's G
    assert "-t 00:30:00" in header  # dask-jobqueue's configured walltime as shipped
    assert not any(line.startswith(("-p ", "-A ", "--gres")) for line in header)
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script


def test_htcondor_submit_description_carries_the_options():
    script = job_script("htcondor", {"cores": 4, "memory": "16GB", "disk": "10GB", "gpus": 2, "walltime": "1-00:00:00",
                                     "account": "group_ml",
                                     "job_extra_directives": {"requirements": "(CUDACapability >= 8.0)"}})
    lines = _submit_lines(script)
    assert lines["RequestCpus"] == "4" and lines["MY.DaskWorkerCores"] == "1"  # the job's cores, one worker thread
    assert lines["RequestMemory"] == "floor(MY.DaskWorkerMemory / 1048576)" and lines["MY.DaskWorkerMemory"] == "16000000000"
    assert lines["RequestDisk"] == "floor(MY.DaskWorkerDisk / 1024)" and lines["MY.DaskWorkerDisk"] == "10000000000"
    assert lines["request_gpus"] == "2" and lines["accounting_group"] == "group_ml"
    assert lines["allowed_execute_duration"] == "86400"  # one day, in seconds
    assert lines["requirements"] == "(CUDACapability >= 8.0)"
    assert "--nthreads 1" in lines["Arguments"] and "OMP_NUM_THREADS'': 4" in lines["Arguments"]


def test_htcondor_defaults_and_walltime_formats():
    lines = _submit_lines(job_script("htcondor"))
    assert lines["RequestCpus"] == "1" and lines["MY.DaskWorkerMemory"] == "4000000000"
    assert lines["MY.DaskWorkerDisk"] == "1000000000" and "allowed_execute_duration" not in lines
    assert "request_gpus" not in lines
    for walltime, seconds in (("90", 5400), ("90:30", 5430), ("2:00:05", 7205), ("1-2", 93600), ("1-2:30", 95400)):
        lines = _submit_lines(job_script("htcondor", {"walltime": walltime}))
        assert lines["allowed_execute_duration"] == str(seconds), walltime


# --- the CLI --------------------------------------------------------------------------------

def _cli_sweep(tmp_path, data_path, *args: str) -> list[str]:  # noqa: F811
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(tiny_base(data_path, tmp_path / "out")))
    return ["sweep", "--config", str(config), "--grid", "model.bottleneck=identity,vq", "--seeds", "1,2", *args]


def test_cli_dry_run_prints_the_job_script_and_submits_and_writes_nothing(tmp_path, data_path, fake_sbatch, capsys):  # noqa: F811
    argv = _cli_sweep(tmp_path, data_path, "--executor", "slurm", "--cores", "4", "--memory", "8GiB", "--gpus", "1",
                      "--walltime", "02:00:00", "--partition", "gpu", "--account", "proj", "--max-jobs", "3",
                      "--job-directive=--constraint=a100", "--job-directive=--qos=short", "--dry-run")
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# dry run: 4 points would run on 3 slurm job(s) like this one")
    assert _header(printed) == ["-J thesis-lib-sweep", "-p gpu", "-A proj", "-n 1", "--cpus-per-task=4", "--mem=8G",
                                "-t 02:00:00", "--constraint=a100", "--qos=short", "--gres=gpu:1"]
    assert not (tmp_path / "out").exists() and not fake_sbatch.called.exists()


def test_cli_dry_run_checks_every_point_config(tmp_path, data_path, capsys):  # noqa: F811
    argv = _cli_sweep(tmp_path, data_path, "--executor", "slurm", "--dry-run")
    argv[argv.index("model.bottleneck=identity,vq")] = "model.bottleneck=identity,bogus"  # the second point is wrong
    assert cli_main(argv) == 2
    assert "bogus" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_cli_htcondor_directives_are_key_value_pairs(tmp_path, data_path, capsys):  # noqa: F811
    argv = _cli_sweep(tmp_path, data_path, "--executor", "htcondor", "--disk", "5GB", "--gpus", "1", "--dry-run",
                      "--job-directive", "requirements=(CUDACapability >= 8.0)", "--job-directive", "+WantGPULab=true")
    assert cli_main(argv) == 0
    lines = _submit_lines(capsys.readouterr().out)
    assert lines["requirements"] == "(CUDACapability >= 8.0)" and lines["+WantGPULab"] == "true"
    assert lines["MY.DaskWorkerDisk"] == "5000000000" and lines["request_gpus"] == "1"


@pytest.mark.parametrize("args, message", [
    (["--executor", "htcondor", "--partition", "gpu"],
     "--partition has no meaning for --executor htcondor (HTCondor has no partitions"),
    (["--executor", "slurm", "--disk", "10GB"], "--disk has no meaning for --executor slurm (SLURM jobs request no disk"),
    (["--executor", "process", "--cores", "2", "--dry-run"],
     "--cores, --dry-run: batch job options, which have no meaning for --executor process"),
    (["--executor", "slurm", "--max-workers", "2"], "--max-workers has no meaning for --executor slurm"),
    (["--executor", "slurm", "--walltime", "soon", "--dry-run"], "executor option walltime='soon': expected a time limit"),
    (["--executor", "htcondor", "--job-directive", "requirements", "--dry-run"],
     "--job-directive 'requirements' is not KEY=VALUE"),
])
def test_cli_flags_without_meaning_for_the_executor_are_named(tmp_path, data_path, capsys, args, message):  # noqa: F811
    assert cli_main(_cli_sweep(tmp_path, data_path, *args)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- a refused submission, and sweep.yaml -----------------------------------------------------

def test_a_refused_submission_names_sbatchs_message_and_sweep_yaml_keeps_the_options(tmp_path, data_path, fake_sbatch):  # noqa: F811
    options = {"cores": 2, "memory": "1GiB", "queue": "nope", "job_extra_directives": ["--qos=short"],
               "scheduler_host": "127.0.0.1"}
    with pytest.raises(ConfigError) as raised:
        sweep(tiny_base(data_path, tmp_path / "out"), {"model.latent_dim": [4, 8]}, [1], name="refused",
              executor="slurm", executor_options=options)
    assert ("SLURM refused the sweep's worker jobs (sbatch): sbatch: error: invalid partition specified: nope "
            "sbatch: error: Batch job submission failed: Invalid partition name specified") in str(raised.value)
    assert fake_sbatch.called.exists()
    (sweep_dir,) = (tmp_path / "out" / "multiruns").iterdir()
    text = (sweep_dir / "sweep.yaml").read_text()
    record = yaml.safe_load(text)
    assert record["executor"] == "slurm" and record["state"] == "interrupted"
    assert record["executor_options"] == {"cores": 2, "memory": "1GiB", "partition": "nope",
                                          "job_extra_directives": ["--qos=short"], "scheduler_host": "127.0.0.1"}
    assert text.index("executor_options:") < text.index("seeds:")  # a block at the top, with how the sweep ran
    assert [p["status"] for p in record["points"]] == ["PENDING", "PENDING"]


@pytest.mark.slow
def test_sweep_yaml_has_no_executor_options_where_none_were_given(tmp_path, data_path):  # noqa: F811
    result = sweep(tiny_base(data_path, tmp_path / "out"), {"model.latent_dim": [4]}, [1], executor="inline")
    assert "executor_options" not in yaml.safe_load((result.sweep_dir / "sweep.yaml").read_text())
    assert Path(result.sweep_dir).is_dir() and not (result.sweep_dir / "job_logs").exists()
