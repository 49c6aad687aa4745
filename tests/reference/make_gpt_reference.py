#!/usr/bin/python3
"""Writes tests/reference/gpt_tiny.ref, the golden file of tests/runtime/test_golden.cpp.

A tiny GPT written here from PyTorch primitives, independently of the C++ layers: the
nanoGPT architecture that runtime/layers.hpp documents (pre-LayerNorm blocks, learned
positions, fused q|k|v projection split along the output dim, heads as view(B,T,NH,hs),
causal attention scaled by 1/sqrt(hs), GELU tanh form, MLP 4x, final LayerNorm, head tied
to wte without bias, mean cross-entropy; LayerNorm eps 1e-5). Float32 throughout.

Recorded: the dimensions and optimizer settings, one batch of random tokens and targets,
every parameter (random: weights N(0, 0.2..0.3), biases N(0, 0.1), LayerNorm weights
1 + N(0, 0.2), so that every path carries signal), the logits, the loss, every parameter
gradient, then STEPS steps of torch.optim.AdamW on the same batch (weight decay only on
2-D weights, wte and wpe included; torch.nn.utils.clip_grad_norm_ before each step) with
the loss and pre-clip gradient norm before each step and every parameter after the last.
GRAD_CLIP is chosen so that clipping triggers on some steps and not on others; the script
asserts both happen and prints the norms.

Run with Debian's PyTorch (the python3 first on PATH may lack torch):
    /usr/bin/python3 tests/reference/make_gpt_reference.py [--out tests/reference/gpt_tiny.ref]
Made with python3-torch 1.13.0a0 (Debian), numpy 1.24.2, on x86-64 CPU.

File format, version 1, all integers little-endian:
    magic     6 bytes  b"TRPREF"
    version   u16      1
    count     u32      number of tensors that follow
    count x tensor:
      name_len  u16, then name_len bytes of ASCII name
      dtype     u8     0 = f32, 1 = i32
      ndim      u8     0 for a scalar
      dims      ndim x i64
      data      numel x 4 bytes, row-major, little-endian
    crc32     u32      zlib CRC-32 of every byte before it

Tensor names:
    config.{n_layer,n_head,d_model,context,vocab,batch,seq}   i32 scalars
    optim.{lr,beta1,beta2,eps,weight_decay,grad_clip}          f32 scalars
    optim.steps                                                i32 scalar
    inputs, targets                                            i32 (B,T)
    param.<name>       initial parameters, by the C++ table's names (wte.weight, h.0.ln_1.weight, ...)
    logits             f32 (B,T,V) of the initial parameters
    loss               f32 scalar, mean cross-entropy
    grad.<name>        d loss / d parameter (wte's gradient sums the embedding and the head)
    step.loss          f32 (STEPS): loss before each optimizer step
    step.grad_norm     f32 (STEPS): global gradient L2 norm before clipping, each step
    final.<name>       parameters after the last step
"""
import argparse
import math
import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F

VERSION = 1
N_LAYER, N_HEAD, D_MODEL, CONTEXT, VOCAB = 2, 3, 12, 9, 256  # head size 4
BATCH, SEQ = 3, 7  # SEQ < CONTEXT: the rows of wpe past SEQ must get no gradient
LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-2, 0.9, 0.95, 1e-8, 0.1
GRAD_CLIP = 2.0
STEPS = 3
SEED = 20240611


def make_params(gen):
    """Name -> (tensor, decays). Weights are (out, in) like nn.Linear."""
    C = D_MODEL
    p = {}

    def normal(shape, std, mean=0.0):
        return (torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean)

    p['wte.weight'] = (normal((VOCAB, C), 0.3), True)
    p['wpe.weight'] = (normal((CONTEXT, C), 0.2), True)
    for i in range(N_LAYER):
        h = f'h.{i}.'
        p[h + 'ln_1.weight'] = (normal((C,), 0.2, 1.0), False)
        p[h + 'ln_1.bias'] = (normal((C,), 0.1), False)
        p[h + 'attn.c_attn.weight'] = (normal((3 * C, C), 0.3), True)
        p[h + 'attn.c_attn.bias'] = (normal((3 * C,), 0.1), False)
        p[h + 'attn.c_proj.weight'] = (normal((C, C), 0.2), True)
        p[h + 'attn.c_proj.bias'] = (normal((C,), 0.1), False)
        p[h + 'ln_2.weight'] = (normal((C,), 0.2, 1.0), False)
        p[h + 'ln_2.bias'] = (normal((C,), 0.1), False)
        p[h + 'mlp.c_fc.weight'] = (normal((4 * C, C), 0.3), True)
        p[h + 'mlp.c_fc.bias'] = (normal((4 * C,), 0.1), False)
        p[h + 'mlp.c_proj.weight'] = (normal((C, 4 * C), 0.15), True)
        p[h + 'mlp.c_proj.bias'] = (normal((C,), 0.1), False)
    p['ln_f.weight'] = (normal((C,), 0.2, 1.0), False)
    p['ln_f.bias'] = (normal((C,), 0.1), False)
    return {k: (t.requires_grad_(), d) for k, (t, d) in p.items()}


def gpt_logits(P, idx):
    B, T = idx.shape
    C, NH = D_MODEL, N_HEAD
    hs = C // NH
    x = P['wte.weight'][idx] + P['wpe.weight'][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(N_LAYER):
        h = f'h.{i}.'
        a = F.layer_norm(x, (C,), P[h + 'ln_1.weight'], P[h + 'ln_1.bias'], eps=1e-5)
        qkv = F.linear(a, P[h + 'attn.c_attn.weight'], P[h + 'attn.c_attn.bias'])
        q, k, v = qkv.split(C, dim=2)
        q = q.view(B, T, NH, hs).transpose(1, 2)  # (B,NH,T,hs)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~causal, float('-inf')).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + F.linear(y, P[h + 'attn.c_proj.weight'], P[h + 'attn.c_proj.bias'])
        m = F.layer_norm(x, (C,), P[h + 'ln_2.weight'], P[h + 'ln_2.bias'], eps=1e-5)
        m = F.gelu(F.linear(m, P[h + 'mlp.c_fc.weight'], P[h + 'mlp.c_fc.bias']), approximate='tanh')
        x = x + F.linear(m, P[h + 'mlp.c_proj.weight'], P[h + 'mlp.c_proj.bias'])
    x = F.layer_norm(x, (C,), P['ln_f.weight'], P['ln_f.bias'], eps=1e-5)
    return x @ P['wte.weight'].t()  # tied head, no bias


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


class writer:
    def __init__(self):
        self.items = []

    def add(self, name, value):
        t = value.detach().cpu() if torch.is_tensor(value) else torch.tensor(value)
        if t.dtype in (torch.int64, torch.int32):
            arr, code = t.numpy().astype('<i4'), 1
        else:
            arr, code = t.numpy().astype('<f4'), 0
        assert name not in [n for n, _ in self.items], name
        blob = struct.pack('<H', len(name)) + name.encode('ascii') + struct.pack('<BB', code, arr.ndim)
        blob += struct.pack(f'<{arr.ndim}q', *arr.shape) + np.ascontiguousarray(arr).tobytes()
        self.items.append((name, blob))

    def bytes(self):
        body = b'TRPREF' + struct.pack('<HI', VERSION, len(self.items)) + b''.join(b for _, b in self.items)
        return body + struct.pack('<I', zlib.crc32(body) & 0xffffffff)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='tests/reference/gpt_tiny.ref')
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)
    params = make_params(gen)
    P = {k: t for k, (t, _) in params.items()}
    idx = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    targets = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)

    w = writer()
    for k, v in dict(n_layer=N_LAYER, n_head=N_HEAD, d_model=D_MODEL, context=CONTEXT, vocab=VOCAB, batch=BATCH,
                     seq=SEQ).items():
        w.add('config.' + k, torch.tensor(v, dtype=torch.int32))
    for k, v in dict(lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS, weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP).items():
        w.add('optim.' + k, torch.tensor(v, dtype=torch.float32))
    w.add('optim.steps', torch.tensor(STEPS, dtype=torch.int32))
    w.add('inputs', idx)
    w.add('targets', targets)
    for k, t in P.items():
        w.add('param.' + k, t)

    logits = gpt_logits(P, idx)
    loss = loss_of(logits, targets)
    loss.backward()
    w.add('logits', logits)
    w.add('loss', loss.reshape(()))
    for k, t in P.items():
        assert t.grad is not None and torch.isfinite(t.grad).all(), k
        w.add('grad.' + k, t.grad)
    print(f'loss {loss.item():.6f}')

    decay = [t for t, d in params.values() if d]
    no_decay = [t for t, d in params.values() if not d]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': WEIGHT_DECAY},
                             {'params': no_decay, 'weight_decay': 0.0}], lr=LR, betas=(BETA1, BETA2), eps=EPS)
    losses, norms = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(gpt_logits(P, idx), targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(P.values()), GRAD_CLIP)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        print(f'step {step}: loss {loss.item():.6f} grad norm {norm.item():.6f} '
              f'{"clipped" if norm.item() > GRAD_CLIP else "not clipped"} (clip {GRAD_CLIP})')
    assert any(n > GRAD_CLIP for n in norms) and any(n < GRAD_CLIP for n in norms), \
        f'choose GRAD_CLIP so that some steps clip and some do not: norms {norms}'
    w.add('step.loss', torch.tensor(losses, dtype=torch.float32))
    w.add('step.grad_norm', torch.tensor(norms, dtype=torch.float32))
    for k, t in P.items():
        w.add('final.' + k, t)

    data = w.bytes()
    with open(a.out, 'wb') as f:
        f.write(data)
    print(f'wrote {a.out}: {len(w.items)} tensors, {len(data)} bytes')


if __name__ == '__main__':
    main()
