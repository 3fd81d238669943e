//! Finding a usable GPU: the driver library, a device, its properties, and the libraries the
//! backend loads at run time. Every missing piece is a one-line [`BackendError::Unavailable`],
//! never a panic (cudarc's dynamic loader panics when a library is absent, so each library is
//! probed before first use).

use super::kernels;
use crate::backend::BackendError;
use cudarc::driver::{CudaContext, sys::CUdevice_attribute};
use std::sync::Arc;

/// How to get nvcc when the binary was built without it.
pub const NVCC_INSTALL_HINT: &str = "pip install nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85";

/// What a GPU is, for logs, `gptk info` and MFU.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for Hopper.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: usize,
    pub multiprocessors: i32,
    /// Dense bf16 tensor-core peak in FLOP/s when the model is known (for MFU).
    pub peak_bf16_flops: Option<f64>,
    /// The loaded cuBLASLt's version (major·10000 + minor·100 + patch), when one loads.
    pub blas_version: Option<usize>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB, {:.1} GiB free)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors,
            gib(self.total_memory),
            gib(self.free_memory)
        )?;
        if let Some(v) = self.blas_version {
            write!(f, ", cuBLASLt {}.{}.{}", v / 10000, v / 100 % 100, v % 100)?;
        }
        Ok(())
    }
}

/// Dense bf16 peak of the GPUs we know, by name (sparsity not counted).
pub fn peak_bf16_flops(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H100") && n.contains("PCIE") {
        Some(756e12)
    } else if n.contains("H100") && n.contains("NVL") {
        Some(835e12)
    } else if n.contains("H100") || n.contains("H200") || n.contains("GH200") {
        Some(989e12)
    } else if n.contains("A100") {
        Some(312e12)
    } else {
        None
    }
}

/// True when nvcc compiled the kernels into this binary.
pub fn is_compiled() -> bool {
    kernels::COMPILED && !kernels::FATBIN.is_empty()
}

/// Fails unless the kernels were compiled in, the driver library loads and there is a device.
fn check_driver() -> Result<(), BackendError> {
    if !is_compiled() {
        return Err(BackendError::Unavailable(format!(
            "this gptk was built without CUDA kernels (nvcc was not found at build time); install nvcc with `{NVCC_INSTALL_HINT}` and rebuild"
        )));
    }
    // SAFETY: only tries to open the shared library; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(BackendError::Unavailable(
            "no NVIDIA driver on this machine (libcuda.so could not be loaded)".into(),
        ));
    }
    Ok(())
}

/// Fails unless cuBLASLt can be loaded.
pub fn check_blas() -> Result<(), BackendError> {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(BackendError::Unavailable(
            "libcublasLt.so could not be loaded: install the CUDA toolkit's cuBLAS or `pip install nvidia-cublas` \
             and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

fn device_error(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

/// The number of GPUs the driver reports.
pub fn device_count() -> Result<usize, BackendError> {
    check_driver()?;
    let count = CudaContext::device_count().map_err(|e| {
        BackendError::Unavailable(format!("the NVIDIA driver is present but reports no usable GPU ({e:?})"))
    })?;
    Ok(count.max(0) as usize)
}

/// A context on device `ordinal`, after checking the driver and the device count.
pub fn open(ordinal: usize) -> Result<Arc<CudaContext>, BackendError> {
    check_driver()?;
    let count = CudaContext::device_count().map_err(|e| {
        BackendError::Unavailable(format!("the NVIDIA driver is present but reports no usable GPU ({e:?})"))
    })?;
    if count <= 0 {
        return Err(BackendError::Unavailable("the NVIDIA driver reports no GPU".into()));
    }
    if ordinal >= count as usize {
        return Err(BackendError::Unavailable(format!("no GPU {ordinal}: this machine has {count}")));
    }
    CudaContext::new(ordinal).map_err(|e| device_error(&format!("creating a context on GPU {ordinal}"), e))
}

/// The properties of the device behind `ctx`.
pub fn describe(ctx: &CudaContext) -> Result<DeviceInfo, BackendError> {
    let name = ctx.name().map_err(|e| device_error("reading the device name", e))?;
    let compute_capability = ctx.compute_capability().map_err(|e| device_error("reading the compute capability", e))?;
    let (free_memory, total_memory) = ctx.mem_get_info().map_err(|e| device_error("reading free memory", e))?;
    let multiprocessors = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| device_error("reading the multiprocessor count", e))?;
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        peak_bf16_flops: peak_bf16_flops(&name),
        // SAFETY: the library is only asked for its version once it is known to load.
        blas_version: unsafe {
            cudarc::cublaslt::sys::is_culib_present().then(|| cudarc::cublaslt::sys::cublasLtGetVersion())
        },
        name,
        compute_capability,
        total_memory,
        free_memory,
        multiprocessors,
    })
}

/// Looks at GPU 0 without allocating anything: what `--device auto` and `gptk info` ask.
pub fn probe() -> Result<DeviceInfo, BackendError> {
    probe_device(0)
}

/// Looks at GPU `ordinal` without allocating anything.
pub fn probe_device(ordinal: usize) -> Result<DeviceInfo, BackendError> {
    let ctx = open(ordinal)?;
    describe(&ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_flops_for_known_gpus_only() {
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 NVL"), Some(835e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), None);
    }
}
