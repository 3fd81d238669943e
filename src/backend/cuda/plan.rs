//! The device memory plan: how many bytes each arena takes, worked out from the layouts before
//! anything is allocated, so that a model that does not fit fails with a number and a hint
//! instead of a driver error halfway through, and so that `gptk info` can print it without a GPU.
//!
//! Arenas and their element types (see `model::layout::Arena`): parameters, gradients,
//! activations and activation gradients in the storage type (bf16 or f32); AdamW moments,
//! statistics and (in bf16) the f32 master weights; i32 inputs. Beside them sit the scratch
//! buffers of the deterministic reductions (sized from the largest shapes the layouts imply)
//! and the cuBLASLt workspace.

use crate::backend::Precision;
use crate::model::layout::{ActLayout, ParamLayout};

/// Bytes of one bf16 value.
pub const BYTES_PER_BF16: usize = 2;
/// Bytes of one f32 (and i32) value.
pub const BYTES_PER_F32: usize = 4;
/// Bytes of one f64 value.
pub const BYTES_PER_F64: usize = 8;
/// Row chunks of the two-stage column reductions (bias and layernorm-weight gradients).
pub const MAX_PARTIALS: usize = 256;
/// Blocks of the sum-of-squares reduction (one f64 partial each).
pub const NORM_MAX_BLOCKS: usize = 1024;
/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (smaller GPUs need 4 MiB).
pub const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Bytes of one storage element.
pub fn storage_bytes(p: Precision) -> usize {
    match p {
        Precision::Bf16 => BYTES_PER_BF16,
        Precision::F32 => BYTES_PER_F32,
    }
}

/// The largest shapes the scratch buffers must serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchSizes {
    /// Widest column reduction (channels of a bias or layernorm gradient).
    pub max_columns: usize,
    /// Most attention rows B·NH·T (the f32 delta of the backward).
    pub attention_rows: usize,
    /// Most token ids one encoder backward reads (B·T).
    pub tokens: usize,
}

impl ScratchSizes {
    /// What the schedule over these layouts needs.
    pub fn for_model(params: &ParamLayout, acts: &ActLayout) -> Self {
        let max_columns = params.specs.iter().filter(|s| s.shape.len() == 1).map(|s| s.tensor.len).max().unwrap_or(0);
        let attention_rows = acts.layers.iter().map(|l| l.att_lse.len).max().unwrap_or(0);
        ScratchSizes { max_columns, attention_rows, tokens: acts.b * acts.t }
    }

    /// f32 elements of the column-reduction partials (two reductions side by side).
    pub fn partial_floats(&self) -> usize {
        MAX_PARTIALS * 2 * self.max_columns
    }

    /// i32 elements of the encoder's token buckets: their count, tokens, bucket starts, positions
    /// (`encoder_backward_wte`'s layout, fixed by the most tokens a batch has).
    pub fn bucket_ints(&self) -> usize {
        3 * self.tokens + 2
    }
}

/// Elements of every arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaSizes {
    pub params: usize,
    pub acts: usize,
    pub act_grads: usize,
    pub stats: usize,
    pub inputs: usize,
}

impl ArenaSizes {
    pub fn for_model(params: &ParamLayout, acts: &ActLayout) -> Self {
        ArenaSizes {
            params: params.total,
            acts: acts.acts_total,
            act_grads: acts.act_grads_total,
            stats: acts.stats_total,
            inputs: acts.inputs_total,
        }
    }
}

/// Bytes of each device buffer for one model and batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub precision: Precision,
    /// (name, bytes) in allocation order.
    pub parts: Vec<(&'static str, usize)>,
    /// Bytes that grow with the batch (activations, their gradients, statistics, inputs and the
    /// batch-shaped scratch), for the "what batch fits" hint.
    pub batch_bytes: usize,
}

impl MemoryPlan {
    /// The plan for explicit arena and scratch sizes.
    pub fn new(sizes: ArenaSizes, scratch: ScratchSizes, precision: Precision) -> Self {
        let s = storage_bytes(precision);
        let f = BYTES_PER_F32;
        let mut parts = vec![("params", sizes.params * s), ("grads", sizes.params * s)];
        if precision == Precision::Bf16 {
            parts.push(("master (f32)", sizes.params * f));
        }
        parts.extend([
            ("adamw m (f32)", sizes.params * f),
            ("adamw v (f32)", sizes.params * f),
            ("activations", sizes.acts * s),
            ("activation grads", sizes.act_grads * s),
            ("stats (f32)", sizes.stats * f),
            ("inputs (i32)", sizes.inputs * f),
        ]);
        let scratch_batch = scratch.attention_rows * f + scratch.bucket_ints() * f;
        parts.extend([
            ("scratch", scratch.partial_floats() * f + NORM_MAX_BLOCKS * BYTES_PER_F64 + scratch_batch),
            ("cuBLASLt workspace", BLAS_WORKSPACE_BYTES),
        ]);
        let batch_bytes = (sizes.acts + sizes.act_grads) * s + (sizes.stats + sizes.inputs) * f + scratch_batch;
        MemoryPlan { precision, parts, batch_bytes }
    }

    /// The plan for a model and its activation layout.
    pub fn for_model(params: &ParamLayout, acts: &ActLayout, precision: Precision) -> Self {
        Self::new(ArenaSizes::for_model(params, acts), ScratchSizes::for_model(params, acts), precision)
    }

    /// Bytes of all parts.
    pub fn total(&self) -> usize {
        self.parts.iter().map(|p| p.1).sum()
    }

    /// The largest batch of the same sequence length that would fit in `free` bytes, assuming
    /// the batch-shaped parts scale linearly with it; `None` if not even one sequence fits.
    pub fn batch_that_fits(&self, batch: usize, free: usize) -> Option<usize> {
        let fixed = self.total() - self.batch_bytes;
        let room = free.checked_sub(fixed)? as u128;
        let fits = (room * batch.max(1) as u128 / self.batch_bytes.max(1) as u128) as usize;
        (fits >= 1).then_some(fits)
    }
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, bytes) in &self.parts {
            writeln!(f, "  {name:<20} {:>10.1} MiB", *bytes as f64 / (1u64 << 20) as f64)?;
        }
        write!(
            f,
            "  {:<20} {:>10.1} MiB ({} storage)",
            "total",
            self.total() as f64 / (1u64 << 20) as f64,
            self.precision
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    #[test]
    fn gpt2_small_plan_counts_every_arena() {
        let cfg = ModelConfig::preset("d12", 50257).unwrap();
        let p = ParamLayout::new(&cfg);
        let a = ActLayout::new(&cfg, 4, 1024, None);
        let bf16 = MemoryPlan::for_model(&p, &a, Precision::Bf16);
        let f32 = MemoryPlan::for_model(&p, &a, Precision::F32);
        // bf16: 2+2 bytes of params and grads plus 3×4 of master, m, v per parameter.
        let param_bytes = |plan: &MemoryPlan| plan.parts.iter().take(5).map(|x| x.1).sum::<usize>();
        assert_eq!(param_bytes(&bf16), p.total * 16);
        assert_eq!(f32.parts.iter().take(4).map(|x| x.1).sum::<usize>(), p.total * 16);
        assert!(f32.total() > bf16.total());
        // The scratch serves the widest bias (4C) and every attention row.
        let s = ScratchSizes::for_model(&p, &a);
        assert_eq!(s.max_columns, 4 * 768);
        assert_eq!(s.attention_rows, 4 * 12 * 1024);
        println!("d12, B=4, T=1024:\n{bf16}");
    }

    #[test]
    fn batch_hint_scales_with_free_memory() {
        let cfg = ModelConfig::preset("tiny", 257).unwrap();
        let p = ParamLayout::new(&cfg);
        let a = ActLayout::new(&cfg, 8, 64, None);
        let plan = MemoryPlan::for_model(&p, &a, Precision::Bf16);
        assert_eq!(plan.batch_that_fits(8, plan.total()), Some(8));
        let half = plan.total() - plan.batch_bytes / 2;
        assert!(matches!(plan.batch_that_fits(8, half), Some(3..=4)));
        assert_eq!(plan.batch_that_fits(8, 1000), None);
    }
}
