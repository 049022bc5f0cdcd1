#!/usr/bin/env bash
# The accelerator measurement as one prepared script: the suite (course-sized runs, 3 seeds,
# both frameworks on the GPU), the 500-epoch DNA comparison and the sweep timings.
#
#   bash benchmarks/gpu_suite.sh [OUT]        # default OUT: benchmarks/results/gpu
#
# For a GPU machine without internet that has jax, flax, optax, orbax, torch, pandas,
# scikit-learn and matplotlib: the project is installed without its dependencies (or, if
# that fails, run from this checkout), and needs nothing else. About 8 minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
python -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || echo "note: pip install --no-deps failed; running from the checkout"
python -c 'import jax, sys; b = jax.default_backend(); print("JAX backend:", b, jax.devices()); sys.exit(b == "cpu")' \
  || { echo "error: JAX sees no accelerator here (backend cpu)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python -m benchmarks.suite --seeds 3 --out "$OUT/suite" 2>&1 | tee "$OUT/suite.log"
python -m benchmarks.dna_vs_torch --epochs 500 --results-dir "$OUT" 2>&1 | tee "$OUT/dna_500.log"
python -m benchmarks.sweep_parallel --pipelines tf_binding --out "$OUT" 2>&1 | tee "$OUT/sweep.log"
