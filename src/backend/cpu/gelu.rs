//! GELU with the tanh approximation (GPT-2's `gelu_new`), forward and backward.

use super::Float;
use super::vector::simd;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;
/// Elements per rayon task for elementwise ops.
const ELEMS_PER_TASK: usize = 1 << 14;

/// tanh(u) = 1 − 2 / (e^{2u} + 1): the same function as `tanh`, evaluated through a vectorisable
/// `exp` ([`Float::exp_fast`]) where libm's `tanhf` is a call per element. Its absolute error
/// stays at the rounding of the type (it saturates cleanly to ±1 as `exp` goes to ∞ or 0), which
/// is what GELU needs.
#[inline(always)]
fn tanh<F: Float>(u: F) -> F {
    let one = F::one();
    one - (one + one) / ((u + u).exp_fast() + one)
}

/// out (N) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_forward<F: Float>(out: &mut [F], inp: &[F]) {
    out.par_chunks_mut(ELEMS_PER_TASK).zip(inp.par_chunks(ELEMS_PER_TASK)).for_each(|(o, x)| {
        let (k, cubic, half, one) = (F::of(SQRT_2_OVER_PI), F::of(GELU_CUBIC), F::of(0.5), F::one());
        simd!({
            for (o, &x) in o.iter_mut().zip(x) {
                let u = k * (x + cubic * x * x * x);
                *o = half * x * (one + tanh(u));
            }
        })
    });
}

/// d (N): dL/d(out) on entry, dL/d(inp) on exit.
pub fn gelu_backward<F: Float>(d: &mut [F], inp: &[F]) {
    d.par_chunks_mut(ELEMS_PER_TASK).zip(inp.par_chunks(ELEMS_PER_TASK)).for_each(|(d, x)| {
        let (k, cubic, half, one, three) = (F::of(SQRT_2_OVER_PI), F::of(GELU_CUBIC), F::of(0.5), F::one(), F::of(3.0));
        simd!({
            for (d, &x) in d.iter_mut().zip(x) {
                let th = tanh(k * (x + cubic * x * x * x));
                let du = k * (one + three * cubic * x * x);
                *d *= half * (one + th) + half * x * (one - th * th) * du;
            }
        })
    });
}

/// out (N) = a + b.
pub fn residual_forward<F: Float>(out: &mut [F], a: &[F], b: &[F]) {
    out.par_chunks_mut(ELEMS_PER_TASK).zip(a.par_chunks(ELEMS_PER_TASK).zip(b.par_chunks(ELEMS_PER_TASK))).for_each(
        |(o, (a, b))| {
            simd!({
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + b;
                }
            })
        },
    );
}
