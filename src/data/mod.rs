//! Data: tokenizers, llm.c token shards, preparing text into shards, the training loader, MLM
//! masking, classification tasks.

pub mod loader;
pub mod mlm;
pub mod prepare;
pub mod shard;
pub mod task;
pub mod tokenizer;
