//! The whole schedule (forward, chunked classifier, backward) against finite differences on a
//! small model in f64, causal and bidirectional, with ignored targets.

use gptk::backend::cpu::CpuBackend;
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, Arena, Recompute};
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;

fn model_f64(cfg: &ModelConfig, b: usize, t: usize, chunk: Option<usize>) -> Gpt<CpuBackend<f64>> {
    let acts = ActLayout::new(cfg, b, t, chunk);
    let mut m = Gpt::new(cfg.clone(), acts, |p, a| Ok(CpuBackend::new(p.total, a))).unwrap();
    let host = init_params(cfg, &m.params, 11);
    m.load_params(&host).unwrap();
    // Make biases and layernorm parameters non-trivial so their gradients are exercised.
    let mut rng = Rng::new(5);
    for spec in m.params.specs.clone() {
        if !spec.decay {
            for x in m.backend.get_mut(spec.tensor) {
                *x += rng.normal() * 0.1;
            }
        }
    }
    m
}

/// The f32 loss returned by `forward` is too coarse for finite differences, so the check reads
/// the f64 per-token losses from the backend directly.
fn loss_f64(m: &mut Gpt<CpuBackend<f64>>, causal: bool) -> f64 {
    m.forward(causal).unwrap();
    let losses = m.backend.get(m.acts.losses);
    losses.iter().sum::<f64>() / m.counted_targets() as f64
}

fn gradcheck_f64(causal: bool, chunk: Option<usize>) {
    let cfg = ModelConfig { n_layer: 2, n_head: 2, n_embd: 8, n_ctx: 7, vocab_size: 13 };
    let (b, t) = (2, 5);
    let mut m = model_f64(&cfg, b, t, chunk);
    let mut rng = Rng::new(3);
    let tokens: Vec<i32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64 + 3) as i32).collect();
    let mut targets: Vec<i32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
    targets[1] = -1;
    targets[6] = -1;
    m.set_batch(&tokens, &targets).unwrap();
    m.zero_grads().unwrap();
    m.forward_backward(causal, 1.0).unwrap();
    let grads = m.backend.grads.clone();
    let h = 1e-6;
    let mut checked = 0;
    for spec in m.params.specs.clone() {
        let stride = (spec.tensor.len / 40).max(1);
        for i in (0..spec.tensor.len).step_by(stride) {
            let at = spec.tensor.offset + i;
            let orig = m.backend.params[at];
            m.backend.params[at] = orig + h;
            let lp = loss_f64(&mut m, causal);
            m.backend.params[at] = orig - h;
            let lm = loss_f64(&mut m, causal);
            m.backend.params[at] = orig;
            let numeric = (lp - lm) / (2.0 * h);
            let err = (numeric - grads[at]).abs() / (1e-3 + numeric.abs());
            assert!(err < 1e-4, "{}[{i}]: analytic {} vs numeric {numeric}", spec.name, grads[at]);
            checked += 1;
        }
    }
    assert!(checked > 300, "checked {checked}");
    // Padding rows of the embedding beyond the special tokens never get a gradient.
    let live = (cfg.vocab_size + gptk::model::config::NUM_SPECIAL_TOKENS) * cfg.n_embd;
    let wte = m.params.wte;
    assert!(grads[wte.offset + live..wte.end()].iter().all(|&g| g == 0.0));
}

#[test]
fn causal_model_gradients_match_finite_differences() {
    gradcheck_f64(true, None);
}

#[test]
fn bidirectional_model_gradients_match_finite_differences() {
    gradcheck_f64(false, None);
}

#[test]
fn chunked_classifier_gives_the_same_gradients() {
    // 3-row chunks over 10 rows: the last chunk is short.
    gradcheck_f64(true, Some(3));
}

#[test]
fn gradient_accumulation_adds_micro_batches() {
    let cfg = ModelConfig { n_layer: 1, n_head: 2, n_embd: 8, n_ctx: 4, vocab_size: 9 };
    let mut m = model_f64(&cfg, 1, 4, None);
    m.set_batch(&[1, 2, 3, 4], &[2, 3, 4, 5]).unwrap();
    m.zero_grads().unwrap();
    m.forward_backward(true, 1.0).unwrap();
    let once = m.backend.grads.clone();
    m.zero_grads().unwrap();
    m.forward_backward(true, 0.5).unwrap();
    m.forward_backward(true, 0.5).unwrap();
    for (a, b) in once.iter().zip(&m.backend.grads) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()));
    }
    assert_eq!(m.backend.arena(Arena::Grads).len(), m.params.total);
}

/// Fine-tuning (GPT-1): class loss at the extract positions + λ × LM loss, all parameters and the
/// head checked against finite differences; without the LM term too.
fn classification_gradcheck(lm_weight: f64) {
    let cfg = ModelConfig { n_layer: 1, n_head: 2, n_embd: 8, n_ctx: 6, vocab_size: 11 };
    let (b, t, nc) = (2, 6, 3);
    let acts = ActLayout::for_classification(&cfg, b, t, nc, Recompute::Off);
    let mut m = Gpt::new(cfg.clone(), acts, |p, a| Ok(CpuBackend::<f64>::new(p.total, a))).unwrap();
    assert_eq!(m.params.n_classes(), nc);
    let host = init_params(&cfg, &m.params, 2);
    m.load_params(&host).unwrap();
    let mut rng = Rng::new(4);
    for spec in m.params.specs.clone() {
        if !spec.decay {
            for x in m.backend.get_mut(spec.tensor) {
                *x += rng.normal() * 0.1;
            }
        }
    }
    // Sequence 0 ends (extract) at position 4, sequence 1 at position 5.
    let tokens = [12, 3, 4, 5, 14, 15, 12, 7, 8, 9, 1, 14];
    let targets = [3, 4, 5, -1, -1, -1, 7, 8, 9, 1, -1, -1];
    let mut classes = vec![-1; b * t];
    classes[4] = 2;
    classes[t + 5] = 0;
    m.set_batch(&tokens, &targets).unwrap();
    m.set_class_targets(&classes).unwrap();
    m.zero_grads().unwrap();
    let (cls, lm) = m.forward_backward_classify(true, lm_weight as f32, 1.0).unwrap();
    assert!(cls.is_finite() && (lm_weight == 0.0) == lm.is_none());
    let grads = m.backend.grads.clone();
    let total = |m: &mut Gpt<CpuBackend<f64>>| {
        m.forward_classify(true, &[]).unwrap();
        let c = m.acts.cls.unwrap();
        let cls: f64 = m.backend.get(c.losses).iter().sum::<f64>() / 2.0;
        let lm = if lm_weight > 0.0 { loss_f64(m, true) } else { 0.0 };
        cls + lm_weight * lm
    };
    let h = 1e-6;
    let mut checked = 0;
    for spec in m.params.specs.clone() {
        let stride = (spec.tensor.len / 25).max(1);
        for i in (0..spec.tensor.len).step_by(stride) {
            let at = spec.tensor.offset + i;
            let orig = m.backend.params[at];
            m.backend.params[at] = orig + h;
            let lp = total(&mut m);
            m.backend.params[at] = orig - h;
            let lm = total(&mut m);
            m.backend.params[at] = orig;
            let numeric = (lp - lm) / (2.0 * h);
            let err = (numeric - grads[at]).abs() / (1e-3 + numeric.abs());
            assert!(err < 1e-4, "λ={lm_weight} {}[{i}]: analytic {} vs numeric {numeric}", spec.name, grads[at]);
            checked += 1;
        }
    }
    assert!(checked > 200);
    // The head got a gradient.
    let (w, _) = m.params.head.unwrap();
    assert!(grads[w.offset..w.end()].iter().any(|&g| g != 0.0));
}

#[test]
fn classification_with_auxiliary_lm_loss_matches_finite_differences() {
    classification_gradcheck(0.5);
}

#[test]
fn classification_alone_matches_finite_differences() {
    classification_gradcheck(0.0);
}
