#!/usr/bin/env python3
"""PyTorch counterparts of every `gptk bench` case and of its d12 training step, timed the way
gptk times its own, on the same shapes: the reference `gptk bench --compare FILE.json` puts
beside gptk's numbers.

Cases (src/bench.rs `cases()` is the list; `--list-cases` prints this one, and a test holds the
two equal, byte and FLOP counts included), bf16 unless named f32, GPT-2 124M shapes B=8, T=1024,
C=768, NH=12, V=50257, Vp=50304, N = B·T:
- encoder: F.embedding(tokens, wte) + wpe; backward aten.embedding_dense_backward and dout.sum(0);
- layernorm: F.layer_norm; backward aten.native_layer_norm_backward (dinp, dw, db);
- matmul: F.linear (bias fused by cuBLASLt) at the four linear layers of a block and the tied
  classifier (one chunk of 640 rows, as gptk's d12 plan runs it, and all N rows); backward
  dinp = dout·W, dW += doutᵀ·inp (addmm_, accumulating like gptk), dbias += Σ dout;
- matmul_gelu: the MLP's GEMMs with their GELU, which gptk runs with the GELU in cuBLASLt's epilogue
  and apart: fc forward F.gelu(F.linear(x, W, b), approximate="tanh"), and fcproj backward carried
  through that GELU (dh = dout·W, aten.gelu_backward(dh, pre), dW += doutᵀ·h, db += Σ dout); the same
  PyTorch ops are timed for both of gptk's variants, since eager PyTorch runs them apart;
- attention: F.scaled_dot_product_attention with the flash backend forced; backward alone is
  its fwd+bwd (torch.autograd.grad of q, k, v) minus its fwd; timed again beside gptk's opt-in
  atomic-dQ backward, its wgmma kernels (Hopper), their TMA forward and the wgmma kernels with the
  atomic-dQ backward at T=1024;
- attention_cached: one generation step at the last position of a full context: the new k, v copied into a
  (B, Tmax, 2C) cache laid out like gptk's, then SDPA of the one query over it (PyTorch picks the backend);
- gelu: F.gelu(approximate="tanh"); backward aten.gelu_backward;
- residual: torch.add(a, b, out=out);
- residual_layernorm: torch.add(x, y, out=res), then F.layer_norm(res) (two kernels in eager;
  gptk runs one);
- cross_entropy: F.cross_entropy on (rows, Vp) bf16 logits, the loss alone and the loss with
  torch.autograd.grad of the logits (PyTorch has no fused in-place kernel: it writes a fresh
  dlogits), over one classifier chunk and over all N rows;
- adamw: torch.optim.AdamW(fused=True) over GPT-2 124M's parameters in f32 (f32 master like
  gptk; f32 gradients, as autocast training leaves them), weight decay on the 2-D ones;
- grad_norm: torch.linalg.vector_norm of the flat bf16 gradients, read back with .item() (gptk
  reads its norm back too).
FLOP and byte counts are gptk's, whatever PyTorch moves, so that rates compare like times.

The training step: a GPT-2 124M written here the nanoGPT way (pre-norm blocks, fused qkv,
SDPA causal, tanh-GELU, tied embeddings, padded vocabulary 50304), f32 parameters under
torch.autocast(bfloat16), fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on 2-D
weights), gradient clipping at 1.0, B=8 (--step-batch), T=1024, random tokens; each step zeroes
the gradients, runs forward and backward, clips, steps, and reads the loss back (as gptk's
trainer does every step). Eager always; with --compile also torch.compile'd, its warm-up (the
compilation) cut off after --compile-budget seconds. tokens/s and MFU are computed as gptk
computes them (FLOPs per token 6·(12·L·C² + Vp·C) + 12·L·C·T; dense bf16 peak by device name).

Method, as gptk's: CUDA events around each iteration, warm-up first, the median of many (the
minimum beside it); inputs replicated into copies that span ROTATION_BYTES (several times the
L2 cache) and rotated so that each iteration reads device memory; the two ceilings measured in
the same run (a 512 MiB device-to-device copy, bytes read plus written; a bf16 8192³ matmul).
The report is rewritten after every family, so a run stopped part-way leaves what it measured.

Usage (on the GPU machine; JSON to --out, or stdout at the end; progress on stderr):
    python3 scripts/torch_reference.py [--op OP] [--iters 50] [--warmup 10] [--compile] [--out torch.json]
    python3 scripts/torch_reference.py --list-cases   # op, case, pass, work: no GPU, no PyTorch
    python3 scripts/torch_reference.py --smoke        # every code path on the CPU at toy sizes
"""

import argparse
import json
import math
import os
import signal
import sys
import time

ROTATION_BYTES = 512 << 20
COPY_BYTES = 512 << 20
GEMM_SIZE = 8192
ATTENTION_BACKWARD_FACTOR = 2.5
# Token ids of the encoder case: i·stride mod V, distinct for B·T < V (src/bench.rs ENCODER_TOKEN_STRIDE).
ENCODER_TOKEN_STRIDE = 7919
TENSOR_ALIGN = 64
BYTES_BF16, BYTES_F32, BYTES_ID = 2, 4, 4
ADAMW_BYTES_PER_PARAM = 3 * BYTES_F32 + BYTES_BF16 + 3 * BYTES_F32 + BYTES_BF16
STEP_WARMUP = 3
LAYERNORM_EPS = 1e-5
FAMILIES = ["encoder", "layernorm", "matmul", "matmul_gelu", "attention", "attention_cached", "gelu", "residual", "residual_layernorm", "cross_entropy", "adamw",
            "grad_norm", "step"]


class Shapes:
    """The sizes every case is built from: GPT-2 124M, or toy sizes for --smoke."""

    def __init__(self, preset, B, T, C, NH, L, V, Vp, chunk, attention, rotation_bytes):
        self.preset, self.B, self.T, self.C, self.NH, self.L = preset, B, T, C, NH, L
        self.V, self.Vp, self.chunk, self.attention, self.rotation_bytes = V, Vp, chunk, attention, rotation_bytes
        self.N = B * T


# (B, T, NH, HS) of the attention cases: src/bench.rs ATTENTION_SHAPES. chunk: rows of logits gptk's d12
# plan computes at a time at B=8, T=1024 (2^25 logits at most, rounded down to 64 rows).
GPT2 = Shapes("d12", B=8, T=1024, C=768, NH=12, L=12, V=50257, Vp=50304, chunk=640,
              attention=[(8, 1024, 12, 64), (8, 2048, 12, 64), (8, 4096, 12, 64),
                         (8, 1024, 6, 128), (8, 2048, 6, 128), (8, 4096, 6, 128)],
              rotation_bytes=ROTATION_BYTES)
SMOKE = Shapes("smoke", B=2, T=64, C=64, NH=4, L=2, V=500, Vp=512, chunk=64,
               attention=[(2, 64, 2, 32), (2, 128, 1, 64)], rotation_bytes=1 << 20)


def param_shapes(s):
    """Every parameter of the model as (name, shape), 2-D weights decayed."""
    C = s.C
    shapes = [("wte", (s.Vp, C)), ("wpe", (s.T, C))]
    for i in range(s.L):
        shapes += [(f"h.{i}.ln_1.weight", (C,)), (f"h.{i}.ln_1.bias", (C,)),
                   (f"h.{i}.attn.c_attn.weight", (3 * C, C)), (f"h.{i}.attn.c_attn.bias", (3 * C,)),
                   (f"h.{i}.attn.c_proj.weight", (C, C)), (f"h.{i}.attn.c_proj.bias", (C,)),
                   (f"h.{i}.ln_2.weight", (C,)), (f"h.{i}.ln_2.bias", (C,)),
                   (f"h.{i}.mlp.c_fc.weight", (4 * C, C)), (f"h.{i}.mlp.c_fc.bias", (4 * C,)),
                   (f"h.{i}.mlp.c_proj.weight", (C, 4 * C)), (f"h.{i}.mlp.c_proj.bias", (C,))]
    return shapes + [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]


def arena_elements(s):
    """Elements of gptk's parameter arena: every tensor starts at a multiple of TENSOR_ALIGN."""
    return sum(-(-math.prod(shape) // TENSOR_ALIGN) * TENSOR_ALIGN for _, shape in param_shapes(s))


def flops_per_token(s, t):
    """Training FLOPs per token, as gptk's ModelConfig::flops_per_token counts them."""
    return 6 * (s.L * 12 * s.C ** 2 + s.Vp * s.C) + 6 * s.L * 2 * s.C * t


def peak_bf16_flops(name):
    """Dense bf16 peak by device name, as gptk's peak_bf16_flops."""
    n = name.upper()
    if "H100" in n and "PCIE" in n:
        return 756e12
    if "H100" in n or "H200" in n or "GH200" in n:
        return 989e12
    if "A100" in n:
        return 312e12
    return None


def attention_case_name(B, T, NH, HS, causal):
    return f"B={B} NH={NH} T={T} HS={HS} {'causal' if causal else 'bidirectional'}"


def step_name(model, b, t):
    return f"{model} B={b} T={t}"


class Case:
    """One shape of one op family: its passes as (name, 'flops' or 'bytes', count)."""

    def __init__(self, op, name, passes, setup, **shape):
        self.op, self.name, self.passes, self.setup, self.shape = op, name, passes, setup, shape


def cases(s):
    """Every kernel case, in gptk's order, with gptk's names and work counts."""
    N, C, T, V, Vp = s.N, s.C, s.T, s.V, s.Vp
    out = []
    # encoder: ids, one wte row per position, wpe read, out written; backward: ids and dout read, dwte rows
    # and dwpe accumulated (read and written).
    s16 = BYTES_BF16
    ids = N * BYTES_ID
    out.append(Case("encoder", f"B={s.B} T={T} C={C} Vp={Vp}",
                    [("fwd", "bytes", ids + N * C * s16 + T * C * s16 + N * C * s16),
                     ("bwd", "bytes", ids + N * C * s16 + 2 * N * C * s16 + 2 * T * C * s16)], setup_encoder))
    for dtype, suffix, sz in (("bfloat16", "", BYTES_BF16), ("float32", " f32", BYTES_F32)):
        stats = 2 * N * BYTES_F32
        out.append(Case("layernorm", f"N={N} C={C}{suffix}",
                        [("fwd", "bytes", N * C * sz + 2 * C * sz + N * C * sz + stats),
                         ("bwd", "bytes", 2 * N * C * sz + C * sz + stats + 2 * N * C * sz + 4 * C * sz)],
                        setup_layernorm, n=N, c=C, dtype=dtype))
    for label, n, c, oc, bias in [("qkv", N, C, 3 * C, True), ("attproj", N, C, C, True),
                                  ("fc", N, C, 4 * C, True), ("fcproj", N, 4 * C, C, True),
                                  ("classifier", s.chunk, C, Vp, False), ("classifier", N, C, Vp, False)]:
        f = 2.0 * n * c * oc
        out.append(Case("matmul", f"{label} N={n} C={c} OC={oc}{' bias' if bias else ''}",
                        [("fwd", "flops", f), ("bwd", "flops", 2.0 * f)], setup_matmul, n=n, c=c, oc=oc, bias=bias))
    # gptk's bias gradient apart from its weight GEMM (the before of its epilogue); PyTorch's backward as above.
    f = 2.0 * N * C * 4 * C
    out.append(Case("matmul", f"fc N={N} C={C} OC={4 * C} bias, bias grad apart", [("bwd", "flops", 2.0 * f)],
                    setup_matmul, n=N, c=C, oc=4 * C, bias=True))
    for backward in (False, True):
        label, (c, oc) = ("fcproj", (4 * C, C)) if backward else ("fc", (C, 4 * C))
        f = 2.0 * N * c * oc
        for how in ("epilogue", "apart"):
            out.append(Case("matmul_gelu", f"{label} N={N} C={c} OC={oc} bias, {how}",
                            [("bwd", "flops", 2.0 * f)] if backward else [("fwd", "flops", f)],
                            setup_matmul_gelu, n=N, c=c, oc=oc, backward=backward))
    # Every shape; then at T = s.T gptk's opt-in atomic-dQ backward (PyTorch's side is its SDPA backward
    # again, whose flash backend sums dQ with atomics itself), its wgmma kernels (Hopper; SDPA again), the
    # wgmma kernels with the atomic-dQ backward and, last (the newest kernel), their warp-specialized TMA
    # forward (SDPA's forward again).
    all_passes, backward = ("fwd", "bwd", "fwd+bwd"), ("bwd", "fwd+bwd")
    at_t = [a for a in s.attention if a[1] == s.T]
    for shapes, suffix, passes in ((s.attention, "", all_passes), (at_t, ", atomic dQ", backward),
                                   (at_t, ", wgmma", all_passes), (at_t, ", wgmma, atomic dQ", backward),
                                   (at_t, ", wgmma-tma", ("fwd",))):
        for B, t, NH, HS in shapes:
            for causal in (True, False):
                f = 4.0 * B * NH * t * t * HS / (2 if causal else 1)
                work = {"fwd": f, "bwd": ATTENTION_BACKWARD_FACTOR * f, "fwd+bwd": (1 + ATTENTION_BACKWARD_FACTOR) * f}
                out.append(Case("attention", attention_case_name(B, t, NH, HS, causal) + suffix,
                                [(p, "flops", work[p]) for p in passes],
                                setup_attention, B=B, T=t, NH=NH, HS=HS, causal=causal))
    # One generation step at the last position of a full context: qkv read, the cached k and v of the earlier
    # positions read, the new k and v written into the cache, out written.
    hs, pos = C // s.NH, T - 1
    out.append(Case("attention_cached", f"B={s.B} NH={s.NH} Tmax={T} pos={pos} HS={hs}",
                    [("fwd", "bytes", s.B * C * s16 * (3 + 2 * pos + 2 + 1))], setup_attention_cached,
                    B=s.B, NH=s.NH, HS=hs, Tmax=T, pos=pos))
    for dtype, suffix, sz in (("bfloat16", "", BYTES_BF16), ("float32", " f32", BYTES_F32)):
        e = N * 4 * C
        out.append(Case("gelu", f"N={N} C={4 * C}{suffix}", [("fwd", "bytes", 2 * e * sz), ("bwd", "bytes", 3 * e * sz)],
                        setup_gelu, e=e, dtype=dtype))
    out.append(Case("residual", f"N={N} C={C}", [("fwd", "bytes", 3 * N * C * s16)], setup_residual, e=N * C))
    out.append(Case("residual_layernorm", f"N={N} C={C}",
                    [("fwd", "bytes", 4 * N * C * s16 + 2 * C * s16 + 2 * N * BYTES_F32)],
                    setup_residual_layernorm, n=N, c=C))
    for n in (s.chunk, N):
        loss_only = n * V * s16 + n * (BYTES_ID + BYTES_F32)
        out.append(Case("cross_entropy", f"N={n} V={V} Vp={Vp}",
                        [("fwd", "bytes", loss_only), ("fwd+bwd", "bytes", loss_only + n * Vp * s16)],
                        setup_cross_entropy, n=n))
    P = arena_elements(s)
    out.append(Case("adamw", f"{s.preset} P={P}", [("update", "bytes", P * ADAMW_BYTES_PER_PARAM)], setup_adamw))
    out.append(Case("grad_norm", f"{s.preset} P={P}", [("norm", "bytes", P * BYTES_BF16)], setup_grad_norm, p=P))
    return out


# ---- timing --------------------------------------------------------------------------------------------------


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class Bench:
    """Where and how to time: the device, warm-up and timed iterations, the rotation size."""

    def __init__(self, torch, device, warmup, iters, rotation_bytes):
        self.torch, self.device, self.warmup, self.iters = torch, device, warmup, max(1, iters)
        self.rotation_bytes = rotation_bytes

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def mark(self):
        """A point in time on the device: a recorded CUDA event, or the host clock on the CPU."""
        if self.device == "cuda":
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def between(self, a, b):
        return a.elapsed_time(b) if self.device == "cuda" else (b - a) * 1e3

    def time(self, fn):
        """Median and minimum milliseconds of fn(i) over the timed runs after the warm-up."""
        for i in range(self.warmup):
            fn(i)
        self.sync()
        marks = []
        for i in range(self.iters):
            start = self.mark()
            fn(self.warmup + i)
            marks.append((start, self.mark()))
        self.sync()
        ms = [self.between(a, b) for a, b in marks]
        return median(ms), min(ms)

    def copies(self, bytes_per_copy):
        return max(2, -(-self.rotation_bytes // max(1, bytes_per_copy)))

    def randn(self, *shape, dtype=None, scale=1.0):
        t = self.torch.randn(*shape, dtype=self.torch.float32, device=self.device)
        return (t * scale).to(dtype or self.torch.bfloat16)


def ceilings(bench):
    torch = bench.torch
    n = COPY_BYTES // 2 if bench.device == "cuda" else 1 << 20
    src = bench.randn(n)
    dst = torch.empty_like(src)
    copy_ms, _ = bench.time(lambda i: dst.copy_(src))
    g = GEMM_SIZE if bench.device == "cuda" else 256
    a = bench.randn(g, g)
    b = bench.randn(g, g, scale=g ** -0.5)
    gemm_ms, _ = bench.time(lambda i: torch.matmul(a, b))
    return {"copy_gbps": 2 * n * 2 / (copy_ms * 1e-3) / 1e9, "gemm_bf16_tflops": 2 * g ** 3 / (gemm_ms * 1e-3) / 1e12}


# ---- the cases' tensors and passes: setup(bench, F, s, case) → {pass: fn(i)}; a pass absent from the dict is
# derived as fwd+bwd minus fwd. ------------------------------------------------------------------------------


def setup_encoder(bench, F, s, case):
    torch = bench.torch
    N, C = s.N, s.C
    tok = torch.tensor([i * ENCODER_TOKEN_STRIDE % s.V for i in range(N)], device=bench.device).view(s.B, s.T)
    flat = tok.view(N)
    k = bench.copies((2 * N * C + 2 * s.Vp * C + 2 * s.T * C) * BYTES_BF16 + N * BYTES_ID)
    xs = [(bench.randn(s.Vp, C, scale=0.02), bench.randn(s.T, C, scale=0.02), bench.randn(s.B, s.T, C))
          for _ in range(k)]

    def fwd(i):
        wte, wpe, _ = xs[i % k]
        return F.embedding(tok, wte) + wpe

    def bwd(i):
        _, _, dout = xs[i % k]
        dwte = torch.ops.aten.embedding_dense_backward(dout.view(N, C), flat, s.Vp, -1, False)
        return dwte, dout.sum(0)

    return {"fwd": fwd, "bwd": bwd}


def setup_layernorm(bench, F, s, case):
    torch = bench.torch
    n, c = case.shape["n"], case.shape["c"]
    dtype = getattr(torch, case.shape["dtype"])
    size = 2 if dtype == torch.bfloat16 else 4
    k = bench.copies((4 * n * c + 4 * c) * size + 2 * n * BYTES_F32)
    xs = []
    for _ in range(k):
        x, w, b, dout = (bench.randn(n, c, dtype=dtype), bench.randn(c, dtype=dtype, scale=0.2),
                         bench.randn(c, dtype=dtype, scale=0.2), bench.randn(n, c, dtype=dtype))
        _, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, LAYERNORM_EPS)
        xs.append((x, w, b, dout, mean, rstd))

    def fwd(i):
        x, w, b, _, _, _ = xs[i % k]
        return F.layer_norm(x, (c,), w, b, LAYERNORM_EPS)

    def bwd(i):
        x, w, b, dout, mean, rstd = xs[i % k]
        return torch.ops.aten.native_layer_norm_backward(dout, x, [c], mean, rstd, w, b, [True, True, True])

    return {"fwd": fwd, "bwd": bwd}


def setup_matmul(bench, F, s, case):
    torch = bench.torch
    n, c, oc, bias = (case.shape[key] for key in ("n", "c", "oc", "bias"))
    k = bench.copies((2 * n * c + 2 * oc * c + 2 * n * oc + (2 * oc if bias else 0)) * BYTES_BF16)
    xs = [(bench.randn(n, c), bench.randn(oc, c, scale=c ** -0.5), bench.randn(oc, scale=0.02) if bias else None,
           bench.randn(n, oc), bench.randn(oc, c, scale=0.02), bench.randn(oc, scale=0.02) if bias else None)
          for _ in range(k)]

    def fwd(i):
        x, w, b, _, _, _ = xs[i % k]
        return F.linear(x, w, b)

    def bwd(i):
        x, w, _, dout, dw, db = xs[i % k]
        dx = torch.matmul(dout, w)
        dw.addmm_(dout.t(), x)
        if db is not None:
            db.add_(dout.sum(0))
        return dx

    return {"fwd": fwd, "bwd": bwd}


def setup_matmul_gelu(bench, F, s, case):
    torch = bench.torch
    n, c, oc, backward = (case.shape[key] for key in ("n", "c", "oc", "backward"))
    if backward:
        # dout, W, the layer's input h = GELU(pre) and pre, dinp; dW, db accumulated.
        k = bench.copies((n * oc + 2 * oc * c + 3 * n * c + oc) * BYTES_BF16)
        xs = [(bench.randn(n, oc), bench.randn(oc, c, scale=c ** -0.5), bench.randn(n, c), bench.randn(n, c),
               bench.randn(oc, c, scale=0.02), bench.randn(oc, scale=0.02)) for _ in range(k)]

        def bwd(i):
            dout, w, h, pre, dw, db = xs[i % k]
            dx = torch.ops.aten.gelu_backward(torch.matmul(dout, w), pre, approximate="tanh")
            dw.addmm_(dout.t(), h)
            db.add_(dout.sum(0))
            return dx

        return {"bwd": bwd}
    k = bench.copies((n * c + oc * c + oc + 2 * n * oc) * BYTES_BF16)
    xs = [(bench.randn(n, c), bench.randn(oc, c, scale=c ** -0.5), bench.randn(oc, scale=0.02)) for _ in range(k)]

    def fwd(i):
        x, w, b = xs[i % k]
        return F.gelu(F.linear(x, w, b), approximate="tanh")

    return {"fwd": fwd}


def setup_attention(bench, F, s, case):
    torch = bench.torch
    B, T, NH, HS, causal = (case.shape[key] for key in ("B", "T", "NH", "HS", "causal"))
    C = NH * HS
    # qkv, dqkv (3C) and out, dout (C) in bf16, the LSE in f32: what one copy touches, as gptk counts it.
    k = bench.copies(8 * B * T * C * 2 + B * NH * T * 4)
    xs = []
    for _ in range(k):
        # q, k, v are the heads of one (B, T, 3C) tensor laid out [q|k|v] like gptk's qkv: (B, NH, T, HS)
        # views with the head dimension contiguous, each its own leaf so no gradient assembly is timed.
        qkv = bench.randn(B, T, 3, NH, HS)
        q, kk, v = (qkv[:, :, j].transpose(1, 2).detach().requires_grad_() for j in range(3))
        dout = bench.randn(B, T, NH, HS).transpose(1, 2)
        xs.append((q, kk, v, dout))

    def fwd(i):
        q, kk, v, _ = xs[i % k]
        return F.scaled_dot_product_attention(q, kk, v, is_causal=causal)

    def fwd_bwd(i):
        q, kk, v, dout = xs[i % k]
        out = F.scaled_dot_product_attention(q, kk, v, is_causal=causal)
        torch.autograd.grad(out, (q, kk, v), dout)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def setup_attention_cached(bench, F, s, case):
    torch = bench.torch
    B, NH, HS, Tmax, pos = (case.shape[key] for key in ("B", "NH", "HS", "Tmax", "pos"))
    C = NH * HS
    k = bench.copies(B * C * (4 + 2 * Tmax) * BYTES_BF16)
    # gptk's cache layout: (B, Tmax, 2C) as [k | v], the new token's q, k, v in one (B, 3C) row.
    xs = [(bench.randn(B, 3 * C), bench.randn(B, Tmax, 2 * C)) for _ in range(k)]

    def fwd(i):
        qkv, cache = xs[i % k]
        cache[:, pos].copy_(qkv[:, C:])
        q = qkv[:, :C].view(B, 1, NH, HS).transpose(1, 2)
        keys = cache[:, :pos + 1, :C].view(B, pos + 1, NH, HS).transpose(1, 2)
        values = cache[:, :pos + 1, C:].view(B, pos + 1, NH, HS).transpose(1, 2)
        return F.scaled_dot_product_attention(q, keys, values)

    return {"fwd": fwd}


def setup_gelu(bench, F, s, case):
    torch = bench.torch
    e, dtype = case.shape["e"], getattr(torch, case.shape["dtype"])
    k = bench.copies(3 * e * (2 if dtype == torch.bfloat16 else 4))
    xs = [(bench.randn(e, dtype=dtype), bench.randn(e, dtype=dtype)) for _ in range(k)]

    def fwd(i):
        return F.gelu(xs[i % k][0], approximate="tanh")

    def bwd(i):
        x, d = xs[i % k]
        return torch.ops.aten.gelu_backward(d, x, approximate="tanh")

    return {"fwd": fwd, "bwd": bwd}


def setup_residual(bench, F, s, case):
    torch = bench.torch
    e = case.shape["e"]
    k = bench.copies(3 * e * BYTES_BF16)
    xs = [(bench.randn(e), bench.randn(e), torch.empty(e, dtype=torch.bfloat16, device=bench.device))
          for _ in range(k)]

    def fwd(i):
        a, b, out = xs[i % k]
        return torch.add(a, b, out=out)

    return {"fwd": fwd}


def setup_residual_layernorm(bench, F, s, case):
    torch = bench.torch
    n, c = case.shape["n"], case.shape["c"]
    k = bench.copies(4 * n * c * BYTES_BF16)
    xs = [(bench.randn(n, c), bench.randn(n, c), torch.empty(n, c, dtype=torch.bfloat16, device=bench.device))
          for _ in range(k)]
    w, b = bench.randn(c) * 0.2 + 1.0, bench.randn(c) * 0.2

    def fwd(i):
        x, y, res = xs[i % k]
        torch.add(x, y, out=res)
        return F.layer_norm(res, (c,), w, b, LAYERNORM_EPS)

    return {"fwd": fwd}


def setup_cross_entropy(bench, F, s, case):
    torch = bench.torch
    n = case.shape["n"]
    k = bench.copies(n * s.Vp * BYTES_BF16 + n * (BYTES_ID + BYTES_F32))
    xs = [(bench.randn(n, s.Vp).requires_grad_(), torch.randint(0, s.V, (n,), device=bench.device))
          for _ in range(k)]

    def fwd(i):
        logits, targets = xs[i % k]
        return F.cross_entropy(logits.detach(), targets)

    def fwd_bwd(i):
        logits, targets = xs[i % k]
        loss = F.cross_entropy(logits, targets)
        return torch.autograd.grad(loss, logits)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def make_adamw(torch, params, device):
    """GPT-2's AdamW: weight decay on the 2-D tensors only, fused."""
    params = list(params)
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)


def setup_adamw(bench, F, s, case):
    torch = bench.torch
    shapes = [shape for _, shape in param_shapes(s)]
    count = sum(math.prod(shape) for shape in shapes)
    k = bench.copies(count * ADAMW_BYTES_PER_PARAM)
    opts = []
    for _ in range(k):
        params = [bench.randn(*shape, dtype=torch.float32, scale=0.02).requires_grad_() for shape in shapes]
        for p in params:
            p.grad = bench.randn(*p.shape, dtype=torch.float32, scale=0.01)
        opts.append(make_adamw(torch, params, bench.device))

    def update(i):
        opts[i % k].step()

    return {"update": update}


def setup_grad_norm(bench, F, s, case):
    torch = bench.torch
    p = case.shape["p"]
    k = bench.copies(p * BYTES_BF16)
    xs = [bench.randn(p, scale=0.01) for _ in range(k)]

    def norm(i):
        return torch.linalg.vector_norm(xs[i % k]).item()

    return {"norm": norm}


def bench_case(bench, F, s, case):
    fns = case.setup(bench, F, s, case)
    timed = {name: bench.time(fn) for name, fn in fns.items()}
    rows = []
    for name, kind, work in case.passes:
        if name in timed:
            med, mn = timed[name]
        else:  # the backward alone: fwd+bwd minus fwd
            med = timed["fwd+bwd"][0] - timed["fwd"][0]
            mn = timed["fwd+bwd"][1] - timed["fwd"][1]
        rows.append({"op": case.op, "case": case.name, "pass": name, "median_ms": med, "min_ms": mn,
                     "iters": bench.iters, kind: work})
    return rows


# ---- the training step ------------------------------------------------------------------------------------------


def gpt_model(torch, s, device):
    """GPT-2 the nanoGPT way, at the shapes of `s`; GPT-2's initialisation."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(s.C), nn.LayerNorm(s.C)
            self.c_attn, self.c_proj = nn.Linear(s.C, 3 * s.C), nn.Linear(s.C, s.C)
            self.c_fc, self.mlp_proj = nn.Linear(s.C, 4 * s.C), nn.Linear(4 * s.C, s.C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (z.view(B, T, s.NH, C // s.NH).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(C, 2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(s.Vp, s.C), nn.Embedding(s.T, s.C)
            self.blocks = nn.ModuleList(Block() for _ in range(s.L))
            self.ln_f = nn.LayerNorm(s.C)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * s.L) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                    nn.init.normal_(p, std=std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)
            return F.cross_entropy(logits.view(-1, s.Vp), targets.view(-1))

    return GPT().to(device)


class CompileBudgetExceeded(Exception):
    pass


def with_budget(seconds, fn):
    """fn(), interrupted by CompileBudgetExceeded after `seconds` (no limit for 0)."""
    if not seconds:
        return fn()

    def on_alarm(signum, frame):
        raise CompileBudgetExceeded()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(math.ceil(seconds)))
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def bench_step(bench, s, b, iters, compiled, budget, notes):
    """One series of timed training steps, then one split into phases; None when the compilation ran out of
    its budget or failed (the reason goes to `notes`)."""
    torch = bench.torch
    cuda = bench.device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(1337)
    model = gpt_model(torch, s, bench.device)
    opt = make_adamw(torch, model.parameters(), bench.device)
    run = torch.compile(model) if compiled else model
    x = torch.randint(0, s.V, (b, s.T), device=bench.device)
    y = torch.randint(0, s.V, (b, s.T), device=bench.device)

    def step(marks):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=bench.device, dtype=torch.bfloat16):
            loss = run(x, y)
        marks.append(bench.mark())
        loss.backward()
        marks.append(bench.mark())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        marks.append(bench.mark())
        return value

    losses = []
    variant = "compile" if compiled else "eager"
    try:
        with_budget(budget if compiled else 0, lambda: [losses.append(step([])) for _ in range(STEP_WARMUP)])
    except CompileBudgetExceeded:
        notes.append(f"{variant} step: the {STEP_WARMUP} warm-up steps (the compilation) did not finish within "
                     f"--compile-budget {budget} s; no {variant} step was timed")
        return None
    except Exception as e:  # a compiler that is missing or fails: say so, keep the rest of the report
        notes.append(f"{variant} step failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    bench.sync()
    times, phases = [], []
    for _ in range(iters):
        start = bench.mark()
        marks = []
        losses.append(step(marks))
        times.append((start, marks[-1]))
    for _ in range(iters):
        marks = [bench.mark()]
        losses.append(step(marks))
        phases.append(marks)
    bench.sync()
    ms = [bench.between(a, z) for a, z in times]
    med = median(ms)
    names = ["forward", "backward", "optimizer"]
    tokens_per_s = b * s.T / (med * 1e-3)
    fpt = flops_per_token(s, s.T)
    peak = peak_bf16_flops(torch.cuda.get_device_name()) if cuda else None
    row = {"model": s.preset, "b": b, "t": s.T, "variant": variant, "median_ms": med, "min_ms": min(ms),
           "iters": iters, "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
           "loss_first": losses[0], "loss_last": losses[-1],
           "phases": [{"name": n, "median_ms": median([bench.between(m[j], m[j + 1]) for m in phases])}
                      for j, n in enumerate(names)]}
    if peak:
        row.update(peak_flops=peak, mfu=tokens_per_s * fpt / peak)
    if cuda:
        row.update(device_bytes=float(torch.cuda.max_memory_reserved()),
                   allocated_bytes=float(torch.cuda.max_memory_allocated()))
    del run, model, opt
    return row


# ---- main -------------------------------------------------------------------------------------------------------


def wanted(op, family):
    return op is None or op in family


def finite(x):
    """x with every NaN or infinity in it made null: JSON has no such numbers, and gptk reads strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


def write(report, path):
    text = json.dumps(finite(report), indent=1, allow_nan=False) + "\n"
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", help="only the families whose name contains this (as gptk bench --op)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--step-batch", type=int, default=GPT2.B, help="sequences per step batch (T = 1024)")
    parser.add_argument("--step-iters", type=int, default=20, help="timed steps, and as many split into phases")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--compile-budget", type=float, default=120,
                        help="seconds the compiled step's warm-up (its compilation) may take; 0: no limit")
    parser.add_argument("--out", help="write the JSON report here (after every family) instead of stdout")
    parser.add_argument("--list-cases", action="store_true", help="print op, case, pass and work of every case")
    parser.add_argument("--smoke", action="store_true",
                        help="run every code path on the CPU at toy sizes (checks the script; the times mean nothing)")
    args = parser.parse_args()
    s = SMOKE if args.smoke else GPT2
    if args.op is not None and not any(args.op in f for f in FAMILIES):
        sys.exit(f"torch_reference: unknown op '{args.op}' (known: {', '.join(FAMILIES)})")
    if args.list_cases:
        for c in cases(s):
            if wanted(args.op, c.op):
                for name, kind, work in c.passes:
                    print(f"{c.op}\t{c.name}\t{name}\t{kind}={float(work)!r}")
        if wanted(args.op, "step"):
            print(f"step\t{step_name(s.preset, args.step_batch, s.T)}")
        return
    import torch
    import torch.nn.functional as F

    if args.smoke:
        device, args.warmup, args.iters, args.step_iters, args.step_batch = "cpu", 1, 2, 2, s.B
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        sys.exit("torch_reference: PyTorch sees no CUDA GPU")
    torch.manual_seed(0)
    bench = Bench(torch, device, args.warmup, args.iters, s.rotation_bytes)
    report = {"source": "pytorch", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "software": f"torch {torch.__version__}", "ceilings": ceilings(bench), "results": [], "steps": [],
              "notes": []}
    if args.smoke:
        report["notes"].append("smoke run on the CPU at toy sizes: checks the script, not a measurement")
    for family in FAMILIES[:-1]:
        if not wanted(args.op, family):
            continue
        for c in (c for c in cases(s) if c.op == family):
            if family == "attention" and device == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    rows = bench_case(bench, F, s, c)
            else:
                rows = bench_case(bench, F, s, c)
            for r in rows:
                kind = "flops" if "flops" in r else "bytes"
                rate = r[kind] / (r["median_ms"] * 1e-3) / (1e12 if kind == "flops" else 1e9)
                unit = "TFLOP/s" if kind == "flops" else "GB/s"
                print(f"{r['op']:<13} {r['case']:<38} {r['pass']:<7} {r['median_ms']:9.4f} ms {rate:9.1f} {unit}",
                      file=sys.stderr, flush=True)
            report["results"] += rows
            if device == "cuda":
                torch.cuda.empty_cache()
        write(report, args.out)
    interrupted = False
    if wanted(args.op, "step"):
        for compiled in ([False, True] if args.compile else [False]):
            started = time.time()
            row = bench_step(bench, s, args.step_batch, args.step_iters, compiled, args.compile_budget,
                             report["notes"])
            interrupted |= compiled and row is None
            if row is not None:
                mfu = f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
                print(f"step {step_name(row['model'], row['b'], row['t'])} {row['variant']}: {row['median_ms']:.2f} ms, "
                      f"{row['tokens_per_s']:.0f} tokens/s{mfu} ({time.time() - started:.0f} s in all)",
                      file=sys.stderr, flush=True)
                report["steps"].append(row)
            for note in report["notes"]:
                print(f"note: {note}", file=sys.stderr, flush=True)
            write(report, args.out)
    text = write(report, args.out)
    if not args.out:
        print(text, end="")
    if interrupted:
        # A compilation cut off by its budget can leave compiler workers behind: do not wait for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
