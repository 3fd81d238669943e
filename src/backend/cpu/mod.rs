//! The CPU reference backend: every op as a plain function over slices, and the arenas behind
//! the schedule's handles.
//!
//! The op functions (`encoder_forward`, `layernorm_backward`, …) are what the GPU kernels are
//! checked against, so they aim to be obviously right: one function per op, shapes in the doc
//! line, f64 for reductions. They are generic over [`Float`] so the tests can run them in f64
//! against finite differences; the trainer runs them in f32. Every reduction sums fixed chunks in
//! a fixed order, so results are bitwise reproducible whatever the thread count. Matmuls go
//! through the `gemm` crate; the element-wise loops are compiled for AVX2 where the CPU has it
//! and take e^x from a vectorisable f32 `exp` within 2 ulp ([`vector`]).

pub mod adamw;
pub mod attention;
pub mod encoder;
pub mod gelu;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod vector;

pub use adamw::{adamw, norm_squared};
pub use attention::{attention_backward, attention_cached, attention_forward};
pub use encoder::{encoder_backward, encoder_forward};
pub use gelu::{gelu_backward, gelu_forward, residual_forward};
pub use layernorm::{layernorm_backward, layernorm_forward};
pub use loss::cross_entropy;
pub use matmul::{matmul_backward, matmul_forward};

use super::{AdamWStep, Backend, BackendError, Precision, Result, StepOutcome};
use crate::dist::group::Group;
use crate::model::layout::{ActLayout, Arena, Tensor};
use rayon::prelude::*;
use std::fmt::Debug;
use std::ops::Range;

/// The element types the reference runs in: f32 for training, f64 for gradient checks.
pub trait Float: num_traits::Float + num_traits::NumAssign + Send + Sync + Default + Debug + 'static {
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// e^self: within 2 ulp and vectorisable for f32 ([`vector::exp_f32`]), libm's for f64.
    fn exp_fast(self) -> Self;
}

impl Float for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        vector::exp_f32(self)
    }
}

impl Float for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
}

/// Rows per task in column-wise reductions (bias and layernorm-weight gradients).
const ROWS_PER_CHUNK: usize = 64;

/// Σ over rows 0..n of `add_row(row, acc)` into a `width`-long f64 vector: rows are grouped into
/// fixed chunks summed in parallel, then the chunk sums are added in chunk order.
pub(crate) fn sum_row_chunks(n: usize, width: usize, add_row: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f64> {
    let partials: Vec<Vec<f64>> = (0..n.div_ceil(ROWS_PER_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0.0; width];
            for row in chunk * ROWS_PER_CHUNK..((chunk + 1) * ROWS_PER_CHUNK).min(n) {
                add_row(row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0; width];
    for p in partials {
        for (t, x) in total.iter_mut().zip(p) {
            *t += x;
        }
    }
    total
}

/// The CPU backend's memory: one vector per arena.
pub struct CpuBackend<F: Float = f32> {
    pub params: Vec<F>,
    pub grads: Vec<F>,
    pub opt_m: Vec<F>,
    pub opt_v: Vec<F>,
    pub acts: Vec<F>,
    pub act_grads: Vec<F>,
    pub stats: Vec<F>,
    pub inputs: Vec<i32>,
    /// The data-parallel group this backend reduces gradients with (none: a world of one).
    pub group: Option<Group>,
    /// The values of the next `optimizer_step` (`set_step`) and what the last one found.
    next_step: Option<(AdamWStep, f32)>,
    outcome: Option<StepOutcome>,
}

/// Raw views of every arena for one op: lets an op take several disjoint spans of the same
/// arena, mutable and shared, after [`disjoint`] has checked they do not overlap.
struct Bases<F> {
    floats: [(*mut F, usize); 7],
    ints: (*mut i32, usize),
}

fn float_index(a: Arena) -> usize {
    match a {
        Arena::Params => 0,
        Arena::Grads => 1,
        Arena::OptM => 2,
        Arena::OptV => 3,
        Arena::Acts => 4,
        Arena::ActGrads => 5,
        Arena::Stats => 6,
        Arena::Inputs => panic!("the Inputs arena holds i32, not floats"),
    }
}

impl<F> Bases<F> {
    fn span<X>(base: (*mut X, usize), t: Tensor) -> *mut X {
        assert!(t.end() <= base.1, "{t:?} is outside its arena of {} elements", base.1);
        // SAFETY: in bounds (asserted).
        unsafe { base.0.add(t.offset) }
    }
    /// SAFETY: `t` is not aliased by any other span in use (see [`disjoint`]).
    unsafe fn mutable<'a>(&self, t: Tensor) -> &'a mut [F] {
        unsafe { std::slice::from_raw_parts_mut(Self::span(self.floats[float_index(t.arena)], t), t.len) }
    }
    /// SAFETY: `t` is not written through another span during the op.
    unsafe fn shared<'a>(&self, t: Tensor) -> &'a [F] {
        unsafe { std::slice::from_raw_parts(Self::span(self.floats[float_index(t.arena)], t), t.len) }
    }
    /// SAFETY: the Inputs arena is only written by `upload_ints`, never during an op.
    unsafe fn ints<'a>(&self, t: Tensor) -> &'a [i32] {
        assert_eq!(t.arena, Arena::Inputs, "token ids live in the Inputs arena");
        unsafe { std::slice::from_raw_parts(Self::span(self.ints, t), t.len) }
    }
}

/// Panics when a written span overlaps any other span of the op: a schedule bug, never input.
fn disjoint(writes: &[Tensor], reads: &[Tensor]) {
    for (i, w) in writes.iter().enumerate() {
        for other in writes[i + 1..].iter().chain(reads) {
            assert!(!w.overlaps(*other), "op writes {w:?} while using the overlapping {other:?}");
        }
    }
}

impl<F: Float> CpuBackend<F> {
    /// Zeroed arenas for `param_total` parameters and the activation plan `acts`.
    pub fn new(param_total: usize, acts: &ActLayout) -> Self {
        let sizes = [acts.acts_total, acts.act_grads_total, acts.stats_total, acts.inputs_total];
        Self::with_sizes(param_total, sizes)
    }

    /// Zeroed arenas of these sizes: the parameter-like ones of `param_total` elements, then
    /// [activations, activation gradients, statistics, inputs].
    pub fn with_sizes(param_total: usize, [acts, act_grads, stats, inputs]: [usize; 4]) -> Self {
        CpuBackend {
            params: vec![F::zero(); param_total],
            grads: vec![F::zero(); param_total],
            opt_m: vec![F::zero(); param_total],
            opt_v: vec![F::zero(); param_total],
            acts: vec![F::zero(); acts],
            act_grads: vec![F::zero(); act_grads],
            stats: vec![F::zero(); stats],
            inputs: vec![0; inputs],
            group: None,
            next_step: None,
            outcome: None,
        }
    }

    /// The backend as one rank of a data-parallel group; `param_total` must be the arena padded
    /// to equal shards (`ParamLayout::padded_total`).
    pub fn with_group(mut self, group: Group) -> Self {
        self.group = Some(group);
        self
    }

    /// Every rank's shard of one parameter-like arena, on every rank.
    fn gather(&mut self, arena: Arena, shard_len: usize) -> Result<()> {
        let Some(group) = self.group.as_mut() else { return Ok(()) };
        let rank = group.rank();
        let data = match arena {
            Arena::Params => &mut self.params,
            Arena::OptM => &mut self.opt_m,
            Arena::OptV => &mut self.opt_v,
            other => unreachable!("gather of {other:?}"),
        };
        let mine: Vec<f64> = data[rank * shard_len..(rank + 1) * shard_len].iter().map(|x| x.f64()).collect();
        let mut all = vec![0f64; shard_len * group.world()];
        group.all_gather(&mine, &mut all).map_err(|e| BackendError::Device(e.to_string()))?;
        for (d, x) in data.iter_mut().zip(all) {
            *d = F::of(x);
        }
        Ok(())
    }

    /// Bytes the arenas of a model with `param_total` parameters and the plan `acts` take.
    pub fn bytes_for(param_total: usize, acts: &ActLayout) -> usize {
        let floats = 4 * param_total + acts.acts_total + acts.act_grads_total + acts.stats_total;
        floats * std::mem::size_of::<F>() + acts.inputs_total * std::mem::size_of::<i32>()
    }

    /// One arena as a slice.
    pub fn arena(&self, a: Arena) -> &[F] {
        match a {
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::OptM => &self.opt_m,
            Arena::OptV => &self.opt_v,
            Arena::Acts => &self.acts,
            Arena::ActGrads => &self.act_grads,
            Arena::Stats => &self.stats,
            Arena::Inputs => panic!("the Inputs arena holds i32, not floats"),
        }
    }

    /// One arena as a mutable slice.
    pub fn arena_mut(&mut self, a: Arena) -> &mut [F] {
        match a {
            Arena::Params => &mut self.params,
            Arena::Grads => &mut self.grads,
            Arena::OptM => &mut self.opt_m,
            Arena::OptV => &mut self.opt_v,
            Arena::Acts => &mut self.acts,
            Arena::ActGrads => &mut self.act_grads,
            Arena::Stats => &mut self.stats,
            Arena::Inputs => panic!("the Inputs arena holds i32, not floats"),
        }
    }

    /// The elements of one tensor.
    pub fn get(&self, t: Tensor) -> &[F] {
        &self.arena(t.arena)[t.offset..t.end()]
    }

    /// The elements of one tensor, mutable.
    pub fn get_mut(&mut self, t: Tensor) -> &mut [F] {
        &mut self.arena_mut(t.arena)[t.offset..t.end()]
    }

    fn bases(&mut self) -> Bases<F> {
        let raw = |v: &mut Vec<F>| (v.as_mut_ptr(), v.len());
        Bases {
            floats: [
                raw(&mut self.params),
                raw(&mut self.grads),
                raw(&mut self.opt_m),
                raw(&mut self.opt_v),
                raw(&mut self.acts),
                raw(&mut self.act_grads),
                raw(&mut self.stats),
            ],
            ints: (self.inputs.as_mut_ptr(), self.inputs.len()),
        }
    }
}

impl<F: Float> Backend for CpuBackend<F> {
    fn describe(&self) -> String {
        let simd = if vector::simd_enabled() { ", AVX2" } else { "" };
        format!("cpu ({} threads, {}{simd})", rayon::current_num_threads(), std::any::type_name::<F>())
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn zero(&mut self, t: Tensor) -> Result<()> {
        match t.arena {
            Arena::Inputs => self.inputs[t.offset..t.end()].fill(0),
            _ => self.get_mut(t).fill(F::zero()),
        }
        Ok(())
    }

    fn upload(&mut self, t: Tensor, data: &[f32]) -> Result<()> {
        assert_eq!(data.len(), t.len, "upload of {} values into {t:?}", data.len());
        for (d, &x) in self.get_mut(t).iter_mut().zip(data) {
            *d = F::of(x as f64);
        }
        Ok(())
    }

    fn upload_ints(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        assert_eq!(t.arena, Arena::Inputs);
        assert_eq!(data.len(), t.len, "upload of {} ids into {t:?}", data.len());
        self.inputs[t.offset..t.end()].copy_from_slice(data);
        Ok(())
    }

    fn download(&mut self, t: Tensor) -> Result<Vec<f32>> {
        Ok(self.get(t).iter().map(|x| x.f64() as f32).collect())
    }

    fn encoder_forward(
        &mut self,
        out: Tensor,
        tokens: Tensor,
        wte: Tensor,
        wpe: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[out], &[wte, wpe]);
        // SAFETY: spans checked disjoint; the arenas are not resized during the op.
        unsafe { encoder_forward(m.mutable(out), m.ints(tokens), m.shared(wte), m.shared(wpe), b, t, c) };
        Ok(())
    }

    fn encoder_backward(
        &mut self,
        dwte: Tensor,
        dwpe: Tensor,
        dout: Tensor,
        tokens: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[dwte, dwpe], &[dout]);
        // SAFETY: as above.
        unsafe { encoder_backward(m.mutable(dwte), m.mutable(dwpe), m.shared(dout), m.ints(tokens), b, t, c) };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[out, mean, rstd], &[inp, w, bias]);
        // SAFETY: as above.
        unsafe {
            layernorm_forward(
                m.mutable(out),
                m.mutable(mean),
                m.mutable(rstd),
                m.shared(inp),
                m.shared(w),
                m.shared(bias),
                n,
                c,
            )
        };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[dinp, dw, db], &[dout, inp, w, mean, rstd]);
        // SAFETY: as above.
        unsafe {
            layernorm_backward(
                m.mutable(dinp),
                m.mutable(dw),
                m.mutable(db),
                m.shared(dout),
                m.shared(inp),
                m.shared(w),
                m.shared(mean),
                m.shared(rstd),
                n,
                c,
            )
        };
        Ok(())
    }

    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[out], &[inp, w]);
        if let Some(b) = bias {
            disjoint(&[out], &[b]);
        }
        // SAFETY: as above.
        unsafe { matmul_forward(m.mutable(out), m.shared(inp), m.shared(w), bias.map(|b| m.shared(b)), n, c, oc) };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        let mut writes = vec![dinp, dw];
        writes.extend(dbias);
        disjoint(&writes, &[dout, inp, w]);
        // SAFETY: as above.
        unsafe {
            matmul_backward(
                m.mutable(dinp),
                m.mutable(dw),
                dbias.map(|b| m.mutable(b)),
                m.shared(dout),
                m.shared(inp),
                m.shared(w),
                n,
                c,
                oc,
            )
        };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[out, lse], &[qkv]);
        // SAFETY: as above.
        unsafe { attention_forward(m.mutable(out), m.mutable(lse), m.shared(qkv), b, t, nh, hs, causal) };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[dqkv], &[dout, qkv, out, lse]);
        // SAFETY: as above.
        unsafe {
            attention_backward(
                m.mutable(dqkv),
                m.shared(dout),
                m.shared(qkv),
                m.shared(out),
                m.shared(lse),
                b,
                t,
                nh,
                hs,
                causal,
            )
        };
        Ok(())
    }

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
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[out, kv], &[qkv]);
        // SAFETY: as above.
        unsafe { attention_cached(m.mutable(out), m.shared(qkv), m.mutable(kv), b, t_max, pos, nh, hs) };
        Ok(())
    }

    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        let m = self.bases();
        disjoint(&[out], &[inp]);
        // SAFETY: as above.
        unsafe { gelu_forward(m.mutable(out), m.shared(inp)) };
        Ok(())
    }

    fn gelu_backward(&mut self, d: Tensor, inp: Tensor) -> Result<()> {
        let m = self.bases();
        disjoint(&[d], &[inp]);
        // SAFETY: as above.
        unsafe { gelu_backward(m.mutable(d), m.shared(inp)) };
        Ok(())
    }

    fn residual_forward(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()> {
        let m = self.bases();
        disjoint(&[out], &[a, b]);
        // SAFETY: as above.
        unsafe { residual_forward(m.mutable(out), m.shared(a), m.shared(b)) };
        Ok(())
    }

    fn cross_entropy(
        &mut self,
        losses: Tensor,
        logits: Tensor,
        targets: Tensor,
        n: usize,
        v: usize,
        vp: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        let m = self.bases();
        disjoint(&[losses, logits], &[]);
        // SAFETY: as above.
        unsafe {
            cross_entropy(
                m.mutable(losses),
                m.mutable(logits),
                m.ints(targets),
                n,
                v,
                vp,
                dloss.map(|d| F::of(d as f64)),
            )
        };
        Ok(())
    }

    fn grad_norm_squared(&mut self, range: Range<usize>) -> Result<f64> {
        Ok(norm_squared(&self.grads[range]))
    }

    fn set_step(&mut self, step: &AdamWStep, clip: f32) -> Result<()> {
        self.next_step = Some((*step, clip));
        Ok(())
    }

    fn optimizer_step(&mut self, losses: Tensor, count: usize, decay_end: usize, range: Range<usize>) -> Result<()> {
        let (step, clip) =
            self.next_step.ok_or_else(|| BackendError::Device("optimizer_step before set_step".into()))?;
        let loss_sum = super::sum_losses(&self.download(losses)?);
        let grad_norm = self.grad_norm_squared(range.clone())?.sqrt() as f32;
        let grad_scale = super::clip_scale(grad_norm, clip);
        let applied = count > 0 && loss_sum.is_finite() && grad_norm.is_finite();
        if applied {
            self.adamw(&AdamWStep { grad_scale, ..step }, decay_end, range)?;
        }
        self.outcome = Some(StepOutcome { loss_sum, grad_norm, applied });
        Ok(())
    }

    fn step_outcome(&mut self) -> Result<StepOutcome> {
        self.outcome.ok_or_else(|| BackendError::Device("step_outcome before optimizer_step".into()))
    }

    fn adamw(&mut self, step: &AdamWStep, decay_end: usize, range: Range<usize>) -> Result<()> {
        let decay_end = decay_end.saturating_sub(range.start).min(range.len());
        let r = range.clone();
        adamw(
            &mut self.params[r.clone()],
            &self.grads[r.clone()],
            &mut self.opt_m[r.clone()],
            &mut self.opt_v[r],
            step,
            decay_end,
        );
        Ok(())
    }

    fn rank_world(&self) -> (usize, usize) {
        self.group.as_ref().map_or((0, 1), |g| (g.rank(), g.world()))
    }

    fn reduce_scatter_grads(&mut self, shard_len: usize) -> Result<()> {
        let Some(group) = self.group.as_mut() else { return Ok(()) };
        let (rank, world) = (group.rank(), group.world());
        // A sum of the whole arena through rank 0 (simple and exact; the CPU group is for
        // correctness, not bandwidth), then the mean of this rank's shard.
        let mut sum: Vec<f64> = self.grads.iter().map(|g| g.f64()).collect();
        group.all_reduce_sum(&mut sum).map_err(|e| BackendError::Device(e.to_string()))?;
        let shard = rank * shard_len..(rank + 1) * shard_len;
        for (g, s) in self.grads[shard.clone()].iter_mut().zip(&sum[shard]) {
            *g = F::of(s / world as f64);
        }
        Ok(())
    }

    fn all_gather_params(&mut self, shard_len: usize) -> Result<()> {
        self.gather(Arena::Params, shard_len)
    }

    fn all_gather_optimizer_state(&mut self, shard_len: usize) -> Result<()> {
        self.gather(Arena::OptM, shard_len)?;
        self.gather(Arena::OptV, shard_len)
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        match self.group.as_mut() {
            Some(g) => g.all_reduce_sum(values).map_err(|e| BackendError::Device(e.to_string())),
            None => Ok(()),
        }
    }
}
