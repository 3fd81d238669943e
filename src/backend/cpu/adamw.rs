//! AdamW over the whole parameter arena, and the global gradient norm.

use super::Float;
use super::vector::{simd, sum_f64};
use crate::backend::AdamWStep;
use rayon::prelude::*;

const ELEMS_PER_TASK: usize = 1 << 14;

/// One AdamW step (PyTorch's formulation): m, v updated; p ← p − lr·(wd·p + m̂/(√v̂ + ε)), with
/// weight decay only for elements below `decay_end`. Gradients are scaled by `grad_scale` first.
/// The arithmetic is in F, in the order of `kernels/adamw.cu` (f32 on both, as in PyTorch); the
/// bias corrections are computed once in f64.
pub fn adamw<F: Float>(params: &mut [F], grads: &[F], m: &mut [F], v: &mut [F], step: &AdamWStep, decay_end: usize) {
    let k = Constants {
        b1: F::of(step.beta1 as f64),
        b2: F::of(step.beta2 as f64),
        bc1: F::of(1.0 - (step.beta1 as f64).powi(step.t as i32)),
        bc2: F::of(1.0 - (step.beta2 as f64).powi(step.t as i32)),
        lr: F::of(step.lr as f64),
        eps: F::of(step.eps as f64),
        wd: F::of(step.weight_decay as f64),
        scale: F::of(step.grad_scale as f64),
    };
    params
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(grads.par_chunks(ELEMS_PER_TASK))
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .enumerate()
        .for_each(|(chunk, ((p, g), (m, v)))| {
            // Elements of this chunk below `decay_end` decay, the rest do not.
            let decaying = decay_end.saturating_sub(chunk * ELEMS_PER_TASK).min(p.len());
            let ((p0, p1), (g0, g1)) = (p.split_at_mut(decaying), g.split_at(decaying));
            let ((m0, m1), (v0, v1)) = (m.split_at_mut(decaying), v.split_at_mut(decaying));
            simd!({
                update(p0, g0, m0, v0, &k, k.wd);
                update(p1, g1, m1, v1, &k, F::zero());
            });
        });
}

/// AdamW's scalars in F.
struct Constants<F> {
    b1: F,
    b2: F,
    bc1: F,
    bc2: F,
    lr: F,
    eps: F,
    wd: F,
    scale: F,
}

/// The update of one span of equal weight decay. A function of its own so that the slices are
/// known not to alias (a closure's captured references are not), which lets the loop vectorise.
#[inline(always)]
fn update<F: Float>(p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], k: &Constants<F>, wd: F) {
    let n = p.len();
    let (g, m, v, one) = (&g[..n], &mut m[..n], &mut v[..n], F::one());
    for i in 0..n {
        let g = g[i] * k.scale;
        m[i] = k.b1 * m[i] + (one - k.b1) * g;
        v[i] = k.b2 * v[i] + (one - k.b2) * g * g;
        let step = (m[i] / k.bc1) / ((v[i] / k.bc2).sqrt() + k.eps);
        p[i] -= k.lr * (wd * p[i] + step);
    }
}

/// Σ g² in f64, summed over fixed chunks in order (deterministic).
pub fn norm_squared<F: Float>(g: &[F]) -> f64 {
    let partial: Vec<f64> = g.par_chunks(ELEMS_PER_TASK).map(|c| simd!(sum_f64(c, |x| x.f64() * x.f64()))).collect();
    partial.iter().sum()
}
