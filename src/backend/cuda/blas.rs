//! Row-major GEMMs through cuBLASLt, with the bias add fused into the epilogue where the library
//! allows.
//!
//! cuBLASLt is column-major; a row-major (R, K) matrix is the same bytes as a column-major
//! (K, R) one, so every row-major product here is asked of the library with its operands swapped
//! (see `CudaBackend::matmul_forward`). Descriptors, layouts and the heuristic's algorithm
//! choice are built once per distinct call shape and cached: the heuristic costs far more than
//! the GEMM of a small model. The cache key includes the pointer alignments, because the
//! heuristic only promises an algorithm for operands at least as aligned as it was told.
//!
//! The epilogue can also apply the tanh-GELU of the MLP (`GELU_AUX`, writing the GELU's input beside
//! its output, for the backward) or its derivative (`DGELU`, the backward through it), or sum a
//! weight gradient's output gradient into its bias gradient (`BGRADB`): see [`Epilogue`] and
//! [`Blas::gemm_epilogue`]. cuBLASLt's GELU is the tanh approximation, GPT-2's.
//!
//! Precision: bf16 operands with f32 accumulation (`CUBLAS_COMPUTE_32F`), or f32 operands with
//! full f32 arithmetic (not TF32), so the f32 backend can be checked tightly against the CPU.

use crate::backend::{BackendError, Precision};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// The largest alignment worth telling the heuristic about.
const MAX_ALIGNMENT: u32 = 256;

/// Work in the epilogue of a GEMM beyond the bias add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// D = GELU(op(A)·op(B) + bias), and the GELU's input (the product plus the bias) is
    /// written to `pre`, of D's shape and leading dimension (cuBLASLt's `GELU_AUX`,
    /// `GELU_AUX_BIAS`).
    Gelu { pre: u64 },
    /// D = op(A)·op(B) ⊙ GELU′(pre): the gradient through the GELU whose input was `pre`, of D's
    /// shape and leading dimension (cuBLASLt's `DGELU`; no bias).
    DGelu { pre: u64 },
    /// D as usual, and the n column sums of op(B) over k written to `sums` as f32: a linear
    /// layer's bias gradient from its weight-gradient GEMM (cuBLASLt's `BGRADB`; no bias).
    BGradB { sums: u64 },
}

impl Epilogue {
    /// The extra pointer: the GELU's input or the column sums.
    fn pointer(self) -> u64 {
        match self {
            Epilogue::Gelu { pre } | Epilogue::DGelu { pre } => pre,
            Epilogue::BGradB { sums } => sums,
        }
    }

    fn mode(epilogue: Option<Self>) -> EpilogueMode {
        match epilogue {
            None => EpilogueMode::None,
            Some(Epilogue::Gelu { .. }) => EpilogueMode::Gelu,
            Some(Epilogue::DGelu { .. }) => EpilogueMode::DGelu,
            Some(Epilogue::BGradB { .. }) => EpilogueMode::BGradB,
        }
    }
}

/// One GEMM: D (m×n, column-major, leading dimension ldd) = op(A)·op(B) + beta·D, where op
/// transposes when asked; the optional bias (m) is added to every column, then the optional
/// epilogue applies.
#[derive(Clone, Copy, Debug)]
pub struct GemmCall {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub trans_a: bool,
    pub b: u64,
    pub ldb: usize,
    pub trans_b: bool,
    pub d: u64,
    pub ldd: usize,
    /// 0 overwrites D, 1 accumulates into it.
    pub beta: f32,
    pub bias: Option<u64>,
    pub epilogue: Option<Epilogue>,
}

impl GemmCall {
    /// The same GEMM with an epilogue.
    pub fn with_epilogue(self, epilogue: Epilogue) -> Self {
        GemmCall { epilogue: Some(epilogue), ..self }
    }

    /// Row-major out (N,OC) = inp (N,C)·Wᵀ (+ bias), W (OC,C): column-major outᵀ (OC,N) =
    /// W (stored as (C,OC), transposed) · inpᵀ (stored as (C,N)).
    pub fn linear_forward(n: usize, c: usize, oc: usize, inp: u64, w: u64, out: u64, bias: Option<u64>) -> Self {
        GemmCall {
            m: oc,
            n,
            k: c,
            a: w,
            lda: c,
            trans_a: true,
            b: inp,
            ldb: c,
            trans_b: false,
            d: out,
            ldd: oc,
            beta: 0.0,
            bias,
            epilogue: None,
        }
    }

    /// Row-major dinp (N,C) = dout (N,OC)·W (OC,C), overwritten: column-major dinpᵀ (C,N) =
    /// W (stored as (C,OC)) · doutᵀ (stored as (OC,N)).
    pub fn linear_backward_input(n: usize, c: usize, oc: usize, dout: u64, w: u64, dinp: u64) -> Self {
        GemmCall {
            m: c,
            n,
            k: oc,
            a: w,
            lda: c,
            trans_a: false,
            b: dout,
            ldb: oc,
            trans_b: false,
            d: dinp,
            ldd: c,
            beta: 0.0,
            bias: None,
            epilogue: None,
        }
    }

    /// Row-major dW (OC,C) += doutᵀ·inp: column-major dWᵀ (C,OC) += inpᵀ (stored as (C,N)) ·
    /// dout (stored as (OC,N), transposed).
    pub fn linear_backward_weight(n: usize, c: usize, oc: usize, dout: u64, inp: u64, dw: u64) -> Self {
        GemmCall {
            m: c,
            n: oc,
            k: n,
            a: inp,
            lda: c,
            trans_a: false,
            b: dout,
            ldb: oc,
            trans_b: true,
            d: dw,
            ldd: c,
            beta: 1.0,
            bias: None,
            epilogue: None,
        }
    }
}

/// Which epilogue a plan was asked for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum EpilogueMode {
    None,
    Gelu,
    DGelu,
    BGradB,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldd: usize,
    trans_a: bool,
    trans_b: bool,
    bias: bool,
    epilogue: EpilogueMode,
    /// Alignments of A, B, D, the epilogue's pointer and the bias (the heuristic reads the last
    /// two from the pointers it is shown).
    align: [u32; 5],
}

impl Key {
    fn of(call: &GemmCall) -> Self {
        Key {
            m: call.m,
            n: call.n,
            k: call.k,
            lda: call.lda,
            ldb: call.ldb,
            ldd: call.ldd,
            trans_a: call.trans_a,
            trans_b: call.trans_b,
            bias: call.bias.is_some(),
            epilogue: Epilogue::mode(call.epilogue),
            align: [
                alignment(call.a),
                alignment(call.b),
                alignment(call.d),
                call.epilogue.map_or(MAX_ALIGNMENT, |e| alignment(e.pointer())),
                call.bias.map_or(MAX_ALIGNMENT, alignment),
            ],
        }
    }
}

/// Descriptors and the chosen algorithm for one key.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// The bias add is in the epilogue (else the caller adds it).
    fused_bias: bool,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt for this plan and is destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle, its workspace and the plan cache.
pub struct Blas {
    handle: sys::cublasLtHandle_t,
    _workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    workspace_bytes: usize,
    data_type: sys::cudaDataType,
    compute_type: sys::cublasComputeType_t,
    /// `None`: the library has no algorithm for this epilogue (asked once, remembered).
    plans: HashMap<Key, Option<Plan>>,
    stream: Arc<CudaStream>,
}

// SAFETY: the handle, descriptors and workspace are only used through `&mut self`, one call at a
// time, after binding the context to the calling thread; cuBLASLt allows a handle to move
// between threads when it is not used concurrently.
unsafe impl Send for Blas {}

fn blas_error(what: &str, e: lt::CublasError) -> BackendError {
    BackendError::Device(format!("cuBLASLt {what}: {:?}", e.0))
}

/// Whether cuBLASLt refused a combination of attributes (what it answers for an epilogue, type or
/// alignment it has no kernel for), as opposed to failing.
fn refused(e: &lt::CublasError) -> bool {
    use sys::cublasStatus_t as S;
    matches!(e.0, S::CUBLAS_STATUS_NOT_SUPPORTED | S::CUBLAS_STATUS_INVALID_VALUE)
}

fn alignment(ptr: u64) -> u32 {
    if ptr == 0 { MAX_ALIGNMENT } else { (1u64 << ptr.trailing_zeros().min(8)) as u32 }
}

/// Sets one descriptor attribute from a value.
///
/// SAFETY: `desc` is live and `T` is the attribute's documented type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), lt::CublasError> {
    unsafe { lt::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, size_of::<T>()) }
}

/// Points the descriptor at this call's bias (when fused) and its epilogue's matrix or sums.
///
/// SAFETY: `desc` is live; the pointers are device addresses (or 0 before a heuristic query).
unsafe fn set_pointers(
    desc: sys::cublasLtMatmulDesc_t,
    call: &GemmCall,
    fused_bias: bool,
) -> Result<(), lt::CublasError> {
    use sys::cublasLtMatmulDescAttributes_t as D;
    unsafe {
        if let (true, Some(bias)) = (fused_bias, call.bias) {
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
        }
        match call.epilogue {
            Some(Epilogue::Gelu { pre } | Epilogue::DGelu { pre }) => {
                set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &pre)?
            }
            // The bias gradient goes where a bias would come from.
            Some(Epilogue::BGradB { sums }) => set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &sums)?,
            None => {}
        }
    }
    Ok(())
}

impl Blas {
    /// A handle on `stream` with `workspace_bytes` of device workspace.
    pub fn new(stream: Arc<CudaStream>, precision: Precision, workspace_bytes: usize) -> Result<Self, BackendError> {
        super::device::check_blas()?;
        stream.context().bind_to_thread().map_err(|e| BackendError::Device(format!("binding the context: {e:?}")))?;
        let handle = lt::create_handle().map_err(|e| blas_error("creating a handle", e))?;
        // SAFETY: the workspace is only written by cuBLASLt on this stream.
        let workspace = unsafe { stream.alloc::<u8>(workspace_bytes) }
            .map_err(|e| BackendError::Device(format!("allocating the cuBLASLt workspace: {e:?}")))?;
        let workspace_ptr = {
            let (ptr, _sync) = workspace.device_ptr(&stream);
            ptr
        };
        let (data_type, compute_type) = match precision {
            Precision::Bf16 => (sys::cudaDataType::CUDA_R_16BF, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
            Precision::F32 => (sys::cudaDataType::CUDA_R_32F, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F),
        };
        Ok(Blas {
            handle,
            _workspace: workspace,
            workspace_ptr,
            workspace_bytes,
            data_type,
            compute_type,
            plans: HashMap::new(),
            stream,
        })
    }

    fn layout(&self, rows: usize, cols: usize, ld: usize) -> Result<sys::cublasLtMatrixLayout_t, lt::CublasError> {
        lt::create_matrix_layout(self.data_type, rows as u64, cols as u64, ld as i64)
    }

    /// Builds the plan for `call` (whose key is `key`), with the bias fused when `fuse` and the
    /// epilogue the key asks for.
    fn plan(&self, key: &Key, call: &GemmCall, fuse: bool) -> Result<Plan, lt::CublasError> {
        let desc = lt::create_matmul_desc(self.compute_type, sys::cudaDataType::CUDA_R_32F)?;
        let (a_rows, a_cols) = if key.trans_a { (key.k, key.m) } else { (key.m, key.k) };
        let (b_rows, b_cols) = if key.trans_b { (key.n, key.k) } else { (key.k, key.n) };
        // Built one by one so that a failure drops (destroys) what exists.
        let mut plan = Plan {
            desc,
            a: self.layout(a_rows, a_cols, key.lda)?,
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            fused_bias: fuse,
        };
        plan.b = self.layout(b_rows, b_cols, key.ldb)?;
        plan.d = self.layout(key.m, key.n, key.ldd)?;
        let (op_a, op_b) = (key.trans_a as i32, key.trans_b as i32); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
        use sys::cublasLtEpilogue_t as E;
        let epilogue = match (key.epilogue, fuse) {
            (EpilogueMode::None, false) => E::CUBLASLT_EPILOGUE_DEFAULT,
            (EpilogueMode::None, true) => E::CUBLASLT_EPILOGUE_BIAS,
            (EpilogueMode::Gelu, false) => E::CUBLASLT_EPILOGUE_GELU_AUX,
            (EpilogueMode::Gelu, true) => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            (EpilogueMode::DGelu, _) => E::CUBLASLT_EPILOGUE_DGELU,
            (EpilogueMode::BGradB, _) => E::CUBLASLT_EPILOGUE_BGRADB,
        };
        use sys::cublasLtMatmulDescAttributes_t as D;
        // SAFETY: the descriptor is live; TRANSA/TRANSB take an int32 cublasOperation_t,
        // EPILOGUE a uint32 cublasLtEpilogue_t, EPILOGUE_AUX_LD an int64 (the GELU input has D's
        // leading dimension; its type, left unset, is D's), BIAS_DATA_TYPE an int32
        // cudaDataType (the bias gradient's sums are kept in f32). The pointers are set before
        // the heuristic because it reads their alignment from them.
        unsafe {
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &op_a)?;
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &op_b)?;
            set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &(epilogue as u32))?;
            match key.epilogue {
                EpilogueMode::Gelu | EpilogueMode::DGelu => {
                    set_desc(desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &(key.ldd as i64))?
                }
                EpilogueMode::BGradB => {
                    let f32_type = sys::cudaDataType::CUDA_R_32F as i32;
                    set_desc(desc, D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &f32_type)?
                }
                EpilogueMode::None => {}
            }
            set_pointers(desc, call, fuse)?;
        }
        let pref = lt::create_matmul_pref()?;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let set_pref = |attr: P, value: *const c_void, size: usize| {
            // SAFETY: `pref` is live until destroyed below; value points to `size` bytes.
            unsafe { lt::set_matmul_pref_attribute(pref, attr, value, size) }
        };
        let workspace = self.workspace_bytes as u64;
        let [align_a, align_b, align_d, ..] = key.align;
        let result = (|| {
            set_pref(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace as *const u64 as _, 8)?;
            set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a as *const u32 as _, 4)?;
            set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b as *const u32 as _, 4)?;
            set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d as *const u32 as _, 4)?;
            set_pref(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d as *const u32 as _, 4)?;
            // SAFETY: every descriptor is live and describes this GEMM.
            unsafe { lt::get_matmul_algo_heuristic(self.handle, desc, plan.a, plan.b, plan.d, plan.d, pref) }
        })();
        // SAFETY: created above, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        plan.algo = result?.algo;
        Ok(plan)
    }

    fn shape_error(call: &GemmCall, e: lt::CublasError) -> BackendError {
        blas_error(
            &format!(
                "has no algorithm for a {}×{}×{} GEMM (transa {}, transb {})",
                call.m, call.n, call.k, call.trans_a, call.trans_b
            ),
            e,
        )
    }

    /// Runs one GEMM without an [`Epilogue`]. Returns whether `call.bias` was added in the
    /// epilogue (false without a bias); when a bias was given but not added, the caller adds it.
    pub fn gemm(&mut self, call: &GemmCall) -> Result<bool, BackendError> {
        if call.epilogue.is_some() {
            return Err(BackendError::Device("a GEMM with an epilogue goes through gemm_epilogue".into()));
        }
        let key = Key::of(call);
        if !self.plans.contains_key(&key) {
            let plan = match self.plan(&key, call, key.bias) {
                // The epilogue is an optimisation: without it the caller adds the bias.
                Err(_) if key.bias => self.plan(&key, call, false),
                other => other,
            }
            .map_err(|e| Self::shape_error(call, e))?;
            self.plans.insert(key, Some(plan));
        }
        let fused_bias = self.run(&key, call)?.map_err(|e| Self::matmul_error(call, e))?;
        Ok(fused_bias && call.bias.is_some())
    }

    /// Runs one GEMM with its [`Epilogue`] (and its bias, if any, fused too), or nothing and
    /// returns false when cuBLASLt has no algorithm for that epilogue at this shape, alignment
    /// and type, or refuses the call; the caller then does the work apart. The GELU's input
    /// matrix needs a leading dimension divisible by 8.
    pub fn gemm_epilogue(&mut self, call: &GemmCall) -> Result<bool, BackendError> {
        let Some(epilogue) = call.epilogue else {
            return Err(BackendError::Device("gemm_epilogue without an epilogue".into()));
        };
        let gelu = matches!(epilogue, Epilogue::Gelu { .. } | Epilogue::DGelu { .. });
        if !matches!(epilogue, Epilogue::Gelu { .. }) && call.bias.is_some() {
            return Err(BackendError::Device("the DGELU and BGRADB epilogues take no bias".into()));
        }
        if gelu && !call.ldd.is_multiple_of(8) {
            return Ok(false);
        }
        let key = Key::of(call);
        if !self.plans.contains_key(&key) {
            let plan = match self.plan(&key, call, key.bias) {
                Ok(plan) => Some(plan),
                Err(e) if refused(&e) => None,
                Err(e) => return Err(blas_error("choosing an algorithm for an epilogue", e)),
            };
            self.plans.insert(key, plan);
        }
        if self.plans[&key].is_none() {
            return Ok(false);
        }
        // A library that offered an algorithm but refuses the call itself is answered the same
        // way: the work runs apart, now and for this key from now on. Any other failure is an
        // error.
        match self.run(&key, call)? {
            Ok(_) => Ok(true),
            Err(e) if refused(&e) => {
                self.plans.insert(key, None);
                Ok(false)
            }
            Err(e) => Err(Self::matmul_error(call, e)),
        }
    }

    fn matmul_error(call: &GemmCall, e: lt::CublasError) -> BackendError {
        blas_error(&format!("matmul {}×{}×{}", call.m, call.n, call.k), e)
    }

    /// Launches `call` with the cached plan of `key`: whether the plan fuses the bias, or the
    /// status cuBLASLt answered the call with (the outer error: the call could not be made).
    fn run(&mut self, key: &Key, call: &GemmCall) -> Result<Result<bool, lt::CublasError>, BackendError> {
        let plan = self.plans[key].as_ref().expect("a plan exists for the key");
        // SAFETY: the descriptor is live; BIAS_POINTER and EPILOGUE_AUX_POINTER take device
        // pointers.
        unsafe { set_pointers(plan.desc, call, plan.fused_bias) }
            .map_err(|e| blas_error("setting the epilogue pointers", e))?;
        let alpha = 1.0f32;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| BackendError::Device(format!("binding the context: {e:?}")))?;
        // SAFETY: the caller guarantees A, B and D (and the GELU input) hold the matrices the
        // dimensions and leading dimensions describe (checked against the arenas before the
        // call); the workspace is ours and idle outside this stream; alpha and beta are host f32
        // (scale type f32).
        let status = unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &call.beta as *const f32 as *const c_void,
                call.a as *const c_void,
                plan.a,
                call.b as *const c_void,
                plan.b,
                call.d as *const c_void,
                plan.d,
                call.d as *mut c_void,
                plan.d,
                &plan.algo,
                self.workspace_ptr as *mut c_void,
                self.workspace_bytes,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        };
        Ok(status.map(|()| plan.fused_bias))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `new`, destroyed once, after every plan made with it.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{matmul_backward, matmul_forward};
    use crate::rng::Rng;

    /// GPT-2's tanh-GELU and its derivative, as cuBLASLt's epilogues apply them.
    fn gelu(x: f64) -> f64 {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
    }

    fn gelu_grad(x: f64) -> f64 {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let th = (k * (x + 0.044715 * x.powi(3))).tanh();
        0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * k * (1.0 + 3.0 * 0.044715 * x * x)
    }

    /// What cuBLASLt computes for `call`, on host buffers (the addresses are element offsets):
    /// column-major D = op(A)·op(B) + beta·D, plus the bias on every column, then the epilogue:
    /// a GELU whose input matrix `aux` has D's layout (written forward, read backward), or the
    /// column sums of op(B) into `aux`.
    fn reference(call: &GemmCall, a: &[f64], b: &[f64], d: &mut [f64], bias: &[f64], aux: &mut [f64]) {
        let (a0, b0, d0) = (call.a as usize, call.b as usize, call.d as usize);
        let op_b = |p: usize, j: usize| if call.trans_b { b[b0 + j + p * call.ldb] } else { b[b0 + p + j * call.ldb] };
        if let Some(Epilogue::BGradB { sums }) = call.epilogue {
            for j in 0..call.n {
                aux[sums as usize + j] = (0..call.k).map(|p| op_b(p, j)).sum();
            }
        }
        for j in 0..call.n {
            for i in 0..call.m {
                let mut acc = 0.0;
                for p in 0..call.k {
                    let x = if call.trans_a { a[a0 + p + i * call.lda] } else { a[a0 + i + p * call.lda] };
                    acc += x * op_b(p, j);
                }
                let at = d0 + i + j * call.ldd;
                let bias = call.bias.map_or(0.0, |o| bias[o as usize + i]);
                let x = acc + call.beta as f64 * d[at] + bias;
                d[at] = match call.epilogue {
                    None | Some(Epilogue::BGradB { .. }) => x,
                    Some(Epilogue::Gelu { pre }) => {
                        aux[pre as usize + i + j * call.ldd] = x;
                        gelu(x)
                    }
                    Some(Epilogue::DGelu { pre }) => x * gelu_grad(aux[pre as usize + i + j * call.ldd]),
                };
            }
        }
    }

    fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn close(x: &[f64], y: &[f64]) {
        for (i, (a, b)) in x.iter().zip(y).enumerate() {
            assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn row_major_linear_layers_map_onto_column_major_gemms() {
        let mut rng = Rng::new(9);
        for (n, c, oc) in [(1, 1, 1), (5, 7, 3), (4, 16, 48)] {
            let (inp, w, bias, dout) =
                (randn(&mut rng, n * c), randn(&mut rng, oc * c), randn(&mut rng, oc), randn(&mut rng, n * oc));

            let mut want = vec![0.0; n * oc];
            matmul_forward(&mut want, &inp, &w, Some(&bias), n, c, oc);
            let mut got = vec![0.0; n * oc];
            reference(&GemmCall::linear_forward(n, c, oc, 0, 0, 0, Some(0)), &w, &inp, &mut got, &bias, &mut []);
            close(&got, &want);

            let dw0 = randn(&mut rng, oc * c);
            let (mut want_dinp, mut want_dw) = (vec![0.0; n * c], dw0.clone());
            matmul_backward(&mut want_dinp, &mut want_dw, None, &dout, &inp, &w, n, c, oc);
            let mut got_dinp = vec![0.0; n * c];
            reference(&GemmCall::linear_backward_input(n, c, oc, 0, 0, 0), &w, &dout, &mut got_dinp, &[], &mut []);
            close(&got_dinp, &want_dinp);
            let mut got_dw = dw0;
            reference(&GemmCall::linear_backward_weight(n, c, oc, 0, 0, 0), &inp, &dout, &mut got_dw, &[], &mut []);
            close(&got_dw, &want_dw);
        }
    }

    #[test]
    fn epilogues_are_the_mlp_and_bias_gradient_ops_in_the_gemm() {
        use crate::backend::cpu::{gelu_backward, gelu_forward};
        let mut rng = Rng::new(10);
        for (n, c, oc) in [(1, 1, 1), (5, 7, 3), (4, 16, 48)] {
            // Forward: out = GELU(inp·Wᵀ + b) with the GELU's input kept, as matmul_gelu_forward.
            let (inp, w, bias) = (randn(&mut rng, n * c), randn(&mut rng, oc * c), randn(&mut rng, oc));
            let mut want_pre = vec![0.0; n * oc];
            matmul_forward(&mut want_pre, &inp, &w, Some(&bias), n, c, oc);
            let mut want_out = vec![0.0; n * oc];
            gelu_forward(&mut want_out, &want_pre);
            let (mut got_out, mut got_pre) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            let call = GemmCall::linear_forward(n, c, oc, 0, 0, 0, Some(0)).with_epilogue(Epilogue::Gelu { pre: 0 });
            reference(&call, &w, &inp, &mut got_out, &bias, &mut got_pre);
            close(&got_pre, &want_pre);
            close(&got_out, &want_out);

            // Backward: dinp = (dout·W) ⊙ GELU′(pre), pre (N,C), as matmul_backward_gelu.
            let (dout, mut pre) = (randn(&mut rng, n * oc), randn(&mut rng, n * c));
            let (mut want_dinp, mut dw) = (vec![0.0; n * c], vec![0.0; oc * c]);
            matmul_backward(&mut want_dinp, &mut dw, None, &dout, &inp, &w, n, c, oc);
            gelu_backward(&mut want_dinp, &pre);
            let mut got_dinp = vec![0.0; n * c];
            let call = GemmCall::linear_backward_input(n, c, oc, 0, 0, 0).with_epilogue(Epilogue::DGelu { pre: 0 });
            reference(&call, &w, &dout, &mut got_dinp, &[], &mut pre);
            close(&got_dinp, &want_dinp);

            // The weight gradient's GEMM also sums dout's rows: the bias gradient.
            let (mut want_dw, mut want_db) = (vec![0.0; oc * c], vec![0.0; oc]);
            matmul_backward(&mut vec![0.0; n * c], &mut want_dw, Some(&mut want_db), &dout, &inp, &w, n, c, oc);
            let (mut got_dw, mut got_db) = (vec![0.0; oc * c], vec![0.0; oc]);
            let call = GemmCall::linear_backward_weight(n, c, oc, 0, 0, 0).with_epilogue(Epilogue::BGradB { sums: 0 });
            reference(&call, &inp, &dout, &mut got_dw, &[], &mut got_db);
            close(&got_dw, &want_dw);
            close(&got_db, &want_db);
        }
    }
}
