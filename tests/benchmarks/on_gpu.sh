#!/bin/sh
# The GPU row of the benchmarks, on a machine with a CUDA GPU whose Python lacks some
# of wfe's packages (docs/benchmarks.md, On a GPU). From the repository root, with the
# wheels of `make device-wheels` in .whl/:
#     sh tests/benchmarks/on_gpu.sh [OUT]
# installs them into /tmp/site, prints the GPU, and runs tests.benchmarks.device on
# cuda; the table, its rows as JSON and the log go to OUT (default $OUT, else /tmp).
out=${1:-${OUT:-/tmp}}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$out/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout "${WFE_GPU_BENCH_TIMEOUT:-480}" python3 -m tests.benchmarks.device --device cuda \
    --json "$out/device.json" 2>&1 | tee "$out/device.log"
