//! Layer normalisation over the last dimension, forward and backward.

use super::{Float, sum_row_chunks};
use crate::model::config::LAYERNORM_EPS;
use rayon::prelude::*;

/// out (N,C) = (inp − mean)·rstd·w + b; mean, rstd (N) overwritten. Statistics in f64.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<F: Float>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    w: &[F],
    b: &[F],
    n: usize,
    c: usize,
) {
    out[..n * c].par_chunks_mut(c).zip(mean[..n].par_iter_mut().zip(rstd[..n].par_iter_mut())).enumerate().for_each(
        |(i, (row, (m_out, s_out)))| {
            let x = &inp[i * c..][..c];
            let m = x.iter().map(|v| v.f64()).sum::<f64>() / c as f64;
            let var = x.iter().map(|v| (v.f64() - m).powi(2)).sum::<f64>() / c as f64;
            let s = 1.0 / (var + LAYERNORM_EPS as f64).sqrt();
            for k in 0..c {
                row[k] = F::of((x[k].f64() - m) * s) * w[k] + b[k];
            }
            *m_out = F::of(m);
            *s_out = F::of(s);
        },
    );
}

/// dinp (N,C) +=, dw (C) +=, db (C) += the gradients of `layernorm_forward` given dout.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Float>(
    dinp: &mut [F],
    dw: &mut [F],
    db: &mut [F],
    dout: &[F],
    inp: &[F],
    w: &[F],
    mean: &[F],
    rstd: &[F],
    n: usize,
    c: usize,
) {
    dinp[..n * c].par_chunks_mut(c).enumerate().for_each(|(i, drow)| {
        let (x, dy) = (&inp[i * c..][..c], &dout[i * c..][..c]);
        let (m, s) = (mean[i].f64(), rstd[i].f64());
        let (mut dnorm_mean, mut dnorm_norm_mean) = (0.0f64, 0.0f64);
        for k in 0..c {
            let norm = (x[k].f64() - m) * s;
            let dnorm = w[k].f64() * dy[k].f64();
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= c as f64;
        dnorm_norm_mean /= c as f64;
        for k in 0..c {
            let norm = (x[k].f64() - m) * s;
            let dnorm = w[k].f64() * dy[k].f64();
            drow[k] += F::of((dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
        }
    });
    // dw and db: [dw | db] partial sums over fixed row chunks, added in order.
    let sums = sum_row_chunks(n, 2 * c, |i, acc| {
        let (x, dy) = (&inp[i * c..][..c], &dout[i * c..][..c]);
        let (m, s) = (mean[i].f64(), rstd[i].f64());
        for k in 0..c {
            acc[k] += (x[k].f64() - m) * s * dy[k].f64();
            acc[c + k] += dy[k].f64();
        }
    });
    for k in 0..c {
        dw[k] += F::of(sums[k]);
        db[k] += F::of(sums[c + k]);
    }
}
