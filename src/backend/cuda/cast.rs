//! Checked conversions at the launch boundary: sizes stay `usize` everywhere else and become
//! the kernels' `int`/`long long` only here, with an error naming the value that did not fit.

use crate::backend::BackendError;

/// `x` as a kernel `int`.
pub fn to_i32(x: usize, what: &str) -> Result<i32, BackendError> {
    i32::try_from(x)
        .map_err(|_| BackendError::Device(format!("{what} = {x} does not fit a kernel int (max {})", i32::MAX)))
}

/// `x` as a kernel `long long`.
pub fn to_i64(x: usize, what: &str) -> Result<i64, BackendError> {
    i64::try_from(x).map_err(|_| BackendError::Device(format!("{what} = {x} does not fit a kernel long long")))
}

/// `x` as a grid or block dimension.
pub fn to_u32(x: usize, what: &str) -> Result<u32, BackendError> {
    u32::try_from(x)
        .map_err(|_| BackendError::Device(format!("{what} = {x} exceeds a launch dimension (max {})", u32::MAX)))
}

/// The most blocks a grid's x dimension may have.
pub const MAX_GRID_X: usize = (1 << 31) - 1;

/// Blocks of `block` threads covering `threads` threads (at least one block, at most
/// [`MAX_GRID_X`]).
pub fn blocks_for(threads: usize, block: u32, what: &str) -> Result<u32, BackendError> {
    let blocks = threads.div_ceil(block as usize).max(1);
    if blocks > MAX_GRID_X {
        return Err(BackendError::Device(format!("{what}: {blocks} blocks, past a grid's {MAX_GRID_X}")));
    }
    to_u32(blocks, what)
}
