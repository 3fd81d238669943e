#!/usr/bin/env python3
"""Times one CPU training step of gptk against the same model in PyTorch eager, same machine,
same thread count, and prints the ratio.

    scripts/cpu_step_vs_torch.py [--gptk target/release/gptk] [--threads N] [--steps 12]
                                 [--repeats 1] [--vocab bytes,gpt2] [--batch-size 8] [--seq-len 256]
                                 [--json]

The model is the `tiny` preset (4 layers, 4 heads, 256 wide, context 256) with gptk's padded
vocabulary (Vp = round_up(V + 5, 128): 384 for bytes, 50304 for GPT-2), tied embeddings,
tanh-GELU, and the softmax over the first V columns. A step is forward, backward and AdamW
(PyTorch: torch.optim.AdamW with its default implementation on CPU). Both sides use N threads
(RAYON_NUM_THREADS for gptk, torch.set_num_threads for PyTorch); the time of a step is the median
over --steps steps after two of warm-up. gptk's time per step is the `ms` its training loop
reports (it includes the gradient-norm and AdamW passes; the loop's bookkeeping between steps is
not counted, nor is PyTorch's). With --repeats R, the two sides take turns R times (gptk,
PyTorch, gptk, ...) so that a slow spell of a shared machine falls on both; each side's time is
then the median of its R medians, and the spread of the R per-turn ratios is printed beside it.

Needs torch. Reported figures: docs/performance.md.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SHARD_MAGIC, SHARD_VERSION = 20240520, 1
VOCABS = {"bytes": 257, "gpt2": 50257}
L, NH, C, CTX = 4, 4, 256, 256


def padded(v):
    return (v + 5 + 127) // 128 * 128


def write_data(dir, v, n_tokens, seed):
    """A random-token llm.c shard pair and a manifest naming the tokenizer."""
    rng = np.random.default_rng(seed)
    os.makedirs(dir, exist_ok=True)
    name = "bytes" if v == 257 else "gpt2"
    for split in ("train", "val"):
        tokens = rng.integers(0, v, size=n_tokens, dtype=np.uint16)
        header = np.zeros(256, dtype=np.int32)
        header[:3] = [SHARD_MAGIC, SHARD_VERSION, n_tokens]
        with open(os.path.join(dir, f"rand_{split}_000000.bin"), "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
    manifest = {
        "tokenizer": name, "vocab_size": v, "gptk_version": "bench",
        "train": {"documents": 1, "tokens": n_tokens, "shards": ["rand_train_000000.bin"]},
        "val": {"documents": 1, "tokens": n_tokens, "shards": ["rand_val_000000.bin"]},
    }
    with open(os.path.join(dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def gptk_step_ms(gptk, data, threads, steps, b, t):
    with tempfile.TemporaryDirectory() as out:
        cmd = [gptk, "train", "--data", data, "--out", out, "--model", "tiny", "--batch-size", str(b),
               "--seq-len", str(t), "--steps", str(steps + 2), "--val-every", "0", "--sample-every", "0",
               "--checkpoint-every", "0", "--device", "cpu", "--json"]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"gptk failed: {run.stderr.strip()}")
        ms = [json.loads(l)["ms"] for l in run.stdout.splitlines() if '"event":"step"' in l]
        return statistics.median(ms[2:])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        bsz, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (z.view(bsz, t, NH, C // NH).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(bsz, t, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v
        self.wte, self.wpe = nn.Embedding(padded(v), C), nn.Embedding(CTX, C)
        self.h = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits[..., : self.v].reshape(-1, self.v), targets.reshape(-1))


def torch_step_ms(v, threads, steps, b, t):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = Gpt(v)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    idx = torch.randint(0, v, (b, t))
    tgt = torch.randint(0, v, (b, t))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gptk", default="target/release/gptk")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=1, help="turns each side takes, alternating")
    ap.add_argument("--vocab", default="bytes,gpt2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    b, t = args.batch_size, args.seq_len
    rows = []
    for name in args.vocab.split(","):
        v = VOCABS[name]
        gs, ps = [], []
        with tempfile.TemporaryDirectory() as data:
            write_data(data, v, b * t * (args.steps + 4) + 1, seed=1)
            for _ in range(args.repeats):
                gs.append(gptk_step_ms(args.gptk, data, args.threads, args.steps, b, t))
                ps.append(torch_step_ms(v, args.threads, args.steps, b, t))
        g, p = statistics.median(gs), statistics.median(ps)
        ratios = sorted(pi / gi for gi, pi in zip(gs, ps))
        rows.append({"vocab": name, "threads": args.threads, "batch": b, "seq_len": t, "repeats": args.repeats,
                     "gptk_ms": round(g, 1), "torch_ms": round(p, 1), "speedup": round(p / g, 3),
                     "speedup_min": round(ratios[0], 3), "speedup_max": round(ratios[-1], 3),
                     "gptk_tokens_per_s": round(b * t / g * 1e3), "torch_tokens_per_s": round(b * t / p * 1e3)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"CPU training step, tiny preset, B={b} T={t}, {args.threads} threads, {args.repeats} turn(s) each "
          f"(torch {torch.__version__})")
    print(f"{'vocab':<6} {'gptk ms':>9} {'torch ms':>9} {'gptk/torch speed':>17} {'per-turn range':>16}")
    for r in rows:
        print(f"{r['vocab']:<6} {r['gptk_ms']:>9.1f} {r['torch_ms']:>9.1f} {r['speedup']:>16.2f}x"
              f" {r['speedup_min']:>7.2f}-{r['speedup_max']:.2f}x")


if __name__ == "__main__":
    main()
