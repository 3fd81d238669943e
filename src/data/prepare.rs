//! From raw text to llm.c token shards: `gptk prepare`.
//!
//! Inputs are files, directories (searched recursively, hidden entries skipped) or glob patterns.
//! In directories and patterns, `.txt` files are one document each and `.jsonl` files one
//! document per line (text in a named field); a file named on its own is read whatever its
//! extension (`.jsonl` as JSON lines, anything else as one document). Every file is read and
//! tokenized in parallel before anything is written, so bad input never leaves a half-written
//! directory. Whole documents are split into validation and training sets by a seeded shuffle,
//! and each split is written as shards `<name>_val_000000.bin`, `<name>_train_000000.bin`, …
//! (`<name>` is the output directory's name) with each document preceded by end-of-text, as
//! llm.c's own data scripts do, plus `manifest.json`. A split of N tokens becomes
//! ⌈N / shard_tokens⌉ shards of near-equal size, so no shard is a small leftover that a batch
//! cannot fill.
//!
//! Decisions on bad input:
//! - a file that is not UTF-8 is skipped, named in a warning and in the manifest (one bad file
//!   should not sink a large corpus);
//! - a `.jsonl` line that is not a JSON object with a string field is an error naming
//!   `file:line` (a wrong `--text-field` must not silently produce an empty dataset); blank lines
//!   are ignored;
//! - documents that are empty or only whitespace are dropped and counted;
//! - a path that does not exist, a directory or pattern without `.txt`/`.jsonl` files, and an
//!   input with no documents at all are errors;
//! - an output directory holding shards of another tokenizer, or shards without a manifest
//!   (llm.c data, an interrupted run), is refused unless `force`; shards of an earlier run with
//!   the same tokenizer are replaced.
//!
//! The corpus is held in memory as u16 tokens (two bytes per token, about half the size of the
//! text); for corpora beyond memory, llm.c's streaming scripts write shards that gptk reads as
//! they are.

use super::loader::split_of_shard_name;
use super::shard::write_shard;
use super::tokenizer::Tokenizer;
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The record `prepare` leaves beside the shards.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Default shard size in tokens (llm.c's fineweb shards hold 100M).
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
/// Default share of documents held out for validation.
pub const DEFAULT_VAL_FRACTION: f64 = 0.01;
/// Default JSONL field that holds a document's text.
pub const DEFAULT_TEXT_FIELD: &str = "text";
/// Stream of [`Rng::derive`] that draws the validation documents.
const SPLIT_STREAM: u64 = 0x5B11;
/// A UTF-8 byte-order mark, ignored at the start of a `.jsonl` file.
const BOM: &str = "\u{FEFF}";

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
    /// Shard file names (inside the prepared directory), in order.
    pub shards: Vec<String>,
}

/// A file left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What a prepared directory holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Tokenizer name (`Tokenizer::from_name` reads it back).
    pub tokenizer: String,
    /// V, the real vocabulary; every token in the shards is below it.
    pub vocab_size: usize,
    pub train: SplitStats,
    pub val: SplitStats,
    /// Documents dropped because they held no text.
    #[serde(default)]
    pub empty_documents: usize,
    /// Files left out, with the reason.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Input files read (skipped ones included).
    #[serde(default)]
    pub files: usize,
    /// Seed of the validation split.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub val_fraction: f64,
    /// Most tokens per shard.
    #[serde(default)]
    pub shard_tokens: usize,
    pub gptk_version: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, PrepareError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Manifest::parse(&path, &text)
    }

    /// A manifest from the text of the file `path`. Shard entries must be plain file names
    /// (the shards sit beside the manifest): a path that climbs out (`..`), is absolute or names
    /// a subdirectory is refused, so a manifest cannot make gptk read files elsewhere.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, PrepareError> {
        let bad = |msg: String| PrepareError::Input(format!("{}: {msg}", path.display()));
        let m: Manifest = serde_json::from_str(text).map_err(|e| bad(format!("not a gptk manifest ({e})")))?;
        for (split, stats) in [("train", &m.train), ("val", &m.val)] {
            for name in &stats.shards {
                let mut parts = Path::new(name).components();
                let plain = matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None));
                if !plain {
                    return Err(bad(format!("{split} shard '{name}' is not a file name in this directory")));
                }
            }
        }
        Ok(m)
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

/// Options of `gptk prepare`.
#[derive(Clone, Debug)]
pub struct PrepareOpts {
    /// Files, directories or glob patterns.
    pub inputs: Vec<String>,
    pub out: PathBuf,
    pub tokenizer: Tokenizer,
    /// Share of documents held out for validation, in [0, 1).
    pub val_fraction: f64,
    /// Most tokens per shard, at least 1.
    pub shard_tokens: usize,
    /// JSONL field holding the text.
    pub text_field: String,
    /// Seed of the validation split.
    pub seed: u64,
    /// Replace shards of another tokenizer, or without a manifest, already in `out`.
    pub force: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Whether `input` is meant as a glob pattern rather than a path.
fn is_pattern(input: &str) -> bool {
    input.contains(['*', '?', '['])
}

fn is_document_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// `.txt` and `.jsonl` files under `dir`, recursively, skipping hidden entries and not following
/// links to directories (no cycles).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PrepareError> {
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(io_err(dir))?.collect::<Result<_, _>>().map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if is_document_file(&path) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Expands files, directories and glob patterns into the files they name: sorted, each once.
pub fn collect_inputs(inputs: &[String]) -> Result<Vec<PathBuf>, PrepareError> {
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
        } else if is_pattern(input) {
            let matches = glob::glob(input)
                .map_err(|e| PrepareError::Input(format!("--input {input}: not a valid glob pattern ({e})")))?;
            for m in matches.flatten() {
                if m.is_dir() {
                    walk(&m, &mut files)?;
                } else if is_document_file(&m) && m.is_file() {
                    files.push(m);
                }
            }
        } else {
            return Err(PrepareError::Input(format!("--input {input}: no such file or directory")));
        }
        if files.len() == before {
            return Err(PrepareError::Input(format!("--input {input}: no .txt or .jsonl files there")));
        }
    }
    files.sort();
    // The same file through two spellings of its path counts once.
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(files)
}

/// One input file, tokenized.
struct FileDocs {
    /// Each document's tokens (end-of-text not included).
    docs: Vec<Vec<u16>>,
    /// Documents dropped for holding no text.
    empty: usize,
    skipped: Option<Skipped>,
}

fn to_u16(ids: Vec<u32>) -> Vec<u16> {
    // Real tokens are below V ≤ 65536, which ModelConfig and the shard format both require.
    ids.into_iter().map(|i| i as u16).collect()
}

/// Reads and tokenizes one file (see the module docs for what is skipped and what is an error).
fn read_file(path: &Path, tokenizer: &Tokenizer, text_field: &str) -> Result<FileDocs, PrepareError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let reason = format!("not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to());
            let skipped = Skipped { path: path.display().to_string(), reason };
            return Ok(FileDocs { docs: Vec::new(), empty: 0, skipped: Some(skipped) });
        }
    };
    let texts: Vec<String> =
        if path.extension().is_some_and(|e| e == "jsonl") { jsonl_texts(path, &text, text_field)? } else { vec![text] };
    let before = texts.len();
    let texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
    let empty = before - texts.len();
    let docs = texts.par_iter().map(|t| to_u16(tokenizer.encode(t))).collect();
    Ok(FileDocs { docs, empty, skipped: None })
}

/// The `text_field` strings of a `.jsonl` file's lines (`text` is the file's content, `path`
/// names it in errors): blank lines are skipped, a leading byte-order mark is ignored, any other
/// line must be a JSON object with that field as a string.
pub fn jsonl_texts(path: &Path, text: &str, text_field: &str) -> Result<Vec<String>, PrepareError> {
    let mut texts = Vec::new();
    for (i, line) in text.strip_prefix(BOM).unwrap_or(text).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let mut value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| PrepareError::Input(format!("{}: not a JSON object ({e})", at())))?;
        match value.get_mut(text_field).map(serde_json::Value::take) {
            Some(serde_json::Value::String(s)) => texts.push(s),
            _ => {
                return Err(PrepareError::Input(format!(
                    "{}: no string field '{text_field}' (choose the field with --text-field)",
                    at()
                )));
            }
        }
    }
    Ok(texts)
}

/// Shard files (llm.c's naming, either split) already in `dir`.
pub fn existing_shards(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| split_of_shard_name(n).is_some()))
        .collect();
    found.sort();
    found
}

/// Writes the documents of one split as ⌈N / shard_tokens⌉ near-equal shards, each document
/// preceded by end-of-text. Consumes the documents so memory is freed as shards are written.
fn write_split(
    dir: &Path,
    name: &str,
    split: &str,
    eot: u16,
    docs: Vec<Vec<u16>>,
    shard_tokens: usize,
) -> Result<SplitStats, PrepareError> {
    let documents = docs.len();
    let total: usize = docs.iter().map(|d| d.len() + 1).sum();
    let num_shards = total.div_ceil(shard_tokens);
    let mut stats = SplitStats { documents, tokens: total, shards: Vec::with_capacity(num_shards) };
    let mut stream = docs.into_iter().flat_map(|d| std::iter::once(eot).chain(d));
    for k in 0..num_shards {
        // Shard k holds tokens [k·N/S, (k+1)·N/S): sizes differ by at most one.
        let bound = |k: usize| (k as u128 * total as u128 / num_shards as u128) as usize;
        let size = bound(k + 1) - bound(k);
        let tokens: Vec<u16> = stream.by_ref().take(size).collect();
        let file = format!("{name}_{split}_{k:06}.bin");
        let path = dir.join(&file);
        write_shard(&path, &tokens).map_err(io_err(&path))?;
        stats.shards.push(file);
    }
    Ok(stats)
}

/// Shard name prefix for a directory: its own name.
fn shard_prefix(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty()).unwrap_or("data".into())
}

/// Refuses an output directory that holds shards it must not replace; returns the shards that
/// the new ones replace.
fn check_output_dir(opts: &PrepareOpts) -> Result<Vec<PathBuf>, PrepareError> {
    let existing = existing_shards(&opts.out);
    if existing.is_empty() || opts.force {
        return Ok(existing);
    }
    let owner = if opts.out.join(MANIFEST_FILE).is_file() { Manifest::read(&opts.out).ok() } else { None };
    let what = match owner {
        Some(m) if m.tokenizer == opts.tokenizer.name() => return Ok(existing),
        Some(m) => format!("shards of the {} tokenizer", m.tokenizer),
        None => format!("shards without a readable {MANIFEST_FILE} (llm.c data, or an interrupted prepare)"),
    };
    Err(PrepareError::Input(format!(
        "{}: already holds {what} ({} files); pass --force to replace them or choose another --out",
        opts.out.display(),
        existing.len()
    )))
}

/// `gptk prepare`: see the module documentation.
pub fn prepare(opts: &PrepareOpts) -> Result<Manifest, PrepareError> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(PrepareError::Input(format!("--val-fraction must be in [0, 1), got {}", opts.val_fraction)));
    }
    if opts.shard_tokens == 0 {
        return Err(PrepareError::Input("--shard-tokens must be at least 1".into()));
    }
    let files = collect_inputs(&opts.inputs)?;

    let total_bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
    let bar = progress_bar(opts.progress, total_bytes);
    let per_file: Vec<Result<FileDocs, PrepareError>> = files
        .par_iter()
        .map(|path| {
            let r = read_file(path, &opts.tokenizer, &opts.text_field);
            bar.inc(std::fs::metadata(path).map_or(0, |m| m.len()));
            r
        })
        .collect();
    bar.finish_and_clear();
    let (mut docs, mut skipped, mut empty_documents) = (Vec::new(), Vec::new(), 0);
    for r in per_file {
        let f = r?;
        docs.extend(f.docs);
        skipped.extend(f.skipped);
        empty_documents += f.empty;
    }
    if docs.is_empty() {
        return Err(PrepareError::Input(format!(
            "no documents with text in {} file(s) ({} skipped, {empty_documents} empty)",
            files.len(),
            skipped.len()
        )));
    }

    // Seeded choice of the validation documents; both splits keep the input order.
    let n = docs.len();
    let mut n_val = (opts.val_fraction * n as f64).round() as usize;
    if opts.val_fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    } else if n < 2 {
        n_val = 0;
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(opts.seed, SPLIT_STREAM).shuffle(&mut order);
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut val, mut train) = (Vec::with_capacity(n_val), Vec::with_capacity(n - n_val));
    for (doc, v) in docs.into_iter().zip(is_val) {
        if v { val.push(doc) } else { train.push(doc) }
    }

    let replaced = check_output_dir(opts)?;
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    // Without the old manifest, an interrupted run is recognisable as one.
    let manifest_path = opts.out.join(MANIFEST_FILE);
    if manifest_path.is_file() {
        std::fs::remove_file(&manifest_path).map_err(io_err(&manifest_path))?;
    }
    let name = shard_prefix(&opts.out);
    let eot = opts.tokenizer.eot() as u16;
    let val = write_split(&opts.out, &name, "val", eot, val, opts.shard_tokens)?;
    let train = write_split(&opts.out, &name, "train", eot, train, opts.shard_tokens)?;
    let written: HashSet<&String> = val.shards.iter().chain(&train.shards).collect();
    for old in replaced {
        if !old.file_name().and_then(|n| n.to_str()).is_some_and(|n| written.contains(&n.to_string())) {
            std::fs::remove_file(&old).map_err(io_err(&old))?;
        }
    }
    let manifest = Manifest {
        tokenizer: opts.tokenizer.name().to_string(),
        vocab_size: opts.tokenizer.vocab_size(),
        train,
        val,
        empty_documents,
        skipped,
        files: files.len(),
        seed: opts.seed,
        val_fraction: opts.val_fraction,
        shard_tokens: opts.shard_tokens,
        gptk_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_manifest(&opts.out, &manifest)?;
    Ok(manifest)
}

fn progress_bar(show: bool, total_bytes: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} tokenizing [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Writes already-split documents as a prepared directory (shards and manifest), replacing
/// what is there. Used for corpora that come split (the built-in demo corpus).
pub fn write_documents(
    dir: &Path,
    name: &str,
    tokenizer: &Tokenizer,
    train: &[String],
    val: &[String],
) -> Result<Manifest, PrepareError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let encode = |docs: &[String]| -> Vec<Vec<u16>> { docs.par_iter().map(|d| to_u16(tokenizer.encode(d))).collect() };
    let eot = tokenizer.eot() as u16;
    let val = write_split(dir, name, "val", eot, encode(val), DEFAULT_SHARD_TOKENS)?;
    let train = write_split(dir, name, "train", eot, encode(train), DEFAULT_SHARD_TOKENS)?;
    let manifest = Manifest {
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        train,
        val,
        empty_documents: 0,
        skipped: Vec::new(),
        files: 0,
        seed: 0,
        val_fraction: 0.0,
        shard_tokens: DEFAULT_SHARD_TOKENS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_near_equal_and_bounded() {
        let dir = std::env::temp_dir().join(format!("gptk-prepare-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // 10 documents of 9 tokens: 100 tokens with their end-of-text markers.
        let docs: Vec<Vec<u16>> = (0..10).map(|d| (0..9).map(|i| d * 10 + i).collect()).collect();
        let stats = write_split(&dir, "x", "train", 999, docs, 30).unwrap();
        assert_eq!((stats.documents, stats.tokens), (10, 100));
        let sizes: Vec<usize> =
            stats.shards.iter().map(|f| crate::data::shard::Shard::open(&dir.join(f)).unwrap().len()).collect();
        assert_eq!(sizes, vec![25, 25, 25, 25], "⌈100/30⌉ = 4 shards of equal size, none a leftover");
        let first = crate::data::shard::Shard::open(&dir.join(&stats.shards[0])).unwrap();
        assert_eq!((first.token(0), first.token(1), first.token(10)), (999, 0, 999));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn patterns_and_paths_are_told_apart() {
        assert!(is_pattern("data/*.txt") && is_pattern("a?.jsonl") && is_pattern("[ab].txt"));
        assert!(!is_pattern("data/brown/text"));
        let e = collect_inputs(&["/nonexistent/gptk/file.txt".into()]).unwrap_err().to_string();
        assert_eq!(e, "--input /nonexistent/gptk/file.txt: no such file or directory");
    }
}
