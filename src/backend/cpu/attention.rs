//! Multi-head scaled-dot-product attention, causal or bidirectional: the reference.
//!
//! Same contract as the GPU kernel: the forward keeps only the output and the log-sum-exp of
//! each score row (B, NH, T); the backward recomputes the probabilities from q, k and the LSE,
//! so no (T, T) matrix is kept between the passes. One rayon task per (batch, head), each the
//! textbook matrix form with a private (T, T) scratch and single-threaded GEMMs on strided views
//! of qkv (no copies), so results do not depend on the thread count. Under the causal mask the
//! GEMMs run in blocks of query rows that stop at the block's last key.

use super::Float;
use super::matmul::gemm_raw;
use super::vector::{dot_f64, max_of, simd, sum_f64};
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

/// Rows handled together under a causal mask: a block of query rows needs only the keys up to
/// its last row, so the score and value GEMMs skip the masked upper triangle block by block.
const CAUSAL_ROW_BLOCK: usize = 64;

/// (first row, end row, keys needed) of each block of query rows: one block of every key when
/// bidirectional.
fn row_blocks(t: usize, causal: bool) -> impl Iterator<Item = (usize, usize, usize)> {
    let step = if causal { CAUSAL_ROW_BLOCK } else { t.max(1) };
    (0..t).step_by(step).map(move |r0| {
        let r1 = (r0 + step).min(t);
        (r0, r1, if causal { r1 } else { t })
    })
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
    let scale = F::of(1.0 / (hs as f64).sqrt());
    // SAFETY: q rows at base + i·3C, k rows at base + C + j·3C, HS wide, all inside qkv (the
    // caller checked qkv holds B·T·3C); p is a private T×T buffer.
    unsafe {
        let q = qkv.as_ptr().add(base);
        for (r0, r1, keys) in row_blocks(t, causal) {
            let (q_rows, s_rows) = (q.add(r0 * 3 * c), p.as_mut_ptr().add(r0 * t));
            gemm_raw(
                (r1 - r0, keys, hs),
                s_rows,
                (t, 1),
                false,
                q_rows,
                (3 * c, 1),
                q.add(c),
                (1, 3 * c),
                Parallelism::None,
            );
        }
    }
    simd!({
        for i in 0..t {
            let n_keys = if causal { i + 1 } else { t };
            let (row, masked) = p[i * t..(i + 1) * t].split_at_mut(n_keys);
            match lse_in {
                // The backward: P from the saved log-sum-exp.
                Some(lse) => {
                    let lse = lse[i];
                    row.iter_mut().for_each(|x| *x = (*x * scale - lse).exp_fast());
                }
                // The forward: one exponential per score, in F like the scores; the sum in f64.
                None => {
                    row.iter_mut().for_each(|x| *x *= scale);
                    let max = max_of(row);
                    row.iter_mut().for_each(|x| *x = (*x - max).exp_fast());
                    let sum = sum_f64(row, F::f64);
                    lse_out(i, max.f64() + sum.ln());
                    let inv = F::of(1.0 / sum);
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
            masked.fill(F::zero());
        }
    })
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
                for (r0, r1, keys) in row_blocks(t, causal) {
                    let (dst, p) = (dst.add(r0 * c), p.as_ptr().add(r0 * t));
                    gemm_raw((r1 - r0, hs, keys), dst, (c, 1), false, p, (t, 1), v, (3 * c, 1), Parallelism::None);
                }
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
    let scale = F::of(1.0 / (hs as f64).sqrt());
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
                for (r0, r1, keys) in row_blocks(t, causal) {
                    // dv = Pᵀ · dout: key rows r0..r1 gather the query rows that see them, from
                    // r0 on when causal (P is zero above the diagonal).
                    let from = if causal { r0 } else { 0 };
                    gemm_raw(
                        (r1 - r0, hs, t - from),
                        dst.add(2 * c + r0 * 3 * c),
                        (3 * c, 1),
                        false,
                        p.as_ptr().add(from * t + r0),
                        (1, t),
                        dy.add(from * c),
                        (c, 1),
                        Parallelism::None,
                    );
                    // dP = dout · vᵀ, for the keys query rows r0..r1 see
                    gemm_raw(
                        (r1 - r0, keys, hs),
                        ds.as_mut_ptr().add(r0 * t),
                        (t, 1),
                        false,
                        dy.add(r0 * c),
                        (c, 1),
                        v,
                        (1, 3 * c),
                        Parallelism::None,
                    );
                }
            }
            simd!({
                for i in 0..t {
                    let (o, dy) = (&out[head + i * c..][..hs], &dout[head + i * c..][..hs]);
                    let delta = F::of(dot_f64(o, dy, F::f64));
                    let n_keys = if causal { i + 1 } else { t };
                    let (ds, masked) = ds[i * t..(i + 1) * t].split_at_mut(n_keys);
                    for (s, &p) in ds.iter_mut().zip(&p[i * t..][..n_keys]) {
                        *s = p * (*s - delta) * scale;
                    }
                    masked.fill(F::zero());
                }
            });
            // SAFETY: as above.
            unsafe {
                let (q, k) = (qkv.as_ptr().add(qkv_head), qkv.as_ptr().add(qkv_head + c));
                let dst = dqkv_p.at(qkv_head);
                for (r0, r1, keys) in row_blocks(t, causal) {
                    // dq = dS · k over the keys these query rows see
                    let (dq, ds_rows) = (dst.add(r0 * 3 * c), ds.as_ptr().add(r0 * t));
                    gemm_raw(
                        (r1 - r0, hs, keys),
                        dq,
                        (3 * c, 1),
                        false,
                        ds_rows,
                        (t, 1),
                        k,
                        (3 * c, 1),
                        Parallelism::None,
                    );
                    // dk = dSᵀ · q over the query rows that see these keys
                    let from = if causal { r0 } else { 0 };
                    gemm_raw(
                        (r1 - r0, hs, t - from),
                        dst.add(c + r0 * 3 * c),
                        (3 * c, 1),
                        false,
                        ds.as_ptr().add(from * t + r0),
                        (1, t),
                        q.add(from * 3 * c),
                        (3 * c, 1),
                        Parallelism::None,
                    );
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

/// The blocking of the tiled (flash) attention, as `kernels/flash_attention.cu` runs it: each
/// pass gives one block a fixed set of rows (queries, or keys for dK/dV) and streams tiles of the
/// other side past it; inside a block, each warp owns a group of those rows and skips, under the
/// causal mask, the tiles that are wholly in its future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionTiles {
    /// Forward: queries per block, per warp, and keys per streamed tile.
    pub fwd_rows: usize,
    pub fwd_warp_rows: usize,
    pub fwd_keys: usize,
    /// Backward dK, dV: keys per block, per warp, and queries per streamed tile.
    pub dkv_keys: usize,
    pub dkv_warp_keys: usize,
    pub dkv_rows: usize,
    /// Backward dQ: queries per block, per warp, and keys per streamed tile.
    pub dq_rows: usize,
    pub dq_warp_rows: usize,
    pub dq_keys: usize,
}

/// One head's view of qkv (B,T,3C): row i of q, k or v.
struct Head<'a, F> {
    qkv: &'a [F],
    base: usize,
    c: usize,
    hs: usize,
}

impl<'a, F: Float> Head<'a, F> {
    fn new(qkv: &'a [F], (bi, h): (usize, usize), (t, c, hs): (usize, usize, usize)) -> Self {
        Head { qkv, base: bi * t * 3 * c + h * hs, c, hs }
    }
    fn row(&self, part: usize, i: usize) -> &'a [F] {
        &self.qkv[self.base + i * 3 * self.c + part * self.c..][..self.hs]
    }
    fn q(&self, i: usize) -> &'a [F] {
        self.row(0, i)
    }
    fn k(&self, j: usize) -> &'a [F] {
        self.row(1, j)
    }
    fn v(&self, j: usize) -> &'a [F] {
        self.row(2, j)
    }
}

fn dot64<F: Float>(a: &[F], b: &[F]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x.f64() * y.f64()).sum()
}

/// The tiled forward: the same result as [`attention_forward`], computed as the flash kernel
/// does. Per block of `fwd_rows` queries, keys come in tiles of `fwd_keys` (causal: only up to
/// the block's last query); each warp's group of `fwd_warp_rows` queries skips tiles whose first
/// key follows its last query, masks keys past T or (causal) after the query, and keeps per row
/// a running maximum m and sum l of exp(s − m), rescaling both and the output accumulator by
/// exp(m_old − m_new) when a tile raises the maximum. out = acc / l, lse = m + ln l.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_tiled<F: Float>(
    out: &mut [F],
    lse: &mut [F],
    qkv: &[F],
    b: usize,
    t: usize,
    nh: usize,
    hs: usize,
    causal: bool,
    tiles: &AttentionTiles,
) {
    let c = nh * hs;
    assert!(out.len() >= b * t * c && lse.len() >= b * nh * t && qkv.len() >= b * t * 3 * c);
    let (rows, warp_rows, keys) = (tiles.fwd_rows, tiles.fwd_warp_rows, tiles.fwd_keys);
    assert!(rows > 0 && keys > 0 && warp_rows > 0 && rows.is_multiple_of(warp_rows));
    let scale = 1.0 / (hs as f64).sqrt();
    let (out_p, lse_p) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..b * nh).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / nh, bh % nh);
        let head = Head::new(qkv, (bi, h), (t, c, hs));
        for q0 in (0..t).step_by(rows) {
            let kv_end = if causal { t.min(q0 + rows) } else { t };
            for w0 in (q0..q0 + rows).step_by(warp_rows) {
                let w_last = w0 + warp_rows - 1;
                // Queries past T are padding in the kernel: computed, never stored.
                let mine = w0.min(t)..(w0 + warp_rows).min(t);
                let n = mine.len();
                let (mut m, mut l) = (vec![f64::NEG_INFINITY; n], vec![0.0f64; n]);
                let mut acc = vec![0.0f64; n * hs];
                for k0 in (0..kv_end).step_by(keys) {
                    if causal && k0 > w_last {
                        continue;
                    }
                    let tile = k0..(k0 + keys).min(t);
                    for (r, i) in mine.clone().enumerate() {
                        let s: Vec<f64> =
                            tile.clone()
                                .map(|j| {
                                    if causal && j > i {
                                        f64::NEG_INFINITY
                                    } else {
                                        dot64(head.q(i), head.k(j)) * scale
                                    }
                                })
                                .collect();
                        let m_new = s.iter().fold(m[r], |a, &x| a.max(x));
                        let m_use = if m_new == f64::NEG_INFINITY { 0.0 } else { m_new };
                        let alpha = (m[r] - m_use).exp();
                        m[r] = m_new;
                        let a = &mut acc[r * hs..(r + 1) * hs];
                        a.iter_mut().for_each(|x| *x *= alpha);
                        l[r] *= alpha;
                        for (&sj, j) in s.iter().zip(tile.clone()) {
                            let p = (sj - m_use).exp();
                            l[r] += p;
                            for (x, &vv) in a.iter_mut().zip(head.v(j)) {
                                *x += p * vv.f64();
                            }
                        }
                    }
                }
                for (r, i) in mine.enumerate() {
                    let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                    // SAFETY: task (bi, h) alone writes lse[bi, h, :] and out[bi, :, h·HS..(h+1)·HS].
                    unsafe {
                        *lse_p.at(bh * t + i) = F::of(if l[r] > 0.0 { m[r] + l[r].ln() } else { f64::NEG_INFINITY });
                        for d in 0..hs {
                            *out_p.at(bi * t * c + i * c + h * hs + d) = F::of(acc[r * hs + d] * inv);
                        }
                    }
                }
            }
        }
    });
}

/// The tiled backward: the same result as [`attention_backward`] (dqkv overwritten), computed as
/// the flash kernels do, in two passes that never build a (T, T) matrix. With delta_i = dout_i·out_i
/// and P recomputed tile by tile from q, k and the saved LSE:
/// - dK, dV: per block of `dkv_keys` keys, query tiles of `dkv_rows` from the first that can see
///   the block (causal) to T; each warp's `dkv_warp_keys` keys skip tiles whose last query precedes
///   their first key; dv_j = Σ_i p_ij dout_i, dk_j = scale · Σ_i ds_ij q_i;
/// - dQ: per block of `dq_rows` queries, key tiles of `dq_keys` up to the block's last query
///   (causal); warps skip tiles whose first key follows their last query; dq_i = scale · Σ_j ds_ij k_j;
///
/// with p_ij = exp(q_i·k_j·scale − lse_i), ds_ij = p_ij (dout_i·v_j − delta_i), masked (0) where
/// j > i under the causal mask.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_tiled<F: Float>(
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
    tiles: &AttentionTiles,
) {
    let c = nh * hs;
    assert!(
        dqkv.len() >= b * t * 3 * c && dout.len() >= b * t * c && out.len() >= b * t * c && lse.len() >= b * nh * t
    );
    let AttentionTiles { dkv_keys, dkv_warp_keys, dkv_rows, dq_rows, dq_warp_rows, dq_keys, .. } = *tiles;
    assert!(dkv_keys > 0 && dkv_rows > 0 && dkv_warp_keys > 0 && dkv_keys.is_multiple_of(dkv_warp_keys));
    assert!(dq_rows > 0 && dq_keys > 0 && dq_warp_rows > 0 && dq_rows.is_multiple_of(dq_warp_rows));
    let scale = 1.0 / (hs as f64).sqrt();
    let dqkv_p = SharedMut(dqkv.as_mut_ptr());
    (0..b * nh).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / nh, bh % nh);
        let head = Head::new(qkv, (bi, h), (t, c, hs));
        let dy = |i: usize| &dout[bi * t * c + i * c + h * hs..][..hs];
        let delta: Vec<f64> = (0..t).map(|i| dot64(dy(i), &out[bi * t * c + i * c + h * hs..][..hs])).collect();
        let lse = &lse[bh * t..(bh + 1) * t];
        // ds_ij / scale and p_ij of one (query, key) pair, 0 where masked.
        let pair = |i: usize, j: usize| -> (f64, f64) {
            if causal && j > i {
                return (0.0, 0.0);
            }
            let p = (dot64(head.q(i), head.k(j)) * scale - lse[i].f64()).exp();
            (p, p * (dot64(dy(i), head.v(j)) - delta[i]))
        };
        // SAFETY: task (bi, h) alone writes the q, k and v columns of head h in batch row bi.
        let store = |part: usize, i: usize, row: &[f64]| unsafe {
            for (d, &x) in row.iter().enumerate() {
                *dqkv_p.at(head.base + i * 3 * c + part * c + d) = F::of(x);
            }
        };

        // dK and dV.
        for k0 in (0..t).step_by(dkv_keys) {
            let q_start = if causal { (k0 / dkv_rows) * dkv_rows } else { 0 };
            for w0 in (k0..k0 + dkv_keys).step_by(dkv_warp_keys) {
                let mine = w0.min(t)..(w0 + dkv_warp_keys).min(t);
                let n = mine.len();
                let (mut dk, mut dv) = (vec![0.0f64; n * hs], vec![0.0f64; n * hs]);
                for q0 in (q_start..t).step_by(dkv_rows) {
                    if causal && q0 + dkv_rows - 1 < w0 {
                        continue;
                    }
                    for (r, j) in mine.clone().enumerate() {
                        for i in q0..(q0 + dkv_rows).min(t) {
                            let (p, ds) = pair(i, j);
                            for d in 0..hs {
                                dv[r * hs + d] += p * dy(i)[d].f64();
                                dk[r * hs + d] += ds * head.q(i)[d].f64();
                            }
                        }
                    }
                }
                for (r, j) in mine.enumerate() {
                    let dk_row: Vec<f64> = dk[r * hs..(r + 1) * hs].iter().map(|x| x * scale).collect();
                    store(1, j, &dk_row);
                    store(2, j, &dv[r * hs..(r + 1) * hs]);
                }
            }
        }

        // dQ.
        for q0 in (0..t).step_by(dq_rows) {
            let kv_end = if causal { t.min(q0 + dq_rows) } else { t };
            for w0 in (q0..q0 + dq_rows).step_by(dq_warp_rows) {
                let w_last = w0 + dq_warp_rows - 1;
                let mine = w0.min(t)..(w0 + dq_warp_rows).min(t);
                let mut dq = vec![0.0f64; mine.len() * hs];
                for k0 in (0..kv_end).step_by(dq_keys) {
                    if causal && k0 > w_last {
                        continue;
                    }
                    for (r, i) in mine.clone().enumerate() {
                        for j in k0..(k0 + dq_keys).min(t) {
                            let (_, ds) = pair(i, j);
                            for d in 0..hs {
                                dq[r * hs + d] += ds * head.k(j)[d].f64();
                            }
                        }
                    }
                }
                for (r, i) in mine.enumerate() {
                    let row: Vec<f64> = dq[r * hs..(r + 1) * hs].iter().map(|x| x * scale).collect();
                    store(0, i, &row);
                }
            }
        }
    });
}
