//! Training: the learning-rate schedule, checkpoints with exact resume, and the loop.
//!
//! [`train`] is written once for every backend. Each optimizer step zeroes the gradients,
//! accumulates `accum` micro-batches (each weighted 1/accum), clips the global norm, and takes
//! one AdamW step; validation, samples and checkpoints happen between steps. Everything the
//! step depends on (parameters, moments, loader position, RNG) is in the checkpoint, so a run
//! interrupted and resumed produces the same losses as one that was not (bitwise on the CPU).

pub mod checkpoint;
pub mod config;
pub mod finetune;
pub mod lr;
pub mod run;
