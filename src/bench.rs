//! `gptk bench`: kernels timed on the GPU at GPT-2 shapes, beside two ceilings measured in the
//! same run, and optionally beside PyTorch's numbers for the same cases.
//!
//! Method (scripts/torch_attention.py times PyTorch the same way, so that the ratios mean
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
//! Attention counts FLOPs the standard way: forward 4·B·NH·T²·HS (two T×T×HS products), halved
//! when causal; backward 2.5 times the forward (five such products), whatever the kernels
//! recompute. The case table is [`cases`]: benchmarking another kernel is adding a [`Case`].

use crate::backend::cuda::{ArenaSizes, CudaBackend, ScratchSizes};
use crate::backend::{Backend, BackendError, Precision};
use crate::model::layout::{Arena, TENSOR_ALIGN, Tensor};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Bytes of inputs and outputs the copies of one case span together: eight times a 60 MB L2.
pub const ROTATION_BYTES: usize = 512 << 20;
/// Elements of the random draw that is uploaded once and then replicated on the device.
const RANDOM_CHUNK: usize = 1 << 22;
/// Bytes each side of the copy ceiling moves.
const COPY_BYTES: usize = 512 << 20;
/// M = N = K of the GEMM ceiling.
const GEMM_SIZE: usize = 8192;
const BYTES_PER_BF16: usize = 2;
const BYTES_PER_F32: usize = 4;

/// A failure that stops the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Backend(#[from] BackendError),
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
    /// Op family, as `--op` filters it: `attention`.
    pub op: String,
    /// The shape, e.g. `B=8 NH=12 T=1024 HS=64 causal`.
    pub case: String,
    /// `fwd`, `bwd`, `fwd+bwd`.
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
}

/// A whole run, as `--json` prints it and as scripts/torch_attention.py writes PyTorch's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `gptk` or `pytorch`.
    pub source: String,
    pub device: String,
    pub ceilings: Ceilings,
    pub results: Vec<Measurement>,
}

impl Report {
    /// The measurement of the same (op, case, pass), if this report has it.
    pub fn find(&self, m: &Measurement) -> Option<&Measurement> {
        self.results.iter().find(|r| r.op == m.op && r.case == m.case && r.pass == m.pass)
    }
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
}

/// Hands out aligned spans of each arena.
#[derive(Default)]
struct Spans {
    acts: usize,
    act_grads: usize,
    stats: usize,
}

impl Spans {
    fn take(&mut self, arena: Arena, len: usize) -> Tensor {
        let next = match arena {
            Arena::Acts => &mut self.acts,
            Arena::ActGrads => &mut self.act_grads,
            Arena::Stats => &mut self.stats,
            other => unreachable!("benchmarks use no {other:?} tensors"),
        };
        let t = Tensor { arena, offset: *next, len };
        *next = t.end().div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        t
    }

    fn sizes(&self) -> ArenaSizes {
        let round = |n: usize| n.div_ceil(TENSOR_ALIGN).max(1) * TENSOR_ALIGN;
        ArenaSizes {
            params: TENSOR_ALIGN,
            acts: round(self.acts),
            act_grads: round(self.act_grads),
            stats: round(self.stats),
            inputs: TENSOR_ALIGN,
        }
    }
}

/// Random normal values of the given scale in `t`: one draw of up to RANDOM_CHUNK elements,
/// uploaded, then doubled on the device until the tensor is full.
fn fill_random(gpu: &mut CudaBackend, t: Tensor, rng: &mut Rng, scale: f64) -> Result<(), BackendError> {
    let chunk = t.len.min(RANDOM_CHUNK);
    let data: Vec<f32> = (0..chunk).map(|_| (rng.normal() * scale) as f32).collect();
    gpu.upload(t.slice(0, chunk), &data)?;
    let mut filled = chunk;
    while filled < t.len {
        let n = filled.min(t.len - filled);
        gpu.copy_tensor(t.slice(filled, n), t.slice(0, n))?;
        filled += n;
    }
    Ok(())
}

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
/// where the head size has them).
pub struct AttentionCase {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub hs: usize,
    pub causal: bool,
    copies: Vec<AttentionTensors>,
}

impl AttentionCase {
    pub fn new(b: usize, t: usize, nh: usize, hs: usize, causal: bool) -> Self {
        AttentionCase { b, t, nh, hs, causal, copies: Vec::new() }
    }

    /// FLOPs of the forward: 4·B·NH·T²·HS, halved when causal.
    pub fn forward_flops(&self) -> f64 {
        let full = 4.0 * (self.b * self.nh) as f64 * (self.t as f64).powi(2) * self.hs as f64;
        if self.causal { full / 2.0 } else { full }
    }
}

/// The name both gptk and scripts/torch_attention.py give an attention shape.
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
        attention_case_name(self.b, self.t, self.nh, self.hs, self.causal)
    }

    fn passes(&self) -> Vec<(&'static str, Work)> {
        let f = self.forward_flops();
        vec![
            ("fwd", Work::Flops(f)),
            ("bwd", Work::Flops(ATTENTION_BACKWARD_FACTOR * f)),
            ("fwd+bwd", Work::Flops((1.0 + ATTENTION_BACKWARD_FACTOR) * f)),
        ]
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
        let first = self.copies[0];
        fill_random(gpu, first.qkv, rng, 1.0)?;
        fill_random(gpu, first.dout, rng, 1.0)?;
        for c in &self.copies[1..] {
            gpu.copy_tensor(c.qkv, first.qkv)?;
            gpu.copy_tensor(c.dout, first.dout)?;
        }
        // The backward reads the forward's output and LSE.
        for copy in 0..self.copies.len() {
            self.run(gpu, 0, copy)?;
        }
        Ok(())
    }

    fn run(&self, gpu: &mut CudaBackend, pass: usize, copy: usize) -> Result<(), BackendError> {
        let x = self.copies[copy];
        let (b, t, nh, hs, causal) = (self.b, self.t, self.nh, self.hs, self.causal);
        if pass != 1 {
            gpu.attention_forward(x.out, x.lse, x.qkv, b, t, nh, hs, causal)?;
        }
        if pass != 0 {
            gpu.attention_backward(x.dqkv, x.dout, x.qkv, x.out, x.lse, b, t, nh, hs, causal)?;
        }
        Ok(())
    }
}

/// The attention shapes: GPT-2 small's heads (NH=12, HS=64) at B=8 and T = 1024, 2048, 4096, and
/// HS=128 with half the heads (same C = 768), each causal and bidirectional.
/// scripts/torch_attention.py times the same list.
pub const ATTENTION_SHAPES: &[(usize, usize, usize, usize)] =
    &[(8, 1024, 12, 64), (8, 2048, 12, 64), (8, 4096, 12, 64), (8, 1024, 6, 128), (8, 2048, 6, 128), (8, 4096, 6, 128)];

/// Every benchmark case, in the order they run.
pub fn cases() -> Vec<Box<dyn Case>> {
    let mut v: Vec<Box<dyn Case>> = Vec::new();
    for &(b, t, nh, hs) in ATTENTION_SHAPES {
        for causal in [true, false] {
            v.push(Box::new(AttentionCase::new(b, t, nh, hs, causal)));
        }
    }
    v
}

/// The op families of [`cases`].
pub fn families() -> Vec<&'static str> {
    let mut f: Vec<&'static str> = cases().iter().map(|c| c.op()).collect();
    f.dedup();
    f
}

/// The cases a `--op` filter selects; an error naming the known families when none matches.
pub fn select(op: Option<&str>) -> Result<Vec<Box<dyn Case>>, BenchError> {
    let all = cases();
    let Some(want) = op else { return Ok(all) };
    let chosen: Vec<Box<dyn Case>> = all.into_iter().filter(|c| c.op().contains(want)).collect();
    if chosen.is_empty() {
        return Err(BenchError::UnknownOp { given: want.into(), known: families().join(", ") });
    }
    Ok(chosen)
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
        ms.push(
            start.elapsed_ms(end).map_err(|e| BackendError::Device(format!("reading a timing event: {e:?}")))? as f64
        );
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

/// Runs the selected cases, handing each measurement to `report` as it is made.
pub fn run(opts: &BenchOptions, mut report: impl FnMut(&Measurement)) -> Result<Vec<Measurement>, BenchError> {
    let selected = select(opts.op.as_deref())?;
    // Each case opens its own backend; holding the context keeps it alive between them.
    let _context = crate::backend::cuda::device::open(opts.device)?;
    let mut out = Vec::new();
    for (i, mut case) in selected.into_iter().enumerate() {
        let copies = copies_for(case.bytes_per_copy());
        let (sizes, scratch) = case.layout(copies);
        let mut gpu = CudaBackend::with_sizes(sizes, scratch, Precision::Bf16, opts.device, None)?;
        let mut rng = Rng::derive(opts.seed, i as u64);
        case.prepare(&mut gpu, &mut rng)?;
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
    fn rates_and_ceiling_shares() {
        let m = Measurement {
            op: "attention".into(),
            case: "x".into(),
            pass: "fwd".into(),
            median_ms: 2.0,
            min_ms: 1.5,
            iters: 10,
            flops: Some(1e12),
            bytes: None,
        };
        assert_eq!(m.rate(), Some((500.0, "TFLOP/s")));
        let c = Ceilings { copy_gbps: 4000.0, gemm_bf16_tflops: 800.0 };
        assert_eq!(m.of_ceiling(&c), Some(0.625));
        let bytes = Measurement { flops: None, bytes: Some(4e9), ..m };
        assert_eq!(bytes.rate(), Some((2000.0, "GB/s")));
        assert_eq!(bytes.of_ceiling(&c), Some(0.5));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_op_filter_names_the_known_families() {
        assert_eq!(select(Some("attention")).unwrap().len(), 2 * ATTENTION_SHAPES.len());
        let e = select(Some("nope")).err().expect("an error");
        assert!(e.to_string().contains("attention"), "{e}");
    }

    #[test]
    fn reports_round_trip_through_json() {
        let r = Report {
            source: "pytorch".into(),
            device: "NVIDIA H200".into(),
            ceilings: Ceilings { copy_gbps: 4300.0, gemm_bf16_tflops: 780.0 },
            results: vec![Measurement {
                op: "attention".into(),
                case: attention_case_name(8, 1024, 12, 64, true),
                pass: "fwd+bwd".into(),
                median_ms: 1.25,
                min_ms: 1.2,
                iters: 30,
                flops: Some(1e11),
                bytes: None,
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("bytes"), "absent counts are left out: {text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(back.find(&r.results[0]).is_some());
    }
}
