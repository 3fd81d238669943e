//! gptk's CPU model against PyTorch: the fixture `tests/reference/gpt2_tiny.safetensors` holds a
//! tiny GPT-2 (L=2, NH=2, C=32, ctx=16, V=67 padded to Vp=128) with float32 weights, two batches
//! (causal next-token, and bidirectional MLM-style with most targets ignored) and what a float64
//! PyTorch model computed on them: logits, d loss / d logits, per-token losses, the loss, every
//! parameter gradient, and the losses, gradient norms and weights over a few AdamW steps.
//! `tests/reference/make_fixture.py` writes it (and checks it against `transformers`'
//! GPT2LMHeadModel); docs/checkpoints.md says how to regenerate it.
//!
//! The weights are read with `gptk::checkpoint::load`, so the Hugging Face layout (Conv1D
//! transposes, padded embedding) is part of what is checked.
//!
//! Tolerances. Each element must satisfy |got − ref| ≤ rtol·(|ref| + rms(ref)): the rms term is
//! the absolute floor for elements near zero, whose rounding error scales with the size of the
//! terms that were summed (≈ the tensor's typical size), not with their own value.
//! - f32 backend, forward (logits, losses, loss): rtol 1e-5. f32 rounds at 6e-8; a logit is a
//!   few dozen ops deep with sums of 32–128 terms, so ~1e-6 is expected and 1e-5 leaves margin.
//! - f32 backend, gradients and dlogits: rtol 1e-4: the backward is twice as deep and its sums
//!   cancel (softmax − onehot, layernorm's mean removal), which costs an order of magnitude.
//! - f64 backend: rtol 1e-10 everywhere. Both sides then compute in float64 from the same
//!   float32 weights, so only summation order differs (~1e-15); anything above 1e-10 would be
//!   arithmetic that differs, not rounding.
//! - AdamW: see each test.
//!
//! One deliberate adjustment: gptk hands the backend d loss / d (token loss) = 1/n as an f32
//! (the `Backend` trait's type, what the GPU takes), so every gradient it computes is the exact
//! one times f32(1/n)·n, a factor within 6e-8 of 1. The reference gradients are scaled by that
//! factor before the comparison; it is invisible at f32 tolerances and would otherwise be the
//! only thing the f64 comparison measured.
//!
//! Every comparison prints one line in llm.c's style (max |diff|, relative L2 error, share of the
//! tolerance used); a failing test shows all of them.

use gptk::backend::cpu::{CpuBackend, Float};
use gptk::backend::{AdamWStep, Backend};
use gptk::checkpoint;
use gptk::model::Gpt;
use gptk::model::layout::{ActLayout, ParamLayout};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/gpt2_tiny.safetensors")
}

/// The fixture's tensors (decoded to f64 or i32) and metadata.
struct Fixture {
    floats: HashMap<String, (Vec<usize>, Vec<f64>)>,
    ints: HashMap<String, Vec<i32>>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load() -> Fixture {
        let path = fixture_path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("fixture header");
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).expect("fixture tensors");
        let (mut floats, mut ints) = (HashMap::new(), HashMap::new());
        for (name, view) in st.tensors() {
            let data = view.data();
            match view.dtype() {
                Dtype::F64 => {
                    let v = data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect();
                    floats.insert(name, (view.shape().to_vec(), v));
                }
                Dtype::F32 => {
                    let v = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect();
                    floats.insert(name, (view.shape().to_vec(), v));
                }
                Dtype::I32 => {
                    ints.insert(
                        name,
                        data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect(),
                    );
                }
                other => panic!("fixture tensor {name} has unexpected dtype {other:?}"),
            }
        }
        Fixture { floats, ints, meta }
    }

    fn f64s(&self, name: &str) -> &[f64] {
        &self.floats.get(name).unwrap_or_else(|| panic!("fixture has no tensor {name}")).1
    }

    fn i32s(&self, name: &str) -> &[i32] {
        self.ints.get(name).unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    /// f32(1/n)·n for the `case`'s n counted targets: the scale of gptk's gradients relative to
    /// the exact ones (see the module docs).
    fn dloss_rounding(&self, case: &str) -> f64 {
        let n = self.i32s(&format!("{case}.targets")).iter().filter(|&&x| x >= 0).count();
        (1.0f32 / n as f32) as f64 * n as f64
    }

    fn meta_json(&self, key: &str) -> serde_json::Value {
        serde_json::from_str(&self.meta[key]).unwrap_or_else(|e| panic!("fixture metadata {key}: {e}"))
    }

    /// A parameter-shaped fixture tensor (Hugging Face layout) in gptk's layout: Conv1D weights
    /// (C, OC) transposed to (OC, C).
    fn param_tensor(&self, prefix: &str, layout: &ParamLayout, name: &str) -> Vec<f64> {
        let spec = layout.spec(name).unwrap();
        let (shape, values) = &self.floats[&format!("{prefix}{name}")];
        if !spec.conv1d {
            assert_eq!(shape.iter().product::<usize>(), spec.tensor.len, "{prefix}{name}");
            return values.clone();
        }
        let (oc, c) = (spec.shape[0], spec.shape[1]);
        assert_eq!(shape, &[c, oc], "{prefix}{name}");
        let mut out = vec![0.0; oc * c];
        for i in 0..c {
            for o in 0..oc {
                out[o * c + i] = values[i * oc + o];
            }
        }
        out
    }
}

/// Per-tensor comparison lines and the names that failed.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    failed: Vec<String>,
}

impl Report {
    /// Checks |got − want| ≤ rtol·(|want| + rms(want)) element by element.
    fn compare(&mut self, name: &str, got: &[f64], want: &[f64], rtol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {} values, reference has {}", got.len(), want.len());
        let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
        let rms = norm / (want.len().max(1) as f64).sqrt();
        let (mut max_diff, mut max_ref, mut used, mut err2) = (0f64, 0f64, 0f64, 0f64);
        let mut ok = true;
        for (&g, &w) in got.iter().zip(want) {
            let d = (g - w).abs();
            let tol = rtol * (w.abs() + rms);
            // A NaN difference fails too.
            if d.is_nan() || d > tol {
                ok = false;
            }
            max_diff = max_diff.max(d);
            max_ref = max_ref.max(w.abs());
            err2 += d * d;
            used = used.max(if tol > 0.0 {
                d / tol
            } else if d == 0.0 {
                0.0
            } else {
                f64::INFINITY
            });
        }
        let rel_l2 = if norm > 0.0 { err2.sqrt() / norm } else { err2.sqrt() };
        let nans = got.iter().filter(|x| !x.is_finite()).count();
        let line = format!(
            "{} {name:<40} n={:<6} max|ref|={max_ref:<9.3e} max|diff|={max_diff:<9.3e} rel_l2={rel_l2:<9.3e} \
             tol used {:>6.2}% (rtol {rtol:.0e}){}",
            if ok { "ok  " } else { "FAIL" },
            got.len(),
            100.0 * used,
            if nans > 0 { format!(" {nans} non-finite") } else { String::new() },
        );
        eprintln!("{line}");
        if !ok {
            self.failed.push(line.clone());
        }
        self.lines.push(line);
    }

    fn assert_ok(self, what: &str) {
        assert!(
            self.failed.is_empty(),
            "{what}: {} of {} tensors outside tolerance:\n{}\nfull report:\n{}",
            self.failed.len(),
            self.lines.len(),
            self.failed.join("\n"),
            self.lines.join("\n")
        );
    }
}

/// The fixture's model on the CPU backend in precision `F`, weights loaded through the
/// checkpoint reader.
fn model<F: Float>(fx: &Fixture) -> Gpt<CpuBackend<F>> {
    let loaded = checkpoint::load(&fixture_path()).unwrap_or_else(|e| panic!("{e}"));
    let batch = fx.meta_json("batch");
    let (b, t) = (batch["b"].as_u64().unwrap() as usize, batch["t"].as_u64().unwrap() as usize);
    assert_eq!((loaded.cfg.n_layer, loaded.cfg.n_embd, loaded.cfg.vocab_size), (2, 32, 67));
    let acts = ActLayout::new(&loaded.cfg, b, t, None);
    assert_eq!(acts.chunk, b * t, "the logits of the whole batch must be held at once for the comparison");
    let mut m = Gpt::new(loaded.cfg, acts, |p, a| Ok(CpuBackend::<F>::new(p.total, a))).unwrap();
    m.load_params(&loaded.params).unwrap();
    m
}

fn to_f64<F: Float>(xs: &[F]) -> Vec<f64> {
    xs.iter().map(|x| x.f64()).collect()
}

/// Forward, then forward + backward, on one fixture case; every output against the reference.
fn check_case<F: Float>(case: &str, causal: bool, rtol_fwd: f64, rtol_bwd: f64) {
    let fx = Fixture::load();
    let mut m = model::<F>(&fx);
    m.set_batch(fx.i32s(&format!("{case}.tokens")), fx.i32s(&format!("{case}.targets"))).unwrap();
    let mut report = Report::default();

    m.forward(causal).unwrap();
    let get = |m: &Gpt<CpuBackend<F>>, t| to_f64(m.backend.get(t));
    report.compare(&format!("{case}.logits"), &get(&m, m.acts.logits), fx.f64s(&format!("{case}.logits")), rtol_fwd);
    let losses = get(&m, m.acts.losses);
    report.compare(&format!("{case}.losses"), &losses, fx.f64s(&format!("{case}.losses")), rtol_fwd);
    let mean = losses.iter().sum::<f64>() / m.counted_targets() as f64;
    report.compare(&format!("{case}.loss"), &[mean], fx.f64s(&format!("{case}.loss")), rtol_fwd);

    m.zero_grads().unwrap();
    let loss = m.forward_backward(causal, 1.0).unwrap();
    // The returned loss is an f32 whatever the backend: 1e-6 is ten f32 roundings.
    report.compare(&format!("{case}.loss (returned f32)"), &[loss as f64], fx.f64s(&format!("{case}.loss")), 1e-6);
    let r = fx.dloss_rounding(case);
    let scaled = |xs: &[f64]| xs.iter().map(|x| x * r).collect::<Vec<f64>>();
    // After the backward the logits buffer holds d loss / d logits.
    let dlogits = scaled(fx.f64s(&format!("{case}.dlogits")));
    report.compare(&format!("{case}.dlogits"), &get(&m, m.acts.logits), &dlogits, rtol_bwd);
    for spec in m.params.specs.clone() {
        let want = scaled(&fx.param_tensor(&format!("{case}.grad."), &m.params, &spec.name));
        report.compare(&format!("{case}.grad.{}", spec.name), &get(&m, spec.tensor.grad()), &want, rtol_bwd);
    }
    report.assert_ok(&format!("{case} ({})", std::any::type_name::<F>()));
}

#[test]
fn causal_f32_matches_pytorch() {
    check_case::<f32>("causal", true, 1e-5, 1e-4);
}

#[test]
fn bidirectional_mlm_f32_matches_pytorch() {
    check_case::<f32>("mlm", false, 1e-5, 1e-4);
}

#[test]
fn causal_f64_matches_pytorch_to_rounding() {
    check_case::<f64>("causal", true, 1e-10, 1e-10);
}

#[test]
fn bidirectional_mlm_f64_matches_pytorch_to_rounding() {
    check_case::<f64>("mlm", false, 1e-10, 1e-10);
}

/// The fixture's AdamW steps on the causal batch, as gptk's trainer runs them: zero the
/// gradients, forward + backward, global norm, grad_scale = min(1, clip / norm), one update.
fn check_adamw<F: Float>(rtol_loss: f64, rtol_params: f64, skip_key_bias: bool) {
    let fx = Fixture::load();
    let hp = fx.meta_json("adamw");
    let h = |k: &str| hp[k].as_f64().unwrap_or_else(|| panic!("adamw.{k}"));
    let steps = hp["steps"].as_u64().unwrap();
    let mut m = model::<F>(&fx);
    m.set_batch(fx.i32s("causal.tokens"), fx.i32s("causal.targets")).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let mean_loss = |m: &Gpt<CpuBackend<F>>| {
        m.backend.get(m.acts.losses).iter().map(|x| x.f64()).sum::<f64>() / m.counted_targets() as f64
    };
    for t in 1..=steps {
        m.zero_grads().unwrap();
        m.forward_backward(true, 1.0).unwrap();
        losses.push(mean_loss(&m));
        let norm = m.backend.grad_norm_squared(m.shard()).unwrap().sqrt();
        norms.push(norm);
        let step = AdamWStep {
            lr: h("lr") as f32,
            beta1: h("beta1") as f32,
            beta2: h("beta2") as f32,
            eps: h("eps") as f32,
            weight_decay: h("weight_decay") as f32,
            t,
            grad_scale: (h("grad_clip") / norm).min(1.0) as f32,
            seed: 0,
        };
        m.adamw(&step).unwrap();
    }
    m.forward(true).unwrap();
    losses.push(mean_loss(&m));

    let mut report = Report::default();
    report.compare("adamw.losses", &losses, fx.f64s("adamw.losses"), rtol_loss);
    let r = fx.dloss_rounding("causal");
    let ref_norms: Vec<f64> = fx.f64s("adamw.grad_norms").iter().map(|x| x * r).collect();
    report.compare("adamw.grad_norms", &norms, &ref_norms, rtol_loss);
    let c = m.cfg.n_embd;
    for spec in m.params.specs.clone() {
        let want = fx.param_tensor("adamw.params.", &m.params, &spec.name);
        let got = to_f64(m.backend.get(spec.tensor));
        let name = format!("adamw.params.{}", spec.name);
        if !spec.name.ends_with("attn.c_attn.bias") || !skip_key_bias {
            report.compare(&name, &got, &want, rtol_params);
            continue;
        }
        // The key bias adds q·b_k to every score of a row, which the softmax ignores: its exact
        // gradient is 0, so Adam divides rounding noise by √v + ε and the f32 update is noise
        // (up to lr per step) where the f64 one is ~0. Compare q and v; check the reference key
        // bias did not move, which is what the argument predicts.
        report.compare(&format!("{name}[q]"), &got[..c], &want[..c], rtol_params);
        report.compare(&format!("{name}[v]"), &got[2 * c..], &want[2 * c..], rtol_params);
        let initial = fx.param_tensor("transformer.", &m.params, &spec.name);
        report.compare(&format!("{name}[k] (reference, unmoved)"), &want[c..2 * c], &initial[c..2 * c], 1e-6);
    }
    report.assert_ok(&format!("adamw ({})", std::any::type_name::<F>()));
}

/// f32: after four steps of lr 1e-2 the f32 rounding of every earlier step has been carried
/// forward through the loss surface; 1e-4 on losses and weights. Weights move by ~4e-2 and the
/// measured error is ~1e-7 relative, so the margin is wide both ways: skipping the clipping, or
/// decaying the biases and gains too, each fails this test by 4× to 600× its tolerance.
#[test]
fn adamw_steps_f32_match_pytorch() {
    check_adamw::<f32>(1e-4, 1e-4, true);
}

/// f64: the hyper-parameters are the same f32 numbers on both sides, the only rounding left is
/// grad_scale's conversion to f32 (3e-8 relative, moving weights by ~1e-10) and the reference
/// weights' storage as f32 (6e-8 relative): 1e-8 on losses, 2e-7 on weights.
#[test]
fn adamw_steps_f64_match_pytorch() {
    check_adamw::<f64>(1e-8, 2e-7, false);
}

/// The comparison itself: a perturbation at the tolerance's edge fails, NaN fails, and the
/// report names the tensor.
#[test]
fn report_catches_small_errors_and_nan() {
    let want = vec![1.0, -2.0, 0.0, 3.0];
    let mut r = Report::default();
    r.compare("same", &want, &want, 1e-5);
    assert!(r.failed.is_empty());
    let mut off = want.clone();
    off[1] += 1e-3;
    r.compare("off", &off, &want, 1e-5);
    let mut nan = want.clone();
    nan[2] = f64::NAN;
    r.compare("nan", &nan, &want, 1e-5);
    assert_eq!(r.failed.len(), 2);
    assert!(r.failed[0].contains("off") && r.failed[1].contains("nan") && r.failed[1].contains("1 non-finite"));
}
