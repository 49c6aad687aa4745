#!/usr/bin/python3
"""PyTorch baseline for apps/jobs/fortunes_gpt.json: the same GPT (4 layers, 4 heads,
d_model 128, context 128, byte vocabulary, tied head), AdamW lr 1e-3, betas 0.9/0.95,
weight decay 0.1 on 2-D weights only, grad clip 1.0, batch 16, on the same corpus split.
Usage: OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/reference/torch_fortunes_gpt.py [--steps N] [--threads N]
Prints tokens/s over the timed steps (after 3 warm-up steps) and the validation loss.
--print-losses also prints one `step I loss X` line per step first (torch_pipeline.py prints the same)."""
import argparse, os, time
import torch
from torch_common import GPT, T, GPT_BATCH, GPT_CLIP, load_fortunes, gpt_batch_starts, gpt_windows, gpt_optimizer, median_step

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=300)
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--eval', type=int, default=1, help='evaluate validation loss at the end')
ap.add_argument('--print-losses', action='store_true', help='print each step\'s training loss before the summary line')
a = ap.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(a.threads)

train, val = load_fortunes()
B = GPT_BATCH
model = GPT()
opt = gpt_optimizer(model.parameters())
g = torch.Generator().manual_seed(a.seed)
times = []
for step in range(a.steps):
    x, y = gpt_windows(train, gpt_batch_starts(train, g, B))
    t0 = time.perf_counter()  # batch assembly is not timed, as in troupe bench
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GPT_CLIP)
    opt.step()
    times.append(time.perf_counter() - t0)
    if a.print_losses:
        print(f"step {step} loss {loss.item():.6f}")
median = median_step(times)  # median step time after 3 warm-up steps, as troupe bench does
msg = f"torch threads={a.threads} openblas={os.environ.get('OPENBLAS_NUM_THREADS', 'default')} steps={a.steps} tokens/s={B * T / median:.0f} last_loss={loss.item():.4f}"
if a.eval:
    with torch.no_grad():
        n = 50 * B
        starts = [int(i * (len(val) - T - 1) / n) for i in range(n)]
        losses = [model(*gpt_windows(val, starts[i:i + B])).item() for i in range(0, n, B)]
    msg += f" val_loss={sum(losses) / len(losses):.4f}"
print(msg)
