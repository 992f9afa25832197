#!/bin/bash
# the seventh session's GPU work (2026-12-03), second lease (the first ended idle mid-ladder), in order, each step
# with its own time limit; every result under /tmp/chain
C=/tmp/chain
step() { local name=$1 lim=$2; shift 2; echo "== $name start $(date +%s)"; timeout $lim "$@" > $C/$name.log 2>&1; echo "== $name rc $? end $(date +%s)"; }
step l8b1 450 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 1 --rungs graph-decode+cdt,int8-gl+fuse,int4-gl+fuse,int4-wo+fuse --out $C/l8b1
step l1b1 200 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-1b --batches 1 --rungs int4-gl+fuse,int4-wo+fuse --out $C/l1b1
step l8b8 350 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-8b --batches 8 --rungs graph-decode+cdt,int8-gl+fuse,int4-gl+fuse --out $C/l8b8
step l1b8 300 python3 benchmarks/gpu_ladder.py --rounds 3 --accuracy-model '' --skip-extras --models llama-1b --batches 8 --rungs graph-decode+fused,int8-gl+fuse,int4-gl+fuse --out $C/l1b8
touch $C/done
