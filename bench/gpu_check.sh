#!/usr/bin/env bash
# GPU check: extraction images/s (resnet101 448 + torchvision RPN, random weights) in fp32 / TF32 / bf16 autocast
# with feature differences vs fp32, iagcn training samples/s on a VOC-sized synthetic cache, decode images/s, and
# `iagcn train/eval/predict --device cuda` through the CLI against the CPU (model and batches on the GPU, outputs
# equal within tolerance). Run from anywhere; results go to $OUT (default ./bench/results/gpu). Needs python3 with
# torch, torchvision, numpy, h5py, pillow, tqdm, click -- not OpenCV, not this project's extra packages, no network,
# and this project NOT installed: the stage folders install as iagcn.extract/train/evaluate/cache (setup.cfg
# package_dir), so the script mirrors that namespace with symlinks in a temporary folder put first on PYTHONPATH.
# GPU_CHECK_TINY=1: tiny shapes (a CPU smoke test). Capped at 8 minutes.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$REPO/bench/results/gpu}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python3}"

NS="$(mktemp -d "${TMPDIR:-/tmp}/iagcn-src-XXXXXX")"
trap 'rm -rf "$NS"' EXIT
mkdir "$NS/iagcn"
for f in "$REPO"/iagcn/*.py; do ln -s "$f" "$NS/iagcn/$(basename "$f")"; done
for stage in extract train evaluate cache; do ln -s "$REPO/$stage" "$NS/iagcn/$stage"; done
ln -s "$REPO/bench" "$NS/bench"
export PYTHONPATH="$NS${PYTHONPATH:+:$PYTHONPATH}"
IAGCN_GIT_COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
export IAGCN_GIT_COMMIT
# run from the namespace folder: `python -m` puts the working folder first on sys.path, and the repository root
# holds a bare iagcn/ (the core only) that would shadow the mirrored namespace
cd "$NS"
set +e
timeout 470 "$PYTHON" -m bench.gpu_check --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
status="${PIPESTATUS[0]}"
set -e
exit "$status"
