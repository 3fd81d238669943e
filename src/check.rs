//! `gptk check`: every CUDA kernel against its CPU twin, then one whole training step.
//!
//! Each case builds a CPU backend and a CUDA backend with the same arenas, fills the inputs with
//! the same random values (rounded to the storage type first, so both sides read identical
//! numbers), poisons the GPU's overwritten outputs with NaN (so a kernel that skips an element
//! fails), seeds `+=` outputs with the same random values on both sides, runs the op on both and
//! compares every output tensor. Shapes include odd sizes and misaligned spans, which take the
//! kernels' scalar paths. Every tensor sits between guards in its arena, which must hold their
//! bits through the case: a kernel that writes outside its tensors fails the case's guard row.
//!
//! The comparison, as llm.c reports it: per tensor the maximum absolute error, the relative L2
//! error ‖gpu − cpu‖ / ‖cpu‖, and the share of the tolerance used, max |gpu − cpu| / tol with
//! tol = k · eps · (|cpu| + rms(cpu)), where eps is the epsilon of the tensor's type (2⁻⁸ for
//! bf16, 2⁻²³ for f32) and k a small allowance for the summation order ([`K_BF16`],
//! [`K_F32`]; looser for the whole-model step, where bf16 rounding compounds layer by layer).
//! The rms term stands in for the absolute tolerance, scaled to the tensor, so that elements
//! near zero in a tensor of large values are not judged by their own tiny magnitude. A tensor
//! passes when the share is at most 1 and the GPU produced no NaN or infinity.

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::kernels::{FLASH90_TMA_BOX, FLASH90_TMA_BOX_COLS};
use crate::backend::cuda::{ArenaSizes, CudaBackend, EpilogueCalls, ScratchSizes};
use crate::backend::{AdamWStep, AttentionKernels, Backend, BackendError, Precision};
use crate::model::config::ModelConfig;
use crate::model::layout::{ActLayout, Arena, TENSOR_ALIGN, Tensor};
use crate::model::{Gpt, ModelError, init_params};
use crate::rng::Rng;
use half::bf16;

/// Machine epsilon of bf16 (8 significant bits).
pub const BF16_EPS: f64 = 1.0 / 256.0;
/// Machine epsilon of f32.
pub const F32_EPS: f64 = f32::EPSILON as f64;
/// Tolerance factor for bf16 outputs of one op: one rounding of the result, with room.
pub const K_BF16: f64 = 2.0;
/// Tolerance factor for f32 outputs of one op: f32 sums in another order than the CPU's f64.
pub const K_F32: f64 = 256.0;
/// Tolerance factors of the tensor-core (flash) attention in bf16: besides the output's own
/// rounding, P (forward), and P and dS (backward), are rounded to bf16 before their second
/// product, as in FlashAttention; the CPU emulation of the kernels measured up to 0.7 (forward)
/// and 1.9 (backward) of K_BF16's allowance, so these leave two to three times that.
pub const K_ATTENTION_BF16_FORWARD: f64 = 4.0;
pub const K_ATTENTION_BF16_BACKWARD: f64 = 8.0;
/// Tolerance factors of the whole-model step (bf16 rounding compounds through the layers).
pub const K_MODEL_BF16: f64 = 32.0;
pub const K_MODEL_F32: f64 = 4096.0;

/// A failure that stops the checker (a failed comparison does not: it is a row).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("unknown op '{given}' (known: {known})")]
    UnknownOp { given: String, known: String },
}

/// The op families `--op` accepts, in the order they run.
pub const OPS: &[&str] = &[
    "encoder_forward",
    "encoder_backward",
    "layernorm_forward",
    "layernorm_backward",
    "residual_layernorm_forward",
    "matmul_forward",
    "matmul_backward",
    "matmul_gelu_forward",
    "matmul_backward_gelu",
    "attention_forward",
    "attention_backward",
    "attention_cached",
    "gelu_forward",
    "gelu_backward",
    "residual_forward",
    "cross_entropy",
    "adamw",
    "grad_norm",
    "optimizer_step",
    "model_step",
    // Last: Hopper's wgmma kernels (rows on compute capability 9.0 only), so that a fault in the
    // newest kernels, which can spoil the device context, cannot hide the other families' rows;
    // each layout probe before the kernels that rest on it, so that a layout error can be told
    // from an error of the attention kernels; the newest, the TMA forward, last.
    "wgmma_layouts",
    "wgmma_forward",
    "wgmma_backward",
    "tma_layout",
    "wgmma_tma_forward",
];

/// (N, C, skew) of the layernorm checks: degenerate, odd, unaligned and GPT-2-sized rows.
const LAYERNORM_SHAPES: [(usize, usize, usize); 5] = [(1, 1, 0), (5, 8, 0), (7, 13, 1), (64, 768, 0), (33, 1600, 3)];

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub op: String,
    /// The shape, e.g. `N=7 C=13`.
    pub case: String,
    pub tensor: String,
    pub elems: usize,
    pub max_abs: f64,
    pub rel_l2: f64,
    /// max |gpu − cpu| / tol: at most 1 to pass.
    pub tol_share: f64,
    /// GPU values that are NaN or infinite where the CPU's are finite.
    pub non_finite: usize,
    pub passed: bool,
}

/// What `gptk check` asks for.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Only the op family of this name, or the families whose name contains it (e.g.
    /// `attention`); all when `None`.
    pub op: Option<String>,
    pub precision: Precision,
    pub device: usize,
    /// Seed of the random inputs.
    pub seed: u64,
}

/// Compares `gpu` with the reference `cpu` under tol = k·eps·(|cpu| + rms(cpu)).
pub fn compare(gpu: &[f32], cpu: &[f32], eps: f64, k: f64) -> (f64, f64, f64, usize) {
    let n = cpu.len().max(1) as f64;
    let rms = (cpu.iter().map(|&c| (c as f64).powi(2)).sum::<f64>() / n).sqrt();
    let (mut max_abs, mut diff2, mut ref2, mut share, mut non_finite) = (0.0f64, 0.0, 0.0, 0.0f64, 0usize);
    for (&g, &c) in gpu.iter().zip(cpu) {
        let (g, c) = (g as f64, c as f64);
        if !g.is_finite() || !c.is_finite() {
            non_finite += 1;
            continue;
        }
        let d = (g - c).abs();
        max_abs = max_abs.max(d);
        diff2 += d * d;
        ref2 += c * c;
        let tol = k * eps * (c.abs() + rms);
        share = share.max(if tol > 0.0 {
            d / tol
        } else if d > 0.0 {
            f64::INFINITY
        } else {
            0.0
        });
    }
    non_finite += gpu.len().abs_diff(cpu.len());
    let rel_l2 = if ref2 > 0.0 { (diff2 / ref2).sqrt() } else { diff2.sqrt() };
    (max_abs, rel_l2, share, non_finite)
}

/// Elements of guard before and after every tensor of a case (a multiple of [`TENSOR_ALIGN`], so
/// tensors stay aligned): [`GUARD_VALUE`] in the GPU's float arenas, checked bit for bit after
/// the case ([`Pair::guard_row`]). A kernel that writes past its tensors changes them; one that
/// reads past them feeds NaN into its outputs.
const GUARD: usize = 16 * TENSOR_ALIGN;

/// A NaN with a payload of its own (bf16: 0x7FE5 once quieted), so that a NaN a kernel computes
/// from a guard it read (the GPU's arithmetic and conversions give the canonical NaN) and wrote
/// back out of bounds still shows. Only a verbatim copy of guard bits would not.
const GUARD_VALUE: u32 = 0x7FA5_A5A5;

/// The float arenas, whose guards are checked (kernels only read the token ids of `Inputs`).
const FLOAT_ARENAS: [Arena; 7] =
    [Arena::Params, Arena::Grads, Arena::OptM, Arena::OptV, Arena::Acts, Arena::ActGrads, Arena::Stats];

/// Arena space of one case, handed out in aligned spans between guards before the backends
/// exist.
#[derive(Default)]
struct Plan {
    /// Elements handed out per group of arenas that share offsets (see `group`).
    next: [usize; 5],
    /// Every span handed out.
    spans: Vec<Tensor>,
    scratch: ScratchSizes,
}

impl Plan {
    /// The parameter-like arenas (parameters, gradients, moments) share one plan of offsets.
    fn group(arena: Arena) -> usize {
        match arena {
            Arena::Params | Arena::Grads | Arena::OptM | Arena::OptV => 0,
            Arena::Acts => 1,
            Arena::ActGrads => 2,
            Arena::Stats => 3,
            Arena::Inputs => 4,
        }
    }

    /// An aligned span of `len` elements.
    fn take(&mut self, arena: Arena, len: usize) -> Tensor {
        self.take_skewed(arena, len, 0)
    }

    /// A span starting `skew` elements past an aligned offset (to exercise unaligned paths).
    fn take_skewed(&mut self, arena: Arena, len: usize, skew: usize) -> Tensor {
        let next = &mut self.next[Plan::group(arena)];
        let t = Tensor { arena, offset: *next + GUARD + skew, len };
        *next = t.end().div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        self.spans.push(t);
        t
    }

    /// Elements of `arena`: its spans and the guard after the last (`next` stays aligned).
    fn size(&self, arena: Arena) -> usize {
        self.next[Plan::group(arena)] + GUARD
    }

    /// The spans of `arena` outside every tensor handed out: its guards.
    fn guards(&self, arena: Arena) -> Vec<Tensor> {
        let mut taken: Vec<(usize, usize)> = (self.spans.iter())
            .filter(|t| Plan::group(t.arena) == Plan::group(arena))
            .map(|t| (t.offset, t.end()))
            .collect();
        taken.sort_unstable();
        let mut guards = Vec::new();
        let mut at = 0;
        for (start, end) in taken.into_iter().chain([(self.size(arena), 0)]) {
            if start > at {
                guards.push(Tensor { arena, offset: at, len: start - at });
            }
            at = at.max(end);
        }
        guards
    }

    fn build(&self, precision: Precision, device: usize, seed: u64) -> Result<Pair, BackendError> {
        let sizes = ArenaSizes {
            params: self.size(Arena::Params),
            acts: self.size(Arena::Acts),
            act_grads: self.size(Arena::ActGrads),
            stats: self.size(Arena::Stats),
            inputs: self.size(Arena::Inputs),
        };
        let gpu = CudaBackend::with_sizes(sizes, self.scratch, precision, device, None)?;
        let cpu = CpuBackend::with_sizes(sizes.params, [sizes.acts, sizes.act_grads, sizes.stats, sizes.inputs]);
        let mut pair = Pair { cpu, gpu, precision, rng: Rng::new(seed), guards: Vec::new() };
        for g in FLOAT_ARENAS.iter().flat_map(|&a| self.guards(a)) {
            pair.gpu.upload(g, &vec![f32::from_bits(GUARD_VALUE); g.len])?;
            let bits = guard_bits(&mut pair.gpu, precision, g)?;
            pair.guards.push((g, bits));
        }
        Ok(pair)
    }
}

/// The tensors of one linear layer's check: w (OC,C) and bias (OC) in the parameters, the input
/// (N,C) (the bias and input `skew` elements off alignment), dout (N,OC) and dinp (N,C).
#[derive(Clone, Copy)]
struct Linear {
    /// Input width, the fan-in the weight's scale follows.
    c: usize,
    w: Tensor,
    bias: Tensor,
    inp: Tensor,
    dout: Tensor,
    dinp: Tensor,
}

impl Linear {
    fn take(plan: &mut Plan, n: usize, c: usize, oc: usize, skew: usize) -> Self {
        let w = plan.take(Arena::Params, oc * c);
        let bias = plan.take_skewed(Arena::Params, oc, skew);
        let inp = plan.take_skewed(Arena::Acts, n * c, skew);
        let (dout, dinp) = (plan.take(Arena::ActGrads, n * oc), plan.take(Arena::ActGrads, n * c));
        plan.scratch.max_columns = oc;
        Linear { c, w, bias, inp, dout, dinp }
    }

    /// What a backward writes: dinp, dw and, with a bias, dbias.
    fn gradients(&self, bias: Option<Tensor>) -> Vec<(&'static str, Tensor)> {
        let mut t = vec![("dinp", self.dinp), ("dw", self.w.grad())];
        t.extend(bias.map(|b| ("dbias", b.grad())));
        t
    }
}

/// `, bias grad in epilogue` or `, bias grad apart` after a backward case with a bias: whether
/// the GPU summed the bias gradient in the weight GEMM's epilogue since `before`.
fn bias_grad_path(p: &Pair, before: EpilogueCalls, with_bias: bool) -> &'static str {
    match (with_bias, p.gpu.bias_grad_epilogue_calls().fused > before.fused) {
        (false, _) => "",
        (true, true) => ", bias grad in epilogue",
        (true, false) => ", bias grad apart",
    }
}

/// `N=17 C=13 OC=29 bias unaligned`.
fn linear_case(n: usize, c: usize, oc: usize, bias: bool, skew: usize) -> String {
    format!("N={n} C={c} OC={oc}{}{}", if bias { " bias" } else { "" }, if skew > 0 { " unaligned" } else { "" })
}

/// The two backends of one case.
struct Pair {
    cpu: CpuBackend<f32>,
    gpu: CudaBackend,
    precision: Precision,
    rng: Rng,
    /// The GPU's guards (see [`GUARD`]) and their bits as first read back.
    guards: Vec<(Tensor, Vec<u32>)>,
}

/// The bits of guard `g` on the GPU (in `Params`, the master weights' and the storage copy's).
fn guard_bits(gpu: &mut CudaBackend, precision: Precision, g: Tensor) -> Result<Vec<u32>, BackendError> {
    let mut seen = gpu.download(g)?;
    if g.arena == Arena::Params && precision == Precision::Bf16 {
        seen.extend(gpu.download_storage(g)?);
    }
    Ok(seen.into_iter().map(f32::to_bits).collect())
}

/// Arenas held in the storage type (the others are f32 or i32).
fn is_storage(arena: Arena) -> bool {
    matches!(arena, Arena::Params | Arena::Grads | Arena::Acts | Arena::ActGrads)
}

fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

impl Pair {
    fn eps(&self, arena: Arena) -> f64 {
        if is_storage(arena) && self.precision == Precision::Bf16 { BF16_EPS } else { F32_EPS }
    }

    fn k(&self, arena: Arena) -> f64 {
        if self.eps(arena) == BF16_EPS { K_BF16 } else { K_F32 }
    }

    fn randn(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.rng.normal() * scale) as f32).collect()
    }

    /// Uploads `data`, rounded to the tensor's type, to both backends.
    fn set(&mut self, t: Tensor, mut data: Vec<f32>) -> Result<(), BackendError> {
        if is_storage(t.arena) && self.precision == Precision::Bf16 {
            data.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
        self.set_exact(t, &data)
    }

    /// Uploads `data` unrounded (the GPU rounds its storage copy itself).
    fn set_exact(&mut self, t: Tensor, data: &[f32]) -> Result<(), BackendError> {
        self.cpu.upload(t, data)?;
        self.gpu.upload(t, data)
    }

    /// Random normal values of the given scale into `t` on both sides.
    fn fill(&mut self, t: Tensor, scale: f64) -> Result<(), BackendError> {
        let data = self.randn(t.len, scale);
        self.set(t, data)
    }

    /// A layernorm's input (normal, shifted off zero so the mean matters), weight (near 1) and
    /// bias, on both sides.
    fn layernorm_inputs(&mut self, inp: Tensor, w: Tensor, bias: Tensor) -> Result<(), BackendError> {
        let shifted: Vec<f32> = self.randn(inp.len, 1.0).iter().map(|x| x + 0.5).collect();
        self.set(inp, shifted)?;
        let ones: Vec<f32> = self.randn(w.len, 0.2).iter().map(|x| x + 1.0).collect();
        self.set(w, ones)?;
        self.fill(bias, 0.2)
    }

    fn set_ints(&mut self, t: Tensor, ids: &[i32]) -> Result<(), BackendError> {
        self.cpu.upload_ints(t, ids)?;
        self.gpu.upload_ints(t, ids)
    }

    /// A linear layer's weight (scale 1/√C), bias and input on both sides; for a backward also
    /// dout, the accumulated dw and dbias, and NaN in the GPU's dinp. Returns the bias the op
    /// takes (`None` without one).
    fn linear_inputs(&mut self, l: &Linear, with_bias: bool, backward: bool) -> Result<Option<Tensor>, BackendError> {
        self.fill(l.w, 1.0 / (l.c.max(1) as f64).sqrt())?;
        self.fill(l.bias, 0.5)?;
        self.fill(l.inp, 1.0)?;
        let bias = with_bias.then_some(l.bias);
        if backward {
            self.fill(l.dout, 1.0)?;
            self.poison(l.dinp)?;
            self.fill(l.w.grad(), 0.1)?;
            if let Some(b) = bias {
                self.fill(b.grad(), 0.1)?;
            }
        }
        Ok(bias)
    }

    /// NaN in the GPU copy of an output the op must overwrite.
    fn poison(&mut self, t: Tensor) -> Result<(), BackendError> {
        self.gpu.upload(t, &vec![f32::NAN; t.len])
    }

    /// A row that passes when every guard of the GPU holds the bits it was given: nothing was
    /// written outside the case's tensors. `max abs` is the largest value found written there
    /// (NaN when a NaN was), `rel L2` the share of guard elements changed.
    fn guard_row(&mut self, op: &str, case: &str) -> Result<Comparison, BackendError> {
        let (mut elems, mut changed, mut max_abs) = (0, 0, 0.0f64);
        for (g, want) in &self.guards {
            let seen = guard_bits(&mut self.gpu, self.precision, *g)?;
            elems += seen.len();
            for (&got, _) in seen.iter().zip(want).filter(|(got, want)| got != want) {
                changed += 1;
                let written = f64::from(f32::from_bits(got).abs());
                max_abs = if written.is_nan() || max_abs.is_nan() { f64::NAN } else { max_abs.max(written) };
            }
        }
        Ok(Comparison {
            op: op.into(),
            case: case.into(),
            tensor: "guards (outside the tensors)".into(),
            elems,
            max_abs,
            rel_l2: if elems > 0 { changed as f64 / elems as f64 } else { 0.0 },
            tol_share: if changed == 0 { 0.0 } else { f64::INFINITY },
            non_finite: 0,
            passed: changed == 0,
        })
    }

    fn compare(&mut self, op: &str, case: &str, name: &str, t: Tensor) -> Result<Comparison, BackendError> {
        let (eps, k) = (self.eps(t.arena), self.k(t.arena));
        self.compare_with(op, case, name, t, eps, k)
    }

    fn compare_with(
        &mut self,
        op: &str,
        case: &str,
        name: &str,
        t: Tensor,
        eps: f64,
        k: f64,
    ) -> Result<Comparison, BackendError> {
        let gpu = self.gpu.download(t)?;
        let cpu = self.cpu.download(t)?;
        Ok(row(op, case, name, &gpu, &cpu, eps, k))
    }
}

/// The AdamW settings of the optimizer checks (step 3, so the bias corrections matter).
const CHECK_ADAMW: AdamWStep =
    AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 3, grad_scale: 1.0, seed: 0 };

/// Random parameters (unrounded: the GPU keeps an f32 master), gradients of `grad_std` and
/// moments in the `all` span of the parameter-like arenas, the same on both sides.
fn optimizer_state(p: &mut Pair, all: Tensor, grad_std: f64) -> Result<(), BackendError> {
    let params = p.randn(all.len, 1.0);
    p.set_exact(all, &params)?;
    p.fill(all.grad(), grad_std)?;
    let m = p.randn(all.len, 0.01);
    p.set_exact(all.in_arena(Arena::OptM), &m)?;
    let v: Vec<f32> = p.randn(all.len, 1e-4).iter().map(|x| x.abs()).collect();
    p.set_exact(all.in_arena(Arena::OptV), &v)
}

fn row(op: &str, case: &str, name: &str, gpu: &[f32], cpu: &[f32], eps: f64, k: f64) -> Comparison {
    let (max_abs, rel_l2, tol_share, non_finite) = compare(gpu, cpu, eps, k);
    Comparison {
        op: op.into(),
        case: case.into(),
        tensor: name.into(),
        elems: cpu.len(),
        max_abs,
        rel_l2,
        tol_share,
        non_finite,
        passed: non_finite == 0 && tol_share <= 1.0,
    }
}

/// A row that passes only when `got` and `want` hold the same bits (NaN included).
fn bitwise_row(op: &str, case: &str, name: &str, got: &[f32], want: &[f32]) -> Comparison {
    let same = got.len() == want.len() && got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
    let max_abs = got.iter().zip(want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let non_finite = got.iter().zip(want).filter(|(a, b)| !a.is_finite() && b.is_finite()).count();
    Comparison {
        op: op.into(),
        case: case.into(),
        tensor: name.into(),
        elems: want.len(),
        max_abs,
        rel_l2: if same { 0.0 } else { f64::NAN },
        tol_share: if same { 0.0 } else { f64::INFINITY },
        non_finite,
        passed: same,
    }
}

/// The op families a `--op` filter selects (all for `None`): the family of that name, else every
/// family whose name contains it; an error naming the known ones when it matches none.
pub fn select(op: Option<&str>) -> Result<Vec<&'static str>, CheckError> {
    let Some(want) = op else { return Ok(OPS.to_vec()) };
    if let Some(exact) = OPS.iter().find(|op| **op == want) {
        return Ok(vec![exact]);
    }
    let s: Vec<&str> = OPS.iter().copied().filter(|op| op.contains(want)).collect();
    if s.is_empty() {
        return Err(CheckError::UnknownOp { given: want.into(), known: OPS.join(", ") });
    }
    Ok(s)
}

/// Runs the selected checks, handing each row to `report` as it is made.
pub fn run(opts: &CheckOptions, mut report: impl FnMut(&Comparison)) -> Result<Vec<Comparison>, CheckError> {
    let selected = select(opts.op.as_deref())?;
    // Each case opens its own backend; holding the device's context for the whole run keeps it
    // from being torn down and rebuilt between cases.
    let _context = crate::backend::cuda::device::open(opts.device)?;
    let mut rows = Vec::new();
    let mut emit = |r: Comparison| {
        report(&r);
        rows.push(r);
    };
    let ctx = Ctx { precision: opts.precision, device: opts.device, seed: opts.seed };
    for op in selected {
        let made = ctx.family(op);
        match made {
            Ok(made) => made.into_iter().for_each(&mut emit),
            // Without a GPU nothing else can run either.
            Err(e @ CheckError::Backend(BackendError::Unavailable(_))) => return Err(e),
            // A device error fails this op family; the others still run.
            Err(e) => emit(Comparison {
                op: op.into(),
                case: "-".into(),
                tensor: format!("error: {e}"),
                elems: 0,
                max_abs: f64::NAN,
                rel_l2: f64::NAN,
                tol_share: f64::INFINITY,
                non_finite: 0,
                passed: false,
            }),
        }
    }
    Ok(rows)
}

/// Settings shared by every case.
struct Ctx {
    precision: Precision,
    device: usize,
    seed: u64,
}

type Rows = Result<Vec<Comparison>, CheckError>;

impl Ctx {
    /// Every case of one op family.
    fn family(&self, op: &str) -> Rows {
        match op {
            "encoder_forward" => self.encoder(false),
            "encoder_backward" => self.encoder(true),
            "layernorm_forward" => self.layernorm(false),
            "layernorm_backward" => self.layernorm(true),
            "residual_layernorm_forward" => self.residual_layernorm(),
            "matmul_forward" => self.matmul(false),
            "matmul_backward" => self.matmul(true),
            "matmul_gelu_forward" => self.matmul_gelu(false),
            "matmul_backward_gelu" => self.matmul_gelu(true),
            "attention_forward" => self.attention(op, false, AttentionKernels::Mma),
            "attention_backward" => self.attention(op, true, AttentionKernels::Mma),
            "wgmma_layouts" => self.wgmma_layouts(),
            "wgmma_forward" => self.attention(op, false, AttentionKernels::Wgmma),
            "wgmma_tma_forward" => self.attention(op, false, AttentionKernels::WgmmaTma),
            "wgmma_backward" => self.attention(op, true, AttentionKernels::Wgmma),
            "tma_layout" => self.tma_layout(),
            "attention_cached" => self.attention_cached(),
            "gelu_forward" | "gelu_backward" | "residual_forward" => self.elementwise(op),
            "cross_entropy" => self.cross_entropy(),
            "adamw" => self.adamw(),
            "grad_norm" => self.grad_norm(),
            "optimizer_step" => self.optimizer_step(),
            "model_step" => self.model_step(),
            other => unreachable!("{other} is listed in OPS"),
        }
    }

    fn pair(&self, plan: &Plan, case_seed: u64) -> Result<Pair, BackendError> {
        plan.build(self.precision, self.device, self.seed ^ case_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn encoder(&self, backward: bool) -> Rows {
        let op = if backward { "encoder_backward" } else { "encoder_forward" };
        let mut rows = Vec::new();
        for (i, &(b, t, c, vp)) in [(1, 1, 1, 4), (2, 5, 8, 16), (3, 7, 13, 20), (4, 64, 768, 256)].iter().enumerate() {
            let case = format!("B={b} T={t} C={c} Vp={vp}");
            let mut plan = Plan::default();
            let (wte, wpe) = (plan.take(Arena::Params, vp * c), plan.take(Arena::Params, t * c));
            let tokens = plan.take(Arena::Inputs, b * t);
            let (out, dout) = (plan.take(Arena::Acts, b * t * c), plan.take(Arena::ActGrads, b * t * c));
            plan.scratch.tokens = b * t;
            let mut p = self.pair(&plan, i as u64)?;
            // Few distinct tokens, so the backward's buckets collect several positions.
            let ids: Vec<i32> =
                (0..b * t).map(|_| p.rng.below(vp.min(5) as u64) as i32 * (vp as i32 / 5).max(1)).collect();
            let ids: Vec<i32> = ids.into_iter().map(|x| x.min(vp as i32 - 1)).collect();
            p.set_ints(tokens, &ids)?;
            if backward {
                for g in [wte.grad(), wpe.grad()] {
                    p.fill(g, 0.1)?;
                }
                p.fill(dout, 1.0)?;
                p.cpu.encoder_backward(wte.grad(), wpe.grad(), dout, tokens, b, t, c)?;
                p.gpu.encoder_backward(wte.grad(), wpe.grad(), dout, tokens, b, t, c)?;
                rows.push(p.compare(op, &case, "dwte", wte.grad())?);
                rows.push(p.compare(op, &case, "dwpe", wpe.grad())?);
            } else {
                p.fill(wte, 0.5)?;
                p.fill(wpe, 0.5)?;
                p.poison(out)?;
                p.cpu.encoder_forward(out, tokens, wte, wpe, b, t, c)?;
                p.gpu.encoder_forward(out, tokens, wte, wpe, b, t, c)?;
                rows.push(p.compare(op, &case, "out", out)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn layernorm(&self, backward: bool) -> Rows {
        let op = if backward { "layernorm_backward" } else { "layernorm_forward" };
        let mut rows = Vec::new();
        for (i, &(n, c, skew)) in LAYERNORM_SHAPES.iter().enumerate() {
            let case = format!("N={n} C={c}{}", if skew > 0 { " unaligned" } else { "" });
            let mut plan = Plan::default();
            let (w, bias) = (plan.take(Arena::Params, c), plan.take(Arena::Params, c));
            let inp = plan.take_skewed(Arena::Acts, n * c, skew);
            let out = plan.take(Arena::Acts, n * c);
            let (mean, rstd) = (plan.take(Arena::Stats, n), plan.take(Arena::Stats, n));
            let (dout, dinp) = (plan.take(Arena::ActGrads, n * c), plan.take_skewed(Arena::ActGrads, n * c, skew));
            plan.scratch.max_columns = c;
            let mut p = self.pair(&plan, 100 + i as u64)?;
            p.layernorm_inputs(inp, w, bias)?;
            if backward {
                // The statistics come from the reference forward, identical on both sides.
                p.cpu.layernorm_forward(out, mean, rstd, inp, w, bias, n, c)?;
                let (m, s) = (p.cpu.download(mean)?, p.cpu.download(rstd)?);
                p.set_exact(mean, &m)?;
                p.set_exact(rstd, &s)?;
                p.fill(dout, 1.0)?;
                p.fill(dinp, 0.1)?;
                p.fill(w.grad(), 0.1)?;
                p.fill(bias.grad(), 0.1)?;
                p.cpu.layernorm_backward(dinp, w.grad(), bias.grad(), dout, inp, w, mean, rstd, n, c)?;
                p.gpu.layernorm_backward(dinp, w.grad(), bias.grad(), dout, inp, w, mean, rstd, n, c)?;
                rows.push(p.compare(op, &case, "dinp", dinp)?);
                rows.push(p.compare(op, &case, "dw", w.grad())?);
                rows.push(p.compare(op, &case, "db", bias.grad())?);
            } else {
                for t in [out, mean, rstd] {
                    p.poison(t)?;
                }
                p.cpu.layernorm_forward(out, mean, rstd, inp, w, bias, n, c)?;
                p.gpu.layernorm_forward(out, mean, rstd, inp, w, bias, n, c)?;
                rows.push(p.compare(op, &case, "out", out)?);
                rows.push(p.compare(op, &case, "mean", mean)?);
                rows.push(p.compare(op, &case, "rstd", rstd)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// The fused residual add and layernorm: the sum and the layernorm of it, both compared.
    fn residual_layernorm(&self) -> Rows {
        let op = "residual_layernorm_forward";
        let mut rows = Vec::new();
        for (i, &(n, c, skew)) in LAYERNORM_SHAPES.iter().enumerate() {
            let case = format!("N={n} C={c}{}", if skew > 0 { " unaligned" } else { "" });
            let mut plan = Plan::default();
            let (w, bias) = (plan.take(Arena::Params, c), plan.take(Arena::Params, c));
            let x = plan.take_skewed(Arena::Acts, n * c, skew);
            let y = plan.take(Arena::Acts, n * c);
            let (res, out) = (plan.take(Arena::Acts, n * c), plan.take(Arena::Acts, n * c));
            let (mean, rstd) = (plan.take(Arena::Stats, n), plan.take(Arena::Stats, n));
            // The two unfused launches, on the GPU only, for the bitwise comparison.
            let (res2, out2) = (plan.take(Arena::Acts, n * c), plan.take(Arena::Acts, n * c));
            let (mean2, rstd2) = (plan.take(Arena::Stats, n), plan.take(Arena::Stats, n));
            let mut p = self.pair(&plan, 150 + i as u64)?;
            p.layernorm_inputs(x, w, bias)?;
            p.fill(y, 0.5)?;
            for t in [res, out, mean, rstd] {
                p.poison(t)?;
            }
            // The reference normalises the sum as the GPU stores it (rounded to bf16 in bf16
            // mode), so that the statistics can be held to f32 tolerances.
            p.cpu.residual_forward(res, x, y)?;
            if p.precision == Precision::Bf16 {
                let stored: Vec<f32> = p.cpu.download(res)?.into_iter().map(round_bf16).collect();
                p.cpu.upload(res, &stored)?;
            }
            p.cpu.layernorm_forward(out, mean, rstd, res, w, bias, n, c)?;
            p.gpu.residual_layernorm_forward(res, out, mean, rstd, (x, y), w, bias, n, c)?;
            for (name, t) in [("res", res), ("out", out), ("mean", mean), ("rstd", rstd)] {
                rows.push(p.compare(op, &case, name, t)?);
            }
            // The fused kernel promises the bits of residual_forward then layernorm_forward when
            // both take the same path. An unaligned x sends the fused kernel down the scalar path,
            // whose sums run in another order than the vector path the separate layernorm of the
            // (aligned) sum takes: there only the sum itself is compared.
            for t in [res2, out2, mean2, rstd2] {
                p.poison(t)?;
            }
            p.gpu.residual_forward(res2, x, y)?;
            p.gpu.layernorm_forward(out2, mean2, rstd2, res2, w, bias, n, c)?;
            let same_path = if skew == 0 { 4 } else { 1 };
            for (name, fused, two) in
                [("res", res, res2), ("out", out, out2), ("mean", mean, mean2), ("rstd", rstd, rstd2)]
                    .into_iter()
                    .take(same_path)
            {
                let (fused, two) = (p.gpu.download(fused)?, p.gpu.download(two)?);
                rows.push(bitwise_row(op, &case, &format!("{name} = 2 launches (bitwise)"), &fused, &two));
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn matmul(&self, backward: bool) -> Rows {
        let op = if backward { "matmul_backward" } else { "matmul_forward" };
        let mut rows = Vec::new();
        let shapes = [
            (1, 1, 1, true, 0),
            (5, 7, 3, true, 0),
            (17, 13, 29, true, 1),
            (17, 13, 29, false, 0),
            (64, 768, 2304, true, 0),
            (48, 64, 256, false, 0),
        ];
        for (i, &(n, c, oc, with_bias, skew)) in shapes.iter().enumerate() {
            let case = linear_case(n, c, oc, with_bias, skew);
            let mut plan = Plan::default();
            let l = Linear::take(&mut plan, n, c, oc, skew);
            let out = plan.take(Arena::Acts, n * oc);
            let mut p = self.pair(&plan, 200 + i as u64)?;
            let bias = p.linear_inputs(&l, with_bias, backward)?;
            let Linear { w, inp, dout, dinp, .. } = l;
            if backward {
                let dbias = bias.map(|b| b.grad());
                let before = p.gpu.bias_grad_epilogue_calls();
                p.cpu.matmul_backward(dinp, w.grad(), dbias, dout, inp, w, n, c, oc)?;
                p.gpu.matmul_backward(dinp, w.grad(), dbias, dout, inp, w, n, c, oc)?;
                let case = case.clone() + bias_grad_path(&p, before, with_bias);
                for (name, t) in l.gradients(bias) {
                    rows.push(p.compare(op, &case, name, t)?);
                }
            } else {
                p.poison(out)?;
                p.cpu.matmul_forward(out, inp, w, bias, n, c, oc)?;
                p.gpu.matmul_forward(out, inp, w, bias, n, c, oc)?;
                rows.push(p.compare(op, &case, "out", out)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// The MLP's linear layers with their GELU: forward (the GELU over the OC outputs) and
    /// backward (carried through the GELU of the C inputs). On the GPU the GELU runs in
    /// cuBLASLt's epilogue where the library allows (the GELU's matrix needs a width divisible by
    /// 8) and apart otherwise; the case says which.
    fn matmul_gelu(&self, backward: bool) -> Rows {
        let op = if backward { "matmul_backward_gelu" } else { "matmul_gelu_forward" };
        let mut rows = Vec::new();
        // (N, C, OC, bias, skew): the GELU'd width (OC forward, C backward) odd or divisible by
        // 8; GPT-2's fc (forward) and fcproj (backward) shapes; an unaligned bias and input.
        let shapes: [(usize, usize, usize, bool, usize); 6] = if backward {
            [
                (1, 1, 1, true, 0),
                (5, 7, 3, true, 0),
                (17, 32, 13, true, 1),
                (17, 24, 13, false, 0),
                (64, 3072, 768, true, 0),
                (48, 256, 64, false, 0),
            ]
        } else {
            [
                (1, 1, 1, true, 0),
                (5, 7, 3, true, 0),
                (17, 13, 32, true, 1),
                (17, 13, 24, false, 0),
                (64, 768, 3072, true, 0),
                (48, 64, 256, false, 0),
            ]
        };
        for (i, &(n, c, oc, with_bias, skew)) in shapes.iter().enumerate() {
            let mut plan = Plan::default();
            let l = Linear::take(&mut plan, n, c, oc, skew);
            let gelu_width = if backward { c } else { oc };
            let (pre, out) = (plan.take(Arena::Acts, n * gelu_width), plan.take(Arena::Acts, n * oc));
            let mut p = self.pair(&plan, 250 + i as u64)?;
            let bias = p.linear_inputs(&l, with_bias, backward)?;
            let Linear { w, inp, dout, dinp, .. } = l;
            let (before, before_bias_grad) = (p.gpu.gelu_epilogue_calls(), p.gpu.bias_grad_epilogue_calls());
            let compared = if backward {
                p.fill(pre, 1.5)?;
                let dbias = bias.map(|b| b.grad());
                p.cpu.matmul_backward_gelu(dinp, w.grad(), dbias, dout, (inp, pre), w, n, c, oc)?;
                p.gpu.matmul_backward_gelu(dinp, w.grad(), dbias, dout, (inp, pre), w, n, c, oc)?;
                l.gradients(bias)
            } else {
                p.poison(pre)?;
                p.poison(out)?;
                p.cpu.matmul_gelu_forward(pre, out, inp, w, bias, n, c, oc)?;
                p.gpu.matmul_gelu_forward(pre, out, inp, w, bias, n, c, oc)?;
                vec![("pre", pre), ("out", out)]
            };
            let fused = p.gpu.gelu_epilogue_calls().fused > before.fused;
            let mut case =
                format!("{}, {}", linear_case(n, c, oc, with_bias, skew), if fused { "epilogue" } else { "apart" });
            if backward {
                case += bias_grad_path(&p, before_bias_grad, with_bias);
            }
            for (name, t) in compared {
                rows.push(p.compare(op, &case, name, t)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// The attention forward or backward (family `op`) on the tensor-core `kernels` where they
    /// run; with Hopper's wgmma kernels (either forward) at the shapes the tensor-core kernels
    /// take, on a compute capability 9.0 device only (no rows elsewhere).
    fn attention(&self, op: &str, backward: bool, kernels: AttentionKernels) -> Rows {
        let wgmma = kernels != AttentionKernels::Mma;
        let mut rows = Vec::new();
        // Head sizes 64 and 128 take the tensor-core kernels in bf16 (the simple ones in f32):
        // T = 1, odd T and T past one or several tiles, several B·NH; the others the simple kernels.
        let shapes = [
            (1, 1, 1, 4, true),
            (2, 7, 3, 15, true),
            (2, 7, 3, 15, false),
            (1, 16, 1, 256, true),
            (1, 20, 2, 40, true),
            (1, 1, 1, 64, true),
            (2, 17, 3, 64, true),
            (1, 63, 2, 64, false),
            (2, 64, 4, 64, true),
            (3, 65, 2, 64, true),
            (2, 200, 3, 64, false),
            (1, 200, 2, 64, true),
            (4, 256, 12, 64, true),
            (1, 1, 1, 128, false),
            (2, 17, 1, 128, true),
            (1, 33, 2, 128, false),
            (1, 63, 3, 128, true),
            (2, 65, 2, 128, false),
            (1, 200, 2, 128, true),
            (2, 200, 1, 128, false),
            (2, 256, 6, 128, true),
        ];
        for (i, &(b, t, nh, hs, causal)) in shapes.iter().enumerate() {
            let c = nh * hs;
            let mut plan = Plan::default();
            let qkv = plan.take(Arena::Acts, b * t * 3 * c);
            let out = plan.take(Arena::Acts, b * t * c);
            let lse = plan.take(Arena::Stats, b * nh * t);
            let (dout, dqkv) = (plan.take(Arena::ActGrads, b * t * c), plan.take(Arena::ActGrads, b * t * 3 * c));
            plan.scratch.attention_rows = b * nh * t;
            let mut p = self.pair(&plan, 300 + i as u64)?;
            let flash = p.gpu.uses_flash_attention(hs);
            if wgmma {
                if !flash {
                    continue;
                }
                if p.gpu.device_info().compute_capability != (9, 0) {
                    return Ok(rows);
                }
                // On Hopper the sm_90a kernels must load: a failure is this family's.
                p.gpu.set_attention_kernels(kernels).map_err(|e| BackendError::Device(e.to_string()))?;
            }
            let case = format!(
                "B={b} T={t} NH={nh} HS={hs} {} {}",
                if causal { "causal" } else { "bidir" },
                if wgmma {
                    kernels.name()
                } else if flash {
                    "flash"
                } else {
                    "simple"
                }
            );
            let eps = p.eps(Arena::Acts);
            let k = |flash_k: f64| if flash { flash_k } else { p.k(Arena::Acts) };
            let (k_fwd, k_bwd) = (k(K_ATTENTION_BF16_FORWARD), k(K_ATTENTION_BF16_BACKWARD));
            p.fill(qkv, 1.0)?;
            if backward {
                p.cpu.attention_forward(out, lse, qkv, b, t, nh, hs, causal)?;
                let (o, l) = (p.cpu.download(out)?, p.cpu.download(lse)?);
                p.set(out, o)?;
                p.set_exact(lse, &l)?;
                p.fill(dout, 1.0)?;
                p.poison(dqkv)?;
                p.cpu.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal)?;
                p.gpu.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal)?;
                rows.push(p.compare_with(op, &case, "dqkv", dqkv, eps, k_bwd)?);
                if flash {
                    // The opt-in variant: dQ summed across key blocks with atomics.
                    p.gpu.set_atomic_attention_dq(Some(b * t * c))?;
                    p.poison(dqkv)?;
                    p.gpu.attention_backward(dqkv, dout, qkv, out, lse, b, t, nh, hs, causal)?;
                    rows.push(p.compare_with(op, &format!("{case}, atomic dQ"), "dqkv", dqkv, eps, k_bwd)?);
                }
            } else {
                p.poison(out)?;
                p.poison(lse)?;
                p.cpu.attention_forward(out, lse, qkv, b, t, nh, hs, causal)?;
                p.gpu.attention_forward(out, lse, qkv, b, t, nh, hs, causal)?;
                rows.push(p.compare_with(op, &case, "out", out, eps, k_fwd)?);
                rows.push(p.compare(op, &case, "lse", lse)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// The wgmma layout probe (`CudaBackend::wgmma_probe`) against f64 products of the same
    /// bf16 inputs, in bf16 storage on a compute capability 9.0 device only (no rows elsewhere).
    fn wgmma_layouts(&self) -> Rows {
        let op = "wgmma_layouts";
        let mut rows = Vec::new();
        if self.precision != Precision::Bf16 {
            return Ok(rows);
        }
        let forms = [
            (0, (64, 128, 64), "both operands K-major from shared memory, M=64 N=64 K=128"),
            (1, (64, 64, 128), "A from registers, B MN-major, M=64 N=128 K=64"),
            (2, (64, 128, 32), "both operands MN-major from shared memory, M=64 N=32 K=128"),
        ];
        for (mode, (m, k, n), case) in forms {
            let mut plan = Plan::default();
            let (a, b) = (plan.take(Arena::Acts, m * k), plan.take(Arena::Acts, k * n));
            let d = plan.take(Arena::Stats, m * n);
            let mut p = self.pair(&plan, 500 + mode as u64)?;
            if p.gpu.device_info().compute_capability != (9, 0) {
                return Ok(rows);
            }
            p.fill(a, 1.0)?;
            p.fill(b, 1.0)?;
            p.poison(d)?;
            // On Hopper the sm_90a kernels must load: a failure is this family's.
            p.gpu.wgmma_probe(d, a, b, mode).map_err(|e| BackendError::Device(e.to_string()))?;
            let (x, y) = (p.cpu.download(a)?, p.cpu.download(b)?);
            // a is (m × k), or (k × m) in mode 2; b is (k × n), or (n × k) in mode 0: the product
            // takes their transposes.
            let a_at = |row: usize, j: usize| if mode == 2 { x[j * m + row] } else { x[row * k + j] };
            let b_at = |col: usize, j: usize| if mode == 0 { y[col * k + j] } else { y[j * n + col] };
            let want: Vec<f32> = (0..m * n)
                .map(|i| (0..k).map(|j| a_at(i / n, j) as f64 * b_at(i % n, j) as f64).sum::<f64>() as f32)
                .collect();
            let got = p.gpu.download(d)?;
            rows.push(row(op, case, "d", &got, &want, F32_EPS, K_F32));
            rows.push(p.guard_row(op, case)?);
        }
        Ok(rows)
    }

    /// The TMA probe (`CudaBackend::tma_probe`): box copies of a (B, T, W) bf16 array, one inside
    /// it and one over its end in T, each bit for bit against the tile the wgmma descriptors of the
    /// TMA forward read (16-byte chunk c of box row r at chunk c ^ (r mod 8), zeros outside the
    /// array); in bf16 storage on a compute capability 9.0 device only (no rows elsewhere).
    fn tma_layout(&self) -> Rows {
        let op = "tma_layout";
        let mut rows = Vec::new();
        if self.precision != Precision::Bf16 {
            return Ok(rows);
        }
        let (b, t, w) = (2, 100, 192);
        let (box_rows, box_cols) = (FLASH90_TMA_BOX, FLASH90_TMA_BOX_COLS);
        // Elements per 16-byte chunk.
        let chunk = 8;
        for (i, at) in [(64, 0, 1), (128, 64, 0)].into_iter().enumerate() {
            let case = format!("B={b} T={t} W={w} box ({}, {}, {})", at.0, at.1, at.2);
            let mut plan = Plan::default();
            let (src, out) = (plan.take(Arena::Acts, b * t * w), plan.take(Arena::Acts, box_rows * box_cols));
            let mut p = self.pair(&plan, 600 + i as u64)?;
            if p.gpu.device_info().compute_capability != (9, 0) {
                return Ok(rows);
            }
            p.fill(src, 1.0)?;
            p.poison(out)?;
            // On Hopper the sm_90a kernels must load: a failure is this family's.
            p.gpu.tma_probe(out, src, (b, t, w), at).map_err(|e| BackendError::Device(e.to_string()))?;
            let x = p.cpu.download(src)?;
            // Element e of chunk c of box row r lies at chunk c ^ (r mod 8): the element stored at
            // (r, col) is that of chunk (col / chunk) ^ (r mod 8).
            let want: Vec<f32> = (0..box_rows * box_cols)
                .map(|k| {
                    let (r, col) = (k / box_cols, k % box_cols);
                    let (row, column) = (at.1 + r, at.0 + ((col / chunk) ^ (r % 8)) * chunk + col % chunk);
                    if row < t && column < w { x[(at.2 * t + row) * w + column] } else { 0.0 }
                })
                .collect();
            let got = p.gpu.download(out)?;
            // k = 0: bit for bit.
            rows.push(row(op, &case, "tile", &got, &want, BF16_EPS, 0.0));
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn attention_cached(&self) -> Rows {
        let op = "attention_cached";
        let mut rows = Vec::new();
        for (i, &(b, t_max, pos, nh, hs)) in
            [(1, 1, 0, 1, 4), (2, 9, 0, 3, 15), (2, 9, 8, 3, 15), (3, 40, 17, 4, 64)].iter().enumerate()
        {
            let case = format!("B={b} Tmax={t_max} pos={pos} NH={nh} HS={hs}");
            let c = nh * hs;
            let mut plan = Plan::default();
            let (qkv, out) = (plan.take(Arena::Acts, b * 3 * c), plan.take(Arena::Acts, b * c));
            let kv = plan.take(Arena::Acts, b * t_max * 2 * c);
            let mut p = self.pair(&plan, 400 + i as u64)?;
            p.fill(qkv, 1.0)?;
            p.fill(kv, 1.0)?;
            p.poison(out)?;
            p.cpu.attention_cached(out, qkv, kv, b, t_max, pos, nh, hs)?;
            p.gpu.attention_cached(out, qkv, kv, b, t_max, pos, nh, hs)?;
            rows.push(p.compare(op, &case, "out", out)?);
            rows.push(p.compare(op, &case, "kv cache", kv)?);
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn elementwise(&self, op: &str) -> Rows {
        let mut rows = Vec::new();
        for (i, &(n, skew)) in [(1, 0), (13, 0), (4096, 0), (4096, 1), (100_003, 0)].iter().enumerate() {
            let case = format!("n={n}{}", if skew > 0 { " unaligned" } else { "" });
            let mut plan = Plan::default();
            let (a, b) = (plan.take_skewed(Arena::Acts, n, skew), plan.take(Arena::Acts, n));
            let (out, d) = (plan.take(Arena::Acts, n), plan.take_skewed(Arena::ActGrads, n, skew));
            let mut p = self.pair(&plan, 500 + i as u64)?;
            p.fill(a, 2.0)?;
            p.fill(b, 1.0)?;
            match op {
                "gelu_forward" => {
                    p.poison(out)?;
                    p.cpu.gelu_forward(out, a)?;
                    p.gpu.gelu_forward(out, a)?;
                    rows.push(p.compare(op, &case, "out", out)?);
                }
                "gelu_backward" => {
                    p.fill(d, 1.0)?;
                    p.cpu.gelu_backward(d, a)?;
                    p.gpu.gelu_backward(d, a)?;
                    rows.push(p.compare(op, &case, "d", d)?);
                }
                _ => {
                    p.poison(out)?;
                    p.cpu.residual_forward(out, a, b)?;
                    p.gpu.residual_forward(out, a, b)?;
                    rows.push(p.compare(op, &case, "out", out)?);
                }
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn cross_entropy(&self) -> Rows {
        let op = "cross_entropy";
        let mut rows = Vec::new();
        let shapes = [
            (1, 1, 8, true),
            (5, 10, 128, false),
            (7, 100, 128, true),
            (16, 1000, 1024, true),
            (3, 50257, 50304, true),
        ];
        for (i, &(n, v, vp, with_grad)) in shapes.iter().enumerate() {
            let case = format!("N={n} V={v} Vp={vp}{}", if with_grad { " +dlogits" } else { "" });
            let mut plan = Plan::default();
            let logits = plan.take(Arena::Acts, n * vp);
            let (losses, targets) = (plan.take(Arena::Stats, n), plan.take(Arena::Inputs, n));
            let mut p = self.pair(&plan, 600 + i as u64)?;
            p.fill(logits, 2.0)?;
            // Every third row ignored (never all of them).
            let ids: Vec<i32> = (0..n).map(|r| if r % 3 == 2 { -1 } else { p.rng.below(v as u64) as i32 }).collect();
            p.set_ints(targets, &ids)?;
            p.poison(losses)?;
            let dloss = with_grad.then_some(1.0 / n as f32);
            p.cpu.cross_entropy(losses, logits, targets, n, v, vp, dloss)?;
            p.gpu.cross_entropy(losses, logits, targets, n, v, vp, dloss)?;
            rows.push(p.compare(op, &case, "losses", losses)?);
            if with_grad {
                rows.push(p.compare(op, &case, "dlogits", logits)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn adamw(&self) -> Rows {
        let op = "adamw";
        let mut rows = Vec::new();
        for (i, &n) in [64usize, 4096 + 64, 300_032].iter().enumerate() {
            let case = format!("n={n}");
            let mut plan = Plan::default();
            let all = plan.take(Arena::Params, n);
            let mut p = self.pair(&plan, 700 + i as u64)?;
            optimizer_state(&mut p, all, 0.01)?;
            let step = AdamWStep { grad_scale: 0.7, seed: self.seed ^ 0xADA, ..CHECK_ADAMW };
            // Offsets into the arena, where `all` starts after a guard.
            let decay_end = all.offset + n / 2 + 5;
            // The last case updates one shard only, as a data-parallel rank does: the elements
            // outside it must not move.
            let range =
                if i == 2 { all.offset + TENSOR_ALIGN..all.end() - 2 * TENSOR_ALIGN } else { all.offset..all.end() };
            p.cpu.adamw(&step, decay_end, range.clone())?;
            p.gpu.adamw(&step, decay_end, range)?;
            rows.push(p.compare_with(op, &case, "params (master)", all, F32_EPS, K_F32)?);
            rows.push(p.compare(op, &case, "m", all.in_arena(Arena::OptM))?);
            rows.push(p.compare(op, &case, "v", all.in_arena(Arena::OptV))?);
            if self.precision == Precision::Bf16 {
                rows.extend(stochastic_rounding_rows(&mut p, all, &case)?);
            }
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    fn grad_norm(&self) -> Rows {
        let op = "grad_norm";
        let mut rows = Vec::new();
        for (i, &n) in [64usize, 1000 * 64, 3_000_000].iter().enumerate() {
            let case = format!("n={n}");
            let mut plan = Plan::default();
            let all = plan.take(Arena::Grads, n);
            let mut p = self.pair(&plan, 800 + i as u64)?;
            p.fill(all, 0.1)?;
            let range =
                if i == 1 { all.offset + TENSOR_ALIGN..all.end() - TENSOR_ALIGN } else { all.offset..all.end() };
            let (g, c) = (p.gpu.grad_norm_squared(range.clone())?, p.cpu.grad_norm_squared(range)?);
            rows.push(row(op, &case, "Σg²", &[g as f32], &[c as f32], F32_EPS, K_F32));
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// The optimizer of a whole recorded step (`optimizer_step`: the gradient norm, the clipping
    /// scale, the guard against a non-finite loss or norm, AdamW with the values of `set_step`),
    /// its outcome and the parameters and moments it leaves compared with the CPU's.
    fn optimizer_step(&self) -> Rows {
        let op = "optimizer_step";
        let mut rows = Vec::new();
        for (i, &(n, clip, nan_loss)) in
            [(4096 + 64, 1.0, false), (300_032, 0.0, false), (4096 + 64, 1.0, true)].iter().enumerate()
        {
            let case = format!("n={n} clip={clip}{}", if nan_loss { " NaN loss" } else { "" });
            let mut plan = Plan::default();
            let all = plan.take(Arena::Params, n);
            let losses = plan.take(Arena::Stats, 777);
            let mut p = self.pair(&plan, 900 + i as u64)?;
            optimizer_state(&mut p, all, 0.05)?;
            let mut l: Vec<f32> = p.randn(losses.len, 1.0).iter().map(|x| 3.0 * x.abs()).collect();
            if nan_loss {
                l[100] = f32::NAN;
            }
            p.set_exact(losses, &l)?;
            let step = AdamWStep { seed: self.seed ^ 0x5EED, ..CHECK_ADAMW };
            let decay_end = all.offset + n / 2 + 5;
            p.cpu.set_step(&step, clip)?;
            p.gpu.set_step(&step, clip)?;
            p.cpu.optimizer_step(losses, losses.len, decay_end, all.offset..all.end())?;
            p.gpu.optimizer_step(losses, losses.len, decay_end, all.offset..all.end())?;
            let (c, g) = (p.cpu.step_outcome()?, p.gpu.step_outcome()?);
            if !nan_loss {
                rows.push(row(op, &case, "Σ losses", &[g.loss_sum as f32], &[c.loss_sum as f32], F32_EPS, K_F32));
            }
            rows.push(row(op, &case, "grad norm", &[g.grad_norm], &[c.grad_norm], F32_EPS, K_F32));
            rows.push(bitwise_row(
                op,
                &case,
                "applied",
                &[f32::from(u8::from(g.applied))],
                &[f32::from(u8::from(c.applied))],
            ));
            rows.push(p.compare_with(op, &case, "params (master)", all, F32_EPS, K_F32)?);
            rows.push(p.compare(op, &case, "m", all.in_arena(Arena::OptM))?);
            rows.push(p.compare(op, &case, "v", all.in_arena(Arena::OptV))?);
            rows.push(p.guard_row(op, &case)?);
        }
        Ok(rows)
    }

    /// One forward and backward of a small model through [`Gpt`], the loss and every parameter
    /// gradient compared.
    fn model_step(&self) -> Rows {
        let op = "model_step";
        let cfg = ModelConfig { n_layer: 2, n_head: 4, n_embd: 64, n_ctx: 32, vocab_size: 250 };
        let (b, t, chunk) = (3, 24, Some(32));
        let case = format!("L=2 NH=4 C=64 V=250 B={b} T={t} chunk=32");
        let acts = ActLayout::new(&cfg, b, t, chunk);
        let mut cpu = Gpt::new(cfg.clone(), acts.clone(), |p, a| Ok(CpuBackend::<f32>::new(p.total, a)))?;
        let (precision, device) = (self.precision, self.device);
        let mut gpu = Gpt::new(cfg.clone(), acts, |p, a| CudaBackend::new(p, a, precision, device))?;
        let mut params = init_params(&cfg, &cpu.params, self.seed);
        // Non-trivial biases and gains, so their gradients are exercised.
        let mut rng = Rng::derive(self.seed, 0xC4EC);
        for spec in cpu.params.specs.iter().filter(|s| !s.decay) {
            for x in &mut params[spec.tensor.offset..spec.tensor.end()] {
                *x += (rng.normal() * 0.1) as f32;
            }
        }
        if precision == Precision::Bf16 {
            params.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
        cpu.load_params(&params)?;
        gpu.load_params(&params)?;
        let n = b * t;
        let tokens: Vec<i32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
        let targets: Vec<i32> =
            (0..n).map(|i| if i % 7 == 3 { -1 } else { rng.below(cfg.vocab_size as u64) as i32 }).collect();
        let mut rows = Vec::new();
        let cpu_loss = step(&mut cpu, &tokens, &targets)?;
        let gpu_loss = step(&mut gpu, &tokens, &targets)?;
        let (eps, k) = match precision {
            Precision::Bf16 => (BF16_EPS, K_MODEL_BF16),
            Precision::F32 => (F32_EPS, K_MODEL_F32),
        };
        rows.push(row(op, &case, "loss", &[gpu_loss], &[cpu_loss], eps, K_BF16.max(k / 8.0)));
        let cpu_grads = cpu.backend.download(Tensor { arena: Arena::Grads, offset: 0, len: cpu.params.total })?;
        let gpu_grads = gpu.backend.download(Tensor { arena: Arena::Grads, offset: 0, len: gpu.params.total })?;
        for spec in &cpu.params.specs {
            let r = spec.tensor.offset..spec.tensor.end();
            rows.push(row(op, &case, &format!("d {}", spec.name), &gpu_grads[r.clone()], &cpu_grads[r], eps, k));
        }

        // The same step replayed from a CUDA graph (`gptk train --cuda-graphs`) on a second
        // batch gives the bits of the ops launched one by one: run on batch 1, recorded on batch
        // 1, replayed on batch 2 (as many counted targets, so the same loss scale).
        let tokens2: Vec<i32> = (0..n).map(|_| rng.below(cfg.vocab_size as u64) as i32).collect();
        let targets2: Vec<i32> =
            targets.iter().map(|&x| if x < 0 { -1 } else { (x + 1) % cfg.vocab_size as i32 }).collect();
        let want_loss = step(&mut gpu, &tokens2, &targets2)?;
        let want = gpu.backend.download(Tensor { arena: Arena::Grads, offset: 0, len: gpu.params.total })?;
        let mut graphed = Gpt::new(cfg.clone(), gpu.acts.clone(), |p, a| CudaBackend::new(p, a, precision, device))?;
        graphed.backend.set_cuda_graphs(true);
        graphed.load_params(&params)?;
        step(&mut graphed, &tokens, &targets)?;
        step(&mut graphed, &tokens, &targets)?;
        let got_loss = step(&mut graphed, &tokens2, &targets2)?;
        let got = graphed.backend.download(Tensor { arena: Arena::Grads, offset: 0, len: graphed.params.total })?;
        let launches = graphed.backend.graph_launches() as f32;
        let case = format!("{case}, CUDA graph");
        rows.push(bitwise_row(op, &case, "graph launches = 2", &[launches], &[2.0]));
        rows.push(bitwise_row(op, &case, "loss = ops one by one (bitwise)", &[got_loss], &[want_loss]));
        rows.push(bitwise_row(op, &case, "grads = ops one by one (bitwise)", &got, &want));
        Ok(rows)
    }
}

/// The bf16 copy AdamW writes must be one of the two bf16 neighbours of the master value
/// (within one bf16 step of it), and the rounding must be unbiased on average: truncation or
/// round-to-nearest would show a bias of about ±½ step or a zero spread.
fn stochastic_rounding_rows(p: &mut Pair, all: Tensor, case: &str) -> Result<Vec<Comparison>, BackendError> {
    let master = p.gpu.download(all)?;
    let stored = p.gpu.download_storage(all)?;
    let (mut worst, mut bias_sum, mut counted, mut bad) = (0.0f64, 0.0f64, 0usize, 0usize);
    for (&m, &s) in master.iter().zip(&stored) {
        if !m.is_finite() || !s.is_finite() {
            bad += 1;
            continue;
        }
        if m == 0.0 {
            continue;
        }
        // The spacing of bf16 values around m: 2^(exponent − 7).
        let step = 2f64.powi(m.abs().log2().floor() as i32 - 7);
        let d = (s as f64 - m as f64) / step;
        worst = worst.max(d.abs());
        bias_sum += d * (m as f64).signum();
        counted += 1;
    }
    let bias = bias_sum / counted.max(1) as f64;
    let within = Comparison {
        op: "adamw".into(),
        case: case.into(),
        tensor: "bf16 copy within one step of master".into(),
        elems: master.len(),
        max_abs: worst,
        rel_l2: 0.0,
        tol_share: worst,
        non_finite: bad,
        passed: bad == 0 && worst <= 1.0,
    };
    // Allowed mean signed error in steps: far above the sampling noise (about 0.4/√n steps) of
    // the thousands of elements it is judged on, far below the ½ step of a biased rounding.
    const MAX_BIAS_STEPS: f64 = 0.1;
    const MIN_BIAS_SAMPLES: usize = 4096;
    if counted < MIN_BIAS_SAMPLES {
        return Ok(vec![within]);
    }
    let unbiased = Comparison {
        tensor: "stochastic rounding bias (steps)".into(),
        max_abs: bias.abs(),
        tol_share: bias.abs() / MAX_BIAS_STEPS,
        passed: bad == 0 && counted > 0 && bias.abs() <= MAX_BIAS_STEPS,
        ..within.clone()
    };
    Ok(vec![within, unbiased])
}

/// One step of a model on a batch: the loss, gradients zeroed first.
fn step<K: Backend>(m: &mut Gpt<K>, tokens: &[i32], targets: &[i32]) -> Result<f32, ModelError> {
    m.set_batch(tokens, targets)?;
    m.zero_grads()?;
    m.forward_backward(true, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitwise_rows_pass_only_on_identical_bits() {
        let a = [1.0f32, -0.0, f32::NAN, 3.5];
        assert!(bitwise_row("op", "case", "t", &a, &a).passed);
        let mut b = a;
        b[3] = f32::from_bits(a[3].to_bits() + 1);
        let r = bitwise_row("op", "case", "t", &b, &a);
        assert!(!r.passed && r.max_abs > 0.0 && r.tol_share.is_infinite());
        // +0 and −0 compare equal as numbers but are different bits.
        let mut z = a;
        z[1] = 0.0;
        assert!(!bitwise_row("op", "case", "t", &z, &a).passed);
        assert!(!bitwise_row("op", "case", "t", &a[..3], &a).passed);
    }

    #[test]
    fn every_tensor_of_a_plan_sits_aligned_between_guards_that_cover_the_rest() {
        let mut plan = Plan::default();
        let taken = [
            plan.take(Arena::Params, 100),
            plan.take_skewed(Arena::Params, 7, 1),
            plan.take(Arena::Acts, 1),
            plan.take_skewed(Arena::Acts, 4096, 3),
            plan.take(Arena::Stats, 64),
            plan.take(Arena::Grads, 5),
        ];
        let skews = [0, 1, 0, 3, 0, 0];
        for (t, skew) in taken.iter().zip(skews) {
            assert_eq!((t.offset - skew) % TENSOR_ALIGN, 0, "{t:?} off alignment");
        }
        for arena in FLOAT_ARENAS {
            let group = |a: Arena| Plan::group(a) == Plan::group(arena);
            let mine: Vec<Tensor> = taken.iter().copied().filter(|t| group(t.arena)).collect();
            let guards = plan.guards(arena);
            // Guards and tensors tile the arena exactly, and each tensor has a whole guard on
            // either side.
            let mut spans: Vec<(usize, usize)> = guards.iter().chain(&mine).map(|t| (t.offset, t.end())).collect();
            spans.sort_unstable();
            assert_eq!(spans.first().map(|s| s.0), Some(0), "{arena:?}");
            assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "{arena:?}: {spans:?}");
            assert_eq!(spans.last().map(|s| s.1), Some(plan.size(arena)), "{arena:?}");
            for t in &mine {
                let before = guards.iter().find(|g| g.end() == t.offset).expect("a guard before");
                let after = guards.iter().find(|g| g.offset == t.end()).expect("a guard after");
                assert!(before.len >= GUARD && after.len >= GUARD, "{t:?}: {before:?} {after:?}");
            }
        }
        // An arena with no tensors is one guard.
        assert_eq!(plan.guards(Arena::ActGrads), [Tensor { arena: Arena::ActGrads, offset: 0, len: GUARD }]);
    }

    #[test]
    fn a_family_name_selects_that_family_and_a_part_of_one_every_match() {
        assert_eq!(select(Some("layernorm_forward")).unwrap(), ["layernorm_forward"]);
        assert_eq!(select(Some("matmul_backward")).unwrap(), ["matmul_backward"]);
        assert_eq!(select(Some("layernorm_f")).unwrap(), ["layernorm_forward", "residual_layernorm_forward"]);
        assert_eq!(select(None).unwrap(), OPS);
        // The wgmma families, the TMA forward's included, by one name; the TMA forward and its
        // probe by another.
        let wgmma = ["wgmma_layouts", "wgmma_forward", "wgmma_backward", "wgmma_tma_forward"];
        assert_eq!(select(Some("wgmma")).unwrap(), wgmma);
        assert_eq!(select(Some("tma")).unwrap(), ["tma_layout", "wgmma_tma_forward"]);
        assert!(select(Some("nothing")).is_err());
    }
}
