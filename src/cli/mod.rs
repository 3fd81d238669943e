//! Subcommands of the `gptk` binary: each file holds one command's arguments and its run
//! function; the work itself lives in the library.

pub mod check;
pub mod eval;
