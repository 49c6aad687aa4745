#!/usr/bin/python3
"""PyTorch DistributedDataParallel baseline (gloo, loopback): --world processes with --threads
intra-op threads each train the same model, recipe and data as torch_fmnist_mlp.py (--model mlp)
or torch_fortunes_gpt.py (--model gpt). --batch is the GLOBAL batch (default 128 mlp, 16 gpt);
each rank takes its own B/world slice of every global batch (rank-offset sampling from the same
permutation / window draws as the single-process script, so the global batch is the same).
Usage: /usr/bin/python3 tests/reference/torch_ddp.py --model mlp|gpt [--world 2] [--threads 1] [--steps S] [--batch B]
One command starts all ranks (OMP/OPENBLAS_NUM_THREADS = --threads is set before they import torch).
Each rank times forward + backward (with DDP's all-reduce) + optimizer step (+ clip for gpt),
not the batch assembly; rank 0 reports global batch / median step time after 3 warm-up steps:
  torch ddp model=mlp world=2 threads=1 steps=40 samples/s=12345 last_loss=0.1234
(gpt: tokens/s = global batch * 128 / median). last_loss is the last step's loss averaged over ranks."""
import argparse, os, sys, time
from torch_launch import launch, check_thread_env

ap = argparse.ArgumentParser()
ap.add_argument('--model', choices=('mlp', 'gpt'), required=True)
ap.add_argument('--world', type=int, default=2, help='number of processes')
ap.add_argument('--threads', type=int, default=1, help='intra-op threads per process')
ap.add_argument('--steps', type=int, default=None, help='training steps (default 40 mlp, 20 gpt)')
ap.add_argument('--batch', type=int, default=None, help='GLOBAL batch (default 128 mlp, 16 gpt)')
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--pg-timeout', type=int, default=60, help='seconds before a stuck collective fails')
ap.add_argument('--timeout', type=int, default=0, help='launcher: kill the ranks after this many seconds (0: never)')
ap.add_argument('--rank', type=int, default=None, help=argparse.SUPPRESS)
a = ap.parse_args()
if a.steps is None: a.steps = 40 if a.model == 'mlp' else 20
if a.batch is None: a.batch = 128 if a.model == 'mlp' else 16
if a.world < 1 or a.threads < 1 or a.steps < 1:
    sys.exit("torch_ddp: --world, --threads and --steps must be >= 1")
if a.batch % a.world:
    sys.exit(f"torch_ddp: the global --batch {a.batch} is not divisible by --world {a.world}")

if a.rank is None:
    launch(os.path.abspath(__file__), sys.argv[1:], a.world, a.threads, 'torch_ddp', a.timeout)
    sys.exit(0)

check_thread_env(a.threads, 'torch_ddp')
import datetime
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
import torch_common as tc

torch.set_num_threads(a.threads)
dist.init_process_group('gloo', rank=a.rank, world_size=a.world, timeout=datetime.timedelta(seconds=a.pg_timeout))
torch.manual_seed(a.seed)
b = a.batch // a.world          # this rank's share of the global batch
lo, hi = a.rank * b, (a.rank + 1) * b

if a.model == 'mlp':
    xtr, ytr, _, _ = tc.load_fmnist(test=False)
    model = DDP(tc.make_mlp())
    opt = tc.mlp_optimizer(model.parameters())
    def batches():  # same permutation on every rank (same seed); rank r takes slice r of each global batch
        while True:
            perm = torch.randperm(len(ytr))
            for i in range(0, len(ytr) - a.batch + 1, a.batch):
                idxs = perm[i + lo:i + hi]
                yield xtr[idxs], ytr[idxs]
    def train_step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss
    per_sample = 1
else:
    train, _ = tc.load_fortunes()
    model = DDP(tc.GPT())
    opt = tc.gpt_optimizer(model.parameters())
    g = torch.Generator().manual_seed(a.seed)
    def batches():  # same window draws on every rank (same generator seed); rank r takes slice r
        while True:
            yield tc.gpt_windows(train, tc.gpt_batch_starts(train, g, a.batch)[lo:hi])
    def train_step(x, y):
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.GPT_CLIP)
        opt.step()
        return loss
    per_sample = tc.T

times, data = [], batches()
for step in range(a.steps):
    xb, yb = next(data)  # batch assembly is not timed, as in troupe bench
    t0 = time.perf_counter()
    loss = train_step(xb, yb)
    times.append(time.perf_counter() - t0)
last = loss.detach().clone()
dist.all_reduce(last)  # untimed: the last step's loss over the whole global batch
median = tc.median_step(times)
unit = 'samples/s' if a.model == 'mlp' else 'tokens/s'
if a.rank == 0:
    print(f"torch ddp model={a.model} world={a.world} threads={a.threads} steps={a.steps} "
          f"{unit}={a.batch * per_sample / median:.0f} last_loss={last.item() / a.world:.4f}", flush=True)
dist.destroy_process_group()
