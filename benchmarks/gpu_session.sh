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
# 3. --deterministic on CUDA: two short runs of the default recipe (one member, 2 epochs, 200 synthetic clips)
#    must write byte-identical model files.
D=/tmp/determinism
timeout 60 bash -c "python3 -m urbansound synth $D --uniform --recordings-per-class 4 --clips-per-recording 5 -q &&
  for k in 1 2; do python3 -m urbansound train --annotations $D/UrbanSound8K/metadata/UrbanSound8K.csv \
    --data $D/UrbanSound8K/audio --device cuda --deterministic --ensemble 1 --epochs 2 --quiet \
    --runs-dir $D/runs\$k --cache-dir $D/cache > /dev/null || exit 1; done &&
  cmp $D/runs1/*/model.safetensors $D/runs2/*/model.safetensors && echo 'deterministic: identical model files'" \
    2>&1 | tail -n 5 | tee "$OUT/determinism.log"
# 4. the whole suite with CUDA present (failures listed at the end: -rf).
timeout 170 python3 -m pytest -q -n 8 -p no:cacheprovider -rf tests 2>&1 | tee "$OUT/tests.log"
