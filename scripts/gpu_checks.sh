#!/usr/bin/env bash
# The device checks, run once on a lent GPU machine (see docs/benchmarks.md):
#   real-size correctness on CUDA (tests/gpu), then `layerdiffuse bench` at real sizes.
# Expects the wheels the device image lacks in .whl/ (diffusers, huggingface_hub,
# importlib_metadata) and writes its logs to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
rm -rf /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XDG_CACHE_HOME=/tmp/cache

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

python3 -m pytest -m gpu tests/gpu -q -s -p no:warnings -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m backend generate --demo --device cuda -p "a glass cup" -o /tmp/demo-out 2>&1 | tail -3 | tee "$OUT/demo.log"
python3 -m backend bench --repeat 3 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
# Issue #13: the few-step rows and the compiled UNet beside the eager one (compiles take
# a minute or two per graph on a GPU too).
timeout 420 python3 -m backend bench --repeat 3 --stages fewstep,compile \
    --json "$OUT/bench_compile.json" 2>&1 | tee "$OUT/bench_compile.txt"
