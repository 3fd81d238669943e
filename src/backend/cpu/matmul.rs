//! Matrix multiply with bias through the `gemm` crate (blocked, SIMD, threaded with rayon).
//!
//! Weights are `(OC, C)`, so the forward is `out = inp · Wᵀ + b` and the backward is one GEMM
//! for `dinp`, one for `dW` and a column sum for `db`. `gemm` takes strides, so no transpose is
//! ever materialised. Its threads split the output, never the reduction, so results do not
//! depend on scheduling.

use super::vector::simd;
use super::{Float, sum_row_chunks};
use gemm::Parallelism;
use rayon::prelude::*;

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Below ~1 MFLOP the thread hand-off costs more than it saves.
    if m * n * k < 1 << 20 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) }
}

/// dst (M,N) = [dst +] lhs (M,K) · rhs (K,N) on raw strided matrices, each given by
/// (row stride, column stride).
///
/// # Safety
/// Every element the shapes and strides reach must be in bounds; dst must not overlap lhs or
/// rhs, nor be written by anyone else during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw<F: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut F,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const F,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const F,
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            F::one(),
            F::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// dst (M,N) row-major = [dst +] lhs (M,K) · rhs (K,N), lhs and rhs given by (row stride,
/// column stride); bounds are checked.
fn gemm_strided<F: Float>(
    dst: &mut [F],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[F],
    lhs_strides: (usize, usize),
    rhs: &[F],
    rhs_strides: (usize, usize),
) {
    assert!(dst.len() >= m * n, "gemm destination too small");
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_strides.0 + (k - 1) * lhs_strides.1, "gemm lhs too small");
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_strides.0 + (n - 1) * rhs_strides.1, "gemm rhs too small");
    // SAFETY: the asserts above keep every index the strides reach inside the slices; dst does
    // not alias lhs or rhs (it is a &mut).
    unsafe {
        gemm_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            (n, 1),
            accumulate,
            lhs.as_ptr(),
            lhs_strides,
            rhs.as_ptr(),
            rhs_strides,
            parallelism(m, n, k),
        )
    }
}

/// out (N,OC) = inp (N,C) · wᵀ + bias. Overwrites `out`.
pub fn matmul_forward<F: Float>(out: &mut [F], inp: &[F], w: &[F], bias: Option<&[F]>, n: usize, c: usize, oc: usize) {
    let out = &mut out[..n * oc];
    if let Some(bias) = bias {
        // The GEMM accumulates onto the bias, copied into every row (by every thread).
        out.par_chunks_mut(oc * 64)
            .for_each(|rows| rows.chunks_mut(oc).for_each(|row| row.copy_from_slice(&bias[..oc])));
    }
    gemm_strided(out, bias.is_some(), (n, oc, c), inp, (c, 1), w, (1, c));
}

/// dinp (N,C) = dout · w (overwritten); dw (OC,C) += doutᵀ · inp; dbias (OC) += Σₙ dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<F: Float>(
    dinp: &mut [F],
    dw: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    w: &[F],
    n: usize,
    c: usize,
    oc: usize,
) {
    gemm_strided(&mut dinp[..n * c], false, (n, c, oc), dout, (oc, 1), w, (c, 1));
    gemm_strided(&mut dw[..oc * c], true, (oc, c, n), dout, (1, oc), inp, (c, 1));
    if let Some(dbias) = dbias {
        let sums = sum_row_chunks(n, oc, |i, acc| {
            simd!({
                for (a, &d) in acc.iter_mut().zip(&dout[i * oc..][..oc]) {
                    *a += d.f64();
                }
            })
        });
        for (g, s) in dbias[..oc].iter_mut().zip(sums) {
            *g += F::of(s);
        }
    }
}
