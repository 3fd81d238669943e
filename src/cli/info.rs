//! `gptk info`: a model's shape, parameters by group, FLOPs per token, memory plan, and the
//! throughput a GPU would give at a given MFU.

use super::human_bytes;
use crate::backend::Precision;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::MemoryPlan;
use crate::checkpoint;
use crate::model::config::{GPT2_VOCAB_SIZE, ModelConfig};
use crate::model::layout::{ActLayout, ParamLayout, Recompute};
use crate::model::plan::parameter_groups;
use crate::train::checkpoint::resolve_model;
use anyhow::{Result, bail};
use std::path::Path;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A preset (d12, d24, d36, d48, d6, tiny, micro) or a checkpoint path.
    #[arg(long, default_value = "d12")]
    model: String,
    /// Real vocabulary size for a preset (50257 for GPT-2 BPE, 257 for bytes).
    #[arg(long, default_value_t = GPT2_VOCAB_SIZE)]
    vocab_size: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Model FLOPs utilisation assumed for the throughput estimate.
    #[arg(long, default_value_t = 0.5)]
    mfu: f64,
    /// Dense bf16 peak of the GPU in TFLOP/s (989 = H100/H200 SXM).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Plan with activation recomputation at this level (as `gptk train --recompute`) and show
    /// the bytes it saves.
    #[arg(long, default_value_t = Recompute::Off)]
    recompute: Recompute,
}

fn model_config(spec: &str, vocab_size: usize) -> Result<ModelConfig> {
    if Path::new(spec).exists() {
        return Ok(checkpoint::load(&resolve_model(Path::new(spec)))?.cfg);
    }
    Ok(ModelConfig::preset(spec, vocab_size)?)
}

pub fn run(args: &InfoArgs) -> Result<()> {
    if args.batch_size == 0 || args.seq_len == 0 {
        bail!("--batch-size and --seq-len must be at least 1");
    }
    let cfg = model_config(&args.model, args.vocab_size)?;
    if args.seq_len > cfg.n_ctx {
        bail!("--seq-len {} is longer than the model's context of {} positions", args.seq_len, cfg.n_ctx);
    }
    println!("model      {cfg}  head size {}", cfg.head_size());
    println!("parameters {:.2}M", cfg.num_parameters() as f64 / 1e6);
    for (group, n) in parameter_groups(&cfg) {
        println!("  {group:<20} {n:>14}");
    }
    let flops = cfg.flops_per_token(args.seq_len);
    println!(
        "training FLOPs per token at T={}: {:.3} GFLOP (forward + backward, attention included)",
        args.seq_len,
        flops / 1e9
    );
    let (b, t, recompute) = (args.batch_size, args.seq_len, args.recompute);
    let params = ParamLayout::new(&cfg);
    let acts = ActLayout::with_recompute(&cfg, b, t, None, recompute);
    let kept_all = ActLayout::new(&cfg, b, t, None);
    let plan_name = if recompute == Recompute::Off { String::new() } else { format!(", recompute {recompute}") };
    let cpu_bytes = |a: &ActLayout| CpuBackend::<f32>::bytes_for(params.total, a);
    println!("memory on the CPU (f32), B={b} T={t}{plan_name}: {}", human_bytes(cpu_bytes(&acts)));
    for precision in [Precision::Bf16, Precision::F32] {
        let plan = MemoryPlan::for_model(&params, &acts, precision);
        println!("memory on a GPU ({precision} storage), B={b} T={t}{plan_name}: {}", human_bytes(plan.total()));
        println!("{plan}");
    }
    if recompute != Recompute::Off {
        let gpu_saved = |p: Precision| {
            human_bytes(
                MemoryPlan::for_model(&params, &kept_all, p).total() - MemoryPlan::for_model(&params, &acts, p).total(),
            )
        };
        println!(
            "recompute {recompute} saves {} on a GPU in bf16, {} in f32, {} on the CPU, against keeping every activation",
            gpu_saved(Precision::Bf16),
            gpu_saved(Precision::F32),
            human_bytes(cpu_bytes(&kept_all) - cpu_bytes(&acts))
        );
        let what = if recompute.layernorm() { "a GELU and two layernorm forwards" } else { "a GELU forward" };
        println!("  at the price of {what} per layer run again in the backward (elementwise work, no matmul)");
    }
    let tokens_per_s = args.mfu * args.peak_tflops * 1e12 / flops;
    println!(
        "expected throughput at {:.0}% MFU of {:.0} TFLOP/s: {:.0} tokens/s ({:.1} ms per step of {} tokens)",
        args.mfu * 100.0,
        args.peak_tflops,
        tokens_per_s,
        (args.batch_size * args.seq_len) as f64 / tokens_per_s * 1e3,
        args.batch_size * args.seq_len
    );
    Ok(())
}
