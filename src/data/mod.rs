//! Data: llm.c token shards.

pub mod shard;
