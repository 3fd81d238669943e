//! Fine-tuning for classification, as GPT-1 did it: a linear head on the final hidden state at
//! the extract token, trained with the task's cross-entropy plus λ × the language-model loss of
//! the same inputs (λ = 0.5 by default; 0 turns the auxiliary loss off).
//!
//! The transformer starts from a pretrained checkpoint (or, for the baseline that shows what
//! pretraining buys, from a fresh initialisation of the same shape); the head starts at
//! N(0, 0.02). Learning rate: linear warmup, then linear decay to zero, as in GPT-1.

use super::lr::{Decay, LrSchedule};
use crate::backend::{AdamWStep, Backend};
use crate::data::task::{Encoded, TaskBatch, batch};
use crate::data::tokenizer::Tokenizer;
use crate::model::Gpt;
use crate::rng::Rng;
use anyhow::{Context, Result};
use serde::Serialize;

/// Hyper-parameters of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FinetuneOpts {
    pub epochs: usize,
    pub lr: f32,
    pub warmup_frac: f32,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub lm_weight: f32,
    /// Causal attention (GPT-1); false for a bidirectional (MLM-pretrained) model.
    pub causal: bool,
    pub seed: u64,
}

/// A labelled, encoded split.
pub struct TaskSet {
    pub examples: Vec<Encoded>,
    pub classes: Vec<Option<usize>>,
}

/// What the loop reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum FinetuneEvent {
    Step { epoch: usize, step: usize, steps: usize, class_loss: f32, lm_loss: Option<f32>, lr: f32, grad_norm: f32 },
    Epoch { epoch: usize, train_class_loss: f32, val_class_loss: f32, val_accuracy: f64, val_examples: usize },
}

/// An example's predicted class and the probabilities of all classes.
pub type Prediction = (usize, Vec<f32>);

/// Accuracy and mean class loss of `model` on `set`, with the predicted class of each example.
pub fn evaluate<K: Backend>(
    model: &mut Gpt<K>,
    tok: &Tokenizer,
    set: &TaskSet,
    causal: bool,
) -> Result<(f64, f32, Vec<Prediction>)> {
    let (b, t) = (model.acts.b, model.acts.t);
    let (mut correct, mut counted, mut loss_sum) = (0usize, 0usize, 0f64);
    let mut predictions = Vec::with_capacity(set.examples.len());
    for start in (0..set.examples.len()).step_by(b) {
        let end = (start + b).min(set.examples.len());
        let rows: Vec<(&Encoded, Option<usize>)> = (start..end).map(|i| (&set.examples[i], set.classes[i])).collect();
        let TaskBatch { inputs, lm_targets, class_targets, extract_rows } = batch(tok, &rows, b, t);
        model.set_batch(&inputs, &lm_targets)?;
        model.set_class_targets(&class_targets)?;
        let labelled = class_targets.iter().filter(|&&c| c >= 0).count();
        let (loss, logits) = model.forward_classify(causal, &extract_rows)?;
        if labelled > 0 {
            loss_sum += loss as f64 * labelled as f64;
        }
        for (i, l) in logits.into_iter().enumerate() {
            let best = l.iter().enumerate().fold(0, |best, (j, &x)| if x > l[best] { j } else { best });
            if let Some(c) = rows[i].1 {
                counted += 1;
                correct += usize::from(best == c);
            }
            predictions.push((best, softmax(&l)));
        }
    }
    let acc = if counted > 0 { correct as f64 / counted as f64 } else { f64::NAN };
    Ok((acc, (loss_sum / counted.max(1) as f64) as f32, predictions))
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = x.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

/// Trains the head and the transformer on `train` for `opts.epochs` epochs, evaluating on
/// `val` after each; returns the per-epoch events.
pub fn finetune<K: Backend>(
    model: &mut Gpt<K>,
    tok: &Tokenizer,
    train: &TaskSet,
    val: &TaskSet,
    opts: &FinetuneOpts,
    mut report: impl FnMut(&FinetuneEvent),
) -> Result<Vec<FinetuneEvent>> {
    let (b, t) = (model.acts.b, model.acts.t);
    let per_epoch = train.examples.len().div_ceil(b);
    let total = per_epoch * opts.epochs;
    let schedule = LrSchedule {
        peak: opts.lr,
        floor_frac: 0.0,
        warmup_steps: ((total as f32 * opts.warmup_frac).round() as usize).min(total.saturating_sub(1)),
        total_steps: total,
        decay: Decay::Linear,
    };
    let mut epochs = Vec::new();
    let mut step = 0;
    for epoch in 1..=opts.epochs {
        let mut order: Vec<usize> = (0..train.examples.len()).collect();
        Rng::derive(opts.seed, 0xF17E + epoch as u64).shuffle(&mut order);
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        for chunk in order.chunks(b) {
            let rows: Vec<(&Encoded, Option<usize>)> =
                chunk.iter().map(|&i| (&train.examples[i], train.classes[i])).collect();
            let TaskBatch { inputs, lm_targets, class_targets, .. } = batch(tok, &rows, b, t);
            model.set_batch(&inputs, &lm_targets).context("fine-tuning batch")?;
            model.set_class_targets(&class_targets)?;
            model.zero_grads()?;
            let (class_loss, lm_loss) = model.forward_backward_classify(opts.causal, opts.lm_weight, 1.0)?;
            let grad_norm = model.grad_norm()?;
            let lr = schedule.at(step);
            let grad_scale = crate::backend::clip_scale(grad_norm, opts.grad_clip);
            if class_loss.is_finite() && grad_norm.is_finite() {
                model.adamw(&AdamWStep {
                    lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: opts.weight_decay,
                    t: step as u64 + 1,
                    grad_scale,
                    seed: Rng::derive(opts.seed, 0xADA1 + step as u64).next_u64(),
                })?;
            }
            step += 1;
            loss_sum += class_loss as f64 * chunk.len() as f64;
            seen += chunk.len();
            report(&FinetuneEvent::Step { epoch, step, steps: total, class_loss, lm_loss, lr, grad_norm });
        }
        let (val_accuracy, val_class_loss, _) = evaluate(model, tok, val, opts.causal)?;
        let event = FinetuneEvent::Epoch {
            epoch,
            train_class_loss: (loss_sum / seen.max(1) as f64) as f32,
            val_class_loss,
            val_accuracy,
            val_examples: val.examples.len(),
        };
        report(&event);
        epochs.push(event);
    }
    Ok(epochs)
}
