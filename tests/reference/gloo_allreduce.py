#!/usr/bin/python3
"""Gloo baseline for `troupe bench allreduce`: PyTorch 1.13's torch.distributed all_reduce
(gloo backend, float32 sum, processes on loopback) over the sizes and with the method of
ours: per size one warm-up round and 3 timed rounds of iters all-reduces (64 MiB / size,
clamped to 5..200), a round's time the slowest rank's mean, the median round reported; then
one checked all-reduce of integer data. One line per size on rank 0:
  size <bytes> time_us <t> wrong <n>
Usage: /usr/bin/python3 tests/reference/gloo_allreduce.py --world N [--max-bytes B]"""
import argparse, datetime, os, sys, time
from torch_launch import launch, check_thread_env

ap = argparse.ArgumentParser()
ap.add_argument('--world', type=int, default=2)
ap.add_argument('--max-bytes', type=int, default=64 << 20)
ap.add_argument('--timeout', type=int, default=0)
ap.add_argument('--rank', type=int, default=None, help=argparse.SUPPRESS)
a = ap.parse_args()
if a.rank is None:
    launch(os.path.abspath(__file__), sys.argv[1:], a.world, 1, 'gloo_allreduce', a.timeout)
    sys.exit(0)
check_thread_env(1, 'gloo_allreduce')
import torch
import torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group('gloo', rank=a.rank, world_size=a.world, timeout=datetime.timedelta(seconds=120))
n, r = a.world, a.rank
size = 4096
while size <= a.max_bytes:
    count = size // 4
    iters = max(5, min(200, (64 << 20) // size))
    d = torch.zeros(count)
    slowest = []
    for rnd in range(4):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(d)
        mine = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        if rnd > 0:
            slowest.append(mine.item())
    slowest.sort()
    idx = torch.arange(count)
    d = ((r + 1) * (1 + idx % 7)).float()
    dist.all_reduce(d)
    want = (n * (n + 1) // 2) * (1 + idx % 7).float()
    wrong = torch.tensor([int((d != want).sum())])
    dist.all_reduce(wrong)
    if r == 0:
        print(f"size {size} time_us {slowest[1] * 1e6:.2f} wrong {int(wrong.item())}", flush=True)
    size *= 4
dist.destroy_process_group()
