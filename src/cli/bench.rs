//! `gptk bench`: every kernel family at GPT-2 shapes with the two ceilings of the device, and a
//! whole d12 training step, as a table or JSON, optionally beside PyTorch's numbers for the same
//! cases (the JSON of scripts/torch_reference.py). Without a usable GPU: one line and a failing
//! exit code. A saved report (`--out`) can be printed again, and compared, with no GPU
//! (`--results`).

use crate::backend::{BackendError, cuda};
use crate::bench::{self, BenchOptions, Ceilings, Measurement, Report, StepResult, StepVariant};
use crate::model::layout::Recompute;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Only the op families whose name contains this (e.g. `attention`, `matmul`, `step`).
    #[arg(long)]
    op: Option<String>,
    /// Print the results as JSON (the format scripts/torch_reference.py writes) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the results as JSON to this file (rewritten as the run goes, so that a run
    /// stopped part-way leaves what it measured).
    #[arg(long, value_name = "FILE.json")]
    out: Option<PathBuf>,
    /// PyTorch's numbers for the same cases (the JSON of scripts/torch_reference.py): adds its
    /// times and gptk's speed relative to them (PyTorch time / gptk time; above 1 is faster).
    #[arg(long, value_name = "FILE.json")]
    compare: Option<PathBuf>,
    /// Print a saved gptk report (from --out or --json) instead of running; with --compare, side
    /// by side with PyTorch's. Needs no GPU.
    #[arg(long, value_name = "FILE.json")]
    results: Option<PathBuf>,
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
    /// Sequences per batch of the d12 training step (T = 1024).
    #[arg(long, default_value_t = bench::gpt2::B)]
    step_batch: usize,
    /// Timed d12 training steps (after 3 untimed), and as many again split into phases.
    #[arg(long, default_value_t = 20)]
    step_iters: usize,
    /// Activation recomputation in the d12 training step, as `gptk train --recompute`.
    #[arg(long, default_value_t = Recompute::Off)]
    step_recompute: Recompute,
    /// Time the d12 step again for each of these, after the step as the trainer runs it: each
    /// one optimisation's before and after, in the same run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    step_variants: Vec<StepVariant>,
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a benchmark report", path.display()))
}

fn write_report(path: &Path, report: &Report) -> Result<()> {
    let text = serde_json::to_string_pretty(report)? + "\n";
    crate::checkpoint::atomic::write_bytes(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn print_header(compare: bool) {
    print!(
        "{:<13} {:<38} {:<7} {:>10} {:>10} {:>14} {:>8}",
        "op", "case", "pass", "median ms", "min ms", "rate", "of ceil"
    );
    if compare {
        print!(" {:>10} {:>9}", "torch ms", "speedup");
    }
    println!();
}

fn print_row(m: &Measurement, ceilings: &Ceilings, torch: Option<&Report>) {
    let rate = m.rate().map_or("-".to_string(), |(r, unit)| format!("{r:.1} {unit}"));
    let share = m.of_ceiling(ceilings).map_or("-".to_string(), |s| format!("{:.1}%", 100.0 * s));
    print!(
        "{:<13} {:<38} {:<7} {:>10.4} {:>10.4} {:>14} {:>8}",
        m.op, m.case, m.pass, m.median_ms, m.min_ms, rate, share
    );
    if let Some(t) = torch {
        match t.find(m) {
            Some(r) => match bench::speedup(m, r) {
                Some(s) => print!(" {:>10.4} {:>8.2}×", r.median_ms, s),
                None => print!(" {:>10.4} {:>9}", r.median_ms, "-"),
            },
            None => print!(" {:>10} {:>9}", "-", "-"),
        }
    }
    println!();
}

fn gib(bytes: f64) -> f64 {
    bytes / (1u64 << 30) as f64
}

fn print_step(s: &StepResult, ceilings: &Ceilings, torch: Option<&Report>) {
    println!(
        "step: {} {} (bf16, median of {} steps after {} untimed, each as the trainer takes it)",
        s.name(),
        s.variant,
        s.iters,
        bench::STEP_WARMUP
    );
    let mfu = match (s.mfu, s.peak_flops) {
        (Some(m), Some(p)) => format!("MFU {:.1}% of {:.0} TFLOP/s dense bf16", 100.0 * m, p / 1e12),
        _ => "MFU unknown (no dense bf16 peak known for this device)".into(),
    };
    let gemm =
        s.of_gemm_ceiling(ceilings).map_or(String::new(), |g| format!(", {:.1}% of the measured GEMM", 100.0 * g));
    println!(
        "  {:.2} ms (min {:.2}), {:.0} tokens/s, {:.1} TFLOP/s; {mfu}{gemm}",
        s.median_ms,
        s.min_ms,
        s.tokens_per_s,
        s.tokens_per_s * s.flops_per_token / 1e12
    );
    if let (Some(dev), Some(alloc)) = (s.device_bytes, s.allocated_bytes) {
        println!(
            "  device memory: {:.2} GiB taken from the device, {:.2} GiB in the memory plan",
            gib(dev),
            gib(alloc)
        );
    }
    if let (Some(a), Some(b)) = (s.loss_first, s.loss_last) {
        println!("  loss {a:.4} at the first step, {b:.4} at the last");
    }
    if !s.phases.is_empty() {
        let parts: Vec<String> = s.phases.iter().map(|p| format!("{} {:.2}", p.name, p.median_ms)).collect();
        println!("  phases (median ms): {}", parts.join(" · "));
    }
    for t in torch.map(|t| t.steps_like(s)).unwrap_or_default() {
        let mfu = t.mfu.map_or(String::new(), |m| format!(", MFU {:.1}%", 100.0 * m));
        println!(
            "  PyTorch {}: {:.2} ms, {:.0} tokens/s{mfu}; gptk {:.2}×",
            t.variant,
            t.median_ms,
            t.tokens_per_s,
            s.tokens_per_s / t.tokens_per_s
        );
    }
}

fn print_comparison(gptk: &Report, torch: &Report) {
    let c = bench::compare(gptk, torch);
    println!("speedup against PyTorch (PyTorch time / gptk time), geometric mean per family:");
    for (op, n, g) in &c.families {
        println!("  {op:<13} {g:>6.2}× over {n} case(s)");
    }
    if let Some((n, g)) = c.overall {
        println!("  {:<13} {g:>6.2}× over {n} case(s)", "all kernels");
    }
    for s in &c.steps {
        for (variant, tps, ratio) in &s.torch {
            println!(
                "  step {}: {} {:.0} tokens/s, PyTorch {variant} {tps:.0} tokens/s: {ratio:.2}×",
                s.name, s.variant, s.tokens_per_s
            );
        }
        if s.torch.is_empty() {
            println!("  step {}: PyTorch's report has no such step", s.name);
        }
    }
    if !c.only_gptk.is_empty() {
        println!("  not in PyTorch's report: {}", c.only_gptk.join("; "));
    }
    if !c.only_torch.is_empty() {
        println!("  only in PyTorch's report: {}", c.only_torch.join("; "));
    }
    for note in &torch.notes {
        println!("  PyTorch note: {note}");
    }
}

fn print_ceilings(ours: &Ceilings, torch: Option<&Report>) {
    println!(
        "ceilings: device copy {:.0} GB/s (read + write), bf16 GEMM {}³ {:.1} TFLOP/s",
        ours.copy_gbps,
        bench::GEMM_SIZE,
        ours.gemm_bf16_tflops
    );
    if let Some(t) = torch {
        let software = t.software.as_deref().unwrap_or(&t.source);
        println!(
            "PyTorch ({software}, {}): device copy {:.0} GB/s, bf16 GEMM {:.1} TFLOP/s",
            t.device, t.ceilings.copy_gbps, t.ceilings.gemm_bf16_tflops
        );
    }
}

/// Prints a saved report, keeping what `--op` selects.
fn show_saved(path: &Path, op: Option<&str>, torch: Option<&Report>) -> Result<()> {
    let mut report = read_report(path)?;
    if let Some(want) = op {
        report.results.retain(|m| m.op.contains(want));
        report.steps.retain(|_| bench::STEP_FAMILY.contains(want));
    }
    let software = report.software.as_deref().unwrap_or(&report.source);
    println!("{} ({software}, {}), from {}", report.source, report.device, path.display());
    print_ceilings(&report.ceilings, torch);
    print_header(torch.is_some());
    for m in &report.results {
        print_row(m, &report.ceilings, torch);
    }
    for s in &report.steps {
        print_step(s, &report.ceilings, torch);
    }
    if let Some(t) = torch {
        print_comparison(&report, t);
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let selection = bench::select(args.op.as_deref())?;
    let torch = args.compare.as_deref().map(read_report).transpose()?;
    if let Some(path) = &args.results {
        return show_saved(path, args.op.as_deref(), torch.as_ref());
    }
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
        step_batch: args.step_batch.max(1),
        step_iters: args.step_iters.max(1),
        step_recompute: args.step_recompute,
        step_variant: None,
    };
    let table = !args.json;
    let ceilings = bench::measure_ceilings(&opts)?;
    if table {
        println!(
            "benchmarking {info}: median of {} timed runs after {} warm-up, inputs rotated over {} MiB",
            opts.iters,
            opts.warmup,
            bench::ROTATION_BYTES >> 20
        );
        print_ceilings(&ceilings, torch.as_ref());
        if !selection.cases.is_empty() {
            print_header(torch.is_some());
        }
    }
    let mut report = Report {
        source: "gptk".into(),
        device: info.name.clone(),
        software: Some(format!("gptk {}", env!("CARGO_PKG_VERSION"))),
        ceilings,
        results: Vec::new(),
        steps: Vec::new(),
        notes: Vec::new(),
    };
    // The report on disk grows with every measurement, so that a run stopped part-way (a time
    // limit) leaves what it measured; writing it once first reports a bad path before the run.
    if let Some(path) = &args.out {
        write_report(path, &report)?;
    }
    let mut write_error = None;
    bench::run(&opts, selection.cases, |m| {
        if table {
            print_row(m, &ceilings, torch.as_ref());
        }
        report.results.push(m.clone());
        if let (Some(path), None) = (&args.out, &write_error) {
            write_error = write_report(path, &report).err();
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    // The default step, then the variants asked for.
    let variants = std::iter::once(None).chain(args.step_variants.iter().copied().map(Some));
    for step_variant in variants.filter(|_| selection.step) {
        let step = match bench::run_step(&BenchOptions { step_variant, ..opts.clone() }) {
            // A variant this device cannot run (the wgmma kernels off Hopper) is left out.
            Err(bench::BenchError::Backend(BackendError::Unavailable(why))) if step_variant.is_some() => {
                eprintln!("note: the step variant {step_variant:?} skipped: {why}");
                continue;
            }
            other => other?,
        };
        if table {
            print_step(&step, &ceilings, torch.as_ref());
        }
        report.steps.push(step);
        if let Some(path) = &args.out {
            write_report(path, &report)?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(t) = &torch {
        print_comparison(&report, t);
    }
    Ok(())
}
