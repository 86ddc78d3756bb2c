#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA:
# a CUDA smoke test (train, resume, evaluate, a figure) and the speed bench's three rows.
# Needs torch, torchvision, matplotlib, numpy, tqdm and pillow there, and MNIST under
# $VAELAB_DATA_DIR. Results go to $OUT (default /tmp/vaelab-gpu-check).
#
#     VAELAB_DATA_DIR=/path/to/data bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/vaelab-gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run="$out/run"
time python3 -m vaelab train --out "$run" --epochs 2 --device cuda --quiet
time python3 -m vaelab train --resume "$run" --epochs 3 --quiet
time python3 -m vaelab evaluate "$run" --iw-samples 1000 --limit 2000 --quiet
python3 -m vaelab sample "$run" --out "$out"
time python3 bench/speed.py --max-epochs 10 --json "$out/speed-gpu.json"  # -> bench/results/
