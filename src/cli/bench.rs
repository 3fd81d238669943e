//! `gptk bench`: kernels timed on the GPU at GPT-2 shapes with the two ceilings of the device,
//! as a table or JSON, optionally beside PyTorch's numbers (scripts/torch_attention.py); without
//! a usable GPU one line and a failing exit code.

use crate::backend::cuda;
use crate::bench::{self, BenchOptions, Ceilings, Measurement, Report};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Only the op families whose name contains this (e.g. `attention`).
    #[arg(long)]
    op: Option<String>,
    /// Print the results as JSON (the format scripts/torch_attention.py writes) instead of a table.
    #[arg(long)]
    json: bool,
    /// PyTorch's numbers for the same cases (the JSON of scripts/torch_attention.py): adds its
    /// times and gptk's speed relative to them (PyTorch time / gptk time; above 1 is faster).
    #[arg(long, value_name = "FILE.json")]
    compare: Option<PathBuf>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Untimed runs of each pass before the timed ones.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Timed runs of each pass (the median is reported).
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

/// gptk's time against PyTorch's for one pass: PyTorch time / gptk time.
fn speed(gptk: &Measurement, torch: &Measurement) -> f64 {
    torch.median_ms / gptk.median_ms
}

fn print_header(compare: bool) {
    print!(
        "{:<10} {:<36} {:<8} {:>10} {:>10} {:>13} {:>8}",
        "op", "case", "pass", "median ms", "min ms", "rate", "of ceil"
    );
    if compare {
        print!(" {:>10} {:>9}", "torch ms", "speed");
    }
    println!();
}

fn print_row(m: &Measurement, ceilings: &Ceilings, torch: Option<&Report>) {
    let rate = m.rate().map_or("-".to_string(), |(r, unit)| format!("{r:.1} {}", unit.trim_end_matches("/s")));
    let share = m.of_ceiling(ceilings).map_or("-".to_string(), |s| format!("{:.1}%", 100.0 * s));
    print!(
        "{:<10} {:<36} {:<8} {:>10.4} {:>10.4} {:>13} {:>8}",
        m.op, m.case, m.pass, m.median_ms, m.min_ms, rate, share
    );
    if let Some(t) = torch {
        match t.find(m) {
            Some(r) => print!(" {:>10.4} {:>8.2}×", r.median_ms, speed(m, r)),
            None => print!(" {:>10} {:>9}", "-", "-"),
        }
    }
    println!();
}

pub fn run(args: &BenchArgs) -> Result<()> {
    bench::select(args.op.as_deref())?;
    let torch: Option<Report> = match &args.compare {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{}: not a benchmark report", path.display()))?)
        }
        None => None,
    };
    let info = match cuda::probe_device(args.device) {
        Ok(info) => info,
        Err(e) => bail!("gptk bench needs a CUDA GPU: {e}"),
    };
    let opts = BenchOptions {
        op: args.op.clone(),
        device: args.device,
        warmup: args.warmup,
        iters: args.iters.max(1),
        seed: args.seed,
    };
    let ceilings = bench::measure_ceilings(&opts)?;
    if !args.json {
        println!(
            "benchmarking {info}: bf16 storage, median of {} timed runs after {} warm-up",
            opts.iters, opts.warmup
        );
        println!(
            "ceilings: device copy {:.0} GB/s (read + write), bf16 GEMM {GEMM}³ {:.1} TFLOP/s",
            ceilings.copy_gbps,
            ceilings.gemm_bf16_tflops,
            GEMM = 8192
        );
        if let Some(t) = &torch {
            println!(
                "PyTorch ({}, {}): device copy {:.0} GB/s, bf16 GEMM {:.1} TFLOP/s",
                t.source, t.device, t.ceilings.copy_gbps, t.ceilings.gemm_bf16_tflops
            );
        }
        print_header(torch.is_some());
    }
    let results = bench::run(&opts, |m| {
        if !args.json {
            print_row(m, &ceilings, torch.as_ref());
        }
    })?;
    if args.json {
        let report = Report { source: "gptk".into(), device: info.name.clone(), ceilings, results };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(t) = &torch {
        // Geometric mean of the speed per pass over the cases both have.
        for pass in ["fwd", "bwd", "fwd+bwd"] {
            let speeds: Vec<f64> =
                results.iter().filter(|m| m.pass == pass).filter_map(|m| t.find(m).map(|r| speed(m, r))).collect();
            if !speeds.is_empty() {
                let geo = (speeds.iter().map(|s| s.ln()).sum::<f64>() / speeds.len() as f64).exp();
                println!("{pass:<8} speed against PyTorch, geometric mean over {} cases: {geo:.2}×", speeds.len());
            }
        }
    }
    Ok(())
}
