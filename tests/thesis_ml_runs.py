"""Run directories written as thesis-ml, the seed project, wrote them: fixtures for the seed-dialect tests.

Pinned to github.com/NielsterLinden/Thesis at commit 1c2e91f973b105dde1e465b339e15e0ef8686e01:

* `append_jsonl_event` and `append_scalars_csv` below are src/thesis_ml/facts/writers.py field for field
  (scalars header `epoch,split,train_loss,val_loss,epoch_time_s,throughput,max_memory_mib` then the
  sorted `metric_<k>` columns, floats as `%.8g`, -1 for a missing epoch, empty cells for None);
* `build_event_payload` is src/thesis_ml/facts/builders.py with its clock, uuid, git and host made
  injectable so that times are known: `schema_version` 1, the fixed keys in its order, `max_memory_mib`
  only when given, `meta` {timestamp (UTC isoformat), run_id (a new uuid4 per event), git_commit,
  hostname, cuda_info, seed from cfg.phase1.trainer.seed}, `histories` and the same lists as
  `history_<key>`;
* `write_thesis_ml_run` replays src/thesis_ml/training_loops/autoencoder.py (`loop=ae`): on_start; per
  epoch one on_epoch_end (split "val", metrics {"perplex": val}, the eight histories) then a train and a
  val scalars row (metric_perplex of that split, max_memory_mib None); on_train_end (total_time_s, the
  last losses and perplexity, the histories); on_test_end (split "test", metrics {"test_loss"}). A run
  that `crash_after` an epoch stops there: no on_train_end, no on_test_end.
* The composed config follows configs/config.yaml (defaults env, hydra, logging, data: h5_tokens,
  general/trainer, phase1/{encoder,decoder,latent_space,trainer}, classifier/trainer, `loop`),
  configs/phase1/latent_space/{none,linear,vq}.yaml, phase1/encoder/mlp.yaml, phase1/decoder/mlp.yaml,
  data/h5_tokens.yaml, general/trainer/default.yaml, classifier/trainer/default.yaml. The index holds
  no phase1/trainer file of that commit; its keys are those the loop reads: cfg.phase1.trainer.{seed,
  lr, weight_decay, epochs, grad_clip} (autoencoder.py) and batch_size (data/h5_loader.py).

`layout="cfg_yaml"` writes the older layout of src/thesis_ml/phase1/train/ae_loop.py at commit
bcd9bb4672234053664badf3632561f00e96a4e5: no .hydra/, the loop's own `OmegaConf.save(cfg, "cfg.yaml")`
after `_gather_meta` (so cfg.yaml carries `meta` {n_tokens, cont_dim, globals, num_types}), targets under
thesis_ml.phase1.autoenc, the same payloads (thesis_ml.utils.facts_builder) and scalars.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PINNED_COMMIT = "1c2e91f973b105dde1e465b339e15e0ef8686e01"
LEGACY_COMMIT = "bcd9bb4672234053664badf3632561f00e96a4e5"
SCALARS_HEADER = "epoch,split,train_loss,val_loss,epoch_time_s,throughput,max_memory_mib"
START = _dt.datetime(2025, 11, 3, 14, 9, 53, 250000, tzinfo=_dt.timezone.utc)
SETUP_S = 0.75  # between on_start and the first epoch's start (the seed times each epoch from its own t0)
TEST_S = 0.5  # the test pass after the last epoch

_BOTTLENECK_TARGETS = {"none": "IdentityBottleneck", "linear": "LinearBottleneck", "vq": "VQBottleneck"}
_BOTTLENECK_MODULES = {"none": "identity", "linear": "linear", "vq": "vq"}


# --- src/thesis_ml/facts/writers.py -----------------------------------------------------------------

def ensure_facts_dir(run_dir: str) -> Path:
    p = Path(run_dir) / "facts"
    p.mkdir(parents=True, exist_ok=True)
    return p


def append_jsonl_event(run_dir: str, record: Mapping[str, Any]) -> None:
    facts = ensure_facts_dir(run_dir)
    fp = facts / "events.jsonl"
    with fp.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def append_scalars_csv(run_dir: str, *, epoch, split, train_loss, val_loss, metrics, epoch_time_s, throughput,
                       max_memory_mib) -> None:
    facts = ensure_facts_dir(run_dir)
    fp = facts / "scalars.csv"
    new = not fp.exists()
    header = SCALARS_HEADER
    metrics = metrics or {}
    metric_keys = sorted(metrics.keys())
    if new:
        with fp.open("w", encoding="utf-8") as f:
            cols = [header]
            if metric_keys:
                cols.append("," + ",".join([f"metric_{k}" for k in metric_keys]))
            f.write("".join(cols) + "\n")
    with fp.open("a", encoding="utf-8") as f:
        base = [
            str(-1 if epoch is None else int(epoch)),
            "" if split is None else str(split),
            "" if train_loss is None else f"{float(train_loss):.8g}",
            "" if val_loss is None else f"{float(val_loss):.8g}",
            "" if epoch_time_s is None else f"{float(epoch_time_s):.8g}",
            "" if throughput is None else f"{float(throughput):.8g}",
            "" if max_memory_mib is None else f"{float(max_memory_mib):.8g}",
        ]
        row = ",".join(base)
        if metric_keys:
            row += "," + ",".join(f"{float(metrics[k]):.8g}" for k in metric_keys)
        f.write(row + "\n")


# --- src/thesis_ml/facts/builders.py (clock, uuid, git commit and host injectable) -----------------------

def _collect_metadata(now: _dt.datetime, cfg: dict | None) -> dict[str, Any]:
    meta = {
        "timestamp": now.isoformat(),
        "run_id": str(uuid.uuid4()),
        "git_commit": PINNED_COMMIT[:7],
        "hostname": "wn-lcg-07.nikhef.nl",
        "cuda_info": {"available": False},
    }
    if cfg is not None:  # the first of phase1.trainer, trainer, general.trainer, data that exists
        seed = None
        if "phase1" in cfg and "trainer" in cfg["phase1"]:
            seed = cfg["phase1"]["trainer"].get("seed")
        elif "trainer" in cfg:
            seed = cfg["trainer"].get("seed")
        elif "general" in cfg and "trainer" in cfg["general"]:
            seed = cfg["general"]["trainer"].get("seed")
        elif "data" in cfg:
            seed = cfg["data"].get("seed")
        if seed is not None:
            meta["seed"] = int(seed)
    return meta


def build_event_payload(*, now: _dt.datetime, moment: str, run_dir=None, epoch=None, step=None, split=None,
                        train_loss=None, val_loss=None, metrics=None, epoch_time_s=None, total_time_s=None,
                        throughput=None, max_memory_mib=None, histories=None, cfg=None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "schema_version": 1,
        "moment": moment,
        "run_dir": str(run_dir) if run_dir else "",
        "epoch": int(epoch) if epoch is not None else None,
        "step": int(step) if step is not None else None,
        "split": split,
        "train_loss": float(train_loss) if train_loss is not None else None,
        "val_loss": float(val_loss) if val_loss is not None else None,
        "metrics": dict(metrics) if metrics else {},
        "epoch_time_s": float(epoch_time_s) if epoch_time_s is not None else None,
        "total_time_s": float(total_time_s) if total_time_s is not None else None,
        "throughput": float(throughput) if throughput is not None else None,
    }
    if max_memory_mib is not None:
        payload["max_memory_mib"] = float(max_memory_mib)
    payload["meta"] = _collect_metadata(now, cfg)
    if histories:
        payload["histories"] = {k: list(v) for k, v in histories.items()}
        for key, values in histories.items():
            history_key = key if key.startswith("history_") else f"history_{key}"
            payload[history_key] = list(values)
    return payload


# --- the composed config ------------------------------------------------------------------------------

def composed_config(latent_space: str = "vq", *, seed: int = 42, epochs: int = 3, lr: float = 1e-3,
                    latent_dim: int = 32, codebook_size: int = 512, globals_beta: float = 1.0,
                    layout: str = "hydra") -> dict:
    """The config Hydra composes for `loop=ae phase1/latent_space=<latent_space>` (see the module doc)."""
    package = "thesis_ml.architectures.autoencoder" if layout == "hydra" else "thesis_ml.phase1.autoenc"
    module = _BOTTLENECK_MODULES[latent_space]
    space: dict[str, Any] = {"_target_": f"{package}.bottlenecks.{module}.{_BOTTLENECK_TARGETS[latent_space]}",
                             "latent_dim": latent_dim}
    if latent_space == "vq":
        space.update({"codebook_size": codebook_size, "beta": 0.25, "ema": True, "ema_decay": 0.99})
    config = {
        "env": {"data_root": "/data/atlas/users/nterlind/datasets", "output_root": "/data/atlas/users/nterlind/outputs",
                "wandb_project": "thesis-systematic"},
        "logging": {"save_artifacts": True, "make_plots": False, "show_plots": False, "figures_subdir": "train_figures",
                    "fig_format": "png", "dpi": 150},
        "data": {"path": "${env.data_root}/4tops_splitted.h5",
                 "datasets": {"x_train": "X_train", "x_val": "X_val", "x_test": "X_test", "y_train": "Y_train",
                              "y_val": "y_val", "y_test": "y_test"},
                 "n_tokens": 18, "globals": {"present": True, "size": 2}, "norm": "zscore", "seed": 42,
                 "num_workers": 4, "cont_features": [0, 1, 2, 3], "limit_samples": 0,
                 "classifier": {"selected_labels": [1, 2]}},
        "general": {"trainer": {"epochs": 10, "batch_size": 128, "lr": 0.001, "weight_decay": 0.0, "num_workers": 0,
                                "device": "auto"}},
        "phase1": {
            "encoder": {"_target_": f"{package}.encoders.mlp.MLPEncoder"},
            "decoder": {"_target_": f"{package}.decoders.mlp.MLPDecoder", "dec_hidden": [128, 128], "dropout": 0.0,
                        "activation": "gelu", "globals_head": True, "globals_hidden": [32],
                        "globals_beta": globals_beta},
            "latent_space": space,
            "trainer": {"loop": "ae", "epochs": epochs, "batch_size": 512, "lr": lr, "weight_decay": 0.0,
                        "grad_clip": 1.0, "seed": seed},
        },
        "classifier": {"trainer": {"epochs": 50, "lr": 0.0001, "weight_decay": 0.01, "batch_size": 64,
                                   "warmup_steps": 1000, "lr_schedule": "cosine", "label_smoothing": 0.0,
                                   "metrics": ["acc", "auroc", "f1"], "seed": 7, "grad_clip": 1.0}},
    }
    if layout == "hydra":
        config["loop"] = "ae"
    else:  # ae_loop.py's _gather_meta adds the data's shapes before it saves cfg.yaml
        config["meta"] = {"n_tokens": 18, "cont_dim": 4, "globals": 2, "num_types": 7}
    return config


# --- one run, as training_loops/autoencoder.py writes it -------------------------------------------------

def write_thesis_ml_run(root: Path, name: str, *, latent_space: str = "vq", seed: int = 42,
                        train_loss: Sequence[float] = (1.2, 0.8, 0.6), val_loss: Sequence[float] = (1.3, 0.9, 0.7),
                        rec_tokens: Sequence[float] | None = None, perplex: Sequence[float] | None = None,
                        train_perplex: Sequence[float] | None = None, epoch_time_s: Sequence[float] | None = None,
                        train_samples: int = 4000, test_loss: float = 0.75, crash_after: int | None = None,
                        layout: str = "hydra", overrides: list[str] | None = None, config: dict | None = None,
                        **config_kwargs) -> Path:
    """A thesis-ml `loop=ae` run directory `root/<name>` with known numbers; returns its path.

    `perplex`/`train_perplex` default to 0.0 for non-VQ runs (the loop's `aux.get("perplex", 0.0)`), and
    `rec_tokens` to 0.9 x val_loss. Event times: on_start at START, epoch e ends SETUP_S + the sum of the
    epoch times up to e later (see `epoch_end_offsets`). `crash_after=k` stops after epoch k's facts.
    """
    epochs = len(train_loss)
    epoch_time_s = list(epoch_time_s or [2.0 + 0.25 * e for e in range(epochs)])
    default_perplex = [0.0] * epochs if latent_space != "vq" else [100.0 + 10 * e for e in range(epochs)]
    perplex = list(perplex if perplex is not None else default_perplex)
    train_perplex = list(train_perplex if train_perplex is not None else [p + 5 if p else 0.0 for p in perplex])
    rec_tokens = list(rec_tokens if rec_tokens is not None else [0.9 * v for v in val_loss])
    cfg = config if config is not None else composed_config(latent_space, seed=seed, epochs=epochs, layout=layout,
                                                           **config_kwargs)
    outdir = root / name
    outdir.mkdir(parents=True)
    if layout == "hydra":
        hydra_dir = outdir / ".hydra"
        hydra_dir.mkdir()
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        listed = overrides if overrides is not None else [f"phase1/latent_space={latent_space}",
                                                           f"phase1.trainer.seed={seed}", "loop=ae", "env=local"]
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(listed))
        (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {
            "run": {"dir": f"outputs/runs/{name}"}, "job": {"name": "compare_latent_spaces", "chdir": True},
            "overrides": {"task": listed}}}, sort_keys=False))
    else:
        (outdir / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    offsets = epoch_end_offsets(epoch_time_s)
    append_jsonl_event(str(outdir), build_event_payload(now=START, moment="on_start", run_dir=outdir, cfg=cfg))
    hist: dict[str, list[float]] = {k: [] for k in ("train_loss", "val_loss", "rec_tokens", "rec_globals", "codebook",
                                                    "perplex", "epoch_time_s", "throughput")}
    for ep in range(epochs):
        dt = epoch_time_s[ep]
        thr = float(train_samples) / float(dt)
        for key, value in (("train_loss", train_loss[ep]), ("val_loss", val_loss[ep]), ("rec_tokens", rec_tokens[ep]),
                           ("rec_globals", 0.05), ("codebook", 0.01 if latent_space == "vq" else 0.0),
                           ("perplex", perplex[ep]), ("epoch_time_s", dt), ("throughput", thr)):
            hist[key].append(float(value))
        payload = build_event_payload(now=START + _dt.timedelta(seconds=offsets[ep]), moment="on_epoch_end",
                                      run_dir=outdir, epoch=ep, split="val", train_loss=train_loss[ep],
                                      val_loss=val_loss[ep], metrics={"perplex": perplex[ep]}, epoch_time_s=dt,
                                      throughput=thr, histories=hist, cfg=cfg)
        append_jsonl_event(str(outdir), payload)
        append_scalars_csv(str(outdir), epoch=ep, split="train", train_loss=train_loss[ep], val_loss=None,
                           metrics={"perplex": float(train_perplex[ep])}, epoch_time_s=dt, throughput=thr,
                           max_memory_mib=None)
        append_scalars_csv(str(outdir), epoch=ep, split="val", train_loss=None, val_loss=val_loss[ep],
                           metrics={"perplex": float(perplex[ep])}, epoch_time_s=dt, throughput=thr,
                           max_memory_mib=None)
        if crash_after is not None and ep == crash_after:
            return outdir
    end = START + _dt.timedelta(seconds=offsets[-1] + TEST_S)
    append_jsonl_event(str(outdir), build_event_payload(
        now=end, moment="on_train_end", run_dir=outdir, epoch=epochs - 1, train_loss=train_loss[-1],
        val_loss=val_loss[-1], metrics={"perplex": perplex[-1]}, total_time_s=total_time_s(epoch_time_s),
        histories=hist, cfg=cfg))
    append_jsonl_event(str(outdir), build_event_payload(now=end, moment="on_test_end", run_dir=outdir, split="test",
                                                        metrics={"test_loss": test_loss}, cfg=cfg))
    return outdir


def epoch_end_offsets(epoch_time_s: Sequence[float]) -> list[float]:
    """Seconds from on_start's timestamp to each on_epoch_end's."""
    offsets, elapsed = [], SETUP_S
    for dt in epoch_time_s:
        elapsed += dt
        offsets.append(elapsed)
    return offsets


def total_time_s(epoch_time_s: Sequence[float]) -> float:
    """The loop's total_time_s: perf_counter from just before the first epoch to after the test pass."""
    return float(sum(epoch_time_s)) + TEST_S
