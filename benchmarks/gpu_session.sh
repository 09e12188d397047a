#!/usr/bin/env bash
# The GPU checks of issues 11 and 16 as one prepared run on a lent GPU machine (the device tool), inside its
# 10-minute command limit:
#
#     run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# .whl holds wheels of the packages the machine's image lacks (soundfile, soxr, librosa and their needs;
# how to fetch them: /work/.library/device/README.md). Every log is written under $OUT as it runs, so a
# command cut at its limit still returns what it measured.
set -o pipefail
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
# 1. issue 11's figures: throughput of one member and the seed CNN, data wait, memory, cache and variants,
#    fresh variants per epoch; one crossval fold at the recipe's 100 epochs, projected to 10 folds.
timeout 270 python3 benchmarks/gpu.py --crossval-folds 1 2>&1 | tee "$OUT/gpu.log"
# 2. issue 16: one fine-tuning epoch of the PANNs backbones on the GPU.
timeout 60 python3 benchmarks/transfer.py --time-epoch panns_cnn14 panns_cnn10 --device cuda --clips 512 \
    --batch 64 --steps 6 2>&1 | tee "$OUT/transfer.log"
# 3. the whole suite with CUDA present (failures listed at the end: -rf).
timeout 200 python3 -m pytest -q -n 8 -p no:cacheprovider -rf tests 2>&1 | tee "$OUT/tests.log"
