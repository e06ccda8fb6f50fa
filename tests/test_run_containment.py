"""A run stays inside its directory, and collecting its environment runs no program the repository configures.

Real run directories (trained here, resumed, exported, plotted) with real symbolic links planted
where a run's file or folder belongs: every write that would follow one out of the run is an
UnsafePathError naming the link, and the link's target is left exactly as it was. The run
directory itself and the output root may be links. Real git repositories whose .git/config sets
an fsmonitor hook and a filter driver to scripts that leave a marker file: env.json is collected
without either running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

from thesis_lib import export_model
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import FactsError
from thesis_lib.facts import read_events
from thesis_lib.record.env import collect_env
from thesis_lib.record.writer import RunWriter
from thesis_lib.reports.telemetry_plot import plot_telemetry
from thesis_lib.train import fit


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return make_synthetic_events(tmp_path_factory.mktemp("data") / "events.h5", n_events=400, seed=0, n_tokens=8)


def tiny(events, output_root, **trainer):
    return {"output_root": str(output_root), "run_name": "contained", "data": {"path": str(events), "batch_size": 128},
            "model": {"encoder": "mlp", "hidden_dim": 16, "latent_dim": 8, "num_layers": 1},
            "trainer": {"epochs": 1, "device": "cpu", "seed": 1, **trainer},
            "report": {"enabled": False}, "telemetry": {"enabled": False}}


@pytest.fixture(scope="module")
def finished(events, tmp_path_factory):
    """A completed one-epoch run (model.pt, best_val.pt, last.pt, facts, logs) to copy and break."""
    return fit(tiny(events, tmp_path_factory.mktemp("finished")), dashboard=None).run_dir


@pytest.fixture
def run(finished, tmp_path):
    """A fresh copy of the finished run."""
    return shutil.copytree(finished, tmp_path / "run")


@pytest.fixture
def outside(tmp_path):
    """A folder outside the run holding a file that must never change (a stand-in for ~/.bashrc)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "bashrc").write_text("export PATH=/usr/bin\n")
    return folder


def contents(folder):
    """{relative path: bytes} of every file under `folder` (links not followed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def refused(match):
    """The block raises thesis_lib.errors.UnsafePathError (a FactsError) with a message matching `match`."""
    with pytest.raises(FactsError, match=match) as info:
        yield
    assert type(info.value).__name__ == "UnsafePathError"


def move_and_link(run_dir, name, outside):
    """Move run_dir/name to outside/name and leave a symbolic link to it in its place."""
    shutil.move(run_dir / name, outside / name)
    os.symlink(outside / name, run_dir / name)
    return run_dir / name


def resume(events, run_dir):
    return fit(tiny(events, run_dir.parent / "unused", epochs=2, resume_from=str(run_dir)), dashboard=None)


def test_a_model_pt_linked_out_of_the_run_is_refused_on_resume(events, run, outside):
    (run / "model.pt").unlink()
    os.symlink(outside / "bashrc", run / "model.pt")
    before = contents(outside)
    with refused(rf"{run / 'model.pt'} is a symbolic link \(to {outside / 'bashrc'}\)"):
        resume(events, run)
    assert contents(outside) == before and (run / "model.pt").is_symlink()


def test_a_facts_folder_linked_elsewhere_is_refused_before_any_fact_is_appended(events, run, outside):
    link = move_and_link(run, "facts", outside)
    before = contents(outside)
    with refused(rf"{link} is a symbolic link \(to {outside / 'facts'}\) inside {run}"):
        resume(events, run)
    assert contents(outside) == before


def test_a_report_folder_linked_elsewhere_is_refused(events, run, outside):
    (outside / "report").mkdir()
    os.symlink(outside / "report", run / "report")
    with refused(rf"{run / 'report'} is a symbolic link"):
        resume(events, run)
    assert contents(outside) == {"bashrc": b"export PATH=/usr/bin\n"}


def test_a_logs_folder_linked_elsewhere_gets_nothing_printed_into_it(events, run, outside):
    move_and_link(run, "logs", outside)
    before = contents(outside)
    with refused(rf"{run / 'logs'} is a symbolic link"):
        resume(events, run)
    assert contents(outside) == before


def test_a_steps_file_linked_while_the_writer_is_open_is_never_appended_to(tmp_path, outside):
    run_dir = tmp_path / "fresh_run"
    writer = RunWriter(run_dir, "fresh", ["epoch", "split", "t", "loss"])
    os.symlink(outside / "bashrc", run_dir / "facts" / "steps.csv")  # planted after the writer opened
    with writer, refused(r"facts/steps\.csv is a symbolic link"):
        writer.steps([{"epoch": 0, "step": 1, "t": 0.1, "loss": 1.0, "lr": 0.1}])
    assert contents(outside) == {"bashrc": b"export PATH=/usr/bin\n"}


def test_a_figure_is_never_saved_through_a_linked_report_folder(run, outside):
    (outside / "report").mkdir()
    os.symlink(outside / "report", run / "report")
    with refused(rf"{run / 'report'} is a symbolic link"):
        plot_telemetry(run, run / "report" / "telemetry.png")
    assert list((outside / "report").iterdir()) == []


def test_an_export_into_a_linked_exports_folder_is_refused(run, outside):
    (outside / "exports").mkdir()
    os.symlink(outside / "exports", run / "exports")
    with refused(rf"{run / 'exports'} is a symbolic link"):
        export_model(run, ["state_dict"])
    assert list((outside / "exports").iterdir()) == []


def test_a_model_info_json_linked_out_is_not_replaced_by_an_export(run, outside, tmp_path):
    move_and_link(run, "model_info.json", outside)
    before = contents(outside)
    with refused(rf"{run / 'model_info.json'} is a symbolic link"):
        export_model(run, ["state_dict"], output_dir=tmp_path / "served")
    assert contents(outside) == before and (run / "model_info.json").is_symlink()


def test_the_output_root_and_the_run_directory_may_be_links(events, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.symlink(scratch, tmp_path / "outputs")  # outputs/ -> scratch storage
    first = fit(tiny(events, tmp_path / "outputs"), dashboard=None)
    assert first.status == "COMPLETED" and (scratch / "runs" / first.run_id / "model.pt").is_file()
    os.symlink(first.run_dir, tmp_path / "my_run")  # a link to the run directory itself
    resumed = fit(tiny(events, tmp_path / "elsewhere", epochs=2, resume_from=str(tmp_path / "my_run")), dashboard=None)
    assert resumed.status == "COMPLETED" and resumed.epochs_completed == 2
    assert [e["moment"] for e in read_events(scratch / "runs" / first.run_id)].count("on_train_end") == 2


# -- collecting env.json --------------------------------------------------------------------------

def git(repo, *args):
    # The test's own git calls switch the repository's programs off too, so only collect_env could run them.
    return subprocess.run(["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
                           "-c", "filter.marker.clean=", "-c", "filter.marker.process=", "-C", str(repo), *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def booby_trapped_repo(tmp_path):
    """A committed repo whose config runs marker-writing scripts: fsmonitor, a filter's clean and process, a hook."""
    repo, markers = tmp_path / "repo", tmp_path / "markers"
    repo.mkdir()
    markers.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitattributes").write_text("*.txt filter=marker\n")
    (repo / "notes.txt").write_text("filtered\n")
    (repo / "plain.md").write_text("plain\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "init")
    script = tmp_path / "trap.sh"
    script.write_text(f'#!/bin/sh\ntouch "{markers}/$1"\ncat\n')
    script.chmod(0o755)
    hooks = repo / ".git" / "hooks"
    (hooks / "post-index-change").write_text(f'#!/bin/sh\ntouch "{markers}/post-index-change"\n')
    (hooks / "post-index-change").chmod(0o755)
    config = {"core.fsmonitor": f"{script} fsmonitor", "filter.marker.clean": f"{script} clean",
              "filter.marker.process": f"{script} process", "filter.marker.required": "true"}
    for key, value in config.items():
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
    return repo, markers


def test_collect_env_runs_no_program_the_repository_configures(booby_trapped_repo, monkeypatch):
    repo, markers = booby_trapped_repo
    head = git(repo, "rev-parse", "HEAD")
    with open(repo / "notes.txt", "a") as handle:  # a change only the filter could judge
        handle.write("more\n")
    monkeypatch.chdir(repo)
    env = collect_env()
    assert sorted(p.name for p in markers.iterdir()) == []  # neither fsmonitor, the filter nor the hook ran
    assert env["git_commit"] == head
    assert env["git_dirty"] is None
    assert "notes.txt" in env["errors"]["git_dirty"] and "filter drivers (marker) were not run" in env["errors"]["git_dirty"]


def test_collect_env_still_sees_a_change_no_filter_applies_to_without_running_anything(booby_trapped_repo, monkeypatch):
    repo, markers = booby_trapped_repo
    (repo / "plain.md").write_text("changed\n")
    monkeypatch.chdir(repo)
    env = collect_env()
    assert sorted(p.name for p in markers.iterdir()) == []
    assert env["git_commit"] == git(repo, "rev-parse", "HEAD") and env["git_dirty"] is True
    assert "git_dirty" not in env["errors"]


def test_a_report_rendered_later_is_never_written_through_a_linked_report_folder(run, outside):
    from thesis_lib.reports import write_run_report_markdown

    (outside / "report").mkdir()
    os.symlink(outside / "report", run / "report")
    with refused(rf"{run / 'report'} is a symbolic link"):
        write_run_report_markdown(run)
    assert contents(outside) == {"bashrc": b"export PATH=/usr/bin\n"}


def test_a_model_pt_older_than_best_val_pt_is_not_taken_for_the_best_weights(run):
    """A finished run resumed and killed: its model.pt is from the first ending, best_val.pt newer."""
    import torch

    from thesis_lib.facts.run_model import load_run_model_and_weights

    best = torch.load(run / "best_val.pt", weights_only=True)
    best["model"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in best["model"].items()}
    torch.save(best, run / "best_val.pt")
    old = (run / "model.pt").stat().st_mtime_ns
    os.utime(run / "best_val.pt", ns=(old + 10**9, old + 10**9))
    model, _, _, weights = load_run_model_and_weights(run)
    assert weights.file == "best_val.pt" and "older than best_val.pt" in weights.note
    name, value = next((k, v) for k, v in best["model"].items() if v.is_floating_point())
    assert torch.equal(model.state_dict()[name], value)
