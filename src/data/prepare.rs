//! From raw text to llm.c token shards: `gptk prepare`.
//!
//! Inputs are files, directories (searched recursively) or glob patterns of `.txt` files (one
//! document each) and `.jsonl` files (one document per line, text in a named field). Whole
//! documents are split into validation and training sets by a seeded shuffle, tokenized in
//! parallel, and written as shards `<name>_val_000000.bin`, `<name>_train_000000.bin`, … with
//! each document preceded by end-of-text (as llm.c's own data scripts do), plus `manifest.json`.
//!
//! Decisions on bad input: a `.txt` file that is not UTF-8 is skipped and reported (one bad file
//! should not sink a large corpus; the manifest lists it); a `.jsonl` line that is not a JSON
//! object with a string field is an error naming `file:line` (a wrong `--text-field` must not
//! produce an empty dataset); empty documents are dropped and counted; a pattern that matches
//! nothing, and an input with no documents at all, are errors.

use super::shard::write_shard;
use super::tokenizer::Tokenizer;
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record `prepare` leaves beside the shards.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Default shard size in tokens (llm.c's fineweb shards hold 100M).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;

/// A failure while preparing or reading a dataset, naming the file or pattern.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Input(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io { path: path.to_path_buf(), source }
}

/// Counts of one split.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitStats {
    pub documents: usize,
    pub tokens: usize,
    pub shards: Vec<String>,
}

/// A file left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What a prepared directory holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub tokenizer: String,
    pub vocab_size: usize,
    pub train: SplitStats,
    pub val: SplitStats,
    #[serde(default)]
    pub empty_documents: usize,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    pub gptk_version: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, PrepareError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map_err(|e| PrepareError::Input(format!("{}: not a gptk manifest ({e})", path.display())))
    }

    /// The tokenizer of a data directory: its manifest's, or GPT-2 for a directory of llm.c
    /// shards without one.
    pub fn tokenizer_of(dir: &Path) -> Result<Tokenizer, PrepareError> {
        if dir.join(MANIFEST_FILE).is_file() {
            let m = Manifest::read(dir)?;
            return Tokenizer::from_name(&m.tokenizer)
                .map_err(|e| PrepareError::Input(format!("{}: {e}", dir.join(MANIFEST_FILE).display())));
        }
        if !dir.is_dir() {
            return Err(PrepareError::Input(format!("{}: no such data directory", dir.display())));
        }
        Ok(Tokenizer::gpt2())
    }
}

/// One document's text and where it came from.
struct Document {
    text: String,
}

/// Options of `gptk prepare`.
#[derive(Clone, Debug)]
pub struct PrepareOpts {
    pub inputs: Vec<String>,
    pub out: PathBuf,
    pub tokenizer: Tokenizer,
    pub val_fraction: f64,
    pub shard_tokens: usize,
    pub text_field: String,
    pub seed: u64,
    /// Replace shards already in `out`.
    pub force: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// Expands files, directories and glob patterns into the `.txt` / `.jsonl` files they name,
/// sorted, without duplicates.
pub fn collect_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, PrepareError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PrepareError> {
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if is_document_file(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    if inputs.is_empty() {
        return Err(PrepareError::Input("no --input given".into()));
    }
    let mut files = Vec::new();
    for input in inputs {
        let path = Path::new(input);
        let before = files.len();
        if path.is_dir() {
            walk(path, &mut files)?;
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else {
            let matches = glob::glob(input)
                .map_err(|e| PrepareError::Input(format!("--input {input}: not a valid glob ({e})")))?;
            for m in matches.flatten() {
                if m.is_dir() {
                    walk(&m, &mut files)?;
                } else if is_document_file(&m) {
                    files.push(m);
                }
            }
        }
        if files.len() == before {
            return Err(PrepareError::Input(format!("--input {input}: no .txt or .jsonl files there")));
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn is_document_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl"))
}

/// Reads the documents of `files`. Returns the documents and the skipped files.
fn read_documents(files: &[PathBuf], text_field: &str) -> Result<(Vec<Document>, Vec<Skipped>), PrepareError> {
    let per_file: Vec<Result<(Vec<Document>, Option<Skipped>), PrepareError>> = files
        .par_iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(io_err(path))?;
            let text = match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    let reason = format!("not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to());
                    return Ok((Vec::new(), Some(Skipped { path: path.display().to_string(), reason })));
                }
            };
            if path.extension().is_some_and(|e| e == "jsonl") {
                let mut docs = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let at = || format!("{}:{}", path.display(), i + 1);
                    let value: serde_json::Value = serde_json::from_str(line)
                        .map_err(|e| PrepareError::Input(format!("{}: not JSON ({e})", at())))?;
                    let field = value.get(text_field).and_then(|v| v.as_str()).ok_or_else(|| {
                        PrepareError::Input(format!(
                            "{}: no string field '{text_field}' (choose the field with --text-field)",
                            at()
                        ))
                    })?;
                    docs.push(Document { text: field.to_string() });
                }
                Ok((docs, None))
            } else {
                Ok((vec![Document { text }], None))
            }
        })
        .collect();
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    for r in per_file {
        let (d, s) = r?;
        docs.extend(d);
        skipped.extend(s);
    }
    Ok((docs, skipped))
}

/// Shard files of a split already present in `dir`.
pub fn existing_shards(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".bin") && (name.contains("_train_") || name.contains("_val_"))
        })
        .collect();
    found.sort();
    found
}

/// Tokenizes documents in parallel (order kept) and writes them as shards of at most
/// `shard_tokens` tokens, each document preceded by end-of-text. Returns the split's counts.
fn write_split(
    dir: &Path,
    name: &str,
    split: &str,
    tokenizer: &Tokenizer,
    docs: &[&str],
    shard_tokens: usize,
    bar: &indicatif::ProgressBar,
) -> Result<SplitStats, PrepareError> {
    let mut stats = SplitStats { documents: docs.len(), ..Default::default() };
    let mut buffer: Vec<u16> = Vec::with_capacity(shard_tokens.min(1 << 26));
    let eot = tokenizer.eot() as u16;
    let flush = |buffer: &mut Vec<u16>, stats: &mut SplitStats| -> Result<(), PrepareError> {
        let file = format!("{name}_{split}_{:06}.bin", stats.shards.len());
        let path = dir.join(&file);
        write_shard(&path, buffer).map_err(io_err(&path))?;
        stats.tokens += buffer.len();
        stats.shards.push(file);
        buffer.clear();
        Ok(())
    };
    // Tokenize a block of documents at a time so memory stays bounded on big corpora.
    const DOCS_PER_BLOCK: usize = 4096;
    for block in docs.chunks(DOCS_PER_BLOCK) {
        let encoded: Vec<Vec<u32>> = block.par_iter().map(|d| tokenizer.encode(d)).collect();
        for ids in encoded {
            let mut doc = Vec::with_capacity(ids.len() + 1);
            doc.push(eot);
            doc.extend(ids.iter().map(|&i| i as u16));
            let mut rest = &doc[..];
            while !rest.is_empty() {
                let room = shard_tokens - buffer.len();
                let take = room.min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buffer.len() == shard_tokens {
                    flush(&mut buffer, &mut stats)?;
                }
            }
            bar.inc(1);
        }
    }
    if !buffer.is_empty() {
        flush(&mut buffer, &mut stats)?;
    }
    Ok(stats)
}

/// Writes already-split documents as a prepared directory (shards and manifest).
pub fn write_documents(
    dir: &Path,
    name: &str,
    tokenizer: &Tokenizer,
    train: &[String],
    val: &[String],
) -> Result<Manifest, PrepareError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let bar = indicatif::ProgressBar::hidden();
    let val: Vec<&str> = val.iter().map(String::as_str).collect();
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    let val = write_split(dir, name, "val", tokenizer, &val, DEFAULT_SHARD_TOKENS, &bar)?;
    let train = write_split(dir, name, "train", tokenizer, &train, DEFAULT_SHARD_TOKENS, &bar)?;
    let manifest = Manifest {
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        train,
        val,
        empty_documents: 0,
        skipped: Vec::new(),
        gptk_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), PrepareError> {
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    crate::checkpoint::atomic::write_bytes(&path, text.as_bytes()).map_err(io_err(&path))
}

/// `gptk prepare`: see the module documentation.
pub fn prepare(opts: &PrepareOpts) -> Result<Manifest, PrepareError> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(PrepareError::Input(format!("--val-fraction must be in [0, 1), got {}", opts.val_fraction)));
    }
    if opts.shard_tokens == 0 {
        return Err(PrepareError::Input("--shard-tokens must be at least 1".into()));
    }
    let existing = existing_shards(&opts.out);
    if !existing.is_empty() {
        if !opts.force {
            let what = match Manifest::read(&opts.out) {
                Ok(m) if m.tokenizer != opts.tokenizer.name() => format!("shards of the {} tokenizer", m.tokenizer),
                _ => "shards".to_string(),
            };
            return Err(PrepareError::Input(format!(
                "{}: already holds {what} ({} files); pass --force to replace them or choose another --out",
                opts.out.display(),
                existing.len()
            )));
        }
        for f in &existing {
            std::fs::remove_file(f).map_err(io_err(f))?;
        }
    }
    let files = collect_inputs(&opts.inputs)?;
    let (docs, skipped) = read_documents(&files, &opts.text_field)?;
    let before = docs.len();
    let docs: Vec<Document> = docs.into_iter().filter(|d| !d.text.trim().is_empty()).collect();
    let empty_documents = before - docs.len();
    if docs.is_empty() {
        return Err(PrepareError::Input(format!(
            "no documents with text in {} file(s) ({} skipped, {empty_documents} empty)",
            files.len(),
            skipped.len()
        )));
    }
    // Seeded shuffle of document indices; the first n_val are validation, kept in input order.
    let mut order: Vec<usize> = (0..docs.len()).collect();
    Rng::derive(opts.seed, 0x5B11).shuffle(&mut order);
    let mut n_val = (opts.val_fraction * docs.len() as f64).round() as usize;
    if opts.val_fraction > 0.0 && n_val == 0 && docs.len() >= 2 {
        n_val = 1;
    }
    let mut is_val = vec![false; docs.len()];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let val: Vec<&str> = docs.iter().zip(&is_val).filter(|(_, v)| **v).map(|(d, _)| d.text.as_str()).collect();
    let train: Vec<&str> = docs.iter().zip(&is_val).filter(|(_, v)| !**v).map(|(d, _)| d.text.as_str()).collect();

    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or("data".into());
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(docs.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} tokenizing [{bar:40}] {pos}/{len} documents ({per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let val = write_split(&opts.out, &name, "val", &opts.tokenizer, &val, opts.shard_tokens, &bar)?;
    let train = write_split(&opts.out, &name, "train", &opts.tokenizer, &train, opts.shard_tokens, &bar)?;
    bar.finish_and_clear();
    let manifest = Manifest {
        tokenizer: opts.tokenizer.name().to_string(),
        vocab_size: opts.tokenizer.vocab_size(),
        train,
        val,
        empty_documents,
        skipped,
        gptk_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_manifest(&opts.out, &manifest)?;
    Ok(manifest)
}
