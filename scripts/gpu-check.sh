#!/usr/bin/env bash
# The GPU checks, on a bare GPU machine: no internet, no package registry, its own python with
# torch, torchvision, onnx, onnxruntime, onnxscript, numpy 2 (no pydantic, no tritonserver), and a
# copy of this checkout. Nothing is pip-installed but the carried wheels; the pinned torch of
# pyproject.toml is not needed.
#
#   make gpu-wheels                  # here, once: wheels of what such machines lack -> .gpu-wheels/
#   scripts/gpu-check.sh             # there (carry .gpu-wheels along with the checkout)
#   scripts/gpu-check.sh --device cpu --quick    # the assembly alone, on any machine (a test)
#
# It runs `s4seg doctor`, `s4seg bench train` (DeepLabv2 and s4GAN steps in fp32 / fp32+cl /
# bf16 / bf16+cl, and the UniMatch V2 step on ViT-S/14 and ViT-B/14 at 518) and a short s4GAN run on the synthetic set whose progress lines show how much
# of each step waited for the data loader. Figures go to $OUT (default ./gpu-check-out):
# doctor/doctor.json, BENCHMARKS.md (this checkout's, with the GPU sections replaced), logs.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out=$(realpath -m "${OUT:-$root/gpu-check-out}")
device=cuda
quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1
work=$(mktemp -d /tmp/s4seg-gpu-check.XXXXXX)  # our own folder: a reused machine keeps /tmp
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# 1. What the machine lacks, from the carried wheels (only if it is not importable already).
if ! "$python" -c "import pydantic, timm" 2>/dev/null; then
  if ! ls "$root"/.gpu-wheels/*.whl >/dev/null 2>&1; then
    echo "gpu-check: pydantic or timm is missing and there is no .gpu-wheels/ (make gpu-wheels)" >&2
    exit 2
  fi
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" \
    "$root"/.gpu-wheels/*.whl || exit 2
fi

# 2. The package as installed: s4seg/ plus each stage folder as s4seg.<stage>, by the mapping of
# pyproject.toml (one place says which folder is which package).
"$python" - "$root" "$work/pkg" <<'PY' || exit 2
import shutil, sys, tomllib
from pathlib import Path
root, pkg = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for name, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
    target = pkg.joinpath(*name.split("."))
    shutil.copytree(root / folder, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
PY
export PYTHONPATH="$work/site:$work/pkg"
# Run from the work folder: in the checkout's root, `python -m` would import ./s4seg, the core
# without its stages.
cd "$work" || exit 2
s4seg() { "$python" -m s4seg "$@"; }
cp "$root/BENCHMARKS.md" "$out/BENCHMARKS.md"
status=0

if [ $quick = 1 ]; then
  s4seg doctor --env-only | tee "$out/doctor.txt" || status=1
  s4seg bench train --device "$device" --depths 18 --crop 32 --batch-size 2 --iterations 2 \
    --warmup 1 --precisions fp32 --write "$out/BENCHMARKS.md" > "$out/bench-train.log" 2>&1 \
    || { echo "bench train FAILED"; tail -n 5 "$out/bench-train.log"; status=1; }
  s4seg bench train --device "$device" --trainer unimatch-v2 --backbones vit_tiny_patch14 \
    --crop 56 --batch-size 2 --iterations 2 --warmup 1 --precisions fp32 \
    --write "$out/BENCHMARKS.md" > "$out/bench-train-vit.log" 2>&1 \
    || { echo "bench train (ViT) FAILED"; tail -n 5 "$out/bench-train-vit.log"; status=1; }
  exit $status
fi

# 3. Every stage once on the device (exit 1 on a failed stage).
s4seg doctor --device "$device" --out "$out/doctor" | tee "$out/doctor.txt" || status=1

# 4. The training step per precision: DeepLabv2 R101 321x321 batch 8, the s4GAN step, and the
# UniMatch V2 step on ViT-S/14 and ViT-B/14 at 518, batch 8 + 8.
for trainer in segmenter s4gan unimatch-v2; do
  s4seg bench train --device "$device" --trainer $trainer --write "$out/BENCHMARKS.md" \
    > "$out/bench-train-$trainer.log" 2>&1 \
    || { echo "bench train --trainer $trainer FAILED"; tail -n 5 "$out/bench-train-$trainer.log"; status=1; }
done

# 5. The real s4GAN trainer on the synthetic set: is the GPU waiting for the loader?
s4seg data synth --out "$work/synth" > /dev/null 2>&1 || status=1
s4seg train s4gan --config synthetic-quick --set data.root="$work/synth" \
  --set train.device="$device" --set train.iterations=300 --set train.val_every=300 \
  --set train.log_every=50 --set data.num_workers=4 --set train.out_dir="$work/s4gan" \
  > "$out/train-s4gan-synthetic.log" 2>&1 || { echo "train s4gan FAILED"; status=1; }
grep -E "^\[" "$out/train-s4gan-synthetic.log" | tail -n 3

echo "gpu-check: figures in $out (status $status)"
exit $status
