//! Multi-head scaled-dot-product attention, causal or bidirectional: the reference.
//!
//! Same contract as the GPU kernel: the forward keeps only the output and the log-sum-exp of
//! each score row (B, NH, T); the backward recomputes the probabilities from q, k and the LSE,
//! so no (T, T) matrix is kept between the passes. One rayon task per (batch, head), each the
//! textbook matrix form with a private (T, T) scratch and single-threaded GEMMs on strided views
//! of qkv (no copies), so results do not depend on the thread count.

use super::Float;
use super::matmul::gemm_raw;
use gemm::Parallelism;
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

/// Per-task scratch: two (T, T) matrices.
fn scratch<F: Float>(t: usize) -> (Vec<F>, Vec<F>) {
    (vec![F::zero(); t * t], vec![F::zero(); t * t])
}

/// P (T,T) row-major = softmax rows of `scale · q kᵀ` for head `h` of batch row `bi`, with
/// future keys masked when `causal`; the log-sum-exp of each row goes to `lse_row` if given,
/// else `lse_in` supplies it (the backward's recomputation).
#[allow(clippy::too_many_arguments)]
fn probabilities<F: Float>(
    p: &mut [F],
    qkv: &[F],
    (bi, h): (usize, usize),
    (t, c, hs): (usize, usize, usize),
    causal: bool,
    lse_in: Option<&[F]>,
    mut lse_out: impl FnMut(usize, f64),
) {
    let base = bi * t * 3 * c + h * hs;
    let scale = 1.0 / (hs as f64).sqrt();
    // SAFETY: q rows at base + i·3C, k rows at base + C + j·3C, HS wide, all inside qkv (the
    // caller checked qkv holds B·T·3C); p is a private T×T buffer.
    unsafe {
        let q = qkv.as_ptr().add(base);
        gemm_raw((t, t, hs), p.as_mut_ptr(), (t, 1), false, q, (3 * c, 1), q.add(c), (1, 3 * c), Parallelism::None);
    }
    for i in 0..t {
        let row = &mut p[i * t..(i + 1) * t];
        let n_keys = if causal { i + 1 } else { t };
        let lse = match lse_in {
            Some(lse) => lse[i].f64(),
            None => {
                let max = row[..n_keys].iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x.f64() * scale));
                let sum: f64 = row[..n_keys].iter().map(|&x| (x.f64() * scale - max).exp()).sum();
                let lse = max + sum.ln();
                lse_out(i, lse);
                lse
            }
        };
        for x in &mut row[..n_keys] {
            *x = F::of((x.f64() * scale - lse).exp());
        }
        row[n_keys..].fill(F::zero());
    }
}

/// out (B,T,C), lse (B,NH,T) from qkv (B,T,3C) laid out [q | k | v], each C = NH·HS.
/// Per (batch, head): S = q·kᵀ/√HS, P = softmax(S) (masked), out = P·v, as three GEMMs.
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
    let (out_p, lse_p) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..b * nh).into_par_iter().for_each_init(
        || scratch::<F>(t),
        |(p, _), bh| {
            let (bi, h) = (bh / nh, bh % nh);
            // SAFETY: task (bi, h) alone writes lse[bi, h, :].
            probabilities(p, qkv, (bi, h), (t, c, hs), causal, None, |i, x| unsafe {
                *lse_p.at(bh * t + i) = F::of(x)
            });
            // SAFETY: out = P·v writes out[bi, :, h·HS..(h+1)·HS] (rows of stride C), owned by
            // this task; v rows sit at 2C past the q rows, inside qkv.
            unsafe {
                let v = qkv.as_ptr().add(bi * t * 3 * c + 2 * c + h * hs);
                let dst = out_p.at(bi * t * c + h * hs);
                gemm_raw((t, hs, t), dst, (c, 1), false, p.as_ptr(), (t, 1), v, (3 * c, 1), Parallelism::None);
            }
        },
    );
}

/// dqkv (B,T,3C) overwritten with the gradient of `attention_forward` given dout (B,T,C).
/// Per (batch, head), with P recomputed from q, k and the saved LSE:
/// dv = Pᵀ·dout, dP = dout·vᵀ, dS = P∘(dP − rowsum(dout∘out)), dq = dS·k/√HS, dk = dSᵀ·q/√HS.
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
        || scratch::<F>(t),
        |(p, ds), bh| {
            let (bi, h) = (bh / nh, bh % nh);
            probabilities(p, qkv, (bi, h), (t, c, hs), causal, Some(&lse[bh * t..(bh + 1) * t]), |_, _| {});
            let head = bi * t * c + h * hs; // row 0 of this head in out / dout (row stride C)
            let qkv_head = bi * t * 3 * c + h * hs; // row 0 of q (k at +C, v at +2C; stride 3C)
            // SAFETY: reads stay inside qkv/dout (checked sizes); ds and p are private; the dq, dk,
            // dv columns of head h in batch row bi are written by this task only.
            unsafe {
                let v = qkv.as_ptr().add(qkv_head + 2 * c);
                let dy = dout.as_ptr().add(head);
                let dst = dqkv_p.at(qkv_head);
                // dv = Pᵀ · dout
                gemm_raw(
                    (t, hs, t),
                    dst.add(2 * c),
                    (3 * c, 1),
                    false,
                    p.as_ptr(),
                    (1, t),
                    dy,
                    (c, 1),
                    Parallelism::None,
                );
                // dP = dout · vᵀ
                gemm_raw((t, t, hs), ds.as_mut_ptr(), (t, 1), false, dy, (c, 1), v, (1, 3 * c), Parallelism::None);
            }
            for i in 0..t {
                let (o, dy) = (&out[head + i * c..][..hs], &dout[head + i * c..][..hs]);
                let delta: f64 = o.iter().zip(dy).map(|(a, b)| a.f64() * b.f64()).sum();
                let n_keys = if causal { i + 1 } else { t };
                for j in 0..n_keys {
                    ds[i * t + j] = F::of(p[i * t + j].f64() * (ds[i * t + j].f64() - delta) * scale);
                }
                ds[i * t + n_keys..(i + 1) * t].fill(F::zero());
            }
            // SAFETY: as above.
            unsafe {
                let (q, k) = (qkv.as_ptr().add(qkv_head), qkv.as_ptr().add(qkv_head + c));
                let dst = dqkv_p.at(qkv_head);
                // dq = dS · k ; dk = dSᵀ · q
                gemm_raw((t, hs, t), dst, (3 * c, 1), false, ds.as_ptr(), (t, 1), k, (3 * c, 1), Parallelism::None);
                gemm_raw(
                    (t, hs, t),
                    dst.add(c),
                    (3 * c, 1),
                    false,
                    ds.as_ptr(),
                    (1, t),
                    q,
                    (3 * c, 1),
                    Parallelism::None,
                );
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
