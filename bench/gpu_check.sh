#!/usr/bin/env bash
# One prepared GPU run of ovss, at most 8 minutes on one GPU (each step has its own time limit):
#   0. deps:    ovss's own Python dependencies, installed from the carried .wheels/ where the image lacks
#               them (bench/gpu_deps.py; prepare with `python -m bench.gpu_deps --fetch` where pip works)
#   1. device: torch, the GPU's name, bf16 support, the CPU (bench/common.py device_header)
#   2. tests:   tests/api/test_segmenter_device.py on the device (tiny models of every family, CUDA against
#               the CPU in float32 within 1e-5, TF32 off)
#   3. segment: bench_segment for every model at K = 20 and 150 in fp32, bf16 and fp16, with the peak
#               GPU memory of the timed runs (JSON rows in $OUT/segment.jsonl)
#   4. compile: one torch.compile trial and one CUDA-graph trial of SAN ViT-B/16 (bench_compile)
# Usage:
#   bash bench/gpu_check.sh [--device cuda|cuda:N|cpu] [--dry-run] [--out DIR]
# --dry-run: tiny random models, small images, one K and fp32 only, no timing repeats and the "eager"
# compile backend: every step runs (about a minute on a quiet CPU; tests/bench/test_gpu_check.py runs it on
# the CPU). Logs go to DIR (default: $OUT when set, else ./gpu_check_out). Exit status: the number of
# failed steps (0 = all ran).
set -u
device=cuda
dry=0
out=${OUT:-gpu_check_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=${2:?--device needs a value}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1'; use [--device cuda|cpu] [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
export PYTHONPATH="$root/src:$root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$(command -v python3 || command -v python || echo python3)}  # the GPU image has python3 only
mkdir -p "$out"
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, count failures
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" > >(tee "$out/$name.log") 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

if [ "$dry" -eq 1 ]; then
  runs=(test-san-tiny test-catseg-tiny:inference=whole test-catseg-tiny:inference=slide test-sed-tiny)
  seg_args=(--classes 3 --dtypes fp32 --size 64 80 --repeat 0 --threads 1)
  san=test-san-tiny
  compile_args=(--size 64 64 --classes 3 --repeat 1 --dtype fp32 --backend eager)
  limits=(120 300 600 300)  # generous: a dry run checks the paths, not the time
else
  runs=(san-vit-b16 catseg-vit-b16:inference=whole catseg-vit-b16:inference=slide sed-convnext-b)
  seg_args=(--classes 20 150 --dtypes fp32 bf16 fp16 --repeat 2)
  san=san-vit-b16
  compile_args=(--repeat 5)
  limits=(20 60 270 130)  # 8 minutes in all
fi
rm -f "$out/segment.jsonl"

# ovss's own dependencies: the GPU image lacks ftfy and wcwidth; bench/gpu_deps.py installs them for this
# run from .wheels/ (fetched beforehand with `python -m bench.gpu_deps --fetch`, carried with the tree)
echo "== deps: $python -m bench.gpu_deps"
if site=$("$python" -m bench.gpu_deps --target "${TMPDIR:-/tmp}/ovss_gpu_site"); then
  [ -z "$site" ] || export PYTHONPATH="$site:$PYTHONPATH"
  echo "== deps: ok${site:+ (installed into $site)}"
else
  failed=$((failed + 1))
fi

step device "${limits[0]}" "$python" -c "
import sys, torch
from bench.common import device_header
dev = sys.argv[1]
print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())
print(device_header(dev))
if dev.startswith('cuda') and not torch.cuda.is_available():
    sys.exit('CUDA is not available on this machine; run with --device cpu')
" "$device"
OVSS_TEST_DEVICE=$device step tests "${limits[1]}" "$python" -m pytest -q -p no:xdist -p no:cacheprovider \
  tests/api/test_segmenter_device.py
step segment "${limits[2]}" "$python" -m bench.bench_segment --device "$device" --runs "${runs[@]}" \
  "${seg_args[@]}" --json "$out/segment.jsonl"
step compile "${limits[3]}" "$python" -m bench.bench_compile --device "$device" --model "$san" "${compile_args[@]}"

echo "gpu_check: $failed failed step(s); logs in $out"
exit "$failed"
