#!/usr/bin/env bash
# Download, on the CPU machine, the pure-Python wheels the GPU recipe needs and the GPU image lacks
# (it has torch, transformers, accelerate, safetensors, peft, numpy, pillow, torchmetrics, tqdm,
# huggingface-hub): diffusers and omegaconf, pinned as in constraints.txt, and importlib-metadata, which
# diffusers declares (on Python 3.12 it is not imported; carried so that no install step can miss it).
# They land in .whl/ (git-ignored), which the device run carries; train/gpu_recipe.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl diffusers==0.42.1 omegaconf==2.4.0 importlib-metadata==10.2.0
ls -la .whl
