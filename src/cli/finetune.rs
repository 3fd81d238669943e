//! `gptk finetune` and `gptk predict`: classification with a pretrained transformer.

use super::Device;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, BackendError, DeviceKind, Precision};
use crate::checkpoint::{self, META_LABELS};
use crate::data::task::{Encoded, LabelSet, Labels, encode, read_examples};
use crate::data::tokenizer::Tokenizer;
use crate::model::layout::{ActLayout, ParamLayout, Recompute};
use crate::model::{Gpt, init_params};
use crate::train::checkpoint::{META_TOKENIZER, resolve_model};
use crate::train::finetune::{FinetuneEvent, FinetuneOpts, Prediction, TaskSet, evaluate, finetune};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Safetensors metadata key: how a fine-tuned classifier attends ("causal" or "bidirectional").
const META_ATTENTION: &str = "gptk_attention";
/// Longest input used when --seq-len is not given (and the model allows it).
const DEFAULT_TASK_SEQ_LEN: usize = 256;

#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The pretrained model: checkpoint directory, .safetensors file, or run directory.
    #[arg(long)]
    model: PathBuf,
    /// Training examples (JSONL: text, optional text_b, label).
    #[arg(long)]
    train: PathBuf,
    /// Validation examples, same format; every label must occur in --train.
    #[arg(long)]
    val: PathBuf,
    /// Where the fine-tuned model goes [default: runs/finetune-<train file name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Weight λ of the auxiliary language-model loss (0 disables it).
    #[arg(long, default_value_t = 0.5)]
    lm_weight: f32,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.02)]
    warmup_frac: f32,
    /// Decoupled weight decay on 2-D weights.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Examples per batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per example; longer texts are cut from the right [default: min(context, 256)].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Attend both ways (for a model pretrained with --objective mlm); needs --lm-weight 0.
    #[arg(long)]
    bidirectional: bool,
    /// Activation recomputation, as in `gptk train --recompute`: 0 keeps every activation, 1
    /// recomputes the GELU outputs in the backward, 2 the layernorm outputs too. Same results.
    #[arg(long, default_value_t = Recompute::Off)]
    recompute: Recompute,
    /// Re-initialise the transformer (same shape, no pretraining): the baseline.
    #[arg(long)]
    random_init: bool,
    /// Tokenizer, when the checkpoint does not record one.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Seed of the head's initialisation and the example order.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    device: DeviceKind,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    /// A fine-tuned model (with a classification head).
    #[arg(long)]
    model: PathBuf,
    /// Examples (JSONL: text, optional text_b; a label, if present, is scored).
    #[arg(long)]
    input: PathBuf,
    /// Write predictions here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per example [default: min(context, 256)].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    device: DeviceKind,
}

/// The tokenizer recorded in a checkpoint, or the one named, or GPT-2's.
fn tokenizer_of(meta: &HashMap<String, String>, named: Option<&str>) -> Result<Tokenizer> {
    let name = named.or(meta.get(META_TOKENIZER).map(String::as_str)).unwrap_or("gpt2");
    Ok(Tokenizer::from_name(name)?)
}

fn seq_len(asked: Option<usize>, n_ctx: usize, pairs: bool) -> Result<usize> {
    let t = asked.unwrap_or(DEFAULT_TASK_SEQ_LEN.min(n_ctx));
    let least = if pairs { 5 } else { 3 };
    if t > n_ctx {
        bail!("--seq-len {t} is longer than the model's context of {n_ctx} positions");
    }
    if t < least {
        bail!("--seq-len {t} leaves no room for text (at least {least})");
    }
    Ok(t)
}

/// Encodes a split, reporting how many examples were cut to fit.
fn encode_all(tok: &Tokenizer, examples: &[crate::data::task::Example], t: usize, path: &Path) -> Vec<Encoded> {
    let encoded: Vec<Encoded> = examples.iter().map(|e| encode(tok, e, t)).collect();
    let cut = encoded.iter().filter(|e| e.cut > 0).count();
    if cut > 0 {
        let tokens: usize = encoded.iter().map(|e| e.cut).sum();
        eprintln!(
            "note: {}: {cut} of {} examples are longer than {t} tokens and were cut from the right ({tokens} tokens dropped)",
            path.display(),
            encoded.len()
        );
    }
    encoded
}

pub fn run(args: &FinetuneArgs) -> Result<()> {
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    if !(args.lm_weight >= 0.0 && args.lm_weight.is_finite()) {
        bail!("--lm-weight must be 0 or positive, got {}", args.lm_weight);
    }
    if args.bidirectional && args.lm_weight > 0.0 {
        bail!(
            "--bidirectional needs --lm-weight 0: a model that sees the whole input cannot be scored on predicting it"
        );
    }
    let path = resolve_model(&args.model);
    let loaded = checkpoint::load(&path)?;
    let tok = tokenizer_of(&loaded.metadata, args.tokenizer.as_deref())?;
    if tok.vocab_size() != loaded.cfg.vocab_size {
        bail!(
            "{}: the model has {} tokens but the {} tokenizer has {}",
            path.display(),
            loaded.cfg.vocab_size,
            tok.name(),
            tok.vocab_size()
        );
    }
    let train = read_examples(&args.train, Labels::Required)?;
    let val = read_examples(&args.val, Labels::Required)?;
    let labels = LabelSet::from_examples(&train);
    if labels.names.len() < 2 {
        bail!("{}: a classifier needs at least 2 labels, found {}", args.train.display(), labels.names.len());
    }
    let (train_classes, val_classes) = (labels.indices(&train, &args.train)?, labels.indices(&val, &args.val)?);
    let pairs = train.iter().chain(&val).any(|e| e.text_b.is_some());
    let t = seq_len(args.seq_len, loaded.cfg.n_ctx, pairs)?;
    let train_set = TaskSet { examples: encode_all(&tok, &train, t, &args.train), classes: train_classes };
    let val_set = TaskSet { examples: encode_all(&tok, &val, t, &args.val), classes: val_classes };

    // Majority-class baseline: the most frequent training label, scored on val.
    let mut counts = vec![0usize; labels.names.len()];
    for c in train_set.classes.iter().flatten() {
        counts[*c] += 1;
    }
    let majority = (0..counts.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).unwrap_or(0);
    let baseline =
        val_set.classes.iter().filter(|c| **c == Some(majority)).count() as f64 / val_set.classes.len() as f64;

    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args.train.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into());
        PathBuf::from("runs").join(format!("finetune-{stem}"))
    });
    let cfg = loaded.cfg.clone();
    let n_classes = labels.names.len();
    let layout = ParamLayout::with_head(&cfg, n_classes);
    // Fresh head (and, for the baseline, a fresh transformer); pretrained tensors copied by name.
    let mut params = init_params(&cfg, &layout, args.seed);
    if !args.random_init {
        let source = ParamLayout::with_head(&cfg, loaded.n_classes);
        for spec in source.specs.iter().filter(|s| !s.name.starts_with("gptk.")) {
            let dst = layout.spec(&spec.name).expect("same transformer layout").tensor;
            params[dst.offset..dst.end()].copy_from_slice(&loaded.params[spec.tensor.offset..spec.tensor.end()]);
        }
    }
    let opts = FinetuneOpts {
        epochs: args.epochs,
        lr: args.lr,
        warmup_frac: args.warmup_frac,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        lm_weight: args.lm_weight,
        causal: !args.bidirectional,
        seed: args.seed,
    };
    if !args.json {
        println!(
            "fine-tuning {} ({cfg}{}) on {} examples, {n_classes} labels, T={t}, λ={}; validation {} examples, majority-class baseline {:.1}%",
            path.display(),
            if args.random_init { ", re-initialised" } else { "" },
            train_set.examples.len(),
            args.lm_weight,
            val_set.examples.len(),
            baseline * 100.0
        );
    }
    let job = Job { args, cfg, n_classes, t, params, tok, train: train_set, val: val_set, opts, out, labels, baseline };
    match super::resolve_device(args.device)? {
        Device::Cpu => job.run(|p, a| Ok(CpuBackend::<f32>::new(p.total, a))),
        Device::Cuda(info) => job.run(|p, a| CudaBackend::new(p, a, Precision::Bf16, info.ordinal)),
    }
}

struct Job<'a> {
    args: &'a FinetuneArgs,
    cfg: crate::model::config::ModelConfig,
    n_classes: usize,
    t: usize,
    params: Vec<f32>,
    tok: Tokenizer,
    train: TaskSet,
    val: TaskSet,
    opts: FinetuneOpts,
    out: PathBuf,
    labels: LabelSet,
    baseline: f64,
}

impl Job<'_> {
    fn run<K: Backend>(self, build: impl FnOnce(&ParamLayout, &ActLayout) -> Result<K, BackendError>) -> Result<()> {
        let (b, recompute) = (self.args.batch_size, self.args.recompute);
        let acts = ActLayout::for_classification(&self.cfg, b, self.t, self.n_classes, recompute);
        let mut model = Gpt::new(self.cfg.clone(), acts, build)?;
        model.load_params(&self.params)?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("{}: cannot create the output directory", self.out.display()))?;
        let metrics_path = self.out.join(crate::train::run::METRICS_FILE);
        let mut metrics = std::fs::File::create(&metrics_path).with_context(|| metrics_path.display().to_string())?;
        let json = self.args.json;
        let events = finetune(&mut model, &self.tok, &self.train, &self.val, &self.opts, |e| {
            let line = serde_json::to_string(e).expect("event serialises");
            let _ = writeln!(metrics, "{line}");
            match e {
                _ if json => println!("{line}"),
                FinetuneEvent::Step { epoch, step, steps, class_loss, lm_loss, lr, .. }
                    if step % 10 == 0 || step == steps =>
                {
                    let lm = lm_loss.map_or(String::new(), |l| format!(" | lm loss {l:.4}"));
                    println!("epoch {epoch} step {step:>5}/{steps} | class loss {class_loss:.4}{lm} | lr {lr:.2e}");
                }
                FinetuneEvent::Epoch { epoch, train_class_loss, val_class_loss, val_accuracy, .. } => println!(
                    "epoch {epoch}: train class loss {train_class_loss:.4} | val class loss {val_class_loss:.4} | val accuracy {:.1}%",
                    val_accuracy * 100.0
                ),
                FinetuneEvent::Step { .. } => {}
            }
        })?;
        let params = model.params_to_host()?;
        let meta = HashMap::from([
            (META_TOKENIZER.to_string(), self.tok.name().to_string()),
            (META_LABELS.to_string(), serde_json::to_string(&self.labels.names).expect("labels serialise")),
            (META_ATTENTION.to_string(), if self.opts.causal { "causal" } else { "bidirectional" }.to_string()),
        ]);
        checkpoint::save(&self.out, &self.cfg, &model.params, &params, &meta)?;
        let last = events.last().expect("at least one epoch");
        if let FinetuneEvent::Epoch { val_accuracy, .. } = last {
            let summary = serde_json::json!({
                "event": "result",
                "val_accuracy": val_accuracy,
                "majority_baseline": self.baseline,
                "labels": self.labels.names,
                "model": self.out,
            });
            writeln!(metrics, "{summary}")?;
            if json {
                println!("{summary}");
            } else {
                println!(
                    "val accuracy {:.1}% (majority class {:.1}%); model saved to {}",
                    val_accuracy * 100.0,
                    self.baseline * 100.0,
                    self.out.display()
                );
            }
        }
        Ok(())
    }
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let path = resolve_model(&args.model);
    let loaded = checkpoint::load(&path)?;
    if loaded.n_classes == 0 {
        bail!("{}: has no classification head; fine-tune it first with gptk finetune", path.display());
    }
    let names: Vec<String> = match loaded.metadata.get(META_LABELS) {
        Some(l) => serde_json::from_str(l).with_context(|| format!("{}: unreadable label list", path.display()))?,
        None => (0..loaded.n_classes).map(|i| i.to_string()).collect(),
    };
    if names.len() != loaded.n_classes {
        bail!("{}: {} label names for a head of {} classes", path.display(), names.len(), loaded.n_classes);
    }
    let labels = LabelSet { names };
    let tok = tokenizer_of(&loaded.metadata, None)?;
    let examples = read_examples(&args.input, Labels::Optional)?;
    let classes = labels.indices(&examples, &args.input)?;
    let t = seq_len(args.seq_len, loaded.cfg.n_ctx, examples.iter().any(|e| e.text_b.is_some()))?;
    let set = TaskSet { examples: encode_all(&tok, &examples, t, &args.input), classes };
    let acts = ActLayout::for_classification(&loaded.cfg, args.batch_size, t, loaded.n_classes, Recompute::Off);
    let causal = loaded.metadata.get(META_ATTENTION).is_none_or(|a| a != "bidirectional");
    fn classify<K: Backend>(
        loaded: &checkpoint::LoadedModel,
        acts: ActLayout,
        build: impl FnOnce(&ParamLayout, &ActLayout) -> Result<K, BackendError>,
        tok: &Tokenizer,
        set: &TaskSet,
        causal: bool,
    ) -> Result<(f64, f32, Vec<Prediction>)> {
        let mut model = Gpt::new(loaded.cfg.clone(), acts, build)?;
        model.load_params(&loaded.params)?;
        evaluate(&mut model, tok, set, causal)
    }
    let (accuracy, _, predictions) = match super::resolve_device(args.device)? {
        Device::Cpu => classify(&loaded, acts, |p, a| Ok(CpuBackend::<f32>::new(p.total, a)), &tok, &set, causal)?,
        Device::Cuda(info) => {
            classify(&loaded, acts, |p, a| CudaBackend::new(p, a, Precision::Bf16, info.ordinal), &tok, &set, causal)?
        }
    };
    let mut sink: Box<dyn Write> = match &args.out {
        Some(p) => {
            Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| p.display().to_string())?))
        }
        None => Box::new(std::io::stdout().lock()),
    };
    for (class, probs) in &predictions {
        let probs: serde_json::Map<String, serde_json::Value> =
            labels.names.iter().zip(probs).map(|(n, p)| (n.clone(), serde_json::json!(p))).collect();
        writeln!(sink, "{}", serde_json::json!({"label": labels.names[*class], "probs": probs}))?;
    }
    sink.flush()?;
    if set.classes.iter().any(Option::is_some) {
        eprintln!("accuracy {:.1}% on {} labelled examples", accuracy * 100.0, set.classes.iter().flatten().count());
    }
    Ok(())
}
