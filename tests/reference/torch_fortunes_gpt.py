#!/usr/bin/python3
"""PyTorch baseline for apps/jobs/fortunes_gpt.json: the same GPT (4 layers, 4 heads,
d_model 128, context 128, byte vocabulary, tied head), AdamW lr 1e-3, betas 0.9/0.95,
weight decay 0.1 on 2-D weights only, grad clip 1.0, batch 16, on the same corpus split.
Usage: OPENBLAS_NUM_THREADS=1 /usr/bin/python3 tests/reference/torch_fortunes_gpt.py [--steps N] [--threads N]
Prints tokens/s over the timed steps (after 3 warm-up steps) and the validation loss."""
import argparse, math, os, time
import torch
import torch.nn as nn
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument('--steps', type=int, default=300)
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--seed', type=int, default=1337)
ap.add_argument('--eval', type=int, default=1, help='evaluate validation loss at the end')
a = ap.parse_args()
torch.manual_seed(a.seed)
torch.set_num_threads(a.threads)

d = '/usr/share/games/fortunes'
names = sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n))
               and not n.endswith('.dat') and not n.endswith('.u8'))
data = b''.join(open(os.path.join(d, n), 'rb').read() for n in names)
split = int(len(data) * 0.9)
train = torch.tensor(list(data[:split]), dtype=torch.long)
val = torch.tensor(list(data[split:]), dtype=torch.long)
L, H, C, T, V, B = 4, 4, 128, 128, 256, 16

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
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h: x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, V), targets.view(-1))

model = GPT()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                        lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
g = torch.Generator().manual_seed(a.seed)
times = []
for step in range(a.steps):
    starts = torch.randint(0, len(train) - T - 1, (B,), generator=g)
    x = torch.stack([train[s:s + T] for s in starts]); y = torch.stack([train[s + 1:s + T + 1] for s in starts])
    t0 = time.perf_counter()  # batch assembly is not timed, as in troupe bench
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    times.append(time.perf_counter() - t0)
timed = sorted(times[3:] or times)
median = timed[len(timed) // 2]  # median step time after 3 warm-up steps, as troupe bench does
msg = f"torch threads={a.threads} openblas={os.environ.get('OPENBLAS_NUM_THREADS', 'default')} steps={a.steps} tokens/s={B * T / median:.0f} last_loss={loss.item():.4f}"
if a.eval:
    with torch.no_grad():
        n = 50 * B
        starts = [int(i * (len(val) - T - 1) / n) for i in range(n)]
        losses = [model(torch.stack([val[s:s + T] for s in starts[i:i + B]]), torch.stack([val[s + 1:s + T + 1] for s in starts[i:i + B]])).item() for i in range(0, n, B)]
    msg += f" val_loss={sum(losses) / len(losses):.4f}"
print(msg)
