#!/usr/bin/python3
"""PyTorch 2-stage pipeline baseline (GPipe schedule, gloo send/recv on loopback) for the
fortunes GPT of torch_fortunes_gpt.py: same model, init, recipe and batches.
Stage 0 (rank 0): wte, wpe and the first half of the blocks; stage 1 (rank 1): the second half,
ln_f and the tied head, with its own copy of wte (initialised identically); after backward the
two wte gradients are all-reduced (summed) so both copies stay equal, as Megatron does.
Each step the global batch of 16 is split into --micro micro-batches: stage 0 runs all forwards
and sends the activations; stage 1 receives them and runs forward + loss (scaled by 1/micro) for
all of them, then backward for each, sending the activation gradients back; stage 0 receives them
and runs its backwards. Then one grad-norm clip to 1.0 over both stages (squared norms all-reduced,
wte counted once) and an AdamW step on each stage.
Usage: /usr/bin/python3 tests/reference/torch_pipeline.py [--steps 20] [--micro 4] [--threads 1] [--seed S] [--print-losses]
One command starts both ranks (OMP/OPENBLAS_NUM_THREADS = --threads is set before they import torch).
A step is timed from after the (untimed) batch assembly and a barrier to the end of the optimizer
step, on each rank; the step time is the max of the two, the report uses the median after 3
warm-up steps:  torch pipeline stages=2 micro=4 threads=1 steps=20 tokens/s=1234 last_loss=5.4321
--print-losses first prints `step I loss X` lines, to compare with torch_fortunes_gpt.py --print-losses."""
import argparse, os, sys, time
from torch_launch import launch, check_thread_env

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=20)
ap.add_argument('--micro', type=int, default=4, help='micro-batches per step (must divide the batch of 16)')
ap.add_argument('--threads', type=int, default=1, help='intra-op threads per process')
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--print-losses', action='store_true', help='print each step\'s training loss before the summary line')
ap.add_argument('--pg-timeout', type=int, default=60, help='seconds before a stuck send/recv/collective fails')
ap.add_argument('--timeout', type=int, default=0, help='launcher: kill the ranks after this many seconds (0: never)')
ap.add_argument('--rank', type=int, default=None, help=argparse.SUPPRESS)
a = ap.parse_args()
STAGES, BATCH = 2, 16
if a.threads < 1 or a.steps < 1 or a.micro < 1:
    sys.exit("torch_pipeline: --threads, --steps and --micro must be >= 1")
if BATCH % a.micro:
    sys.exit(f"torch_pipeline: --micro {a.micro} does not divide the batch of {BATCH}")

if a.rank is None:
    launch(os.path.abspath(__file__), sys.argv[1:], STAGES, a.threads, 'torch_pipeline', a.timeout)
    sys.exit(0)

check_thread_env(a.threads, 'torch_pipeline')
import datetime
import torch
import torch.distributed as dist
import torch.nn as nn
import torch_common as tc

torch.set_num_threads(a.threads)
dist.init_process_group('gloo', rank=a.rank, world_size=STAGES, timeout=datetime.timedelta(seconds=a.pg_timeout))
torch.manual_seed(a.seed)
train, _ = tc.load_fortunes()
full = tc.GPT()  # the whole model, initialised exactly as torch_fortunes_gpt.py does; each stage keeps its part
half = tc.L // 2

class Stage0(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.wte, self.wpe = gpt.wte, gpt.wpe
        self.h = nn.ModuleList(gpt.h[:half])
    def forward(self, idx):
        x = tc.gpt_embed(self.wte, self.wpe, idx)
        for blk in self.h: x = blk(x)
        return x

class Stage1(nn.Module):
    def __init__(self, gpt):
        super().__init__()
        self.h = nn.ModuleList(gpt.h[half:])
        self.ln_f = gpt.ln_f
        self.wte = nn.Parameter(gpt.wte.weight.detach().clone())  # the tied head's own copy of wte
    def forward(self, x, targets):
        for blk in self.h: x = blk(x)
        return tc.gpt_head_loss(self.ln_f, self.wte, x, targets)

stage = Stage0(full) if a.rank == 0 else Stage1(full)
del full
wte = stage.wte.weight if a.rank == 0 else stage.wte
params = list(stage.parameters())
norm_params = params if a.rank == 0 else [p for p in params if p is not wte]  # wte counted once (on stage 0)
opt = tc.gpt_optimizer(params)
g = torch.Generator().manual_seed(a.seed)
mb = BATCH // a.micro
act_shape = (mb, tc.T, tc.C)
times, losses = [], []
for step in range(a.steps):
    x, y = tc.gpt_windows(train, tc.gpt_batch_starts(train, g, BATCH))  # the same draws on both stages; untimed
    xs, ys = x.chunk(a.micro), y.chunk(a.micro)
    opt.zero_grad(set_to_none=True)
    dist.barrier()
    t0 = time.perf_counter()
    if a.rank == 0:
        outs = []
        for m in range(a.micro):  # all forwards
            out = stage(xs[m])
            dist.send(out.detach().contiguous(), 1)
            outs.append(out)
        for m in range(a.micro):  # all backwards
            grad = torch.empty(act_shape)
            dist.recv(grad, 1)
            outs[m].backward(grad)
        del outs
    else:
        ins, micro_losses = [], []
        for m in range(a.micro):  # all forwards
            act = torch.empty(act_shape)
            dist.recv(act, 0)
            act.requires_grad_()
            micro_losses.append(stage(act, ys[m]) / a.micro)  # loss = mean over micro-batches
            ins.append(act)
        for m in range(a.micro):  # all backwards
            micro_losses[m].backward()
            dist.send(ins[m].grad.contiguous(), 0)
        loss = sum(l.item() for l in micro_losses)
        del ins, micro_losses
    dist.all_reduce(wte.grad)  # tied embedding: both copies get the sum of the two gradients
    sq = torch.stack([p.grad.pow(2).sum() for p in norm_params if p.grad is not None]).sum()
    dist.all_reduce(sq)
    clip = torch.clamp(tc.GPT_CLIP / (sq.sqrt() + 1e-6), max=1.0)  # as torch.nn.utils.clip_grad_norm_
    for p in params:
        if p.grad is not None:
            p.grad.mul_(clip)
    opt.step()
    times.append(time.perf_counter() - t0)
    if a.rank == 1:
        losses.append(loss)

# untimed: rank 1 sends its step times and losses to rank 0
stats = torch.tensor(times + losses if a.rank == 1 else times + [0.0] * a.steps, dtype=torch.float64)
if a.rank == 1:
    dist.send(stats, 0)
else:
    other = torch.empty_like(stats)
    dist.recv(other, 1)
    step_times = [max(t0, t1) for t0, t1 in zip(times, other[:a.steps].tolist())]
    losses = other[a.steps:].tolist()
    median = tc.median_step(step_times)
    if a.print_losses:
        for i, l in enumerate(losses):
            print(f"step {i} loss {l:.6f}")
    print(f"torch pipeline stages={STAGES} micro={a.micro} threads={a.threads} steps={a.steps} "
          f"tokens/s={BATCH * tc.T / median:.0f} last_loss={losses[-1]:.4f}", flush=True)
dist.destroy_process_group()
