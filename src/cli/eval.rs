//! `gptk eval`: mean next-token loss of a checkpoint over an llm.c shard.

use super::{Device, resolve_device};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DeviceKind, Precision};
use crate::checkpoint;
use crate::data::shard::{SequentialBatches, Shard};
use crate::model::Gpt;
use crate::model::layout::ActLayout;
use crate::train::checkpoint::resolve_model;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory (model.safetensors + config.json), .safetensors file, or run directory
    /// (its newest checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// llm.c token shard (.bin).
    #[arg(long)]
    data: PathBuf,
    /// Sequences per batch (B).
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per sequence (T).
    #[arg(long, default_value_t = 1024)]
    seq_len: usize,
    /// Stop after this many batches (default: the whole shard).
    #[arg(long)]
    max_batches: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    device: DeviceKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 || args.seq_len == 0 || args.max_batches == Some(0) {
        bail!("--batch-size, --seq-len and --max-batches must be at least 1");
    }
    let Some(bt) = args.batch_size.checked_mul(args.seq_len) else {
        bail!("--batch-size {} × --seq-len {} is too large", args.batch_size, args.seq_len);
    };
    let loaded = checkpoint::load(&resolve_model(&args.model))?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    let cfg = loaded.cfg.clone();
    if args.seq_len > cfg.n_ctx {
        bail!(
            "{}: --seq-len {} is longer than the model's context of {} positions",
            args.model.display(),
            args.seq_len,
            cfg.n_ctx
        );
    }
    let shard = Shard::open(&args.data)?;
    let mut batches = SequentialBatches::new(&shard, args.batch_size, args.seq_len)?;
    let total = args.max_batches.unwrap_or(usize::MAX).min(batches.count());
    // Every token read is a target somewhere, so all must be real tokens of the model; checked
    // up front to name the place in the shard.
    if let Some(pos) = (0..total * bt + 1).find(|&i| shard.token(i) as usize >= cfg.vocab_size) {
        bail!(
            "{}: token {} at position {pos} is outside the vocabulary of {} tokens of {}",
            args.data.display(),
            shard.token(pos),
            cfg.vocab_size,
            args.model.display()
        );
    }
    /// Mean loss of the first `total` batches.
    fn mean_loss<K: Backend>(
        model: &mut Gpt<K>,
        params: &[f32],
        batches: &mut SequentialBatches,
        total: usize,
        data: &Path,
    ) -> Result<(f64, usize)> {
        model.load_params(params)?;
        let bt = model.acts.b * model.acts.t;
        let (mut inputs, mut targets) = (vec![0i32; bt], vec![0i32; bt]);
        let (mut sum, mut n) = (0f64, 0usize);
        let bar = super::progress_bar(total as u64, "evaluating", "batches");
        while n < total && batches.next_into(&mut inputs, &mut targets) {
            model.set_batch(&inputs, &targets).with_context(|| format!("{}: batch {n}", data.display()))?;
            sum += model.forward(true)? as f64;
            n += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok((sum / n as f64, n))
    }
    let acts = ActLayout::new(&cfg, args.batch_size, args.seq_len, None);
    let (loss, n) = match resolve_device(args.device)? {
        Device::Cpu => {
            let mut model = Gpt::new(cfg, acts, |p, a| Ok(CpuBackend::<f32>::new(p.total, a)))?;
            mean_loss(&mut model, &loaded.params, &mut batches, total, &args.data)?
        }
        Device::Cuda(info) => {
            let mut model = Gpt::new(cfg, acts, |p, a| CudaBackend::new(p, a, Precision::Bf16, info.ordinal))?;
            mean_loss(&mut model, &loaded.params, &mut batches, total, &args.data)?
        }
    };
    if args.json {
        println!("{}", serde_json::json!({"loss": loss, "tokens": n * bt, "batches": n, "perplexity": loss.exp()}));
    } else {
        println!("loss {loss:.6} (perplexity {:.3}) over {n} batches, {} tokens", loss.exp(), n * bt);
    }
    Ok(())
}
