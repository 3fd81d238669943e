//! `gptk check`: every CUDA kernel and one training step against the CPU reference, as a table;
//! exits non-zero on any failure or without a usable GPU.

use crate::backend::Precision;
use crate::backend::cuda;
use crate::check::{self, CheckOptions, Comparison};
use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Only the op family of this name, or those whose name contains it (e.g. `attention`).
    #[arg(long)]
    op: Option<String>,
    /// Storage precision of the GPU backend: bf16 (training) or f32 (tight).
    #[arg(long, value_enum, default_value = "bf16")]
    precision: Precision,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

fn print_row(r: &Comparison) {
    println!(
        "{:<19} {:<40} {:<34} {:>9} {:>10.3e} {:>10.3e} {:>9.1}%  {}",
        r.op,
        r.case,
        r.tensor,
        r.elems,
        r.max_abs,
        r.rel_l2,
        100.0 * r.tol_share,
        if r.passed { "ok" } else { "FAIL" }
    );
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let precision = args.precision;
    check::select(args.op.as_deref())?;
    let info = match cuda::probe_device(args.device) {
        Ok(info) => info,
        Err(e) => bail!("gptk check needs a CUDA GPU: {e}"),
    };
    println!("checking {info} with {precision} storage against the CPU reference (f32)");
    println!("tolerance per element: k·eps·(|cpu| + rms(cpu)), eps of the tensor's type; 'tol used' must stay ≤ 100%");
    println!(
        "{:<19} {:<40} {:<34} {:>9} {:>10} {:>10} {:>10}  result",
        "op", "case", "tensor", "elems", "max abs", "rel L2", "tol used"
    );
    let opts = CheckOptions { op: args.op.clone(), precision, device: args.device, seed: args.seed };
    let rows = check::run(&opts, print_row)?;
    let failed = rows.iter().filter(|r| !r.passed).count();
    println!("{} passed, {failed} failed", rows.len() - failed);
    if failed > 0 {
        bail!("{failed} of {} comparisons failed", rows.len());
    }
    Ok(())
}
