//! The training loop.

use super::checkpoint::{self, TrainState};
use super::config::{Objective, TrainConfig};
use super::lr::LrSchedule;
use crate::backend::{AdamWStep, Backend, clip_scale};
use crate::data::loader::{Loader, LoaderState};
use crate::data::mlm::mask_batch;
use crate::data::tokenizer::Tokenizer;
use crate::generate::{SampleOpts, generate};
use crate::model::layout::{Arena, Tensor};
use crate::model::{Gpt, ModelError};
use crate::rng::Rng;
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// File of per-step records in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Weight of the past in the running loss average the spike detector compares against.
const LOSS_AVERAGE_DECAY: f32 = 0.9;
/// Streams of the run's seed for sampling, MLM masks, and the fixed masks of validation.
const SAMPLE_STREAM: u64 = 0x5A3;
const MASK_STREAM: u64 = 0x3A5;
const VAL_MASK_STREAM: u64 = 0x7A1;

/// What the loop reports as it goes; the command line prints these.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// `step` counts completed optimizer steps (1 after the first), in every event.
    Step {
        step: usize,
        steps: usize,
        /// The objective's loss (CLM + weight × MLM for `clm+mlm`).
        loss: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        clm_loss: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mlm_loss: Option<f32>,
        lr: f32,
        grad_norm: f32,
        ms: f64,
        tokens_per_s: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        mfu: Option<f64>,
        /// Seconds left at the current pace.
        eta_s: f64,
    },
    Val {
        step: usize,
        /// The objective's loss on held-out data.
        val_loss: f32,
        #[serde(skip_serializing_if = "Option::is_none")]
        val_clm_loss: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        val_mlm_loss: Option<f32>,
        tokens: usize,
    },
    Sample {
        step: usize,
        text: String,
    },
    /// A checkpoint is being written (the `Checkpoint` event follows).
    Saving {
        step: usize,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    /// A step whose loss or gradient norm was not finite: its update was skipped.
    Skipped {
        step: usize,
        loss: f32,
        grad_norm: f32,
        consecutive: usize,
    },
    /// A loss well above the recent average (the update was applied).
    Spike {
        step: usize,
        loss: f32,
        average: f32,
    },
    /// A stop was requested (SIGINT/SIGTERM): the run saved and ended early.
    Interrupted {
        step: usize,
    },
}

/// What a finished run leaves.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub last_loss: f32,
    pub last_val_loss: Option<f32>,
    pub checkpoint: PathBuf,
    /// Training loss of every step this process ran, in order.
    pub losses: Vec<f32>,
    /// The run stopped early on request.
    pub interrupted: bool,
}

/// Everything the loop needs besides the model.
pub struct Run<'a, K: Backend> {
    pub cfg: &'a TrainConfig,
    pub out: &'a Path,
    pub tokenizer: &'a Tokenizer,
    pub train: Loader,
    pub val: Option<Loader>,
    /// Builds a second model of the same kind with a generation plan, for samples.
    pub make_generator: Box<dyn FnMut() -> Result<Gpt<K>> + 'a>,
    /// Dense peak FLOP/s of the device, for MFU (None on the CPU).
    pub peak_flops: Option<f64>,
    /// Receives every event.
    pub report: Box<dyn FnMut(&Event) + 'a>,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

fn whole(arena: Arena, len: usize) -> Tensor {
    Tensor { arena, offset: 0, len }
}

/// Runs (or continues, when `resume` holds a checkpoint's state) the training loop.
pub fn train<K: Backend>(
    model: &mut Gpt<K>,
    mut run: Run<'_, K>,
    resume: Option<(TrainState, Vec<f32>, Vec<f32>)>,
) -> Result<Outcome> {
    let cfg = run.cfg;
    let (b, t) = (model.acts.b, model.acts.t);
    let bt = b * t;
    let (rank, world) = model.rank_world();
    // Tokens per optimizer step over all ranks; each rank accumulates its share.
    let total_tokens = cfg.total_batch_tokens.unwrap_or(bt * world);
    let accum = total_tokens / (bt * world);
    anyhow::ensure!(
        accum >= 1 && accum * bt * world == total_tokens,
        "--total-batch-tokens {total_tokens} must be a multiple of --batch-size × --seq-len × processes = {}",
        bt * world
    );
    let schedule = LrSchedule {
        peak: cfg.lr,
        floor_frac: cfg.min_lr_frac,
        warmup_steps: cfg.warmup_steps,
        total_steps: cfg.steps,
        decay: cfg.decay,
    };
    let run_json = serde_json::to_value(cfg).expect("config serialises");
    let mut state = TrainState {
        step: 0,
        tokens_seen: 0,
        loader: serde_json::Value::Null,
        mask_rng: Rng::derive(cfg.seed, MASK_STREAM).state,
        sample_rng: Rng::derive(cfg.seed, SAMPLE_STREAM).state,
        run: run_json.clone(),
        tokenizer: run.tokenizer.name().to_string(),
    };
    if let Some((saved, m, v)) = resume {
        let total = model.params.total;
        anyhow::ensure!(
            m.len() == total && v.len() == total,
            "resume: the optimizer moments hold {} and {} values, the model has {total} parameters",
            m.len(),
            v.len()
        );
        model.backend.upload(whole(Arena::OptM, model.params.total), &m)?;
        model.backend.upload(whole(Arena::OptV, model.params.total), &v)?;
        let loader: LoaderState = serde_json::from_value(saved.loader.clone()).context("checkpoint's loader state")?;
        anyhow::ensure!(
            loader.world == world,
            "resume: the checkpoint was written by a job of {} process(es) and this one has {world}; resume with {} (the data position of each rank depends on the world size)",
            loader.world,
            loader.world
        );
        // Every rank advances in step, so rank 0's position is every rank's, with its own rank.
        run.train
            .restore(&LoaderState { rank: run.train.state().rank, ..loader })
            .map_err(|e| anyhow::anyhow!("resume: {e}"))?;
        state = TrainState { run: run_json, ..saved };
    }
    // Only rank 0 reports, writes metrics, samples and writes checkpoints.
    let lead = rank == 0;
    let metrics_path = run.out.join(METRICS_FILE);
    let mut metrics = if lead {
        truncate_metrics(&metrics_path, state.step)?;
        Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("{}", metrics_path.display()))?,
        )
    } else {
        None
    };
    let mut emit = |event: Event, report: &mut Box<dyn FnMut(&Event) + '_>| -> Result<()> {
        if let Some(metrics) = metrics.as_mut() {
            writeln!(metrics, "{}", serde_json::to_string(&event).expect("event serialises"))
                .with_context(|| metrics_path.display().to_string())?;
            report(&event);
        }
        Ok(())
    };

    let flops_per_step = model.cfg.flops_per_token(t) * total_tokens as f64;
    let (mut inputs, mut targets) = (vec![0i32; bt], vec![0i32; bt]);
    let mut losses = Vec::new();
    let mut last_val = None;
    let mut last_checkpoint = None;
    let mut sample_rng = Rng::new(state.sample_rng);
    let mut mask_rng = Rng::new(state.mask_rng);
    let objective = cfg.objective;
    let mlm_weight = if objective == Objective::ClmMlm { cfg.mlm_weight } else { 1.0 };
    let vocab = model.cfg.vocab_size;
    let mask_id = run.tokenizer.mask();
    let (mut masked, mut mask_targets) = (vec![0i32; bt], vec![0i32; bt]);
    let started = Instant::now();
    let first_step = state.step;
    let mut bad_steps = 0usize;
    let mut loss_average: Option<f32> = None;
    // With CUDA graphs, a step of one causal batch in a world of one is recorded whole, the
    // optimizer included (`Gpt::train_step`); otherwise the step's ops run one by one, the
    // forward and backward of each micro-batch replayed from a recording where they can be.
    let whole_steps = cfg.cuda_graphs && world == 1 && accum == 1 && objective == Objective::Clm;
    while state.step < cfg.steps {
        let step = state.step;
        let timer = Instant::now();
        let lr = schedule.at(step);
        // The clipping scale is 1 here: the step's norm sets it below.
        let hyper = AdamWStep {
            lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            t: step as u64 + 1,
            grad_scale: 1.0,
            seed: Rng::derive(cfg.seed, 0xADA0 + step as u64).next_u64(),
        };
        let at = |run: &Run<K>| format!("training batch of step {} ({})", step + 1, run.train.position());
        let (loss, clm_loss, mlm_loss, grad_norm, finite);
        if whole_steps {
            run.train.next_batch(&mut inputs, &mut targets);
            model.set_batch(&inputs, &targets).with_context(|| at(&run))?;
            let s = model.train_step(true, &hyper, cfg.grad_clip)?;
            (loss, clm_loss, mlm_loss, grad_norm, finite) = (s.loss, s.loss, 0.0, s.grad_norm, s.applied);
        } else {
            model.zero_grads()?;
            let (mut clm, mut mlm) = (0.0f32, 0.0f32);
            let share = 1.0 / accum as f32;
            for _ in 0..accum {
                run.train.next_batch(&mut inputs, &mut targets);
                if objective.has_clm() {
                    model.set_batch(&inputs, &targets).with_context(|| at(&run))?;
                    clm += model.forward_backward(true, share)? * share;
                }
                if objective.has_mlm() {
                    masked.copy_from_slice(&inputs);
                    mask_batch(&mut masked, &mut mask_targets, vocab, mask_id, &mut mask_rng);
                    model.set_batch(&masked, &mask_targets).with_context(|| at(&run))?;
                    mlm += model.forward_backward(false, mlm_weight * share)? * share;
                }
            }
            // Data parallelism: average the gradients (into each rank's shard) and the losses.
            model.sync_grads()?;
            let mut losses_now = [clm as f64, mlm as f64];
            model.sum_over_ranks(&mut losses_now)?;
            (clm_loss, mlm_loss) = ((losses_now[0] / world as f64) as f32, (losses_now[1] / world as f64) as f32);
            loss = objective_loss(objective, clm_loss, mlm_loss, mlm_weight);
            grad_norm = model.grad_norm()?;
            let grad_scale = clip_scale(grad_norm, cfg.grad_clip);
            finite = loss.is_finite() && grad_norm.is_finite();
            if finite {
                model.adamw(&AdamWStep { grad_scale, ..hyper })?;
            }
        }
        if finite {
            bad_steps = 0;
        } else {
            bad_steps += 1;
        }
        model.backend.synchronize()?;
        let secs = timer.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens_seen += total_tokens as u64;
        losses.push(loss);
        let done_here = (state.step - first_step) as f64;
        let eta_s = started.elapsed().as_secs_f64() / done_here * (cfg.steps - state.step) as f64;
        let event = Event::Step {
            step: state.step,
            steps: cfg.steps,
            loss,
            clm_loss: (objective == Objective::ClmMlm).then_some(clm_loss),
            mlm_loss: (objective == Objective::ClmMlm).then_some(mlm_loss),
            lr,
            grad_norm,
            ms: secs * 1e3,
            tokens_per_s: total_tokens as f64 / secs,
            mfu: run.peak_flops.map(|peak| flops_per_step / secs / peak),
            eta_s,
        };
        emit(event, &mut run.report)?;
        if !finite {
            emit(Event::Skipped { step: state.step, loss, grad_norm, consecutive: bad_steps }, &mut run.report)?;
            if bad_steps >= cfg.max_bad_steps.max(1) {
                let last_good = last_checkpoint
                    .clone()
                    .or_else(|| checkpoint::latest(run.out))
                    .map_or("none yet".to_string(), |p| p.display().to_string());
                anyhow::bail!(
                    "step {}: loss or gradient norm not finite for {bad_steps} consecutive steps (loss {loss}, grad norm {grad_norm}); last good checkpoint: {last_good}",
                    state.step
                );
            }
        } else {
            if cfg.spike_factor > 0.0 && loss_average.is_some_and(|avg| loss > cfg.spike_factor * avg) {
                emit(Event::Spike { step: state.step, loss, average: loss_average.unwrap_or(loss) }, &mut run.report)?;
            }
            loss_average =
                Some(loss_average.map_or(loss, |avg| LOSS_AVERAGE_DECAY * avg + (1.0 - LOSS_AVERAGE_DECAY) * loss));
        }

        let stop_requested =
            run.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) || cfg.stop_at.is_some_and(|n| state.step >= n);
        let last = state.step == cfg.steps;
        let every = |n: usize| n > 0 && state.step.is_multiple_of(n);
        if let Some(val) = run.val.as_mut()
            && (every(cfg.val_every) || last)
        {
            let (clm, mlm, tokens) = validate(model, val, cfg, mask_id)?;
            let val_loss = objective_loss(objective, clm.unwrap_or(0.0), mlm.unwrap_or(0.0), mlm_weight);
            last_val = Some(val_loss);
            let both = objective == Objective::ClmMlm;
            let event = Event::Val {
                step: state.step,
                val_loss,
                val_clm_loss: clm.filter(|_| both),
                val_mlm_loss: mlm.filter(|_| both),
                tokens,
            };
            emit(event, &mut run.report)?;
        }
        // A bidirectional (MLM-only) model cannot continue text left to right.
        if objective.has_clm() && (every(cfg.sample_every) || last && cfg.sample_every > 0) {
            // The sample reads the full-precision weights, which each rank has only its shard of.
            model.gather_optimizer_state()?;
            if lead {
                let text = sample(model, &mut run, &mut sample_rng)?;
                emit(Event::Sample { step: state.step, text }, &mut run.report)?;
            }
        }
        // No checkpoint during a run of skipped steps (unless asked to stop): the newest
        // checkpoint, which the abort names and --resume takes, stays one written after an
        // applied update, and keep-last-K does not rotate the good ones out.
        if (every(cfg.checkpoint_every) || last) && bad_steps == 0 || stop_requested {
            state.loader = serde_json::to_value(run.train.state()).expect("loader state serialises");
            state.sample_rng = sample_rng.state;
            state.mask_rng = mask_rng.state;
            model.gather_optimizer_state()?;
            if lead {
                (run.report)(&Event::Saving { step: state.step });
                let path = checkpoint::save(run.out, model, &state, cfg.keep_checkpoints)?;
                emit(Event::Checkpoint { step: state.step, path: path.clone() }, &mut run.report)?;
                last_checkpoint = Some(path);
            }
            // No rank runs ahead of a checkpoint that is still being written.
            model.barrier()?;
        }
        if stop_requested {
            emit(Event::Interrupted { step: state.step }, &mut run.report)?;
            break;
        }
    }
    let interrupted = state.step < cfg.steps;
    let checkpoint = match last_checkpoint {
        Some(p) => p,
        None => checkpoint::latest(run.out).context("the run has no checkpoint")?,
    };
    Ok(Outcome {
        last_loss: losses.last().copied().unwrap_or(f32::NAN),
        last_val_loss: last_val,
        checkpoint,
        losses,
        interrupted,
    })
}

/// The loss the objective optimises.
fn objective_loss(objective: Objective, clm: f32, mlm: f32, mlm_weight: f32) -> f32 {
    match objective {
        Objective::Clm => clm,
        Objective::Mlm => mlm,
        Objective::ClmMlm => clm + mlm_weight * mlm,
    }
}

/// Mean CLM and/or MLM loss over the first `cfg.val_batches` validation batches: the same
/// batches, and the same MLM masks, every time.
fn validate<K: Backend>(
    model: &mut Gpt<K>,
    val: &mut Loader,
    cfg: &TrainConfig,
    mask_id: u32,
) -> Result<(Option<f32>, Option<f32>, usize)> {
    let bt = model.acts.b * model.acts.t;
    let (mut inputs, mut targets) = (vec![0i32; bt], vec![0i32; bt]);
    let mut mask_rng = Rng::derive(cfg.seed, VAL_MASK_STREAM);
    val.reset();
    let (mut clm, mut mlm) = (0.0f64, 0.0f64);
    let mut n = 0;
    while n < cfg.val_batches && val.next_batch(&mut inputs, &mut targets) {
        if cfg.objective.has_clm() {
            model.set_batch(&inputs, &targets).with_context(|| format!("validation batch ({})", val.position()))?;
            clm += model.forward(true)? as f64;
        }
        if cfg.objective.has_mlm() {
            mask_batch(&mut inputs, &mut targets, model.cfg.vocab_size, mask_id, &mut mask_rng);
            model.set_batch(&inputs, &targets).with_context(|| format!("validation batch ({})", val.position()))?;
            mlm += model.forward(false)? as f64;
        }
        n += 1;
    }
    // Each rank read its own share of the validation windows: add up over ranks.
    let mut totals = [clm, mlm, n as f64];
    model.sum_over_ranks(&mut totals)?;
    let [clm, mlm, n] = totals;
    let mean = |sum: f64, used: bool| used.then_some((sum / n.max(1.0)) as f32);
    Ok((mean(clm, cfg.objective.has_clm()), mean(mlm, cfg.objective.has_mlm()), n as usize * bt))
}

/// A sample from the current parameters, starting from end-of-text (a fresh document).
fn sample<K: Backend>(model: &mut Gpt<K>, run: &mut Run<'_, K>, rng: &mut Rng) -> Result<String> {
    let params = model.params_to_host()?;
    let mut generator = (run.make_generator)()?;
    generator.load_params(&params)?;
    let eot = run.tokenizer.eot();
    let opts = SampleOpts {
        max_new_tokens: run.cfg.sample_tokens,
        temperature: 1.0,
        top_k: 0,
        top_p: 0.95,
        stop_token: Some(eot),
    };
    let tokens = generate(&mut generator, &[eot], &opts, rng, |_| {}).map_err(|e: ModelError| anyhow::anyhow!(e))?;
    Ok(run.tokenizer.decode(&tokens))
}

/// Drops metric records of steps after `steps_done` (a resumed run writes them again).
fn truncate_metrics(path: &Path, steps_done: usize) -> Result<()> {
    let Ok(file) = File::open(path) else { return Ok(()) };
    let kept: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| (s as usize) <= steps_done)
        })
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::checkpoint::atomic::write_bytes(path, text.as_bytes()).with_context(|| path.display().to_string())
}
