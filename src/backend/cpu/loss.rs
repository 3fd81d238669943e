//! Fused softmax cross-entropy over the padded vocabulary, with an ignore index.
//!
//! The softmax runs over the first V columns only; the padding columns (special tokens and
//! alignment) never receive probability. With a `dloss` the logits are overwritten by
//! dlogits = dloss·(softmax − onehot), so the classifier needs no second (N, Vp) buffer.

use super::Float;
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
        // exp in the storage type (f32 for training, several times faster than f64), on
        // differences from the row's maximum; sums in f64.
        let max = row[..v].iter().fold(F::neg_infinity(), |m, &x| m.max(x));
        let sum: f64 = row[..v].iter().map(|&x| (x - max).exp().f64()).sum();
        let log_sum = sum.ln();
        *loss = F::of(max.f64() + log_sum - row[target].f64());
        if let Some(dloss) = dloss {
            let (dloss, log_sum) = (dloss.f64(), F::of(log_sum));
            for (j, x) in row[..v].iter_mut().enumerate() {
                let p = ((*x - max) - log_sum).exp().f64();
                let indicator = if j == target { 1.0 } else { 0.0 };
                *x = F::of((p - indicator) * dloss);
            }
            row[v..].fill(F::zero());
        }
    });
}
