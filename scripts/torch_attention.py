#!/usr/bin/env python3
"""PyTorch's flash attention timed the way `gptk bench` times gptk's, on the same shapes: the
reference that `gptk bench --compare FILE.json` puts beside gptk's numbers.

For every shape of gptk's attention benchmark (src/bench.rs, ATTENTION_SHAPES), causal and
bidirectional, it times torch.nn.functional.scaled_dot_product_attention with the flash backend
forced (torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)) in bf16:
- fwd: the forward, inputs requiring gradients as in training (so the LSE is kept);
- fwd+bwd: the forward and torch.autograd.grad of (q, k, v) given a random dout;
- bwd: their difference (PyTorch cannot run its backward alone).
q, k, v are the heads of one (B, T, 3C) tensor laid out [q|k|v] like gptk's qkv: (B, NH, T, HS)
views with the head dimension contiguous, each its own leaf so that no gradient assembly is
timed. Method as gptk's: CUDA events around each iteration, warm-up first, the median of many,
inputs rotated through copies that span ROTATION_BYTES (several times the L2 cache) so that each
iteration reads device memory. The two ceilings are measured the same way (a device-to-device
copy of 512 MiB, a bf16 8192³ matmul). FLOPs are counted as gptk counts them: forward
4·B·NH·T²·HS, halved when causal, backward 2.5 times that.

Usage (on the GPU machine; writes the JSON report to stdout or --out):
    python3 scripts/torch_attention.py [--iters 50] [--warmup 10] [--out torch.json]
    python3 scripts/torch_attention.py --list-cases      # the case names, no GPU needed
"""

import argparse
import json
import sys

# (B, T, NH, HS), as src/bench.rs ATTENTION_SHAPES.
SHAPES = [(8, 1024, 12, 64), (8, 2048, 12, 64), (8, 4096, 12, 64),
          (8, 1024, 6, 128), (8, 2048, 6, 128), (8, 4096, 6, 128)]
ROTATION_BYTES = 512 << 20
COPY_BYTES = 512 << 20
GEMM_SIZE = 8192
BACKWARD_FACTOR = 2.5


def case_name(B, T, NH, HS, causal):
    return f"B={B} NH={NH} T={T} HS={HS} {'causal' if causal else 'bidirectional'}"


def cases():
    return [(B, T, NH, HS, causal) for (B, T, NH, HS) in SHAPES for causal in (True, False)]


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def time_ms(torch, fn, warmup, iters):
    """Median and minimum milliseconds of fn(i) over `iters` event-timed runs after `warmup`."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    events = []
    for i in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(warmup + i)
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    ms = [s.elapsed_time(e) for s, e in events]
    return median(ms), min(ms)


def ceilings(torch, warmup, iters):
    src = torch.randn(COPY_BYTES // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    copy_ms, _ = time_ms(torch, lambda i: dst.copy_(src), warmup, iters)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=torch.bfloat16, device="cuda") / GEMM_SIZE**0.5
    gemm_ms, _ = time_ms(torch, lambda i: torch.matmul(a, b), warmup, iters)
    return {
        "copy_gbps": 2 * COPY_BYTES / (copy_ms * 1e-3) / 1e9,
        "gemm_bf16_tflops": 2 * GEMM_SIZE**3 / (gemm_ms * 1e-3) / 1e12,
    }


def bench_case(torch, F, B, T, NH, HS, causal, warmup, iters):
    C = NH * HS
    # qkv, dqkv (3C) and out, dout (C) in bf16, the LSE in f32: what one copy touches, as gptk counts it.
    per_copy = 8 * B * T * C * 2 + B * NH * T * 4
    copies = max(2, -(-ROTATION_BYTES // per_copy))
    inputs = []
    for _ in range(copies):
        qkv = torch.randn(B, T, 3, NH, HS, dtype=torch.bfloat16, device="cuda")
        q, k, v = (qkv[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3))
        dout = torch.randn(B, T, NH, HS, dtype=torch.bfloat16, device="cuda").transpose(1, 2)
        inputs.append((q, k, v, dout))

    def fwd(i):
        q, k, v, _ = inputs[i % copies]
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd(i):
        q, k, v, dout = inputs[i % copies]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.autograd.grad(out, (q, k, v), dout)

    flops = 4 * B * NH * T * T * HS / (2 if causal else 1)
    f_med, f_min = time_ms(torch, fwd, warmup, iters)
    fb_med, fb_min = time_ms(torch, fwd_bwd, warmup, iters)
    name = case_name(B, T, NH, HS, causal)
    row = lambda p, med, mn, fl: {"op": "attention", "case": name, "pass": p, "median_ms": med, "min_ms": mn,
                                  "iters": iters, "flops": fl}
    return [
        row("fwd", f_med, f_min, flops),
        row("bwd", fb_med - f_med, fb_min - f_min, BACKWARD_FACTOR * flops),
        row("fwd+bwd", fb_med, fb_min, (1 + BACKWARD_FACTOR) * flops),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", help="write the JSON report here instead of stdout")
    parser.add_argument("--list-cases", action="store_true", help="print the case names and exit")
    args = parser.parse_args()
    if args.list_cases:
        for c in cases():
            print(case_name(*c))
        return
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        sys.exit("torch_attention: PyTorch sees no CUDA GPU")
    torch.manual_seed(0)
    report = {"source": "pytorch", "device": torch.cuda.get_device_name(),
              "ceilings": ceilings(torch, args.warmup, args.iters), "results": []}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for c in cases():
            rows = bench_case(torch, F, *c, args.warmup, args.iters)
            for r in rows:
                print(f"{r['case']:<36} {r['pass']:<8} {r['median_ms']:9.4f} ms "
                      f"{r['flops'] / (r['median_ms'] * 1e-3) / 1e12:7.1f} TFLOP/s", file=sys.stderr)
            report["results"] += rows
            torch.cuda.empty_cache()
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
