//! The model: configuration, memory layout, the forward/backward schedule, and [`Gpt`], which
//! ties them to a backend.

pub mod config;
pub mod layout;
pub mod plan;
pub mod schedule;

use crate::backend::cpu::CpuBackend;
use crate::backend::{AdamWStep, Backend, BackendError, Replay, sum_losses};
use crate::rng::Rng;
use config::{ModelConfig, NUM_SPECIAL_TOKENS};
use layout::{ActLayout, Arena, ParamLayout};

/// What a whole training step ([`Gpt::train_step`]) found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSummary {
    /// The mean loss over counted targets (NaN if none counted).
    pub loss: f32,
    /// The global norm of the gradients before clipping.
    pub grad_norm: f32,
    /// Whether AdamW updated the parameters (the loss and the norm were finite).
    pub applied: bool,
}

/// Standard deviation of GPT-2's weight initialisation.
pub const INIT_STD: f64 = 0.02;

/// A failure while running the model: a backend error or a batch it cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("batch {what} has {given} ids, the model was planned for {expected}")]
    BatchShape { what: &'static str, given: usize, expected: usize },
    #[error("position {pos} is past the key/value cache of {limit} positions")]
    ContextFull { pos: usize, limit: usize },
    #[error("token id {id} at position {pos} is outside the vocabulary (ids must be below {limit})")]
    TokenRange { id: i32, pos: usize, limit: usize },
}

/// A model on a backend: its layouts and the memory behind them.
pub struct Gpt<K: Backend> {
    pub cfg: ModelConfig,
    pub params: ParamLayout,
    pub acts: ActLayout,
    pub backend: K,
    /// Targets ≥ 0 in the current batch.
    counted_targets: usize,
    /// Class targets ≥ 0 in the current batch (classification).
    counted_classes: usize,
}

/// GPT-2's initialisation over the parameter layout: 2-D weights N(0, 0.02), residual
/// projections scaled by 1/√(2L), biases 0, layernorm gains 1; embedding rows past the real and
/// special tokens (pure alignment padding) stay 0 and never receive a gradient.
pub fn init_params(cfg: &ModelConfig, p: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut host = vec![0f32; p.total];
    let mut rng = Rng::derive(seed, 0x1417);
    let residual_std = INIT_STD / (2.0 * cfg.n_layer as f64).sqrt();
    for spec in &p.specs {
        let span = &mut host[spec.tensor.offset..spec.tensor.end()];
        if spec.name.ends_with("ln_1.weight") || spec.name.ends_with("ln_2.weight") || spec.name == "ln_f.weight" {
            span.fill(1.0);
        } else if spec.decay {
            let std = if spec.name.ends_with("c_proj.weight") { residual_std } else { INIT_STD };
            let live =
                if spec.name == "wte.weight" { (cfg.vocab_size + NUM_SPECIAL_TOKENS) * cfg.n_embd } else { span.len() };
            for x in &mut span[..live] {
                *x = (rng.normal() * std) as f32;
            }
        }
    }
    host
}

/// The forward, the classifier with its loss and backward, and the whole backward: all of a
/// training step's forward and backward.
fn forward_backward_ops<K: Backend>(
    k: &mut K,
    cfg: &ModelConfig,
    p: &ParamLayout,
    a: &ActLayout,
    causal: bool,
    dloss: f32,
) -> Result<(), BackendError> {
    schedule::forward(k, cfg, p, a, schedule::Attention::Full { causal })?;
    schedule::classifier(k, cfg, p, a, Some(dloss))?;
    schedule::backward_from(k, cfg, p, a, causal, a.dbtc)
}

/// Runs `ops`, the same ops for the same `key` whatever the data ([`Backend::replay`]): not at
/// all when the backend replayed a recording of them, recorded when it records.
fn replayable<K: Backend>(
    k: &mut K,
    key: u64,
    ops: impl FnOnce(&mut K) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let mode = k.replay(key)?;
    if mode == Replay::Replayed {
        return Ok(());
    }
    let ran = ops(k);
    let ended = if mode == Replay::Recording { k.end_recording(ran.is_ok()) } else { Ok(()) };
    ran.and(ended)
}

impl<K: Backend> Gpt<K> {
    /// The model with the activation plan `acts`; `build` makes the backend's arenas.
    pub fn new(
        cfg: ModelConfig,
        acts: ActLayout,
        build: impl FnOnce(&ParamLayout, &ActLayout) -> Result<K, BackendError>,
    ) -> Result<Self, ModelError> {
        let params = ParamLayout::with_head(&cfg, acts.cls.map_or(0, |c| c.n_classes));
        let backend = build(&params, &acts)?;
        Ok(Gpt { cfg, params, acts, backend, counted_targets: 0, counted_classes: 0 })
    }

    /// Copies a full parameter vector (layout order, f32) to the backend.
    pub fn load_params(&mut self, host: &[f32]) -> Result<(), ModelError> {
        let all = layout::Tensor { arena: Arena::Params, offset: 0, len: self.params.total };
        Ok(self.backend.upload(all, host)?)
    }

    /// The full-precision parameters, layout order.
    pub fn params_to_host(&mut self) -> Result<Vec<f32>, ModelError> {
        let all = layout::Tensor { arena: Arena::Params, offset: 0, len: self.params.total };
        Ok(self.backend.download(all)?)
    }

    /// Sets the batch: `tokens` (B·T ids) and `targets` (B·T ids, −1 = not counted).
    pub fn set_batch(&mut self, tokens: &[i32], targets: &[i32]) -> Result<(), ModelError> {
        let n = self.acts.b * self.acts.t;
        for (what, ids) in [("tokens", tokens), ("targets", targets)] {
            if ids.len() != n {
                return Err(ModelError::BatchShape { what, given: ids.len(), expected: n });
            }
        }
        let vp = self.cfg.padded_vocab_size();
        if let Some(pos) = tokens.iter().position(|&x| x < 0 || x as usize >= vp) {
            return Err(ModelError::TokenRange { id: tokens[pos], pos, limit: vp });
        }
        let v = self.cfg.vocab_size;
        if let Some(pos) = targets.iter().position(|&x| x < -1 || x >= 0 && x as usize >= v) {
            return Err(ModelError::TokenRange { id: targets[pos], pos, limit: v });
        }
        self.counted_targets = targets.iter().filter(|&&x| x >= 0).count();
        self.backend.upload_tokens(self.acts.tokens, tokens)?;
        self.backend.upload_ints(self.acts.targets, targets)?;
        Ok(())
    }

    /// Number of targets that count towards the loss in the current batch.
    pub fn counted_targets(&self) -> usize {
        self.counted_targets
    }

    /// Forward pass and loss: the mean cross-entropy over counted targets (NaN if none count).
    pub fn forward(&mut self, causal: bool) -> Result<f32, ModelError> {
        schedule::forward(
            &mut self.backend,
            &self.cfg,
            &self.params,
            &self.acts,
            schedule::Attention::Full { causal },
        )?;
        schedule::classifier(&mut self.backend, &self.cfg, &self.params, &self.acts, None)?;
        self.mean_loss()
    }

    /// Forward and backward: returns the mean loss and adds `loss_weight` × its gradient to the
    /// parameter gradients (`loss_weight` = 1/accumulation steps for gradient accumulation).
    ///
    /// It is the same ops on the same tensors for the same (`causal`, loss scale), whatever the
    /// batch (the embedding's backward reads what `set_batch` prepared with the token ids): a
    /// backend may replay a recording of it ([`Backend::replay`]; CUDA graphs).
    pub fn forward_backward(&mut self, causal: bool, loss_weight: f32) -> Result<f32, ModelError> {
        let dloss = loss_weight / self.counted_targets.max(1) as f32;
        let (k, cfg, p, a) = (&mut self.backend, &self.cfg, &self.params, &self.acts);
        let key = (u64::from(dloss.to_bits()) << 1) | u64::from(causal);
        replayable(k, key, |k| forward_backward_ops(k, cfg, p, a, causal, dloss))?;
        self.mean_loss()
    }

    /// A whole training step on the batch of `set_batch`, without gradient accumulation, in a
    /// world of one: the gradients zeroed, the forward and backward (`forward_backward` with loss
    /// weight 1), then the optimizer ([`Backend::optimizer_step`]: the gradient norm, clipping at
    /// `clip`, and AdamW with `step`'s learning rate, step count and seed when the loss and the
    /// norm are finite); the same bits as those ops one by one. All of it is the same ops on the
    /// same tensors for the same (`causal`, loss scale), whatever the batch and the step (`step`'s
    /// values reach the optimizer through [`Backend::set_step`]): a backend may replay a
    /// recording of the whole step (CUDA graphs).
    pub fn train_step(&mut self, causal: bool, step: &AdamWStep, clip: f32) -> Result<StepSummary, ModelError> {
        if self.rank_world().1 != 1 {
            return Err(ModelError::Backend(BackendError::Device(
                "a whole recorded step is for a world of one".into(),
            )));
        }
        let count = self.counted_targets;
        let dloss = 1.0 / count.max(1) as f32;
        let (shard, decay_end) = (self.shard(), self.params.decay_end);
        let grads = layout::Tensor { arena: Arena::Grads, offset: 0, len: self.params.total };
        let (k, cfg, p, a) = (&mut self.backend, &self.cfg, &self.params, &self.acts);
        k.set_step(step, clip)?;
        // Apart from `forward_backward`'s keys (which use the low 33 bits). The count is passed
        // to the optimizer as it is (no targets: nothing applied), so 0 and 1, which share a
        // loss scale, are told apart.
        let key = 1 << 40 | u64::from(count == 0) << 39 | (u64::from(dloss.to_bits()) << 1) | u64::from(causal);
        replayable(k, key, |k| {
            k.zero(grads)?;
            forward_backward_ops(k, cfg, p, a, causal, dloss)?;
            k.optimizer_step(a.losses, count, decay_end, shard)
        })?;
        let o = k.step_outcome()?;
        Ok(StepSummary { loss: (o.loss_sum / count as f64) as f32, grad_norm: o.grad_norm, applied: o.applied })
    }

    /// One generation step on a plan from `ActLayout::for_generation`: `tokens` (one id per
    /// sequence) enter at position `pos`, the key/value cache grows by one, and the logits
    /// (B, Vp) of the next token come back.
    pub fn step(&mut self, tokens: &[i32], pos: usize) -> Result<Vec<f32>, ModelError> {
        assert_eq!(self.acts.t, 1, "step() needs a generation plan");
        if pos >= self.acts.kv_len {
            return Err(ModelError::ContextFull { pos, limit: self.acts.kv_len });
        }
        let none = vec![-1; tokens.len()];
        self.set_batch(tokens, &none)?;
        let attn = schedule::Attention::Cached { pos };
        schedule::forward(&mut self.backend, &self.cfg, &self.params, &self.acts, attn)?;
        schedule::logits(&mut self.backend, &self.cfg, &self.params, &self.acts, 0, self.acts.b)?;
        let vp = self.cfg.padded_vocab_size();
        Ok(self.backend.download(self.acts.logits.slice(0, self.acts.b * vp))?)
    }

    /// Sets the class targets of a classification batch: B·T ids, −1 everywhere except the
    /// extract position of each sequence that has a label.
    pub fn set_class_targets(&mut self, targets: &[i32]) -> Result<(), ModelError> {
        let cls = self.acts.cls.expect("a plan for classification");
        if targets.len() != cls.targets.len {
            return Err(ModelError::BatchShape {
                what: "class targets",
                given: targets.len(),
                expected: cls.targets.len,
            });
        }
        if let Some(pos) = targets.iter().position(|&x| x < -1 || x >= 0 && x as usize >= cls.n_classes) {
            return Err(ModelError::TokenRange { id: targets[pos], pos, limit: cls.n_classes });
        }
        self.counted_classes = targets.iter().filter(|&&x| x >= 0).count();
        self.backend.upload_ints(cls.targets, targets)?;
        Ok(())
    }

    /// Fine-tuning step (GPT-1): causal forward, the head's loss at the extract positions plus
    /// `lm_weight` × the next-token loss of the same inputs, backward with `loss_weight` (1/accum)
    /// on the sum. Returns the mean class loss and the mean LM loss (None when `lm_weight` is 0).
    /// With `causal` false the blocks attend both ways (a model pretrained with MLM); the LM term
    /// then makes no sense and must be off.
    pub fn forward_backward_classify(
        &mut self,
        causal: bool,
        lm_weight: f32,
        loss_weight: f32,
    ) -> Result<(f32, Option<f32>), ModelError> {
        assert!(causal || lm_weight == 0.0, "the auxiliary LM loss needs causal attention");
        let (k, cfg, p, a) = (&mut self.backend, &self.cfg, &self.params, &self.acts);
        schedule::forward(k, cfg, p, a, schedule::Attention::Full { causal })?;
        let with_lm = lm_weight > 0.0 && self.counted_targets > 0;
        let dcls = loss_weight / self.counted_classes.max(1) as f32;
        let dlnf = if with_lm {
            // The LM classifier writes its dlnf into dbtc, the head its share into dres (free until
            // the backward starts); their sum goes to the front of d4c, where the backward reads it.
            let n_c = a.b * a.t * cfg.n_embd;
            schedule::classifier(k, cfg, p, a, Some(loss_weight * lm_weight / self.counted_targets as f32))?;
            schedule::head(k, cfg, p, a, Some(dcls), a.dres)?;
            let sum = a.d4c.slice(0, n_c);
            k.residual_forward(sum, a.dbtc, a.dres)?;
            sum
        } else {
            schedule::head(k, cfg, p, a, Some(dcls), a.dbtc)?;
            a.dbtc
        };
        schedule::backward_from(k, cfg, p, a, causal, dlnf)?;
        let lm = if with_lm { Some(self.mean_loss()?) } else { None };
        Ok((self.mean_class_loss()?, lm))
    }

    /// Forward pass with the head (no gradients): the mean class loss over rows with a class
    /// target (NaN if none) and the head's logits of the given rows (row = b·T + position).
    pub fn forward_classify(&mut self, causal: bool, rows: &[usize]) -> Result<(f32, Vec<Vec<f32>>), ModelError> {
        let (k, cfg, p, a) = (&mut self.backend, &self.cfg, &self.params, &self.acts);
        schedule::forward(k, cfg, p, a, schedule::Attention::Full { causal })?;
        schedule::head(k, cfg, p, a, None, a.dbtc)?;
        let cls = self.acts.cls.expect("a plan for classification");
        let logits = self.backend.download(cls.logits)?;
        let nc = cls.n_classes;
        let picked = rows.iter().map(|&r| logits[r * nc..(r + 1) * nc].to_vec()).collect();
        Ok((self.mean_class_loss()?, picked))
    }

    fn mean_class_loss(&mut self) -> Result<f32, ModelError> {
        let cls = self.acts.cls.expect("a plan for classification");
        let losses = self.backend.download(cls.losses)?;
        Ok((sum_losses(&losses) / self.counted_classes as f64) as f32)
    }

    fn mean_loss(&mut self) -> Result<f32, ModelError> {
        let losses = self.backend.download(self.acts.losses)?;
        Ok((sum_losses(&losses) / self.counted_targets as f64) as f32)
    }

    /// Clears the parameter gradients (before the first micro-batch of a step).
    pub fn zero_grads(&mut self) -> Result<(), ModelError> {
        let all = layout::Tensor { arena: Arena::Grads, offset: 0, len: self.params.total };
        Ok(self.backend.zero(all)?)
    }

    /// (rank, world) of the data-parallel group the backend belongs to ((0, 1) alone).
    pub fn rank_world(&self) -> (usize, usize) {
        self.backend.rank_world()
    }

    /// Elements of the parameter arena each rank owns (the whole arena alone).
    pub fn shard_len(&self) -> usize {
        let world = self.rank_world().1;
        self.params.padded_total(world) / world
    }

    /// The part of the parameter arena this rank updates.
    pub fn shard(&self) -> std::ops::Range<usize> {
        let (rank, len) = (self.rank_world().0, self.shard_len());
        rank * len..(rank + 1) * len
    }

    /// Averages the gradients over the ranks, into each rank's shard (nothing alone).
    pub fn sync_grads(&mut self) -> Result<(), ModelError> {
        let len = self.shard_len();
        Ok(self.backend.reduce_scatter_grads(len)?)
    }

    /// Returns when every rank has called it.
    pub fn barrier(&mut self) -> Result<(), ModelError> {
        Ok(self.backend.all_reduce_host(&mut [0.0])?)
    }

    /// Element-wise sum of host values over the ranks.
    pub fn sum_over_ranks(&mut self, values: &mut [f64]) -> Result<(), ModelError> {
        Ok(self.backend.all_reduce_host(values)?)
    }

    /// Global L2 norm of the (synchronised) parameter gradients.
    pub fn grad_norm(&mut self) -> Result<f32, ModelError> {
        let mut sq = [self.backend.grad_norm_squared(self.shard())?];
        self.backend.all_reduce_host(&mut sq)?;
        Ok(sq[0].sqrt() as f32)
    }

    /// One AdamW update: each rank updates its shard, then the ranks exchange the new shards.
    pub fn adamw(&mut self, step: &AdamWStep) -> Result<(), ModelError> {
        let (shard, len) = (self.shard(), self.shard_len());
        self.backend.adamw(step, self.params.decay_end, shard)?;
        Ok(self.backend.all_gather_params(len)?)
    }

    /// Makes the full optimizer state (moments, master weights) known on every rank, before a
    /// checkpoint is written or a sample drawn.
    pub fn gather_optimizer_state(&mut self) -> Result<(), ModelError> {
        let len = self.shard_len();
        Ok(self.backend.all_gather_optimizer_state(len)?)
    }
}

impl Gpt<CpuBackend<f32>> {
    /// The model on the CPU reference backend.
    pub fn cpu(cfg: ModelConfig, b: usize, t: usize) -> Self {
        let acts = ActLayout::new(&cfg, b, t, None);
        Gpt::new(cfg, acts, |p, a| Ok(CpuBackend::new(p.total, a))).expect("the CPU backend cannot fail to build")
    }
}
