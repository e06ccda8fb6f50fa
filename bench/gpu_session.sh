#!/usr/bin/env bash
# Everything still to be measured on a GPU machine (H100/H200), in as few device calls as possible.
#
# The device image has torch, pynvml, h5py, pandas, matplotlib, scikit-learn, psutil, pyyaml and
# lightning but not papermill/nbconvert/ipywidgets; thesis_lib's training, telemetry and benchmarks
# import none of those, so the checkout runs from PYTHONPATH with nothing installed. Each part fits
# one 10-minute call; what it measures lands in $OUT (at most 8 files come back):
#
#   bash bench/gpu_session.sh example   # the example GPU run (telemetry at 0.1 s) -> $OUT/gpu_run.tgz,
#                                       # its energy by counter vs integrated power -> $OUT/energy.txt
#   bash bench/gpu_session.sh loop      # bench/loop_overhead.py and bench/h5_loader.py -> $OUT/*.txt
#   bash bench/gpu_session.sh sampler   # bench/telemetry_overhead.py and bench/dashboard_overhead.py
#
# Back here: `tar xzf gpu_run.tgz -C docs/examples/` then `thesis-lib report run docs/examples/<run>`
# renders the report from the run directory alone (itself the test that reports re-render without a
# GPU); keep its report.md and telemetry.png, and copy the figures into bench/RESULTS.md with the
# device (nvidia-smi's name, printed first in every part's output) named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
part=${1:-}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu EVENTS=5000 EPOCHS=2 smoke-tests the example part anywhere
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader 2>&1 | tee "$OUT/device.txt"

case "$part" in
  example)
    work=$(mktemp -d)
    python - "$work" "$OUT" "$DEVICE" "${EVENTS:-200000}" "${EPOCHS:-12}" <<'PY'
import sys, tarfile
from pathlib import Path
from thesis_lib import train
from thesis_lib.data import make_synthetic_events
sys.path.insert(0, "bench")
from telemetry_overhead import energy_check  # the counter vs integrated power vs epochs comparison

work, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
data = make_synthetic_events(work / "events.h5", n_events=int(sys.argv[4]), seed=0, anomaly_fraction=0.01)
result = train({"data": {"path": str(data), "batch_size": 512},
                "model": {"encoder": "transformer", "bottleneck": "vq", "latent_dim": 32},
                "trainer": {"epochs": int(sys.argv[5]), "seed": 1, "device": device},
                "telemetry": {"interval_s": 0.1}, "report": {"enabled": False},
                "output_root": str(work / "outputs"), "run_name": "gpu_example"}, dashboard="text")
run = result.run_dir
summary = f"run {run.name}\n{energy_check(run)}\n"
(out / "energy.txt").write_text(summary)
print(summary)
with tarfile.open(out / "gpu_run.tgz", "w:gz") as tar:
    # checkpoints stay behind: a report needs the facts, config and logs, not the weights
    tar.add(run, arcname=run.name, filter=lambda m: None if m.name.endswith(".pt") else m)
PY
    ;;
  loop)
    python bench/loop_overhead.py --device cuda --repeats 3 2>&1 | tee "$OUT/loop_overhead.txt" | tail -15
    python bench/h5_loader.py --repeats 3 2>&1 | tee "$OUT/h5_loader.txt" | tail -15
    ;;
  sampler)
    python bench/telemetry_overhead.py --device cuda 2>&1 | tee "$OUT/telemetry_overhead.txt" | tail -20
    python bench/dashboard_overhead.py --device cuda --threads 0 2>&1 | tee "$OUT/dashboard_overhead.txt" | tail -15
    ;;
  *)
    echo "usage: bash bench/gpu_session.sh example|loop|sampler" >&2
    exit 2
    ;;
esac
