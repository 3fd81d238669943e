//! Build script: embeds the demo corpus (the project's own sources and docs) so that `gptk train`
//! with no data has something to learn from.

use std::path::{Path, PathBuf};

/// Files of these kinds under these folders make up the built-in corpus.
const CORPUS_DIRS: &[&str] = &["src", "docs", "kernels", "scripts"];
const CORPUS_EXTENSIONS: &[&str] = &["rs", "md", "cu", "cuh", "sh", "py"];
const CORPUS_FILES: &[&str] = &["README.md"];

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| CORPUS_EXTENSIONS.contains(&e)) {
            out.push(path);
        }
    }
}

/// Writes OUT_DIR/corpus.txt: every corpus file, sorted by path, each preceded by a one-line
/// header naming it and separated by a NUL byte (the trainer turns NULs into end-of-text).
fn embed_corpus(out_dir: &Path) {
    let mut files: Vec<PathBuf> = CORPUS_FILES.iter().map(PathBuf::from).filter(|p| p.is_file()).collect();
    for dir in CORPUS_DIRS {
        println!("cargo:rerun-if-changed={dir}");
        collect(Path::new(dir), &mut files);
    }
    for f in CORPUS_FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    files.sort();
    let mut corpus = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        corpus.extend_from_slice(format!("// file: {}\n", f.display()).as_bytes());
        corpus.extend_from_slice(text.replace('\0', "").as_bytes());
        corpus.push(0);
    }
    std::fs::write(out_dir.join("corpus.txt"), corpus).expect("write corpus");
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    embed_corpus(&out_dir);
}
