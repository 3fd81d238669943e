//! Throughput of the heavy CPU reference ops at training shapes: the `tiny` preset (B=8, T=256,
//! C=256, NH=4) for every op, and the matmuls also at GPT-2 small's width (C=768).
//!
//! A plain `harness = false` bench timed with `std::time`: it compiles with nothing beyond the
//! crate and finishes in well under a minute. Each op runs once to warm up, then repeats until
//! about 0.3 s have passed (3 to 50 runs); the median is reported with the work it did as
//! GFLOP/s (matmul, attention: 2 FLOPs per multiply-add, attention counting only the causal
//! half) or GB/s (the rest: the bytes an op must read and write at least once, f32).
//!
//! Run: `cargo bench --bench cpu_ops` (all) or `cargo bench --bench cpu_ops -- matmul` (names
//! containing a word). Threads: rayon's default, one per core (`RAYON_NUM_THREADS` overrides).

use gptk::backend::AdamWStep;
use gptk::backend::cpu::*;
use gptk::rng::Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The `tiny` preset's training shape.
const B: usize = 8;
const T: usize = 256;
const C: usize = 256;
const NH: usize = 4;
/// GPT-2's vocabulary, padded as gptk pads it.
const V: usize = 50257;
const VP: usize = 50304;
/// Rows of logits the classifier holds at once in this bench (a chunk, as the schedule runs it).
const LOGIT_ROWS: usize = 256;
/// Time each op is repeated for, and the bounds on the number of runs.
const TARGET: Duration = Duration::from_millis(300);
const MIN_RUNS: usize = 3;
const MAX_RUNS: usize = 50;
const BYTES_PER_F32: f64 = 4.0;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// What one run of an op does, for the rate column.
enum Work {
    Flops(f64),
    Bytes(f64),
}

struct Bench {
    filter: Vec<String>,
    ran: usize,
}

impl Bench {
    /// Whether any of `names` passes the filter (their inputs are only built then).
    fn wants(&self, names: &[&str]) -> bool {
        self.filter.is_empty() || names.iter().any(|n| self.filter.iter().any(|w| n.contains(w.as_str())))
    }

    /// Times `f` (median of the runs, the fastest run beside it: on a shared machine the minimum
    /// moves less) and prints one line, if `name` passes the filter.
    fn run(&mut self, name: &str, shape: &str, work: Work, mut f: impl FnMut()) {
        if !self.filter.is_empty() && !self.filter.iter().any(|w| name.contains(w.as_str())) {
            return;
        }
        f(); // warm-up: page faults, rayon's pool, gemm's packing buffers
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < MIN_RUNS || (start.elapsed() < TARGET && times.len() < MAX_RUNS) {
            let t0 = Instant::now();
            f();
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let rate = match work {
            Work::Flops(x) => format!("{:8.1} GFLOP/s", x / median / 1e9),
            Work::Bytes(x) => format!("{:8.1} GB/s   ", x / median / 1e9),
        };
        println!(
            "{name:<16} {shape:<34} {:>9.3} ms  {rate}  (min {:.3} ms, {} runs)",
            median * 1e3,
            times[0] * 1e3,
            times.len()
        );
        self.ran += 1;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments filter by name.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mut bench = Bench { filter, ran: 0 };
    let mut rng = Rng::new(1);
    let n = B * T;
    let hs = C / NH;
    println!(
        "gptk CPU ops, f32, {} threads; tiny preset B={B} T={T} C={C} NH={NH}; median (and fastest) of repeated runs",
        rayon::current_num_threads()
    );

    // ---- matmul: the tiny preset's four per-layer shapes, GPT-2 small's, and the classifier ----
    if bench.wants(&["matmul_fwd", "matmul_bwd"]) {
        let shapes: &[(&str, usize, usize, usize)] = &[
            ("qkv", n, C, 3 * C),
            ("fc", n, C, 4 * C),
            ("fcproj", n, 4 * C, C),
            ("gpt2 qkv", n, 768, 3 * 768),
            ("gpt2 fc", n, 768, 4 * 768),
            ("gpt2 fcproj", n, 4 * 768, 768),
            ("classifier", LOGIT_ROWS, C, VP),
        ];
        for &(label, rows, c, oc) in shapes {
            let inp = randn(&mut rng, rows * c, 1.0);
            let w = randn(&mut rng, oc * c, 0.02);
            let bias = randn(&mut rng, oc, 0.02);
            let mut out = vec![0f32; rows * oc];
            let shape = format!("{label} N={rows} C={c} OC={oc}");
            let flops = 2.0 * (rows * c * oc) as f64;
            bench.run("matmul_fwd", &shape, Work::Flops(flops), || {
                matmul_forward(&mut out, &inp, &w, Some(&bias), rows, c, oc);
                black_box(&out);
            });
            let dout = randn(&mut rng, rows * oc, 1.0);
            let (mut dinp, mut dw, mut db) = (vec![0f32; rows * c], vec![0f32; oc * c], vec![0f32; oc]);
            bench.run("matmul_bwd", &shape, Work::Flops(2.0 * flops), || {
                matmul_backward(&mut dinp, &mut dw, Some(&mut db), &dout, &inp, &w, rows, c, oc);
                black_box((&dinp, &dw));
            });
        }
    }

    // ---- attention, causal and bidirectional ----
    if bench.wants(&["attention_fwd", "attention_bwd"]) {
        let qkv = randn(&mut rng, n * 3 * C, 1.0);
        let dout = randn(&mut rng, n * C, 1.0);
        let (mut out, mut lse, mut dqkv) = (vec![0f32; n * C], vec![0f32; B * NH * T], vec![0f32; n * 3 * C]);
        for causal in [true, false] {
            // QKᵀ and PV; the backward recomputes QKᵀ and adds dV, dP, dQ, dK: 2 and 5 matmuls.
            let pairs = if causal { T * (T + 1) / 2 } else { T * T };
            let matmul = 2.0 * (B * NH * pairs * hs) as f64;
            let shape = format!("B={B} T={T} NH={NH} HS={hs} {}", if causal { "causal" } else { "bidir" });
            bench.run("attention_fwd", &shape, Work::Flops(2.0 * matmul), || {
                attention_forward(&mut out, &mut lse, &qkv, B, T, NH, hs, causal);
                black_box(&out);
            });
            attention_forward(&mut out, &mut lse, &qkv, B, T, NH, hs, causal);
            bench.run("attention_bwd", &shape, Work::Flops(5.0 * matmul), || {
                attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, B, T, NH, hs, causal);
                black_box(&dqkv);
            });
        }
    }

    // ---- layernorm ----
    if bench.wants(&["layernorm_fwd", "layernorm_bwd"]) {
        let x = randn(&mut rng, n * C, 1.0);
        let dout = randn(&mut rng, n * C, 1.0);
        let (w, bias) = (randn(&mut rng, C, 1.0), randn(&mut rng, C, 0.1));
        let (mut y, mut mean, mut rstd) = (vec![0f32; n * C], vec![0f32; n], vec![0f32; n]);
        let shape = format!("N={n} C={C}");
        let elems = (n * C) as f64;
        bench.run("layernorm_fwd", &shape, Work::Bytes(2.0 * elems * BYTES_PER_F32), || {
            layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, &bias, n, C);
            black_box(&y);
        });
        let (mut dx, mut dw, mut db) = (vec![0f32; n * C], vec![0f32; C], vec![0f32; C]);
        // Reads dout and inp, reads and writes dinp (+=).
        bench.run("layernorm_bwd", &shape, Work::Bytes(4.0 * elems * BYTES_PER_F32), || {
            layernorm_backward(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, n, C);
            black_box(&dx);
        });
    }

    // ---- GELU over the MLP's hidden activations ----
    if bench.wants(&["gelu_fwd", "gelu_bwd"]) {
        let h = randn(&mut rng, n * 4 * C, 1.0);
        let mut g = vec![0f32; n * 4 * C];
        let shape = format!("N={n} 4C={}", 4 * C);
        let elems = (n * 4 * C) as f64;
        bench.run("gelu_fwd", &shape, Work::Bytes(2.0 * elems * BYTES_PER_F32), || {
            gelu_forward(&mut g, &h);
            black_box(&g);
        });
        bench.run("gelu_bwd", &shape, Work::Bytes(3.0 * elems * BYTES_PER_F32), || {
            gelu_backward(&mut g, &h);
            black_box(&g);
        });
    }

    // ---- fused softmax cross-entropy with dlogits, one classifier chunk ----
    if bench.wants(&["cross_entropy"]) {
        let logits0 = randn(&mut rng, LOGIT_ROWS * VP, 2.0);
        let targets: Vec<i32> = (0..LOGIT_ROWS).map(|_| rng.below(V as u64) as i32).collect();
        let mut logits = logits0.clone();
        let mut losses = vec![0f32; LOGIT_ROWS];
        let shape = format!("rows={LOGIT_ROWS} V={V} Vp={VP}");
        // The op overwrites its input, so each run works on a fresh copy; the copy is timed too and
        // counted (read + write).
        bench.run("cross_entropy", &shape, Work::Bytes(4.0 * (LOGIT_ROWS * VP) as f64 * BYTES_PER_F32), || {
            logits.copy_from_slice(&logits0);
            cross_entropy(&mut losses, &mut logits, &targets, LOGIT_ROWS, V, VP, Some(1.0 / LOGIT_ROWS as f32));
            black_box(&losses);
        });
    }

    // ---- AdamW and the gradient norm over the tiny preset's parameters (GPT-2 vocabulary) ----
    if bench.wants(&["adamw", "grad_norm"]) {
        let params_n = VP * C + T * C + 4 * (12 * C * C + 13 * C) + 2 * C;
        let mut p = randn(&mut rng, params_n, 0.02);
        let grads = randn(&mut rng, params_n, 0.01);
        let (mut m, mut v) = (vec![0f32; params_n], vec![0f32; params_n]);
        let shape = format!("{:.1}M parameters", params_n as f64 / 1e6);
        let step = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: 1,
            grad_scale: 1.0,
            seed: 0,
        };
        // Reads p, g, m, v; writes p, m, v.
        bench.run("adamw", &shape, Work::Bytes(7.0 * params_n as f64 * BYTES_PER_F32), || {
            adamw(&mut p, &grads, &mut m, &mut v, &step, params_n / 2);
            black_box(&p);
        });
        bench.run("grad_norm", &shape, Work::Bytes(params_n as f64 * BYTES_PER_F32), || {
            black_box(norm_squared(&grads));
        });
    }

    if bench.ran == 0 {
        eprintln!("no benchmark name contains any of {:?}", bench.filter);
        std::process::exit(1);
    }
}
