//! Tests that need a CUDA GPU (run with `cargo test --release -- --ignored` on a GPU machine, as
//! scripts/gpu-check.sh does): the checker passes in both precisions, and a small model trains on
//! the GPU with falling loss and repeats itself bitwise.

use gptk::backend::cuda::{CudaBackend, EpilogueCalls};
use gptk::backend::{AdamWStep, AttentionKernels, Backend, Precision};
use gptk::check::{self, CheckOptions};
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, Arena, Recompute, Tensor};
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;

fn checker_passes(precision: Precision) {
    let opts = CheckOptions { op: None, precision, device: 0, seed: 7 };
    let rows = check::run(&opts, |_| {}).expect("the checker runs");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!("{} [{}] {}: tol used {:.1}%, rel L2 {:.2e}", r.op, r.case, r.tensor, 100.0 * r.tol_share, r.rel_l2)
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} comparisons failed:\n{}", failed.len(), rows.len(), failed.join("\n"));
    assert!(rows.len() > 100, "only {} comparisons ran", rows.len());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_matches_the_cpu_in_f32() {
    checker_passes(Precision::F32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_matches_the_cpu_in_bf16() {
    checker_passes(Precision::Bf16);
}

/// `steps` AdamW steps of a model of `n_head` heads on one fixed batch: the losses and the final
/// parameters.
fn fixed_batch_run(precision: Precision, n_head: usize, steps: u64) -> (Vec<f32>, Vec<f32>) {
    let out = run(precision, n_head, steps, Setup::DEFAULT);
    (out.losses, out.params)
}

/// How a run of [`run`] differs from the default.
#[derive(Clone, Copy)]
struct Setup {
    recompute: Recompute,
    gelu_epilogue: bool,
    bias_grad_epilogue: bool,
    cuda_graphs: bool,
    /// Each step one `Gpt::train_step` instead of the ops one by one.
    whole_steps: bool,
    /// Distinct batches, taken in turn (1: the same batch every step).
    batches: usize,
    /// The tensor-core attention's kernels (Hopper's must load where asked for).
    attention: AttentionKernels,
}

impl Setup {
    const DEFAULT: Setup = Setup {
        recompute: Recompute::Off,
        gelu_epilogue: true,
        bias_grad_epilogue: true,
        cuda_graphs: false,
        whole_steps: false,
        batches: 1,
        attention: AttentionKernels::Mma,
    };
}

/// What a run left: the losses, the final parameters, how the matmul+GELU ops and the bias
/// gradients ran and how often a CUDA graph was launched.
struct Outcome {
    losses: Vec<f32>,
    params: Vec<f32>,
    gelu: EpilogueCalls,
    bias_grad: EpilogueCalls,
    graph_launches: usize,
}

/// `steps` AdamW steps of a model of `n_head` heads set up as `setup` says.
fn run(precision: Precision, n_head: usize, steps: u64, setup: Setup) -> Outcome {
    let cfg = ModelConfig { n_layer: 2, n_head, n_embd: 128, n_ctx: 64, vocab_size: 512 };
    let (b, t) = (4, 64);
    let acts = ActLayout::with_recompute(&cfg, b, t, None, setup.recompute);
    let mut model = Gpt::new(cfg.clone(), acts, |p, a| CudaBackend::new(p, a, precision, 0)).expect("a GPU backend");
    model.backend.set_gelu_epilogue(setup.gelu_epilogue);
    model.backend.set_bias_grad_epilogue(setup.bias_grad_epilogue);
    model.backend.set_cuda_graphs(setup.cuda_graphs);
    model.backend.set_attention_kernels(setup.attention).expect("the attention kernels load");
    assert_eq!(model.backend.attention_kernels(cfg.head_size()), setup.attention);
    let host = init_params(&cfg, &model.params, 3);
    model.load_params(&host).unwrap();
    let mut rng = Rng::new(11);
    let batches: Vec<(Vec<i32>, Vec<i32>)> = (0..setup.batches)
        .map(|_| {
            let tokens: Vec<i32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
            let targets: Vec<i32> = tokens[1..].iter().copied().chain([0]).collect();
            (tokens, targets)
        })
        .collect();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let (tokens, targets) = &batches[(step as usize - 1) % batches.len()];
        model.set_batch(tokens, targets).unwrap();
        let adamw = |grad_scale| AdamWStep {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            t: step,
            grad_scale,
            seed: step,
        };
        if setup.whole_steps {
            let s = model.train_step(true, &adamw(1.0), 1.0).unwrap();
            assert!(s.applied, "step {step}: {s:?}");
            losses.push(s.loss);
            continue;
        }
        model.zero_grads().unwrap();
        let loss = model.forward_backward(true, 1.0).unwrap();
        let norm = model.grad_norm().unwrap();
        assert!(loss.is_finite() && norm.is_finite(), "step {step}: loss {loss}, grad norm {norm}");
        model.adamw(&adamw(if norm > 1.0 { 1.0 / norm } else { 1.0 })).unwrap();
        losses.push(loss);
    }
    let all = Tensor { arena: Arena::Params, offset: 0, len: model.params.total };
    let params = model.backend.download(all).unwrap();
    Outcome {
        losses,
        params,
        gelu: model.backend.gelu_epilogue_calls(),
        bias_grad: model.backend.bias_grad_epilogue_calls(),
        graph_launches: model.backend.graph_launches(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Overfits one fixed batch for a few dozen AdamW steps: the loss must fall well below its start.
fn loss_falls(precision: Precision) {
    let (losses, _) = fixed_batch_run(precision, 4, 40);
    let (first, last) = (losses[0], *losses.last().unwrap());
    println!("{precision}: loss {first:.4} → {last:.4}");
    assert!((first - 512f32.ln()).abs() < 0.5, "initial loss {first} is not near ln(V)");
    // On the CPU this run falls from 6.25 to below 0.01.
    assert!(last < 0.2 * first, "loss did not fall: {losses:?}");
}

/// The same steps twice give the same bits: every kernel is deterministic, cuBLASLt runs on one
/// stream with its own workspace, and AdamW's stochastic rounding is seeded. Two heads of 64 take
/// the tensor-core attention in bf16; four of 32, the simple kernels.
#[test]
#[ignore = "needs a CUDA GPU"]
fn training_repeats_bitwise() {
    for precision in [Precision::Bf16, Precision::F32] {
        for n_head in [2, 4] {
            let (losses, params) = fixed_batch_run(precision, n_head, 10);
            let (again, params_again) = fixed_batch_run(precision, n_head, 10);
            assert_eq!(bits(&losses), bits(&again), "{precision}, {n_head} heads: losses differ");
            assert!(bits(&params) == bits(&params_again), "{precision}, {n_head} heads: parameters differ");
        }
    }
}

/// Activation recomputation gives the same bits as keeping everything (with the GELU apart from
/// its GEMMs in both runs: a plan that recomputes it runs the forward's GELU apart, and the
/// backward's fused DGELU works from the unrounded sum, so it would differ in the last bit): the
/// recomputed GELU and layernorm outputs are those of the forward, and every buffer of this shape
/// starts on a 256-byte boundary whatever the level, so cuBLASLt is asked for the same algorithms.
#[test]
#[ignore = "needs a CUDA GPU"]
fn recompute_repeats_the_same_bits() {
    for precision in [Precision::Bf16, Precision::F32] {
        let apart = Setup { gelu_epilogue: false, ..Setup::DEFAULT };
        let kept = run(precision, 2, 5, apart);
        let (losses, params) = (kept.losses, kept.params);
        for level in [Recompute::Gelu, Recompute::GeluLayernorm] {
            let out = run(precision, 2, 5, Setup { recompute: level, ..apart });
            let (again, params_again) = (out.losses, out.params);
            assert_eq!(bits(&losses), bits(&again), "{precision}, recompute {level}: losses differ");
            assert!(bits(&params) == bits(&params_again), "{precision}, recompute {level}: parameters differ");
        }
    }
}

/// A step's forward and backward replayed from a CUDA graph give the bits of the same ops
/// launched one by one, with a new batch every step (the graph reads the tokens and targets
/// uploaded before it): recorded at the second step, replayed from the third.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_graphs_replay_the_same_bits() {
    for precision in [Precision::Bf16, Precision::F32] {
        for n_head in [2, 4] {
            let setup = Setup { batches: 3, ..Setup::DEFAULT };
            let plain = run(precision, n_head, 8, setup);
            let graphed = run(precision, n_head, 8, Setup { cuda_graphs: true, ..setup });
            assert_eq!(graphed.graph_launches, 7, "{precision}, {n_head} heads: the graph was not used");
            assert_eq!(plain.graph_launches, 0);
            assert_eq!(bits(&graphed.losses), bits(&plain.losses), "{precision}, {n_head} heads: losses differ");
            assert!(bits(&graphed.params) == bits(&plain.params), "{precision}, {n_head} heads: parameters differ");
        }
    }
}

/// On Hopper, the same with the attention on the wgmma kernels and their TMA forward, whose tensor
/// map of qkv the host encodes at each launch, as it is recorded too: the graph's bits are the
/// ops' one by one.
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_graphs_replay_the_tma_attention_forward() {
    let device = gptk::backend::cuda::probe_device(0).expect("a GPU");
    if device.compute_capability != (9, 0) {
        println!("note: {} is not compute capability 9.0; nothing to check", device.name);
        return;
    }
    let setup = Setup { batches: 3, attention: AttentionKernels::WgmmaTma, ..Setup::DEFAULT };
    let plain = run(Precision::Bf16, 2, 4, setup);
    let graphed = run(Precision::Bf16, 2, 4, Setup { cuda_graphs: true, ..setup });
    assert_eq!(graphed.graph_launches, 3, "the graph was not used");
    assert_eq!(bits(&graphed.losses), bits(&plain.losses), "losses differ");
    assert!(bits(&graphed.params) == bits(&plain.params), "parameters differ");
}

/// A whole step (`Gpt::train_step`: the gradients zeroed, the forward and backward, the norm,
/// the clipping and AdamW, the step's learning rate and seed read from device memory) replayed
/// from a CUDA graph gives the bits of the ops launched one by one, a new batch every step; so
/// does the same step unrecorded.
#[test]
#[ignore = "needs a CUDA GPU"]
fn whole_steps_replay_the_same_bits() {
    for precision in [Precision::Bf16, Precision::F32] {
        let setup = Setup { batches: 3, ..Setup::DEFAULT };
        let plain = run(precision, 4, 8, setup);
        let whole = run(precision, 4, 8, Setup { whole_steps: true, ..setup });
        let graphed = run(precision, 4, 8, Setup { whole_steps: true, cuda_graphs: true, ..setup });
        assert_eq!(graphed.graph_launches, 7, "{precision}: the graph was not used");
        for (what, o) in [("unrecorded", &whole), ("replayed", &graphed)] {
            assert_eq!(bits(&o.losses), bits(&plain.losses), "{precision}, {what} whole steps: losses differ");
            assert!(bits(&o.params) == bits(&plain.params), "{precision}, {what} whole steps: parameters differ");
        }
    }
}

/// The MLP's GELU and the bias gradients run in cuBLASLt's epilogues at these widths (4C = 512)
/// in bf16, and training with them follows training with each apart: they differ only in where
/// a sum is rounded.
#[test]
#[ignore = "needs a CUDA GPU"]
fn the_epilogues_train_like_the_ops_apart() {
    for precision in [Precision::Bf16, Precision::F32] {
        let with = run(precision, 2, 10, Setup::DEFAULT);
        println!("{precision}: GELU {:?}, bias grad {:?}; losses {:?}", with.gelu, with.bias_grad, with.losses);
        // Two layers, ten steps: a forward and a backward GELU op per layer and step, and four
        // biased linear layers per layer and step.
        assert_eq!(with.gelu.fused + with.gelu.apart, 40, "{:?}", with.gelu);
        assert_eq!(with.bias_grad.fused + with.bias_grad.apart, 80, "{:?}", with.bias_grad);
        if precision == Precision::Bf16 {
            assert_eq!(with.gelu.apart, 0, "cuBLASLt refused the bf16 GELU epilogue at GPT-2-like widths");
            assert_eq!(with.bias_grad.apart, 0, "cuBLASLt refused the bf16 bias-gradient epilogue");
        }
        let gelu_apart = run(precision, 2, 10, Setup { gelu_epilogue: false, ..Setup::DEFAULT });
        assert_eq!(gelu_apart.gelu, EpilogueCalls { fused: 0, apart: 40 });
        let bias_apart = run(precision, 2, 10, Setup { bias_grad_epilogue: false, ..Setup::DEFAULT });
        assert_eq!(bias_apart.bias_grad, EpilogueCalls { fused: 0, apart: 80 });
        for (what, other) in [("GELU", gelu_apart.losses), ("bias grad", bias_apart.losses)] {
            for (step, (a, b)) in with.losses.iter().zip(&other).enumerate() {
                assert!(
                    (a - b).abs() <= 0.02 * b.abs(),
                    "step {}: loss {a} with the epilogue, {b} with {what} apart",
                    step + 1
                );
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_small_model_trains_in_bf16() {
    loss_falls(Precision::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_small_model_trains_in_f32() {
    loss_falls(Precision::F32);
}

/// Ten AdamW steps of the same model from the same start on the CPU and on the GPU in f32: the
/// loss curves must agree (AdamW's normalised updates let rounding differences grow a little
/// step by step, hence the 2%).
#[test]
#[ignore = "needs a CUDA GPU"]
fn f32_training_follows_the_cpu() {
    let cfg = ModelConfig { n_layer: 2, n_head: 4, n_embd: 64, n_ctx: 32, vocab_size: 300 };
    let (b, t) = (2, 32);
    let mut gpu =
        Gpt::new(cfg.clone(), ActLayout::new(&cfg, b, t, None), |p, a| CudaBackend::new(p, a, Precision::F32, 0))
            .expect("a GPU backend");
    let mut cpu = Gpt::cpu(cfg.clone(), b, t);
    let host = init_params(&cfg, &cpu.params, 5);
    cpu.load_params(&host).unwrap();
    gpu.load_params(&host).unwrap();
    let mut rng = Rng::new(2);
    let tokens: Vec<i32> = (0..b * t).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
    let targets: Vec<i32> = tokens[1..].iter().copied().chain([-1]).collect();
    cpu.set_batch(&tokens, &targets).unwrap();
    gpu.set_batch(&tokens, &targets).unwrap();
    for step in 1..=10u64 {
        let adamw = AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: step,
            grad_scale: 1.0,
            seed: step,
        };
        cpu.zero_grads().unwrap();
        gpu.zero_grads().unwrap();
        let (lc, lg) = (cpu.forward_backward(true, 1.0).unwrap(), gpu.forward_backward(true, 1.0).unwrap());
        assert!((lc - lg).abs() <= 0.02 * lc.abs(), "step {step}: cpu loss {lc}, gpu loss {lg}");
        cpu.adamw(&adamw).unwrap();
        gpu.adamw(&adamw).unwrap();
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn too_large_a_plan_is_refused_with_a_batch_that_fits() {
    let cfg = ModelConfig::preset("d12", 50257).unwrap();
    // 4096 sequences of 1024 tokens need terabytes of activations.
    let acts = ActLayout::new(&cfg, 4096, 1024, None);
    let err = Gpt::new(cfg, acts, |p, a| CudaBackend::new(p, a, Precision::Bf16, 0)).err().expect("must not fit");
    let text = err.to_string();
    assert!(text.contains("out of device memory") && text.contains("would fit"), "{text}");
}
