//! The CUDA backend: the op set of [`Backend`] on an NVIDIA GPU, with the handwritten kernels of
//! `kernels/*.cu` (compiled into the binary by build.rs) and cuBLASLt for the matmuls.
//!
//! Shape of the thing:
//! - one context, one stream, one module (the embedded fatbin, loaded once), every entry point
//!   looked up once at start;
//! - one device buffer per arena, carved by the same layout tables as the CPU backend, sized
//!   once from the layouts ([`MemoryPlan`]) after checking the device has room; scratch for the
//!   deterministic reductions and the cuBLASLt workspace beside them; nothing is allocated in
//!   a step;
//! - storage in bf16 (training) or f32 (tight checking): parameters, gradients, activations and
//!   their gradients in the storage type; AdamW moments, statistics and, in bf16, the master
//!   weights in f32. `download(Params)` returns the master weights and `upload(Params)` sets
//!   both copies;
//! - every launch checks its spans against the arenas first, converts sizes with checked
//!   casts ([`cast`]), passes the kernel's parameter list as one typed struct ([`args`]), and
//!   returns driver errors as values. Kernel faults surface at the next synchronising call (a
//!   download, `synchronize`), as with any asynchronous GPU work.
//!
//! Tensors are passed to kernels as raw device addresses (arena base + offset): the arenas live
//! as long as the backend, and the only stream orders every access, so the per-slice event
//! tracking of cudarc is turned off.

pub mod args;
pub mod cast;
pub mod device;
pub mod kernels;
pub mod nccl;
pub mod plan;

mod blas;
mod timing;

pub use device::{DeviceInfo, NVCC_INSTALL_HINT, device_count, is_compiled, peak_bf16_flops, probe, probe_device};
pub use nccl::{NCCL_ID_BYTES, NcclComm, check_nccl, new_id as new_nccl_id};
pub use plan::{ArenaSizes, MemoryPlan, ScratchSizes};

use super::{AdamWStep, AttentionKernels, Backend, BackendError, Precision, Replay, Result, StepOutcome};
use crate::model::config::LAYERNORM_EPS;
use crate::model::layout::{ActLayout, Arena, ParamLayout, Tensor};
use args::*;
use blas::{Blas, Epilogue, GemmCall};
use cast::{blocks_for, to_i32, to_i64, to_u32};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
};
use half::bf16;
use kernels::*;
use plan::{
    BLAS_WORKSPACE_BYTES, BYTES_PER_BF16, BYTES_PER_F32, BYTES_PER_F64, MAX_PARTIALS, NORM_MAX_BLOCKS, storage_bytes,
};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

/// Warps per block of the warp-per-row kernels (layernorm and the simple attention).
const ROWS_PER_BLOCK: usize = (LAYERNORM_BLOCK / 32) as usize;
const _: () = assert!(ATTENTION_BLOCK == LAYERNORM_BLOCK, "the warp-per-row kernels share ROWS_PER_BLOCK");
/// Bytes one vector load moves.
const BYTES_PER_VECTOR: usize = 16;

fn driver_error(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

/// One device allocation and what it holds.
struct DeviceBuffer {
    mem: CudaSlice<u8>,
    ptr: u64,
    elems: usize,
    elem_bytes: usize,
    what: &'static str,
}

impl DeviceBuffer {
    fn new(stream: &Arc<CudaStream>, elems: usize, elem_bytes: usize, what: &'static str) -> Result<Self> {
        // Never zero bytes: some drivers reject empty allocations.
        let bytes = (elems * elem_bytes).max(BYTES_PER_VECTOR);
        let mem = stream.alloc_zeros::<u8>(bytes).map_err(|e| driver_error(&format!("allocating {what}"), e))?;
        let ptr = {
            let (ptr, _sync) = mem.device_ptr(stream);
            ptr
        };
        Ok(DeviceBuffer { mem, ptr, elems, elem_bytes, what })
    }

    /// Device address of element `offset`, after checking `[offset, offset + len)` is inside.
    fn at(&self, offset: usize, len: usize) -> Result<u64> {
        if offset.checked_add(len).is_none_or(|end| end > self.elems) {
            return Err(BackendError::Device(format!(
                "span [{offset}, +{len}) is outside {} ({} elements)",
                self.what, self.elems
            )));
        }
        Ok(self.ptr + (offset * self.elem_bytes) as u64)
    }

    fn byte_range(&self, offset: usize, len: usize) -> Result<std::ops::Range<usize>> {
        self.at(offset, len)?;
        Ok(offset * self.elem_bytes..(offset + len) * self.elem_bytes)
    }
}

/// The values of one step that a recorded step reads from device memory: `StepScalars` of
/// kernels/adamw.cu, field for field (the host writes the first five, `step_scalars` the rest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct StepScalars {
    lr: f32,
    bc1: f32,
    bc2: f32,
    clip: f32,
    seed: u64,
    loss_sum: f64,
    grad_norm: f32,
    grad_scale: f32,
    apply: i32,
    pad: i32,
}

/// The kernel entry points of one storage precision, by family name.
struct Functions {
    by_name: HashMap<&'static str, CudaFunction>,
    /// Head sizes whose tensor-core attention kernels are loaded and got the shared memory they
    /// need (bf16 storage only).
    flash_head_sizes: Vec<usize>,
    /// Head sizes whose wgmma kernels (the sm_90a module) are loaded and got their shared memory;
    /// or why there are none.
    wgmma_head_sizes: std::result::Result<Vec<usize>, String>,
}

impl Functions {
    fn load(module: &Arc<CudaModule>, precision: Precision, max_shared_bytes: usize) -> Result<Self> {
        let suffix = match precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        let mut by_name = HashMap::new();
        let bf16_only = if precision == Precision::Bf16 { BF16_KERNELS } else { &[] };
        for (name, file) in KERNELS.iter().chain(bf16_only) {
            let full = format!("{name}_{suffix}");
            let f = module.load_function(&full).map_err(|e| {
                driver_error(&format!("kernel {full} (kernels/{file}) is missing from the embedded module"), e)
            })?;
            by_name.insert(*name, f);
        }
        let mut flash_head_sizes = Vec::new();
        for hs in FLASH_HEAD_SIZES.into_iter().filter(|_| precision == Precision::Bf16) {
            let kernels = mma_kernels(hs).expect("tiles exist for every built head size");
            // A device that cannot give a block this much shared memory keeps the simple kernels.
            if kernels.passes().iter().any(|p| p.smem > max_shared_bytes) {
                continue;
            }
            for FlashPass { name, smem: bytes, .. } in kernels.passes() {
                by_name[name]
                    .set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        to_i32(bytes, "shared memory")?,
                    )
                    .map_err(|e| {
                        driver_error(&format!("raising the shared memory of {name}_bf16 to {bytes} bytes"), e)
                    })?;
            }
            flash_head_sizes.push(hs);
        }
        Ok(Functions { by_name, flash_head_sizes, wgmma_head_sizes: Err("not loaded".into()) })
    }

    /// Loads the wgmma kernels (the TMA forward too) from the sm_90a module, raising each one's
    /// shared memory, and the probes; the head sizes they were loaded for.
    fn load_sm90a(&mut self, module: &Arc<CudaModule>, max_shared_bytes: usize) -> Result<Vec<usize>> {
        let mut sizes = Vec::new();
        for hs in FLASH_HEAD_SIZES {
            let kernels = wgmma_kernels(hs).expect("the wgmma kernels exist for every flash head size");
            let tma = tma_forward(hs).expect("the TMA forward exists for every flash head size");
            let passes: Vec<FlashPass> = kernels.passes().into_iter().chain([tma]).collect();
            if passes.iter().any(|p| p.smem > max_shared_bytes) {
                continue;
            }
            for FlashPass { name, smem: bytes, .. } in passes {
                let full = format!("{name}_bf16");
                let f = module.load_function(&full).map_err(|e| {
                    driver_error(
                        &format!("kernel {full} (kernels/flash_attention_sm90a.cu) is missing from the sm_90a module"),
                        e,
                    )
                })?;
                f.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    to_i32(bytes, "shared memory")?,
                )
                .map_err(|e| driver_error(&format!("raising the shared memory of {full} to {bytes} bytes"), e))?;
                self.by_name.insert(name, f);
            }
            sizes.push(hs);
        }
        for probe in ["wgmma_probe", "tma_probe"] {
            let full = format!("{probe}_bf16");
            let f = module
                .load_function(&full)
                .map_err(|e| driver_error(&format!("kernel {full} is missing from the sm_90a module"), e))?;
            self.by_name.insert(probe, f);
        }
        Ok(sizes)
    }

    /// The loaded entry point `name`: every name of KERNELS after `load`, the wgmma ones after
    /// `load_sm90a`.
    fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.by_name.get(name).ok_or_else(|| BackendError::Device(format!("kernel {name} is not loaded")))
    }
}

/// Scratch of the multi-stage kernels.
struct Scratch {
    /// f32 partial column sums (MAX_PARTIALS × 2 × max columns).
    partials: DeviceBuffer,
    /// f64 per-block sums of squares.
    norm: DeviceBuffer,
    /// f32 attention delta (B·NH·T).
    delta: DeviceBuffer,
    /// i32 token buckets of the encoder backward.
    buckets: DeviceBuffer,
    sizes: ScratchSizes,
}

/// The CUDA backend: device, kernels, cuBLASLt and every arena.
pub struct CudaBackend {
    precision: Precision,
    info: DeviceInfo,
    plan: MemoryPlan,
    params: DeviceBuffer,
    grads: DeviceBuffer,
    /// f32 master weights; in f32 storage the parameters are their own master.
    master: Option<DeviceBuffer>,
    opt_m: DeviceBuffer,
    opt_v: DeviceBuffer,
    acts: DeviceBuffer,
    act_grads: DeviceBuffer,
    stats: DeviceBuffer,
    inputs: DeviceBuffer,
    scratch: Scratch,
    /// A host copy of the Inputs arena (written only by `upload_ints`): the encoder backward
    /// buckets token positions from it without a device round trip.
    inputs_host: Vec<i32>,
    /// Reused host buffer for the token buckets.
    buckets_host: Vec<i32>,
    /// The step's values in device memory (`StepScalars`).
    step: DeviceBuffer,
    /// The AdamW constants of the last `set_step` (β1, β2, ε, weight decay): kernel arguments of
    /// `optimizer_step`, the same every step of a run.
    step_betas: Option<(f32, f32, f32, f32)>,
    /// The token tensor the scratch's buckets were made from, and its largest id.
    bucketed: Option<(Tensor, i32)>,
    /// The batch's token tensor, as `upload_tokens` last filled it: bucketed when first needed,
    /// by the embedding's backward (while the device runs the forward) or, with CUDA graphs,
    /// before a recording is made or launched (which cannot read the host).
    batch_tokens: Option<Tensor>,
    blas: Blas,
    functions: Functions,
    _module: Arc<CudaModule>,
    /// The sm_90a kernels, on a compute capability 9.0 device.
    _module_sm90a: Option<Arc<CudaModule>>,
    /// The kernels the tensor-core attention runs on (the wgmma ones only where they are loaded).
    attention_kernels: AttentionKernels,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    /// The data-parallel communicator (none: a world of one).
    nccl: Option<NcclComm>,
    /// Whether the MLP's GELU runs in the epilogue of its GEMMs (where cuBLASLt allows).
    gelu_epilogue: bool,
    gelu_calls: EpilogueCalls,
    /// Whether a linear layer's bias gradient is summed in its weight-gradient GEMM's epilogue.
    bias_grad_epilogue: bool,
    bias_grad_calls: EpilogueCalls,
    /// Recordings of op runs as CUDA graphs ([`Backend::replay`]), when turned on.
    graphs: Option<Graphs>,
    /// The f32 dQ accumulator of the opt-in atomic attention backward, when turned on.
    dq_acc: Option<DeviceBuffer>,
}

impl Drop for CudaBackend {
    /// Waits for the stream, then lets go of what refers to the rest first: the recorded graphs
    /// (they name the modules' kernels and the arenas), the communicator (its work is queued on
    /// the stream) and the dQ accumulator; the fields after them then drop in order, the buffers
    /// before the modules, the stream and the context. Waiting first also returns freed memory to
    /// the device before a next backend asks how much is free.
    fn drop(&mut self) {
        let _ = self.stream.synchronize();
        self.graphs = None;
        self.nccl = None;
        self.dq_acc = None;
    }
}

/// Recordings kept at most: one per distinct key (a training run has one, or two with a last
/// short batch); keys beyond these run unrecorded.
const MAX_GRAPHS: usize = 4;
/// Keys remembered as seen at most (a run whose key changes every step, e.g. a masked-LM loss
/// scale, never repeats one and is never recorded).
const MAX_SEEN_KEYS: usize = 64;

/// A recorded CUDA graph.
struct Graph(CudaGraph);

// SAFETY: CUDA graph objects are not internally synchronised and must not be used from two
// threads at once; they may move between threads. A `Graph` is only used through the backend's
// `&mut self`, one call at a time, like the cuBLASLt handle.
unsafe impl Send for Graph {}

/// CUDA graphs of recorded op runs, by key.
#[derive(Default)]
struct Graphs {
    /// Keys run once without recording. A key is recorded on its second run, so that the host
    /// work of a first run (cuBLASLt's algorithm choices, loading kernels) is done by then.
    seen: HashSet<u64>,
    recorded: HashMap<u64, Graph>,
    /// The key being recorded.
    recording: Option<u64>,
    /// Launches of recordings so far.
    launches: usize,
}

/// The device addresses of a linear layer's backward.
struct LinearBackward {
    dinp: u64,
    dw: u64,
    dbias: Option<u64>,
    dout: u64,
    inp: u64,
    w: u64,
}

/// Whether new backends run the GELU and the bias gradients in cuBLASLt's epilogues:
/// `GPTK_EPILOGUES=0` turns both off (to tell, on a new GPU or library, whether a difference
/// comes from them).
fn epilogues_enabled() -> bool {
    std::env::var("GPTK_EPILOGUES").map_or(true, |v| v != "0")
}

/// How work that can run in a GEMM's epilogue ran so far: in cuBLASLt's epilogue, or apart (the
/// epilogue turned off, or no algorithm for it at that shape, alignment and type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpilogueCalls {
    pub fused: usize,
    pub apart: usize,
}

impl CudaBackend {
    /// The layernorm forward of `inp` (mean and rstd into the stats), or with `residual` =
    /// (res, y) the fused residual add before it: res = inp + y, then the layernorm of res.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_launch(
        &mut self,
        out: Tensor,
        (mean, rstd): (Tensor, Tensor),
        inp: Tensor,
        residual: Option<(Tensor, Tensor)>,
        (w, bias): (Tensor, Tensor),
        n: usize,
        c: usize,
    ) -> Result<()> {
        Self::expect_arena(mean, &[Arena::Stats], "layernorm mean")?;
        Self::expect_arena(rstd, &[Arena::Stats], "layernorm rstd")?;
        let out_p = self.ptr_n(out, n * c, "layernorm output")?;
        let inp_p = self.ptr_n(inp, n * c, "layernorm input")?;
        let (mean_p, rstd_p) = (self.ptr_n(mean, n, "mean")?, self.ptr_n(rstd, n, "rstd")?);
        let (w_p, b_p) = (self.ptr_n(w, c, "layernorm weight")?, self.ptr_n(bias, c, "layernorm bias")?);
        let (n_i, c_i, eps) = (to_i32(n, "N")?, to_i32(c, "C")?, LAYERNORM_EPS);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n, ROWS_PER_BLOCK as u32, "layernorm rows")?, 1, 1),
            block_dim: (LAYERNORM_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        match residual {
            None => {
                let vec = self.vec_flag(&[out_p, inp_p, w_p, b_p], &[c]);
                let args = LayernormForward {
                    out: out_p,
                    mean: mean_p,
                    rstd: rstd_p,
                    inp: inp_p,
                    w: w_p,
                    b: b_p,
                    n: n_i,
                    c: c_i,
                    eps,
                    vec,
                };
                // SAFETY: out and inp hold N·C, mean and rstd N (f32 stats), w and b C elements
                // (all checked).
                unsafe { self.launch("layernorm_forward", cfg, &args) }?;
            }
            Some((res, y)) => {
                let res_p = self.ptr_n(res, n * c, "residual output")?;
                let y_p = self.ptr_n(y, n * c, "residual input")?;
                let vec = self.vec_flag(&[res_p, out_p, inp_p, y_p, w_p, b_p], &[c]);
                let args = ResidualLayernormForward {
                    res: res_p,
                    out: out_p,
                    mean: mean_p,
                    rstd: rstd_p,
                    x: inp_p,
                    y: y_p,
                    w: w_p,
                    b: b_p,
                    n: n_i,
                    c: c_i,
                    eps,
                    vec,
                };
                // SAFETY: res, out, x (inp) and y hold N·C, mean and rstd N (f32 stats), w and b
                // C elements (all checked).
                unsafe { self.launch("residual_layernorm_forward", cfg, &args) }?;
            }
        }
        Ok(())
    }

    /// The backend for a model: arenas from the parameter and activation layouts, on GPU
    /// `device_ordinal`. Fails with [`BackendError::OutOfMemory`] (and a batch that would fit)
    /// when the plan exceeds the free memory, or [`BackendError::Unavailable`] without a usable
    /// GPU, driver, cuBLASLt or compiled kernels.
    pub fn new(params: &ParamLayout, acts: &ActLayout, precision: Precision, device_ordinal: usize) -> Result<Self> {
        let b = acts.b;
        let t = acts.t;
        Self::with_sizes(
            ArenaSizes::for_model(params, acts),
            ScratchSizes::for_model(params, acts),
            precision,
            device_ordinal,
            Some((b, t)),
        )
    }

    /// The backend for one rank of a data-parallel job of `world` GPUs: the parameter arena is
    /// padded so it splits into equal shards (`ParamLayout::padded_total`).
    pub fn for_world(
        params: &ParamLayout,
        acts: &ActLayout,
        precision: Precision,
        device_ordinal: usize,
        world: usize,
    ) -> Result<Self> {
        let mut sizes = ArenaSizes::for_model(params, acts);
        sizes.params = params.padded_total(world);
        Self::with_sizes(
            sizes,
            ScratchSizes::for_model(params, acts),
            precision,
            device_ordinal,
            Some((acts.b, acts.t)),
        )
    }

    /// The backend with explicit arena and scratch sizes (what `gptk check` builds for single
    /// ops). `batch` (B, T), when known, lets an out-of-memory error suggest a batch that fits.
    pub fn with_sizes(
        sizes: ArenaSizes,
        scratch: ScratchSizes,
        precision: Precision,
        device_ordinal: usize,
        batch: Option<(usize, usize)>,
    ) -> Result<Self> {
        let ctx = device::open(device_ordinal)?;
        let info = device::describe(&ctx)?;
        device::check_blas()?;
        let plan = MemoryPlan::new(sizes, scratch, precision);
        let needed = plan.total();
        if needed > info.free_memory {
            let hint = match batch.and_then(|(b, t)| plan.batch_that_fits(b, info.free_memory).map(|fit| (fit, t))) {
                Some((fit, t)) => format!("a batch of about {fit} sequences of {t} tokens would fit"),
                None => "the parameters and optimizer state alone do not fit; try a smaller model".into(),
            };
            return Err(BackendError::OutOfMemory { needed, free: info.free_memory, hint });
        }
        // SAFETY: this backend uses one stream only, so no cross-stream synchronisation is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| driver_error("creating a stream", e))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
            .map_err(|e| driver_error(&format!("loading the kernels on {} ({ARCHS})", info.name), e))?;
        let max_shared = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_error("reading the shared memory per block", e))?;
        let max_shared = usize::try_from(max_shared).unwrap_or(0);
        let mut functions = Functions::load(&module, precision, max_shared)?;
        // Hopper's own kernels: sm_90a code loads on compute capability 9.0 only.
        let mut module_sm90a = None;
        functions.wgmma_head_sizes = if precision != Precision::Bf16 {
            Err("it is built for bf16 storage only".into())
        } else if info.compute_capability != (9, 0) {
            let (major, minor) = info.compute_capability;
            Err(format!("it needs compute capability 9.0 (Hopper); {} has {major}.{minor}", info.name))
        } else if FATBIN_SM90A.is_empty() {
            Err("this build has no sm_90a kernels".into())
        } else {
            match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN_SM90A.to_vec())) {
                // A failure here leaves the default (mma.sync) attention, which needs none of it;
                // the names it loaded are those of the wgmma kernels alone, which nothing launches
                // without them.
                Ok(m) => match functions.load_sm90a(&m, max_shared) {
                    Ok(sizes) => {
                        module_sm90a = Some(m);
                        Ok(sizes)
                    }
                    Err(e) => Err(format!("loading the sm_90a kernels on {} failed: {e}", info.name)),
                },
                Err(e) => Err(format!("loading the sm_90a kernels on {} failed: {e}", info.name)),
            }
        };
        let s = storage_bytes(precision);
        let f = BYTES_PER_F32;
        let alloc = |elems, bytes, what| DeviceBuffer::new(&stream, elems, bytes, what);
        let epilogues = epilogues_enabled();
        let backend = CudaBackend {
            precision,
            params: alloc(sizes.params, s, "the parameter arena")?,
            grads: alloc(sizes.params, s, "the gradient arena")?,
            master: match precision {
                Precision::Bf16 => Some(alloc(sizes.params, f, "the master weights")?),
                Precision::F32 => None,
            },
            opt_m: alloc(sizes.params, f, "the AdamW m arena")?,
            opt_v: alloc(sizes.params, f, "the AdamW v arena")?,
            acts: alloc(sizes.acts, s, "the activation arena")?,
            act_grads: alloc(sizes.act_grads, s, "the activation-gradient arena")?,
            stats: alloc(sizes.stats, f, "the statistics arena")?,
            inputs: alloc(sizes.inputs, f, "the input arena")?,
            scratch: Scratch {
                partials: alloc(scratch.partial_floats(), f, "the reduction scratch")?,
                norm: alloc(NORM_MAX_BLOCKS, BYTES_PER_F64, "the norm scratch")?,
                delta: alloc(scratch.attention_rows, f, "the attention scratch")?,
                buckets: alloc(scratch.bucket_ints(), f, "the encoder scratch")?,
                sizes: scratch,
            },
            inputs_host: vec![0; sizes.inputs],
            buckets_host: Vec::with_capacity(scratch.bucket_ints()),
            bucketed: None,
            batch_tokens: None,
            step: alloc(1, std::mem::size_of::<StepScalars>(), "the step scalars")?,
            step_betas: None,
            blas: Blas::new(stream.clone(), precision, BLAS_WORKSPACE_BYTES)?,
            functions,
            _module: module,
            _module_sm90a: module_sm90a,
            attention_kernels: AttentionKernels::Mma,
            info,
            plan,
            stream,
            ctx,
            nccl: None,
            gelu_epilogue: epilogues,
            gelu_calls: EpilogueCalls::default(),
            bias_grad_epilogue: epilogues,
            bias_grad_calls: EpilogueCalls::default(),
            graphs: None,
            dq_acc: None,
        };
        backend.stream.synchronize().map_err(|e| driver_error("initialising the arenas", e))?;
        Ok(backend)
    }

    /// The device this backend runs on.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Bytes of every buffer this backend allocated.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// True when attention at head size `hs` runs on the tensor-core (flash) kernels: bf16
    /// storage, a head size they are built for, and a device that gives them their shared memory.
    /// (Tensors must also be 16-byte aligned, as every arena tensor is.) Otherwise the simple
    /// kernels of attention.cu run.
    pub fn uses_flash_attention(&self, hs: usize) -> bool {
        self.functions.flash_head_sizes.contains(&hs)
    }

    /// Buckets the positions of the ids in `tokens` (from the host copy of the Inputs arena) and
    /// copies the buckets into the scratch, at the fixed offsets `encoder_backward_wte` reads.
    fn bucket_tokens(&mut self, tokens: Tensor) -> Result<()> {
        let cap = self.scratch.sizes.tokens;
        if tokens.len > cap {
            return Err(BackendError::Device(format!(
                "a batch of {} tokens; the encoder scratch was planned for {cap}",
                tokens.len
            )));
        }
        let ids = &self.inputs_host[tokens.offset..tokens.end()];
        if let Some(&bad) = ids.iter().find(|&&x| x < 0) {
            return Err(BackendError::Device(format!("token id {bad} is negative")));
        }
        let largest = ids.iter().copied().max().unwrap_or(0);
        let h = &mut self.buckets_host;
        bucket_by_token(ids, cap, h);
        let range = self.scratch.buckets.byte_range(0, h.len())?;
        self.stream
            .memcpy_htod(bytemuck::cast_slice::<i32, u8>(h), &mut self.scratch.buckets.mem.slice_mut(range))
            .map_err(|e| driver_error("copying the token buckets", e))?;
        self.bucketed = Some((tokens, largest));
        Ok(())
    }

    /// Launches sum_squares over `range` of the gradient arena: per-block f64 sums of squares
    /// into the norm scratch, in block order. Returns how many blocks wrote one.
    fn launch_sum_squares(&mut self, range: Range<usize>) -> Result<usize> {
        let n = range.len();
        let grads_p = self.grads.at(range.start, n)?;
        let vec = self.vec_flag(&[grads_p], &[n]);
        let per_block = REDUCE_BLOCK as usize * if vec == 1 { self.vector_elems() } else { 1 };
        let blocks = n.div_ceil(per_block).clamp(1, NORM_MAX_BLOCKS);
        let (partials_p, n_i) = (self.scratch.norm.ptr, to_i64(n, "gradient count")?);
        let cfg = LaunchConfig {
            grid_dim: (to_u32(blocks, "norm blocks")?, 1, 1),
            block_dim: (REDUCE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = SumSquares { partials: partials_p, x: grads_p, n: n_i, vec };
        // SAFETY: x is `range` of the gradient arena (n elements, bounds checked), partials (f64)
        // holds NORM_MAX_BLOCKS ≥ blocks sums.
        unsafe { self.launch("sum_squares", cfg, &args) }?;
        Ok(blocks)
    }

    /// The arguments and grid every AdamW launch over `range` shares, after checking the range:
    /// inside the arena (which every optimizer arena matches), on multiples of 4 so that the f32
    /// arenas stay 16-byte aligned for the kernel's float4 accesses. In f32 storage the master is
    /// the parameters (the kernel does not write them separately).
    fn adamw_launch(&self, decay_end: usize, range: Range<usize>) -> Result<AdamWLaunch> {
        let (lo, hi) = (range.start, range.end);
        if !lo.is_multiple_of(ADAMW_ELEMS) || !hi.is_multiple_of(ADAMW_ELEMS) || hi > self.params.elems || lo > hi {
            return Err(BackendError::Device(format!(
                "the AdamW range {range:?} is not inside the arena ({}) on multiples of {ADAMW_ELEMS}",
                self.params.elems
            )));
        }
        Ok(AdamWLaunch {
            params: self.params.ptr,
            master: self.master.as_ref().map_or(self.params.ptr, |m| m.ptr),
            grads: self.grads.ptr,
            m: self.opt_m.ptr,
            v: self.opt_v.ptr,
            start: to_i64(lo, "AdamW start")?,
            end: to_i64(hi, "AdamW end")?,
            decay_end: to_i64(decay_end.min(hi), "decay end")?,
            cfg: LaunchConfig {
                grid_dim: (blocks_for(((hi - lo) / ADAMW_ELEMS).max(1), ADAMW_BLOCK, "adamw grid")?, 1, 1),
                block_dim: (ADAMW_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            },
        })
    }

    /// Drops the buckets' claim to describe `t`'s ids when `t` is written otherwise.
    fn forget_buckets(&mut self, t: Tensor) {
        if self.bucketed.is_some_and(|(b, _)| b.overlaps(t)) {
            self.bucketed = None;
        }
        self.batch_tokens = self.batch_tokens.filter(|b| !b.overlaps(t));
    }

    /// Runs the tensor-core attention on the mma.sync kernels (the default) or on Hopper's wgmma
    /// kernels, the forward and the backward (deterministic or with atomic dQ), with the forward
    /// on the warp-specialized TMA kernel for `WgmmaTma`. Fails, saying why, where the wgmma
    /// kernels are not loaded (another GPU, f32 storage, a build without them).
    pub fn set_attention_kernels(&mut self, kernels: AttentionKernels) -> Result<()> {
        if kernels != AttentionKernels::Mma {
            self.require_sm90a(&format!("the {} attention", kernels.name()))?;
        }
        self.attention_kernels = kernels;
        Ok(())
    }

    /// Runs the wgmma layout probe (compute capability 9.0 only): one product per operand form
    /// the wgmma attention uses, on tensors of this backend's arenas, all row-major. Mode 0 (both
    /// operands K-major from shared memory): d (64×64) = a (64×128) · bᵀ with b (64×128). Mode 1
    /// (A from registers, B MN-major): d (64×128) = a (64×64) · b (64×128). Mode 2 (both MN-major
    /// from shared memory, B 32 wide): d (64×32) = aᵀ · b with a (128×64), b (128×32). a and b
    /// are bf16 activations, d an f32 statistics tensor.
    pub fn wgmma_probe(&mut self, d: Tensor, a: Tensor, b: Tensor, mode: u32) -> Result<()> {
        self.require_sm90a("the wgmma probe")?;
        Self::expect_arena(a, &[Arena::Acts], "probe a")?;
        Self::expect_arena(b, &[Arena::Acts], "probe b")?;
        Self::expect_arena(d, &[Arena::Stats], "probe d")?;
        let (m, k, n) = match mode {
            0 => (64, 128, 64),
            1 => (64, 64, 128),
            2 => (64, 128, 32),
            _ => return Err(BackendError::Device(format!("wgmma probe mode {mode}: 0, 1 or 2"))),
        };
        let (a_p, b_p, d_p) =
            (self.ptr_n(a, m * k, "probe a")?, self.ptr_n(b, k * n, "probe b")?, self.ptr_n(d, m * n, "probe d")?);
        if [a_p, b_p].iter().any(|p| p % BYTES_PER_VECTOR as u64 != 0) {
            return Err(BackendError::Device("the wgmma probe's inputs must be 16-byte aligned".into()));
        }
        let cfg = flash_launch(1, FLASH90_BLOCK, WGMMA_PROBE_SHARED_BYTES)?;
        let args = WgmmaProbe { d: d_p, a: a_p, b: b_p, mode: mode as i32 };
        // SAFETY: a, b and d hold the mode's m·k, k·n and m·n elements (checked), a and b 16-byte
        // aligned (checked); sm_90a code loaded only on a compute capability 9.0 device; its
        // shared memory is under the 48 KB a block gets without raising the limit.
        unsafe { self.launch("wgmma_probe", cfg, &args) }?;
        Ok(())
    }

    /// Runs the TMA probe (compute capability 9.0 only): one box copy, as the TMA forward makes
    /// them through a map like its map of qkv, of `src` (a bf16 activation of B·T·W elements,
    /// viewed as (B, T, W)) at (column, row, batch) `at`, the tile written to `out` (FLASH90_TMA_BOX
    /// rows of FLASH90_TMA_BOX_COLS activations) as it sits in shared memory: 16-byte chunk c of
    /// box row r at chunk c ^ (r mod 8), where the wgmma descriptors read it; elements outside the
    /// tensor zero.
    pub fn tma_probe(
        &mut self,
        out: Tensor,
        src: Tensor,
        (b, t, w): (usize, usize, usize),
        at: (usize, usize, usize),
    ) -> Result<()> {
        self.require_sm90a("the TMA probe")?;
        Self::expect_arena(src, &[Arena::Acts], "probe source")?;
        Self::expect_arena(out, &[Arena::Acts], "probe output")?;
        let src_p = self.ptr_n(src, b * t * w, "probe source")?;
        let out_p = self.ptr_n(out, FLASH90_TMA_BOX * FLASH90_TMA_BOX_COLS, "probe output")?;
        if [src_p, out_p].iter().any(|p| p % BYTES_PER_VECTOR as u64 != 0) {
            return Err(BackendError::Device("the TMA probe's tensors must be 16-byte aligned".into()));
        }
        let args = TmaProbe {
            map: bf16_tensor_map(src_p, b, t, w)?,
            out: out_p,
            c0: to_i32(at.0, "probe column")?,
            c1: to_i32(at.1, "probe row")?,
            c2: to_i32(at.2, "probe batch")?,
        };
        let cfg = flash_launch(1, TMA_PROBE_BLOCK, TMA_PROBE_SHARED_BYTES)?;
        // SAFETY: the map spans src's B·T·W elements (checked), and a box copy fills what lies
        // outside with zeros instead of reading it; out holds the box's elements, 16-byte aligned
        // (checked); sm_90a code loaded only on a compute capability 9.0 device; its shared memory
        // is under the 48 KB a block gets without raising the limit.
        unsafe { self.launch("tma_probe", cfg, &args) }
    }

    /// Fails, saying why, where the sm_90a kernels are not loaded (another GPU, f32 storage, a
    /// build without them); `what` names what needs them.
    fn require_sm90a(&self, what: &str) -> Result<()> {
        match &self.functions.wgmma_head_sizes {
            Err(why) => Err(BackendError::Unavailable(format!(
                "{what} needs the sm_90a kernels, which are not available: {why}"
            ))),
            Ok(_) => Ok(()),
        }
    }

    /// The kernels the tensor-core attention at head size `hs` runs on: those set, where they are
    /// loaded for `hs`, else the mma.sync ones (`Mma` also where no tensor-core kernel takes `hs`,
    /// see [`CudaBackend::uses_flash_attention`]).
    pub fn attention_kernels(&self, hs: usize) -> AttentionKernels {
        let wgmma_loaded = self.functions.wgmma_head_sizes.as_ref().is_ok_and(|s| s.contains(&hs));
        if wgmma_loaded { self.attention_kernels } else { AttentionKernels::Mma }
    }

    /// Turns the GELU epilogue of `matmul_gelu_forward` and `matmul_backward_gelu` on (the
    /// default) or off (a GEMM, then the GELU kernel), e.g. to measure one against the other.
    pub fn set_gelu_epilogue(&mut self, on: bool) {
        self.gelu_epilogue = on;
    }

    /// Turns the recording of op runs as CUDA graphs ([`Backend::replay`]) on or off (the
    /// default); off drops the recordings.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = on.then(Graphs::default);
    }

    /// Whether op runs are recorded as CUDA graphs.
    pub fn cuda_graphs(&self) -> bool {
        self.graphs.is_some()
    }

    /// Turns on the faster, non-deterministic attention backward of the tensor-core kernels: dQ
    /// summed across key blocks with f32 atomics in the dK/dV pass (five tile products instead of
    /// seven; results vary run to run in the last bits), for batches of up to `elems` = B·T·C
    /// elements, whose f32 accumulator it allocates now; `None` turns it off and frees it.
    pub fn set_atomic_attention_dq(&mut self, elems: Option<usize>) -> Result<()> {
        self.dq_acc = match elems {
            Some(n) => Some(DeviceBuffer::new(&self.stream, n, BYTES_PER_F32, "the attention dQ accumulator")?),
            None => None,
        };
        Ok(())
    }

    /// How many times a recorded CUDA graph was launched.
    pub fn graph_launches(&self) -> usize {
        self.graphs.as_ref().map_or(0, |g| g.launches)
    }

    /// How the fused matmul+GELU ops have run since the backend was made.
    pub fn gelu_epilogue_calls(&self) -> EpilogueCalls {
        self.gelu_calls
    }

    /// Turns the bias gradient in the epilogue of the weight-gradient GEMM on (the default) or
    /// off (the bias-gradient kernels after the GEMM).
    pub fn set_bias_grad_epilogue(&mut self, on: bool) {
        self.bias_grad_epilogue = on;
    }

    /// How the bias gradients of linear layers have run since the backend was made.
    pub fn bias_grad_epilogue_calls(&self) -> EpilogueCalls {
        self.bias_grad_calls
    }

    /// The device addresses of a linear layer's backward, each checked against its arena.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_pointers(
        &self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<LinearBackward> {
        Ok(LinearBackward {
            dinp: self.ptr_n(dinp, n * c, "matmul dinp")?,
            dw: self.ptr_n(dw, oc * c, "matmul dw")?,
            dbias: dbias.map(|b| self.ptr_n(b, oc, "matmul dbias")).transpose()?,
            dout: self.ptr_n(dout, n * oc, "matmul dout")?,
            inp: self.ptr_n(inp, n * c, "matmul input")?,
            w: self.ptr_n(w, oc * c, "matmul weight")?,
        })
    }

    /// dW (OC,C) += doutᵀ · inp and dbias (OC) += Σ rows of dout: the part of a linear layer's
    /// backward that does not depend on how dinp was made. The row sums come from the GEMM's
    /// epilogue (`BGRADB`, f32 sums into the scratch, then added to dbias: cuBLASLt's bias
    /// gradient overwrites, dbias accumulates) where cuBLASLt allows, else from the kernels.
    fn linear_backward_weight(&mut self, p: &LinearBackward, n: usize, c: usize, oc: usize) -> Result<()> {
        let dout_p = p.dout;
        let call = GemmCall::linear_backward_weight(n, c, oc, dout_p, p.inp, p.dw);
        if let Some(dbias_p) = p.dbias {
            if self.bias_grad_epilogue && oc <= self.scratch.partials.elems {
                let sums = self.scratch.partials.ptr;
                if self.blas.gemm_epilogue(&call.with_epilogue(Epilogue::BGradB { sums }))? {
                    self.bias_grad_calls.fused += 1;
                    return self.add_partials(dbias_p, 1, oc, oc, 0);
                }
            }
            self.bias_grad_calls.apart += 1;
        }
        self.blas.gemm(&call)?;
        if let Some(dbias_p) = p.dbias {
            let (rows, count) = self.chunks(n, oc, 1)?;
            let (n_i, oc_i, rows_i) = (to_i32(n, "N")?, to_i32(oc, "OC")?, to_i32(rows, "rows per chunk")?);
            let partials = self.scratch.partials.ptr;
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(oc, MATMUL_BLOCK, "bias columns")?, to_u32(count, "row chunks")?, 1),
                block_dim: (MATMUL_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = BiasGradPartials { partials, dout: dout_p, n: n_i, oc: oc_i, rows_per_chunk: rows_i };
            // SAFETY: writes count·OC floats inside the scratch (checked by `chunks`), reads dout
            // (N·OC, checked).
            unsafe { self.launch("bias_grad_partials", cfg, &args) }?;
            self.add_partials(dbias_p, count, oc, oc, 0)?;
        }
        Ok(())
    }

    /// Reads a float tensor's *storage* copy as f32: for `Params` in bf16 this is the bf16 copy
    /// the forward reads (where [`Backend::download`] returns the master weights).
    pub fn download_storage(&mut self, t: Tensor) -> Result<Vec<f32>> {
        let buf = self.buffer(t.arena, false)?;
        self.read(buf, t)
    }

    // ---- memory helpers -------------------------------------------------------------------

    /// The buffer behind an arena; `master` picks the f32 master copy of `Params` in bf16.
    fn buffer(&self, arena: Arena, master: bool) -> Result<&DeviceBuffer> {
        Ok(match arena {
            Arena::Params if master => self.master.as_ref().unwrap_or(&self.params),
            Arena::Params => &self.params,
            Arena::Grads => &self.grads,
            Arena::OptM => &self.opt_m,
            Arena::OptV => &self.opt_v,
            Arena::Acts => &self.acts,
            Arena::ActGrads => &self.act_grads,
            Arena::Stats => &self.stats,
            Arena::Inputs => &self.inputs,
        })
    }

    fn buffer_mut(&mut self, arena: Arena, master: bool) -> &mut DeviceBuffer {
        match arena {
            Arena::Params if master && self.master.is_some() => self.master.as_mut().expect("checked"),
            Arena::Params => &mut self.params,
            Arena::Grads => &mut self.grads,
            Arena::OptM => &mut self.opt_m,
            Arena::OptV => &mut self.opt_v,
            Arena::Acts => &mut self.acts,
            Arena::ActGrads => &mut self.act_grads,
            Arena::Stats => &mut self.stats,
            Arena::Inputs => &mut self.inputs,
        }
    }

    /// Device address of a tensor (the storage copy for `Params`), bounds-checked.
    fn ptr(&self, t: Tensor) -> Result<u64> {
        self.buffer(t.arena, false)?.at(t.offset, t.len)
    }

    /// Address of a tensor that must hold at least `n` elements.
    fn ptr_n(&self, t: Tensor, n: usize, what: &str) -> Result<u64> {
        if t.len < n {
            return Err(BackendError::Device(format!("{what} has {} elements, the op needs {n}", t.len)));
        }
        self.buffer(t.arena, false)?.at(t.offset, n)
    }

    fn expect_arena(t: Tensor, arenas: &[Arena], what: &str) -> Result<()> {
        if arenas.contains(&t.arena) {
            Ok(())
        } else {
            Err(BackendError::Device(format!("{what} must live in {arenas:?}, not {:?}", t.arena)))
        }
    }

    /// Elements of the storage type per 16-byte vector.
    fn vector_elems(&self) -> usize {
        BYTES_PER_VECTOR / storage_bytes(self.precision)
    }

    /// 1 when every address is 16-byte aligned and every length a multiple of the vector
    /// width: the kernels may then move 16 bytes at a time.
    fn vec_flag(&self, ptrs: &[u64], lens: &[usize]) -> i32 {
        let vn = self.vector_elems();
        let aligned = ptrs.iter().all(|p| p % BYTES_PER_VECTOR as u64 == 0) && lens.iter().all(|n| n % vn == 0);
        aligned as i32
    }

    fn write_bytes(&mut self, arena: Arena, master: bool, t: Tensor, bytes: &[u8]) -> Result<()> {
        let stream = self.stream.clone();
        let buf = self.buffer_mut(arena, master);
        let range = buf.byte_range(t.offset, t.len)?;
        let what = buf.what;
        stream
            .memcpy_htod(bytes, &mut buf.mem.slice_mut(range))
            .map_err(|e| driver_error(&format!("copying into {what}"), e))
    }

    fn read(&self, buf: &DeviceBuffer, t: Tensor) -> Result<Vec<f32>> {
        let range = buf.byte_range(t.offset, t.len)?;
        let mut bytes = vec![0u8; range.len()];
        self.stream
            .memcpy_dtoh(&buf.mem.slice(range), &mut bytes)
            .map_err(|e| driver_error(&format!("copying from {}", buf.what), e))?;
        self.stream.synchronize().map_err(|e| driver_error(&format!("reading {}", buf.what), e))?;
        Ok(match buf.elem_bytes {
            2 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        })
    }

    /// Launches the entry point `kernel` with `args` on the stream, after checking that `args`
    /// is the parameter list `kernel` takes.
    ///
    /// # Safety
    /// `cfg` and the spans and sizes in `args` must be what `kernel` expects: each caller says
    /// why they are.
    unsafe fn launch<A: KernelArgs>(&self, kernel: &'static str, cfg: LaunchConfig, args: &A) -> Result<()> {
        if !A::KERNELS.contains(&kernel) {
            let list = std::any::type_name::<A>().rsplit("::").next().unwrap_or_default();
            return Err(BackendError::Device(format!("kernel {kernel} does not take the parameters {list}")));
        }
        let mut l = self.stream.launch_builder(self.functions.get(kernel)?);
        args.push(&mut l);
        // SAFETY: the arguments are `kernel`'s parameter list (checked above and, against the
        // sources and the PTX, by tests/cuda_build.rs); the caller vouches for their values.
        unsafe { l.launch(cfg) }.map_err(|e| BackendError::Device(format!("launching {kernel}: {e:?}")))?;
        Ok(())
    }

    /// Adds Σ_p partials[p·stride + offset + c] to dst (width), p < count.
    fn add_partials(&self, dst: u64, count: usize, width: usize, stride: usize, offset: usize) -> Result<()> {
        let (count_i, width_i) = (to_i32(count, "partial count")?, to_i32(width, "columns")?);
        let (stride_i, offset_i) = (to_i64(stride, "partial stride")?, to_i64(offset, "partial offset")?);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(width, REDUCE_BLOCK, "columns")?, 1, 1),
            block_dim: (REDUCE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = AddColumnPartials {
            dst,
            partials: self.scratch.partials.ptr,
            count: count_i,
            width: width_i,
            stride: stride_i,
            offset: offset_i,
        };
        // SAFETY: dst holds `width` elements (checked by the caller); the partials scratch holds
        // count·stride floats (checked by `chunks`).
        unsafe { self.launch("add_column_partials", cfg, &args) }
    }

    /// The tensor-core attention kernels that attention at head size `hs` over these tensors
    /// takes, when it can take them (see [`CudaBackend::uses_flash_attention`]; every pointer
    /// 16-byte aligned): those of [`CudaBackend::attention_kernels`].
    fn flash_kernels_for(&self, hs: usize, ptrs: &[u64]) -> Option<FlashKernels> {
        let aligned = ptrs.iter().all(|p| p % BYTES_PER_VECTOR as u64 == 0);
        if !aligned || !self.uses_flash_attention(hs) {
            return None;
        }
        match self.attention_kernels(hs) {
            AttentionKernels::Mma => mma_kernels(hs),
            AttentionKernels::Wgmma => wgmma_kernels(hs),
            AttentionKernels::WgmmaTma => Some(FlashKernels { forward: tma_forward(hs)?, ..wgmma_kernels(hs)? }),
        }
    }

    /// Splits `n` rows into at most MAX_PARTIALS chunks for a column reduction of `columns`
    /// (× `per_column` values): (rows per chunk, chunks), after checking the scratch holds them.
    fn chunks(&self, n: usize, columns: usize, per_column: usize) -> Result<(usize, usize)> {
        let (rows, count) = row_chunks(n);
        let needed = count * per_column * columns;
        if needed > self.scratch.partials.elems {
            return Err(BackendError::Device(format!(
                "a column reduction over {columns} columns needs {needed} floats of scratch; the plan has {} (sized for {} columns)",
                self.scratch.partials.elems, self.scratch.sizes.max_columns
            )));
        }
        Ok((rows, count))
    }
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        format!("{} ({} storage)", self.info, self.precision)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn zero(&mut self, t: Tensor) -> Result<()> {
        let stream = self.stream.clone();
        let mut targets = vec![false];
        if t.arena == Arena::Params && self.master.is_some() {
            targets.push(true);
        }
        for master in targets {
            let buf = self.buffer_mut(t.arena, master);
            let range = buf.byte_range(t.offset, t.len)?;
            let what = buf.what;
            stream
                .memset_zeros(&mut buf.mem.slice_mut(range))
                .map_err(|e| driver_error(&format!("zeroing part of {what}"), e))?;
        }
        if t.arena == Arena::Inputs {
            self.inputs_host[t.offset..t.end()].fill(0);
            self.forget_buckets(t);
        }
        Ok(())
    }

    fn upload(&mut self, t: Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.len {
            return Err(BackendError::Device(format!("upload of {} values into a tensor of {}", data.len(), t.len)));
        }
        if t.arena == Arena::Inputs {
            return Err(BackendError::Device("token ids go through upload_ints".into()));
        }
        if t.arena == Arena::Params && self.master.is_some() {
            self.write_bytes(t.arena, true, t, bytemuck::cast_slice(data))?;
        }
        let elem_bytes = self.buffer(t.arena, false)?.elem_bytes;
        if elem_bytes == 2 {
            let converted: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
            self.write_bytes(t.arena, false, t, bytemuck::cast_slice(&converted))
        } else {
            self.write_bytes(t.arena, false, t, bytemuck::cast_slice(data))
        }
    }

    fn upload_ints(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        if t.arena != Arena::Inputs || data.len() != t.len {
            return Err(BackendError::Device(format!("upload of {} ids into {t:?}", data.len())));
        }
        self.write_bytes(Arena::Inputs, false, t, bytemuck::cast_slice(data))?;
        self.inputs_host[t.offset..t.end()].copy_from_slice(data);
        self.forget_buckets(t);
        Ok(())
    }

    fn upload_tokens(&mut self, t: Tensor, data: &[i32]) -> Result<()> {
        self.upload_ints(t, data)?;
        self.batch_tokens = Some(t);
        Ok(())
    }

    fn download(&mut self, t: Tensor) -> Result<Vec<f32>> {
        if t.arena == Arena::Inputs {
            return Err(BackendError::Device("the Inputs arena holds token ids, not floats".into()));
        }
        let buf = self.buffer(t.arena, true)?;
        self.read(buf, t)
    }

    fn synchronize(&mut self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_error("synchronising the stream", e))?;
        self.ctx.check_err().map_err(|e| driver_error("a deferred CUDA error", e))
    }

    fn encoder_forward(
        &mut self,
        out: Tensor,
        tokens: Tensor,
        wte: Tensor,
        wpe: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        Self::expect_arena(tokens, &[Arena::Inputs], "tokens")?;
        let total = b * t * c;
        let out_p = self.ptr_n(out, total, "encoder output")?;
        let tok_p = self.ptr_n(tokens, b * t, "tokens")?;
        let (wte_p, wpe_p) = (self.ptr(wte)?, self.ptr_n(wpe, t * c, "wpe")?);
        let vec = self.vec_flag(&[out_p, wte_p, wpe_p], &[c]);
        let threads = if vec == 1 { total / self.vector_elems() } else { total };
        let (seq, c_i, total_i) = (to_i32(t, "T")?, to_i32(c, "C")?, to_i64(total, "B·T·C")?);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(threads, ENCODER_BLOCK, "encoder grid")?, 1, 1),
            block_dim: (ENCODER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args =
            EncoderForward { out: out_p, tokens: tok_p, wte: wte_p, wpe: wpe_p, seq, c: c_i, total: total_i, vec };
        // SAFETY: out holds B·T·C, tokens B·T, wpe T·C elements (checked); token ids index wte
        // rows (the model checks ids against Vp).
        unsafe { self.launch("encoder_forward", cfg, &args) }
    }

    fn encoder_backward(
        &mut self,
        dwte: Tensor,
        dwpe: Tensor,
        dout: Tensor,
        tokens: Tensor,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        Self::expect_arena(tokens, &[Arena::Inputs], "tokens")?;
        let n = b * t;
        let dout_p = self.ptr_n(dout, n * c, "encoder dout")?;
        let dwpe_p = self.ptr_n(dwpe, t * c, "dwpe")?;
        let dwte_p = self.ptr(dwte)?;
        self.ptr_n(tokens, n, "tokens")?;
        let (b_i, seq, c_i) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(c, "C")?);

        // dwpe += Σ_b dout.
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(t * c, ENCODER_BLOCK, "encoder grid")?, 1, 1),
            block_dim: (ENCODER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = EncoderBackwardWpe { dwpe: dwpe_p, dout: dout_p, b: b_i, seq, c: c_i };
        // SAFETY: dwpe holds T·C and dout B·T·C elements (checked).
        unsafe { self.launch("encoder_backward_wpe", cfg, &args) }?;

        // dwte: positions bucketed by token in the scratch, made from the host's copy of the ids
        // now, unless `replay` made them before a recording (so that this launch reads nothing
        // from the host and a CUDA graph can replay it).
        let tokens = tokens.slice(0, n);
        if self.bucketed.map(|(t, _)| t) != Some(tokens) {
            self.bucket_tokens(tokens)?;
        }
        let (_, largest) = self.bucketed.expect("bucketed above");
        let rows = dwte.len / c.max(1);
        if largest as usize >= rows {
            return Err(BackendError::Device(format!("token id {largest} is outside the embedding of {rows} rows")));
        }
        let (buckets_p, cap) = (self.scratch.buckets.ptr, self.scratch.sizes.tokens);
        let args = EncoderBackwardWte {
            dwte: dwte_p,
            dout: dout_p,
            buckets: buckets_p,
            cap: to_i32(cap, "token capacity")?,
            c: c_i,
        };
        // One block row per possible bucket: at most one per position and one per embedding row.
        let cfg = LaunchConfig {
            grid_dim: (to_u32(n.min(rows).max(1), "token buckets")?, blocks_for(c, ENCODER_BLOCK, "channels")?, 1),
            block_dim: (ENCODER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the scratch holds the buckets of these n ≤ cap ids at cap's offsets (3·cap + 2
        // ints, copied earlier on this stream), every id is below dwte's row count (checked),
        // every position below B·T; dout holds B·T·C elements (checked). Blocks past the bucket
        // count return at once.
        unsafe { self.launch("encoder_backward_wte", cfg, &args) }
    }

    fn layernorm_forward(
        &mut self,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.layernorm_launch(out, (mean, rstd), inp, None, (w, bias), n, c)
    }

    fn residual_layernorm_forward(
        &mut self,
        res: Tensor,
        out: Tensor,
        mean: Tensor,
        rstd: Tensor,
        (x, y): (Tensor, Tensor),
        w: Tensor,
        bias: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        self.layernorm_launch(out, (mean, rstd), x, Some((res, y)), (w, bias), n, c)
    }

    fn layernorm_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        db: Tensor,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        mean: Tensor,
        rstd: Tensor,
        n: usize,
        c: usize,
    ) -> Result<()> {
        Self::expect_arena(mean, &[Arena::Stats], "layernorm mean")?;
        Self::expect_arena(rstd, &[Arena::Stats], "layernorm rstd")?;
        let dinp_p = self.ptr_n(dinp, n * c, "layernorm dinp")?;
        let dout_p = self.ptr_n(dout, n * c, "layernorm dout")?;
        let inp_p = self.ptr_n(inp, n * c, "layernorm input")?;
        let w_p = self.ptr_n(w, c, "layernorm weight")?;
        let (dw_p, db_p) = (self.ptr_n(dw, c, "layernorm dw")?, self.ptr_n(db, c, "layernorm db")?);
        let (mean_p, rstd_p) = (self.ptr_n(mean, n, "mean")?, self.ptr_n(rstd, n, "rstd")?);
        let vec = self.vec_flag(&[dinp_p, dout_p, inp_p, w_p], &[c]);
        let (n_i, c_i) = (to_i32(n, "N")?, to_i32(c, "C")?);

        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n, ROWS_PER_BLOCK as u32, "layernorm rows")?, 1, 1),
            block_dim: (LAYERNORM_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = LayernormBackwardDinp {
            dinp: dinp_p,
            dout: dout_p,
            inp: inp_p,
            w: w_p,
            mean: mean_p,
            rstd: rstd_p,
            n: n_i,
            c: c_i,
            vec,
        };
        // SAFETY: sizes as checked above.
        unsafe { self.launch("layernorm_backward_dinp", cfg, &args) }?;

        let (rows, count) = self.chunks(n, c, 2)?;
        let rows_i = to_i32(rows, "rows per chunk")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(c, LAYERNORM_BLOCK, "channels")?, to_u32(count, "row chunks")?, 1),
            block_dim: (LAYERNORM_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = LayernormBackwardPartials {
            partials: self.scratch.partials.ptr,
            dout: dout_p,
            inp: inp_p,
            mean: mean_p,
            rstd: rstd_p,
            n: n_i,
            c: c_i,
            rows_per_chunk: rows_i,
        };
        // SAFETY: writes count·2C floats, within the scratch (checked by `chunks`); reads as
        // above.
        unsafe { self.launch("layernorm_backward_partials", cfg, &args) }?;
        self.add_partials(dw_p, count, c, 2 * c, 0)?;
        self.add_partials(db_p, count, c, 2 * c, c)
    }

    fn matmul_forward(
        &mut self,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let out_p = self.ptr_n(out, n * oc, "matmul output")?;
        let inp_p = self.ptr_n(inp, n * c, "matmul input")?;
        let w_p = self.ptr_n(w, oc * c, "matmul weight")?;
        let bias_p = bias.map(|b| self.ptr_n(b, oc, "matmul bias")).transpose()?;
        if n == 0 || oc == 0 {
            return Ok(());
        }
        if c == 0 {
            return Err(BackendError::Device("matmul with an empty inner dimension".into()));
        }
        // The epilogue wants an aligned bias vector; otherwise the kernel below adds it.
        let fused = bias_p.filter(|p| p % BYTES_PER_VECTOR as u64 == 0);
        let call = GemmCall::linear_forward(n, c, oc, inp_p, w_p, out_p, fused);
        let bias_added = self.blas.gemm(&call)?;
        if let Some(bias_p) = bias_p
            && !bias_added
        {
            let total = n * oc;
            let vec = self.vec_flag(&[out_p, bias_p], &[oc]);
            let threads = if vec == 1 { total / self.vector_elems() } else { total };
            let (oc_i, total_i) = (to_i32(oc, "OC")?, to_i64(total, "N·OC")?);
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(threads, MATMUL_BLOCK, "bias grid")?, 1, 1),
                block_dim: (MATMUL_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = BiasAdd { out: out_p, bias: bias_p, oc: oc_i, total: total_i, vec };
            // SAFETY: out holds N·OC and bias OC elements (checked).
            unsafe { self.launch("bias_add", cfg, &args) }?;
        }
        Ok(())
    }

    fn matmul_backward(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        inp: Tensor,
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let p = self.linear_backward_pointers(dinp, dw, dbias, dout, inp, w, n, c, oc)?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        if oc == 0 {
            return self.zero(dinp.slice(0, n * c));
        }
        self.blas.gemm(&GemmCall::linear_backward_input(n, c, oc, p.dout, p.w, p.dinp))?;
        self.linear_backward_weight(&p, n, c, oc)
    }

    fn matmul_gelu_forward(
        &mut self,
        pre: Tensor,
        out: Tensor,
        inp: Tensor,
        w: Tensor,
        bias: Option<Tensor>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        if self.gelu_epilogue && n > 0 && c > 0 && oc > 0 {
            let pre_p = self.ptr_n(pre, n * oc, "matmul GELU input")?;
            let out_p = self.ptr_n(out, n * oc, "matmul GELU output")?;
            let inp_p = self.ptr_n(inp, n * c, "matmul input")?;
            let w_p = self.ptr_n(w, oc * c, "matmul weight")?;
            let bias_p = bias.map(|b| self.ptr_n(b, oc, "matmul bias")).transpose()?;
            // The bias must be added before the GELU, so in the epilogue too (aligned, as in
            // `matmul_forward`); otherwise both run apart.
            if bias_p.is_none_or(|p| p % BYTES_PER_VECTOR as u64 == 0) {
                let call = GemmCall::linear_forward(n, c, oc, inp_p, w_p, out_p, bias_p)
                    .with_epilogue(Epilogue::Gelu { pre: pre_p });
                if self.blas.gemm_epilogue(&call)? {
                    self.gelu_calls.fused += 1;
                    return Ok(());
                }
            }
        }
        self.gelu_calls.apart += 1;
        // Checked before slicing, which would panic on a short tensor.
        self.ptr_n(pre, n * oc, "matmul GELU input")?;
        self.ptr_n(out, n * oc, "matmul GELU output")?;
        self.matmul_forward(pre, inp, w, bias, n, c, oc)?;
        self.gelu_forward(out.slice(0, n * oc), pre.slice(0, n * oc))
    }

    fn matmul_backward_gelu(
        &mut self,
        dinp: Tensor,
        dw: Tensor,
        dbias: Option<Tensor>,
        dout: Tensor,
        (inp, pre): (Tensor, Tensor),
        w: Tensor,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        if self.gelu_epilogue && n > 0 && c > 0 && oc > 0 {
            let p = self.linear_backward_pointers(dinp, dw, dbias, dout, inp, w, n, c, oc)?;
            let pre_p = self.ptr_n(pre, n * c, "matmul GELU input")?;
            let call = GemmCall::linear_backward_input(n, c, oc, p.dout, p.w, p.dinp)
                .with_epilogue(Epilogue::DGelu { pre: pre_p });
            if self.blas.gemm_epilogue(&call)? {
                self.gelu_calls.fused += 1;
                return self.linear_backward_weight(&p, n, c, oc);
            }
        }
        self.gelu_calls.apart += 1;
        // Checked before slicing, which would panic on a short tensor.
        self.ptr_n(pre, n * c, "matmul GELU input")?;
        self.ptr_n(dinp, n * c, "matmul dinp")?;
        self.matmul_backward(dinp, dw, dbias, dout, inp, w, n, c, oc)?;
        self.gelu_backward(dinp.slice(0, n * c), pre.slice(0, n * c))
    }

    fn attention_forward(
        &mut self,
        out: Tensor,
        lse: Tensor,
        qkv: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()> {
        check_head_size(hs)?;
        Self::expect_arena(lse, &[Arena::Stats], "attention lse")?;
        let c = nh * hs;
        let out_p = self.ptr_n(out, b * t * c, "attention output")?;
        let lse_p = self.ptr_n(lse, b * nh * t, "attention lse")?;
        let qkv_p = self.ptr_n(qkv, b * t * 3 * c, "qkv")?;
        let rows = b * nh * t;
        let (b_i, t_i, nh_i, hs_i) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?, to_i32(hs, "HS")?);
        let (causal_i, scale) = (causal as i32, attention_scale(hs));
        if rows == 0 {
            return Ok(());
        }
        if let Some(kernels) = self.flash_kernels_for(hs, &[out_p, qkv_p]) {
            let pass = kernels.forward;
            let cfg = flash_launch(t.div_ceil(pass.rows) * b * nh, pass.threads, pass.smem)?;
            let args = FlashForward {
                out: out_p,
                lse: lse_p,
                qkv: qkv_p,
                b: b_i,
                seq: t_i,
                nh: nh_i,
                causal: causal_i,
                scale,
            };
            if FlashForwardTma::KERNELS.contains(&pass.name) {
                let args = args.with_tensor_map(bf16_tensor_map(qkv_p, b, t, 3 * c)?);
                // SAFETY: as the launch below; qkv_map spans exactly qkv's B·T·3C elements (its
                // loads past T are filled with zeros, never read from memory) and holds qkv's
                // address as the kernel's qkv does; the block is the kernel's 384 threads.
                return unsafe { self.launch(pass.name, cfg, &args) };
            }
            // SAFETY: the kernel's HS is hs; out holds B·T·C, lse B·NH·T, qkv B·T·3C (checked);
            // out and qkv are 16-byte aligned and C = NH·HS is a multiple of 8, so every row the
            // kernel moves 16 bytes at a time is aligned; rows past T are neither read nor
            // written; the grid is ⌈T/rows⌉·B·NH blocks with the shared memory the function was
            // allowed at load (for the wgmma kernels, sm_90a code loaded only on a compute
            // capability 9.0 device, that includes the slack they align their tiles to 1024
            // bytes with).
            return unsafe { self.launch(pass.name, cfg, &args) };
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(rows, ROWS_PER_BLOCK as u32, "attention rows")?, 1, 1),
            block_dim: (ATTENTION_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = AttentionForward {
            out: out_p,
            lse: lse_p,
            qkv: qkv_p,
            b: b_i,
            seq: t_i,
            nh: nh_i,
            hs: hs_i,
            causal: causal_i,
            scale,
        };
        // SAFETY: out holds B·T·C, lse B·NH·T, qkv B·T·3C (checked); HS ≤ ATTENTION_MAX_HS
        // (checked).
        unsafe { self.launch("attention_forward", cfg, &args) }
    }

    fn attention_backward(
        &mut self,
        dqkv: Tensor,
        dout: Tensor,
        qkv: Tensor,
        out: Tensor,
        lse: Tensor,
        b: usize,
        t: usize,
        nh: usize,
        hs: usize,
        causal: bool,
    ) -> Result<()> {
        check_head_size(hs)?;
        Self::expect_arena(lse, &[Arena::Stats], "attention lse")?;
        let c = nh * hs;
        let rows = b * nh * t;
        let dqkv_p = self.ptr_n(dqkv, b * t * 3 * c, "dqkv")?;
        let dout_p = self.ptr_n(dout, b * t * c, "attention dout")?;
        let qkv_p = self.ptr_n(qkv, b * t * 3 * c, "qkv")?;
        let out_p = self.ptr_n(out, b * t * c, "attention output")?;
        let lse_p = self.ptr_n(lse, rows, "attention lse")?;
        let delta_p = self.scratch.delta.at(0, rows)?;
        let (b_i, t_i, nh_i, hs_i) = (to_i32(b, "B")?, to_i32(t, "T")?, to_i32(nh, "NH")?, to_i32(hs, "HS")?);
        let (causal_i, scale) = (causal as i32, attention_scale(hs));
        if rows == 0 {
            return Ok(());
        }
        let flash = self.flash_kernels_for(hs, &[dqkv_p, dout_p, qkv_p, out_p]);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(rows, ROWS_PER_BLOCK as u32, "attention rows")?, 1, 1),
            block_dim: (ATTENTION_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args =
            AttentionBackwardDelta { delta: delta_p, dout: dout_p, out: out_p, b: b_i, seq: t_i, nh: nh_i, hs: hs_i };
        // SAFETY: the delta scratch holds B·NH·T floats (checked by `at`), dout and out B·T·C
        // elements (checked).
        unsafe { self.launch("attention_backward_delta", cfg, &args) }?;
        let n_dq = b * t * c;
        if let (Some(kernels), Some(acc)) = (&flash, self.dq_acc.as_ref().filter(|a| a.elems >= n_dq)) {
            let acc_p = acc.ptr;
            let range = acc.byte_range(0, n_dq)?;
            let stream = self.stream.clone();
            let buf = self.dq_acc.as_mut().expect("checked above");
            stream
                .memset_zeros(&mut buf.mem.slice_mut(range))
                .map_err(|e| driver_error("zeroing the attention dQ accumulator", e))?;
            let pass = kernels.dkvq;
            let cfg = flash_launch(t.div_ceil(pass.rows) * b * nh, pass.threads, pass.smem)?;
            let args = FlashBackwardDkvq {
                dqkv: dqkv_p,
                dq_acc: acc_p,
                dout: dout_p,
                qkv: qkv_p,
                lse: lse_p,
                delta: delta_p,
                b: b_i,
                seq: t_i,
                nh: nh_i,
                causal: causal_i,
                scale,
            };
            // SAFETY: as the dK/dV launch below, and dq_acc holds B·T·C floats (checked), zeroed
            // just before on this stream.
            unsafe { self.launch(pass.name, cfg, &args) }?;
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(n_dq / 8, FLASH_BLOCK, "dQ store grid")?, 1, 1),
                block_dim: (FLASH_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let args =
                FlashDqStore { dqkv: dqkv_p, dq_acc: acc_p, c: to_i32(c, "C")?, total: to_i64(n_dq, "B·T·C")? };
            // SAFETY: total = B·T·C with C a multiple of 8 (a flash head size times NH); dq_acc
            // holds total floats and dqkv B·T·3C elements, both 16-byte aligned (checked).
            return unsafe { self.launch("flash_dq_store", cfg, &args) };
        }
        if let Some(kernels) = flash {
            let args = FlashBackward {
                dqkv: dqkv_p,
                dout: dout_p,
                qkv: qkv_p,
                lse: lse_p,
                delta: delta_p,
                b: b_i,
                seq: t_i,
                nh: nh_i,
                causal: causal_i,
                scale,
            };
            for pass in [kernels.dkv, kernels.dq] {
                let cfg = flash_launch(t.div_ceil(pass.rows) * b * nh, pass.threads, pass.smem)?;
                // SAFETY: the kernel's HS is hs; dqkv and qkv hold B·T·3C, dout B·T·C, lse and
                // delta B·NH·T (checked; delta was just written on this stream); the bf16 spans
                // are 16-byte aligned with C a multiple of 8; rows past T are neither read nor
                // written; dK/dV and dQ write disjoint thirds of dqkv; the shared memory is what
                // the function was allowed at load (sm_90a code only on a compute capability 9.0
                // device).
                unsafe { self.launch(pass.name, cfg, &args) }?;
            }
            return Ok(());
        }
        let args = AttentionBackward {
            dqkv: dqkv_p,
            dout: dout_p,
            qkv: qkv_p,
            lse: lse_p,
            delta: delta_p,
            b: b_i,
            seq: t_i,
            nh: nh_i,
            hs: hs_i,
            causal: causal_i,
            scale,
        };
        for name in ["attention_backward_dq", "attention_backward_dkv"] {
            // SAFETY: dqkv and qkv hold B·T·3C, dout B·T·C, lse and delta B·NH·T (checked).
            unsafe { self.launch(name, cfg, &args) }?;
        }
        Ok(())
    }

    fn attention_cached(
        &mut self,
        out: Tensor,
        qkv: Tensor,
        kv: Tensor,
        b: usize,
        t_max: usize,
        pos: usize,
        nh: usize,
        hs: usize,
    ) -> Result<()> {
        check_head_size(hs)?;
        if pos >= t_max {
            return Err(BackendError::Device(format!("cache position {pos} is past the cache of {t_max}")));
        }
        let c = nh * hs;
        let out_p = self.ptr_n(out, b * c, "attention output")?;
        let qkv_p = self.ptr_n(qkv, b * 3 * c, "qkv")?;
        let kv_p = self.ptr_n(kv, b * t_max * 2 * c, "key/value cache")?;
        let (b_i, tmax_i, pos_i) = (to_i32(b, "B")?, to_i32(t_max, "Tmax")?, to_i32(pos, "pos")?);
        let (nh_i, hs_i, scale) = (to_i32(nh, "NH")?, to_i32(hs, "HS")?, attention_scale(hs));
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(b * nh, ROWS_PER_BLOCK as u32, "attention heads")?, 1, 1),
            block_dim: (ATTENTION_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = AttentionCached {
            out: out_p,
            qkv: qkv_p,
            kv: kv_p,
            b: b_i,
            t_max: tmax_i,
            pos: pos_i,
            nh: nh_i,
            hs: hs_i,
            scale,
        };
        // SAFETY: out holds B·C, qkv B·3C, kv B·Tmax·2C (checked), pos < Tmax.
        unsafe { self.launch("attention_cached", cfg, &args) }
    }

    fn gelu_forward(&mut self, out: Tensor, inp: Tensor) -> Result<()> {
        self.elementwise("gelu_forward", out, &[inp])
    }

    fn gelu_backward(&mut self, d: Tensor, inp: Tensor) -> Result<()> {
        self.elementwise("gelu_backward", d, &[inp])
    }

    fn residual_forward(&mut self, out: Tensor, a: Tensor, b: Tensor) -> Result<()> {
        self.elementwise("residual_forward", out, &[a, b])
    }

    fn cross_entropy(
        &mut self,
        losses: Tensor,
        logits: Tensor,
        targets: Tensor,
        n: usize,
        v: usize,
        vp: usize,
        dloss: Option<f32>,
    ) -> Result<()> {
        Self::expect_arena(losses, &[Arena::Stats], "losses")?;
        Self::expect_arena(targets, &[Arena::Inputs], "targets")?;
        if v > vp {
            return Err(BackendError::Device(format!("vocabulary {v} is wider than its padding {vp}")));
        }
        let losses_p = self.ptr_n(losses, n, "losses")?;
        let logits_p = self.ptr_n(logits, n * vp, "logits")?;
        let targets_p = self.ptr_n(targets, n, "targets")?;
        if n == 0 {
            return Ok(());
        }
        let vec = self.vec_flag(&[logits_p], &[vp]);
        let (v_i, vp_i) = (to_i32(v, "V")?, to_i32(vp, "Vp")?);
        let (dloss_f, has_dloss) = (dloss.unwrap_or(0.0), dloss.is_some() as i32);
        let cfg = LaunchConfig {
            grid_dim: (to_u32(n, "loss rows")?, 1, 1),
            block_dim: (LOSS_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = CrossEntropy {
            losses: losses_p,
            logits: logits_p,
            targets: targets_p,
            v: v_i,
            vp: vp_i,
            dloss: dloss_f,
            has_dloss,
            vec,
        };
        // SAFETY: losses and targets hold N, logits N·Vp elements (checked); V ≤ Vp; targets ≥ V
        // are turned into NaN losses, never read past the row.
        unsafe { self.launch("cross_entropy", cfg, &args) }
    }

    fn grad_norm_squared(&mut self, range: Range<usize>) -> Result<f64> {
        let blocks = self.launch_sum_squares(range)?;
        let mut bytes = vec![0u8; blocks * BYTES_PER_F64];
        self.stream
            .memcpy_dtoh(&self.scratch.norm.mem.slice(0..bytes.len()), &mut bytes)
            .map_err(|e| driver_error("reading the norm partials", e))?;
        self.stream.synchronize().map_err(|e| driver_error("computing the gradient norm", e))?;
        Ok(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).sum())
    }

    fn adamw(&mut self, step: &AdamWStep, decay_end: usize, range: Range<usize>) -> Result<()> {
        let a = self.adamw_launch(decay_end, range)?;
        let (bc1, bc2) = bias_corrections(step);
        let args = Adamw {
            params: a.params,
            master: a.master,
            grads: a.grads,
            m: a.m,
            v: a.v,
            start: a.start,
            end: a.end,
            decay_end: a.decay_end,
            lr: step.lr,
            beta1: step.beta1,
            beta2: step.beta2,
            eps: step.eps,
            wd: step.weight_decay,
            bc1,
            bc2,
            grad_scale: step.grad_scale,
            seed: step.seed,
        };
        // SAFETY: as `adamw_launch` checked.
        unsafe { self.launch("adamw", a.cfg, &args) }
    }

    fn set_step(&mut self, step: &AdamWStep, clip: f32) -> Result<()> {
        let (bc1, bc2) = bias_corrections(step);
        let values = StepScalars { lr: step.lr, bc1, bc2, clip, seed: step.seed, ..StepScalars::default() };
        // The whole struct: what the device writes is overwritten by `step_scalars` before use.
        let range = self.step.byte_range(0, 1)?;
        self.stream
            .memcpy_htod(bytemuck::bytes_of(&values), &mut self.step.mem.slice_mut(range))
            .map_err(|e| driver_error("copying the step's values", e))?;
        self.step_betas = Some((step.beta1, step.beta2, step.eps, step.weight_decay));
        Ok(())
    }

    fn optimizer_step(&mut self, losses: Tensor, count: usize, decay_end: usize, range: Range<usize>) -> Result<()> {
        let Some((beta1, beta2, eps, wd)) = self.step_betas else {
            return Err(BackendError::Device("optimizer_step before set_step".into()));
        };
        Self::expect_arena(losses, &[Arena::Stats], "losses")?;
        let losses_p = self.ptr(losses)?;
        let a = self.adamw_launch(decay_end, range.clone())?;
        let blocks = self.launch_sum_squares(range)?;
        let (step_p, partials_p) = (self.step.ptr, self.scratch.norm.ptr);
        let (blocks_i, n_i, count_i) =
            (to_i32(blocks, "norm blocks")?, to_i64(losses.len, "losses")?, to_i32(count, "counted targets")?);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (STEP_SCALARS_BLOCK, 1, 1), shared_mem_bytes: 0 };
        // (The kernel's parameters; `StepScalars` here is the struct its first one points to.)
        let scalars = args::StepScalars {
            s: step_p,
            partials: partials_p,
            blocks: blocks_i,
            losses: losses_p,
            n: n_i,
            count: count_i,
        };
        // SAFETY: the step buffer holds one StepScalars (the host part copied by set_step earlier
        // on this stream), partials the `blocks` sums sum_squares just wrote, losses n f32
        // statistics (checked).
        unsafe { self.launch("step_scalars", cfg, &scalars) }?;
        let args = AdamwStep {
            params: a.params,
            master: a.master,
            grads: a.grads,
            m: a.m,
            v: a.v,
            start: a.start,
            end: a.end,
            decay_end: a.decay_end,
            beta1,
            beta2,
            eps,
            wd,
            s: step_p,
        };
        // SAFETY: as `adamw_launch` checked; s was completed by step_scalars just before on this
        // stream.
        unsafe { self.launch("adamw_step", a.cfg, &args) }
    }

    fn step_outcome(&mut self) -> Result<StepOutcome> {
        let mut values = StepScalars::default();
        let range = self.step.byte_range(0, 1)?;
        self.stream
            .memcpy_dtoh(&self.step.mem.slice(range), bytemuck::bytes_of_mut(&mut values))
            .map_err(|e| driver_error("reading the step's outcome", e))?;
        self.stream.synchronize().map_err(|e| driver_error("finishing the step", e))?;
        Ok(StepOutcome { loss_sum: values.loss_sum, grad_norm: values.grad_norm, applied: values.apply != 0 })
    }

    fn replay(&mut self, key: u64) -> Result<Replay> {
        // A recording holds the paths the ops took when it was made (epilogues, attention's
        // kernels).
        let switches = u64::from(self.gelu_epilogue)
            | u64::from(self.bias_grad_epilogue) << 1
            | u64::from(self.dq_acc.is_some()) << 2
            | (self.attention_kernels as u64) << 3;
        let key = key.wrapping_mul(32).wrapping_add(switches);
        if self.graphs.is_none() {
            return Ok(Replay::Run);
        }
        // What a recording's embedding backward reads, it cannot make: the batch's buckets now.
        if let Some(t) = self.batch_tokens
            && self.bucketed.map(|(b, _)| b) != Some(t)
        {
            self.bucket_tokens(t)?;
        }
        let g = self.graphs.as_mut().expect("checked above");
        if let Some(Graph(graph)) = g.recorded.get(&key) {
            graph.launch().map_err(|e| driver_error("launching a CUDA graph", e))?;
            g.launches += 1;
            return Ok(Replay::Replayed);
        }
        if g.recorded.len() < MAX_GRAPHS && g.seen.contains(&key) {
            // Thread-local: a call of this thread that a capture cannot hold (waiting for the
            // device, a legacy allocation) fails the recording instead of being recorded. The ops
            // make none of these, nor stream-ordered allocations (a capture would record those).
            self.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| driver_error("starting to record a CUDA graph", e))?;
            g.recording = Some(key);
            return Ok(Replay::Recording);
        }
        if g.seen.len() >= MAX_SEEN_KEYS {
            g.seen.clear();
        }
        g.seen.insert(key);
        Ok(Replay::Run)
    }

    fn end_recording(&mut self, ok: bool) -> Result<()> {
        let Some(g) = self.graphs.as_mut() else { return Ok(()) };
        let Some(key) = g.recording.take() else { return Ok(()) };
        // cudarc's end_capture first reports an error a drop left behind, and then does not end
        // the capture: take that error here, so that the stream always leaves capture mode.
        let deferred = self.ctx.check_err();
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        if !ok {
            // The failed op's error is the one to report; the partial recording is dropped.
            return Ok(());
        }
        deferred.map_err(|e| driver_error("recording a CUDA graph", e))?;
        let graph = graph
            .map_err(|e| driver_error("recording a CUDA graph", e))?
            .ok_or_else(|| BackendError::Device("recording a CUDA graph captured no work".into()))?;
        graph.launch().map_err(|e| driver_error("launching a CUDA graph", e))?;
        g.launches += 1;
        g.recorded.insert(key, Graph(graph));
        Ok(())
    }

    fn rank_world(&self) -> (usize, usize) {
        self.nccl_rank_world()
    }

    fn reduce_scatter_grads(&mut self, shard_len: usize) -> Result<()> {
        self.nccl_reduce_scatter_grads(shard_len)
    }

    fn all_gather_params(&mut self, shard_len: usize) -> Result<()> {
        self.nccl_all_gather_params(shard_len)
    }

    fn all_gather_optimizer_state(&mut self, shard_len: usize) -> Result<()> {
        self.nccl_all_gather_optimizer_state(shard_len)
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        self.nccl_all_reduce_host(values)
    }
}

impl CudaBackend {
    /// An elementwise kernel `name(out, inputs…, n, vec)` over `out.len` elements: gelu_forward
    /// (one input), gelu_backward (`out` is its d, one input) or residual_forward (two).
    fn elementwise(&mut self, name: &'static str, out: Tensor, inputs: &[Tensor]) -> Result<()> {
        let n = out.len;
        let out_p = self.ptr(out)?;
        let mut ptrs = vec![out_p];
        for &t in inputs {
            ptrs.push(self.ptr_n(t, n, &format!("{name} input"))?);
        }
        if n == 0 {
            return Ok(());
        }
        let vec = self.vec_flag(&ptrs, &[n]);
        let threads = if vec == 1 { n / self.vector_elems() } else { n };
        let n = to_i64(n, "elements")?;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(threads, ELEMENTWISE_BLOCK, "elementwise grid")?, 1, 1),
            block_dim: (ELEMENTWISE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every span holds n elements (checked); the vector path only when all are
        // 16-byte aligned and n a multiple of the vector width.
        unsafe {
            match (name, ptrs.as_slice()) {
                ("gelu_forward", &[out, inp]) => self.launch(name, cfg, &GeluForward { out, inp, n, vec }),
                ("gelu_backward", &[d, inp]) => self.launch(name, cfg, &GeluBackward { d, inp, n, vec }),
                ("residual_forward", &[out, a, b]) => self.launch(name, cfg, &ResidualForward { out, a, b, n, vec }),
                _ => {
                    Err(BackendError::Device(format!("{name} is not an elementwise kernel of {} inputs", inputs.len())))
                }
            }
        }
    }
}

/// (rows per chunk, chunks) splitting `n` rows into at most MAX_PARTIALS chunks.
fn row_chunks(n: usize) -> (usize, usize) {
    let rows = n.div_ceil(MAX_PARTIALS).max(1);
    (rows, n.div_ceil(rows).max(1))
}

/// Buckets token positions by id for the embedding backward, at the offsets `cap` (≥ the number
/// of ids) fixes: writes `out` = [U | ids of the U distinct tokens, ascending, in cap slots | U+1
/// bucket starts in cap+1 slots | the positions of each bucket, ascending, in cap slots], the
/// unused slots 0, and returns U.
fn bucket_by_token(ids: &[i32], cap: usize, out: &mut Vec<i32>) -> usize {
    assert!(ids.len() <= cap, "{} ids for {cap} slots", ids.len());
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&i| (ids[i as usize], i));
    out.clear();
    out.resize(3 * cap + 2, 0);
    let (tokens, rest) = out[1..].split_at_mut(cap);
    let (starts, positions) = rest.split_at_mut(cap + 1);
    let mut buckets = 0;
    for (k, &i) in order.iter().enumerate() {
        if k == 0 || ids[i as usize] != ids[order[k - 1] as usize] {
            tokens[buckets] = ids[i as usize];
            starts[buckets] = k as i32;
            buckets += 1;
        }
        positions[k] = i as i32;
    }
    starts[buckets] = ids.len() as i32;
    out[0] = buckets as i32;
    buckets
}

/// The launch of a flash kernel: `blocks` blocks of `threads` (FLASH_BLOCK for the mma.sync
/// kernels, FLASH90_BLOCK for the wgmma ones, FLASH90_WS_BLOCK for the TMA forward) with `smem`
/// bytes of dynamic shared memory.
fn flash_launch(blocks: usize, threads: u32, smem: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        // (A block per "thread" of blocks_for: the grid's limit checked.)
        grid_dim: (blocks_for(blocks, 1, "flash attention blocks")?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: to_u32(smem, "shared memory")?,
    })
}

/// What every AdamW launch over a range passes: the arenas, the range, the grid.
struct AdamWLaunch {
    params: u64,
    master: u64,
    grads: u64,
    m: u64,
    v: u64,
    start: i64,
    end: i64,
    decay_end: i64,
    cfg: LaunchConfig,
}

/// AdamW's bias corrections 1 − β^t of a step, computed in f64.
fn bias_corrections(step: &AdamWStep) -> (f32, f32) {
    let t = i32::try_from(step.t).unwrap_or(i32::MAX);
    ((1.0 - (step.beta1 as f64).powi(t)) as f32, (1.0 - (step.beta2 as f64).powi(t)) as f32)
}

/// One pass of the tensor-core attention: its entry point (without `_bf16`), its block size, the
/// rows (queries or keys) a block owns, and its dynamic shared memory.
#[derive(Clone, Copy, Debug)]
struct FlashPass {
    name: &'static str,
    threads: u32,
    rows: usize,
    smem: usize,
}

/// The passes of one set of tensor-core attention kernels: the forward, the deterministic
/// backward's dK/dV and dQ, and the opt-in backward's dK/dV with atomic dQ.
struct FlashKernels {
    forward: FlashPass,
    dkv: FlashPass,
    dq: FlashPass,
    dkvq: FlashPass,
}

impl FlashKernels {
    fn passes(&self) -> [FlashPass; 4] {
        [self.forward, self.dkv, self.dq, self.dkvq]
    }
}

/// The mma.sync kernels (flash_attention.cu) for a head size they are built for (64, 128).
fn mma_kernels(hs: usize) -> Option<FlashKernels> {
    let (tiles, (fwd, dkv, dq)) = (flash_tiles(hs)?, flash_shared_bytes(hs)?);
    let dkvq = flash_dkvq_shared_bytes(hs)?;
    let names = if hs == 64 {
        ["flash_forward_hs64", "flash_backward_dkv_hs64", "flash_backward_dq_hs64", "flash_backward_dkvq_hs64"]
    } else {
        ["flash_forward_hs128", "flash_backward_dkv_hs128", "flash_backward_dq_hs128", "flash_backward_dkvq_hs128"]
    };
    let pass = |i: usize, rows, smem| FlashPass { name: names[i], threads: FLASH_BLOCK, rows, smem };
    Some(FlashKernels {
        forward: pass(0, tiles.fwd_rows, fwd),
        dkv: pass(1, tiles.dkv_keys, dkv),
        dq: pass(2, tiles.dq_rows, dq),
        dkvq: pass(3, tiles.dkv_keys, dkvq),
    })
}

/// The wgmma kernels for a head size they are built for (64, 128).
fn wgmma_kernels(hs: usize) -> Option<FlashKernels> {
    let (fwd, dkv, dq, dkvq) = flash90_shared_bytes(hs)?;
    let names = if hs == 64 {
        [
            "flash_forward_sm90a_hs64",
            "flash_backward_dkv_sm90a_hs64",
            "flash_backward_dq_sm90a_hs64",
            "flash_backward_dkvq_sm90a_hs64",
        ]
    } else {
        [
            "flash_forward_sm90a_hs128",
            "flash_backward_dkv_sm90a_hs128",
            "flash_backward_dq_sm90a_hs128",
            "flash_backward_dkvq_sm90a_hs128",
        ]
    };
    let pass = |i: usize, rows, smem| FlashPass { name: names[i], threads: FLASH90_BLOCK, rows, smem };
    Some(FlashKernels {
        forward: pass(0, FLASH90_ROWS, fwd),
        dkv: pass(1, FLASH90_DKV_KEYS, dkv),
        dq: pass(2, FLASH90_ROWS, dq),
        dkvq: pass(3, FLASH90_DKV_KEYS, dkvq),
    })
}

/// The warp-specialized TMA forward for a head size it is built for (64, 128): the wgmma
/// forward's rows per block, in blocks of three warpgroups.
fn tma_forward(hs: usize) -> Option<FlashPass> {
    let name = match hs {
        64 => "flash_forward_tma_sm90a_hs64",
        128 => "flash_forward_tma_sm90a_hs128",
        _ => return None,
    };
    let smem = flash90_tma_forward_shared_bytes(hs)?;
    Some(FlashPass { name, threads: FLASH90_WS_BLOCK, rows: FLASH90_ROWS, smem })
}

/// The tensor map the TMA forward loads qkv's tiles through (qkv as a (B, T, 3C) array), and the
/// TMA probe its box: the bf16 array at device address `base` viewed as (B, T, W), in boxes of
/// FLASH90_TMA_BOX rows × FLASH90_TMA_BOX_COLS columns, swizzled by 128 bytes in shared memory as
/// wgmma reads them, elements outside it (rows past T) read as zeros. An encoding the driver
/// refuses (a dimension or stride past its limits) is an error naming the shape.
fn bf16_tensor_map(base: u64, b: usize, t: usize, w: usize) -> Result<TensorMap> {
    use cudarc::driver::sys::{
        CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
    };
    let row_bytes = w * BYTES_PER_BF16;
    // Innermost first; the strides (bytes) of every dimension but the innermost.
    let dims = [w, t, b].map(|n| n as u64);
    let strides = [row_bytes, t * row_bytes].map(|n| n as u64);
    let boxes = [to_u32(FLASH90_TMA_BOX_COLS, "TMA box")?, to_u32(FLASH90_TMA_BOX, "TMA box")?, 1];
    let element_strides = [1u32; 3];
    let mut map = std::mem::MaybeUninit::<cudarc::driver::sys::CUtensorMap>::uninit();
    // SAFETY: the arrays hold `rank` (3) dims, box sizes and element strides and rank − 1
    // strides, and live through the call; the driver writes the whole map, reading nothing at
    // `base` (an address it only encodes).
    let encoded = unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            3,
            base as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    encoded
        .result()
        .map_err(|e| driver_error(&format!("encoding the TMA map of a (B={b}, T={t}, W={w}) bf16 array"), e))?;
    // SAFETY: the encode succeeded, so it wrote the whole map.
    Ok(TensorMap(unsafe { map.assume_init() }))
}

/// 1/√HS, the score scale.
fn attention_scale(hs: usize) -> f32 {
    (1.0 / (hs as f64).sqrt()) as f32
}

fn check_head_size(hs: usize) -> Result<()> {
    if hs == 0 || hs > ATTENTION_MAX_HS {
        return Err(BackendError::Device(format!(
            "head size {hs} is outside what the attention kernels handle (1..={ATTENTION_MAX_HS})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<CudaBackend>();
    }

    #[test]
    fn each_flash_kernel_set_names_built_kernels_at_the_head_size_they_serve() {
        let listed = |list: &[(&str, &str)], name: &str| list.iter().any(|(k, _)| *k == name);
        for hs in FLASH_HEAD_SIZES {
            let (mma, wgmma) = (mma_kernels(hs).unwrap(), wgmma_kernels(hs).unwrap());
            for (set, list) in [(&mma, BF16_KERNELS), (&wgmma, SM90A_KERNELS)] {
                for pass in set.passes() {
                    assert!(listed(list, pass.name), "{} is not a built kernel", pass.name);
                    assert!(pass.name.ends_with(&format!("_hs{hs}")), "{} serves HS = {hs}", pass.name);
                    assert!(pass.rows > 0 && pass.smem > 0, "{pass:?}");
                }
            }
            assert!(mma.passes().iter().all(|p| p.threads == FLASH_BLOCK), "{hs}");
            assert!(wgmma.passes().iter().all(|p| p.threads == FLASH90_BLOCK), "{hs}");
            let tma = tma_forward(hs).unwrap();
            assert!(listed(SM90A_KERNELS, tma.name) && tma.name.ends_with(&format!("_hs{hs}")), "{tma:?}");
            assert_eq!(FlashForwardTma::KERNELS.iter().filter(|k| **k == tma.name).count(), 1);
            assert_eq!((tma.threads, tma.rows), (FLASH90_WS_BLOCK, wgmma.forward.rows));
        }
        assert!(mma_kernels(96).is_none() && wgmma_kernels(96).is_none() && tma_forward(96).is_none());
    }

    #[test]
    fn positions_are_bucketed_by_token_in_order() {
        let mut out = Vec::new();
        assert_eq!(bucket_by_token(&[3, 1, 3, 0, 1], 5, &mut out), 3);
        #[rustfmt::skip]
        let want = [3, /* tokens */ 0, 1, 3, 0, 0, /* starts */ 0, 1, 3, 5, 0, 0, /* positions */ 3, 1, 4, 0, 2];
        assert_eq!(out, want);
        // Fixed offsets: room for more ids than there are.
        assert_eq!(bucket_by_token(&[7], 2, &mut out), 1);
        assert_eq!(out, [1, 7, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn row_chunks_cover_every_row_within_the_partials() {
        for n in [1, 2, 255, 256, 257, 1000, 8192, 100_003] {
            let (rows, count) = row_chunks(n);
            assert!(count <= MAX_PARTIALS && rows * count >= n && rows * (count - 1) < n, "n={n}");
        }
        assert_eq!(row_chunks(257), (2, 129));
    }
}
