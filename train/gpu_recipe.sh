#!/usr/bin/env bash
# The GPU recipe in one command: train the embedded model further on live-rendered worlds for a
# wall-clock budget, export it in the shipped format and print its validation figures.
#
#   bash train/gpu_recipe.sh [MINUTES=6] [OUT=runs/gpu_recipe] [key=value ...]   # overrides of configs/train/gpu_recipe.yaml
#
# Prepare on the CPU machine (the GPU machine has torch, transformers, accelerate, safetensors,
# peft, numpy, pillow, torchmetrics; it lacks diffusers, omegaconf, importlib-metadata and the
# text encoder package):
#   bash train/gpu_wheels.sh                                   # -> .whl/*.whl
#   python data_tools/text_features.py --model slowfast_vgen/assets/default_model --out .whl/text_features.safetensors
# then run this script there with .whl carried. Output: OUT/model (the exported model), OUT/train_log.jsonl,
# OUT/eval-train/ and OUT/eval-heldout/ (results.{json,md}: one-chunk accuracy and PSNR on held-out worlds,
# training and held-out phrasings).
# Environment: TEXT_FEATURES (default .whl/text_features.safetensors), EVAL_ROUTES (8), EVAL_STEPS (model default).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-6}
out=${2:-runs/gpu_recipe}
shift $(( $# < 2 ? $# : 2 ))
features=${TEXT_FEATURES:-.whl/text_features.safetensors}
for name in EVAL_ROUTES EVAL_STEPS; do  # checked now, not after the whole training budget
  value=${!name:-}
  if [ -n "$value" ] && ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $name must be a positive integer, got '$value'" >&2
    exit 2
  fi
done
# find_spec looks the packages up without importing them (importing diffusers alone takes seconds)
if ! python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('diffusers') and u.find_spec('omegaconf')))"; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sfvgen-site .whl/*.whl
  export PYTHONPATH=/tmp/sfvgen-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 train/train_slow.py --config configs/train/gpu_recipe.yaml "max_minutes=$minutes" "output_dir=$out" \
  "text_features=$features" "$@"
eval_args=(--suite chunk --variants off --seeds 0 --routes "${EVAL_ROUTES:-8}" --quiet)
if [ -n "${EVAL_STEPS:-}" ]; then eval_args+=(--steps "$EVAL_STEPS"); fi
for phrasing in train heldout; do
  python3 -m slowfast_vgen eval "${eval_args[@]}" --model "$out/model" --text-features "$features" \
    --out "$out/eval-$phrasing" "phrasing=$phrasing"
  echo "== one-chunk prediction on held-out worlds, $phrasing phrasings =="
  cat "$out/eval-$phrasing/results.md"
done
echo "== last validation lines =="
# no validation logged (validate_every=0, or a budget shorter than its interval) is no failure of the run
grep -s '"val_loss"' "$out/train_log.jsonl" | tail -n 3 || echo "(no validation logged)"
