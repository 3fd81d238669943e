//! Fused softmax cross-entropy over the padded vocabulary, with an ignore index.
//!
//! The softmax runs over the first V columns only; the padding columns (special tokens and
//! alignment) never receive probability. With a `dloss` the logits are overwritten by
//! dlogits = dloss·(softmax − onehot), so the classifier needs no second (N, Vp) buffer.

use super::Float;
use super::vector::{max_of, simd, sum_exp, sum_f64};
use rayon::prelude::*;

/// losses (N) = −log softmax(logits[n, :V])[targets[n]], 0 where targets[n] < 0.
/// With `dloss`, logits (N,Vp) become dlogits (0 in columns ≥ V and in ignored rows).
pub fn cross_entropy<F: Float>(
    losses: &mut [F],
    logits: &mut [F],
    targets: &[i32],
    n: usize,
    v: usize,
    vp: usize,
    dloss: Option<F>,
) {
    logits[..n * vp].par_chunks_mut(vp).zip(losses[..n].par_iter_mut()).enumerate().for_each(|(i, (row, loss))| {
        let target = targets[i];
        if target < 0 {
            *loss = F::zero();
            if dloss.is_some() {
                row.fill(F::zero());
            }
            return;
        }
        let target = target as usize;
        assert!(target < v, "target {target} outside the vocabulary of {v}");
        simd!(softmax_xent_row(row, loss, target, v, dloss));
    });
}

/// One row of [`cross_entropy`] with a target in 0..v: exp in the storage type (f32 for
/// training: vectorised, [`Float::exp_fast`]) on differences from the row's maximum, sums in f64.
/// With `dloss` the exponentials are written into the row, which becomes the gradient, so each
/// logit costs one `exp`; without, they go through a buffer and the logits stay as they are.
/// A function of its own so the row is known not to alias anything (see `adamw::update`).
#[inline(always)]
fn softmax_xent_row<F: Float>(row: &mut [F], loss: &mut F, target: usize, v: usize, dloss: Option<F>) {
    let max = max_of(&row[..v]);
    let target_logit = row[target].f64();
    let Some(dloss) = dloss else {
        *loss = F::of(max.f64() + sum_exp(&row[..v], max).ln() - target_logit);
        return;
    };
    let (logits, padding) = row.split_at_mut(v);
    logits.iter_mut().for_each(|x| *x = (*x - max).exp_fast());
    let sum = sum_f64(logits, F::f64);
    *loss = F::of(max.f64() + sum.ln() - target_logit);
    // dlogits = dloss·(softmax − onehot)
    let scale = F::of(dloss.f64() / sum);
    logits.iter_mut().for_each(|x| *x *= scale);
    logits[target] -= dloss;
    padding.fill(F::zero());
}
