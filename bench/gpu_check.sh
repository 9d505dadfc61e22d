#!/usr/bin/env bash
# GPU check: extraction images/s (resnet101 448 + torchvision RPN, random weights) in fp32 / TF32 / bf16 autocast
# with feature differences vs fp32, iagcn training samples/s on a VOC-sized synthetic cache, decode images/s.
# Run from anywhere; results go to $OUT (default ./bench/results/gpu). Needs python3 with torch, torchvision,
# numpy, h5py, pillow, tqdm, click -- not OpenCV, not this project's extra packages, no network.
# GPU_CHECK_TINY=1: tiny shapes (a CPU smoke test). Capped at 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
timeout 470 "$PYTHON" -m bench.gpu_check --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
