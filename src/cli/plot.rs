//! `gptk plot`: a PNG of one run's metrics, or several runs compared.

use crate::plot::{plot, read_metrics};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A run's metrics.jsonl, or its run directory.
    #[arg(long)]
    metrics: PathBuf,
    /// More runs to draw on the same chart.
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "loss.png")]
    out: PathBuf,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    let runs =
        std::iter::once(&args.metrics).chain(&args.compare).map(|p| read_metrics(p)).collect::<Result<Vec<_>, _>>()?;
    plot(&runs, &args.out)?;
    println!("{}: {} run(s)", args.out.display(), runs.len());
    Ok(())
}
