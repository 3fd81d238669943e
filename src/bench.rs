//! `gptk bench`: every kernel family and a whole GPT-2 124M training step timed on the GPU at
//! GPT-2 shapes, beside two ceilings measured in the same run, and optionally beside PyTorch's
//! numbers for the same cases (scripts/torch_reference.py).
//!
//! Method (scripts/torch_reference.py times PyTorch the same way, so that the ratios mean
//! something): every pass of every case runs [`BenchOptions::warmup`] times, then
//! [`BenchOptions::iters`] times, each iteration between two CUDA events on the backend's stream;
//! the median is the number reported (the minimum beside it). Inputs are random, never zeros, and
//! replicated into enough copies ([`ROTATION_BYTES`] in all, several times the 50–60 MB L2 of an
//! H100 or H200) that consecutive iterations use different memory, so each one reads its inputs
//! from device memory as a training step would.
//!
//! Each case counts its work, FLOPs for arithmetic-bound kernels and bytes for memory-bound ones,
//! and the achieved rate is reported with its share of the matching ceiling:
//! - copy: device-to-device copy bandwidth, bytes read plus bytes written;
//! - gemm: a bf16 cuBLASLt GEMM of 8192³ with f32 accumulation (the matmul op of the backend).
//!
//! Bytes are the least a kernel with the op's contract must move: each input read once, each
//! output written once, an accumulated (`+=`) output read and written; scratch traffic, re-reads
//! and launch overheads are the kernel's cost, not its work. Each case says what it counts.
//! Matmuls count 2·N·C·OC FLOPs forward and twice that backward (bias work not counted);
//! attention counts forward 4·B·NH·T²·HS (two T×T×HS products), halved when causal, and backward
//! 2.5 times the forward (five such products), whatever the kernels recompute.
//!
//! The case table is [`cases`]; benchmarking another kernel is adding a [`Case`]. The training
//! step ([`run_step`]) goes through [`Gpt`] exactly as the trainer does and reports tokens/s, MFU
//! against the device's dense bf16 peak and the device memory it took, with a second series of
//! steps split into phases by events.

use crate::backend::cuda::plan::storage_bytes;
use crate::backend::cuda::{ArenaSizes, CudaBackend, EpilogueCalls, ScratchSizes};
use crate::backend::{AdamWStep, AttentionKernels, Backend, BackendError, Precision};
use crate::model::config::{GPT2_VOCAB_SIZE, ModelConfig};
use crate::model::layout::{ActLayout, Arena, ParamLayout, Recompute, TENSOR_ALIGN, Tensor};
use crate::model::schedule::{self, Attention};
use crate::model::{Gpt, ModelError, init_params};
use crate::rng::Rng;
use cudarc::driver::CudaEvent;
use serde::{Deserialize, Serialize};

/// Bytes of inputs and outputs the copies of one case span together: eight times a 60 MB L2.
pub const ROTATION_BYTES: usize = 512 << 20;
/// Elements of the random draw that is uploaded once and then replicated on the device.
const RANDOM_CHUNK: usize = 1 << 22;
/// Bytes each side of the copy ceiling moves.
const COPY_BYTES: usize = 512 << 20;
/// M = N = K of the GEMM ceiling.
pub const GEMM_SIZE: usize = 8192;
const BYTES_PER_BF16: usize = 2;
const BYTES_PER_F32: usize = 4;
/// Bytes of a token id or a target (i32).
const BYTES_PER_ID: usize = 4;
/// Bytes one parameter costs AdamW at the least in bf16 storage: master, m and v (f32) and the
/// gradient (bf16) read; master, m and v and the bf16 parameter written.
pub const ADAMW_BYTES_PER_PARAM: usize = 3 * BYTES_PER_F32 + BYTES_PER_BF16 + 3 * BYTES_PER_F32 + BYTES_PER_BF16;

/// GPT-2 124M (the d12 preset) at the batch its benchmarks use: B, T, C, NH, V, Vp, L.
pub mod gpt2 {
    pub const B: usize = 8;
    pub const T: usize = 1024;
    pub const C: usize = 768;
    pub const NH: usize = 12;
    pub const L: usize = 12;
    pub const V: usize = crate::model::config::GPT2_VOCAB_SIZE;
    pub const VP: usize = 50304;
    /// Rows of the residual stream, B·T.
    pub const N: usize = B * T;
}

/// Token ids of the encoder cases: id(i) = i·stride mod V. The stride is prime to V, so the B·T
/// ids are distinct (B·T < V) and spread over the table; scripts/torch_reference.py uses the
/// same ids, so both sides gather the same rows.
pub const ENCODER_TOKEN_STRIDE: usize = 7919;

/// The preset the training-step benchmark runs.
pub const STEP_MODEL: &str = "d12";
/// Untimed training steps before the timed ones (the first builds cuBLASLt's plans).
pub const STEP_WARMUP: usize = 3;

/// A failure that stops the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("unknown op '{given}' (known: {known})")]
    UnknownOp { given: String, known: String },
}

/// What one pass of a case does per iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Work {
    Flops(f64),
    Bytes(f64),
}

/// The two ceilings, measured on the device at hand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Device-to-device copy, bytes read plus written per second, in GB/s.
    pub copy_gbps: f64,
    /// bf16 GEMM of 8192³, in TFLOP/s.
    pub gemm_bf16_tflops: f64,
}

/// One timed pass of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Op family, as `--op` filters it: `attention`, `layernorm`, …
    pub op: String,
    /// The shape, e.g. `B=8 NH=12 T=1024 HS=64 causal`.
    pub case: String,
    /// `fwd`, `bwd`, `fwd+bwd`; `update` (AdamW), `norm` (the gradient norm).
    pub pass: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub iters: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<f64>,
}

impl Measurement {
    fn work(&self) -> Option<Work> {
        self.flops.map(Work::Flops).or(self.bytes.map(Work::Bytes))
    }

    /// TFLOP/s or GB/s at the median time, with its unit.
    pub fn rate(&self) -> Option<(f64, &'static str)> {
        let seconds = self.median_ms * 1e-3;
        if seconds.is_nan() || seconds <= 0.0 {
            return None;
        }
        match self.work()? {
            Work::Flops(f) => Some((f / seconds / 1e12, "TFLOP/s")),
            Work::Bytes(b) => Some((b / seconds / 1e9, "GB/s")),
        }
    }

    /// The rate as a share of the matching ceiling.
    pub fn of_ceiling(&self, c: &Ceilings) -> Option<f64> {
        let (rate, _) = self.rate()?;
        let ceiling = match self.work()? {
            Work::Flops(_) => c.gemm_bf16_tflops,
            Work::Bytes(_) => c.copy_gbps,
        };
        (ceiling > 0.0).then(|| rate / ceiling)
    }

    /// True when `other` is the same (op, case, pass).
    pub fn same_case(&self, other: &Measurement) -> bool {
        self.op == other.op && self.case == other.case && self.pass == other.pass
    }
}

/// The median time of one phase of a training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub median_ms: f64,
}

/// A whole training step, timed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The preset, `d12`.
    pub model: String,
    pub b: usize,
    pub t: usize,
    /// `gptk`; PyTorch's are `eager` and `compile`.
    pub variant: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub iters: usize,
    /// B·T over the median step time.
    pub tokens_per_s: f64,
    /// Training FLOPs per token ([`ModelConfig::flops_per_token`]).
    pub flops_per_token: f64,
    /// The dense bf16 peak MFU is counted against, FLOP/s (none for an unknown device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_flops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Device memory the run took: free memory before the model was built minus free memory
    /// after the timed steps (PyTorch: its caching allocator's peak reservation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_bytes: Option<f64>,
    /// Bytes allocated: the backend's memory plan (PyTorch: its peak of allocated tensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<f64>,
    /// Loss of the first and of the last step run (it must be falling: the steps are real).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_first: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_last: Option<f64>,
    /// Median time of each phase, from a second series of steps with events between phases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

impl StepResult {
    /// The name both sides give the step: `d12 B=8 T=1024`.
    pub fn name(&self) -> String {
        step_name(&self.model, self.b, self.t)
    }

    /// Achieved model FLOP/s as a share of the measured GEMM ceiling.
    pub fn of_gemm_ceiling(&self, c: &Ceilings) -> Option<f64> {
        (c.gemm_bf16_tflops > 0.0).then(|| self.tokens_per_s * self.flops_per_token / 1e12 / c.gemm_bf16_tflops)
    }
}

/// The name of a training-step case.
pub fn step_name(model: &str, b: usize, t: usize) -> String {
    format!("{model} B={b} T={t}")
}

/// A whole run, as `--json` prints it and as scripts/torch_reference.py writes PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `gptk` or `pytorch`.
    pub source: String,
    pub device: String,
    /// The software that ran, e.g. `gptk 0.1.0` or `torch 2.11.0+cu130`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
    pub ceilings: Ceilings,
    pub results: Vec<Measurement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
    /// Anything the reader of the numbers should know (a compile that ran out of time, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// The measurement of the same (op, case, pass), if this report has it.
    pub fn find(&self, m: &Measurement) -> Option<&Measurement> {
        self.results.iter().find(|r| r.same_case(m))
    }

    /// The steps of the same model and batch shape (every variant).
    pub fn steps_like(&self, s: &StepResult) -> Vec<&StepResult> {
        self.steps.iter().filter(|r| r.model == s.model && r.b == s.b && r.t == s.t).collect()
    }
}

/// The other side's time over this side's: above 1 when `gptk` is faster. None when either time
/// is not a positive number (PyTorch's backward alone is a difference of two medians and can be
/// noise).
pub fn speedup(gptk: &Measurement, torch: &Measurement) -> Option<f64> {
    let s = torch.median_ms / gptk.median_ms;
    (gptk.median_ms > 0.0 && torch.median_ms > 0.0 && s.is_finite()).then_some(s)
}

/// The geometric mean of positive numbers (None for none).
pub fn geometric_mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|&x| x.is_nan() || x <= 0.0) {
        return None;
    }
    Some((xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp())
}

/// How gptk's report compares with PyTorch's, case by case.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// (op family, cases matched, geometric mean of the speedups), families in gptk's order.
    pub families: Vec<(String, usize, f64)>,
    /// Geometric mean over every matched pass, and how many.
    pub overall: Option<(usize, f64)>,
    /// `op [case] pass` of the cases PyTorch's report lacks, and the reverse (within the op
    /// families gptk's report has, so that a run with `--op` lists no other family).
    pub only_gptk: Vec<String>,
    pub only_torch: Vec<String>,
    pub steps: Vec<StepComparison>,
}

/// One gptk training step beside PyTorch's steps of the same model and shape.
#[derive(Clone, Debug, PartialEq)]
pub struct StepComparison {
    /// The step's name, `d12 B=8 T=1024`.
    pub name: String,
    /// gptk's variant, `gptk` or what differs from the default (`gptk, GELU apart`).
    pub variant: String,
    /// gptk's tokens/s.
    pub tokens_per_s: f64,
    /// (PyTorch variant, its tokens/s, gptk's tokens/s over it) per variant PyTorch ran.
    pub torch: Vec<(String, f64, f64)>,
}

/// Matches two reports case by case: speedup = PyTorch time / gptk time.
pub fn compare(gptk: &Report, torch: &Report) -> Comparison {
    let mut families: Vec<(String, Vec<f64>)> = Vec::new();
    let mut only_gptk = Vec::new();
    for m in &gptk.results {
        let Some(t) = torch.find(m) else {
            only_gptk.push(format!("{} [{}] {}", m.op, m.case, m.pass));
            continue;
        };
        let Some(s) = speedup(m, t) else { continue };
        match families.iter_mut().find(|f| f.0 == m.op) {
            Some(f) => f.1.push(s),
            None => families.push((m.op.clone(), vec![s])),
        }
    }
    let only_torch = torch
        .results
        .iter()
        .filter(|t| gptk.find(t).is_none() && gptk.results.iter().any(|m| m.op == t.op))
        .map(|t| format!("{} [{}] {}", t.op, t.case, t.pass))
        .collect();
    let all: Vec<f64> = families.iter().flat_map(|f| f.1.iter().copied()).collect();
    let overall = geometric_mean(&all).map(|g| (all.len(), g));
    let families = families.into_iter().filter_map(|(op, s)| geometric_mean(&s).map(|g| (op, s.len(), g))).collect();
    let steps = gptk
        .steps
        .iter()
        .map(|s| {
            let theirs = torch
                .steps_like(s)
                .into_iter()
                .filter(|t| t.tokens_per_s > 0.0)
                .map(|t| (t.variant.clone(), t.tokens_per_s, s.tokens_per_s / t.tokens_per_s))
                .collect();
            StepComparison { name: s.name(), variant: s.variant.clone(), tokens_per_s: s.tokens_per_s, torch: theirs }
        })
        .collect();
    Comparison { families, overall, only_gptk, only_torch, steps }
}

/// What `gptk bench` asks for.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Only cases whose op family contains this; all when `None`.
    pub op: Option<String>,
    pub device: usize,
    pub warmup: usize,
    pub iters: usize,
    pub seed: u64,
    /// Sequences per batch of the training-step case.
    pub step_batch: usize,
    /// Timed training steps (after [`STEP_WARMUP`]), and as many again split into phases.
    pub step_iters: usize,
    /// Activation recomputation of the training-step case.
    pub step_recompute: Recompute,
    /// What the training-step case changes from the way the trainer runs (`None`: nothing).
    pub step_variant: Option<StepVariant>,
}

/// A training step run otherwise than the trainer runs it by default: one optimisation undone, or
/// one that is off by default done; timed beside the default step, it is that change's before
/// and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StepVariant {
    /// The MLP's GELU apart from its GEMMs (a GEMM, then the GELU kernel).
    GeluApart,
    /// The linear layers' bias gradients by the bias-gradient kernels after the weight GEMMs.
    BiasGradApart,
    /// The whole step replayed from a CUDA graph (`gptk train --cuda-graphs`).
    CudaGraphs,
    /// The attention backward with dQ summed by atomics (`gptk train --attention-backward atomic`).
    AtomicAttention,
    /// The attention on Hopper's wgmma kernels (`gptk train --attention-kernels wgmma`; compute
    /// capability 9.0 only).
    WgmmaAttention,
    /// Both: the wgmma kernels with the atomic-dQ backward.
    WgmmaAtomicAttention,
    /// The attention on the wgmma kernels with the warp-specialized TMA forward (`gptk train
    /// --attention-kernels wgmma-tma`; compute capability 9.0 only).
    WgmmaTmaAttention,
    /// Every speedup that is off by default at once: the whole step as a CUDA graph, the
    /// atomic-dQ attention backward, and the wgmma attention where the device has it (the
    /// mma.sync kernels elsewhere; the variant's name says which ran). The configuration to hold
    /// against PyTorch's compiled step.
    AllOptIns,
}

/// One benchmark: an op at one shape, with its inputs in `copies` replicas.
pub trait Case {
    /// The op family (`--op` filters on it).
    fn op(&self) -> &'static str;
    /// The shape, as the reports name it.
    fn name(&self) -> String;
    /// The passes and what each does per iteration.
    fn passes(&self) -> Vec<(&'static str, Work)>;
    /// Bytes of device memory one copy of the case's tensors takes.
    fn bytes_per_copy(&self) -> usize;
    /// Lays out `copies` replicas of the case's tensors; the arena and scratch sizes they need.
    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes);
    /// Fills the inputs with random values and runs whatever the passes read first.
    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError>;
    /// One iteration of pass `pass` (an index into `passes`) on replica `copy`.
    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError>;
    /// The storage precision the case runs in.
    fn precision(&self) -> Precision {
        Precision::Bf16
    }
}

/// Hands out aligned spans of each arena. The parameter-like arenas (parameters, gradients,
/// AdamW moments) share one size, as the backend allocates them.
#[derive(Default)]
struct Spans {
    acts: usize,
    act_grads: usize,
    stats: usize,
    inputs: usize,
    params: usize,
}

impl Spans {
    fn take(&mut self, arena: Arena, len: usize) -> Tensor {
        let next = match arena {
            Arena::Acts => &mut self.acts,
            Arena::ActGrads => &mut self.act_grads,
            Arena::Stats => &mut self.stats,
            Arena::Inputs => &mut self.inputs,
            Arena::Params | Arena::Grads | Arena::OptM | Arena::OptV => &mut self.params,
        };
        let t = Tensor { arena, offset: *next, len };
        *next = t.end().div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        t
    }

    fn sizes(&self) -> ArenaSizes {
        let round = |n: usize| n.div_ceil(TENSOR_ALIGN).max(1) * TENSOR_ALIGN;
        ArenaSizes {
            params: round(self.params),
            acts: round(self.acts),
            act_grads: round(self.act_grads),
            stats: round(self.stats),
            inputs: round(self.inputs),
        }
    }
}

/// Random normal values of the given scale in `t`: one draw of up to RANDOM_CHUNK elements,
/// uploaded, then doubled on the device until the tensor is full. For `Params` this fills the
/// f32 master weights (what AdamW reads); elsewhere the storage.
fn fill_random(gpu: &mut CudaBackend, t: Tensor, rng: &mut Rng, scale: f64) -> Result<(), BackendError> {
    let chunk = t.len.min(RANDOM_CHUNK);
    let data: Vec<f32> = (0..chunk).map(|_| (rng.normal() * scale) as f32).collect();
    gpu.upload(t.slice(0, chunk), &data)?;
    let mut filled = chunk;
    while filled < t.len {
        let n = filled.min(t.len - filled);
        if t.arena == Arena::Params {
            gpu.copy_master(t.slice(filled, n), t.slice(0, n))?;
        } else {
            gpu.copy_tensor(t.slice(filled, n), t.slice(0, n))?;
        }
        filled += n;
    }
    Ok(())
}

/// Fills the first replica's `tensors` with random values of `scales` and copies them into every
/// other replica (the tensors of replica `k` are `pick(k)`).
fn fill_replicas<const K: usize>(
    gpu: &mut CudaBackend,
    rng: &mut Rng,
    copies: usize,
    pick: impl Fn(usize) -> [Tensor; K],
    scales: [f64; K],
) -> Result<(), BackendError> {
    let first = pick(0);
    for (t, s) in first.iter().zip(scales) {
        fill_random(gpu, *t, rng, s)?;
    }
    for k in 1..copies {
        for (dst, src) in pick(k).into_iter().zip(first) {
            if src.arena == Arena::Params {
                gpu.copy_master(dst, src)?;
            } else {
                gpu.copy_tensor(dst, src)?;
            }
        }
    }
    Ok(())
}

fn nc(n: usize, c: usize) -> f64 {
    (n * c) as f64
}

// ---- encoder ------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct EncoderTensors {
    tokens: Tensor,
    wte: Tensor,
    wpe: Tensor,
    out: Tensor,
    dout: Tensor,
    dwte: Tensor,
    dwpe: Tensor,
}

/// Token and position embedding, forward and backward, with B·T distinct token ids
/// ([`ENCODER_TOKEN_STRIDE`]).
pub struct EncoderCase {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub v: usize,
    pub vp: usize,
    copies: Vec<EncoderTensors>,
}

impl EncoderCase {
    pub fn new(b: usize, t: usize, c: usize, v: usize, vp: usize) -> Self {
        assert!(b * t <= v, "the encoder benchmark wants B·T distinct token ids");
        EncoderCase { b, t, c, v, vp, copies: Vec::new() }
    }

    /// The token ids: i·stride mod V.
    pub fn tokens(&self) -> Vec<i32> {
        (0..self.b * self.t).map(|i| (i * ENCODER_TOKEN_STRIDE % self.v) as i32).collect()
    }
}

impl Case for EncoderCase {
    fn op(&self) -> &'static str {
        "encoder"
    }

    fn name(&self) -> String {
        format!("B={} T={} C={} Vp={}", self.b, self.t, self.c, self.vp)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let (n, c, s) = (self.b * self.t, self.c, BYTES_PER_BF16 as f64);
        let ids = (n * BYTES_PER_ID) as f64;
        // Forward: the ids, one wte row per position (the ids are distinct), the T rows of wpe
        // read; out written.
        let fwd = ids + nc(n, c) * s + nc(self.t, c) * s + nc(n, c) * s;
        // Backward: the position ids and dout read; one dwte row per position and all of dwpe
        // accumulated (read and written). The host's bucketing of the ids is not counted.
        let bwd = ids + nc(n, c) * s + 2.0 * nc(n, c) * s + 2.0 * nc(self.t, c) * s;
        vec![("fwd", Work::Bytes(fwd)), ("bwd", Work::Bytes(bwd))]
    }

    fn bytes_per_copy(&self) -> usize {
        let (n, c) = (self.b * self.t, self.c);
        (2 * n * c + 2 * self.vp * c + 2 * self.t * c) * BYTES_PER_BF16 + n * BYTES_PER_ID
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c) = (self.b * self.t, self.c);
        let mut spans = Spans::default();
        // One token tensor for every copy (the ids are the same), uploaded once as the trainer
        // uploads a batch: the first (warm-up) backward buckets it, the timed ones time kernels.
        let tokens = spans.take(Arena::Inputs, n);
        self.copies = (0..copies)
            .map(|_| EncoderTensors {
                tokens,
                wte: spans.take(Arena::Acts, self.vp * c),
                wpe: spans.take(Arena::Acts, self.t * c),
                out: spans.take(Arena::Acts, n * c),
                dout: spans.take(Arena::ActGrads, n * c),
                dwte: spans.take(Arena::ActGrads, self.vp * c),
                dwpe: spans.take(Arena::ActGrads, self.t * c),
            })
            .collect();
        (spans.sizes(), ScratchSizes { tokens: n, ..Default::default() })
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        gpu.upload_tokens(self.copies[0].tokens, &self.tokens())?;
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].wte, c[k].wpe, c[k].dout, c[k].dwte, c[k].dwpe], [0.02; 5])
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        let (b, t, c) = (self.b, self.t, self.c);
        match pass {
            0 => gpu.encoder_forward(x.out, x.tokens, x.wte, x.wpe, b, t, c),
            _ => gpu.encoder_backward(x.dwte, x.dwpe, x.dout, x.tokens, b, t, c),
        }
    }
}

// ---- layernorm ----------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct LayernormTensors {
    inp: Tensor,
    w: Tensor,
    bias: Tensor,
    out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    dout: Tensor,
    dinp: Tensor,
    dw: Tensor,
    db: Tensor,
}

/// Layernorm forward and backward over N rows of C.
pub struct LayernormCase {
    pub n: usize,
    pub c: usize,
    pub precision: Precision,
    copies: Vec<LayernormTensors>,
}

impl LayernormCase {
    pub fn new(n: usize, c: usize, precision: Precision) -> Self {
        LayernormCase { n, c, precision, copies: Vec::new() }
    }
}

/// ` f32` after the shape of an f32 case; nothing for bf16, the default.
fn precision_suffix(p: Precision) -> &'static str {
    match p {
        Precision::Bf16 => "",
        Precision::F32 => " f32",
    }
}

impl Case for LayernormCase {
    fn op(&self) -> &'static str {
        "layernorm"
    }

    fn name(&self) -> String {
        format!("N={} C={}{}", self.n, self.c, precision_suffix(self.precision))
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let (n, c, s) = (self.n, self.c, storage_bytes(self.precision) as f64);
        let stats = (2 * n * BYTES_PER_F32) as f64;
        // Forward: inp, w, b read; out and the f32 mean and rstd written.
        let fwd = nc(n, c) * s + 2.0 * c as f64 * s + nc(n, c) * s + stats;
        // Backward: dout, inp, w, mean, rstd read; dinp, dw, db accumulated (read and written).
        let bwd = 2.0 * nc(n, c) * s + c as f64 * s + stats + 2.0 * nc(n, c) * s + 4.0 * c as f64 * s;
        vec![("fwd", Work::Bytes(fwd)), ("bwd", Work::Bytes(bwd))]
    }

    fn bytes_per_copy(&self) -> usize {
        (4 * self.n * self.c + 4 * self.c) * storage_bytes(self.precision) + 2 * self.n * BYTES_PER_F32
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c) = (self.n, self.c);
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| LayernormTensors {
                inp: spans.take(Arena::Acts, n * c),
                w: spans.take(Arena::Acts, c),
                bias: spans.take(Arena::Acts, c),
                out: spans.take(Arena::Acts, n * c),
                mean: spans.take(Arena::Stats, n),
                rstd: spans.take(Arena::Stats, n),
                dout: spans.take(Arena::ActGrads, n * c),
                dinp: spans.take(Arena::ActGrads, n * c),
                dw: spans.take(Arena::ActGrads, c),
                db: spans.take(Arena::ActGrads, c),
            })
            .collect();
        (spans.sizes(), ScratchSizes { max_columns: c, ..Default::default() })
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(
            gpu,
            rng,
            c.len(),
            |k| [c[k].inp, c[k].w, c[k].bias, c[k].dout, c[k].dinp],
            [1.0, 0.2, 0.2, 1.0, 1.0],
        )?;
        // The backward reads the forward's mean and rstd.
        for copy in 0..self.copies.len() {
            self.run(gpu, 0, copy)?;
        }
        Ok(())
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        match pass {
            0 => gpu.layernorm_forward(x.out, x.mean, x.rstd, x.inp, x.w, x.bias, self.n, self.c),
            _ => gpu.layernorm_backward(x.dinp, x.dw, x.db, x.dout, x.inp, x.w, x.mean, x.rstd, self.n, self.c),
        }
    }

    fn precision(&self) -> Precision {
        self.precision
    }
}

// ---- matmul -------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct MatmulTensors {
    inp: Tensor,
    w: Tensor,
    bias: Option<Tensor>,
    out: Tensor,
    dout: Tensor,
    dinp: Tensor,
    dw: Tensor,
    dbias: Option<Tensor>,
}

/// A linear layer through the backend (cuBLASLt): out (N,OC) = inp (N,C)·Wᵀ (+ bias), and its
/// backward (dinp, dW +=, dbias +=).
pub struct MatmulCase {
    /// Which layer of GPT-2 this shape is: `qkv`, `attproj`, `fc`, `fcproj`, `classifier`.
    pub label: &'static str,
    pub n: usize,
    pub c: usize,
    pub oc: usize,
    pub bias: bool,
    /// The backward alone, with the bias gradient by the kernels after the weight GEMM instead of
    /// in its epilogue (the default's before).
    pub bias_grad_apart: bool,
    copies: Vec<MatmulTensors>,
}

impl MatmulCase {
    pub fn new(label: &'static str, n: usize, c: usize, oc: usize, bias: bool) -> Self {
        MatmulCase { label, n, c, oc, bias, bias_grad_apart: false, copies: Vec::new() }
    }

    /// The backward of a layer with a bias, its bias gradient apart from the weight GEMM.
    pub fn bias_grad_apart(label: &'static str, n: usize, c: usize, oc: usize) -> Self {
        MatmulCase { bias_grad_apart: true, ..Self::new(label, n, c, oc, true) }
    }

    /// 2·N·C·OC.
    pub fn forward_flops(&self) -> f64 {
        2.0 * self.n as f64 * self.c as f64 * self.oc as f64
    }
}

impl Case for MatmulCase {
    fn op(&self) -> &'static str {
        "matmul"
    }

    fn name(&self) -> String {
        let bias = if self.bias { " bias" } else { "" };
        let apart = if self.bias_grad_apart { ", bias grad apart" } else { "" };
        format!("{} N={} C={} OC={}{bias}{apart}", self.label, self.n, self.c, self.oc)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        // Backward: dinp = dout·W and dW += doutᵀ·inp, two products of the forward's size. The
        // bias (fused into the forward's epilogue) and its gradient are not counted.
        let f = self.forward_flops();
        if self.bias_grad_apart {
            return vec![("bwd", Work::Flops(2.0 * f))];
        }
        vec![("fwd", Work::Flops(f)), ("bwd", Work::Flops(2.0 * f))]
    }

    fn bytes_per_copy(&self) -> usize {
        let (n, c, oc) = (self.n, self.c, self.oc);
        let bias = if self.bias { 2 * oc } else { 0 };
        (2 * n * c + 2 * oc * c + 2 * n * oc + bias) * BYTES_PER_BF16
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c, oc) = (self.n, self.c, self.oc);
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| MatmulTensors {
                inp: spans.take(Arena::Acts, n * c),
                w: spans.take(Arena::Acts, oc * c),
                bias: self.bias.then(|| spans.take(Arena::Acts, oc)),
                out: spans.take(Arena::Acts, n * oc),
                dout: spans.take(Arena::ActGrads, n * oc),
                dinp: spans.take(Arena::ActGrads, n * c),
                dw: spans.take(Arena::ActGrads, oc * c),
                dbias: self.bias.then(|| spans.take(Arena::ActGrads, oc)),
            })
            .collect();
        (spans.sizes(), ScratchSizes { max_columns: oc, ..Default::default() })
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        // Weights of scale 1/√C keep the outputs of order one, like the GEMM ceiling's.
        let w_scale = 1.0 / (self.c as f64).sqrt();
        fill_replicas(gpu, rng, c.len(), |k| [c[k].inp, c[k].w, c[k].dout, c[k].dw], [1.0, w_scale, 1.0, 0.02])?;
        if self.bias {
            let pick = |k: usize| [c[k].bias.expect("bias"), c[k].dbias.expect("dbias")];
            fill_replicas(gpu, rng, c.len(), pick, [0.02, 0.02])?;
        }
        gpu.set_bias_grad_epilogue(!self.bias_grad_apart);
        Ok(())
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        let (n, c, oc) = (self.n, self.c, self.oc);
        match pass {
            0 if !self.bias_grad_apart => gpu.matmul_forward(x.out, x.inp, x.w, x.bias, n, c, oc),
            _ => gpu.matmul_backward(x.dinp, x.dw, x.dbias, x.dout, x.inp, x.w, n, c, oc),
        }
    }
}

// ---- matmul with its GELU ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct MatmulGeluTensors {
    inp: Tensor,
    w: Tensor,
    bias: Tensor,
    /// The GELU's input: (N, OC) forward, (N, C) backward.
    pre: Tensor,
    out: Tensor,
    dout: Tensor,
    dinp: Tensor,
    dw: Tensor,
    dbias: Tensor,
}

/// The MLP's linear layers with their GELU, with the GELU in cuBLASLt's epilogue or apart (the
/// GEMM, then the GELU kernel), measured side by side: `fc` forward, out = GELU(inp·Wᵀ + b)
/// with the GELU's input kept (`matmul_gelu_forward`), and `fcproj` backward carried through
/// the GELU before it, dinp = (dout·W) ⊙ GELU′(pre), dW +=, db += (`matmul_backward_gelu`).
pub struct MatmulGeluCase {
    pub backward: bool,
    pub n: usize,
    pub c: usize,
    pub oc: usize,
    pub epilogue: bool,
    /// The epilogue was asked for but cuBLASLt had no algorithm for it: the case ran apart.
    refused: bool,
    copies: Vec<MatmulGeluTensors>,
}

impl MatmulGeluCase {
    pub fn new(backward: bool, n: usize, c: usize, oc: usize, epilogue: bool) -> Self {
        MatmulGeluCase { backward, n, c, oc, epilogue, refused: false, copies: Vec::new() }
    }

    fn gelu_width(&self) -> usize {
        if self.backward { self.c } else { self.oc }
    }

    fn call(&self, gpu: &mut CudaBackend, x: &MatmulGeluTensors) -> Result<(), BackendError> {
        let (n, c, oc) = (self.n, self.c, self.oc);
        if self.backward {
            gpu.matmul_backward_gelu(x.dinp, x.dw, Some(x.dbias), x.dout, (x.out, x.pre), x.w, n, c, oc)
        } else {
            gpu.matmul_gelu_forward(x.pre, x.out, x.inp, x.w, Some(x.bias), n, c, oc)
        }
    }
}

impl Case for MatmulGeluCase {
    fn op(&self) -> &'static str {
        "matmul_gelu"
    }

    fn name(&self) -> String {
        let (label, how) =
            (if self.backward { "fcproj" } else { "fc" }, if self.epilogue { "epilogue" } else { "apart" });
        let refused = if self.refused { " (no cuBLASLt algorithm: ran apart)" } else { "" };
        format!("{label} N={} C={} OC={} bias, {how}{refused}", self.n, self.c, self.oc)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        // As the matmul cases: 2·N·C·OC forward, twice that backward; the GELU and the bias
        // are not counted.
        let f = 2.0 * self.n as f64 * self.c as f64 * self.oc as f64;
        if self.backward { vec![("bwd", Work::Flops(2.0 * f))] } else { vec![("fwd", Work::Flops(f))] }
    }

    fn bytes_per_copy(&self) -> usize {
        let (n, c, oc) = (self.n, self.c, self.oc);
        let elems = if self.backward {
            // dout, W, the GELU's output (the layer's input) and input, dinp, dW, db.
            n * oc + oc * c + 3 * n * c + oc * c + oc
        } else {
            // inp, W, b, the GELU's input and output.
            n * c + oc * c + oc + 2 * n * oc
        };
        elems * BYTES_PER_BF16
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c, oc, g) = (self.n, self.c, self.oc, self.gelu_width());
        let mut spans = Spans::default();
        // The backward reads the layer's input (the GELU's output) from `out`, of N·C then.
        let out_len = if self.backward { n * c } else { n * oc };
        self.copies = (0..copies)
            .map(|_| MatmulGeluTensors {
                inp: spans.take(Arena::Acts, if self.backward { 0 } else { n * c }),
                w: spans.take(Arena::Acts, oc * c),
                bias: spans.take(Arena::Acts, oc),
                pre: spans.take(Arena::Acts, n * g),
                out: spans.take(Arena::Acts, out_len),
                dout: spans.take(Arena::ActGrads, if self.backward { n * oc } else { 0 }),
                dinp: spans.take(Arena::ActGrads, if self.backward { n * c } else { 0 }),
                dw: spans.take(Arena::ActGrads, if self.backward { oc * c } else { 0 }),
                dbias: spans.take(Arena::ActGrads, oc),
            })
            .collect();
        (spans.sizes(), ScratchSizes { max_columns: oc, ..Default::default() })
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        let w_scale = 1.0 / (self.c as f64).sqrt();
        if self.backward {
            let pick = |k: usize| [c[k].dout, c[k].w, c[k].out, c[k].pre, c[k].dw, c[k].dbias];
            fill_replicas(gpu, rng, c.len(), pick, [1.0, w_scale, 1.0, 1.0, 0.02, 0.02])?;
        } else {
            fill_replicas(gpu, rng, c.len(), |k| [c[k].inp, c[k].w, c[k].bias], [1.0, w_scale, 0.02])?;
        }
        gpu.set_gelu_epilogue(self.epilogue);
        let before = gpu.gelu_epilogue_calls().fused;
        self.call(gpu, &self.copies[0])?;
        self.refused = self.epilogue && gpu.gelu_epilogue_calls().fused == before;
        Ok(())
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        self.call(gpu, &self.copies[copy])
    }
}

// ---- attention ----------------------------------------------------------------------------------

/// The tensors of one attention replica.
#[derive(Clone, Copy)]
struct AttentionTensors {
    qkv: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    dqkv: Tensor,
}

/// Attention forward, backward and both at one shape (bf16 storage: the tensor-core kernels
/// where the head size has them); on the TMA forward, the forward alone (its backward is the
/// wgmma kernels').
pub struct AttentionCase {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub hs: usize,
    pub causal: bool,
    /// The opt-in backward whose dQ is summed with atomics (its passes: bwd and fwd+bwd).
    pub atomic_dq: bool,
    /// The tensor-core kernels (other than mma.sync: Hopper's, compute capability 9.0 only).
    pub kernels: AttentionKernels,
    copies: Vec<AttentionTensors>,
}

impl AttentionCase {
    pub fn new(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { b, t, nh, hs, causal, atomic_dq: false, kernels: AttentionKernels::Mma, copies: Vec::new() }
    }

    /// The same shape with the atomic-dQ backward.
    pub fn atomic_dq(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { atomic_dq: true, ..Self::new(b, t, nh, hs, causal) }
    }

    /// The same shape on the wgmma kernels.
    pub fn wgmma(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { kernels: AttentionKernels::Wgmma, ..Self::new(b, t, nh, hs, causal) }
    }

    /// The same shape's forward on the warp-specialized TMA kernel.
    pub fn wgmma_tma(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { kernels: AttentionKernels::WgmmaTma, ..Self::new(b, t, nh, hs, causal) }
    }

    /// The same shape on the wgmma kernels with the atomic-dQ backward.
    pub fn wgmma_atomic_dq(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { atomic_dq: true, ..Self::wgmma(b, t, nh, hs, causal) }
    }

    /// FLOPs of the forward: 4·B·NH·T²·HS, halved when causal.
    pub fn forward_flops(&self) -> f64 {
        let full = 4.0 * (self.b * self.nh) as f64 * (self.t as f64).powi(2) * self.hs as f64;
        if self.causal { full / 2.0 } else { full }
    }
}

/// The name both gptk and scripts/torch_reference.py give an attention shape.
pub fn attention_case_name(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> String {
    format!("B={b} NH={nh} T={t} HS={hs} {}", if causal { "causal" } else { "bidirectional" })
}

/// Backward FLOPs per forward FLOP.
pub const ATTENTION_BACKWARD_FACTOR: f64 = 2.5;

impl Case for AttentionCase {
    fn op(&self) -> &'static str {
        "attention"
    }

    fn name(&self) -> String {
        let mut name = attention_case_name(self.b, self.t, self.nh, self.hs, self.causal);
        if self.kernels != AttentionKernels::Mma {
            name += &format!(", {}", self.kernels.name());
        }
        if self.atomic_dq {
            name += ", atomic dQ";
        }
        name
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let f = self.forward_flops();
        let passes = vec![
            ("fwd", Work::Flops(f)),
            ("bwd", Work::Flops(ATTENTION_BACKWARD_FACTOR * f)),
            ("fwd+bwd", Work::Flops((1.0 + ATTENTION_BACKWARD_FACTOR) * f)),
        ];
        // The forward does not change with the backward's dQ, nor the backward with the TMA
        // forward.
        let tma = self.kernels == AttentionKernels::WgmmaTma;
        passes.into_iter().filter(|(pass, _)| (!self.atomic_dq || *pass != "fwd") && (!tma || *pass == "fwd")).collect()
    }

    fn bytes_per_copy(&self) -> usize {
        let (n, c) = (self.b * self.t, self.nh * self.hs);
        // qkv, dqkv (3C each), out, dout (C each) in bf16; lse in f32.
        8 * n * c * BYTES_PER_BF16 + self.b * self.nh * self.t * BYTES_PER_F32
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c) = (self.b * self.t, self.nh * self.hs);
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| AttentionTensors {
                qkv: spans.take(Arena::Acts, 3 * n * c),
                out: spans.take(Arena::Acts, n * c),
                lse: spans.take(Arena::Stats, self.b * self.nh * self.t),
                dout: spans.take(Arena::ActGrads, n * c),
                dqkv: spans.take(Arena::ActGrads, 3 * n * c),
            })
            .collect();
        let scratch = ScratchSizes { attention_rows: self.b * self.nh * self.t, ..Default::default() };
        (spans.sizes(), scratch)
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].qkv, c[k].dout], [1.0, 1.0])?;
        if self.atomic_dq {
            gpu.set_atomic_attention_dq(Some(self.b * self.t * self.nh * self.hs))?;
        }
        // Unavailable off compute capability 9.0: `run` skips the case.
        gpu.set_attention_kernels(self.kernels)?;
        // The backward reads the forward's output and LSE.
        for copy in 0..self.copies.len() {
            self.run(gpu, 0, copy)?;
        }
        Ok(())
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        let (b, t, nh, hs, causal) = (self.b, self.t, self.nh, self.hs, self.causal);
        // Pass numbers as in the full list (fwd, bwd, fwd+bwd), the atomic case lacking fwd.
        let pass = if self.atomic_dq { pass + 1 } else { pass };
        if pass != 1 {
            gpu.attention_forward(x.out, x.lse, x.qkv, b, t, nh, hs, causal)?;
        }
        if pass != 0 {
            gpu.attention_backward(x.dqkv, x.dout, x.qkv, x.out, x.lse, b, t, nh, hs, causal)?;
        }
        Ok(())
    }
}

// ---- cached attention (generation) --------------------------------------------------------------

#[derive(Clone, Copy)]
struct CachedTensors {
    qkv: Tensor,
    kv: Tensor,
    out: Tensor,
}

/// One generation step of causal attention: the new token's k and v written into the key/value
/// cache at `pos`, its q attending over positions 0..=pos.
pub struct AttentionCachedCase {
    pub b: usize,
    pub t_max: usize,
    pub pos: usize,
    pub nh: usize,
    pub hs: usize,
    copies: Vec<CachedTensors>,
}

impl AttentionCachedCase {
    pub fn new(b: usize, t_max: usize, pos: usize, nh: usize, hs: usize) -> Self {
        AttentionCachedCase { b, t_max, pos, nh, hs, copies: Vec::new() }
    }
}

impl Case for AttentionCachedCase {
    fn op(&self) -> &'static str {
        "attention_cached"
    }

    fn name(&self) -> String {
        format!("B={} NH={} Tmax={} pos={} HS={}", self.b, self.nh, self.t_max, self.pos, self.hs)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let bc = nc(self.b, self.nh * self.hs) * BYTES_PER_BF16 as f64;
        // qkv read, the cached k and v of the `pos` earlier positions read, the new k and v
        // written into the cache, out written. The scores are a few FLOPs per byte.
        let bytes = bc * (3.0 + 2.0 * self.pos as f64 + 2.0 + 1.0);
        vec![("fwd", Work::Bytes(bytes))]
    }

    fn bytes_per_copy(&self) -> usize {
        self.b * self.nh * self.hs * (4 + 2 * self.t_max) * BYTES_PER_BF16
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (b, c) = (self.b, self.nh * self.hs);
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| CachedTensors {
                qkv: spans.take(Arena::Acts, b * 3 * c),
                kv: spans.take(Arena::Acts, b * self.t_max * 2 * c),
                out: spans.take(Arena::Acts, b * c),
            })
            .collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].qkv, c[k].kv], [1.0, 1.0])
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        gpu.attention_cached(x.out, x.qkv, x.kv, self.b, self.t_max, self.pos, self.nh, self.hs)
    }
}

// ---- GELU ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct GeluTensors {
    inp: Tensor,
    out: Tensor,
    d: Tensor,
}

/// tanh-GELU forward and backward over N rows of C (the MLP's 4C), elementwise.
pub struct GeluCase {
    pub n: usize,
    pub c: usize,
    pub precision: Precision,
    copies: Vec<GeluTensors>,
}

impl GeluCase {
    pub fn new(n: usize, c: usize, precision: Precision) -> Self {
        GeluCase { n, c, precision, copies: Vec::new() }
    }
}

impl Case for GeluCase {
    fn op(&self) -> &'static str {
        "gelu"
    }

    fn name(&self) -> String {
        format!("N={} C={}{}", self.n, self.c, precision_suffix(self.precision))
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let (e, s) = (nc(self.n, self.c), storage_bytes(self.precision) as f64);
        // Forward: inp read, out written. Backward: the output gradient and inp read, the input
        // gradient written (in place).
        vec![("fwd", Work::Bytes(2.0 * e * s)), ("bwd", Work::Bytes(3.0 * e * s))]
    }

    fn bytes_per_copy(&self) -> usize {
        3 * self.n * self.c * storage_bytes(self.precision)
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let e = self.n * self.c;
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| GeluTensors {
                inp: spans.take(Arena::Acts, e),
                out: spans.take(Arena::Acts, e),
                d: spans.take(Arena::ActGrads, e),
            })
            .collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].inp, c[k].d], [1.0, 1.0])
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        // The backward works in place: each iteration scales d by GELU′ again. The values shrink
        // but stay normal numbers over the iterations a run makes, and the kernel's work does
        // not depend on them.
        match pass {
            0 => gpu.gelu_forward(x.out, x.inp),
            _ => gpu.gelu_backward(x.d, x.inp),
        }
    }

    fn precision(&self) -> Precision {
        self.precision
    }
}

// ---- residual -----------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct ResidualTensors {
    a: Tensor,
    b: Tensor,
    out: Tensor,
}

/// The residual add out = a + b over N rows of C.
pub struct ResidualCase {
    pub n: usize,
    pub c: usize,
    copies: Vec<ResidualTensors>,
}

impl ResidualCase {
    pub fn new(n: usize, c: usize) -> Self {
        ResidualCase { n, c, copies: Vec::new() }
    }
}

impl Case for ResidualCase {
    fn op(&self) -> &'static str {
        "residual"
    }

    fn name(&self) -> String {
        format!("N={} C={}", self.n, self.c)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        // a and b read, out written.
        vec![("fwd", Work::Bytes(3.0 * nc(self.n, self.c) * BYTES_PER_BF16 as f64))]
    }

    fn bytes_per_copy(&self) -> usize {
        3 * self.n * self.c * BYTES_PER_BF16
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let e = self.n * self.c;
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| ResidualTensors {
                a: spans.take(Arena::Acts, e),
                b: spans.take(Arena::Acts, e),
                out: spans.take(Arena::Acts, e),
            })
            .collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].a, c[k].b], [1.0, 1.0])
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        gpu.residual_forward(x.out, x.a, x.b)
    }
}

// ---- residual + layernorm -----------------------------------------------------------------------

#[derive(Clone, Copy)]
struct ResidualLayernormTensors {
    x: Tensor,
    y: Tensor,
    w: Tensor,
    bias: Tensor,
    res: Tensor,
    out: Tensor,
    mean: Tensor,
    rstd: Tensor,
}

/// The fused residual add and layernorm of the schedule: res = x + y, out = layernorm(res).
pub struct ResidualLayernormCase {
    pub n: usize,
    pub c: usize,
    copies: Vec<ResidualLayernormTensors>,
}

impl ResidualLayernormCase {
    pub fn new(n: usize, c: usize) -> Self {
        ResidualLayernormCase { n, c, copies: Vec::new() }
    }
}

impl Case for ResidualLayernormCase {
    fn op(&self) -> &'static str {
        "residual_layernorm"
    }

    fn name(&self) -> String {
        format!("N={} C={}", self.n, self.c)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        // x, y, w, b read; res, out and the f32 mean and rstd written.
        let (n, c, s) = (self.n, self.c, BYTES_PER_BF16 as f64);
        let bytes = 4.0 * nc(n, c) * s + 2.0 * c as f64 * s + (2 * n * BYTES_PER_F32) as f64;
        vec![("fwd", Work::Bytes(bytes))]
    }

    fn bytes_per_copy(&self) -> usize {
        (4 * self.n * self.c + 2 * self.c) * BYTES_PER_BF16 + 2 * self.n * BYTES_PER_F32
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let (n, c) = (self.n, self.c);
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| ResidualLayernormTensors {
                x: spans.take(Arena::Acts, n * c),
                y: spans.take(Arena::Acts, n * c),
                w: spans.take(Arena::Acts, c),
                bias: spans.take(Arena::Acts, c),
                res: spans.take(Arena::Acts, n * c),
                out: spans.take(Arena::Acts, n * c),
                mean: spans.take(Arena::Stats, n),
                rstd: spans.take(Arena::Stats, n),
            })
            .collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].x, c[k].y, c[k].w, c[k].bias], [1.0, 1.0, 0.2, 0.2])
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        gpu.residual_layernorm_forward(x.res, x.out, x.mean, x.rstd, (x.x, x.y), x.w, x.bias, self.n, self.c)
    }
}

// ---- cross-entropy ------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct CrossEntropyTensors {
    logits: Tensor,
    losses: Tensor,
    targets: Tensor,
}

/// The fused softmax cross-entropy over N rows of Vp logits (the first V real): the loss alone,
/// and the loss with dlogits written over the logits (what training runs).
pub struct CrossEntropyCase {
    pub n: usize,
    pub v: usize,
    pub vp: usize,
    copies: Vec<CrossEntropyTensors>,
}

impl CrossEntropyCase {
    pub fn new(n: usize, v: usize, vp: usize) -> Self {
        CrossEntropyCase { n, v, vp, copies: Vec::new() }
    }
}

impl Case for CrossEntropyCase {
    fn op(&self) -> &'static str {
        "cross_entropy"
    }

    fn name(&self) -> String {
        format!("N={} V={} Vp={}", self.n, self.v, self.vp)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let (n, s) = (self.n, BYTES_PER_BF16 as f64);
        let ids = (n * (BYTES_PER_ID + BYTES_PER_F32)) as f64;
        // Loss only: the V real logits of each row and its target read, the f32 loss written.
        let fwd = nc(n, self.v) * s + ids;
        // With the gradient: the same, and dlogits written over all Vp columns (zeros in the
        // padding).
        let both = fwd + nc(n, self.vp) * s;
        vec![("fwd", Work::Bytes(fwd)), ("fwd+bwd", Work::Bytes(both))]
    }

    fn bytes_per_copy(&self) -> usize {
        self.n * self.vp * BYTES_PER_BF16 + self.n * (BYTES_PER_ID + BYTES_PER_F32)
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let mut spans = Spans::default();
        self.copies = (0..copies)
            .map(|_| CrossEntropyTensors {
                logits: spans.take(Arena::Acts, self.n * self.vp),
                losses: spans.take(Arena::Stats, self.n),
                targets: spans.take(Arena::Inputs, self.n),
            })
            .collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let targets: Vec<i32> = (0..self.n).map(|_| rng.below(self.v as u64) as i32).collect();
        for x in &self.copies {
            gpu.upload_ints(x.targets, &targets)?;
        }
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k].logits], [1.0])
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        // The gradient pass writes dlogits over the logits, which the next iterations on this
        // copy read as logits: still finite, nonzero numbers, and the kernel's work does not
        // depend on their values. The loss-only pass runs first, on the random logits.
        let dloss = (pass == 1).then(|| 1.0 / self.n as f32);
        gpu.cross_entropy(x.losses, x.logits, x.targets, self.n, self.v, self.vp, dloss)
    }
}

// ---- AdamW and the gradient norm over the parameter arena ---------------------------------------

/// The parameter arena of a model preset (GPT-2's vocabulary): elements, and where weight decay
/// stops.
fn arena_of(preset: &str) -> (usize, usize) {
    let cfg = ModelConfig::preset(preset, GPT2_VOCAB_SIZE).expect("a known preset");
    let p = ParamLayout::new(&cfg);
    (p.total, p.decay_end)
}

/// One AdamW update over the whole parameter arena of a preset, in one launch.
pub struct AdamwCase {
    pub preset: &'static str,
    /// Elements of the arena.
    pub params: usize,
    decay_end: usize,
    copies: Vec<Tensor>,
}

impl AdamwCase {
    pub fn new(preset: &'static str) -> Self {
        let (params, decay_end) = arena_of(preset);
        AdamwCase { preset, params, decay_end, copies: Vec::new() }
    }
}

impl Case for AdamwCase {
    fn op(&self) -> &'static str {
        "adamw"
    }

    fn name(&self) -> String {
        format!("{} P={}", self.preset, self.params)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        vec![("update", Work::Bytes((self.params * ADAMW_BYTES_PER_PARAM) as f64))]
    }

    fn bytes_per_copy(&self) -> usize {
        self.params * ADAMW_BYTES_PER_PARAM
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        // Replica k is elements [k·P, (k+1)·P) of one arena of k·P: one launch updates one.
        let mut spans = Spans::default();
        self.copies = (0..copies).map(|_| spans.take(Arena::Params, self.params)).collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        // Master weights and gradients random; m and v start at zero, as in training, and the
        // warm-up iterations make them what a running optimizer holds.
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k], c[k].grad()], [0.02, 0.01])
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        let step = AdamWStep {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            t: 10,
            grad_scale: 1.0,
            seed: 1337 + copy as u64,
        };
        gpu.adamw(&step, x.offset + self.decay_end, x.offset..x.end())
    }
}

/// The squared L2 norm of the whole gradient arena of a preset, read back to the host as the
/// trainer does (so the time includes one synchronisation).
pub struct GradNormCase {
    pub preset: &'static str,
    pub params: usize,
    copies: Vec<Tensor>,
}

impl GradNormCase {
    pub fn new(preset: &'static str) -> Self {
        GradNormCase { preset, params: arena_of(preset).0, copies: Vec::new() }
    }
}

impl Case for GradNormCase {
    fn op(&self) -> &'static str {
        "grad_norm"
    }

    fn name(&self) -> String {
        format!("{} P={}", self.preset, self.params)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        // The bf16 gradients read once; the per-block partials are a few KB.
        vec![("norm", Work::Bytes((self.params * BYTES_PER_BF16) as f64))]
    }

    fn bytes_per_copy(&self) -> usize {
        self.params * BYTES_PER_BF16
    }

    fn layout(&mut self, copies: usize) -> (ArenaSizes, ScratchSizes) {
        let mut spans = Spans::default();
        self.copies = (0..copies).map(|_| spans.take(Arena::Grads, self.params)).collect();
        (spans.sizes(), ScratchSizes::default())
    }

    fn prepare(&mut self, gpu: &mut CudaBackend, rng: &mut Rng) -> Result<(), BackendError> {
        let c = &self.copies;
        fill_replicas(gpu, rng, c.len(), |k| [c[k]], [0.01])
    }

    fn run(&self, gpu: &mut CudaBackend, _pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        gpu.grad_norm_squared(x.offset..x.end()).map(|_| ())
    }
}

// ---- the case table -----------------------------------------------------------------------------

/// The attention shapes: GPT-2 small's heads (NH=12, HS=64) at B=8 and T = 1024, 2048, 4096, and
/// HS=128 with half the heads (same C = 768), each causal and bidirectional.
/// scripts/torch_reference.py times the same list.
pub const ATTENTION_SHAPES: &[(usize, usize, usize, usize)] =
    &[(8, 1024, 12, 64), (8, 2048, 12, 64), (8, 4096, 12, 64), (8, 1024, 6, 128), (8, 2048, 6, 128), (8, 4096, 6, 128)];

/// Rows of logits the d12 model's classifier computes at a time at B=8, T=1024 (its plan's
/// chunk).
pub fn classifier_chunk_rows() -> usize {
    let cfg = ModelConfig::preset(STEP_MODEL, GPT2_VOCAB_SIZE).expect("d12 exists");
    ActLayout::new(&cfg, gpt2::B, gpt2::T, None).chunk
}

/// The four linear layers of a GPT-2 block and the tied classifier, at one chunk of rows (what
/// the model runs) and over all B·T rows: (label, N, C, OC, bias).
pub fn matmul_shapes() -> Vec<(&'static str, usize, usize, usize, bool)> {
    use gpt2::{C, N, VP};
    vec![
        ("qkv", N, C, 3 * C, true),
        ("attproj", N, C, C, true),
        ("fc", N, C, 4 * C, true),
        ("fcproj", N, 4 * C, C, true),
        ("classifier", classifier_chunk_rows(), C, VP, false),
        ("classifier", N, C, VP, false),
    ]
}

/// Every kernel benchmark, in the order they run, grouped by op family.
pub fn cases() -> Vec<Box<dyn Case>> {
    use gpt2::{B, C, N, T, V, VP};
    let mut v: Vec<Box<dyn Case>> = vec![Box::new(EncoderCase::new(B, T, C, V, VP))];
    for p in [Precision::Bf16, Precision::F32] {
        v.push(Box::new(LayernormCase::new(N, C, p)));
    }
    for (label, n, c, oc, bias) in matmul_shapes() {
        v.push(Box::new(MatmulCase::new(label, n, c, oc, bias)));
    }
    // The bias gradient's before and after at the widest biased layer.
    v.push(Box::new(MatmulCase::bias_grad_apart("fc", N, C, 4 * C)));
    // The MLP's GEMMs with their GELU: fc forward, fcproj backward, each with the GELU in the
    // epilogue and apart.
    for backward in [false, true] {
        let (c, oc) = if backward { (4 * C, C) } else { (C, 4 * C) };
        for epilogue in [true, false] {
            v.push(Box::new(MatmulGeluCase::new(backward, N, c, oc, epilogue)));
        }
    }
    for &(b, t, nh, hs) in ATTENTION_SHAPES {
        for causal in [true, false] {
            v.push(Box::new(AttentionCase::new(b, t, nh, hs, causal)));
        }
    }
    // The opt-in atomic-dQ backward, the wgmma kernels, their TMA forward and the wgmma kernels
    // with the atomic-dQ backward at T = 1024, both head sizes, causal and not.
    let variants =
        [AttentionCase::atomic_dq, AttentionCase::wgmma, AttentionCase::wgmma_atomic_dq, AttentionCase::wgmma_tma];
    for variant in variants {
        for &(b, t, nh, hs) in ATTENTION_SHAPES.iter().filter(|s| s.1 == T) {
            for causal in [true, false] {
                v.push(Box::new(variant(b, t, nh, hs, causal)));
            }
        }
    }
    // The last position of a full context: the longest step of a generation.
    v.push(Box::new(AttentionCachedCase::new(B, T, T - 1, gpt2::NH, C / gpt2::NH)));
    for p in [Precision::Bf16, Precision::F32] {
        v.push(Box::new(GeluCase::new(N, 4 * C, p)));
    }
    v.push(Box::new(ResidualCase::new(N, C)));
    v.push(Box::new(ResidualLayernormCase::new(N, C)));
    v.push(Box::new(CrossEntropyCase::new(classifier_chunk_rows(), V, VP)));
    v.push(Box::new(CrossEntropyCase::new(N, V, VP)));
    v.push(Box::new(AdamwCase::new(STEP_MODEL)));
    v.push(Box::new(GradNormCase::new(STEP_MODEL)));
    v
}

/// The family name of the training-step benchmark.
pub const STEP_FAMILY: &str = "step";

/// The op families of [`cases`], then the training step.
pub fn families() -> Vec<&'static str> {
    let mut f: Vec<&'static str> = cases().iter().map(|c| c.op()).collect();
    f.dedup();
    f.push(STEP_FAMILY);
    f
}

/// What a `--op` filter selects: kernel cases, and whether the training step runs.
pub struct Selection {
    pub cases: Vec<Box<dyn Case>>,
    pub step: bool,
}

/// The cases a `--op` filter selects (all for `None`); an error naming the known families when
/// it selects nothing.
pub fn select(op: Option<&str>) -> Result<Selection, BenchError> {
    let all = cases();
    let Some(want) = op else { return Ok(Selection { cases: all, step: true }) };
    let cases: Vec<Box<dyn Case>> = all.into_iter().filter(|c| c.op().contains(want)).collect();
    let step = STEP_FAMILY.contains(want);
    if cases.is_empty() && !step {
        return Err(BenchError::UnknownOp { given: want.into(), known: families().join(", ") });
    }
    Ok(Selection { cases, step })
}

// ---- timing -------------------------------------------------------------------------------------

fn event_error(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("reading a timing event: {e:?}"))
}

fn elapsed_ms(start: &CudaEvent, end: &CudaEvent) -> Result<f64, BackendError> {
    Ok(start.elapsed_ms(end).map_err(event_error)? as f64)
}

/// Median and minimum of `iters` timed runs of `f` after `warmup` untimed ones; `f` gets the
/// iteration number (for rotating inputs).
fn time_ms(
    gpu: &mut CudaBackend,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut(&mut CudaBackend, usize) -> Result<(), BackendError>,
) -> Result<(f64, f64), BackendError> {
    for i in 0..warmup {
        f(gpu, i)?;
    }
    gpu.synchronize()?;
    let mut events = Vec::with_capacity(iters);
    for i in 0..iters.max(1) {
        let start = gpu.record_event()?;
        f(gpu, warmup + i)?;
        events.push((start, gpu.record_event()?));
    }
    gpu.synchronize()?;
    let mut ms = Vec::with_capacity(events.len());
    for (start, end) in &events {
        ms.push(elapsed_ms(start, end)?);
    }
    Ok((median(&mut ms), ms.iter().copied().fold(f64::INFINITY, f64::min)))
}

/// The median of a non-empty list (mean of the middle two for an even count).
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Measures the two ceilings on `device`.
pub fn measure_ceilings(opts: &BenchOptions) -> Result<Ceilings, BenchError> {
    let copy_elems = COPY_BYTES / BYTES_PER_BF16;
    let gemm = GEMM_SIZE * GEMM_SIZE;
    let mut spans = Spans::default();
    let (src, dst) = (spans.take(Arena::Acts, copy_elems), spans.take(Arena::Acts, copy_elems));
    let mut gemm_spans = Spans::default();
    let (a, w, d) =
        (gemm_spans.take(Arena::Acts, gemm), gemm_spans.take(Arena::Acts, gemm), gemm_spans.take(Arena::Acts, gemm));
    // The GEMM reuses the copy buffers' memory.
    let sizes = ArenaSizes { acts: spans.sizes().acts.max(gemm_spans.sizes().acts), ..spans.sizes() };
    let mut gpu = CudaBackend::with_sizes(sizes, ScratchSizes::default(), Precision::Bf16, opts.device, None)?;
    let mut rng = Rng::new(opts.seed);
    fill_random(&mut gpu, src, &mut rng, 1.0)?;
    let (copy_ms, _) = time_ms(&mut gpu, opts.warmup, opts.iters, |g, _| g.copy_tensor(dst, src))?;
    fill_random(&mut gpu, a, &mut rng, 1.0)?;
    fill_random(&mut gpu, w, &mut rng, 1.0 / (GEMM_SIZE as f64).sqrt())?;
    let n = GEMM_SIZE;
    let (gemm_ms, _) = time_ms(&mut gpu, opts.warmup, opts.iters, |g, _| g.matmul_forward(d, a, w, None, n, n, n))?;
    Ok(Ceilings {
        copy_gbps: (2 * COPY_BYTES) as f64 / (copy_ms * 1e-3) / 1e9,
        gemm_bf16_tflops: 2.0 * (n as f64).powi(3) / (gemm_ms * 1e-3) / 1e12,
    })
}

/// Replicas of a case's tensors that together span at least [`ROTATION_BYTES`] (at least two).
pub fn copies_for(bytes_per_copy: usize) -> usize {
    ROTATION_BYTES.div_ceil(bytes_per_copy.max(1)).max(2)
}

/// Runs `cases`, handing each measurement to `report` as it is made.
pub fn run(
    opts: &BenchOptions,
    cases: Vec<Box<dyn Case>>,
    mut report: impl FnMut(&Measurement),
) -> Result<Vec<Measurement>, BenchError> {
    // Each case opens its own backend; holding the context keeps it alive between them.
    let _context = crate::backend::cuda::device::open(opts.device)?;
    let mut out = Vec::new();
    for (i, mut case) in cases.into_iter().enumerate() {
        let copies = copies_for(case.bytes_per_copy());
        let (sizes, scratch) = case.layout(copies);
        let mut gpu = CudaBackend::with_sizes(sizes, scratch, case.precision(), opts.device, None)?;
        let mut rng = Rng::derive(opts.seed, i as u64);
        match case.prepare(&mut gpu, &mut rng) {
            // A case this device cannot run (the wgmma kernels off Hopper) is left out.
            Err(BackendError::Unavailable(why)) => {
                eprintln!("note: {} {} skipped: {why}", case.op(), case.name());
                continue;
            }
            other => other?,
        }
        for (p, (pass, work)) in case.passes().into_iter().enumerate() {
            let (median_ms, min_ms) = time_ms(&mut gpu, opts.warmup, opts.iters, |g, it| case.run(g, p, it % copies))?;
            let (flops, bytes) = match work {
                Work::Flops(f) => (Some(f), None),
                Work::Bytes(b) => (None, Some(b)),
            };
            let m = Measurement {
                op: case.op().into(),
                case: case.name(),
                pass: pass.into(),
                median_ms,
                min_ms,
                iters: opts.iters,
                flops,
                bytes,
            };
            report(&m);
            out.push(m);
        }
    }
    Ok(out)
}

// ---- the training step --------------------------------------------------------------------------

/// The clipping norm of the benchmark steps.
const STEP_CLIP: f32 = 1.0;

/// The phases a training step is split into, in order: the forward through the blocks (the
/// gradients zeroed and the batch uploaded first), the classifier with the fused loss and its
/// backward, the backward through the blocks, and the optimizer (the loss read back, the gradient
/// norm, AdamW).
pub const STEP_PHASES: [&str; 4] = ["forward", "classifier", "backward", "optimizer"];

/// The AdamW settings of the benchmark steps (GPT-2's: lr 6e-4, β 0.9/0.95, decay 0.1, clip 1).
fn adamw_step(t: usize, grad_norm: f32, seed: u64) -> AdamWStep {
    AdamWStep {
        lr: 6e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        t: t as u64,
        grad_scale: crate::backend::clip_scale(grad_norm, STEP_CLIP),
        seed: Rng::derive(seed, 0xADA0 + t as u64).next_u64(),
    }
}

/// One optimizer step as the trainer takes it (one micro-batch, one GPU): zero the gradients,
/// upload the batch, forward and backward, average the gradients over the ranks (nothing alone),
/// the clipped norm, AdamW, and wait for the device; with CUDA graphs on, as the trainer does
/// then, all of it as one `Gpt::train_step`. Returns the loss.
fn trainer_step(
    model: &mut Gpt<CudaBackend>,
    tokens: &[i32],
    targets: &[i32],
    t: usize,
    seed: u64,
) -> Result<f32, BenchError> {
    if model.backend.cuda_graphs() {
        model.set_batch(tokens, targets)?;
        // The step's clipping scale comes from its norm, on the device.
        return Ok(model.train_step(true, &adamw_step(t, 0.0, seed), STEP_CLIP)?.loss);
    }
    model.zero_grads()?;
    model.set_batch(tokens, targets)?;
    let loss = model.forward_backward(true, 1.0)?;
    model.sync_grads()?;
    let norm = model.grad_norm()?;
    model.adamw(&adamw_step(t, norm, seed))?;
    model.backend.synchronize()?;
    Ok(loss)
}

/// The same step with an event between phases ([`STEP_PHASES`]): the same ops in the same order,
/// through the schedule instead of [`Gpt::forward_backward`].
fn phased_step(
    model: &mut Gpt<CudaBackend>,
    tokens: &[i32],
    targets: &[i32],
    t: usize,
    seed: u64,
) -> Result<[CudaEvent; 5], BenchError> {
    let e0 = model.backend.record_event()?;
    model.zero_grads()?;
    model.set_batch(tokens, targets)?;
    let dloss = 1.0 / model.counted_targets().max(1) as f32;
    let (k, cfg, p, a) = (&mut model.backend, &model.cfg, &model.params, &model.acts);
    schedule::forward(k, cfg, p, a, Attention::Full { causal: true })?;
    let e1 = k.record_event()?;
    schedule::classifier(k, cfg, p, a, Some(dloss))?;
    let e2 = k.record_event()?;
    schedule::backward(k, cfg, p, a, true)?;
    let e3 = k.record_event()?;
    k.download(a.losses)?;
    model.sync_grads()?;
    let norm = model.grad_norm()?;
    model.adamw(&adamw_step(t, norm, seed))?;
    let e4 = model.backend.record_event()?;
    model.backend.synchronize()?;
    Ok([e0, e1, e2, e3, e4])
}

/// Free device memory now.
fn free_memory(ctx: &cudarc::driver::CudaContext) -> Result<usize, BackendError> {
    ctx.mem_get_info().map(|(free, _)| free).map_err(|e| BackendError::Device(format!("reading free memory: {e:?}")))
}

/// How a step ran, for the name of its variant: how the work that can run in a GEMM's epilogue
/// ran, and how often a CUDA graph was launched.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepPaths {
    pub gelu: EpilogueCalls,
    pub bias_grad: EpilogueCalls,
    pub graph_launches: usize,
    /// The kernels the attention ran on.
    pub attention: AttentionKernels,
}

/// The name of a gptk step variant: `gptk`, then what differs from the default (recomputation,
/// the variant, an epilogue cuBLASLt refused for some calls, how often a CUDA graph was launched).
fn step_variant(opts: &BenchOptions, paths: StepPaths) -> String {
    let mut v = String::from("gptk");
    if opts.step_recompute != Recompute::Off {
        v += &format!(", recompute {}", opts.step_recompute);
    }
    let refused = |what: &str, calls: EpilogueCalls| {
        let total = calls.apart + calls.fused;
        format!(", {what} apart in {} of {total} calls (no cuBLASLt algorithm)", calls.apart)
    };
    match opts.step_variant {
        Some(StepVariant::GeluApart) => v += ", GELU apart",
        _ if paths.gelu.apart > 0 => v += &refused("GELU", paths.gelu),
        _ => {}
    }
    match opts.step_variant {
        Some(StepVariant::BiasGradApart) => v += ", bias grad apart",
        _ if paths.bias_grad.apart > 0 => v += &refused("bias grad", paths.bias_grad),
        _ => {}
    }
    let (graphs, atomic, _) = step_switches(opts.step_variant);
    if graphs {
        v += &format!(", CUDA graph ({} launches)", paths.graph_launches);
    }
    match (paths.attention, atomic) {
        (AttentionKernels::Mma, true) => v += ", attention dQ by atomics",
        (AttentionKernels::Mma, false) => {}
        (kernels, true) => v += &format!(", attention on {}, dQ by atomics", kernels.name()),
        (kernels, false) => v += &format!(", attention on {}", kernels.name()),
    }
    v
}

/// What a step variant turns on of the switches that are off by default: (whole-step CUDA
/// graphs, the atomic-dQ attention backward, Hopper's attention kernels: `Some((kernels, true))`
/// required, `Some((kernels, false))` where the device has them, `None` off).
fn step_switches(variant: Option<StepVariant>) -> (bool, bool, Option<(AttentionKernels, bool)>) {
    use AttentionKernels::{Wgmma, WgmmaTma};
    use StepVariant::*;
    match variant {
        Some(CudaGraphs) => (true, false, None),
        Some(AtomicAttention) => (false, true, None),
        Some(WgmmaAttention) => (false, false, Some((Wgmma, true))),
        Some(WgmmaTmaAttention) => (false, false, Some((WgmmaTma, true))),
        Some(WgmmaAtomicAttention) => (false, true, Some((Wgmma, true))),
        Some(AllOptIns) => (true, true, Some((Wgmma, false))),
        Some(GeluApart | BiasGradApart) | None => (false, false, None),
    }
}

/// Times whole training steps of [`STEP_MODEL`] (GPT-2's vocabulary, bf16) at B = `step_batch`,
/// T = 1024 through [`Gpt`], random tokens and targets, GPT-2's initialisation: [`STEP_WARMUP`]
/// untimed steps, `step_iters` timed ones (events around each; every step ends waiting for the
/// device, as the trainer's do), then as many split into phases.
pub fn run_step(opts: &BenchOptions) -> Result<StepResult, BenchError> {
    let (b, t) = (opts.step_batch.max(1), gpt2::T);
    let cfg = ModelConfig::preset(STEP_MODEL, GPT2_VOCAB_SIZE).expect("d12 exists");
    let ctx = crate::backend::cuda::device::open(opts.device)?;
    let free_before = free_memory(&ctx)?;
    let acts = ActLayout::with_recompute(&cfg, b, t, None, opts.step_recompute);
    let device = opts.device;
    let mut model = Gpt::new(cfg.clone(), acts, |p, a| CudaBackend::new(p, a, Precision::Bf16, device))?;
    model.backend.set_gelu_epilogue(opts.step_variant != Some(StepVariant::GeluApart));
    model.backend.set_bias_grad_epilogue(opts.step_variant != Some(StepVariant::BiasGradApart));
    let (graphs, atomic, attention) = step_switches(opts.step_variant);
    model.backend.set_cuda_graphs(graphs);
    // dQ is (B, T, C), the shape of the blocks' gradient buffer.
    model.backend.set_atomic_attention_dq(atomic.then_some(model.acts.dbtc.len))?;
    if let Some((kernels, required)) = attention {
        match model.backend.set_attention_kernels(kernels) {
            // Where the device has no wgmma kernels the attention stays on mma.sync.
            Err(BackendError::Unavailable(_)) if !required => {}
            other => other?,
        }
    }
    let host = init_params(&cfg, &model.params, opts.seed);
    model.load_params(&host)?;
    drop(host);
    let mut rng = Rng::derive(opts.seed, 0x57E9);
    let n = b * t;
    let tokens: Vec<i32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
    let targets: Vec<i32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();

    let mut step = 0;
    let mut losses = Vec::new();
    for _ in 0..STEP_WARMUP {
        step += 1;
        losses.push(trainer_step(&mut model, &tokens, &targets, step, opts.seed)?);
    }
    let iters = opts.step_iters.max(1);
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        step += 1;
        let start = model.backend.record_event()?;
        losses.push(trainer_step(&mut model, &tokens, &targets, step, opts.seed)?);
        let end = model.backend.record_event()?;
        model.backend.synchronize()?;
        times.push(elapsed_ms(&start, &end)?);
    }
    let mut phase_ms = vec![Vec::with_capacity(iters); STEP_PHASES.len()];
    for _ in 0..iters {
        step += 1;
        let e = phased_step(&mut model, &tokens, &targets, step, opts.seed)?;
        for (i, ms) in phase_ms.iter_mut().enumerate() {
            ms.push(elapsed_ms(&e[i], &e[i + 1])?);
        }
    }
    let free_after = free_memory(&ctx)?;
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let median_ms = median(&mut times);
    let tokens_per_s = n as f64 / (median_ms * 1e-3);
    let flops_per_token = cfg.flops_per_token(t);
    let peak_flops = model.backend.device_info().peak_bf16_flops;
    let phases = STEP_PHASES
        .iter()
        .zip(&mut phase_ms)
        .map(|(name, ms)| Phase { name: (*name).into(), median_ms: median(ms) })
        .collect();
    Ok(StepResult {
        model: STEP_MODEL.into(),
        b,
        t,
        variant: step_variant(
            opts,
            StepPaths {
                gelu: model.backend.gelu_epilogue_calls(),
                bias_grad: model.backend.bias_grad_epilogue_calls(),
                graph_launches: model.backend.graph_launches(),
                attention: model.backend.attention_kernels(cfg.head_size()),
            },
        ),
        median_ms,
        min_ms,
        iters,
        tokens_per_s,
        flops_per_token,
        peak_flops,
        mfu: peak_flops.map(|peak| tokens_per_s * flops_per_token / peak),
        device_bytes: Some(free_before.saturating_sub(free_after) as f64),
        allocated_bytes: Some(model.backend.memory_plan().total() as f64),
        loss_first: losses.first().map(|&l| l as f64),
        loss_last: losses.last().map(|&l| l as f64),
        phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_flops_follow_the_standard_count() {
        let c = AttentionCase::new(8, 1024, 12, 64, false);
        assert_eq!(c.forward_flops(), 4.0 * 96.0 * 1024.0 * 1024.0 * 64.0);
        let causal = AttentionCase::new(8, 1024, 12, 64, true);
        assert_eq!(causal.forward_flops() * 2.0, c.forward_flops());
        let passes = c.passes();
        assert_eq!(passes[1], ("bwd", Work::Flops(2.5 * c.forward_flops())));
        assert_eq!(passes[2], ("fwd+bwd", Work::Flops(3.5 * c.forward_flops())));
        assert_eq!(c.name(), "B=8 NH=12 T=1024 HS=64 bidirectional");
        // The TMA forward's case times its forward alone.
        let tma = AttentionCase::wgmma_tma(8, 1024, 12, 64, true);
        assert_eq!(tma.name(), "B=8 NH=12 T=1024 HS=64 causal, wgmma-tma");
        assert_eq!(tma.passes(), [("fwd", Work::Flops(causal.forward_flops()))]);
        assert_eq!(
            AttentionCase::wgmma_atomic_dq(8, 1024, 12, 64, true).name(),
            "B=8 NH=12 T=1024 HS=64 causal, wgmma, atomic dQ"
        );
    }

    #[test]
    fn copies_span_several_l2_caches() {
        // GPT-2 small at T=1024: 8·1024·768 elements per C-wide tensor, 8 of them in bf16 + LSE.
        let c = AttentionCase::new(8, 1024, 12, 64, true);
        assert_eq!(c.bytes_per_copy(), 8 * 8 * 1024 * 768 * 2 + 8 * 12 * 1024 * 4);
        let n = copies_for(c.bytes_per_copy());
        assert!(n * c.bytes_per_copy() >= ROTATION_BYTES && (n - 1) * c.bytes_per_copy() < ROTATION_BYTES);
        assert_eq!(copies_for(10 * ROTATION_BYTES), 2);
    }

    #[test]
    fn spans_are_aligned_and_sized_per_arena() {
        let mut s = Spans::default();
        let a = s.take(Arena::Acts, 10);
        let b = s.take(Arena::Acts, 3);
        let p = s.take(Arena::Params, 100);
        let g = s.take(Arena::Grads, 5);
        let i = s.take(Arena::Inputs, 7);
        assert_eq!((a.offset, b.offset), (0, TENSOR_ALIGN));
        // Parameters and gradients share the parameter layout's size.
        assert_eq!((p.offset, g.offset), (0, 2 * TENSOR_ALIGN));
        assert_eq!(i.offset, 0);
        let sizes = s.sizes();
        assert_eq!((sizes.acts, sizes.params, sizes.inputs, sizes.stats), (128, 192, 64, 64));
    }

    #[test]
    fn the_op_filter_names_the_known_families() {
        // A filter is a substring of the family: `attention` takes the cached step too.
        let s = select(Some("attention")).unwrap();
        // Every shape causal and not, the atomic-dQ backward, the wgmma kernels, their TMA forward
        // and the wgmma kernels with the atomic-dQ backward at T = 1024 (two shapes, causal and
        // not), the cached step.
        assert_eq!((s.cases.len(), s.step), (2 * ATTENTION_SHAPES.len() + 4 * 4 + 1, false));
        assert_eq!(select(Some("attention_cached")).unwrap().cases.len(), 1);
        let s = select(Some("step")).unwrap();
        assert!(s.cases.is_empty() && s.step);
        let e = select(Some("nope")).err().expect("an error");
        assert!(e.to_string().contains("attention") && e.to_string().contains("step"), "{e}");
    }

    #[test]
    fn step_variants_say_what_differs_from_the_default() {
        let opts = BenchOptions {
            op: None,
            device: 0,
            warmup: 1,
            iters: 1,
            seed: 1,
            step_batch: 8,
            step_iters: 1,
            step_recompute: Recompute::Off,
            step_variant: None,
        };
        let fused = EpilogueCalls { fused: 24, apart: 0 };
        let all_fused =
            StepPaths { gelu: fused, bias_grad: fused, graph_launches: 0, attention: AttentionKernels::Mma };
        assert_eq!(step_variant(&opts, all_fused), "gptk");
        let refused = StepPaths { gelu: EpilogueCalls { fused: 20, apart: 4 }, ..all_fused };
        assert_eq!(step_variant(&opts, refused), "gptk, GELU apart in 4 of 24 calls (no cuBLASLt algorithm)");
        let apart_calls = StepPaths { gelu: EpilogueCalls { fused: 0, apart: 24 }, ..all_fused };
        let gelu_apart = BenchOptions {
            step_variant: Some(StepVariant::GeluApart),
            step_recompute: Recompute::Gelu,
            ..opts.clone()
        };
        assert_eq!(step_variant(&gelu_apart, apart_calls), "gptk, recompute 1, GELU apart");
        let bias_apart = BenchOptions { step_variant: Some(StepVariant::BiasGradApart), ..opts.clone() };
        let bias_apart_calls = StepPaths { bias_grad: EpilogueCalls { fused: 0, apart: 48 }, ..all_fused };
        assert_eq!(step_variant(&bias_apart, bias_apart_calls), "gptk, bias grad apart");
        let graphs = BenchOptions { step_variant: Some(StepVariant::CudaGraphs), ..opts.clone() };
        assert_eq!(
            step_variant(&graphs, StepPaths { graph_launches: 41, ..all_fused }),
            "gptk, CUDA graph (41 launches)"
        );
        let atomic = BenchOptions { step_variant: Some(StepVariant::AtomicAttention), ..opts.clone() };
        assert_eq!(step_variant(&atomic, all_fused), "gptk, attention dQ by atomics");
        let both = BenchOptions { step_variant: Some(StepVariant::WgmmaAtomicAttention), ..opts.clone() };
        let on_wgmma = StepPaths { attention: AttentionKernels::Wgmma, ..all_fused };
        assert_eq!(step_variant(&both, on_wgmma), "gptk, attention on wgmma, dQ by atomics");
        let tma = BenchOptions { step_variant: Some(StepVariant::WgmmaTmaAttention), ..opts.clone() };
        let on_tma = StepPaths { attention: AttentionKernels::WgmmaTma, ..all_fused };
        assert_eq!(step_variant(&tma, on_tma), "gptk, attention on wgmma-tma");
        let all = BenchOptions { step_variant: Some(StepVariant::AllOptIns), ..opts };
        assert_eq!(
            step_variant(&all, StepPaths { graph_launches: 41, ..on_wgmma }),
            "gptk, CUDA graph (41 launches), attention on wgmma, dQ by atomics"
        );
        // On a device without the wgmma kernels.
        assert_eq!(
            step_variant(&all, StepPaths { graph_launches: 41, ..all_fused }),
            "gptk, CUDA graph (41 launches), attention dQ by atomics"
        );
    }

    #[test]
    fn the_mlp_gelu_cases_pair_the_epilogue_with_the_ops_apart() {
        let names: Vec<String> = cases().iter().filter(|c| c.op() == "matmul_gelu").map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "fc N=8192 C=768 OC=3072 bias, epilogue",
                "fc N=8192 C=768 OC=3072 bias, apart",
                "fcproj N=8192 C=3072 OC=768 bias, epilogue",
                "fcproj N=8192 C=3072 OC=768 bias, apart",
            ]
        );
        // The backward reads the layer's input (N·C) and the GELU's input (N·C) and writes dinp.
        let bwd = MatmulGeluCase::new(true, 10, 24, 8, true);
        assert_eq!(bwd.bytes_per_copy(), (10 * 8 + 2 * 8 * 24 + 3 * 10 * 24 + 8) * BYTES_PER_BF16);
        assert_eq!(bwd.passes(), vec![("bwd", Work::Flops(4.0 * 10.0 * 24.0 * 8.0))]);
    }

    #[test]
    fn the_d12_classifier_chunk_is_the_plans() {
        // 2²⁵ logits at most: 667 rows of 50304, rounded down to a multiple of 64.
        assert_eq!(classifier_chunk_rows(), 640);
    }
}
