#!/usr/bin/env bash
# Own images on a CUDA machine: bench/images.py's rows on the GPU (20,000 + 2,000 images of
# each folder, so that it fits a short loan), and a colour JPEG folder of mixed sizes trained
# with --arch resnet on CUDA, evaluated and drawn. Needs torch, torchvision, matplotlib, numpy,
# tqdm and pillow, and MNIST under $VAELAB_DATA_DIR. Results go to $OUT.
#
#     VAELAB_DATA_DIR=/path/to/data OUT=/tmp/gpu-images bash bench/gpu_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/vaelab-gpu-images}
work=$(mktemp -d)
mkdir -p "$out"
export VAELAB_CACHE_DIR="$work/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, torchvision.__version__, torch.cuda.get_device_name())"
python3 bench/images.py --out "$work/bench" --limit-train 20000 --limit-val 2000 --epochs 2 \
    --device cuda --json "$out/images-gpu.json"  # -> bench/results/
python3 scripts/mnist_to_images.py "$work/cjpg" --colour --format jpg --sizes 28,36,44 \
    --limit-train 10000 --limit-val 1000
time python3 -m vaelab train --data "$work/cjpg" --image-size 32 --channels 3 --arch resnet \
    --epochs 3 --device cuda --out "$work/resnet" --quiet | tee "$out/resnet.txt"
python3 -m vaelab evaluate "$work/resnet" --iw-samples 100 --limit 500 --quiet | tee -a "$out/resnet.txt"
python3 -m vaelab reconstruct "$work/resnet" --out "$out"
python3 -m vaelab sample "$work/resnet" --out "$out"
