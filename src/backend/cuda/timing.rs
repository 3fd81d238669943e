//! What `gptk bench` needs from the backend beyond the op set: CUDA events on the backend's one
//! stream, so that kernels are timed on the device and not through host clocks, and
//! device-to-device copies of a tensor, which replicate benchmark inputs (L2-defeating copies of
//! one random draw) and are themselves the memory-bandwidth ceiling. The parameter arena has two
//! copies in bf16 storage (the bf16 parameters and the f32 master weights AdamW reads), so each
//! has its copy.

use super::{CudaBackend, driver_error};
use crate::backend::Result;
use crate::model::layout::{Arena, Tensor};
use cudarc::driver::CudaEvent;
use cudarc::driver::sys::CUevent_flags;

impl CudaBackend {
    /// An event with timing enabled, recorded on the backend's stream now: the time between two
    /// such events (`start.elapsed_ms(&end)`, which waits for both) is device time.
    pub fn record_event(&self) -> Result<CudaEvent> {
        let event = self
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver_error("creating a timing event", e))?;
        event.record(&self.stream).map_err(|e| driver_error("recording a timing event", e))?;
        Ok(event)
    }

    /// Copies `src` into `dst` on the device (asynchronously, in stream order). Both must be in
    /// arenas of the same element type and of the same length. For `Params` this copies the
    /// storage copy (the bf16 parameters in bf16), not the master weights.
    pub fn copy_tensor(&mut self, dst: Tensor, src: Tensor) -> Result<()> {
        self.copy_between(dst, src, false)
    }

    /// Copies `src` into `dst`, both spans of the parameter arena, within its f32 master weights
    /// (the parameters themselves in f32 storage), in stream order.
    pub fn copy_master(&mut self, dst: Tensor, src: Tensor) -> Result<()> {
        if src.arena != Arena::Params || dst.arena != Arena::Params {
            return Err(crate::backend::BackendError::Device(format!(
                "master weights live in the parameter arena, not {:?} → {:?}",
                src.arena, dst.arena
            )));
        }
        self.copy_between(dst, src, true)
    }

    fn copy_between(&mut self, dst: Tensor, src: Tensor, master: bool) -> Result<()> {
        let (from, to) = (self.buffer(src.arena, master)?, self.buffer(dst.arena, master)?);
        if from.elem_bytes != to.elem_bytes || src.len != dst.len {
            return Err(crate::backend::BackendError::Device(format!(
                "copy of {} elements of {} bytes into {} of {} bytes",
                src.len, from.elem_bytes, dst.len, to.elem_bytes
            )));
        }
        if src.overlaps(dst) {
            return Err(crate::backend::BackendError::Device(format!(
                "copy between overlapping spans {src:?} and {dst:?}"
            )));
        }
        let (src_p, dst_p) = (from.at(src.offset, src.len)?, to.at(dst.offset, dst.len)?);
        let bytes = src.len * from.elem_bytes;
        // The raw call below does not make the context current, as cudarc's own calls do.
        self.ctx.bind_to_thread().map_err(|e| driver_error("binding the context", e))?;
        // SAFETY: both spans lie inside live allocations (checked by `at`) of this context; the
        // copy is ordered on the backend's only stream like every kernel that touches them.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst_p, src_p, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying on the device", e))
    }
}
