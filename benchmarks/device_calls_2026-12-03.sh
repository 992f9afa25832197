#!/bin/bash
# 2026-12-03 (sixth session) device calls. A: setup + start the chain (setsid) and wait; B: wait and collect.
set -u
STAGE=$1; LIMIT=${2:-570}
source benchmarks/device_setup.sh
mkdir -p /tmp/chain
collect() { mkdir -p $OUT/chain; cp -r /tmp/chain/* $OUT/chain/ 2>/dev/null; }
case $STAGE in
A)
  { nvidia-smi; python3 -c "import torch,transformers,torchao,triton;print(torch.__version__,transformers.__version__,torchao.__version__,triton.__version__)"; } > /tmp/chain/env.txt 2>&1
  tail -1 /tmp/chain/env.txt
  cp benchmarks/chain.sh /tmp/chain.sh
  setsid nohup bash /tmp/chain.sh > /tmp/chain/chain.log 2>&1 < /dev/null &
  ;;
esac
while [ ! -f /tmp/chain/done ] && [ $SECONDS -lt $LIMIT ]; do sleep 5; done
collect; tail -5 /tmp/chain/chain.log; ls /tmp/chain
