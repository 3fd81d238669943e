//! Data-parallel collectives between GPUs through NCCL (loaded at run time, like the CUDA
//! libraries): the ZeRO-1 exchange of the training step, on the backend's own stream.
//!
//! - gradients: one in-place `ncclReduceScatter` with `ncclAvg` over the whole gradient arena
//!   (in its storage type, bf16 or f32), leaving each rank the mean of its own shard;
//! - parameters: one in-place `ncclAllGather` of the storage copy after each rank's AdamW
//!   updated its shard;
//! - optimizer state (master weights, m, v): gathered only before a checkpoint or a sample;
//! - host scalars (loss, squared norm, stop flag): an f64 `ncclAllReduce` through a small device
//!   buffer.
//!
//! The arena is padded so the shards are equal (`ParamLayout::padded_total`), as NCCL's
//! reduce-scatter and all-gather require.

use super::{BYTES_PER_F64, CudaBackend, DeviceBuffer, driver_error};
use crate::backend::{BackendError, Precision, Result};
use cudarc::nccl::{result, sys};

/// A communicator between the ranks of a job, one GPU each.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    pub rank: usize,
    pub world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one at a time; the backend owning it
// is used by one thread at a time (it is `Send`, not `Sync`).
unsafe impl Send for NcclComm {}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by comm_init_rank and is destroyed once.
        unsafe {
            let _ = result::comm_destroy(self.comm);
        }
    }
}

/// Bytes of NCCL's unique id, the token rank 0 makes and every rank needs.
pub const NCCL_ID_BYTES: usize = 128;

fn nccl_error(what: &str, e: result::NcclError) -> BackendError {
    BackendError::Device(format!("NCCL, {what}: {:?}", e.0))
}

/// Checks libnccl can be loaded (a clear error instead of the loader's panic).
pub fn check_nccl() -> Result<()> {
    // SAFETY: only tries to open the library.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(BackendError::Unavailable(
            "NCCL could not be loaded: gptk opens libnccl.so, while NCCL's runtime package and the nvidia-nccl-cu13 \
             wheel ship only libnccl.so.2; link it (ln -s <its folder>/libnccl.so.2 <a folder>/libnccl.so) in a \
             folder on LD_LIBRARY_PATH, or install NCCL's development package"
                .into(),
        ))
    }
}

/// A fresh unique id (rank 0 makes it and sends it to the others).
pub fn new_id() -> Result<Vec<u8>> {
    check_nccl()?;
    let id = result::get_uniqueid().map_err(|e| nccl_error("making the unique id", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

impl CudaBackend {
    /// Joins the communicator of `world` ranks identified by `id` (from [`new_id`] on rank 0) as
    /// `rank`. Every rank must call it; it returns when all have.
    pub fn with_nccl(mut self, id: &[u8], rank: usize, world: usize) -> Result<Self> {
        check_nccl()?;
        if id.len() != NCCL_ID_BYTES {
            return Err(BackendError::Device(format!("an NCCL id has {NCCL_ID_BYTES} bytes, got {}", id.len())));
        }
        let mut raw = sys::ncclUniqueId { internal: [0; NCCL_ID_BYTES] };
        for (d, &s) in raw.internal.iter_mut().zip(id) {
            *d = s as core::ffi::c_char;
        }
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the context", e))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: comm is written by NCCL on success; nranks and rank are in range (checked by
        // the launcher environment) and the context of this GPU is current.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world as i32, raw, rank as i32)
                .map_err(|e| nccl_error(&format!("joining as rank {rank} of {world}"), e))?;
            comm.assume_init()
        };
        self.nccl = Some(NcclComm { comm, rank, world });
        Ok(self)
    }

    fn storage_type(&self) -> sys::ncclDataType_t {
        match self.precision {
            Precision::Bf16 => sys::ncclDataType_t::ncclBfloat16,
            Precision::F32 => sys::ncclDataType_t::ncclFloat32,
        }
    }

    /// In-place all-gather of `shard_len`-element shards of `buf`.
    fn gather_buffer(&self, buf: &DeviceBuffer, shard_len: usize, ty: sys::ncclDataType_t, what: &str) -> Result<()> {
        let Some(n) = self.nccl.as_ref() else { return Ok(()) };
        let all = buf.at(0, shard_len * n.world)?;
        let mine = buf.at(n.rank * shard_len, shard_len)?;
        // SAFETY: both spans are inside `buf` (checked); the send buffer is the receive buffer's
        // own shard, NCCL's in-place form; the stream is this backend's.
        unsafe {
            result::all_gather(mine as *const _, all as *mut _, shard_len, ty, n.comm, self.stream.cu_stream() as _)
                .map_err(|e| nccl_error(&format!("gathering {what}"), e))?;
        }
        Ok(())
    }

    pub(super) fn nccl_rank_world(&self) -> (usize, usize) {
        self.nccl.as_ref().map_or((0, 1), |n| (n.rank, n.world))
    }

    pub(super) fn nccl_reduce_scatter_grads(&mut self, shard_len: usize) -> Result<()> {
        let Some(n) = self.nccl.as_ref() else { return Ok(()) };
        let all = self.grads.at(0, shard_len * n.world)?;
        let mine = self.grads.at(n.rank * shard_len, shard_len)?;
        // SAFETY: in-place reduce-scatter: the receive span is this rank's shard of the send
        // buffer, both inside the gradient arena (checked).
        unsafe {
            result::reduce_scatter(
                all as *const _,
                mine as *mut _,
                shard_len,
                self.storage_type(),
                sys::ncclRedOp_t::ncclAvg,
                n.comm,
                self.stream.cu_stream() as _,
            )
            .map_err(|e| nccl_error("averaging the gradients", e))?;
        }
        Ok(())
    }

    pub(super) fn nccl_all_gather_params(&mut self, shard_len: usize) -> Result<()> {
        self.gather_buffer(&self.params, shard_len, self.storage_type(), "the parameters")
    }

    pub(super) fn nccl_all_gather_optimizer_state(&mut self, shard_len: usize) -> Result<()> {
        let f32_type = sys::ncclDataType_t::ncclFloat32;
        if let Some(master) = self.master.as_ref() {
            self.gather_buffer(master, shard_len, f32_type, "the master weights")?;
        }
        self.gather_buffer(&self.opt_m, shard_len, f32_type, "the AdamW moments")?;
        self.gather_buffer(&self.opt_v, shard_len, f32_type, "the AdamW moments")
    }

    pub(super) fn nccl_all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        let Some(n) = self.nccl.as_ref() else { return Ok(()) };
        if values.is_empty() {
            return Ok(());
        }
        let buf = &mut self.scratch.norm;
        if values.len() > buf.elems {
            return Err(BackendError::Device(format!(
                "{} values to sum over ranks, room for {}",
                values.len(),
                buf.elems
            )));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.stream
            .memcpy_htod(&bytes, &mut buf.mem.slice_mut(0..bytes.len()))
            .map_err(|e| driver_error("uploading values to sum", e))?;
        let p = buf.at(0, values.len())?;
        // SAFETY: in-place all-reduce of values.len() f64 inside the norm scratch (checked).
        unsafe {
            result::all_reduce(
                p as *const _,
                p as *mut _,
                values.len(),
                sys::ncclDataType_t::ncclFloat64,
                sys::ncclRedOp_t::ncclSum,
                n.comm,
                self.stream.cu_stream() as _,
            )
            .map_err(|e| nccl_error("summing values over the ranks", e))?;
        }
        let mut out = vec![0u8; bytes.len()];
        self.stream
            .memcpy_dtoh(&buf.mem.slice(0..out.len()), &mut out)
            .map_err(|e| driver_error("reading summed values", e))?;
        self.stream.synchronize().map_err(|e| driver_error("summing values over the ranks", e))?;
        for (v, b) in values.iter_mut().zip(out.chunks_exact(BYTES_PER_F64)) {
            *v = f64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(())
    }
}
