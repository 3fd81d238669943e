//! `gptk prepare`: text files into llm.c token shards (the work is in `crate::data::prepare`).

use crate::data::prepare::{
    DEFAULT_SHARD_TOKENS, DEFAULT_TEXT_FIELD, DEFAULT_VAL_FRACTION, MANIFEST_FILE, PrepareOpts, prepare,
};
use crate::data::tokenizer::Tokenizer;
use anyhow::Result;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Files, directories (searched recursively) or glob patterns of .txt (one document per
    /// file) and .jsonl (one document per line) files.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<String>,
    /// Output directory for the shards and manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// gpt2 (BPE, 50257 tokens) or bytes (257 tokens).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Share of documents held out for validation (at least one when there are two or more).
    #[arg(long, default_value_t = DEFAULT_VAL_FRACTION)]
    val_fraction: f64,
    /// Most tokens per shard file.
    #[arg(long, default_value_t = DEFAULT_SHARD_TOKENS)]
    shard_tokens: usize,
    /// Field of each .jsonl line that holds the text.
    #[arg(long, default_value = DEFAULT_TEXT_FIELD)]
    text_field: String,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Replace shards of another tokenizer (or without a manifest) already in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(args: &PrepareArgs) -> Result<()> {
    let opts = PrepareOpts {
        inputs: args.input.clone(),
        out: args.out.clone(),
        tokenizer: Tokenizer::from_name(&args.tokenizer)?,
        val_fraction: args.val_fraction,
        shard_tokens: args.shard_tokens,
        text_field: args.text_field.clone(),
        seed: args.seed,
        force: args.force,
        progress: std::io::stderr().is_terminal(),
    };
    let m = prepare(&opts)?;
    for s in &m.skipped {
        eprintln!("warning: skipped {}: {}", s.path, s.reason);
    }
    println!(
        "{}: {} tokenizer; train {} documents, {} tokens in {} shard(s); val {} documents, {} tokens in {} shard(s)",
        args.out.display(),
        m.tokenizer,
        m.train.documents,
        m.train.tokens,
        m.train.shards.len(),
        m.val.documents,
        m.val.tokens,
        m.val.shards.len()
    );
    if m.empty_documents > 0 || !m.skipped.is_empty() {
        println!(
            "{} empty document(s) dropped, {} file(s) skipped (listed in {MANIFEST_FILE})",
            m.empty_documents,
            m.skipped.len()
        );
    }
    if m.val.documents == 0 {
        eprintln!("warning: no validation split (fewer than two documents, or --val-fraction 0)");
    }
    Ok(())
}
