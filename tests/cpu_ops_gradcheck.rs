//! Every CPU op's backward against central finite differences, in f64, on small random shapes
//! (odd sizes included). Each check builds a scalar L = Σ out·w with fixed random weights w, so
//! dL/dout = w, and compares the op's input gradient with (L(x+h) − L(x−h)) / 2h per element.

use gptk::backend::cpu::*;
use gptk::rng::Rng;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with the central difference of `loss` w.r.t. every element of `x`.
fn check(name: &str, x: &mut [f64], analytic: &[f64], mut loss: impl FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len());
    let mut worst: f64 = 0.0;
    for i in 0..x.len() {
        let orig = x[i];
        x[i] = orig + H;
        let lp = loss(x);
        x[i] = orig - H;
        let lm = loss(x);
        x[i] = orig;
        let numeric = (lp - lm) / (2.0 * H);
        let err = (numeric - analytic[i]).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
        assert!(err < TOL, "{name}[{i}]: analytic {} vs numeric {numeric} (err {err:e})", analytic[i]);
    }
    assert!(worst.is_finite());
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    for &(n, c, oc) in &[(1, 1, 1), (3, 5, 7), (7, 13, 3), (4, 9, 16)] {
        let mut inp = randn(&mut rng, n * c, 1.0);
        let mut w = randn(&mut rng, oc * c, 1.0);
        let mut bias = randn(&mut rng, oc, 1.0);
        let wo = randn(&mut rng, n * oc, 1.0);
        let fwd = |inp: &[f64], w: &[f64], bias: &[f64]| {
            let mut out = vec![0.0; n * oc];
            matmul_forward(&mut out, inp, w, Some(bias), n, c, oc);
            dot(&out, &wo)
        };
        let (mut dinp, mut dw, mut db) = (vec![f64::NAN; n * c], vec![0.0; oc * c], vec![0.0; oc]);
        matmul_backward(&mut dinp, &mut dw, Some(&mut db), &wo, &inp, &w, n, c, oc);
        let (w0, b0, i0) = (w.clone(), bias.clone(), inp.clone());
        check("dinp", &mut inp, &dinp, |x| fwd(x, &w0, &b0));
        check("dw", &mut w, &dw, |x| fwd(&i0, x, &b0));
        check("dbias", &mut bias, &db, |x| fwd(&i0, &w0, x));
    }
}

#[test]
fn matmul_backward_accumulates_weight_gradients() {
    let mut rng = Rng::new(2);
    let (n, c, oc) = (5, 3, 4);
    let (inp, w, dout) = (randn(&mut rng, n * c, 1.0), randn(&mut rng, oc * c, 1.0), randn(&mut rng, n * oc, 1.0));
    let (mut dinp, mut dw1, mut db1) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
    matmul_backward(&mut dinp, &mut dw1, Some(&mut db1), &dout, &inp, &w, n, c, oc);
    let (mut dw2, mut db2) = (dw1.clone(), db1.clone());
    matmul_backward(&mut dinp, &mut dw2, Some(&mut db2), &dout, &inp, &w, n, c, oc);
    for (a, b) in dw1.iter().zip(&dw2).chain(db1.iter().zip(&db2)) {
        assert!((2.0 * a - b).abs() < 1e-12);
    }
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    for &(n, c) in &[(1, 2), (3, 7), (5, 16)] {
        let mut inp = randn(&mut rng, n * c, 2.0);
        let mut w = randn(&mut rng, c, 1.0);
        let mut b = randn(&mut rng, c, 1.0);
        let wo = randn(&mut rng, n * c, 1.0);
        let fwd = |inp: &[f64], w: &[f64], b: &[f64]| {
            let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut out, &mut mean, &mut rstd, inp, w, b, n, c);
            (dot(&out, &wo), mean, rstd)
        };
        let (_, mean, rstd) = fwd(&inp, &w, &b);
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(&mut dinp, &mut dw, &mut db, &wo, &inp, &w, &mean, &rstd, n, c);
        let (w0, b0, i0) = (w.clone(), b.clone(), inp.clone());
        check("dinp", &mut inp, &dinp, |x| fwd(x, &w0, &b0).0);
        check("dw", &mut w, &dw, |x| fwd(&i0, x, &b0).0);
        check("db", &mut b, &db, |x| fwd(&i0, &w0, x).0);
    }
}

#[test]
fn layernorm_output_is_normalised() {
    let mut rng = Rng::new(4);
    let (n, c) = (3, 33);
    let inp = randn(&mut rng, n * c, 5.0);
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &vec![1.0; c], &vec![0.0; c], n, c);
    for row in out.chunks(c) {
        let m = row.iter().sum::<f64>() / c as f64;
        let v = row.iter().map(|x| (x - m).powi(2)).sum::<f64>() / c as f64;
        assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-5, "mean {m} var {v}");
    }
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let mut rng = Rng::new(5);
    let n = 37;
    let mut inp = randn(&mut rng, n, 3.0);
    let wo = randn(&mut rng, n, 1.0);
    let fwd = |inp: &[f64]| {
        let mut out = vec![0.0; n];
        gelu_forward(&mut out, inp);
        dot(&out, &wo)
    };
    let mut d = wo.clone();
    gelu_backward(&mut d, &inp);
    check("gelu", &mut inp, &d, fwd);
    // Spot values of tanh-GELU.
    let mut out = vec![0.0f64; 3];
    gelu_forward(&mut out, &[0.0, 1.0, -1.0]);
    assert!(
        (out[0]).abs() < 1e-15
            && (out[1] - 0.841_191_990_607_477_4).abs() < 1e-12
            && (out[2] + 0.158_808_009_392_522_6).abs() < 1e-12
    );
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let mut rng = Rng::new(6);
    let (b, t, c, vp) = (2, 5, 3, 7);
    let tokens: Vec<i32> = (0..b * t).map(|_| rng.below(vp as u64) as i32).collect();
    let mut wte = randn(&mut rng, vp * c, 1.0);
    let mut wpe = randn(&mut rng, t * c, 1.0);
    let wo = randn(&mut rng, b * t * c, 1.0);
    let fwd = |wte: &[f64], wpe: &[f64]| {
        let mut out = vec![0.0; b * t * c];
        encoder_forward(&mut out, &tokens, wte, wpe, b, t, c);
        dot(&out, &wo)
    };
    let (mut dwte, mut dwpe) = (vec![0.0; vp * c], vec![0.0; t * c]);
    encoder_backward(&mut dwte, &mut dwpe, &wo, &tokens, b, t, c);
    let (e0, p0) = (wte.clone(), wpe.clone());
    check("dwte", &mut wte, &dwte, |x| fwd(x, &p0));
    check("dwpe", &mut wpe, &dwpe, |x| fwd(&e0, x));
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(7);
    for &(b, t, nh, hs, causal) in &[(1, 1, 1, 2, true), (2, 5, 2, 3, true), (1, 7, 3, 4, false), (2, 3, 1, 5, false)] {
        let c = nh * hs;
        let mut qkv = randn(&mut rng, b * t * 3 * c, 1.0);
        let wo = randn(&mut rng, b * t * c, 1.0);
        let fwd = |qkv: &[f64]| {
            let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
            attention_forward(&mut out, &mut lse, qkv, b, t, nh, hs, causal);
            (dot(&out, &wo), out, lse)
        };
        let (_, out, lse) = fwd(&qkv);
        let mut dqkv = vec![f64::NAN; b * t * 3 * c];
        attention_backward(&mut dqkv, &wo, &qkv, &out, &lse, b, t, nh, hs, causal);
        check("dqkv", &mut qkv, &dqkv, |x| fwd(x).0);
    }
}

#[test]
fn causal_attention_ignores_the_future() {
    let mut rng = Rng::new(8);
    let (b, t, nh, hs) = (1, 6, 2, 4);
    let c = nh * hs;
    let mut qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let run = |qkv: &[f64]| {
        let (mut out, mut lse) = (vec![0.0; t * c], vec![0.0; nh * t]);
        attention_forward(&mut out, &mut lse, qkv, b, t, nh, hs, true);
        out
    };
    let before = run(&qkv);
    for x in &mut qkv[(t - 1) * 3 * c..] {
        *x += 1.0; // change only the last position
    }
    let after = run(&qkv);
    assert_eq!(before[..(t - 1) * c], after[..(t - 1) * c]);
    assert_ne!(before[(t - 1) * c..], after[(t - 1) * c..]);
}

#[test]
fn cross_entropy_gradient_matches_finite_differences_and_ignores() {
    let mut rng = Rng::new(9);
    let (n, v, vp) = (5, 7, 10);
    let targets = [3, -1, 0, 6, 2];
    let mut logits = randn(&mut rng, n * vp, 2.0);
    let dloss = 0.37;
    let fwd = |logits: &[f64]| {
        let mut l = logits.to_vec();
        let mut losses = vec![0.0; n];
        cross_entropy(&mut losses, &mut l, &targets, n, v, vp, None);
        assert_eq!(losses[1], 0.0);
        losses.iter().sum::<f64>() * dloss
    };
    let mut dlogits = logits.clone();
    let mut losses = vec![0.0; n];
    cross_entropy(&mut losses, &mut dlogits, &targets, n, v, vp, Some(dloss));
    for row in 0..n {
        assert!(dlogits[row * vp + v..(row + 1) * vp].iter().all(|&x| x == 0.0), "padding columns get no gradient");
    }
    assert!(dlogits[vp..2 * vp].iter().all(|&x| x == 0.0), "ignored rows get no gradient");
    check("dlogits", &mut logits, &dlogits, fwd);
    // A uniform row costs ln V.
    let mut flat = vec![0.5; vp];
    let mut l = [0.0];
    cross_entropy(&mut l, &mut flat, &[1], 1, v, vp, None);
    assert!((l[0] - (v as f64).ln()).abs() < 1e-12);
}

#[test]
fn adamw_matches_a_hand_computed_step() {
    use gptk::backend::AdamWStep;
    let step =
        AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.5, t: 1, grad_scale: 0.5, seed: 0 };
    let mut p = vec![1.0f64, 2.0];
    let g = vec![4.0, -2.0];
    let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
    adamw(&mut p, &g, &mut m, &mut v, &step, 1); // decay on element 0 only
    // t=1: m̂ = g', v̂ = g'², update = sign(g')·(1 − ~eps); g' = g·0.5.
    let expect0 = 1.0 - 0.1 * (0.5 * 1.0 + 2.0 / (2.0 + 1e-8));
    let expect1 = 2.0 - 0.1 * (-1.0 / (1.0 + 1e-8));
    assert!((p[0] - expect0).abs() < 1e-6 && (p[1] - expect1).abs() < 1e-6, "{p:?}");
    assert!((m[0] - 0.2).abs() < 1e-6 && (v[1] - 0.01).abs() < 1e-6);
    assert!((norm_squared(&g) - 20.0).abs() < 1e-12);
}

#[test]
fn cached_attention_equals_full_causal_attention() {
    let mut rng = Rng::new(10);
    let (b, t, nh, hs) = (2, 7, 3, 4);
    let c = nh * hs;
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let (mut full, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    attention_forward(&mut full, &mut lse, &qkv, b, t, nh, hs, true);
    let t_max = 9;
    let mut kv = vec![f64::NAN; b * t_max * 2 * c];
    for pos in 0..t {
        let step: Vec<f64> = (0..b).flat_map(|bi| qkv[(bi * t + pos) * 3 * c..][..3 * c].to_vec()).collect();
        let mut out = vec![f64::NAN; b * c];
        attention_cached(&mut out, &step, &mut kv, b, t_max, pos, nh, hs);
        for bi in 0..b {
            for d in 0..c {
                let want = full[(bi * t + pos) * c + d];
                assert!((out[bi * c + d] - want).abs() < 1e-12, "pos {pos} b {bi} d {d}");
            }
        }
    }
}
