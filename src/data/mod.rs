//! Data: llm.c token shards and MLM masking.

pub mod mlm;
pub mod shard;
