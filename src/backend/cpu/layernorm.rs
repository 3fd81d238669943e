//! Layer normalisation over the last dimension, forward and backward.

use super::vector::{dot_f64, simd, sum_by, sum_f64};
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
            let (m, s) = simd!(normalise_row(row, &inp[i * c..][..c], &w[..c], &b[..c]));
            *m_out = F::of(m);
            *s_out = F::of(s);
        },
    );
}

/// y = (x − mean)·rstd·w + b for one row, statistics in f64, the output in F; returns (mean,
/// rstd). A function of its own so that its slices are known not to alias (see `adamw::update`).
#[inline(always)]
fn normalise_row<F: Float>(y: &mut [F], x: &[F], w: &[F], b: &[F]) -> (f64, f64) {
    let c = y.len();
    let (x, w, b) = (&x[..c], &w[..c], &b[..c]);
    let m = sum_f64(x, F::f64) / c as f64;
    let var = sum_f64(x, |v| (v.f64() - m) * (v.f64() - m)) / c as f64;
    let s = 1.0 / (var + LAYERNORM_EPS as f64).sqrt();
    let (mf, sf) = (F::of(m), F::of(s));
    for k in 0..c {
        y[k] = (x[k] - mf) * sf * w[k] + b[k];
    }
    (m, s)
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
        simd!(layernorm_backward_row(drow, x, dy, &w[..c], mean[i].f64(), rstd[i].f64()))
    });
    // dw and db: [dw | db] partial sums over fixed row chunks, added in order.
    let sums = sum_row_chunks(n, 2 * c, |i, acc| {
        simd!({
            let (x, dy) = (&inp[i * c..][..c], &dout[i * c..][..c]);
            let (m, s) = (mean[i].f64(), rstd[i].f64());
            let (dw, db) = acc.split_at_mut(c);
            for (((dw, db), &x), &dy) in dw.iter_mut().zip(db).zip(x).zip(dy) {
                *dw += (x.f64() - m) * s * dy.f64();
                *db += dy.f64();
            }
        })
    });
    for k in 0..c {
        dw[k] += F::of(sums[k]);
        db[k] += F::of(sums[c + k]);
    }
}

/// dx += (w·dy − mean(w·dy) − norm·mean(w·dy·norm))·rstd for one row, the two means in f64. A
/// function of its own so that its slices are known not to alias (see `adamw::update`).
#[inline(always)]
fn layernorm_backward_row<F: Float>(dx: &mut [F], x: &[F], dy: &[F], w: &[F], m: f64, s: f64) {
    let c = dx.len();
    let (x, dy, w, c64) = (&x[..c], &dy[..c], &w[..c], c as f64);
    let dnorm_mean = dot_f64(w, dy, F::f64) / c64;
    let dnorm_norm_mean = sum_by(c, |k| w[k].f64() * dy[k].f64() * ((x[k].f64() - m) * s)) / c64;
    let (mf, sf, a, b) = (F::of(m), F::of(s), F::of(dnorm_mean), F::of(dnorm_norm_mean));
    for k in 0..c {
        let norm = (x[k] - mf) * sf;
        dx[k] += (w[k] * dy[k] - a - norm * b) * sf;
    }
}
