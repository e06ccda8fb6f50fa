"""`thesis-lib train | demo | make-data | make-sensor-data | spectrograms | runs | report | sweep | export | sync`: thin wrappers over the library's functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import ConfigError, ThesisLibError
from .layout import REPORTS_DIR, SWEEPS_DIR

__all__ = ["main"]

DEMO_DATA = "data/events.h5"


def _cmd_train(args: argparse.Namespace) -> int:
    from .workflow import train

    result = train(args.config, args.overrides)
    if result.stop_signal is not None:
        return 128 + result.stop_signal  # what a shell, SLURM and HTCondor read as "ended by this signal"
    return 0 if result.status in ("COMPLETED", "STOPPED") else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: synthetic data, a small sweep (identity vs VQ tokenizer), its sweep report."""
    from .data import make_synthetic_events
    from .facts import load_runs
    from .reports import render_sweep_report
    from .sweep import sweep

    data_path = Path(args.data)
    if not data_path.is_file():
        print(f"generating {args.n_events:,} synthetic events -> {data_path}")
        make_synthetic_events(data_path, n_events=args.n_events, seed=0, anomaly_fraction=0.05)
    base = {
        "output_root": args.output_root,
        "data": {"path": str(data_path.resolve())},
        "model": {"encoder": "transformer", "latent_dim": 32},
        "trainer": {"epochs": args.epochs},
    }
    result = sweep(base=base, grid={"model.bottleneck": ["identity", "vq"]}, seeds=[1], name="demo",
                   overrides=args.overrides or None)
    runs_df, _, _ = load_runs(sweep_dir=str(result.sweep_dir))
    columns = ["status", "encoder", "tokenizer", "epochs", "best_epoch", "loss.total_best", "metric_perplex_final", "throughput_mean"]
    print(runs_df[[c for c in columns if c in runs_df.columns]].to_string(index=False))
    paths = render_sweep_report(sweep_dir=result.sweep_dir, analysis="compare_tokenizers",
                                inference={"enabled": True, "max_samples": 2000})
    print(f"sweep directory: {result.sweep_dir}")
    print(f"sweep report:    {paths['html']}")
    return 0 if result.ok else 1


def _cmd_make_data(args: argparse.Namespace) -> int:
    from .data import make_synthetic_events

    path = make_synthetic_events(args.path, n_events=args.n_events, seed=args.seed)
    print(f"wrote {args.n_events:,} synthetic events -> {path}")
    return 0


def _cmd_make_sensor_data(args: argparse.Namespace) -> int:
    from .data import make_synthetic_sensor_data

    out = make_synthetic_sensor_data(args.out_dir, n_recordings=args.n_recordings, seed=args.seed)
    print(f"wrote {args.n_recordings} synthetic sensor recordings (CSV) and labels.csv -> {out}")
    return 0


def _cmd_spectrograms(args: argparse.Namespace) -> int:
    from .data import prepare_spectrograms

    path = prepare_spectrograms(args.source, args.out_path, segment_s=args.segment_s, n_fft=args.n_fft,
                                hop_length=args.hop_length, val_fraction=args.val_fraction,
                                test_fraction=args.test_fraction, seed=args.seed)
    print(f"wrote spectrograms -> {path} (train with model.encoder=cnn or resnet, model.task=classifier)")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from .facts import load_runs

    runs_df, _, _ = load_runs(sweep_dir=args.sweep_dir, run_dirs=args.run_dirs or None)
    columns = ["run_id", "status", "encoder", "tokenizer", "seed", "epochs", "best_epoch", "loss.total_best", "total_time_s"]
    print(runs_df[[c for c in columns if c in runs_df.columns]].to_string(index=False))
    return 0


def _cmd_report_run(args: argparse.Namespace) -> int:
    from .errors import ReportError
    from .reports import render_run_report, write_run_report_markdown

    if args.markdown_only:
        if args.pdf:
            raise ReportError("--pdf prints report.html, which --markdown-only does not write: pass one of them")
        paths = write_run_report_markdown(args.run_dir, args.output_dir)
    else:
        try:
            paths = render_run_report(args.run_dir, args.output_dir, engine=args.engine, pdf=args.pdf)
        except ImportError as exc:
            raise ReportError(
                f"rendering the report for {args.run_dir} needs {exc.name or exc}, which is not installed; "
                "install it or pass --markdown-only"
            ) from exc
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    paths = export_model(args.run_dir, args.formats, output_dir=args.output_dir, opset=args.opset,
                         data_path=args.data_path, recordings_dir=args.recordings_dir)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    """Push past runs to a tracker from their facts; 1 when a run could not be synced (each is named)."""
    from .tracking_sync import sync_runs

    settings = {"tensorboard_dir": args.tensorboard_dir, "mlflow_tracking_uri": args.mlflow_uri,
                "mlflow_experiment": args.mlflow_experiment, "wandb_project": args.wandb_project,
                "wandb_entity": args.wandb_entity, "wandb_mode": args.wandb_mode, "wandb_dir": args.wandb_dir}
    results = sync_runs(args.path, args.to, dry_run=args.dry_run,
                        settings={key: value for key, value in settings.items() if value is not None})
    return 0 if all(result.ok for result in results) else 1


def _add_sweep_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`thesis-lib sweep`; its handler returns 0 when every point succeeded."""
    from .sweep import EXECUTORS
    from .sweep.runner import VIAS

    parser = subparsers.add_parser(
        "sweep",
        help="train a grid x seeds of runs into one sweep directory (re-running skips completed points)",
        description="Example: thesis-lib sweep --config base.yaml --grid model.bottleneck=identity,vq "
                    "--grid model.latent_dim=16,32 --seeds 1,2 --name tokenizers --executor process",
    )
    parser.add_argument("--config", help="base YAML config (defaults for what it leaves out)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a swept key and its values, comma-separated (repeatable); a list of lists "
                             "as one YAML list: 'model.freeze=[[encoder],[]]'")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3 (default: the config's trainer.seed)")
    parser.add_argument("--name", default="sweep", help="the sweep's name (in exp_<time>_<name>)")
    parser.add_argument("--executor", default="inline", choices=EXECUTORS)
    parser.add_argument("--max-workers", type=int, help="concurrent points (default: one per GPU, or 1)")
    parser.add_argument("--scheduler", help="Dask scheduler address for --executor dask (default: a LocalCluster)")
    parser.add_argument("--via", default="function", choices=VIAS,
                        help="function: call train(); notebook: run notebooks/train.ipynb through papermill")
    parser.add_argument("--notebook", help="the driver notebook for --via notebook (default: notebooks/train.ipynb)")
    parser.add_argument("--sweep-dir", help="use this sweep directory (it must hold the same sweep, if any)")
    jobs = parser.add_argument_group(
        "batch jobs (--executor slurm or htcondor; each job runs one point at a time)",
        "Unset options come from dask-jobqueue's configuration (~/.config/dask/jobqueue.yaml) where it has them.")
    jobs.add_argument("--cores", type=int, help="CPU cores per job (default 1)")
    jobs.add_argument("--memory", help="memory per job, e.g. 16GB (default 4GB)")
    jobs.add_argument("--gpus", type=int, help="GPUs per job (SLURM --gres=gpu:N, HTCondor request_gpus)")
    jobs.add_argument("--walltime", help="time limit per job, e.g. 04:00:00 or 1-00:00:00")
    jobs.add_argument("--partition", help="SLURM partition")
    jobs.add_argument("--queue", help="SLURM partition (the same as --partition)")
    jobs.add_argument("--account", help="account charged (SLURM -A, HTCondor accounting_group)")
    jobs.add_argument("--disk", help="HTCondor: scratch disk per job, e.g. 10GB (default 1GB)")
    jobs.add_argument("--job-directive", action="append", metavar="DIRECTIVE",
                      help="one more batch directive (repeatable): SLURM an sbatch option such as "
                           "--job-directive=--constraint=a100, HTCondor a submit command KEY=VALUE such as "
                           "'requirements=(CUDACapability >= 8.0)'")
    jobs.add_argument("--max-jobs", type=int, help="jobs submitted at most (default: one per point to run)")
    jobs.add_argument("--dry-run", action="store_true",
                      help="check the sweep and print the job script; submit nothing, write nothing")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. trainer.epochs=5")
    parser.set_defaults(func=_cmd_sweep)
    return parser


# `thesis-lib sweep` flag -> batch executor option (thesis_lib.sweep.batch_jobs.BATCH_OPTIONS).
_BATCH_FLAGS = {"cores": "--cores", "memory": "--memory", "gpus": "--gpus", "walltime": "--walltime",
                "partition": "--partition", "queue": "--queue", "account": "--account", "disk": "--disk",
                "job_extra_directives": "--job-directive", "max_jobs": "--max-jobs"}


def _batch_options(args: argparse.Namespace) -> dict | None:
    """The executor options the flags give (None when none is given); ConfigError naming a flag that has no
    meaning for the chosen --executor."""
    from .sweep.batch_jobs import BATCH_EXECUTORS, misfit_reason, options_for

    dest = {"job_extra_directives": "job_directive"}
    given = {name: getattr(args, dest.get(name, name)) for name in _BATCH_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if args.executor not in BATCH_EXECUTORS:
        flags = [_BATCH_FLAGS[name] for name in given] + (["--dry-run"] if args.dry_run else [])
        if flags:
            raise ConfigError(f"{', '.join(flags)}: batch job options, which have no meaning for --executor "
                              f"{args.executor}: use --executor slurm or --executor htcondor")
        return None
    for flag, value in (("--max-workers", args.max_workers), ("--scheduler", args.scheduler)):
        if value is not None:
            raise ConfigError(f"{flag} has no meaning for --executor {args.executor} (it is for process and dask); "
                              "the number of jobs is --max-jobs")
    allowed = options_for(args.executor)
    for name in given:
        if name not in allowed:
            raise ConfigError(f"{_BATCH_FLAGS[name]} has no meaning for --executor {args.executor}"
                              f"{misfit_reason(args.executor, name)}; --executor {args.executor} takes "
                              + ", ".join(_BATCH_FLAGS[n] for n in _BATCH_FLAGS if n in allowed))
    if args.executor == "htcondor" and "job_extra_directives" in given:
        given["job_extra_directives"] = dict(_pairs(given["job_extra_directives"], "--job-directive"))
    return given or None


def _sweep_dry_run(args: argparse.Namespace, grid: dict, seeds, options: dict | None) -> int:
    """`thesis-lib sweep --dry-run`: every point's config and the executor options checked, the job script
    printed; nothing submitted, nothing written."""
    from .sweep.batch_jobs import job_script
    from .sweep.executors import worker_imports
    from .layout import SWEEP_JOB_LOGS_DIR
    from .sweep.grid import expand_grid, resolve_base

    points = expand_grid(resolve_base(args.config, args.overrides), grid, seeds)
    worker_imports((p.config for p in points), args.executor)
    script = job_script(args.executor, options)
    jobs = min(len(points), (options or {}).get("max_jobs") or len(points))
    print(f"# dry run: {len(points)} points would run on {jobs} {args.executor} job(s) like this one, each "
          f"running one point at a time; its output would go to <sweep directory>/{SWEEP_JOB_LOGS_DIR}/. Nothing "
          "was submitted or written.")
    print(script)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep
    from .sweep.grid import parse_grid_arg, parse_seeds_arg

    grid = dict(parse_grid_arg(item) for item in args.grid)
    seeds = parse_seeds_arg(args.seeds) if args.seeds else None
    options = _batch_options(args)
    if args.dry_run:
        return _sweep_dry_run(args, grid, seeds, options)
    result = sweep(args.config, grid, seeds, name=args.name, executor=args.executor, max_workers=args.max_workers,
                   scheduler=args.scheduler, executor_options=options, via=args.via, sweep_dir=args.sweep_dir,
                   overrides=args.overrides, notebook=args.notebook)
    return 0 if result.ok else 1


def _add_report_sweep_command(report_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `sweep` to the `thesis-lib report` subcommands; the parser's `func` runs it and returns an exit code.

    `thesis-lib report sweep <sweep_dir> [--run-dirs ...] --analysis compare_tokenizers
    [--select key=v1,v2 ...] [--threshold val_mse=0.1 ...] [--which-figures a,b] [--inference
    --inference-batch-size N --inference-split test --max-samples N --persist-raw-scores]
    [--output-dir DIR] [--name NAME] [--no-notebook]`
    """
    from .reports.sweep_report import DEFAULT_INFERENCE

    parser = report_subparsers.add_parser("sweep", help="compare the runs of a sweep (or listed runs) in one report")
    parser.add_argument("sweep_dir", nargs="?", help=f"the sweep folder, e.g. outputs/{SWEEPS_DIR}/exp_...")
    parser.add_argument("--run-dirs", nargs="+", help="run folders or globs (instead of or besides sweep_dir)")
    parser.add_argument("--analysis", default="generic", help="generic | compare_tokenizers | compare_globals_heads")
    parser.add_argument("--select", action="append", default=[], metavar="KEY=V1,V2",
                        help="keep runs whose runs_df column KEY is one of the values (repeatable)")
    parser.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                        help="analysis threshold, e.g. val_mse=0.1 (repeatable)")
    parser.add_argument("--which-figures", help="comma-separated figure names (default: all)")
    parser.add_argument("--inference", action="store_true", help="also evaluate each run's model.pt (AUROC, errors)")
    parser.add_argument("--inference-batch-size", type=int, default=DEFAULT_INFERENCE["batch_size"])
    parser.add_argument("--inference-split", default=DEFAULT_INFERENCE["dataset_split"],
                        choices=("test", "val", "train"))
    parser.add_argument("--max-samples", type=int, default=0, help="events evaluated per run (0: all)")
    parser.add_argument("--no-autocast", action="store_true", help="evaluate in fp32 on the GPU")
    parser.add_argument("--persist-raw-scores", action="store_true", help="save per-event scores as CSV tables")
    parser.add_argument("--output-dir", help=f"the report directory (default: <output_root>/{REPORTS_DIR}/report_<ts>_<name>)")
    parser.add_argument("--name", help="report name (default: the analysis name)")
    parser.add_argument("--no-notebook", action="store_true",
                        help="write the layout only, without executing the notebook (no report.html / report.md)")
    _add_render_options(parser)
    parser.set_defaults(func=_cmd_report_sweep)
    return parser


def _cmd_report_sweep(args: argparse.Namespace) -> int:
    """Run `thesis-lib report sweep`; prints where the report went."""
    from .errors import ReportError
    from .reports import build_sweep_report, render_sweep_report

    kwargs = dict(
        sweep_dir=args.sweep_dir, run_dirs=args.run_dirs, analysis=args.analysis,
        select={k: v.split(",") for k, v in _pairs(args.select, "--select")} or None,
        thresholds={k: float(v) for k, v in _pairs(args.threshold, "--threshold")} or None,
        which_figures=args.which_figures.split(",") if args.which_figures else None,
        inference={"enabled": args.inference, "batch_size": args.inference_batch_size, "autocast": not args.no_autocast,
                   "dataset_split": args.inference_split, "max_samples": args.max_samples,
                   "persist_raw_scores": args.persist_raw_scores},
        output_dir=args.output_dir, name=args.name,
    )
    if args.no_notebook:
        if args.pdf:
            raise ReportError("--pdf prints report.html, which --no-notebook does not write: pass one of them")
        report = build_sweep_report(**kwargs)
        print(f"sweep report ({len(report.runs_df)} runs): {report.report_dir}")
    else:
        paths = render_sweep_report(**kwargs, engine=args.engine, pdf=args.pdf)
        print(f"sweep report: {paths['report_dir']}")
        for key in ("html", "markdown", "pdf"):
            if key in paths:
                print(f"  {key}: {paths[key]}")
    return 0


def _add_render_options(parser: argparse.ArgumentParser) -> None:
    """--pdf and --engine, shared by `report run` and `report sweep`."""
    from .reports.render import ENGINES

    parser.add_argument("--pdf", action="store_true",
                        help="also print report.html to report.pdf with Chromium (apt-get install chromium)")
    parser.add_argument("--engine", choices=ENGINES, default="inprocess",
                        help="run the template's cells in this process (default, about a second) or in a fresh "
                             "Jupyter kernel through papermill")


def _pairs(items: Iterable[str], option: str) -> list[tuple[str, str]]:
    """KEY=VALUE strings split once; ConfigError naming the option for one without '='."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{option} {item!r} is not KEY=VALUE (e.g. {option} model.latent_dim=16,32)")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thesis-lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_p = commands.add_parser("train", help="train from a YAML config plus dotted overrides")
    train_p.add_argument("--config", help="YAML config file (defaults are used for what it leaves out)")
    train_p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.bottleneck=vq trainer.seed=2")
    train_p.set_defaults(func=_cmd_train)

    demo_p = commands.add_parser(
        "demo", help="synthetic events, a small sweep (identity vs VQ), its run reports and sweep report"
    )
    demo_p.add_argument("--data", default=DEMO_DATA)
    demo_p.add_argument("--n-events", type=int, default=20_000)
    demo_p.add_argument("--epochs", type=int, default=5)
    demo_p.add_argument("--output-root", default="outputs")
    demo_p.add_argument("overrides", nargs="*", help="dotted overrides applied to the demo config")
    demo_p.set_defaults(func=_cmd_demo)

    data_p = commands.add_parser("make-data", help="write a synthetic HDF5 event file")
    data_p.add_argument("path")
    data_p.add_argument("--n-events", type=int, default=20_000)
    data_p.add_argument("--seed", type=int, default=0)
    data_p.set_defaults(func=_cmd_make_data)

    sensors_p = commands.add_parser("make-sensor-data", help="write synthetic vibration recordings (CSV + labels.csv)")
    sensors_p.add_argument("out_dir")
    sensors_p.add_argument("--n-recordings", type=int, default=60)
    sensors_p.add_argument("--seed", type=int, default=0)
    sensors_p.set_defaults(func=_cmd_make_sensor_data)

    spec_p = commands.add_parser("spectrograms", help="sensor CSV recordings -> an HDF5 spectrogram dataset")
    spec_p.add_argument("source", help="a directory with labels.csv (file,label) and the recordings, or a labels CSV")
    spec_p.add_argument("out_path", help="the .h5 file to write")
    spec_p.add_argument("--segment-s", type=float, default=1.0, help="seconds per example (non-overlapping)")
    spec_p.add_argument("--n-fft", type=int, default=64)
    spec_p.add_argument("--hop-length", type=int, default=None, help="default: n_fft // 2")
    spec_p.add_argument("--val-fraction", type=float, default=0.15)
    spec_p.add_argument("--test-fraction", type=float, default=0.15)
    spec_p.add_argument("--seed", type=int, default=0)
    spec_p.set_defaults(func=_cmd_spectrograms)

    runs_p = commands.add_parser("runs", help="summarise run directories (load_runs)")
    runs_p.add_argument("run_dirs", nargs="*", help="run directories or globs")
    runs_p.add_argument("--sweep-dir")
    runs_p.set_defaults(func=_cmd_runs)

    report_p = commands.add_parser("report", help="render reports from run directories")
    report_kinds = report_p.add_subparsers(dest="report_kind", metavar="kind", required=True)
    report_run_p = report_kinds.add_parser(
        "run", help="render one run's report (report.md, report.html, telemetry.png) from its directory alone"
    )
    report_run_p.add_argument("run_dir", help="the run directory")
    report_run_p.add_argument("--output-dir", help="where the report goes (default: <run_dir>/report)")
    report_run_p.add_argument(
        "--markdown-only", action="store_true", help="write report.md and the figures only (no HTML page)"
    )
    _add_render_options(report_run_p)
    report_run_p.set_defaults(func=_cmd_report_run)

    from .export import EXPORT_FORMATS

    export_p = commands.add_parser(
        "export", help="export a run's best model (state_dict, TorchScript, ONNX, or a serving model taking raw "
                       "waveforms), each checked against the eager model"
    )
    export_p.add_argument("run_dir", help="the run directory (config.yaml, data_meta.json, model.pt)")
    export_p.add_argument("--format", dest="formats", action="append", choices=EXPORT_FORMATS,
                          help="a format to write; repeat for several (default: state_dict, torchscript and onnx when "
                               "its packages are installed; serving: TorchScript + ONNX from raw waveform segments, "
                               "for runs on prepare_spectrograms output, checked on the test recordings)")
    export_p.add_argument("--output-dir", help="where the files go (default: <run_dir>/exports)")
    export_p.add_argument("--opset", type=int, help="ONNX opset version (default: torch's own)")
    export_p.add_argument("--data-path", help="serving: the spectrogram file (default: the run's data.path)")
    export_p.add_argument("--recordings-dir", help="serving: read the test recordings from here (default: the paths "
                                                   "the spectrogram file records)")
    export_p.set_defaults(func=_cmd_export)

    sync_p = commands.add_parser(
        "sync", help="push past runs to an experiment tracker from their facts alone (updates, never duplicates)"
    )
    sync_p.add_argument("path", help="a run directory, or a sweep (or any) directory holding runs")
    sync_p.add_argument("--to", required=True, choices=("tensorboard", "mlflow", "wandb"),
                        help="the tracker; where it goes: the run's tracking.json (what a live mirror or an earlier "
                             "sync wrote), else the flags below, else the run's own tracking section, else the defaults")
    sync_p.add_argument("--tensorboard-dir", help="a shared TensorBoard log directory (default: <run_dir>/tensorboard)")
    sync_p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: sqlite:///<output_root>/mlflow.db)")
    sync_p.add_argument("--mlflow-experiment", help="MLflow experiment (default: thesis-lib)")
    sync_p.add_argument("--wandb-project", help="W&B project (default: thesis-lib)")
    sync_p.add_argument("--wandb-entity", help="W&B entity (default: the account's)")
    sync_p.add_argument("--wandb-mode", choices=("online", "offline"), help="W&B mode (default: offline)")
    sync_p.add_argument("--wandb-dir", help="where W&B keeps its files (default: the run directory)")
    sync_p.add_argument("--dry-run", action="store_true", help="print what would be written and write nothing")
    sync_p.set_defaults(func=_cmd_sync)

    _add_report_sweep_command(report_kinds)
    _add_sweep_command(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ThesisLibError as exc:
        print(f"thesis-lib {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _drop_a_closed_console()


def _drop_a_closed_console() -> None:
    """When the reader of stdout went away (`thesis-lib train | head -1`), point stdout at /dev/null.

    The run has already noted the loss in its log; without this, Python's flush at exit would
    print a BrokenPipeError traceback and change the exit status (the recipe of Python's own
    documentation on SIGPIPE).
    """
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
