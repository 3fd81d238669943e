//! What `gptk bench` needs from the backend beyond the op set: CUDA events on the backend's one
//! stream, so that kernels are timed on the device and not through host clocks, and a
//! device-to-device copy of a tensor, which replicates benchmark inputs (L2-defeating copies of
//! one random draw) and is itself the memory-bandwidth ceiling.

use super::{CudaBackend, driver_error};
use crate::backend::Result;
use crate::model::layout::Tensor;
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
    /// arenas of the same element type and of the same length.
    pub fn copy_tensor(&mut self, dst: Tensor, src: Tensor) -> Result<()> {
        let (from, to) = (self.buffer(src.arena, false)?, self.buffer(dst.arena, false)?);
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
        // SAFETY: both spans lie inside live allocations (checked by `at`) of this context; the
        // copy is ordered on the backend's only stream like every kernel that touches them.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst_p, src_p, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying on the device", e))
    }
}
