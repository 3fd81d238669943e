//! Activation recomputation (`--recompute`) changes memory, never numbers: on the CPU the losses
//! and every gradient are bitwise those of a plan that keeps every activation (f32 and f64, causal
//! and bidirectional, classification too), the activation arena shrinks by exactly the buffers
//! the level shares, and `gptk train --recompute 2` prints the same losses as without.

use gptk::backend::Precision;
use gptk::backend::cpu::{CpuBackend, Float};
use gptk::backend::cuda::MemoryPlan;
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, ParamLayout, Recompute, TENSOR_ALIGN};
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;
use std::process::Output;

mod common;
use common::{gptk, temp_dir};

const LEVELS: [Recompute; 3] = [Recompute::Off, Recompute::Gelu, Recompute::GeluLayernorm];

/// Three layers so that the shared buffers serve several; B·T·C = 120 is not a multiple of the
/// alignment, so the sizes below count the padding too.
const CFG: ModelConfig = ModelConfig { n_layer: 3, n_head: 2, n_embd: 12, n_ctx: 7, vocab_size: 13 };
const B: usize = 2;
const T: usize = 5;

fn model<F: Float>(acts: ActLayout) -> Gpt<CpuBackend<F>> {
    let mut m = Gpt::new(CFG, acts, |p, a| Ok(CpuBackend::<F>::new(p.total, a))).unwrap();
    let host = init_params(&CFG, &m.params, 7);
    m.load_params(&host).unwrap();
    // Non-trivial layernorm gains and biases, so that recomputed layernorms are exercised.
    let mut rng = Rng::new(9);
    for spec in m.params.specs.clone() {
        if !spec.decay {
            for x in m.backend.get_mut(spec.tensor) {
                *x += F::of(rng.normal() * 0.2);
            }
        }
    }
    m
}

fn bits<F: Float>(xs: &[F]) -> Vec<u64> {
    xs.iter().map(|x| x.f64().to_bits()).collect()
}

/// Random tokens and targets for one micro-batch, some targets ignored.
fn batch(rng: &mut Rng) -> (Vec<i32>, Vec<i32>) {
    let tokens = (0..B * T).map(|_| rng.below(CFG.vocab_size as u64 + 3) as i32).collect();
    let targets = (0..B * T).map(|i| if i % 4 == 1 { -1 } else { rng.below(CFG.vocab_size as u64) as i32 }).collect();
    (tokens, targets)
}

/// Per-token losses of two accumulated micro-batches and the gradients they leave.
fn pretraining_step<F: Float>(recompute: Recompute, causal: bool, chunk: Option<usize>) -> (Vec<u64>, Vec<u64>) {
    let mut m = model::<F>(ActLayout::with_recompute(&CFG, B, T, chunk, recompute));
    assert_eq!(m.acts.recompute, recompute);
    let mut rng = Rng::new(21);
    let mut losses = Vec::new();
    m.zero_grads().unwrap();
    for _ in 0..2 {
        let (tokens, targets) = batch(&mut rng);
        m.set_batch(&tokens, &targets).unwrap();
        m.forward_backward(causal, 0.5).unwrap();
        losses.extend(bits(m.backend.get(m.acts.losses)));
    }
    (losses, bits(&m.backend.grads))
}

fn pretraining_is_bitwise_equal<F: Float>() {
    for (causal, chunk) in [(true, None), (false, None), (true, Some(3))] {
        let kept = pretraining_step::<F>(Recompute::Off, causal, chunk);
        assert!(kept.1.iter().any(|&g| f64::from_bits(g) != 0.0));
        for level in &LEVELS[1..] {
            let again = pretraining_step::<F>(*level, causal, chunk);
            assert!(again.0 == kept.0, "losses differ at recompute {level} (causal {causal})");
            assert!(again.1 == kept.1, "gradients differ at recompute {level} (causal {causal})");
        }
    }
}

#[test]
fn pretraining_losses_and_gradients_are_bitwise_equal_f32() {
    pretraining_is_bitwise_equal::<f32>();
}

#[test]
fn pretraining_losses_and_gradients_are_bitwise_equal_f64() {
    pretraining_is_bitwise_equal::<f64>();
}

/// A fine-tuning step (class loss, optionally with the auxiliary LM loss) at one level.
fn classification_step<F: Float>(recompute: Recompute, causal: bool, lm_weight: f32) -> (Vec<u64>, Vec<u64>) {
    let (nc, t) = (3, 6);
    let mut m = model_with_head::<F>(ActLayout::for_classification(&CFG, B, t, nc, recompute));
    let tokens = [12, 3, 4, 5, 14, 15, 12, 7, 8, 9, 1, 14];
    let targets = [3, 4, 5, -1, -1, -1, 7, 8, 9, 1, -1, -1];
    let mut classes = vec![-1; B * t];
    classes[4] = 2;
    classes[t + 5] = 0;
    m.set_batch(&tokens, &targets).unwrap();
    m.set_class_targets(&classes).unwrap();
    m.zero_grads().unwrap();
    m.forward_backward_classify(causal, lm_weight, 1.0).unwrap();
    let mut losses = bits(m.backend.get(m.acts.cls.unwrap().losses));
    losses.extend(bits(m.backend.get(m.acts.losses)));
    (losses, bits(&m.backend.grads))
}

fn model_with_head<F: Float>(acts: ActLayout) -> Gpt<CpuBackend<F>> {
    let mut m = Gpt::new(CFG, acts, |p, a| Ok(CpuBackend::<F>::new(p.total, a))).unwrap();
    let host = init_params(&CFG, &m.params, 3);
    m.load_params(&host).unwrap();
    m
}

#[test]
fn fine_tuning_gradients_are_bitwise_equal() {
    for (causal, lm_weight) in [(true, 0.5), (false, 0.0)] {
        let kept32 = classification_step::<f32>(Recompute::Off, causal, lm_weight);
        let kept64 = classification_step::<f64>(Recompute::Off, causal, lm_weight);
        for level in &LEVELS[1..] {
            assert!(classification_step::<f32>(*level, causal, lm_weight) == kept32, "f32, recompute {level}");
            assert!(classification_step::<f64>(*level, causal, lm_weight) == kept64, "f64, recompute {level}");
        }
    }
}

/// Elements of one aligned span of `n`.
fn aligned(n: usize) -> usize {
    n.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
}

/// Activation elements a level saves: level 1 keeps one GELU output for L layers, level 2 also one
/// layernorm output for the 2·L layernorms of the blocks.
fn expected_saving(cfg: &ModelConfig, bt: usize, level: Recompute) -> usize {
    let (l, c) = (cfg.n_layer, cfg.n_embd);
    let gelu = if level.gelu() { (l - 1) * aligned(bt * 4 * c) } else { 0 };
    let ln = if level.layernorm() { (2 * l - 1) * aligned(bt * c) } else { 0 };
    gelu + ln
}

#[test]
fn the_activation_arena_shrinks_by_the_shared_buffers() {
    let params = ParamLayout::new(&CFG);
    let kept = ActLayout::new(&CFG, B, T, None);
    for level in LEVELS {
        let a = ActLayout::with_recompute(&CFG, B, T, None, level);
        let saved = expected_saving(&CFG, B * T, level);
        assert_eq!(kept.acts_total - a.acts_total, saved, "recompute {level}");
        assert_eq!(
            (a.act_grads_total, a.stats_total, a.inputs_total),
            (kept.act_grads_total, kept.stats_total, kept.inputs_total)
        );
        let cpu = |a: &ActLayout| CpuBackend::<f32>::bytes_for(params.total, a);
        assert_eq!(cpu(&kept) - cpu(&a), saved * 4);
        assert_eq!(
            CpuBackend::<f64>::bytes_for(params.total, &kept) - CpuBackend::<f64>::bytes_for(params.total, &a),
            saved * 8
        );
        for (precision, bytes) in [(Precision::Bf16, 2), (Precision::F32, 4)] {
            let gpu = |a: &ActLayout| MemoryPlan::for_model(&params, a, precision).total();
            assert_eq!(gpu(&kept) - gpu(&a), saved * bytes, "{precision}, recompute {level}");
        }
    }
}

#[test]
fn gpt2_small_saves_what_the_performance_log_says() {
    // d12 at B = 8, T = 1024 in bf16: 11 GELU outputs of (8192, 3072) and 23 layernorm outputs of
    // (8192, 768), 804 MiB; the GELU outputs alone 528 MiB.
    let cfg = ModelConfig::preset("d12", 50257).unwrap();
    let params = ParamLayout::new(&cfg);
    let bf16 = |level| {
        MemoryPlan::for_model(&params, &ActLayout::with_recompute(&cfg, 8, 1024, None, level), Precision::Bf16).total()
    };
    assert_eq!(bf16(Recompute::Off) - bf16(Recompute::Gelu), 528 << 20);
    assert_eq!(bf16(Recompute::Off) - bf16(Recompute::GeluLayernorm), 804 << 20);
}

/// Training and validation losses printed as JSON lines, exactly as printed.
fn losses(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "gptk failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step" || v["event"] == "val")
        .map(|v| {
            format!("{} {} {}", v["event"], v["step"], if v["event"] == "step" { &v["loss"] } else { &v["val_loss"] })
        })
        .collect()
}

const RUN: &[&str] = &[
    "train",
    "--model",
    "micro",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--steps",
    "4",
    "--warmup-steps",
    "1",
    "--val-every",
    "2",
    "--val-batches",
    "2",
    "--sample-every",
    "0",
    "--checkpoint-every",
    "2",
    "--device",
    "cpu",
    "--json",
];

#[test]
fn training_with_recompute_prints_the_same_losses() {
    let dir = temp_dir("recompute-train");
    let kept = losses(&gptk(&[RUN, &["--out", "kept"]].concat(), &dir));
    assert_eq!(kept.iter().filter(|l| l.starts_with("\"step\"")).count(), 4, "{kept:?}");
    let recomputed = losses(&gptk(&[RUN, &["--out", "recomputed", "--recompute", "2"]].concat(), &dir));
    assert_eq!(recomputed, kept);
    let a = gptk::checkpoint::load(&dir.join("kept/step_000004")).unwrap();
    let b = gptk::checkpoint::load(&dir.join("recomputed/step_000004")).unwrap();
    assert!(a.params == b.params, "final parameters differ");
    // The level is not part of the run's identity: a run resumes under another level and still
    // repeats the losses.
    let first = losses(&gptk(&[RUN, &["--out", "split", "--stop-at", "2"]].concat(), &dir));
    let second = losses(&gptk(&[RUN, &["--out", "split", "--resume", "--recompute", "1"]].concat(), &dir));
    assert_eq!([first, second].concat(), kept);
    let toml = std::fs::read_to_string(dir.join("split/step_000004/run.toml")).unwrap();
    assert!(toml.contains("recompute = 1"), "{toml}");
}

#[test]
fn a_level_that_does_not_exist_fails_with_one_line() {
    let dir = temp_dir("recompute-bad");
    let out = gptk(&[RUN, &["--out", "r", "--recompute", "3"]].concat(), &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("recompute level 3 does not exist"), "{err}");
    std::fs::write(dir.join("run.toml"), "recompute = 7\n").unwrap();
    let out = gptk(&["train", "--config", "run.toml", "--out", "r"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("run.toml") && err.contains("recompute level 7"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = gptk(&["info", "--model", "tiny", "--vocab-size", "257", "--seq-len", "64", "--recompute", "1"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("recompute 1 saves"), "{text}");
}
