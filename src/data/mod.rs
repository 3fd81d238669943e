//! Data: from text to training batches (see `docs/data.md`).
//!
//! - [`tokenizer`]: GPT-2 BPE and bytes, with the special tokens in the vocabulary padding;
//! - [`prepare`]: text files into shards and a manifest (`gptk prepare`);
//! - [`shard`]: llm.c's token shard format, read memory-mapped and written atomically;
//! - [`loader`]: windows of B·T + 1 tokens, shuffled per epoch, split across ranks, resumable;
//! - [`mlm`]: masked-language-model batches;
//! - [`task`]: classification tasks for fine-tuning.

pub mod loader;
pub mod mlm;
pub mod prepare;
pub mod shard;
pub mod task;
pub mod tokenizer;
