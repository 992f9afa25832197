"""Tensor parallelism: one model's every layer split over N processes (one per GPU, or CPU processes with gloo).

transformers builds the split (``from_pretrained`` with ``tp_plan="auto"``: the model's own plan, weights as
DTensor shards); torchrun starts the processes (``python -m torch.distributed.run``); NCCL (CUDA) or gloo (CPU)
carries the all-reduces. The front ends still see one job:

- rules.py    what a recipe with ``tp`` may hold, checked before launching (torch-free)
- launch.py   the torchrun command, its environment, and how a rank's failure becomes the job's one error event
              (torch-free: the job client uses it)
- group.py    inside a rank: the process group, rank 0's decisions agreed by every rank (the bench loop's stop),
              gathers (torch)
- gather.py   a tensor-parallel model's full weights gathered into one ordinary model on rank 0 for export
"""
