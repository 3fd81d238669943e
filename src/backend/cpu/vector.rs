//! What lets the element-wise loops of the reference run at SIMD speed without giving up being
//! plain loops over slices: a dispatcher that compiles a loop for AVX2 + FMA when the CPU has
//! them, an `exp` for f32 that such loops can vectorise, and sums in several lanes.
//!
//! None of this changes what is computed where it matters for determinism: no fused multiply-add
//! is ever requested (LLVM does not contract `a * b + c` in Rust), so a loop gives the same bits
//! whether it ran in AVX2 registers, in SSE2 ones or one element at a time, on any thread count.

use super::Float;

/// Whether [`with_simd`] uses the AVX2 + FMA code: the CPU has both and `GPTK_CPU_SIMD` is not
/// `0` (which forces the baseline code, to compare the two or to rule the dispatch out).
pub fn simd_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        let detected = {
            #[cfg(target_arch = "x86_64")]
            {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        };
        detected && std::env::var("GPTK_CPU_SIMD").map_or(true, |v| v != "0")
    })
}

/// Runs `f` compiled for AVX2 and FMA when [`simd_enabled`], else as it is. Called through
/// [`simd!`], which makes `f` an always-inlined closure: target features reach only code inlined
/// into `with_simd`, and LLVM declines to inline a closure with a large loop on its own.
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if simd_enabled() {
            // SAFETY: `simd_enabled` detected the features `with_avx2` is compiled for.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

/// `simd!(expr)`: evaluates `expr` (a loop, or a block of them, with its callees inlined) in code
/// compiled for AVX2 + FMA where the CPU has them ([`with_simd`]). Use it inside each rayon task.
macro_rules! simd {
    ($body:expr) => {
        $crate::backend::cpu::vector::with_simd(
            #[inline(always)]
            || $body,
        )
    };
}
pub(crate) use simd;

/// Below this, e^x is flushed to 0 (e^-86.6 ≈ 2.4e-38, the edge of f32's normal range).
const EXP_LO: f32 = -86.6;
/// Above this, e^x is +∞ (f32::MAX = e^88.72…).
const EXP_HI: f32 = 88.72;

/// e^x for f32 with a relative error within 2 ulp, written without branches or calls so that a
/// loop over it vectorises: x = n·ln 2 + r with |r| ≤ ln 2 / 2 (Cody–Waite: ln 2 in two parts),
/// e^r by a degree-7 polynomial (Taylor to r⁷, truncation below 1e-9 relative on that range),
/// 2^n built in the exponent bits. NaN gives NaN, −∞ and x < −86.6 give 0 (results below
/// 2.4e-38, which f32 could only hold as subnormals), x > 88.72 gives +∞.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so n·LN2_HI is exact for |n| ≤ 2^15.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2_E + ROUND;
    let n = t - ROUND; // round(xc / ln 2), in [-125, 128]
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^(n−1) stays a normal number for n in [-125, 128]; the low mantissa bits of t are n (plus
    // 1.5·2²³, whose bits vanish when shifted by 23), so shifting them into the exponent field
    // and adding the bias builds it.
    let half_pow2 = f32::from_bits((t.to_bits() << 23).wrapping_add(126 << 23));
    let y = (p + p) * half_pow2;
    let y = if x < EXP_LO { 0.0 } else { y };
    let y = if x > EXP_HI { f32::INFINITY } else { y };
    if x.is_nan() { x } else { y }
}

/// Σᵢ f(i) for i in 0..n, in f64 over eight interleaved lanes added pairwise at the end: the
/// same order every time (deterministic), and independent additions that vectorise, where one
/// running sum is a chain of dependent adds.
#[inline(always)]
pub fn sum_by(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let full = n - n % 8;
    for base in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    for (l, a) in acc.iter_mut().enumerate().take(n - full) {
        *a += f(full + l);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Σ f(xᵢ), as [`sum_by`].
#[inline(always)]
pub fn sum_f64<T: Copy>(xs: &[T], f: impl Fn(T) -> f64) -> f64 {
    sum_by(xs.len(), |i| f(xs[i]))
}

/// Σ f(aᵢ)·f(bᵢ), as [`sum_by`] (the shorter slice sets the length).
#[inline(always)]
pub fn dot_f64<T: Copy>(a: &[T], b: &[T], f: impl Fn(T) -> f64) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    sum_by(n, |i| f(a[i]) * f(b[i]))
}

/// max xᵢ over eight lanes (−∞ for an empty slice). NaNs are passed over: callers see them
/// through what they compute from the values next (e^(NaN − max) is NaN).
#[inline(always)]
pub fn max_of<F: Float>(xs: &[F]) -> F {
    let mut acc = [F::neg_infinity(); 8];
    let full = xs.len() - xs.len() % 8;
    for base in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            let y = xs[base + l];
            *a = if y > *a { y } else { *a };
        }
    }
    for (l, a) in acc.iter_mut().enumerate().take(xs.len() - full) {
        let y = xs[full + l];
        *a = if y > *a { y } else { *a };
    }
    acc.iter().fold(F::neg_infinity(), |m, &a| if a > m { a } else { m })
}

/// Σ e^(xᵢ − shift) in f64, the exponentials in F ([`Float::exp_fast`]): computed a block at a
/// time into a buffer on the stack, so that the exponentials vectorise as a map and the sum as
/// [`sum_f64`].
#[inline(always)]
pub fn sum_exp<F: Float>(xs: &[F], shift: F) -> f64 {
    const BLOCK: usize = 256;
    let mut buf = [F::zero(); BLOCK];
    let mut total = 0.0;
    for block in xs.chunks(BLOCK) {
        let buf = &mut buf[..block.len()];
        for (e, &x) in buf.iter_mut().zip(block) {
            *e = (x - shift).exp_fast();
        }
        total += sum_f64(buf, F::f64);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between an f32 and the exact value.
    fn ulps(got: f32, exact: f64) -> f64 {
        let e = exact as f32;
        let ulp = (f32::from_bits(e.abs().to_bits() + 1) - e.abs()) as f64;
        (got as f64 - exact).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_normal_range() {
        let mut worst = (0.0, 0.0f32);
        // Every 97th positive f32 up to 88.72, and its negation: about 23 million values, every
        // exponent.
        for bits in (0..EXP_HI.to_bits()).step_by(97) {
            let x = f32::from_bits(bits);
            for x in [x, -x] {
                if x < EXP_LO {
                    continue;
                }
                let u = ulps(exp_f32(x), (x as f64).exp());
                if u > worst.0 {
                    worst = (u, x);
                }
            }
        }
        assert!(worst.0 <= 2.0, "exp_f32 is {} ulp off at x = {:e}", worst.0, worst.1);
        assert!(worst.0 > 0.0, "the sweep compared nothing");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        let top = exp_f32(EXP_HI);
        assert!(top.is_finite() && ulps(top, (EXP_HI as f64).exp()) <= 2.0, "e^{EXP_HI} = {top}");
        assert!(ulps(exp_f32(EXP_LO), (EXP_LO as f64).exp()) <= 2.0);
        assert_eq!(exp_f32(1.0), std::f32::consts::E);
    }

    #[test]
    fn the_dispatcher_gives_the_same_bits_as_the_plain_loop() {
        let xs: Vec<f32> = (0..10_000).map(|i| (i as f32 - 5000.0) * 0.0173).collect();
        let plain: Vec<u32> = xs.iter().map(|&x| exp_f32(x).to_bits()).collect();
        let vector: Vec<u32> = simd!(xs.iter().map(|&x| exp_f32(x).to_bits()).collect());
        assert_eq!(plain, vector);
    }

    #[test]
    fn lane_sums_and_maxima() {
        for n in [0, 1, 7, 8, 9, 100, 1001] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
            let sum = sum_f64(&xs, |x| x as f64);
            let exact: f64 = xs.iter().map(|&x| x as f64).sum();
            assert!((sum - exact).abs() <= 1e-12 * exact.abs().max(1.0), "n = {n}: {sum} vs {exact}");
            let dot = dot_f64(&xs, &xs[n / 2..], |x| x as f64);
            let exact: f64 = xs.iter().zip(&xs[n / 2..]).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((dot - exact).abs() <= 1e-12 * exact.abs().max(1.0), "n = {n}: {dot} vs {exact}");
            let max = max_of(&xs);
            let exact = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max, exact, "n = {n}");
        }
        let xs: Vec<f64> = (0..1001).map(|i| ((i * 37 % 101) as f64 - 50.0) / 8.0).collect();
        let exact: f64 = xs.iter().map(|&x| (x - 1.5).exp()).sum();
        assert!((sum_exp(&xs, 1.5) - exact).abs() <= 1e-12 * exact);
    }
}
