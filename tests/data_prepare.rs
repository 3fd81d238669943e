//! `gptk prepare` and its library: round trips, shard layout, decisions on bad input.

use gptk::data::prepare::{Manifest, PrepareOpts, prepare};
use gptk::data::shard::Shard;
use gptk::data::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-prepare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(inputs: &[&Path], out: &Path, tokenizer: Tokenizer) -> PrepareOpts {
    PrepareOpts {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        out: out.to_path_buf(),
        tokenizer,
        val_fraction: 0.0,
        shard_tokens: 1_000_000,
        text_field: "text".into(),
        seed: 1,
        force: false,
        progress: false,
    }
}

/// All tokens of a split, shards in order.
fn tokens(dir: &Path, m: &[String]) -> Vec<u32> {
    m.iter()
        .flat_map(|f| {
            let s = Shard::open(&dir.join(f)).unwrap();
            (0..s.len()).map(move |i| s.token(i) as u32)
        })
        .collect()
}

const DOCS: [&str; 3] =
    ["First document: plain ASCII.\n", "Zweites Dokument — äöü ß, 日本語, 🦀🦀.", "third\n\nwith blank lines\n"];

#[test]
fn prepare_then_decode_gives_back_the_text() {
    for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
        let dir = temp_dir(tok.name());
        let input = dir.join("in");
        std::fs::create_dir_all(&input).unwrap();
        for (i, d) in DOCS.iter().enumerate() {
            std::fs::write(input.join(format!("{i}.txt")), d).unwrap();
        }
        let out = dir.join("out");
        let mut o = opts(&[&input], &out, tok);
        o.shard_tokens = 7; // many small shards: documents cross shard boundaries
        let m = prepare(&o).unwrap();
        assert_eq!(m.train.documents, 3);
        assert!(m.train.shards.len() > 3);
        let ids = tokens(&out, &m.train.shards);
        assert_eq!(ids.len(), m.train.tokens);
        let eot = tok.eot();
        let docs: Vec<String> = ids.split(|&i| i == eot).skip(1).map(|d| tok.decode(d)).collect();
        assert_eq!(docs, DOCS, "{}", tok.name());
        assert_eq!(Manifest::read(&out).unwrap(), m);
        assert_eq!(Manifest::tokenizer_of(&out).unwrap().name(), tok.name());
    }
}

#[test]
fn jsonl_globs_and_the_validation_split() {
    let dir = temp_dir("jsonl");
    let lines: String = (0..50).map(|i| format!("{{\"body\": \"document number {i}\", \"id\": {i}}}\n")).collect();
    std::fs::write(dir.join("a.jsonl"), &lines).unwrap();
    std::fs::write(dir.join("b.jsonl"), "{\"body\": \"one more\"}\n\n").unwrap();
    let out = dir.join("out");
    let pattern = dir.join("*.jsonl");
    let mut o = opts(&[&pattern], &out, Tokenizer::bytes());
    o.text_field = "body".into();
    o.val_fraction = 0.1;
    let m = prepare(&o).unwrap();
    assert_eq!((m.train.documents, m.val.documents), (46, 5));
    let docs_of = |shards: &[String]| -> Vec<String> {
        let ids = tokens(&out, shards);
        ids.split(|&i| i == Tokenizer::bytes().eot()).skip(1).map(|d| Tokenizer::bytes().decode(d)).collect()
    };
    let (val, train) = (docs_of(&m.val.shards), docs_of(&m.train.shards));
    for i in 0..50 {
        let doc = format!("document number {i}");
        assert!(val.contains(&doc) != train.contains(&doc), "document {i} is in exactly one split");
    }
    // Same seed, same split; another seed, another split.
    let again = prepare(&PrepareOpts { out: dir.join("again"), ..o.clone() }).unwrap();
    assert_eq!(tokens(&dir.join("again"), &again.val.shards), tokens(&out, &m.val.shards));
    let other = prepare(&PrepareOpts { out: dir.join("other"), seed: 2, ..o }).unwrap();
    assert_ne!(tokens(&dir.join("other"), &other.val.shards), tokens(&out, &m.val.shards));
}

#[test]
fn bad_input_is_reported_or_skipped_as_documented() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    // A pattern matching nothing.
    let e = prepare(&opts(&[&dir.join("*.txt")], &out, Tokenizer::bytes())).unwrap_err().to_string();
    assert!(e.contains("no .txt or .jsonl files"), "{e}");
    // A JSONL line without the field names file and line.
    std::fs::write(dir.join("x.jsonl"), "{\"text\": \"ok\"}\n{\"other\": 1}\n").unwrap();
    let e = prepare(&opts(&[&dir.join("x.jsonl")], &out, Tokenizer::bytes())).unwrap_err().to_string();
    assert!(e.contains("x.jsonl:2") && e.contains("'text'"), "{e}");
    // Non-UTF-8 text is skipped and listed; empty documents are counted.
    std::fs::write(dir.join("good.txt"), "fine text").unwrap();
    std::fs::write(dir.join("latin1.txt"), [0x63, 0x61, 0x66, 0xE9]).unwrap();
    std::fs::write(dir.join("empty.txt"), "  \n").unwrap();
    let files = [dir.join("good.txt"), dir.join("latin1.txt"), dir.join("empty.txt")];
    let inputs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let m = prepare(&opts(&inputs, &out, Tokenizer::bytes())).unwrap();
    assert_eq!((m.train.documents, m.empty_documents, m.skipped.len()), (1, 1, 1));
    assert!(m.skipped[0].path.ends_with("latin1.txt") && m.skipped[0].reason.contains("UTF-8"));
    // Shards already there: refused unless --force, naming the other tokenizer.
    let e = prepare(&opts(&inputs, &out, Tokenizer::gpt2())).unwrap_err().to_string();
    assert!(e.contains("already holds shards of the bytes tokenizer") && e.contains("--force"), "{e}");
    let forced = prepare(&PrepareOpts { force: true, ..opts(&inputs, &out, Tokenizer::gpt2()) }).unwrap();
    assert_eq!(forced.tokenizer, "gpt2");
    // Nothing but empty documents.
    let e = prepare(&opts(&[&dir.join("empty.txt")], &dir.join("out2"), Tokenizer::bytes())).unwrap_err().to_string();
    assert!(e.contains("no documents with text"), "{e}");
}

#[test]
fn cli_prepares_and_fails_cleanly() {
    let dir = temp_dir("cli");
    std::fs::write(dir.join("t.txt"), "some text for the command line").unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).current_dir(&dir).output().unwrap();
    let ok = run(&["prepare", "--input", "t.txt", "--out", "d", "--tokenizer", "bytes"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("train 1 documents, 31 tokens"));
    for (args, needle) in [
        (vec!["prepare", "--input", "missing/*.txt", "--out", "e"], "no .txt or .jsonl files"),
        (vec!["prepare", "--input", "t.txt", "--out", "d"], "already holds shards"),
        (vec!["prepare", "--input", "t.txt", "--out", "f", "--tokenizer", "llama"], "unknown tokenizer 'llama'"),
        (
            vec!["prepare", "--input", "t.txt", "--out", "g", "--val-fraction", "1.5"],
            "--val-fraction must be in [0, 1)",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
