//! gptk: pretraining and fine-tuning of GPT-style language models, on NVIDIA GPUs through
//! handwritten CUDA kernels and on the CPU through a reference implementation of every op.
//!
//! The crate is organised as the model is run:
//! - [`model`]: shape ([`model::config`]), memory plan ([`model::layout`]), and the forward and
//!   backward schedule ([`model::schedule`]) written once over the [`backend::Backend`] trait;
//! - [`backend`]: the op set, with the CPU reference ([`backend::cpu`]) and the GPU backend
//!   ([`backend::cuda`]);
//! - [`check`]: every GPU kernel and a whole training step against the CPU reference;
//! - [`bench`]: kernels timed on the GPU against the device's ceilings (and PyTorch's numbers);
//! - [`checkpoint`]: Hugging Face GPT-2 safetensors in and out;
//! - [`data`]: tokenizers, llm.c token shards, `prepare`, the training loader, MLM masking,
//!   classification task files;
//! - [`train`]: the training loop, learning-rate schedule, checkpoints with exact resume, and
//!   GPT-1-style fine-tuning;
//! - [`generate`]: sampling with a key/value cache.

pub mod backend;
pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod dist;
pub mod generate;
pub mod model;
pub mod plot;
pub mod rng;
pub mod train;
