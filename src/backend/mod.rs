//! The op set both backends implement, over [`Tensor`] handles into their own arenas.
//!
//! The schedule (`model::schedule`) walks the model forward and backward by calling these ops; a
//! backend owns the memory behind the handles and runs each op on it. Conventions, as in llm.c:
//! shapes use `B, T, C, NH, HS, V, Vp`; an op *overwrites* activations and activation gradients
//! unless it says `+=`; parameter gradients always *accumulate* so that micro-batches add up.

pub mod cpu;
pub mod cuda;

use crate::model::layout::{Arena, Tensor};
use std::fmt;
use std::ops::Range;

/// A failure inside a backend: a device error, memory exhaustion, a missing driver.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Device(String),
    #[error("out of device memory: the plan needs {needed} bytes and {free} are free; {hint}")]
    OutOfMemory { needed: usize, free: usize, hint: String },
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// Hyper-parameters of one AdamW update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied to `[0, decay_end)` of the parameter arena only.
    pub weight_decay: f32,
    /// 1-based step count for bias correction.
    pub t: u64,
    /// Gradients are multiplied by this first (global-norm clipping).
    pub grad_scale: f32,
    /// Seed for stochastic rounding where the backend stores low-precision parameters.
    pub seed: u64,
}

/// The gradient scale of global-norm clipping: `clip / grad_norm` above `clip`, else 1 (`clip`
/// ≤ 0: no clipping). The trainers' and `Backend::optimizer_step`'s (the CUDA kernel
/// `step_scalars` computes the same in f32).
pub fn clip_scale(grad_norm: f32, clip: f32) -> f32 {
    if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 }
}

/// Strided lanes of [`sum_losses`]; the CUDA kernel `step_scalars` runs one thread per lane.
pub const LOSS_SUM_LANES: usize = 32;

/// Σ losses in f64, in a fixed order that one block of threads can follow: lane k sums the losses
/// k, k + [`LOSS_SUM_LANES`], … in order, then the lane sums are added in order. Every sum of a
/// step's losses goes through it (the CPU backend's optimizer step, the model's mean loss, and
/// on the GPU `step_scalars` in the same order), so a step's loss has the same bits whether it
/// is read back and summed on the host or summed on the device.
pub fn sum_losses(losses: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LOSS_SUM_LANES];
    for (i, &x) in losses.iter().enumerate() {
        lanes[i % LOSS_SUM_LANES] += f64::from(x);
    }
    lanes.iter().fold(0.0, |sum, &lane| sum + lane)
}

/// Which numbers a backend stores activations and parameters in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// The op set of one device. Every op may return a device error.
pub trait Backend {
    /// A one-line description: device name, precision.
    fn describe(&self) -> String;
    /// Storage precision of parameters and activations.
    fn precision(&self) -> Precision;

    // ---- memory ----------------------------------------------------------------------------
    /// Sets a tensor to zero.
    fn zero(&mut self, t: Tensor) -> Result<()>;
    /// Copies host values into a float tensor (converted to the arena's type).
    fn upload(&mut self, t: Tensor, data: &[f32]) -> Result<()>;
    /// Copies token ids into a tensor of the `Inputs` arena.
    fn upload_ints(&mut self, t: Tensor, data: &[i32]) -> Result<()>;
    /// Copies the batch's token ids into `t`, the embedding's input, as `upload_ints`, telling the
    /// backend they are the batch's: it may prepare from them what the embedding's backward reads,
    /// so that a recorded backward reads nothing from the host (the CUDA backend buckets positions
    /// by token, before a recording, or in the backward when ops run one by one). The default is
    /// `upload_ints`.
    fn upload_tokens(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        self.upload_ints(t, data)
    }
    /// Reads a float tensor back as f32. For `Params` this is the full-precision master copy.
    fn download(&mut self, t: Tensor) -> Result<Vec<f32>>;
    /// Waits for queued work (a no-op on the CPU); used for timing.
    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    // ---- ops -------------------------------------------------------------------------------
    /// out (B,T,C) = wte[tokens] + wpe[0..T].
    #[allow(clippy::too_many_arguments)]
    fn encoder_forward(
        &mut self,
        out: Tensor,
        tokens: Tensor,
        wte: Tensor,
        wpe: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// dwte += scatter(dout by tokens); dwpe += sum over B of dout.
    #[allow(clippy::too_many_arguments)]
    fn encoder_backward(
        &mut self,
        dwte: Tensor,
        dwpe: Tensor,
        dout: Tensor,
        tokens: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()>;
    /// out (N,C) = (inp - mean) · rstd · w + b; mean, rstd (N) saved for the backward.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &mut self,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()>;
    /// res (N,C) = x + y, then out = layernorm(res) as `layernorm_forward` (the residual add that
    /// feeds each layernorm). The same values as the two ops; a backend may fuse them (the CUDA
    /// one does: one launch, one read of the row fewer).
    #[allow(clippy::too_many_arguments)]
    fn residual_layernorm_forward(
        &mut self,
        res: Tensor,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        (x, y): (Tensor, Tensor),
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.residual_forward(res, x, y)?;
        self.layernorm_forward(out, mean, rstd, res, w, bias, n, c)
    }
    /// dinp (N,C) +=, dw (C) +=, db (C) +=.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        db: Tensor,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        mean: Tensor,
        rstd: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()>;
    /// out (N,OC) = inp (N,C) · wᵀ (w is (OC,C)) + bias (OC).
    #[allow(clippy::too_many_arguments)]
    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// dinp (N,C) = dout · w (overwritten); dw (OC,C) += doutᵀ · inp; dbias (OC) += Σ rows of dout.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()>;
    /// pre (N,OC) = inp · wᵀ + bias as `matmul_forward`, then out (N,OC) = tanh-GELU(pre): the
    /// MLP's first layer. The same values as the two ops; a backend may fuse them (the CUDA one
    /// applies the GELU in the GEMM's epilogue, where cuBLASLt allows).
    #[allow(clippy::too_many_arguments)]
    fn matmul_gelu_forward(
        &mut self,
        pre: Tensor,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.matmul_forward(pre, inp, w, bias, n, c, oc)?;
        self.gelu_forward(out.slice(0, n * oc), pre.slice(0, n * oc))
    }
    /// `matmul_backward` of a layer whose input was inp = GELU(pre), carried on through that
    /// GELU: dinp (N,C) = (dout · w) ⊙ GELU′(pre), overwritten; dw and dbias as
    /// `matmul_backward`. The same values as the two ops; a backend may fuse them (the CUDA one
    /// applies GELU′ in the epilogue of the dinp GEMM, where cuBLASLt allows).
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward_gelu(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        (inp, pre): (Tensor, Tensor),
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        self.matmul_backward(dinp, dw, dbias, dout, inp, w, n, c, oc)?;
        self.gelu_backward(dinp.slice(0, n * c), pre.slice(0, n * c))
    }
    /// out (B,T,C) = softmax(q·kᵀ/√HS [+ causal mask]) · v, heads read from qkv (B,T,3C);
    /// lse (B,NH,T) = log Σ exp of each score row, saved for the backward.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()>;
    /// dqkv (B,T,3C) = gradient of the attention from dout (overwritten).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()>;
    /// One generation step of causal attention: the k and v of position `pos` (from qkv
    /// (B,1,3C)) are written into the cache kv (B,Tmax,2C) laid out [k | v], then out (B,1,C) =
    /// attention of the new q over cached positions 0..=pos.
    #[allow(clippy::too_many_arguments)]
    fn attention_cached(
        &mut self,
        out: Tensor,
        qkv: Tensor,
        kv: Tensor,
        b: usize,
        t_max: usize,
        pos: usize,
        nh: usize,
        hs: usize,
    ) -> Result<()>;
    /// out (N) = tanh-GELU(inp).
    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()>;
    /// d (N): gradient w.r.t. the GELU output on entry, w.r.t. its input on exit (in place).
    fn gelu_backward(&mut self, d: Tensor, inp: Tensor) -> Result<()>;
    /// out (N) = a + b.
    fn residual_forward(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()>;
    /// Fused softmax cross-entropy over the first V of Vp columns, rows with target < 0 ignored:
    /// losses (N) = −log softmax(logits)[target] (0 where ignored). With `dloss`, logits (N,Vp)
    /// are overwritten by dlogits = dloss · (softmax − onehot), zero in the padded columns and the
    /// ignored rows.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &mut self,
        losses: Tensor,
        logits: Tensor,
        targets: Tensor,
        n: usize,
        v: usize,
        vp: usize,
        dloss: Option<f32>,
    ) -> Result<()>;

    // ---- optimizer over the parameter arena ----------------------------------------------------
    /// Σ g² over elements `range` of the gradient arena (f64 accumulation where the device
    /// allows). The whole arena without data parallelism, this rank's shard with it.
    fn grad_norm_squared(&mut self, range: Range<usize>) -> Result<f64>;
    /// One AdamW update of the parameters in `range` (indices into the arena); weight decay for
    /// indices below `decay_end` only.
    fn adamw(&mut self, step: &AdamWStep, decay_end: usize, range: Range<usize>) -> Result<()>;
    /// The host's values for the next `optimizer_step`: the learning rate, step count and seed of
    /// `step` (its `grad_scale` is not used) and the clipping norm (≤ 0: none). Set before each
    /// step, outside any recording: a backend that records keeps them where a recording of
    /// `optimizer_step` reads them, so that replaying it uses this step's values.
    fn set_step(&mut self, step: &AdamWStep, clip: f32) -> Result<()>;
    /// The optimizer's half of a step with nothing read back, in a world of one: the global norm
    /// of the gradients in `range` (`grad_norm_squared`), the clipping scale (clip / norm above
    /// clip, else 1), and, when `count` targets counted and the norm and the sum of `losses` are
    /// finite, `adamw` over `range` with that scale and the values of `set_step`: the trainer's
    /// step, the same bits. `step_outcome` reads what it found.
    fn optimizer_step(&mut self, losses: Tensor, count: usize, decay_end: usize, range: Range<usize>) -> Result<()>;
    /// What the last `optimizer_step` found (waits for the device).
    fn step_outcome(&mut self) -> Result<StepOutcome>;

    // ---- recording (CUDA graphs) -----------------------------------------------------------------
    /// Called before a run of ops that is the same every time `key` comes back: the same ops on
    /// the same tensors with the same arguments, with no reads of host data and no host waits
    /// among them (what may change between runs is the data in the tensors). A backend that
    /// records may replay a recording of them instead. The default runs them.
    fn replay(&mut self, _key: u64) -> Result<Replay> {
        Ok(Replay::Run)
    }
    /// After the ops of a [`Replay::Recording`]: keeps the recording and runs it (recorded ops
    /// have not run yet). With `ok` false (an op failed while recording) it drops the recording.
    fn end_recording(&mut self, _ok: bool) -> Result<()> {
        Ok(())
    }

    // ---- data parallelism (ZeRO-1) --------------------------------------------------------------
    // The parameter arena is split into `world` equal shards of `shard_len` elements; rank r owns
    // [r·shard_len, (r+1)·shard_len). A backend built without a group is a world of one, and
    // these are no-ops.
    /// (rank, world) of this backend's process group.
    fn rank_world(&self) -> (usize, usize) {
        (0, 1)
    }
    /// Replaces this rank's shard of the gradient arena by the mean of that shard over the ranks
    /// (reduce-scatter); the rest of the arena is left unspecified.
    fn reduce_scatter_grads(&mut self, _shard_len: usize) -> Result<()> {
        Ok(())
    }
    /// Gives every rank every rank's shard of the parameters (all-gather), master copy included.
    fn all_gather_params(&mut self, _shard_len: usize) -> Result<()> {
        Ok(())
    }
    /// Gives every rank every rank's shard of the optimizer state: the AdamW moments and, where
    /// the backend keeps them apart from the parameters, the f32 master weights (before a
    /// checkpoint or a sample, which read them).
    fn all_gather_optimizer_state(&mut self, _shard_len: usize) -> Result<()> {
        Ok(())
    }
    /// Element-wise sum of host values over the ranks.
    fn all_reduce_host(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// What [`Backend::optimizer_step`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Σ of the step's losses in f64, in [`sum_losses`]' order (as `Gpt`'s mean loss sums them).
    pub loss_sum: f64,
    /// The global L2 norm of the gradients.
    pub grad_norm: f32,
    /// Whether AdamW ran (some target counted and the norm and the losses were finite).
    pub applied: bool,
}

/// What [`Backend::replay`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Run the ops as usual.
    Run,
    /// A recording of the ops was launched: skip them.
    Replayed,
    /// Run the ops (they are recorded, not executed), then call [`Backend::end_recording`].
    Recording,
}

/// How the GPU's tensor-core attention backward sums dQ over key blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionBackward {
    /// In a pass of its own that recomputes the scores: the same bits on every run.
    #[default]
    Deterministic,
    /// With f32 atomic adds in the dK/dV pass: fewer FLOPs, the last bits vary from run to run.
    Atomic,
}

/// Which kernels run the GPU's tensor-core attention. Named alike on the command line and in
/// configuration files (`mma`, `wgmma`, `wgmma-tma`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKernels {
    /// `mma.sync` (Ampere's instructions, every GPU from sm_80 on).
    #[default]
    Mma,
    /// Hopper's warpgroup instructions (`wgmma`, sm_90a): compute capability 9.0 only.
    Wgmma,
    /// As `wgmma`, with the forward on a warp-specialized kernel whose producer warpgroup loads
    /// the key and value tiles by TMA (the tensor memory accelerator); the same backward.
    WgmmaTma,
}

impl AttentionKernels {
    /// The name the command line and configuration files give it.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernels::Mma => "mma",
            AttentionKernels::Wgmma => "wgmma",
            AttentionKernels::WgmmaTma => "wgmma-tma",
        }
    }
}

/// Where a model runs, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A CUDA GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl Arena {
    /// Arenas that share the parameter layout.
    pub fn is_param_like(self) -> bool {
        matches!(self, Arena::Params | Arena::Grads | Arena::OptM | Arena::OptV)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_kernels_have_one_name_everywhere() {
        use clap::ValueEnum;
        for k in AttentionKernels::value_variants() {
            assert_eq!(k.to_possible_value().unwrap().get_name(), k.name());
            assert_eq!(serde_json::to_string(k).unwrap(), format!("\"{}\"", k.name()));
            assert_eq!(serde_json::from_str::<AttentionKernels>(&format!("\"{}\"", k.name())).unwrap(), *k);
        }
    }

    #[test]
    fn losses_are_summed_in_strided_lanes() {
        // 2⁶⁰ + 1 rounds back to 2⁶⁰ in f64, so the order shows: in order the big terms cancel
        // first and the 1 survives; in lanes it is added to 2⁶⁰ (its lane, 0) and lost.
        let big = 2f32.powi(60);
        let mut losses = vec![0.0f32; 40];
        (losses[0], losses[1], losses[LOSS_SUM_LANES]) = (big, -big, 1.0);
        assert_eq!(losses.iter().map(|&x| f64::from(x)).fold(0.0, |s, x| s + x), 1.0);
        assert_eq!(sum_losses(&losses), 0.0);
        assert_eq!(sum_losses(&[0.5, 0.25, 2.0]), 2.75);
        assert_eq!(sum_losses(&[]), 0.0);
    }
}
