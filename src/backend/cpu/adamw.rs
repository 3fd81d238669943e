//! AdamW over the whole parameter arena, and the global gradient norm.

use super::Float;
use crate::backend::AdamWStep;
use rayon::prelude::*;

const ELEMS_PER_TASK: usize = 1 << 14;

/// One AdamW step (PyTorch's formulation): m, v updated; p ← p − lr·(wd·p + m̂/(√v̂ + ε)), with
/// weight decay only for elements below `decay_end`. Gradients are scaled by `grad_scale` first.
pub fn adamw<F: Float>(params: &mut [F], grads: &[F], m: &mut [F], v: &mut [F], step: &AdamWStep, decay_end: usize) {
    let (b1, b2) = (step.beta1 as f64, step.beta2 as f64);
    let bc1 = 1.0 - b1.powi(step.t as i32);
    let bc2 = 1.0 - b2.powi(step.t as i32);
    let (lr, eps, wd, scale) = (step.lr as f64, step.eps as f64, step.weight_decay as f64, step.grad_scale as f64);
    params
        .par_chunks_mut(ELEMS_PER_TASK)
        .zip(grads.par_chunks(ELEMS_PER_TASK))
        .zip(m.par_chunks_mut(ELEMS_PER_TASK).zip(v.par_chunks_mut(ELEMS_PER_TASK)))
        .enumerate()
        .for_each(|(chunk, ((p, g), (m, v)))| {
            let base = chunk * ELEMS_PER_TASK;
            for i in 0..p.len() {
                let g = g[i].f64() * scale;
                let mi = b1 * m[i].f64() + (1.0 - b1) * g;
                let vi = b2 * v[i].f64() + (1.0 - b2) * g * g;
                m[i] = F::of(mi);
                v[i] = F::of(vi);
                let decay = if base + i < decay_end { wd } else { 0.0 };
                let pi = p[i].f64();
                let update = (mi / bc1) / ((vi / bc2).sqrt() + eps);
                p[i] = F::of(pi - lr * (decay * pi + update));
            }
        });
}

/// Σ g² in f64, summed over fixed chunks in order (deterministic).
pub fn norm_squared<F: Float>(g: &[F]) -> f64 {
    let partial: Vec<f64> = g.par_chunks(ELEMS_PER_TASK).map(|c| c.iter().map(|x| x.f64() * x.f64()).sum()).collect();
    partial.iter().sum()
}
