#!/usr/bin/env bash
# One prepared GPU benchmark: training and sampling throughput at 64² and 128² for fp32, bf16 and
# bf16 + torch.compile. Meant for the lent GPU machine: a few minutes in all.
#
#   bash bench/gpu.sh            # writes $OUT (or ./bench-gpu-out) with one log per setting
#
# It installs the project into .venv first if needed (make setup). Copy the printed numbers, the
# card's name (nvidia-smi line at the top) and the date into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-gpu-out}"
mkdir -p "$out"
[ -x .venv/bin/python ] || make setup >"$out/setup.log" 2>&1
py=.venv/bin/python
{
  date -u +"%Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$out/machine.txt"

run() {  # name, command...
  local name=$1; shift
  echo "== $name"
  timeout 240 "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 6 "$out/$name.log"
  [ $rc -eq 0 ] || echo "   (exit $rc)"
}

for res in 64 128; do
  preset=small; batch=64
  [ "$res" = 128 ] && batch=32
  run "train-${res}-fp32"         $py bench/train.py --device cuda --preset $preset --resolution $res --batch-size $batch --mixed-precision no   --rounds 3 --steps 20
  run "train-${res}-bf16"         $py bench/train.py --device cuda --preset $preset --resolution $res --batch-size $batch --mixed-precision bf16 --rounds 3 --steps 20
  run "train-${res}-bf16-compile" $py bench/train.py --device cuda --preset $preset --resolution $res --batch-size $batch --mixed-precision bf16 --compile --rounds 3 --steps 20
  run "sample-${res}-fp32"         $py bench/sample.py --device cuda --preset $preset --resolution $res --batch-size 64 --mixed-precision no   --json "$out/sample-${res}-fp32.json"
  run "sample-${res}-bf16"         $py bench/sample.py --device cuda --preset $preset --resolution $res --batch-size 64 --mixed-precision bf16 --json "$out/sample-${res}-bf16.json"
  run "sample-${res}-bf16-compile" $py bench/sample.py --device cuda --preset $preset --resolution $res --batch-size 64 --mixed-precision bf16 --compile --json "$out/sample-${res}-bf16-compile.json"
done
