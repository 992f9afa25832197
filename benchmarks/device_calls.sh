#!/bin/bash
# The device calls of 2026-12-02 (fifth session), kept so the next GPU session can repeat them in few full calls.
# usage (from the repo root on the device machine): bash benchmarks/device_calls.sh A|B|C [seconds]
#   A: install the carried wheels (.whl/), assemble demo:smollm2's GGUF from .carry1/ + .carry2/ (two 48 MB parts
#      with a sha256), build the 8B folder, start `optbench tune ... --budget 15m` in its own process session
#      (setsid: it outlives the call) and wait; B: wait for the tune, then the TUI SVGs and pytest -m gpu;
#   C: speculative rows and the calibrated-int4 accuracy table. Each call copies what it has to $OUT.
# Calls must follow each other within the machine's 30 s idle window, or the tune (and /tmp) is lost.
set -u
STAGE=$1
source benchmarks/device_setup.sh
mkdir -p /tmp/tune
if [ ! -f /tmp/llama-8b/config.json ]; then
  t0=$SECONDS; python3 benchmarks/build_model.py llama-8b /tmp/llama-8b > $OUT/build.log 2>&1 || { cat $OUT/build.log; exit 1; }
  echo "built llama-8b in $((SECONDS-t0)) s"
fi
wait_tune() {  # until the tune wrote rc or SECONDS reaches $1
  while [ ! -f /tmp/tune/rc ] && [ $SECONDS -lt $1 ]; do sleep 5; done
  cp /tmp/tune/tune.* $OUT/ 2>/dev/null; [ -f /tmp/tune/rc ] && cp /tmp/tune/rc $OUT/tune.rc
  [ -f /tmp/tune/start ] && echo "tune: started $(cat /tmp/tune/start), now $(date +%s), rc $(cat /tmp/tune/rc 2>/dev/null)"
  tail -3 /tmp/tune/tune.err 2>/dev/null
  [ -f /tmp/tune/rc ]
}
case $STAGE in
A)
  { nvidia-smi; python3 -c "import torch,transformers,torchao,textual;print(torch.__version__,transformers.__version__,torchao.__version__,textual.__version__)"; } > $OUT/env.txt 2>&1
  tail -1 $OUT/env.txt
  date +%s > /tmp/tune/start
  setsid nohup bash -c 'python3 -m workbench tune --model /tmp/llama-8b --device cuda --budget 15m --json --sessions-dir /tmp/tune/sessions --session tune8b > /tmp/tune/tune.json 2> /tmp/tune/tune.err; echo $? > /tmp/tune/rc; date +%s > /tmp/tune/end' > /dev/null 2>&1 < /dev/null &
  wait_tune 575
  ;;
B)
  wait_tune 585 || exit 0
  cp /tmp/tune/end $OUT/tune.end 2>/dev/null
  T=$((585 - SECONDS)); echo "svg with $T s left"  # needs textual, textual-plotext and plotext in .whl/
  [ $T -gt 200 ] && timeout $T python3 scripts/screenshots.py --gpu --model /tmp/llama-8b --out $OUT/svg > $OUT/svg.log 2>&1; echo "svg rc $?"; tail -5 $OUT/svg.log
  T=$((590 - SECONDS)); [ $T -gt 60 ] && timeout $T python3 -m pytest -m gpu -p no:cacheprovider -q tests/test_opt_gpu.py tests/test_fuse_quantized.py > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest-gpu.txt
  ;;
C)
  T=${2:-500}
  [ -f $OUT/../pytest-done ] || true
  if [ "${3:-}" = pytest ]; then timeout 200 python3 -m pytest -m gpu -p no:cacheprovider -q tests/test_opt_gpu.py tests/test_fuse_quantized.py > $OUT/pytest-gpu.txt 2>&1; echo "pytest rc $?"; tail -3 $OUT/pytest-gpu.txt; fi
  L=$((T - SECONDS - 150)); [ $L -gt 90 ] && timeout $L python3 benchmarks/speculative.py --device cuda --graph --draft-layers 8 --distill-seconds 90 --rounds 3 --out $OUT --stem speculative_h200 > $OUT/spec.log 2>&1; echo "spec rc $?"; tail -12 $OUT/spec.log
  L=$((T - SECONDS - 5)); [ $L -gt 60 ] && timeout $L python3 benchmarks/quant_accuracy.py --device cuda --opts "int4-weight-only;int4-weight-only:algorithm=awq-gptq;int4-weight-only:algorithm=gptq;int4-weight-only:algorithm=awq-gptq,group_size=64;int4-weight-only:algorithm=gptq,group_size=64;int4-weight-only:algorithm=awq-gptq,group_size=32" --out $OUT --stem quant_accuracy_h200_smollm2_calib > $OUT/qa.log 2>&1; echo "qa rc $?"; tail -12 $OUT/qa.log
  ;;
esac
