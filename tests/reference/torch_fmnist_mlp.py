#!/usr/bin/python3
"""PyTorch baseline for apps/jobs/fmnist_mlp.json: same model, recipe and data.
Usage: /usr/bin/python3 tests/reference/torch_fmnist_mlp.py [--seed S] [--epochs E] [--threads N]
Prints test accuracy and training samples/s (for `troupe bench train` comparisons)."""
import argparse, time
import torch
from torch_common import load_fmnist, make_mlp, mlp_optimizer, median_step, MLP_BATCH

ap = argparse.ArgumentParser()
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--epochs', type=int, default=2)
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--steps', type=int, default=0, help='stop after this many steps (timing runs)')
a = ap.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(a.threads)
xtr, ytr, xte, yte = load_fmnist()
model = make_mlp()
opt = mlp_optimizer(model.parameters())
B, step, times = MLP_BATCH, 0, []
for epoch in range(a.epochs):
    perm = torch.randperm(len(ytr))
    for i in range(0, len(ytr) - B + 1, B):
        idxs = perm[i:i + B]
        xb, yb = xtr[idxs], ytr[idxs]  # batch assembly is not timed, as in troupe bench
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        step += 1
        if a.steps and step >= a.steps:
            break
    if a.steps and step >= a.steps:
        break
median = median_step(times)  # median step time after 3 warm-up steps, as troupe bench does
with torch.no_grad():
    acc = (model(xte).argmax(1) == yte).float().mean().item()
print(f"torch threads={a.threads} steps={step} samples/s={B / median:.0f} test_accuracy={acc:.4f}")
