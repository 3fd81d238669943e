#!/usr/bin/env python3
"""Runs every kernel of kernels/*.cu on the CPU, through the emulation in emu.h, against PyTorch
references in float64: a check of the kernels' logic on a machine without a GPU.

It compiles the kernels with g++ (the CUDA headers come from nvcc's folder: NVCC, or the
nvidia-cuda-nvcc wheel in this Python), loads them with ctypes and launches each entry point
with the grid the Rust host code uses, on both the vector and the scalar path, in f32 and bf16.
Tolerances follow gptk check: |emulated − reference| ≤ k·eps·(|ref| + rms(ref)), eps of the
output type (2⁻⁸ bf16, 2⁻²³ f32), k = 2 (bf16) or 256 (f32).

This says nothing about speed, and a GPU can still disagree where the emulation cannot see
(memory ordering between warps, hardware math functions): `gptk check` on a GPU is the real test.

Usage: python3 scripts/kernel-emu/check_kernels.py [--only NAME]   (needs torch and g++)
"""

import argparse
import ctypes
import math
import os
import site
import struct
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS = os.path.join(ROOT, "kernels")

ROWS_PER_BLOCK = 8  # warps per 256-thread block
EPS = {"f32": 2.0**-23, "bf16": 2.0**-8}
K = {"f32": 256.0, "bf16": 2.0}
DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16}
VEC = {"f32": 4, "bf16": 8}
LAYERNORM_EPS = 1e-5


def cuda_include():
    nvcc = os.environ.get("NVCC")
    candidates = []
    if nvcc:
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include"))
    dirs = list(sys.path) + site.getsitepackages()
    candidates += [os.path.join(d, "nvidia", "cu13", "include") for d in dirs]
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda_bf16.h")):
            return c
    sys.exit("check_kernels: cuda_bf16.h not found (set NVCC or pip install nvidia-cuda-nvcc)")


def build():
    out = tempfile.mkdtemp(prefix="gptk-kernel-emu-")
    unit = os.path.join(out, "all.cpp")
    with open(unit, "w") as f:
        f.write('#include "emu.h"\n')
        for name in sorted(os.listdir(KERNELS)):
            if name.endswith(".cu"):
                f.write(f'#include "{name}"\n')
    lib = os.path.join(out, "kernels.so")
    subprocess.run(
        ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-x", "c++",
         f"-I{cuda_include()}", f"-I{HERE}", f"-I{KERNELS}", unit, "-o", lib],
        check=True,
    )
    return ctypes.CDLL(lib)


LIB = None


def P(t):
    return ctypes.c_void_p(t.data_ptr())


def I(x):
    return ctypes.c_int(int(x))


def L(x):
    return ctypes.c_longlong(int(x))


def F(x):
    return ctypes.c_float(float(x))


def U64(x):
    return ctypes.c_ulonglong(int(x))


def launch(name, dt, grid, block, *args):
    gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
    LIB.emu_config(max(1, int(gx)), max(1, int(gy)), int(block))
    getattr(LIB, f"{name}_{dt}")(*args)


def blocks(threads, block):
    return max(1, -(-int(threads) // block))


class Report:
    def __init__(self):
        self.rows = 0
        self.failed = []

    def compare(self, what, got, ref, dt_out, k=None):
        got = got.double()
        ref = ref.double()
        eps, k = EPS[dt_out], k or K[dt_out]
        rms = ref.pow(2).mean().sqrt().item() if ref.numel() else 0.0
        tol = k * eps * (ref.abs() + rms)
        diff = (got - ref).abs()
        bad = ~torch.isfinite(got)
        share = (diff / tol.clamp_min(1e-300)).nan_to_num(nan=math.inf).max().item() if ref.numel() else 0.0
        ok = not bad.any().item() and share <= 1.0
        self.rows += 1
        status = "ok" if ok else "FAIL"
        print(f"{what:<70} max abs {diff.max().item() if ref.numel() else 0:.3e}  tol used {100 * share:7.1f}%  {status}")
        if not ok:
            self.failed.append(what)


R = Report()


def rnd(shape, dt, scale=1.0, shift=0.0):
    """Random values representable in the storage type, as (storage tensor, float64 copy)."""
    x = (torch.randn(shape, dtype=torch.float64) * scale + shift).to(DTYPE[dt])
    return x.contiguous(), x.double()


def skewed(t, skew):
    """A copy of t starting `skew` elements into a fresh buffer (misaligned for skew > 0)."""
    buf = torch.empty(t.numel() + skew, dtype=t.dtype)
    view = buf[skew:]
    view.copy_(t.reshape(-1))
    return buf, view


def vec_ok(dt, tensors, lens):
    aligned = all(t.data_ptr() % 16 == 0 for t in tensors)
    return int(aligned and all(n % VEC[dt] == 0 for n in lens))


# ---- ops --------------------------------------------------------------------------------------

def check_elementwise(dt):
    for n, skew in [(1, 0), (13, 0), (4096, 0), (4096, 1), (1000, 0)]:
        a, a64 = rnd(n, dt, 2.0)
        b, b64 = rnd(n, dt)
        abuf, a = skewed(a, skew)
        out = torch.full((n,), float("nan"), dtype=DTYPE[dt])
        vec = vec_ok(dt, [a, b, out], [n])
        threads = n // VEC[dt] if vec else n
        tag = f"[{dt} n={n} vec={vec}]"
        launch("gelu_forward", dt, blocks(threads, 256), 256, P(out), P(a), L(n), I(vec))
        ref = torch.nn.functional.gelu(a64, approximate="tanh")
        R.compare(f"gelu_forward {tag}", out, ref, dt)
        d, d64 = rnd(n, dt)
        launch("gelu_backward", dt, blocks(threads, 256), 256, P(d), P(a), L(n), I(vec))
        x = a64.clone().requires_grad_()
        torch.nn.functional.gelu(x, approximate="tanh").backward(d64)
        R.compare(f"gelu_backward {tag}", d, x.grad, dt)
        out.fill_(float("nan"))
        launch("residual_forward", dt, blocks(threads, 256), 256, P(out), P(a), P(b), L(n), I(vec))
        R.compare(f"residual_forward {tag}", out, a64 + b64, dt)


def check_encoder(dt):
    for B, T, C, Vp in [(1, 1, 1, 4), (2, 5, 8, 16), (3, 7, 13, 20), (2, 16, 64, 40)]:
        tag = f"[{dt} B={B} T={T} C={C}]"
        wte, wte64 = rnd((Vp, C), dt)
        wpe, wpe64 = rnd((T, C), dt)
        tokens = torch.randint(0, min(Vp, 5), (B * T,), dtype=torch.int32) * max(1, Vp // 5)
        tokens = tokens.clamp(max=Vp - 1)
        out = torch.full((B * T, C), float("nan"), dtype=DTYPE[dt])
        total = B * T * C
        vec = vec_ok(dt, [out, wte, wpe], [C])
        threads = total // VEC[dt] if vec else total
        launch("encoder_forward", dt, blocks(threads, 256), 256, P(out), P(tokens), P(wte), P(wpe), I(T), I(C), L(total), I(vec))
        ref = wte64[tokens.long()] + wpe64.repeat(B, 1)
        R.compare(f"encoder_forward {tag} vec={vec}", out, ref, dt)
        # Backward.
        dwte, dwte64 = rnd((Vp, C), dt, 0.1)
        dwpe, dwpe64 = rnd((T, C), dt, 0.1)
        dout, dout64 = rnd((B * T, C), dt)
        launch("encoder_backward_wpe", dt, blocks(T * C, 256), 256, P(dwpe), P(dout), I(B), I(T), I(C))
        R.compare(f"encoder_backward dwpe {tag}", dwpe, dwpe64 + dout64.view(B, T, C).sum(0), dt)
        ids = tokens.tolist()
        order = sorted(range(len(ids)), key=lambda i: (ids[i], i))
        toks, starts = [], []
        for k, i in enumerate(order):
            if k == 0 or ids[i] != ids[order[k - 1]]:
                toks.append(ids[i])
                starts.append(k)
        starts.append(len(ids))
        # At the host's fixed offsets for `cap` positions (here one more than the batch has, so a
        # slot of each part is left over), launched over `cap` block rows, the ones past U idle.
        cap = len(ids) + 1
        pad = lambda xs, n: xs + [-1] * (n - len(xs))
        buckets = torch.tensor([len(toks)] + pad(toks, cap) + pad(starts, cap + 1) + pad(order, cap), dtype=torch.int32)
        launch("encoder_backward_wte", dt, (cap, blocks(C, 256)), 256, P(dwte), P(dout), P(buckets), I(cap), I(C))
        ref = dwte64.index_add(0, tokens.long(), dout64)
        R.compare(f"encoder_backward dwte {tag}", dwte, ref, dt)


def column_partials(dt, dst, partials, count, width, stride, offset):
    launch("add_column_partials", dt, blocks(width, 256), 256, P(dst), P(partials), I(count), I(width), L(stride), L(offset))


def row_chunks(n):
    rows = max(1, -(-n // 256))
    return rows, max(1, -(-n // rows))


def check_layernorm(dt):
    for N, C, skew in [(1, 1, 0), (5, 8, 0), (7, 13, 1), (9, 64, 0), (300, 24, 0)]:
        tag = f"[{dt} N={N} C={C} skew={skew}]"
        inp, inp64 = rnd((N, C), dt, 1.0, 0.5)
        _, inp = skewed(inp, skew)
        inp = inp.view(N, C)
        w, w64 = rnd(C, dt, 0.2, 1.0)
        b, b64 = rnd(C, dt, 0.2)
        out = torch.full((N, C), float("nan"), dtype=DTYPE[dt])
        mean = torch.full((N,), float("nan"), dtype=torch.float32)
        rstd = torch.full((N,), float("nan"), dtype=torch.float32)
        vec = vec_ok(dt, [out, inp, w, b], [C])
        launch("layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(out), P(mean), P(rstd), P(inp), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(vec))
        m = inp64.mean(1)
        s = 1.0 / torch.sqrt(((inp64 - m[:, None]) ** 2).mean(1) + LAYERNORM_EPS)
        ref = (inp64 - m[:, None]) * s[:, None] * w64 + b64
        R.compare(f"layernorm_forward out {tag} vec={vec}", out, ref, dt)
        R.compare(f"layernorm_forward mean {tag}", mean, m, "f32")
        R.compare(f"layernorm_forward rstd {tag}", rstd, s, "f32")
        # Backward, with the reference statistics.
        mean = m.float().contiguous()
        rstd = s.float().contiguous()
        dout, dout64 = rnd((N, C), dt)
        dinp, dinp64 = rnd((N, C), dt, 0.1)
        _, dinp = skewed(dinp, skew)
        dinp = dinp.view(N, C)
        dw, dw64 = rnd(C, dt, 0.1)
        db, db64 = rnd(C, dt, 0.1)
        vec = vec_ok(dt, [dinp, dout, inp, w], [C])
        launch("layernorm_backward_dinp", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(dinp), P(dout), P(inp), P(w), P(mean), P(rstd), I(N), I(C), I(vec))
        x = inp64.clone().requires_grad_()
        wr = w64.clone().requires_grad_()
        br = b64.clone().requires_grad_()
        mm = x.mean(1, keepdim=True)
        y = (x - mm) * (1.0 / torch.sqrt(((x - mm) ** 2).mean(1, keepdim=True) + LAYERNORM_EPS)) * wr + br
        y.backward(dout64)
        R.compare(f"layernorm_backward dinp {tag} vec={vec}", dinp, dinp64 + x.grad, dt)
        rows, count = row_chunks(N)
        partials = torch.full((count * 2 * C,), float("nan"), dtype=torch.float32)
        launch("layernorm_backward_partials", dt, (blocks(C, 256), count), 256,
               P(partials), P(dout), P(inp), P(mean), P(rstd), I(N), I(C), I(rows))
        column_partials(dt, dw, partials, count, C, 2 * C, 0)
        column_partials(dt, db, partials, count, C, 2 * C, C)
        R.compare(f"layernorm_backward dw {tag}", dw, dw64 + wr.grad, dt)
        R.compare(f"layernorm_backward db {tag}", db, db64 + br.grad, dt)


def check_matmul_helpers(dt):
    for N, OC in [(1, 1), (5, 3), (17, 29), (300, 16)]:
        tag = f"[{dt} N={N} OC={OC}]"
        out, out64 = rnd((N, OC), dt)
        bias, bias64 = rnd(OC, dt)
        vec = vec_ok(dt, [out, bias], [OC])
        total = N * OC
        threads = total // VEC[dt] if vec else total
        launch("bias_add", dt, blocks(threads, 256), 256, P(out), P(bias), I(OC), L(total), I(vec))
        R.compare(f"bias_add {tag} vec={vec}", out, out64 + bias64, dt)
        dout, dout64 = rnd((N, OC), dt)
        dbias, dbias64 = rnd(OC, dt, 0.1)
        rows, count = row_chunks(N)
        partials = torch.full((count * OC,), float("nan"), dtype=torch.float32)
        launch("bias_grad_partials", dt, (blocks(OC, 256), count), 256, P(partials), P(dout), I(N), I(OC), I(rows))
        column_partials(dt, dbias, partials, count, OC, OC, 0)
        R.compare(f"bias_grad {tag}", dbias, dbias64 + dout64.sum(0), dt)


def attention_reference(q, k, v, causal):
    T = q.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return torch.softmax(s, -1) @ v, lse


def attention_backward_reference(q, k, v, do, out_stored, lse, causal):
    """dqkv (B, T, 3C) in float64 from heads (B, NH, T, HS) of q, k, v and dout, the stored output
    (B, T, C) and the forward's LSE (B, NH, T), as the flash kernels compute it."""
    B, NH, T, HS = q.shape
    scale = 1.0 / math.sqrt(HS)
    s = q @ k.transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    p = torch.exp(s - lse[..., None])
    out = out_stored.double().view(B, T, NH, HS).transpose(1, 2)
    ds = p * (do @ v.transpose(-1, -2) - (do * out).sum(-1, keepdim=True)) * scale
    merge = lambda x: x.transpose(1, 2).reshape(B, T, NH * HS)
    return torch.cat([merge(ds @ k), merge(ds.transpose(-1, -2) @ q), merge(p.transpose(-1, -2) @ do)], -1)


def check_attention(dt):
    for B, T, NH, HS, causal in [(1, 1, 1, 4, True), (2, 7, 3, 15, True), (2, 7, 3, 15, False),
                                 (1, 9, 2, 64, True), (1, 5, 1, 100, False), (1, 4, 1, 256, True)]:
        tag = f"[{dt} B={B} T={T} NH={NH} HS={HS} causal={int(causal)}]"
        C = NH * HS
        qkv, qkv64 = rnd((B, T, 3 * C), dt)
        heads = lambda x: x.view(B, T, NH, HS).transpose(1, 2)
        q64, k64, v64 = (heads(qkv64[..., i * C:(i + 1) * C]) for i in range(3))
        rows = B * NH * T
        scale = 1.0 / math.sqrt(HS)
        out = torch.full((B, T, C), float("nan"), dtype=DTYPE[dt])
        lse = torch.full((rows,), float("nan"), dtype=torch.float32)
        launch("attention_forward", dt, blocks(rows, ROWS_PER_BLOCK), 256,
               P(out), P(lse), P(qkv), I(B), I(T), I(NH), I(HS), I(int(causal)), F(scale))
        ref, ref_lse = attention_reference(q64, k64, v64, causal)
        R.compare(f"attention_forward out {tag}", out, ref.transpose(1, 2).reshape(B, T, C), dt)
        R.compare(f"attention_forward lse {tag}", lse, ref_lse.reshape(-1), "f32")
        # Backward from the stored output (as the CPU contract), the reference LSE.
        out_stored = ref.transpose(1, 2).reshape(B, T, C).to(DTYPE[dt]).contiguous()
        lse = ref_lse.reshape(-1).float().contiguous()
        dout, dout64 = rnd((B, T, C), dt)
        delta = torch.full((rows,), float("nan"), dtype=torch.float32)
        dqkv = torch.full((B, T, 3 * C), float("nan"), dtype=DTYPE[dt])
        launch("attention_backward_delta", dt, blocks(rows, ROWS_PER_BLOCK), 256,
               P(delta), P(dout), P(out_stored), I(B), I(T), I(NH), I(HS))
        for name in ("attention_backward_dq", "attention_backward_dkv"):
            launch(name, dt, blocks(rows, ROWS_PER_BLOCK), 256, P(dqkv), P(dout), P(qkv), P(lse), P(delta),
                   I(B), I(T), I(NH), I(HS), I(int(causal)), F(scale))
        # The reference follows the contract the kernels and the CPU share: delta from the stored
        # (in bf16, rounded) output, probabilities recomputed from q, k and the LSE.
        want = attention_backward_reference(q64, k64, v64, heads(dout64), out_stored, ref_lse, causal)
        R.compare(f"attention_backward dqkv {tag}", dqkv, want, dt)


FLASH_BLOCK = 128
FLASH_FWD_ROWS = 128
FLASH_DKV_KEYS = 64
FLASH_DQ_ROWS = 64
# Tolerance factors of the tensor-core path (gptk check's K_ATTENTION_BF16_*): P, and in the
# backward dS, are rounded to bf16 before their second product.
K_FLASH_FORWARD = 4.0
K_FLASH_BACKWARD = 8.0


GUARD = 4096


def guarded(t):
    """t inside a buffer with GUARD NaNs before and after: (buffer, view of t in it). An input
    read past its end feeds NaN into the results; an output written past its end shows in the
    guards."""
    buf = torch.full((t.numel() + 2 * GUARD,), float("nan"), dtype=t.dtype)
    view = buf[GUARD:GUARD + t.numel()].view(t.shape)
    view.copy_(t)
    return buf, view


def guards_intact(what, buf):
    R.rows += 1
    ok = bool(torch.isnan(buf[:GUARD].float()).all() and torch.isnan(buf[-GUARD:].float()).all())
    print(f"{what + ' guards':<70} {'ok' if ok else 'FAIL (written outside the tensor)'}")
    if not ok:
        R.failed.append(what + " guards")


FLASH90_BLOCK = 256
FLASH90_ROWS = 128

# The two sets of tensor-core kernels: flash_attention.cu (mma.sync) and flash_attention_sm90a.cu
# (wgmma): the suffix of their names, their block size, and rows per block of each kernel.
MMA_KERNELS = dict(suffix="", block=FLASH_BLOCK, forward=FLASH_FWD_ROWS, dkv=FLASH_DKV_KEYS, dq=FLASH_DQ_ROWS)
WGMMA_KERNELS = dict(suffix="_sm90a", block=FLASH90_BLOCK, forward=FLASH90_ROWS, dkv=FLASH90_ROWS, dq=FLASH90_ROWS)


def flash_case(dt, B, T, NH, HS, causal, kernels, note=""):
    """Runs one set of tensor-core attention kernels at one shape against float64 references:
    the forward, then the backward (delta from the simple kernel, dK/dV and dQ from the set) from
    the reference output (rounded, as stored) and LSE. Every tensor sits between NaN guards (see
    `guarded`). Returns what a further backward variant reads: (tag, qkv, dout, lse, delta, the
    reference dqkv). `note` ends the rows' tag."""
    tag = f"[{dt} B={B} T={T} NH={NH} HS={HS} causal={int(causal)}{', ' + note if note else ''}]"
    C, rows, scale = NH * HS, B * NH * T, 1.0 / math.sqrt(HS)
    sfx, block = kernels["suffix"], kernels["block"]
    tiles = lambda n: -(-T // n) * B * NH
    qkv, qkv64 = rnd((B, T, 3 * C), dt)
    _, qkv = guarded(qkv)
    heads = lambda x: x.view(B, T, NH, HS).transpose(1, 2)
    q64, k64, v64 = (heads(qkv64[..., i * C:(i + 1) * C]) for i in range(3))
    out_buf, out = guarded(torch.full((B, T, C), float("nan"), dtype=DTYPE[dt]))
    lse_buf, lse = guarded(torch.full((rows,), float("nan"), dtype=torch.float32))
    launch(f"flash_forward{sfx}_hs{HS}", dt, tiles(kernels["forward"]), block,
           P(out), P(lse), P(qkv), I(B), I(T), I(NH), I(int(causal)), F(scale))
    ref, ref_lse = attention_reference(q64, k64, v64, causal)
    R.compare(f"flash_forward{sfx} out {tag}", out, ref.transpose(1, 2).reshape(B, T, C), dt, K_FLASH_FORWARD)
    R.compare(f"flash_forward{sfx} lse {tag}", lse, ref_lse.reshape(-1), "f32")
    guards_intact(f"flash_forward{sfx} out {tag}", out_buf)
    guards_intact(f"flash_forward{sfx} lse {tag}", lse_buf)
    out_stored = ref.transpose(1, 2).reshape(B, T, C).to(DTYPE[dt]).contiguous()
    _, lse = guarded(ref_lse.reshape(-1).float())
    dout, dout64 = rnd((B, T, C), dt)
    _, dout = guarded(dout)
    _, delta = guarded(torch.full((rows,), float("nan"), dtype=torch.float32))
    dqkv_buf, dqkv = guarded(torch.full((B, T, 3 * C), float("nan"), dtype=DTYPE[dt]))
    launch("attention_backward_delta", dt, blocks(rows, ROWS_PER_BLOCK), 256,
           P(delta), P(dout), P(out_stored), I(B), I(T), I(NH), I(HS))
    for kind in ("dkv", "dq"):
        launch(f"flash_backward_{kind}{sfx}_hs{HS}", dt, tiles(kernels[kind]), block, P(dqkv), P(dout), P(qkv),
               P(lse), P(delta), I(B), I(T), I(NH), I(int(causal)), F(scale))
    want = attention_backward_reference(q64, k64, v64, heads(dout64), out_stored, ref_lse, causal)
    R.compare(f"flash_backward{sfx} dqkv {tag}", dqkv, want, dt, K_FLASH_BACKWARD)
    guards_intact(f"flash_backward{sfx} dqkv {tag}", dqkv_buf)
    return tag, qkv, dout, lse, delta, want


# Where the emulation completes asynchronous copies and wgmma products (emu.h): each at issue, or
# at the wait that covers it; the name a row's tag carries.
ASYNC_MODES = [((0, 0), ""), ((1, 0), "copies at the wait"), ((0, 1), "products at the wait"),
               ((1, 1), "copies and products at the wait")]


def flash_cases(dt, shapes, kernels):
    """Every backward of a set of tensor-core kernels at each shape, under each way the emulation
    completes asynchronous work (ASYNC_MODES): a kernel that reads a stage before its wait,
    refills one a product still reads, or touches a product's registers before its wait, fails
    under one of them (the mma.sync kernels have no products: their last two modes repeat the
    first two)."""
    modes = ASYNC_MODES if kernels is WGMMA_KERNELS else ASYNC_MODES[:2]
    try:
        for (copies, products), note in modes:
            LIB.emu_set_deferred(copies, products)
            for B, T, NH, HS, causal in shapes:
                case = flash_case(dt, B, T, NH, HS, causal, kernels, note)
                atomic_dq_case(dt, B, T, NH, HS, causal, kernels, case)
    finally:
        LIB.emu_set_deferred(0, 0)


def check_flash_attention(dt):
    """The tensor-core kernels of flash_attention.cu (bf16 only), forward and backward, and the
    opt-in atomic-dQ backward."""
    if dt != "bf16":
        return
    flash_cases(dt, [(1, 1, 1, 64, True), (1, 17, 2, 64, True), (2, 65, 1, 64, False), (1, 63, 1, 128, True),
                     (1, 200, 1, 64, True), (1, 130, 1, 128, False), (1, 129, 1, 128, True)], MMA_KERNELS)


def atomic_dq_case(dt, B, T, NH, HS, causal, kernels, case):
    """The opt-in backward of a kernel set at one shape: dK/dV and dQ in one pass, dQ summed into
    an f32 buffer with atomics (zeroed first, as the host does), then stored into dqkv's q third;
    `case` is what flash_case returned at that shape."""
    tag, qkv, dout, lse, delta, want = case
    C, sfx = NH * HS, kernels["suffix"]
    dqkv_buf, dqkv = guarded(torch.full((B, T, 3 * C), float("nan"), dtype=DTYPE[dt]))
    acc_buf, acc = guarded(torch.zeros((B, T, C), dtype=torch.float32))
    launch(f"flash_backward_dkvq{sfx}_hs{HS}", dt, -(-T // kernels["dkv"]) * B * NH, kernels["block"], P(dqkv),
           P(acc), P(dout), P(qkv), P(lse), P(delta), I(B), I(T), I(NH), I(int(causal)), F(1.0 / math.sqrt(HS)))
    launch("flash_dq_store", dt, blocks(B * T * C // 8, FLASH_BLOCK), FLASH_BLOCK, P(dqkv), P(acc), I(C),
           L(B * T * C))
    R.compare(f"flash_backward{sfx} (atomic dQ) dqkv {tag}", dqkv, want, dt, K_FLASH_BACKWARD)
    guards_intact(f"flash_backward{sfx} (atomic dQ) dqkv {tag}", dqkv_buf)
    guards_intact(f"flash_backward{sfx} (atomic dQ) accumulator {tag}", acc_buf)


def check_flash_attention_sm90a(dt):
    """The wgmma kernels of flash_attention_sm90a.cu (bf16 only), forward, backward and the
    opt-in atomic-dQ backward, on the shapes of the mma.sync ones plus ones spanning several tiles
    (128 keys per forward tile at HS = 64, 128 keys per dK/dV block; seven forward tiles at T =
    420, HS = 128, so that each of the three value stages is refilled). Their shared memory starts
    on a 1024-byte boundary here; on the GPU the kernels align it themselves."""
    if dt != "bf16":
        return
    flash_cases(dt, [(1, 1, 1, 64, True), (1, 17, 2, 64, True), (2, 65, 1, 64, False), (1, 63, 1, 128, True),
                     (1, 300, 1, 64, True), (1, 130, 1, 128, False), (1, 200, 1, 128, True), (1, 257, 2, 64, False),
                     (1, 420, 1, 128, False)], WGMMA_KERNELS)


def check_wgmma_probe(dt):
    """The wgmma layout probe: one product per operand form (mode 0: both operands K-major from
    shared memory; mode 1: A from registers, B MN-major; mode 2: both MN-major from shared
    memory, B 32 wide), against float64."""
    if dt != "bf16":
        return
    for mode, (a_shape, b_shape, d_shape) in enumerate([((64, 128), (64, 128), (64, 64)),
                                                        ((64, 64), (64, 128), (64, 128)),
                                                        ((128, 64), (128, 32), (64, 32))]):
        a, a64 = rnd(a_shape, dt)
        b, b64 = rnd(b_shape, dt)
        d = torch.full(d_shape, float("nan"), dtype=torch.float32)
        launch("wgmma_probe", dt, 1, FLASH90_BLOCK, P(d), P(a), P(b), I(mode))
        want = (a64.transpose(0, 1) if mode == 2 else a64) @ (b64.transpose(0, 1) if mode == 0 else b64)
        R.compare(f"wgmma_probe mode {mode} [{dt}]", d, want, "f32")


def check_attention_cached(dt):
    for B, Tmax, pos, NH, HS in [(1, 1, 0, 1, 4), (2, 9, 0, 3, 15), (2, 9, 8, 3, 15), (3, 12, 5, 2, 64)]:
        tag = f"[{dt} B={B} Tmax={Tmax} pos={pos} NH={NH} HS={HS}]"
        C = NH * HS
        qkv, qkv64 = rnd((B, 3 * C), dt)
        kv, kv64 = rnd((B, Tmax, 2 * C), dt)
        out = torch.full((B, C), float("nan"), dtype=DTYPE[dt])
        launch("attention_cached", dt, blocks(B * NH, ROWS_PER_BLOCK), 256,
               P(out), P(qkv), P(kv), I(B), I(Tmax), I(pos), I(NH), I(HS), F(1.0 / math.sqrt(HS)))
        kv_ref = kv64.clone()
        kv_ref[:, pos] = qkv64[:, C:]
        q = qkv64[:, :C].view(B, NH, 1, HS)
        k = kv_ref[:, :pos + 1, :C].view(B, pos + 1, NH, HS).transpose(1, 2)
        v = kv_ref[:, :pos + 1, C:].view(B, pos + 1, NH, HS).transpose(1, 2)
        ref, _ = attention_reference(q, k, v, False)
        R.compare(f"attention_cached out {tag}", out, ref.reshape(B, C), dt)
        R.compare(f"attention_cached kv {tag}", kv, kv_ref, dt)


def check_cross_entropy(dt):
    for N, V, Vp, grad in [(1, 1, 8, True), (5, 10, 128, False), (7, 100, 128, True), (4, 1000, 1024, True)]:
        tag = f"[{dt} N={N} V={V} Vp={Vp} grad={int(grad)}]"
        logits, logits64 = rnd((N, Vp), dt, 2.0)
        targets = torch.tensor([-1 if r % 3 == 2 else int(torch.randint(0, V, ())) for r in range(N)], dtype=torch.int32)
        losses = torch.full((N,), float("nan"), dtype=torch.float32)
        vec = vec_ok(dt, [logits], [Vp])
        dloss = 1.0 / N
        launch("cross_entropy", dt, N, 512, P(losses), P(logits), P(targets), I(V), I(Vp), F(dloss if grad else 0.0),
               I(int(grad)), I(vec))
        lsm = torch.log_softmax(logits64[:, :V], -1)
        keep = targets >= 0
        ref_loss = torch.zeros(N, dtype=torch.float64)
        ref_loss[keep] = -lsm[keep].gather(1, targets[keep].long()[:, None])[:, 0]
        R.compare(f"cross_entropy losses {tag} vec={vec}", losses, ref_loss, "f32")
        if grad:
            ref = torch.zeros(N, Vp, dtype=torch.float64)
            p = lsm.exp()
            p[torch.arange(N)[keep], targets[keep].long()] -= 1.0
            ref[:, :V] = p * dloss
            ref[~keep] = 0.0
            R.compare(f"cross_entropy dlogits {tag}", logits, ref, dt)


def check_adamw(dt):
    for n in [64, 4096 + 64]:
        tag = f"[{dt} n={n}]"
        master = torch.randn(n, dtype=torch.float32)
        params = master.to(DTYPE[dt])
        grads, g64 = rnd(n, dt, 0.01)
        m = (torch.randn(n) * 0.01).float()
        v = (torch.randn(n) * 1e-4).abs().float()
        m64, v64, p64 = m.double(), v.double(), master.double()
        lr, b1, b2, eps, wd, t, scale, seed = 1e-2, 0.9, 0.95, 1e-8, 0.1, 3, 0.7, 12345
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        decay_end = n // 2 + 4
        launch("adamw", dt, blocks(n // 4, 256), 256, P(params), P(master if dt == "bf16" else params), P(grads),
               P(m), P(v), L(0), L(n), L(decay_end), F(lr), F(b1), F(b2), F(eps), F(wd), F(bc1), F(bc2), F(scale), U64(seed))
        g = g64 * scale
        m_ref = b1 * m64 + (1 - b1) * g
        v_ref = b2 * v64 + (1 - b2) * g * g
        decay = torch.where(torch.arange(n) < decay_end, wd, 0.0)
        p_ref = p64 - lr * (decay * p64 + (m_ref / bc1) / ((v_ref / bc2).sqrt() + eps))
        R.compare(f"adamw params {tag}", master if dt == "bf16" else params, p_ref, "f32")
        R.compare(f"adamw m {tag}", m, m_ref, "f32")
        R.compare(f"adamw v {tag}", v, v_ref, "f32")
        if dt == "bf16":
            mm = master.double()
            step = torch.pow(2.0, torch.floor(torch.log2(mm.abs())) - 7)
            d = (params.double() - mm) / step
            worst = d.abs().max().item()
            bias = (d * mm.sign()).mean().item()
            # The bias is only judged on thousands of elements (its noise is about 0.4/√n steps).
            ok = worst <= 1.0 and (n < 4096 or abs(bias) <= 0.1)
            R.rows += 1
            print(f"{'adamw stochastic rounding ' + tag:<70} worst {worst:.3f} steps, bias {bias:+.4f} steps  {'ok' if ok else 'FAIL'}")
            if not ok:
                R.failed.append(f"adamw stochastic rounding {tag}")
    # One shard, as a data-parallel rank updates it: the same values as the unsharded step inside
    # [start, end), nothing touched outside.
    n, start, end = 4096 + 64, 64, 4096 - 64
    master = torch.randn(n, dtype=torch.float32)
    params = master.to(DTYPE[dt])
    grads, _ = rnd(n, dt, 0.01)
    m, v = (torch.randn(n) * 0.01).float(), (torch.randn(n) * 1e-4).abs().float()
    whole = [x.clone() for x in (params, master, m, v)]
    args = (F(1e-2), F(0.9), F(0.95), F(1e-8), F(0.1), F(0.271), F(0.143), F(0.7), U64(99))
    launch("adamw", dt, blocks(n // 4, 256), 256, P(whole[0]), P(whole[1] if dt == "bf16" else whole[0]), P(grads),
           P(whole[2]), P(whole[3]), L(0), L(n), L(n // 2), *args)
    before = [x.clone() for x in (params, master, m, v)]
    launch("adamw", dt, blocks((end - start) // 4, 256), 256, P(params), P(master if dt == "bf16" else params), P(grads),
           P(m), P(v), L(start), L(end), L(n // 2), *args)
    for name, got, ref, old in zip(["params", "master", "m", "v"], (params, master, m, v), whole, before):
        if dt == "f32" and name == "master":
            continue
        inside = torch.equal(got[start:end], ref[start:end])
        outside = torch.equal(got[:start], old[:start]) and torch.equal(got[end:], old[end:])
        R.rows += 1
        ok = inside and outside
        print(f"{f'adamw shard {name} [{dt}]':<70} same as unsharded {inside}, outside untouched {outside}  {'ok' if ok else 'FAIL'}")
        if not ok:
            R.failed.append(f"adamw shard {name} [{dt}]")


def check_residual_layernorm(dt):
    """res = x + y, then the layernorm of the stored res: against float64, and bitwise against the
    two separate launches it replaces."""
    for N, C, skew in [(1, 1, 0), (5, 8, 0), (7, 13, 1), (9, 64, 0), (300, 24, 0)]:
        tag = f"[{dt} N={N} C={C} skew={skew}]"
        x, x64 = rnd((N, C), dt, 1.0, 0.5)
        _, x = skewed(x, skew)
        x = x.view(N, C)
        y, y64 = rnd((N, C), dt, 0.5)
        w, w64 = rnd(C, dt, 0.2, 1.0)
        b, b64 = rnd(C, dt, 0.2)
        res = torch.full((N, C), float("nan"), dtype=DTYPE[dt])
        out = torch.full((N, C), float("nan"), dtype=DTYPE[dt])
        mean = torch.full((N,), float("nan"), dtype=torch.float32)
        rstd = torch.full((N,), float("nan"), dtype=torch.float32)
        vec = vec_ok(dt, [res, out, x, y, w, b], [C])
        launch("residual_layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256, P(res), P(out), P(mean), P(rstd),
               P(x), P(y), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(vec))
        R.compare(f"residual_layernorm_forward res {tag} vec={vec}", res, x64 + y64, dt)
        r64 = res.double()  # the layernorm normalises the stored (rounded) residual
        m = r64.mean(1)
        s = 1.0 / torch.sqrt(((r64 - m[:, None]) ** 2).mean(1) + LAYERNORM_EPS)
        R.compare(f"residual_layernorm_forward out {tag} vec={vec}", out, (r64 - m[:, None]) * s[:, None] * w64 + b64, dt)
        R.compare(f"residual_layernorm_forward mean {tag}", mean, m, "f32")
        R.compare(f"residual_layernorm_forward rstd {tag}", rstd, s, "f32")
        # The same bits as residual_forward then layernorm_forward.
        res2 = torch.full((N, C), float("nan"), dtype=DTYPE[dt])
        out2 = torch.full((N, C), float("nan"), dtype=DTYPE[dt])
        mean2 = torch.full((N,), float("nan"), dtype=torch.float32)
        rstd2 = torch.full((N,), float("nan"), dtype=torch.float32)
        evec = vec_ok(dt, [res2, x, y], [N * C])
        n = N * C
        per_block = 256 * (VEC[dt] if evec else 1)
        launch("residual_forward", dt, max(1, -(-n // per_block)), 256, P(res2), P(x), P(y), L(n), I(evec))
        lvec = vec_ok(dt, [out2, res2, w, b], [C])
        launch("layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(out2), P(mean2), P(rstd2), P(res2), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(lvec))
        for name, got, want in [("res", res, res2), ("out", out, out2), ("mean", mean, mean2), ("rstd", rstd, rstd2)]:
            R.compare(f"residual_layernorm_forward {name} {tag} = two launches", got, want.double(), dt, k=1e-30)


STEP_SCALARS = "<ffffQdffii"  # StepScalars of adamw.cu: lr, bc1, bc2, clip, seed | loss_sum, grad_norm, grad_scale, apply, pad


def step_buffer(lr, bc1, bc2, clip, seed):
    """A StepScalars as the host writes it before a step (the device's fields zero)."""
    packed = struct.pack(STEP_SCALARS, lr, bc1, bc2, clip, seed, 0.0, 0.0, 0.0, 0, 0)
    return torch.tensor(list(packed), dtype=torch.uint8)


def check_step(dt):
    """step_scalars (the norm, clipping scale, loss sum and NaN guard of a recorded step, each sum
    in order in double as the host sums them) and adamw_step (adamw with those values, nothing
    when the guard says so)."""
    n, blocks_ = 1000, 37
    for clip, count, poison in [(1.0, n, None), (0.0, n, None), (1e6, n, None), (1.0, 0, None), (1.0, n, "loss")]:
        tag = f"[{dt} clip={clip} count={count} poison={poison}]"
        losses = (torch.rand(n) * 5).float()
        if poison:
            losses[n // 2] = float("nan")
        partials = (torch.rand(blocks_, dtype=torch.float64) * 0.3)
        s = step_buffer(1e-3, 0.5, 0.25, clip, 7)
        launch("step_scalars", dt, 1, 32, P(s), P(partials), I(blocks_), P(losses), L(n), I(count))
        got = struct.unpack(STEP_SCALARS, bytes(s.tolist()))
        loss_sum = 0.0
        for x in losses.tolist():
            loss_sum += x
        sq = 0.0
        for x in partials.tolist():
            sq += x
        norm = float(torch.tensor(math.sqrt(sq), dtype=torch.float32))
        scale = float(torch.tensor(clip, dtype=torch.float32) / torch.tensor(norm, dtype=torch.float32)) \
            if clip > 0 and norm > clip else 1.0
        apply = int(count > 0 and math.isfinite(loss_sum) and math.isfinite(norm))
        want = (got[0], got[1], got[2], got[3], got[4], loss_sum, norm, scale, apply, 0)
        same = all((a == b) or (a != a and b != b) for a, b in zip(got, want))
        R.rows += 1
        print(f"{'step_scalars ' + tag:<70} {'ok' if same else 'FAIL ' + str(got) + ' != ' + str(want)}")
        if not same:
            R.failed.append(f"step_scalars {tag}")
    # adamw_step: the values of the buffer, bit for bit as adamw with them; nothing when apply is 0.
    n = 4096 + 64
    master = torch.randn(n, dtype=torch.float32)
    grads, _ = rnd(n, dt, 0.01)
    m, v = (torch.randn(n) * 0.01).float(), (torch.randn(n) * 1e-4).abs().float()
    for apply in (1, 0):
        by_value = [x.clone() for x in (master.to(DTYPE[dt]), master, m, v)]
        launch("adamw", dt, blocks(n // 4, 256), 256, P(by_value[0]), P(by_value[1] if dt == "bf16" else by_value[0]),
               P(grads), P(by_value[2]), P(by_value[3]), L(0), L(n), L(n // 2), F(1e-2), F(0.9), F(0.95), F(1e-8),
               F(0.1), F(0.271), F(0.143), F(0.7), U64(99))
        packed = struct.pack(STEP_SCALARS, 1e-2, 0.271, 0.143, 1.0, 99, 0.0, 0.0, 0.7, apply, 0)
        s = torch.tensor(list(packed), dtype=torch.uint8)
        from_device = [x.clone() for x in (master.to(DTYPE[dt]), master, m, v)]
        launch("adamw_step", dt, blocks(n // 4, 256), 256, P(from_device[0]),
               P(from_device[1] if dt == "bf16" else from_device[0]), P(grads), P(from_device[2]), P(from_device[3]),
               L(0), L(n), L(n // 2), F(0.9), F(0.95), F(1e-8), F(0.1), P(s))
        want = by_value if apply else [master.to(DTYPE[dt]), master, m, v]
        same = all(torch.equal(a, b) for a, b in zip(from_device, want))
        R.rows += 1
        tag = f"[{dt} apply={apply}]"
        what = "the same bits as adamw" if apply else "nothing written"
        print(f"{'adamw_step ' + tag:<70} {what}: {'ok' if same else 'FAIL'}")
        if not same:
            R.failed.append(f"adamw_step {tag}")


def check_sum_squares(dt):
    for n in [64, 1000 * 64, 100_000]:
        x, x64 = rnd(n, dt, 0.1)
        vec = vec_ok(dt, [x], [n])
        per_block = 256 * (VEC[dt] if vec else 1)
        nb = min(max(1, -(-n // per_block)), 1024)
        partials = torch.full((nb,), float("nan"), dtype=torch.float64)
        launch("sum_squares", dt, nb, 256, P(partials), P(x), L(n), I(vec))
        R.compare(f"sum_squares [{dt} n={n} vec={vec}]", partials.sum().reshape(1), (x64 * x64).sum().reshape(1), "f32")


CHECKS = {
    "elementwise": check_elementwise,
    "encoder": check_encoder,
    "layernorm": check_layernorm,
    "residual_layernorm": check_residual_layernorm,
    "matmul": check_matmul_helpers,
    "attention": check_attention,
    "attention_cached": check_attention_cached,
    "flash_attention": check_flash_attention,
    "flash_attention_sm90a": check_flash_attention_sm90a,
    "wgmma_probe": check_wgmma_probe,
    "cross_entropy": check_cross_entropy,
    "adamw": check_adamw,
    "step": check_step,
    "sum_squares": check_sum_squares,
}


def main():
    global LIB
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the checks whose name contains this")
    args = parser.parse_args()
    torch.manual_seed(0)
    LIB = build()
    for name, fn in CHECKS.items():
        if args.only and args.only not in name:
            continue
        for dt in ("f32", "bf16"):
            fn(dt)
    print(f"{R.rows - len(R.failed)} passed, {len(R.failed)} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
