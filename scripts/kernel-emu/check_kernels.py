#!/usr/bin/env python3
"""Runs every kernel of kernels/*.cu on the CPU, through the emulation in emu.h, against numpy
references in float64: a check of the kernels' logic on a machine without a GPU.

It compiles the kernels with g++ (the CUDA headers come from nvcc's folder: NVCC, or the
nvidia-cuda-nvcc wheel in this Python), loads them with ctypes and launches each entry point
with the grid the Rust host code uses, on both the vector and the scalar path, in f32 and bf16.
Tolerances follow gptk check: |emulated − reference| ≤ k·eps·(|ref| + rms(ref)), eps of the
output type (2⁻⁸ bf16, 2⁻²³ f32), k = 2 (bf16) or 256 (f32).

numpy has no bfloat16: a bf16 tensor is a uint16 array of its bit patterns (BF16), rounded from
float as torch's .to(torch.bfloat16) rounds (to_bf16) and read back exactly (from_bf16).

This says nothing about speed, and a GPU can still disagree where the emulation cannot see
(memory ordering beyond the barriers it models, hardware math functions): `gptk check` on a GPU is
the real test.

With --racecheck the kernels are built with ThreadSanitizer, and a data race between two CUDA
threads of a block (shared or global memory, no barrier between them) fails the run, both stacks
printed (emu.h says what orders two threads there). With --memcheck they are built with
AddressSanitizer, and a kernel that reads or writes global memory outside the arrays it was given,
or dynamic shared memory past what the host gives its launch, fails the run with the access's
stack, as compute-sanitizer's memcheck would on a GPU; UndefinedBehaviorSanitizer comes with it
(a signed integer overflow in an index, a shift past the width, ...).

The blocks of a launch run one after another, by index or, with --reverse-blocks, the other way
round: a kernel whose block reads what another block of its launch writes gives other numbers one
way or the other.

Usage: python3 scripts/kernel-emu/check_kernels.py [--only NAME] [--racecheck | --memcheck]
[--reverse-blocks]   (needs numpy and g++)
"""

import argparse
import atexit
import ctypes
import faulthandler
import functools
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import weakref

import numpy as np

import emu_build


ROWS_PER_BLOCK = 8  # warps per 256-thread block
EPS = {"f32": 2.0**-23, "bf16": 2.0**-8}
K = {"f32": 256.0, "bf16": 2.0}
BF16 = np.dtype(np.uint16)  # bf16 storage: the bit patterns
DTYPE = {"f32": np.dtype(np.float32), "bf16": BF16}
VEC = {"f32": 4, "bf16": 8}
LAYERNORM_EPS = 1e-5
ALIGN = 64  # bytes: where every array the kernels see starts, as torch's CPU allocator places tensors
BF16_NAN = 0x7FC0  # the NaN torch rounds every NaN to


def cuda_include():
    return emu_build.cuda_include("cuda_bf16.h")


def build(sanitizer=None):
    out = tempfile.mkdtemp(prefix="gptk-kernel-emu-")
    flags = SANITIZERS[sanitizer]["flags"] if sanitizer else []
    # Removed at exit, not before: the sanitizer reads the library's symbols for its reports.
    atexit.register(shutil.rmtree, out, True)
    return ctypes.CDLL(emu_build.compile_kernels(os.path.join(out, "kernels.so"), ["cuda_bf16.h"], flags=flags))


# ---- sanitizers -----------------------------------------------------------------------------------
# --racecheck builds the kernels with ThreadSanitizer (emu.h says what it orders): a data race
# between two CUDA threads of a block fails the run. --memcheck builds them with
# AddressSanitizer: a kernel's access to global memory outside the arrays it was given, or to
# dynamic shared memory past the bytes the host gives its launch, fails the run, and so does
# undefined behaviour in C++ terms (UndefinedBehaviorSanitizer, built in too). Either way this
# script runs again in a Python that has the sanitizer's runtime loaded first, as it must be, and
# the report names the access with its stack.
SANITIZER_ENV = "GPTK_EMU_SANITIZER"
SANITIZERS = {
    "racecheck": {
        "runtime": "libtsan.so", "package": "libtsan2", "name": "ThreadSanitizer", "exitcode": 66,
        "flags": ["-fsanitize=thread", "-g", "-DGPTK_EMU_RACECHECK"],
        "options": {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66 history_size=4"},
        "found": "a data race between CUDA threads",
    },
    "memcheck": {
        "runtime": "libasan.so", "package": "libasan8", "exitcode": 67,
        "name": "AddressSanitizer (with UndefinedBehaviorSanitizer)",
        "flags": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g",
                  "-DGPTK_EMU_MEMCHECK"],
        # Python's own allocations are not the kernels' business: no leak report at exit.
        "options": {"ASAN_OPTIONS": "halt_on_error=1 exitcode=67 detect_leaks=0",
                    "UBSAN_OPTIONS": "halt_on_error=1 exitcode=67 print_stacktrace=1"},
        "found": "an access outside the memory a kernel was given, or undefined behaviour (an integer "
                 "overflow, a shift past the width, ...)",
    },
}
SANITIZER = None  # the one this run is built with, if any


def sanitizer_runtime(name):
    """The path of g++'s runtime for sanitizer `name`, or None."""
    found = subprocess.run(["g++", f"-print-file-name={SANITIZERS[name]['runtime']}"], capture_output=True, text=True)
    runtime = os.path.realpath(found.stdout.strip()) if found.returncode == 0 else ""
    return runtime if os.path.isfile(runtime) else None


def rerun_under(name):
    """Runs this script again with sanitizer `name`'s runtime preloaded and exits with its status;
    returns at once in that run."""
    if os.environ.get(SANITIZER_ENV) == name:
        return
    s = SANITIZERS[name]
    runtime = sanitizer_runtime(name)
    if not runtime:
        sys.exit(f"--{name}: g++ has no {s['name']} runtime ({s['runtime']}; on Debian: apt install {s['package']})")
    options = {v: " ".join(filter(None, [o, os.environ.get(v, "")])) for v, o in s["options"].items()}
    # numpy's BLAS on one thread: its worker threads synchronize in ways the race checker cannot see.
    env = dict(os.environ, LD_PRELOAD=runtime, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               **options, **{SANITIZER_ENV: name})
    status = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env=env).returncode
    if status == s["exitcode"]:
        print(f"{name}: {s['name']} reported {s['found']} (above)")
    sys.exit(status)


# With --memcheck, the bytes around each array a kernel sees are marked unaddressable (`poison`),
# so that a kernel's read or write of them stops the run; numpy, not instrumented, still reads
# them freely. Marked addressable again before the memory goes back to the allocator.
@functools.cache
def sanitizer_calls():
    """The preloaded AddressSanitizer runtime's entry points (this process's symbols)."""
    return ctypes.CDLL(None)


def poison(address, size):
    if SANITIZER == "memcheck" and size > 0:
        sanitizer_calls().__asan_poison_memory_region(ctypes.c_void_p(address), ctypes.c_size_t(size))


def unpoison(address, size):
    if SANITIZER == "memcheck" and size > 0:
        sanitizer_calls().__asan_unpoison_memory_region(ctypes.c_void_p(address), ctypes.c_size_t(size))


LIB = None
RNG = None  # numpy.random.Generator, seeded in main


# ---- storage ----------------------------------------------------------------------------------

def to_bf16(x):
    """The bf16 bit patterns (uint16) of float values, as torch's .to(torch.bfloat16) gives them:
    through float32 first (so a float64 is rounded twice), then to nearest even on the high 16
    bits; overflow and infinities give infinities, any NaN gives BF16_NAN."""
    with np.errstate(over="ignore"):
        f = np.asarray(x, np.float32)
    bits = f.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(BF16)
    return np.where(np.isnan(f), BF16.type(BF16_NAN), rounded)


def from_bf16(b):
    """The float32 values of bf16 bit patterns (exact: a bf16 is the high half of a float32)."""
    return (np.asarray(b, BF16).astype(np.uint32) << 16).view(np.float32)


def empty(shape, dtype):
    """An uninitialised C-contiguous array starting on an ALIGN-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)  # kept alive by the view (its base)
    start = -raw.ctypes.data % ALIGN
    if SANITIZER == "memcheck":
        # The slack before and after the array is outside it (see poison).
        poison(raw.ctypes.data, start)
        poison(raw.ctypes.data + start + nbytes, ALIGN - start)
        weakref.finalize(raw, unpoison, raw.ctypes.data, raw.nbytes)
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def store(x, dtype):
    """Values x in a fresh array of storage type dtype (BF16: rounded to bf16), as empty places it."""
    x = np.asarray(x)
    t = empty(x.shape, dtype)
    t[...] = to_bf16(x) if t.dtype == BF16 else x
    return t


def fill(t, value):
    """Sets every element of storage array t to value (rounded to bf16 for BF16); returns t."""
    t.fill(to_bf16(value) if t.dtype == BF16 else value)
    return t


def full(shape, value, dtype):
    return fill(empty(shape, dtype), value)


def copy(t):
    """A fresh copy of a storage array, bits and all."""
    out = empty(t.shape, t.dtype)
    out[...] = t
    return out


def f64(t):
    """The float64 values of a storage array (bf16 bit patterns decoded)."""
    return (from_bf16(t) if t.dtype == BF16 else t).astype(np.float64)


def equal(a, b):
    """Same shape and values (NaN equal to nothing, -0 to 0), as torch.equal compares."""
    return a.shape == b.shape and bool((f64(a) == f64(b)).all())


def P(t):
    assert t.flags.c_contiguous, "a kernel reads its arrays C-contiguous"
    return ctypes.c_void_p(t.ctypes.data)


def I(x):
    return ctypes.c_int(int(x))


def L(x):
    return ctypes.c_longlong(int(x))


def F(x):
    return ctypes.c_float(float(x))


def U64(x):
    return ctypes.c_ulonglong(int(x))


# Per kernel that uses ldmatrix: [phases, extra wavefronts from bank conflicts] over its launches.
LDMATRIX = {}


# A launch that takes longer than this is taken to hang (threads of a block waiting at barriers
# the others never reach, as a GPU would): the run stops with the Python stack, naming the launch.
LAUNCH_TIMEOUT_S = 300


# Bytes of dynamic shared memory each kernel that takes some may use, by name, from the JSON
# object in GPTK_EMU_SHARED_BYTES (tests/kernel_emulation.rs sets it from the host's tables: what
# the host gives the launch, less the alignment slack that the wgmma kernels spend on aligning
# their tiles themselves, which the emulation, whose shared memory is aligned already, does not).
# A launch of a kernel named there starts each block with its shared memory poisoned and fails
# one that touches more (emu.h).
SHARED_BYTES = json.loads(os.environ.get("GPTK_EMU_SHARED_BYTES", "{}"))


def launch(name, dt, grid, block, *args, by_params=False):
    """Runs entry point `name`_`dt` over `grid` (blocks, or (x, y)) of `block` threads, with the
    ctypes values `args`: as a call, or, `by_params`, as cuLaunchKernel passes them (pointers to
    each value; an argument that is an address already is taken as the pointer to its value)."""
    gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
    LIB.emu_config(max(1, int(gx)), max(1, int(gy)), int(block), ctypes.c_ulonglong(SHARED_BYTES.get(name, 0)))
    faulthandler.dump_traceback_later(LAUNCH_TIMEOUT_S, exit=True)
    try:
        if by_params:
            values = [a.address if isinstance(a, ByValue) else ctypes.addressof(a) for a in args]
            if LIB.emu_launch(f"{name}_{dt}".encode(), (ctypes.c_void_p * len(values))(*values)) != 0:
                sys.exit(f"no entry point {name}_{dt}")
        else:
            getattr(LIB, f"{name}_{dt}")(*args)
    finally:
        faulthandler.cancel_dump_traceback_later()
    phases = ctypes.c_longlong(0)
    extra = LIB.emu_ldmatrix_conflicts(ctypes.byref(phases))
    if phases.value:
        seen = LDMATRIX.setdefault(f"{name}_{dt}", [0, 0])
        seen[0] += phases.value
        seen[1] += extra


class ByValue:
    """A kernel argument passed by value from memory of its own (a launch `by_params` passes its
    address): a CUtensorMap, 128 bytes aligned to 128, which ctypes cannot pass itself."""

    def __init__(self, nbytes, align):
        self.buf = np.zeros(nbytes + align, np.uint8)
        self.address = self.buf.ctypes.data + (-self.buf.ctypes.data) % align


def tensor_map(t, box_rows, box_cols):
    """The tiled tensor map of a 3-D bf16 array t (B, T, W), as the host encodes qkv's: boxes of
    box_rows × box_cols elements, the 128-byte swizzle, zeros outside."""
    B, T, W = t.shape
    m = ByValue(128, 128)
    U64s, U32s = ctypes.c_uint64 * 3, ctypes.c_uint32 * 3
    rc = LIB.emu_tensor_map_encode(ctypes.c_void_p(m.address), 2, 3, P(t), U64s(W, T, B),
                                   U64s(W * 2, T * W * 2, 0), U32s(box_cols, box_rows, 1), U32s(1, 1, 1), 128, 0)
    assert rc == 0, "the tensor map was refused"
    return m


def check_bank_conflicts(kernels):
    """One row per kernel named in `kernels` that ran ldmatrix: its shared-memory reads must be
    free of bank conflicts (the rows of every 8×8 matrix in different 16-byte bank groups)."""
    for name in kernels:
        phases, extra = LDMATRIX.get(name, (0, 0))
        R.rows += 1
        ok = phases > 0 and extra == 0
        detail = f"{extra} extra wavefronts in {phases} ldmatrix phases"
        print(f"{name + ' bank conflicts':<70} {detail}  {'ok' if ok else 'FAIL'}")
        if not ok:
            R.failed.append(name + " bank conflicts")


def blocks(threads, block):
    return max(1, -(-int(threads) // block))


class Report:
    def __init__(self):
        self.rows = 0
        self.failed = []

    def compare(self, what, got, ref, dt_out, k=None):
        got = f64(got)
        ref = f64(ref)
        eps, k = EPS[dt_out], k or K[dt_out]
        rms = math.sqrt(np.mean(ref**2)) if ref.size else 0.0
        tol = k * eps * (np.abs(ref) + rms)
        diff = np.abs(got - ref)
        bad = ~np.isfinite(got)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.nan_to_num(diff / np.maximum(tol, 1e-300), nan=math.inf).max() if ref.size else 0.0
        ok = not bad.any() and share <= 1.0
        self.rows += 1
        status = "ok" if ok else "FAIL"
        print(f"{what:<70} max abs {diff.max() if ref.size else 0:.3e}  tol used {100 * share:7.1f}%  {status}")
        if not ok:
            self.failed.append(what)


R = Report()


def rnd(shape, dt, scale=1.0, shift=0.0):
    """Random values representable in the storage type, as (storage array, float64 copy)."""
    x = store(RNG.standard_normal(shape) * scale + shift, DTYPE[dt])
    return x, f64(x)


def skewed(t, skew):
    """A copy of t starting `skew` elements into a fresh buffer (misaligned for skew > 0)."""
    buf = empty(t.size + skew, t.dtype)
    view = buf[skew:]
    view[...] = t.reshape(-1)
    return buf, view


def vec_ok(dt, tensors, lens):
    aligned = all(t.ctypes.data % 16 == 0 for t in tensors)
    return int(aligned and all(n % VEC[dt] == 0 for n in lens))


# ---- float64 references -----------------------------------------------------------------------

GELU_BETA = math.sqrt(2.0 / math.pi)
GELU_KAPPA = 0.044715


def gelu(x):
    """GELU, tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(GELU_BETA * (x + GELU_KAPPA * x**3)))


def gelu_grad(x, dout):
    """dout times the derivative of gelu at x."""
    t = np.tanh(GELU_BETA * (x + GELU_KAPPA * x**3))
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * x * x))


def logsumexp(x):
    """log Σ exp along the last axis (each row with a finite entry)."""
    top = x.max(-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[..., 0]


def log_softmax(x):
    return x - logsumexp(x)[..., None]


def causal_mask(s):
    """s with every key after its query at -inf."""
    T = s.shape[-1]
    return np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)


# ---- ops --------------------------------------------------------------------------------------

def check_elementwise(dt):
    for n, skew in [(1, 0), (13, 0), (4096, 0), (4096, 1), (1000, 0)]:
        a, a64 = rnd(n, dt, 2.0)
        b, b64 = rnd(n, dt)
        abuf, a = skewed(a, skew)
        out = full(n, math.nan, DTYPE[dt])
        vec = vec_ok(dt, [a, b, out], [n])
        threads = n // VEC[dt] if vec else n
        tag = f"[{dt} n={n} vec={vec}]"
        launch("gelu_forward", dt, blocks(threads, 256), 256, P(out), P(a), L(n), I(vec))
        R.compare(f"gelu_forward {tag}", out, gelu(a64), dt)
        d, d64 = rnd(n, dt)
        launch("gelu_backward", dt, blocks(threads, 256), 256, P(d), P(a), L(n), I(vec))
        R.compare(f"gelu_backward {tag}", d, gelu_grad(a64, d64), dt)
        fill(out, math.nan)
        launch("residual_forward", dt, blocks(threads, 256), 256, P(out), P(a), P(b), L(n), I(vec))
        R.compare(f"residual_forward {tag}", out, a64 + b64, dt)


def check_encoder(dt):
    for B, T, C, Vp in [(1, 1, 1, 4), (2, 5, 8, 16), (3, 7, 13, 20), (2, 16, 64, 40)]:
        tag = f"[{dt} B={B} T={T} C={C}]"
        wte, wte64 = rnd((Vp, C), dt)
        wpe, wpe64 = rnd((T, C), dt)
        tokens = RNG.integers(0, min(Vp, 5), B * T) * max(1, Vp // 5)
        tokens = store(np.minimum(tokens, Vp - 1), np.int32)
        out = full((B * T, C), math.nan, DTYPE[dt])
        total = B * T * C
        vec = vec_ok(dt, [out, wte, wpe], [C])
        threads = total // VEC[dt] if vec else total
        launch("encoder_forward", dt, blocks(threads, 256), 256, P(out), P(tokens), P(wte), P(wpe), I(T), I(C), L(total), I(vec))
        ref = wte64[tokens] + np.tile(wpe64, (B, 1))
        R.compare(f"encoder_forward {tag} vec={vec}", out, ref, dt)
        # Backward.
        dwte, dwte64 = rnd((Vp, C), dt, 0.1)
        dwpe, dwpe64 = rnd((T, C), dt, 0.1)
        dout, dout64 = rnd((B * T, C), dt)
        launch("encoder_backward_wpe", dt, blocks(T * C, 256), 256, P(dwpe), P(dout), I(B), I(T), I(C))
        R.compare(f"encoder_backward dwpe {tag}", dwpe, dwpe64 + dout64.reshape(B, T, C).sum(0), dt)
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
        buckets = store([len(toks)] + pad(toks, cap) + pad(starts, cap + 1) + pad(order, cap), np.int32)
        launch("encoder_backward_wte", dt, (cap, blocks(C, 256)), 256, P(dwte), P(dout), P(buckets), I(cap), I(C))
        ref = dwte64.copy()
        np.add.at(ref, tokens, dout64)
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
        inp = inp.reshape(N, C)
        w, w64 = rnd(C, dt, 0.2, 1.0)
        b, b64 = rnd(C, dt, 0.2)
        out = full((N, C), math.nan, DTYPE[dt])
        mean = full(N, math.nan, np.float32)
        rstd = full(N, math.nan, np.float32)
        vec = vec_ok(dt, [out, inp, w, b], [C])
        launch("layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(out), P(mean), P(rstd), P(inp), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(vec))
        m = inp64.mean(1)
        s = 1.0 / np.sqrt(((inp64 - m[:, None]) ** 2).mean(1) + LAYERNORM_EPS)
        ref = (inp64 - m[:, None]) * s[:, None] * w64 + b64
        R.compare(f"layernorm_forward out {tag} vec={vec}", out, ref, dt)
        R.compare(f"layernorm_forward mean {tag}", mean, m, "f32")
        R.compare(f"layernorm_forward rstd {tag}", rstd, s, "f32")
        # Backward, with the reference statistics.
        mean = store(m, np.float32)
        rstd = store(s, np.float32)
        dout, dout64 = rnd((N, C), dt)
        dinp, dinp64 = rnd((N, C), dt, 0.1)
        _, dinp = skewed(dinp, skew)
        dinp = dinp.reshape(N, C)
        dw, dw64 = rnd(C, dt, 0.1)
        db, db64 = rnd(C, dt, 0.1)
        vec = vec_ok(dt, [dinp, dout, inp, w], [C])
        launch("layernorm_backward_dinp", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(dinp), P(dout), P(inp), P(w), P(mean), P(rstd), I(N), I(C), I(vec))
        # The gradients of out = x̂·w + b, x̂ = (x − mean)·rstd, through the mean and the variance.
        xhat = (inp64 - m[:, None]) * s[:, None]
        dxhat = dout64 * w64
        grad = s[:, None] * (dxhat - dxhat.mean(1, keepdims=True) - xhat * (dxhat * xhat).mean(1, keepdims=True))
        R.compare(f"layernorm_backward dinp {tag} vec={vec}", dinp, dinp64 + grad, dt)
        rows, count = row_chunks(N)
        partials = full(count * 2 * C, math.nan, np.float32)
        launch("layernorm_backward_partials", dt, (blocks(C, 256), count), 256,
               P(partials), P(dout), P(inp), P(mean), P(rstd), I(N), I(C), I(rows))
        column_partials(dt, dw, partials, count, C, 2 * C, 0)
        column_partials(dt, db, partials, count, C, 2 * C, C)
        R.compare(f"layernorm_backward dw {tag}", dw, dw64 + (dout64 * xhat).sum(0), dt)
        R.compare(f"layernorm_backward db {tag}", db, db64 + dout64.sum(0), dt)


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
        partials = full(count * OC, math.nan, np.float32)
        launch("bias_grad_partials", dt, (blocks(OC, 256), count), 256, P(partials), P(dout), I(N), I(OC), I(rows))
        column_partials(dt, dbias, partials, count, OC, OC, 0)
        R.compare(f"bias_grad {tag}", dbias, dbias64 + dout64.sum(0), dt)


def attention_reference(q, k, v, causal):
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = causal_mask(s)
    lse = logsumexp(s)
    return np.exp(s - lse[..., None]) @ v, lse


def attention_backward_reference(q, k, v, do, out_stored, lse, causal):
    """dqkv (B, T, 3C) in float64 from heads (B, NH, T, HS) of q, k, v and dout, the stored output
    (B, T, C) and the forward's LSE (B, NH, T), as the flash kernels compute it."""
    B, NH, T, HS = q.shape
    scale = 1.0 / math.sqrt(HS)
    s = q @ k.swapaxes(-1, -2) * scale
    if causal:
        s = causal_mask(s)
    p = np.exp(s - lse[..., None])
    out = f64(out_stored).reshape(B, T, NH, HS).swapaxes(1, 2)
    ds = p * (do @ v.swapaxes(-1, -2) - (do * out).sum(-1, keepdims=True)) * scale
    merge = lambda x: x.swapaxes(1, 2).reshape(B, T, NH * HS)
    return np.concatenate([merge(ds @ k), merge(ds.swapaxes(-1, -2) @ q), merge(p.swapaxes(-1, -2) @ do)], -1)


def check_attention(dt):
    for B, T, NH, HS, causal in [(1, 1, 1, 4, True), (2, 7, 3, 15, True), (2, 7, 3, 15, False),
                                 (1, 9, 2, 64, True), (1, 5, 1, 100, False), (1, 4, 1, 256, True)]:
        tag = f"[{dt} B={B} T={T} NH={NH} HS={HS} causal={int(causal)}]"
        C = NH * HS
        qkv, qkv64 = rnd((B, T, 3 * C), dt)
        heads = lambda x: x.reshape(B, T, NH, HS).swapaxes(1, 2)
        q64, k64, v64 = (heads(qkv64[..., i * C:(i + 1) * C]) for i in range(3))
        rows = B * NH * T
        scale = 1.0 / math.sqrt(HS)
        out = full((B, T, C), math.nan, DTYPE[dt])
        lse = full(rows, math.nan, np.float32)
        launch("attention_forward", dt, blocks(rows, ROWS_PER_BLOCK), 256,
               P(out), P(lse), P(qkv), I(B), I(T), I(NH), I(HS), I(int(causal)), F(scale))
        ref, ref_lse = attention_reference(q64, k64, v64, causal)
        R.compare(f"attention_forward out {tag}", out, ref.swapaxes(1, 2).reshape(B, T, C), dt)
        R.compare(f"attention_forward lse {tag}", lse, ref_lse.reshape(-1), "f32")
        # Backward from the stored output (as the CPU contract), the reference LSE.
        out_stored = store(ref.swapaxes(1, 2).reshape(B, T, C), DTYPE[dt])
        lse = store(ref_lse.reshape(-1), np.float32)
        dout, dout64 = rnd((B, T, C), dt)
        delta = full(rows, math.nan, np.float32)
        dqkv = full((B, T, 3 * C), math.nan, DTYPE[dt])
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
    guards. With --memcheck the guards are also outside the memory the kernel may touch."""
    buf = full(t.size + 2 * GUARD, math.nan, t.dtype)
    view = buf[GUARD:GUARD + t.size].reshape(t.shape)
    view[...] = t
    guard_bytes = GUARD * buf.itemsize
    poison(buf.ctypes.data, guard_bytes)
    poison(buf.ctypes.data + buf.nbytes - guard_bytes, guard_bytes)
    return buf, view


def guards_intact(what, buf):
    unpoison(buf.ctypes.data, buf.nbytes)
    R.rows += 1
    ok = bool(np.isnan(f64(buf[:GUARD])).all() and np.isnan(f64(buf[-GUARD:])).all())
    print(f"{what + ' guards':<70} {'ok' if ok else 'FAIL (written outside the tensor)'}")
    if not ok:
        R.failed.append(what + " guards")


FLASH90_BLOCK = 256
FLASH90_WS_BLOCK = 384  # the warp-specialized forward: a producer and two consumer warpgroups
TMA_PROBE_BLOCK = 128
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
    heads = lambda x: x.reshape(B, T, NH, HS).swapaxes(1, 2)
    q64, k64, v64 = (heads(qkv64[..., i * C:(i + 1) * C]) for i in range(3))
    ref, ref_lse = attention_reference(q64, k64, v64, causal)
    # The forward of the set; with the wgmma kernels also the warp-specialized one, fed by TMA
    # through a map of qkv (passed by value, so launched as cuLaunchKernel passes arguments).
    forwards = [(f"flash_forward{sfx}", block, [], False)]
    if kernels is WGMMA_KERNELS:
        forwards.append((f"flash_forward_tma{sfx}", FLASH90_WS_BLOCK, [tensor_map(qkv, 64, 64)], True))
    for name, threads, lead, by_params in forwards:
        out_buf, out = guarded(full((B, T, C), math.nan, DTYPE[dt]))
        lse_buf, lse = guarded(full(rows, math.nan, np.float32))
        launch(f"{name}_hs{HS}", dt, tiles(kernels["forward"]), threads, *lead, P(out), P(lse), P(qkv), I(B), I(T),
               I(NH), I(int(causal)), F(scale), by_params=by_params)
        R.compare(f"{name} out {tag}", out, ref.swapaxes(1, 2).reshape(B, T, C), dt, K_FLASH_FORWARD)
        R.compare(f"{name} lse {tag}", lse, ref_lse.reshape(-1), "f32")
        guards_intact(f"{name} out {tag}", out_buf)
        guards_intact(f"{name} lse {tag}", lse_buf)
    out_stored = store(ref.swapaxes(1, 2).reshape(B, T, C), DTYPE[dt])
    _, lse = guarded(store(ref_lse.reshape(-1), np.float32))
    dout, dout64 = rnd((B, T, C), dt)
    _, dout = guarded(dout)
    _, delta = guarded(full(rows, math.nan, np.float32))
    dqkv_buf, dqkv = guarded(full((B, T, 3 * C), math.nan, DTYPE[dt]))
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
    check_bank_conflicts([f"flash_{kind}_hs{hs}_{dt}" for kind in ("forward", "backward_dkv", "backward_dq",
                                                                  "backward_dkvq") for hs in (64, 128)])


def atomic_dq_case(dt, B, T, NH, HS, causal, kernels, case):
    """The opt-in backward of a kernel set at one shape: dK/dV and dQ in one pass, dQ summed into
    an f32 buffer with atomics (zeroed first, as the host does), then stored into dqkv's q third;
    `case` is what flash_case returned at that shape."""
    tag, qkv, dout, lse, delta, want = case
    C, sfx = NH * HS, kernels["suffix"]
    dqkv_buf, dqkv = guarded(full((B, T, 3 * C), math.nan, DTYPE[dt]))
    acc_buf, acc = guarded(full((B, T, C), 0.0, np.float32))
    launch(f"flash_backward_dkvq{sfx}_hs{HS}", dt, -(-T // kernels["dkv"]) * B * NH, kernels["block"], P(dqkv),
           P(acc), P(dout), P(qkv), P(lse), P(delta), I(B), I(T), I(NH), I(int(causal)), F(1.0 / math.sqrt(HS)))
    launch("flash_dq_store", dt, blocks(B * T * C // 8, FLASH_BLOCK), FLASH_BLOCK, P(dqkv), P(acc), I(C),
           L(B * T * C))
    R.compare(f"flash_backward{sfx} (atomic dQ) dqkv {tag}", dqkv, want, dt, K_FLASH_BACKWARD)
    guards_intact(f"flash_backward{sfx} (atomic dQ) dqkv {tag}", dqkv_buf)
    guards_intact(f"flash_backward{sfx} (atomic dQ) accumulator {tag}", acc_buf)


def check_flash_attention_sm90a(dt):
    """The wgmma kernels of flash_attention_sm90a.cu (bf16 only), forward, backward and the
    opt-in atomic-dQ backward, and the warp-specialized TMA forward, on the shapes of the mma.sync
    ones plus ones spanning several tiles (128 keys per forward tile at HS = 64, 128 keys per dK/dV
    block; seven forward tiles at T = 420, HS = 128, so that each of the three value stages is
    refilled, and the TMA forward's four stages at both head sizes). Their shared memory starts
    on a 1024-byte boundary here; on the GPU the kernels align it themselves."""
    if dt != "bf16":
        return
    flash_cases(dt, [(1, 1, 1, 64, True), (1, 17, 2, 64, True), (2, 65, 1, 64, False), (1, 63, 1, 128, True),
                     (1, 300, 1, 64, True), (1, 130, 1, 128, False), (1, 200, 1, 128, True), (1, 257, 2, 64, False),
                     (1, 420, 1, 128, False), (1, 600, 1, 64, False)], WGMMA_KERNELS)


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
        d = full(d_shape, math.nan, np.float32)
        launch("wgmma_probe", dt, 1, FLASH90_BLOCK, P(d), P(a), P(b), I(mode))
        want = (a64.T if mode == 2 else a64) @ (b64.T if mode == 0 else b64)
        R.compare(f"wgmma_probe mode {mode} [{dt}]", d, want, "f32")


def check_tma_probe(dt):
    """The TMA probe: one box copy of a (B, T, W) tensor's map, the shared tile copied out byte
    for byte, against the layout the wgmma descriptors read (chunk c of box row r at c ^ (r % 8))
    with rows past T zero; a box inside the tensor and one over its end."""
    if dt != "bf16":
        return
    B, T, W = 2, 100, 192
    t, _ = rnd((B, T, W), dt)
    for c0, c1, c2 in [(64, 0, 1), (128, 64, 0)]:
        out = full((64, 64), math.nan, DTYPE[dt])
        launch("tma_probe", dt, 1, TMA_PROBE_BLOCK, tensor_map(t, 64, 64), P(out), I(c0), I(c1), I(c2),
               by_params=True)
        box = np.zeros((64, 64), BF16)
        rows = min(64, T - c1)
        box[:rows] = t[c2, c1:c1 + rows, c0:c0 + 64]
        want = np.empty_like(box)
        for r in range(64):
            for c in range(8):
                want[r, 8 * (c ^ (r % 8)):8 * (c ^ (r % 8)) + 8] = box[r, 8 * c:8 * c + 8]
        R.rows += 1
        ok = np.array_equal(out, want)
        what = f"tma_probe box at ({c0}, {c1}, {c2}) [{dt}]"
        print(f"{what:<70} {'ok' if ok else 'FAIL (not the swizzled box)'}")
        if not ok:
            R.failed.append(what)


def check_attention_cached(dt):
    for B, Tmax, pos, NH, HS in [(1, 1, 0, 1, 4), (2, 9, 0, 3, 15), (2, 9, 8, 3, 15), (3, 12, 5, 2, 64)]:
        tag = f"[{dt} B={B} Tmax={Tmax} pos={pos} NH={NH} HS={HS}]"
        C = NH * HS
        qkv, qkv64 = rnd((B, 3 * C), dt)
        kv, kv64 = rnd((B, Tmax, 2 * C), dt)
        out = full((B, C), math.nan, DTYPE[dt])
        launch("attention_cached", dt, blocks(B * NH, ROWS_PER_BLOCK), 256,
               P(out), P(qkv), P(kv), I(B), I(Tmax), I(pos), I(NH), I(HS), F(1.0 / math.sqrt(HS)))
        kv_ref = kv64.copy()
        kv_ref[:, pos] = qkv64[:, C:]
        q = qkv64[:, :C].reshape(B, NH, 1, HS)
        k = kv_ref[:, :pos + 1, :C].reshape(B, pos + 1, NH, HS).swapaxes(1, 2)
        v = kv_ref[:, :pos + 1, C:].reshape(B, pos + 1, NH, HS).swapaxes(1, 2)
        ref, _ = attention_reference(q, k, v, False)
        R.compare(f"attention_cached out {tag}", out, ref.reshape(B, C), dt)
        R.compare(f"attention_cached kv {tag}", kv, kv_ref, dt)


def check_cross_entropy(dt):
    for N, V, Vp, grad in [(1, 1, 8, True), (5, 10, 128, False), (7, 100, 128, True), (4, 1000, 1024, True)]:
        tag = f"[{dt} N={N} V={V} Vp={Vp} grad={int(grad)}]"
        logits, logits64 = rnd((N, Vp), dt, 2.0)
        targets = store([-1 if r % 3 == 2 else RNG.integers(0, V) for r in range(N)], np.int32)
        losses = full(N, math.nan, np.float32)
        vec = vec_ok(dt, [logits], [Vp])
        dloss = 1.0 / N
        launch("cross_entropy", dt, N, 512, P(losses), P(logits), P(targets), I(V), I(Vp), F(dloss if grad else 0.0),
               I(int(grad)), I(vec))
        lsm = log_softmax(logits64[:, :V])
        keep = targets >= 0
        ref_loss = np.zeros(N)
        ref_loss[keep] = -lsm[keep, targets[keep]]
        R.compare(f"cross_entropy losses {tag} vec={vec}", losses, ref_loss, "f32")
        if grad:
            ref = np.zeros((N, Vp))
            p = np.exp(lsm)
            p[keep, targets[keep]] -= 1.0
            ref[:, :V] = p * dloss
            ref[~keep] = 0.0
            R.compare(f"cross_entropy dlogits {tag}", logits, ref, dt)


def check_adamw(dt):
    for n in [64, 4096 + 64]:
        tag = f"[{dt} n={n}]"
        master = store(RNG.standard_normal(n), np.float32)
        params = store(master, DTYPE[dt])
        grads, g64 = rnd(n, dt, 0.01)
        m = store(RNG.standard_normal(n) * 0.01, np.float32)
        v = store(np.abs(RNG.standard_normal(n) * 1e-4), np.float32)
        m64, v64, p64 = f64(m), f64(v), f64(master)
        lr, b1, b2, eps, wd, t, scale, seed = 1e-2, 0.9, 0.95, 1e-8, 0.1, 3, 0.7, 12345
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        decay_end = n // 2 + 4
        launch("adamw", dt, blocks(n // 4, 256), 256, P(params), P(master if dt == "bf16" else params), P(grads),
               P(m), P(v), L(0), L(n), L(decay_end), F(lr), F(b1), F(b2), F(eps), F(wd), F(bc1), F(bc2), F(scale), U64(seed))
        g = g64 * scale
        m_ref = b1 * m64 + (1 - b1) * g
        v_ref = b2 * v64 + (1 - b2) * g * g
        decay = np.where(np.arange(n) < decay_end, wd, 0.0)
        p_ref = p64 - lr * (decay * p64 + (m_ref / bc1) / (np.sqrt(v_ref / bc2) + eps))
        R.compare(f"adamw params {tag}", master if dt == "bf16" else params, p_ref, "f32")
        R.compare(f"adamw m {tag}", m, m_ref, "f32")
        R.compare(f"adamw v {tag}", v, v_ref, "f32")
        if dt == "bf16":
            mm = f64(master)
            step = 2.0 ** (np.floor(np.log2(np.abs(mm))) - 7)
            d = (f64(params) - mm) / step
            worst = np.abs(d).max()
            bias = (d * np.sign(mm)).mean()
            # The bias is only judged on thousands of elements (its noise is about 0.4/√n steps).
            ok = worst <= 1.0 and (n < 4096 or abs(bias) <= 0.1)
            R.rows += 1
            print(f"{'adamw stochastic rounding ' + tag:<70} worst {worst:.3f} steps, bias {bias:+.4f} steps  {'ok' if ok else 'FAIL'}")
            if not ok:
                R.failed.append(f"adamw stochastic rounding {tag}")
    # One shard, as a data-parallel rank updates it: the same values as the unsharded step inside
    # [start, end), nothing touched outside.
    n, start, end = 4096 + 64, 64, 4096 - 64
    master = store(RNG.standard_normal(n), np.float32)
    params = store(master, DTYPE[dt])
    grads, _ = rnd(n, dt, 0.01)
    m, v = store(RNG.standard_normal(n) * 0.01, np.float32), store(np.abs(RNG.standard_normal(n) * 1e-4), np.float32)
    whole = [copy(x) for x in (params, master, m, v)]
    args = (F(1e-2), F(0.9), F(0.95), F(1e-8), F(0.1), F(0.271), F(0.143), F(0.7), U64(99))
    launch("adamw", dt, blocks(n // 4, 256), 256, P(whole[0]), P(whole[1] if dt == "bf16" else whole[0]), P(grads),
           P(whole[2]), P(whole[3]), L(0), L(n), L(n // 2), *args)
    before = [copy(x) for x in (params, master, m, v)]
    launch("adamw", dt, blocks((end - start) // 4, 256), 256, P(params), P(master if dt == "bf16" else params), P(grads),
           P(m), P(v), L(start), L(end), L(n // 2), *args)
    for name, got, ref, old in zip(["params", "master", "m", "v"], (params, master, m, v), whole, before):
        if dt == "f32" and name == "master":
            continue
        inside = equal(got[start:end], ref[start:end])
        outside = equal(got[:start], old[:start]) and equal(got[end:], old[end:])
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
        x = x.reshape(N, C)
        y, y64 = rnd((N, C), dt, 0.5)
        w, w64 = rnd(C, dt, 0.2, 1.0)
        b, b64 = rnd(C, dt, 0.2)
        res = full((N, C), math.nan, DTYPE[dt])
        out = full((N, C), math.nan, DTYPE[dt])
        mean = full(N, math.nan, np.float32)
        rstd = full(N, math.nan, np.float32)
        vec = vec_ok(dt, [res, out, x, y, w, b], [C])
        launch("residual_layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256, P(res), P(out), P(mean), P(rstd),
               P(x), P(y), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(vec))
        R.compare(f"residual_layernorm_forward res {tag} vec={vec}", res, x64 + y64, dt)
        r64 = f64(res)  # the layernorm normalises the stored (rounded) residual
        m = r64.mean(1)
        s = 1.0 / np.sqrt(((r64 - m[:, None]) ** 2).mean(1) + LAYERNORM_EPS)
        R.compare(f"residual_layernorm_forward out {tag} vec={vec}", out, (r64 - m[:, None]) * s[:, None] * w64 + b64, dt)
        R.compare(f"residual_layernorm_forward mean {tag}", mean, m, "f32")
        R.compare(f"residual_layernorm_forward rstd {tag}", rstd, s, "f32")
        # The same bits as residual_forward then layernorm_forward.
        res2 = full((N, C), math.nan, DTYPE[dt])
        out2 = full((N, C), math.nan, DTYPE[dt])
        mean2 = full(N, math.nan, np.float32)
        rstd2 = full(N, math.nan, np.float32)
        evec = vec_ok(dt, [res2, x, y], [N * C])
        n = N * C
        per_block = 256 * (VEC[dt] if evec else 1)
        launch("residual_forward", dt, max(1, -(-n // per_block)), 256, P(res2), P(x), P(y), L(n), I(evec))
        lvec = vec_ok(dt, [out2, res2, w, b], [C])
        launch("layernorm_forward", dt, blocks(N, ROWS_PER_BLOCK), 256,
               P(out2), P(mean2), P(rstd2), P(res2), P(w), P(b), I(N), I(C), F(LAYERNORM_EPS), I(lvec))
        for name, got, want in [("res", res, res2), ("out", out, out2), ("mean", mean, mean2), ("rstd", rstd, rstd2)]:
            R.compare(f"residual_layernorm_forward {name} {tag} = two launches", got, f64(want), dt, k=1e-30)


STEP_SCALARS = "<ffffQdffii"  # StepScalars of adamw.cu: lr, bc1, bc2, clip, seed | loss_sum, grad_norm, grad_scale, apply, pad


def step_buffer(lr, bc1, bc2, clip, seed):
    """A StepScalars as the host writes it before a step (the device's fields zero)."""
    packed = struct.pack(STEP_SCALARS, lr, bc1, bc2, clip, seed, 0.0, 0.0, 0.0, 0, 0)
    return store(np.frombuffer(packed, np.uint8), np.uint8)


def check_step(dt):
    """step_scalars (the norm, clipping scale, loss sum and NaN guard of a recorded step, each sum
    in double in the order the host sums it: the losses in 32 strided lanes, then the lanes, as
    the host's sum_losses; the norm's partials in order) and adamw_step (adamw with those values,
    nothing when the guard says so)."""
    n, blocks_ = 1000, 37
    for clip, count, poison in [(1.0, n, None), (0.0, n, None), (1e6, n, None), (1.0, 0, None), (1.0, n, "loss"),
                                (1.0, n, "order")]:
        tag = f"[{dt} clip={clip} count={count} poison={poison}]"
        losses = store(RNG.random(n) * 5, np.float32)
        if poison == "loss":
            losses[n // 2] = float("nan")
        elif poison == "order":
            # Sums that round differently in another order: 2⁶⁰ + 1 is 2⁶⁰ in double.
            losses[0], losses[1], losses[32] = 2.0**60, -(2.0**60), 1.0
        partials = store(RNG.random(blocks_) * 0.3, np.float64)
        s = step_buffer(1e-3, 0.5, 0.25, clip, 7)
        launch("step_scalars", dt, 1, 32, P(s), P(partials), I(blocks_), P(losses), L(n), I(count))
        got = struct.unpack(STEP_SCALARS, s.tobytes())
        lanes = [0.0] * 32
        for i, x in enumerate(losses.tolist()):
            lanes[i % 32] += x
        loss_sum = 0.0
        for lane in lanes:
            loss_sum += lane
        sq = 0.0
        for x in partials.tolist():
            sq += x
        norm = float(np.float32(math.sqrt(sq)))
        scale = float(np.float32(clip) / np.float32(norm)) \
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
    master = store(RNG.standard_normal(n), np.float32)
    grads, _ = rnd(n, dt, 0.01)
    m, v = store(RNG.standard_normal(n) * 0.01, np.float32), store(np.abs(RNG.standard_normal(n) * 1e-4), np.float32)
    for apply in (1, 0):
        by_value = [copy(x) for x in (store(master, DTYPE[dt]), master, m, v)]
        launch("adamw", dt, blocks(n // 4, 256), 256, P(by_value[0]), P(by_value[1] if dt == "bf16" else by_value[0]),
               P(grads), P(by_value[2]), P(by_value[3]), L(0), L(n), L(n // 2), F(1e-2), F(0.9), F(0.95), F(1e-8),
               F(0.1), F(0.271), F(0.143), F(0.7), U64(99))
        packed = struct.pack(STEP_SCALARS, 1e-2, 0.271, 0.143, 1.0, 99, 0.0, 0.0, 0.7, apply, 0)
        s = store(np.frombuffer(packed, np.uint8), np.uint8)
        from_device = [copy(x) for x in (store(master, DTYPE[dt]), master, m, v)]
        launch("adamw_step", dt, blocks(n // 4, 256), 256, P(from_device[0]),
               P(from_device[1] if dt == "bf16" else from_device[0]), P(grads), P(from_device[2]), P(from_device[3]),
               L(0), L(n), L(n // 2), F(0.9), F(0.95), F(1e-8), F(0.1), P(s))
        want = by_value if apply else [store(master, DTYPE[dt]), master, m, v]
        same = all(equal(a, b) for a, b in zip(from_device, want))
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
        partials = full(nb, math.nan, np.float64)
        launch("sum_squares", dt, nb, 256, P(partials), P(x), L(n), I(vec))
        R.compare(f"sum_squares [{dt} n={n} vec={vec}]", np.array([partials.sum()]), np.array([(x64 * x64).sum()]), "f32")


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
    "tma_probe": check_tma_probe,
    "cross_entropy": check_cross_entropy,
    "adamw": check_adamw,
    "step": check_step,
    "sum_squares": check_sum_squares,
}


def main():
    global LIB, RNG, SANITIZER
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the checks whose name contains this")
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--racecheck", action="store_true",
                        help="build the kernels with ThreadSanitizer and fail on a data race between CUDA threads")
    checks.add_argument("--memcheck", action="store_true",
                        help="build the kernels with AddressSanitizer and fail on an access outside a kernel's memory")
    parser.add_argument("--reverse-blocks", action="store_true",
                        help="run the blocks of every launch in reverse order (a GPU may take any)")
    args = parser.parse_args()
    SANITIZER = "racecheck" if args.racecheck else "memcheck" if args.memcheck else None
    if SANITIZER:
        rerun_under(SANITIZER)
    RNG = np.random.default_rng(0)
    if not SHARED_BYTES:
        print("note: GPTK_EMU_SHARED_BYTES is not set: shared memory is neither poisoned nor bounded "
              "(cargo test --test kernel_emulation sets it)")
    LIB = build(SANITIZER)
    LIB.emu_set_block_order(int(args.reverse_blocks))
    for name, fn in CHECKS.items():
        if args.only and args.only not in name:
            continue
        for dt in ("f32", "bf16"):
            fn(dt)
    print(f"{R.rows - len(R.failed)} passed, {len(R.failed)} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
