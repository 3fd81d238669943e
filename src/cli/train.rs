//! `gptk train`: resolves the run (output directory, data, tokenizer, model, device, resume),
//! then hands it to the library's training loop and prints what it reports.

use super::Device;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda;
use crate::backend::cuda::CudaBackend;
use crate::backend::{AttentionBackward, AttentionKernels, Backend, BackendError};
use crate::checkpoint;
use crate::data::loader::{Loader, Split};
use crate::data::prepare::{self, Manifest};
use crate::data::tokenizer::Tokenizer;
use crate::dist::file_init;
use crate::dist::group::Group;
use crate::model::config::ModelConfig;
use crate::model::layout::{ActLayout, ParamLayout};
use crate::model::{Gpt, init_params};
use crate::train::checkpoint::{TrainState, latest, load_state};
use crate::train::config::TrainConfig;
use crate::train::run::{Event, Run, train};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The corpus built into the binary: the project's sources and docs, NUL-separated files.
const DEMO_CORPUS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/corpus.txt"));
/// Every n-th file of the built-in corpus is held out for validation.
const DEMO_VAL_EVERY: usize = 10;
/// Name of the built-in corpus's data directory inside the run directory.
const DEMO_DATA_DIR: &str = "data";

pub fn run(cfg: &TrainConfig) -> Result<()> {
    check_numbers(cfg)?;
    // Data parallelism: a launcher (gptk launch, torchrun, srun, mpirun) started this process.
    let topo = crate::dist::env::from_process_env()?;
    let file_init = match cfg.nccl_init.as_str() {
        "tcp" => None,
        other => match other.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => bail!("--nccl-init {other}: expected tcp or file:PATH"),
        },
    };
    let fingerprint = cfg.identity().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    let timeout = std::time::Duration::from_secs(cfg.dist_timeout.max(1));
    let mut group =
        if topo.launched() && file_init.is_none() { Some(Group::connect(&topo, &fingerprint, timeout)?) } else { None };
    if file_init.is_some() && topo.world > 1 && cfg.data.is_none() {
        bail!("--nccl-init file: needs --data (the built-in corpus is written by rank 0 and shared over TCP)");
    }
    let lead = topo.rank == 0;
    let out = output_dir(cfg)?;
    if lead {
        std::fs::create_dir_all(&out)
            .with_context(|| format!("{}: cannot create the output directory", out.display()))?;
    }

    let resume = if cfg.resume {
        let dir = latest(&out).with_context(|| format!("{}: no checkpoint to resume from", out.display()))?;
        let (state, m, v) = load_state(&dir)?;
        check_resume(cfg, &state, &dir)?;
        Some((dir, state, m, v))
    } else {
        if let Some(existing) = latest(&out) {
            bail!(
                "{}: holds checkpoints of an earlier run ({}); pass --resume to continue it, or --out to start elsewhere",
                out.display(),
                existing.display()
            );
        }
        None
    };

    let data_dir = match &cfg.data {
        Some(dir) => dir.clone(),
        None => {
            // Rank 0 writes the built-in corpus once; the others wait for it.
            let dir = if lead { demo_corpus(&out)? } else { out.join(DEMO_DATA_DIR) };
            if let Some(g) = group.as_mut() {
                g.barrier()?;
            }
            dir
        }
    };
    let tokenizer = Manifest::tokenizer_of(&data_dir)?;

    let (model_cfg, params) = initial_model(cfg, resume.as_ref().map(|r| r.0.as_path()), &tokenizer)?;
    if cfg.seq_len > model_cfg.n_ctx {
        bail!("--seq-len {} is longer than the model's context of {} positions", cfg.seq_len, model_cfg.n_ctx);
    }
    if let Some((dir, state, m, _)) = &resume {
        // The moments must cover the parameters the checkpoint's model file gave.
        let total = ParamLayout::new(&model_cfg).total;
        if m.len() != total {
            bail!(
                "{}: the optimizer moments hold {} values but the model ({model_cfg}) has {total}; the state file belongs to another model",
                dir.join(crate::train::checkpoint::STATE_FILE).display(),
                m.len()
            );
        }
        if lead {
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
        }
    }
    let resume = resume.map(|(_, state, m, v)| (state, m, v));

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the first is being handled ends the process at once.
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }

    let (rank, world) = (topo.rank, topo.world);
    let job = Job {
        cfg,
        out: &out,
        data_dir: &data_dir,
        tokenizer: &tokenizer,
        model_cfg,
        params,
        resume,
        stop,
        rank,
        world,
    };
    match super::resolve_device_for(cfg.device, topo.local_rank)? {
        Device::Cpu => {
            if file_init.is_some() {
                bail!("--nccl-init file: is for GPUs; CPU processes meet over TCP (MASTER_ADDR, MASTER_PORT)");
            }
            if cfg.cuda_graphs && lead {
                eprintln!("warning: --cuda-graphs has no effect on the CPU");
            }
            if cfg.attention_backward == AttentionBackward::Atomic && lead {
                eprintln!(
                    "warning: --attention-backward atomic has no effect on the CPU (its backward is deterministic)"
                );
            }
            if cfg.attention_kernels != AttentionKernels::Mma && lead {
                eprintln!("warning: --attention-kernels {} has no effect on the CPU", cfg.attention_kernels.name());
            }
            let build = move |p: &ParamLayout, a: &ActLayout| {
                let k = CpuBackend::<f32>::new(p.padded_total(world), a);
                Ok(match group {
                    Some(g) => k.with_group(g),
                    None => k,
                })
            };
            job.run(build, |p, a| Ok(CpuBackend::<f32>::new(p.total, a)), None)
        }
        Device::Cuda(info) => {
            // Rank 0 makes NCCL's id and hands it to the others, over TCP or through a file.
            let nccl_id = if !topo.launched() {
                None
            } else if let Some(path) = &file_init {
                Some(if lead {
                    let id = cuda::new_nccl_id()?;
                    file_init::publish(path, &id, world, &fingerprint)?;
                    id
                } else {
                    file_init::fetch(path, world, &fingerprint, timeout)?
                })
            } else {
                let g = group.as_mut().expect("launched jobs meet over TCP");
                let mut id = if lead { cuda::new_nccl_id()? } else { Vec::new() };
                g.broadcast(&mut id, cuda::NCCL_ID_BYTES)?;
                Some(id)
            };
            let (precision, ordinal, graphs, kernels) =
                (cfg.precision, info.ordinal, cfg.cuda_graphs, cfg.attention_kernels);
            let atomic_dq = cfg.attention_backward == AttentionBackward::Atomic;
            let build = move |p: &ParamLayout, a: &ActLayout| {
                let mut k = CudaBackend::for_world(p, a, precision, ordinal, world)?;
                k.set_cuda_graphs(graphs);
                k.set_attention_kernels(kernels)?;
                // dQ of (B, T, C), the shape of the blocks' gradient buffer.
                k.set_atomic_attention_dq(atomic_dq.then_some(a.dbtc.len))?;
                match &nccl_id {
                    Some(id) => k.with_nccl(id, rank, world),
                    None => Ok(k),
                }
            };
            job.run(build, move |p, a| CudaBackend::new(p, a, precision, ordinal), info.peak_bf16_flops)
        }
    }
}

/// Flags that must be positive or consistent before anything is read.
fn check_numbers(cfg: &TrainConfig) -> Result<()> {
    for (flag, v) in [("--batch-size", cfg.batch_size), ("--seq-len", cfg.seq_len), ("--steps", cfg.steps)] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let bt = cfg.batch_size * cfg.seq_len;
    if let Some(total) = cfg.total_batch_tokens
        && (total == 0 || total % bt != 0)
    {
        bail!("--total-batch-tokens {total} must be a positive multiple of --batch-size × --seq-len = {bt}");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", cfg.lr);
    }
    if !(0.0..=1.0).contains(&cfg.min_lr_frac) {
        bail!("--min-lr-frac must be in [0, 1], got {}", cfg.min_lr_frac);
    }
    Ok(())
}

/// `--out`, or runs/<name> (the first of runs/<name>, runs/<name>-2, … that holds no run; with
/// --resume the last of them that does).
fn output_dir(cfg: &TrainConfig) -> Result<PathBuf> {
    if let Some(out) = &cfg.out {
        return Ok(out.clone());
    }
    let name = match &cfg.data {
        None => "demo".to_string(),
        Some(d) => d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into()),
    };
    let candidate = |k: usize| {
        if k == 1 { PathBuf::from("runs").join(&name) } else { PathBuf::from("runs").join(format!("{name}-{k}")) }
    };
    let mut k = 1;
    while latest(&candidate(k)).is_some() {
        k += 1;
    }
    if cfg.resume {
        if k == 1 {
            bail!("--resume: no run under {} to continue; name it with --out", candidate(1).display());
        }
        return Ok(candidate(k - 1));
    }
    Ok(candidate(k))
}

/// A resumed run must keep the settings that define it.
fn check_resume(cfg: &TrainConfig, state: &TrainState, dir: &Path) -> Result<()> {
    let saved: TrainConfig = serde_json::from_value(state.run.clone())
        .with_context(|| format!("{}: the saved run configuration is unreadable", dir.display()))?;
    for ((flag, now), (_, then)) in cfg.identity().into_iter().zip(saved.identity()) {
        if now != then {
            bail!("--resume: {flag} is {now} but the run in {} used {then}", dir.display());
        }
    }
    if cfg.steps <= state.step {
        bail!(
            "--resume: the run in {} already completed {} of --steps {}; raise --steps to train further",
            dir.display(),
            state.step,
            cfg.steps
        );
    }
    Ok(())
}

/// Writes the built-in corpus as byte-level shards under the run directory (once).
fn demo_corpus(out: &Path) -> Result<PathBuf> {
    let dir = out.join(DEMO_DATA_DIR);
    if Manifest::read(&dir).is_ok() {
        return Ok(dir);
    }
    let docs: Vec<String> = DEMO_CORPUS
        .split(|&b| b == 0)
        .filter(|d| !d.is_empty())
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    let (val, train): (Vec<_>, Vec<_>) =
        docs.into_iter().enumerate().partition(|(i, _)| i % DEMO_VAL_EVERY == DEMO_VAL_EVERY - 1);
    let strip = |v: Vec<(usize, String)>| v.into_iter().map(|(_, d)| d).collect::<Vec<_>>();
    prepare::write_documents(&dir, "demo", &Tokenizer::bytes(), &strip(train), &strip(val))?;
    Ok(dir)
}

/// The model's shape and first parameters: from the checkpoint being resumed, from --init-from,
/// or freshly initialised from the preset.
fn initial_model(cfg: &TrainConfig, resume: Option<&Path>, tokenizer: &Tokenizer) -> Result<(ModelConfig, Vec<f32>)> {
    let from = resume.map(Path::to_path_buf).or_else(|| cfg.init_from.clone());
    let (model_cfg, params) = match from {
        Some(path) => {
            let loaded = checkpoint::load(&crate::train::checkpoint::resolve_model(&path))?;
            for note in &loaded.notes {
                eprintln!("note: {note}");
            }
            (loaded.cfg, loaded.params)
        }
        None => {
            let mut m = ModelConfig::preset(&cfg.model, tokenizer.vocab_size())?;
            m.n_layer = cfg.n_layer.unwrap_or(m.n_layer);
            m.n_head = cfg.n_head.unwrap_or(m.n_head);
            m.n_embd = cfg.n_embd.unwrap_or(m.n_embd);
            m.n_ctx = cfg.n_ctx.unwrap_or(m.n_ctx);
            m.validate().context("model shape")?;
            let params = init_params(&m, &ParamLayout::new(&m), cfg.seed);
            (m, params)
        }
    };
    if model_cfg.vocab_size != tokenizer.vocab_size() {
        bail!(
            "the model's vocabulary has {} tokens but the data's tokenizer ({}) has {}",
            model_cfg.vocab_size,
            tokenizer.name(),
            tokenizer.vocab_size()
        );
    }
    Ok((model_cfg, params))
}

/// A fully resolved run, ready for a backend.
struct Job<'a> {
    cfg: &'a TrainConfig,
    out: &'a Path,
    data_dir: &'a Path,
    tokenizer: &'a Tokenizer,
    model_cfg: ModelConfig,
    params: Vec<f32>,
    resume: Option<(TrainState, Vec<f32>, Vec<f32>)>,
    stop: Arc<AtomicBool>,
    /// This process's rank and the number of data-parallel processes.
    rank: usize,
    world: usize,
}

impl Job<'_> {
    /// Trains on the backend `build` makes; `build_generator` makes the one samples use.
    fn run<K: Backend>(
        self,
        build: impl FnOnce(&ParamLayout, &ActLayout) -> Result<K, BackendError>,
        build_generator: impl Fn(&ParamLayout, &ActLayout) -> Result<K, BackendError> + Copy,
        peak_flops: Option<f64>,
    ) -> Result<()> {
        let cfg = self.cfg;
        let (b, t, rank, world) = (cfg.batch_size, cfg.seq_len, self.rank, self.world);
        let acts = ActLayout::with_recompute(&self.model_cfg, b, t, None, cfg.recompute);
        let mut model = Gpt::new(self.model_cfg.clone(), acts, build)?;
        model.load_params(&self.params)?;
        let train_data = Loader::open(self.data_dir, Split::Train, b, t, cfg.seed, rank, world)?;
        let val_data = match Loader::open(self.data_dir, Split::Val, b, t, cfg.seed, rank, world) {
            Ok(v) => Some(v),
            Err(e) => {
                if rank == 0 {
                    eprintln!("note: no validation ({e})");
                }
                None
            }
        };
        let model_cfg = self.model_cfg.clone();
        let json = cfg.json;
        let mut printer = Printer { json, quiet: cfg.quiet, saving: None };
        let accum = cfg.total_batch_tokens.unwrap_or(b * t * world) / (b * t * world);
        let (lead, quiet) = (rank == 0, cfg.quiet);
        if world > 1 && lead && !json && !quiet {
            println!("data parallel: {world} processes, each B={b} T={t}; gradients averaged, AdamW sharded (ZeRO-1)");
        }
        if lead && !json && !quiet {
            println!(
                "model {model_cfg} on {}, {:.2}M parameters",
                model.backend.describe(),
                model_cfg.num_parameters() as f64 / 1e6
            );
            println!(
                "data {} ({} tokenizer), B={b} T={t}, {} micro-batch(es) per step, {} steps, writing to {}",
                self.data_dir.display(),
                self.tokenizer.name(),
                accum,
                cfg.steps,
                self.out.display()
            );
        }
        let run = Run {
            cfg,
            out: self.out,
            tokenizer: self.tokenizer,
            train: train_data,
            val: val_data,
            make_generator: Box::new(move || {
                let plan = ActLayout::for_generation(&model_cfg, 1, model_cfg.n_ctx);
                Ok(Gpt::new(model_cfg.clone(), plan, build_generator)?)
            }),
            peak_flops,
            report: Box::new(move |e| printer.show(e)),
            stop: Some(self.stop),
        };
        let outcome = train(&mut model, run, self.resume)?;
        if lead && !json {
            if outcome.interrupted {
                println!("stopped on request; resume with --resume --out {}", self.out.display());
            }
            println!("checkpoint: {}", outcome.checkpoint.display());
        }
        Ok(())
    }
}

/// Shows the loop's events as text (or JSON lines), with a spinner while a checkpoint is written.
struct Printer {
    json: bool,
    quiet: bool,
    saving: Option<indicatif::ProgressBar>,
}

impl Printer {
    fn show(&mut self, e: &Event) {
        if self.json {
            if !matches!(e, Event::Saving { .. }) {
                println!("{}", serde_json::to_string(e).expect("event serialises"));
            }
            return;
        }
        let quiet = self.quiet;
        match e {
            Event::Step { step, steps, loss, lr, grad_norm, ms, tokens_per_s, mfu, eta_s, .. } if !quiet => {
                let mfu = mfu.map_or(String::new(), |m| format!(" | mfu {:.1}%", m * 100.0));
                println!(
                    "step {step:>5}/{steps} | loss {loss:.4} | lr {lr:.2e} | norm {grad_norm:.3} | {ms:.0} ms | {:.1}k tok/s{mfu} | eta {}",
                    tokens_per_s / 1e3,
                    duration(*eta_s)
                );
            }
            Event::Step { .. } => {}
            Event::Val { step, val_loss, .. } => println!("val loss {val_loss:.4} at step {step}"),
            Event::Sample { step, text } if !quiet => println!("--- sample at step {step} ---\n{text}\n---"),
            Event::Sample { .. } => {}
            Event::Saving { step } => {
                self.saving = Some(super::spinner(format!("saving the checkpoint of step {step}")))
            }
            Event::Checkpoint { path, .. } => {
                if let Some(bar) = self.saving.take() {
                    bar.finish_and_clear();
                }
                if !quiet {
                    println!("saved {}", path.display());
                }
            }
            Event::Skipped { step, loss, grad_norm, consecutive } => {
                eprintln!("warning: step {step} skipped: loss {loss}, grad norm {grad_norm} ({consecutive} in a row)")
            }
            Event::Spike { step, loss, average } => {
                eprintln!("warning: loss spike at step {step}: {loss:.4} against a recent {average:.4}")
            }
            Event::Interrupted { step } => println!("interrupted after step {step}"),
        }
    }
}

/// Seconds as "1h02m", "3m05s" or "12s".
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}
