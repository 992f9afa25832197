#!/bin/bash
# Device calls written in the twelfth session, replacing device_calls_2026-12-04.sh (copy as gpu_call.sh at the
# repo root, ignored by git).
#   A: setup + start benchmarks/chain.sh (setsid) and return at once — carry .whl, .pw (pytest wheels), .carry1,
#      gpu_call.sh;
#   B LIMIT: wait up to LIMIT s for the chain's done file, then collect /tmp/chain into $OUT — carry .carry2;
#   C N: return the kept student's parts N..N+3 (15 MB each: /tmp/studentparts, made by the chain) — the
#        student distilled on the GPU, for the CPU speculative run (speculative.py --draft-from).
# Each call within 30 s of the last one's return, or the machine (and the chain) is gone.
set -u
STAGE=$1; ARG=${2:-570}
source benchmarks/device_setup.sh
mkdir -p /tmp/chain
# one tarball (a call brings back at most 8 files) and the chain's log beside it
collect() { tar czf $OUT/chain.tgz -C /tmp chain; cp /tmp/chain/chain.log $OUT/ 2>/dev/null; }
if [ $STAGE = A ]; then
  { nvidia-smi; python3 -c "import torch,transformers,triton;print(torch.__version__,transformers.__version__,triton.__version__)"; } > /tmp/chain/env.txt 2>&1
  tail -1 /tmp/chain/env.txt
  cp benchmarks/chain.sh /tmp/chain.sh
  setsid nohup bash /tmp/chain.sh > /tmp/chain/chain.log 2>&1 < /dev/null &
  exit 0
fi
if [ $STAGE = C ]; then
  ls /tmp/studentparts | sed -n "$((ARG + 1)),$((ARG + 4))p" | while read f; do cp /tmp/studentparts/$f $OUT/; done
  ls -la $OUT; exit 0
fi
while [ ! -f /tmp/chain/done ] && [ $SECONDS -lt $ARG ]; do sleep 3; done
collect; tail -5 /tmp/chain/chain.log; ls /tmp/chain
