#!/bin/bash
# 2026-12-04 (tenth session) device calls. A: setup + start the chain (setsid) and return at once (the GGUF's
# second part comes with B); B: wait up to LIMIT s for the chain's done file, then collect /tmp/chain into $OUT.
set -u
STAGE=$1; LIMIT=${2:-570}
source benchmarks/device_setup.sh
mkdir -p /tmp/chain
collect() { mkdir -p $OUT/chain; cp -r /tmp/chain/* $OUT/chain/ 2>/dev/null; }
if [ $STAGE = A ]; then
  { nvidia-smi; python3 -c "import torch,transformers,torchao,triton;print(torch.__version__,transformers.__version__,torchao.__version__,triton.__version__)"; } > /tmp/chain/env.txt 2>&1
  tail -1 /tmp/chain/env.txt
  cp benchmarks/chain.sh /tmp/chain.sh
  setsid nohup bash /tmp/chain.sh > /tmp/chain/chain.log 2>&1 < /dev/null &
  exit 0
fi
while [ ! -f /tmp/chain/done ] && [ $SECONDS -lt $LIMIT ]; do sleep 3; done
collect; tail -5 /tmp/chain/chain.log; ls /tmp/chain
