#!/usr/bin/env bash
# One prepared GPU session (a few minutes): DP exactness on CUDA, DP vs non-DP throughput, training
# and sampling throughput at 64² and 128² for fp32 and bf16 (one torch.compile run); each training run
# also prints its MFU against a matmul peak measured in the same process (bench/mfu.py).
#
#   bash bench/gpu.sh                 # writes $OUT (or ./bench-gpu-out) with one log per setting
#   PY=python3 bash bench/gpu.sh      # use an interpreter that already has the dependencies
#
# Without PY it installs the project into .venv first if needed (make setup). Copy the printed
# numbers, the card's name (nvidia-smi line at the top) and the date into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu-out}"
mkdir -p "$out"
if [ -z "${PY:-}" ]; then
  [ -x .venv/bin/python ] || make setup >"$out/setup.log" 2>&1
  PY=.venv/bin/python
fi
export PYTHONUNBUFFERED=1
{
  date -u +"%Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, diffusers, opacus; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'opacus', opacus.__version__)"
} | tee "$out/machine.txt"

run() {  # seconds, name, command...
  local limit=$1 name=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 7 "$out/$name.log"  # a training run ends with its ratio, the matmul peak and two MFU lines
  [ $rc -eq 0 ] || echo "   (exit $rc)"
}

run 120 dp-exact-cuda       $PY -m pytest -q -p no:cacheprovider tests/dp/test_per_record.py -k cuda
run 120 dp-throughput-64    $PY bench/dp.py --device cuda --preset small --resolution 64 --batch-size 64 --rounds 4 --steps 5
for res in 64 128; do
  batch=64; [ "$res" = 128 ] && batch=32
  run 90 "train-${res}-fp32" $PY bench/train.py --device cuda --preset small --resolution $res --batch-size $batch --mixed-precision no   --rounds 3 --steps 20 --mfu
  run 90 "train-${res}-bf16" $PY bench/train.py --device cuda --preset small --resolution $res --batch-size $batch --mixed-precision bf16 --rounds 3 --steps 20 --mfu
  run 90 "sample-${res}-bf16" $PY bench/sample.py --device cuda --preset small --resolution $res --batch-size 64 --mixed-precision bf16 --json "$out/sample-${res}-bf16.json"
done
run 150 train-64-bf16-compile $PY bench/train.py --device cuda --preset small --resolution 64 --batch-size 64 --mixed-precision bf16 --compile --rounds 3 --steps 20 --mfu
