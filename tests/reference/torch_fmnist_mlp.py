#!/usr/bin/python3
"""PyTorch baseline for apps/jobs/fmnist_mlp.json: same model, recipe and data.
Usage: /usr/bin/python3 tests/reference/torch_fmnist_mlp.py [--seed S] [--epochs E] [--threads N]
Prints test accuracy and training samples/s (for `troupe bench train` comparisons)."""
import argparse, gzip, struct, time
import numpy as np
import torch

def idx(path):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, n = struct.unpack('>II', data[:8])
    if magic == 2051:
        r, c = struct.unpack('>II', data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, r * c).astype(np.float32) / 255.0
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)

ap = argparse.ArgumentParser()
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--epochs', type=int, default=2)
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--steps', type=int, default=0, help='stop after this many steps (timing runs)')
a = ap.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(a.threads)
d = '/usr/share/datasets/fashion-mnist/'
xtr, ytr = torch.from_numpy(idx(d + 'train-images-idx3-ubyte.gz')), torch.from_numpy(idx(d + 'train-labels-idx1-ubyte.gz'))
xte, yte = torch.from_numpy(idx(d + 't10k-images-idx3-ubyte.gz')), torch.from_numpy(idx(d + 't10k-labels-idx1-ubyte.gz'))
model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
B, step, times = 128, 0, []
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
timed = sorted(times[3:] or times)
median = timed[len(timed) // 2]  # median step time after 3 warm-up steps, as troupe bench does
with torch.no_grad():
    acc = (model(xte).argmax(1) == yte).float().mean().item()
print(f"torch threads={a.threads} steps={step} samples/s={B / median:.0f} test_accuracy={acc:.4f}")
