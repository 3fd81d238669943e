//! Multi-head scaled-dot-product attention, causal or bidirectional: the naive reference.
//!
//! Same contract as the GPU kernel: the forward keeps only the output and the log-sum-exp of
//! each score row (B, NH, T); the backward recomputes the probabilities from q, k and the LSE,
//! so no (T, T) matrix is ever stored between the passes. One rayon task per (batch, head).

use super::Float;
use rayon::prelude::*;

/// A pointer that may cross threads: each task writes a disjoint set of elements through it.
#[derive(Clone, Copy)]
struct SharedMut<F>(*mut F);
// SAFETY: used only where tasks write disjoint elements (one (batch, head) pair each).
unsafe impl<F> Send for SharedMut<F> {}
unsafe impl<F> Sync for SharedMut<F> {}

impl<F> SharedMut<F> {
    /// SAFETY: `i` in bounds of the original slice and written by this task only.
    unsafe fn at(self, i: usize) -> *mut F {
        unsafe { self.0.add(i) }
    }
}

fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).fold(F::zero(), |s, (&x, &y)| s + x * y)
}

/// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C) laid out [q | k | v], each C = NH·HS.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<F: Float>(
    out: &mut [F],
    lse: &mut [F],
    qkv: &[F],
    b: usize,
    t: usize,
    nh: usize,
    hs: usize,
    causal: bool,
) {
    let c = nh * hs;
    assert!(out.len() >= b * t * c && lse.len() >= b * nh * t && qkv.len() >= b * t * 3 * c);
    let scale = 1.0 / (hs as f64).sqrt();
    let (out_p, lse_p) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..b * nh).into_par_iter().for_each_init(
        || (vec![0f64; t], vec![0f64; hs]),
        |(p, acc), bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let row = |i: usize, part: usize| &qkv[(bi * t + i) * 3 * c + part * c + h * hs..][..hs];
            for i in 0..t {
                let q = row(i, 0);
                let n_keys = if causal { i + 1 } else { t };
                let mut max = f64::NEG_INFINITY;
                for j in 0..n_keys {
                    p[j] = dot(q, row(j, 1)).f64() * scale;
                    max = max.max(p[j]);
                }
                let mut sum = 0.0;
                for pj in &mut p[..n_keys] {
                    *pj = (*pj - max).exp();
                    sum += *pj;
                }
                acc.fill(0.0);
                for j in 0..n_keys {
                    let w = p[j] / sum;
                    for (a, &x) in acc.iter_mut().zip(row(j, 2)) {
                        *a += w * x.f64();
                    }
                }
                // SAFETY: (bi, h) owns out[bi, :, h*HS..(h+1)*HS] and lse[bi, h, :].
                unsafe {
                    for (d, &a) in acc.iter().enumerate() {
                        *out_p.at((bi * t + i) * c + h * hs + d) = F::of(a);
                    }
                    *lse_p.at(bh * t + i) = F::of(max + sum.ln());
                }
            }
        },
    );
}

/// dqkv (B,T,3C) overwritten with the gradient of `attention_forward` given dout (B,T,C).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Float>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    out: &[F],
    lse: &[F],
    b: usize,
    t: usize,
    nh: usize,
    hs: usize,
    causal: bool,
) {
    let c = nh * hs;
    assert!(
        dqkv.len() >= b * t * 3 * c && dout.len() >= b * t * c && out.len() >= b * t * c && lse.len() >= b * nh * t
    );
    let scale = 1.0 / (hs as f64).sqrt();
    let dqkv_p = SharedMut(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each_init(
        || (vec![0f64; t * hs], vec![0f64; t * hs], vec![0f64; hs]),
        |(dk, dv, dq), bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let row = |i: usize, part: usize| &qkv[(bi * t + i) * 3 * c + part * c + h * hs..][..hs];
            dk.fill(0.0);
            dv.fill(0.0);
            for i in 0..t {
                let at = (bi * t + i) * c + h * hs;
                let (q, dy) = (row(i, 0), &dout[at..][..hs]);
                let delta = dot(dy, &out[at..][..hs]).f64();
                let lse_i = lse[bh * t + i].f64();
                let n_keys = if causal { i + 1 } else { t };
                dq.fill(0.0);
                for j in 0..n_keys {
                    let (k, v) = (row(j, 1), row(j, 2));
                    let p = (dot(q, k).f64() * scale - lse_i).exp();
                    let ds = p * (dot(dy, v).f64() - delta) * scale;
                    for d in 0..hs {
                        dv[j * hs + d] += p * dy[d].f64();
                        dq[d] += ds * k[d].f64();
                        dk[j * hs + d] += ds * q[d].f64();
                    }
                }
                // SAFETY: (bi, h) owns the q, k and v columns of head h in batch row bi.
                unsafe {
                    for (d, &x) in dq.iter().enumerate() {
                        *dqkv_p.at((bi * t + i) * 3 * c + h * hs + d) = F::of(x);
                    }
                }
            }
            for j in 0..t {
                // SAFETY: as above.
                unsafe {
                    for d in 0..hs {
                        *dqkv_p.at((bi * t + j) * 3 * c + c + h * hs + d) = F::of(dk[j * hs + d]);
                        *dqkv_p.at((bi * t + j) * 3 * c + 2 * c + h * hs + d) = F::of(dv[j * hs + d]);
                    }
                }
            }
        },
    );
}

/// One generation step: stores k, v of position `pos` from qkv (B,1,3C) into kv (B,Tmax,2C),
/// then out (B,1,C) = causal attention of the new q over positions 0..=pos.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached<F: Float>(
    out: &mut [F],
    qkv: &[F],
    kv: &mut [F],
    b: usize,
    t_max: usize,
    pos: usize,
    nh: usize,
    hs: usize,
) {
    let c = nh * hs;
    assert!(pos < t_max && kv.len() >= b * t_max * 2 * c && qkv.len() >= b * 3 * c && out.len() >= b * c);
    let scale = 1.0 / (hs as f64).sqrt();
    for bi in 0..b {
        let cache = &mut kv[bi * t_max * 2 * c..][..t_max * 2 * c];
        cache[pos * 2 * c..][..2 * c].copy_from_slice(&qkv[bi * 3 * c + c..][..2 * c]);
        let cache = &*cache;
        let mut p = vec![0f64; pos + 1];
        for h in 0..nh {
            let q = &qkv[bi * 3 * c + h * hs..][..hs];
            let mut max = f64::NEG_INFINITY;
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = dot(q, &cache[j * 2 * c + h * hs..][..hs]).f64() * scale;
                max = max.max(*pj);
            }
            let mut sum = 0.0;
            for pj in p.iter_mut() {
                *pj = (*pj - max).exp();
                sum += *pj;
            }
            let o = &mut out[bi * c + h * hs..][..hs];
            o.fill(F::zero());
            for (j, pj) in p.iter().enumerate() {
                let w = F::of(pj / sum);
                for (o, &v) in o.iter_mut().zip(&cache[j * 2 * c + c + h * hs..][..hs]) {
                    *o += w * v;
                }
            }
        }
    }
}
