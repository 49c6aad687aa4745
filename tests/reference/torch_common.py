"""Model, recipe and data code shared by the PyTorch reference scripts in this folder
(torch_fmnist_mlp.py, torch_fortunes_gpt.py, torch_ddp.py, torch_pipeline.py), so that the
single-process, data-parallel and pipeline baselines train exactly the same thing.
Importing this module imports torch: set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before."""
import gzip, math, os, struct
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- Fashion-MNIST MLP (apps/jobs/fmnist_mlp.json) ----
FMNIST_DIR = '/usr/share/datasets/fashion-mnist/'
MLP_BATCH = 128

def idx(path):
    with gzip.open(path, 'rb') as f:
        data = f.read()
    magic, n = struct.unpack('>II', data[:8])
    if magic == 2051:
        r, c = struct.unpack('>II', data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, r * c).astype(np.float32) / 255.0
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)

def load_fmnist(test=True):
    """(xtr, ytr, xte, yte) as tensors; xte/yte are None when test is False."""
    d = FMNIST_DIR
    xtr, ytr = torch.from_numpy(idx(d + 'train-images-idx3-ubyte.gz')), torch.from_numpy(idx(d + 'train-labels-idx1-ubyte.gz'))
    if not test:
        return xtr, ytr, None, None
    xte, yte = torch.from_numpy(idx(d + 't10k-images-idx3-ubyte.gz')), torch.from_numpy(idx(d + 't10k-labels-idx1-ubyte.gz'))
    return xtr, ytr, xte, yte

def make_mlp():
    """784-256-256-10 ReLU MLP (default PyTorch init: consumes the global RNG)."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

def mlp_optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)

# ---- Fortunes byte-level GPT (apps/jobs/fortunes_gpt.json) ----
FORTUNES_DIR = '/usr/share/games/fortunes'
L, H, C, T, V, GPT_BATCH = 4, 4, 128, 128, 256, 16

def load_fortunes():
    """(train, val) byte tensors: the corpus files in sorted order, split 90/10."""
    d = FORTUNES_DIR
    names = sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n))
                   and not n.endswith('.dat') and not n.endswith('.u8'))
    data = b''.join(open(os.path.join(d, n), 'rb').read() for n in names)
    split = int(len(data) * 0.9)
    return torch.tensor(list(data[:split]), dtype=torch.long), torch.tensor(list(data[split:]), dtype=torch.long)

def gpt_batch_starts(train, g, batch=GPT_BATCH):
    """The batch's window starts, drawn from generator g (one draw per training step)."""
    return torch.randint(0, len(train) - T - 1, (batch,), generator=g)

def gpt_windows(data, starts):
    """(inputs, targets) for the windows at starts."""
    return torch.stack([data[s:s + T] for s in starts]), torch.stack([data[s + 1:s + T + 1] for s in starts])

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float('-inf')).softmax(-1)
        x = x + self.c_proj((att @ v).transpose(1, 2).reshape(b, t, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate='tanh'))

def gpt_embed(wte, wpe, idx):
    """Token + position embedding (wte, wpe: nn.Embedding)."""
    return wte(idx) + wpe(torch.arange(idx.shape[1]))

def gpt_head_loss(ln_f, wte_weight, x, targets):
    """Final LayerNorm, tied head (logits = x @ wte^T), mean cross-entropy over all tokens."""
    logits = ln_f(x) @ wte_weight.t()
    return F.cross_entropy(logits.view(-1, V), targets.view(-1))

class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        for n, p in self.named_parameters():
            if n.endswith('bias'): nn.init.zeros_(p)
            elif 'ln' in n: nn.init.ones_(p)
            elif n.endswith('c_proj.weight') or n.endswith('mlp_proj.weight'): nn.init.normal_(p, 0, 0.02 / math.sqrt(2 * L))
            else: nn.init.normal_(p, 0, 0.02)
    def forward(self, idx, targets):
        x = gpt_embed(self.wte, self.wpe, idx)
        for blk in self.h: x = blk(x)
        return gpt_head_loss(self.ln_f, self.wte.weight, x, targets)

def gpt_optimizer(params):
    """AdamW lr 1e-3, betas 0.9/0.95, weight decay 0.1 on 2-D weights only."""
    params = list(params)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), eps=1e-8)

GPT_CLIP = 1.0

def median_step(times):
    """Median step time after 3 warm-up steps, as troupe bench does."""
    timed = sorted(times[3:] or times)
    return timed[len(timed) // 2]
