//! `gptk sample`: continue a prompt with a trained model, printing tokens as they come.

use super::{Device, resolve_device};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DeviceKind, Precision};
use crate::checkpoint;
use crate::data::tokenizer::Tokenizer;
use crate::generate::{SampleOpts, generate};
use crate::model::Gpt;
use crate::model::layout::ActLayout;
use crate::rng::Rng;
use crate::train::checkpoint::{META_TOKENIZER, resolve_model};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Checkpoint directory, .safetensors file, or run directory (its newest checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// Text to continue (default: start a new document).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample among the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to p (1 = all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Tokenizer, when the checkpoint does not record one (gpt2 or bytes).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    device: DeviceKind,
    /// Keep going past end-of-text.
    #[arg(long)]
    ignore_eot: bool,
}

pub fn run(args: &SampleArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be 0 or positive, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    let path = resolve_model(&args.model);
    let loaded = checkpoint::load(&path)?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    let name = match (&args.tokenizer, loaded.metadata.get(META_TOKENIZER)) {
        (Some(name), _) => name.clone(),
        (None, Some(name)) => name.clone(),
        (None, None) => "gpt2".to_string(),
    };
    let tokenizer = Tokenizer::from_name(&name).with_context(|| format!("--tokenizer {name}"))?;
    if tokenizer.vocab_size() != loaded.cfg.vocab_size {
        bail!(
            "{}: the model has {} tokens but the {} tokenizer has {}",
            path.display(),
            loaded.cfg.vocab_size,
            name,
            tokenizer.vocab_size()
        );
    }
    let cfg = loaded.cfg.clone();

    let mut prompt: Vec<u32> = vec![tokenizer.eot()];
    prompt.extend(tokenizer.encode(&args.prompt));
    if prompt.len() > cfg.n_ctx {
        let drop = prompt.len() - cfg.n_ctx;
        eprintln!(
            "note: the prompt is longer than the context of {} tokens; its first {drop} tokens are dropped",
            cfg.n_ctx
        );
        prompt.drain(..drop);
    }
    let opts = SampleOpts {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        stop_token: (!args.ignore_eot).then(|| tokenizer.eot()),
    };
    print!("{}", args.prompt);
    let mut stdout = std::io::stdout();
    // Tokens can split a UTF-8 character: print the decoded text as it grows.
    let mut generated = Vec::new();
    let mut printed = 0usize;
    let on_token = |tok| {
        generated.push(tok);
        let text = tokenizer.decode(&generated);
        let stable = text.trim_end_matches('\u{FFFD}');
        if stable.len() > printed && text.is_char_boundary(printed) {
            print!("{}", &stable[printed..]);
            printed = stable.len();
            let _ = stdout.flush();
        }
    };
    fn run_on<K: Backend>(
        mut model: Gpt<K>,
        params: &[f32],
        prompt: &[u32],
        opts: &SampleOpts,
        seed: u64,
        on_token: impl FnMut(u32),
    ) -> Result<()> {
        model.load_params(params)?;
        generate(&mut model, prompt, opts, &mut Rng::new(seed), on_token)?;
        Ok(())
    }
    let plan = ActLayout::for_generation(&cfg, 1, cfg.n_ctx);
    match resolve_device(args.device)? {
        Device::Cpu => {
            let model = Gpt::new(cfg, plan, |p, a| Ok(CpuBackend::<f32>::new(p.total, a)))?;
            run_on(model, &loaded.params, &prompt, &opts, args.seed, on_token)?
        }
        Device::Cuda(info) => {
            let model = Gpt::new(cfg, plan, |p, a| CudaBackend::new(p, a, Precision::Bf16, info.ordinal))?;
            run_on(model, &loaded.params, &prompt, &opts, args.seed, on_token)?
        }
    }
    let text = tokenizer.decode(&generated);
    if text.len() > printed && text.is_char_boundary(printed) {
        print!("{}", &text[printed..]);
    }
    println!();
    Ok(())
}
