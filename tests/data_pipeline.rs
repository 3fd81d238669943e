//! `gptk prepare` end to end: text in, shards and manifest out, decoded back to the same text,
//! loaded by the training loader; every documented decision on bad input, through the library
//! and through the binary.

use gptk::data::loader::{Loader, Split};
use gptk::data::prepare::{MANIFEST_FILE, Manifest, PrepareOpts, prepare};
use gptk::data::shard::{Shard, write_shard};
use gptk::data::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-data-pipeline-{name}-{}", std::process::id()));
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

/// The documents of a split, decoded: the shards concatenated, cut at end-of-text.
fn documents(dir: &Path, shards: &[String], tok: Tokenizer) -> Vec<String> {
    let ids: Vec<u32> = shards
        .iter()
        .flat_map(|f| {
            let s = Shard::open(&dir.join(f)).unwrap();
            (0..s.len()).map(move |i| s.token(i) as u32)
        })
        .collect();
    assert_eq!(ids.first(), Some(&tok.eot()), "a split starts with end-of-text");
    ids.split(|&i| i == tok.eot()).skip(1).map(|d| tok.decode(d)).collect()
}

fn gptk(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).current_dir(dir).output().unwrap()
}

#[test]
fn prepared_text_decodes_back_to_the_input_for_both_tokenizers() {
    let texts = [
        "Plain ASCII, with a final newline.\n",
        "Mehrbyte: äöü ß — 日本語 — 🦀 — e\u{301}\r\nCRLF kept as it is.",
        "  leading and trailing whitespace  \n\n\n",
    ];
    let jsonl_texts = ["première ligne « guillemets »", "second \"quoted\" line\twith a tab", "ℝ∑∫ 数学"];
    for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
        let dir = temp_dir(&format!("roundtrip-{}", tok.name()));
        let input = dir.join("in");
        std::fs::create_dir_all(input.join("nested/deeper")).unwrap();
        std::fs::write(input.join("a.txt"), texts[0]).unwrap();
        std::fs::write(input.join("nested/b.txt"), texts[1]).unwrap();
        std::fs::write(input.join("nested/deeper/c.txt"), texts[2]).unwrap();
        let lines: String =
            jsonl_texts.iter().map(|t| format!("{}\n", serde_json::json!({"id": 1, "text": t}))).collect();
        std::fs::write(input.join("nested/d.jsonl"), lines).unwrap();
        std::fs::write(input.join("ignored.md"), "not a document file").unwrap();
        std::fs::write(input.join(".hidden.txt"), "hidden files are skipped").unwrap();
        let out = dir.join("out");
        let mut o = opts(&[&input], &out, tok);
        o.shard_tokens = 9; // documents cross shard boundaries
        let m = prepare(&o).unwrap();
        // Files sorted by path: a.txt, nested/b.txt, nested/d.jsonl (its lines in order), then
        // nested/deeper/c.txt.
        let expected: Vec<&str> = [texts[0], texts[1]].into_iter().chain(jsonl_texts).chain([texts[2]]).collect();
        assert_eq!(documents(&out, &m.train.shards, tok), expected, "{}", tok.name());
        assert_eq!((m.train.documents, m.val.documents, m.files), (6, 0, 4));
        assert_eq!((m.tokenizer.as_str(), m.vocab_size), (tok.name(), tok.vocab_size()));
        assert_eq!(Manifest::read(&out).unwrap(), m);
        let sizes: Vec<usize> = m.train.shards.iter().map(|f| Shard::open(&out.join(f)).unwrap().len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), m.train.tokens);
        assert!(sizes.iter().all(|&n| n <= 9 && n + 1 >= *sizes.iter().max().unwrap()), "{sizes:?}");
        assert!(m.train.shards.iter().all(|f| f.starts_with("out_train_")));
        // The loader finds the vocabulary in the manifest and reads tokens below it.
        let mut l = Loader::open(&out, Split::Train, 1, 4, 0, 0, 1).unwrap();
        assert_eq!((l.vocab_size(), l.tokenizer()), (tok.vocab_size(), tok.name()));
        let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
        for _ in 0..l.batches_per_epoch() {
            l.next_batch(&mut x, &mut y);
            assert!(x.iter().chain(&y).all(|&i| (0..tok.vocab_size() as i32).contains(&i)));
        }
    }
}

#[test]
fn the_validation_split_takes_whole_documents_by_seed() {
    let dir = temp_dir("split");
    let lines: String = (0..200).map(|i| format!("{{\"body\": \"document {i}\"}}\n")).collect();
    std::fs::write(dir.join("docs.jsonl"), lines).unwrap();
    let input = dir.join("*.jsonl");
    let run = |seed: u64, fraction: f64, out: &str| {
        let mut o = opts(&[&input], &dir.join(out), Tokenizer::bytes());
        (o.text_field, o.seed, o.val_fraction) = ("body".into(), seed, fraction);
        let m = prepare(&o).unwrap();
        let val = documents(&dir.join(out), &m.val.shards, Tokenizer::bytes());
        let train = documents(&dir.join(out), &m.train.shards, Tokenizer::bytes());
        (m, val, train)
    };
    let (m, val, train) = run(5, 0.05, "a");
    assert_eq!((m.val.documents, m.train.documents), (10, 190));
    let mut all: Vec<String> = val.iter().chain(&train).cloned().collect();
    all.sort();
    let mut expected: Vec<String> = (0..200).map(|i| format!("document {i}")).collect();
    expected.sort();
    assert_eq!(all, expected, "every document in exactly one split");
    assert_eq!(run(5, 0.05, "b").1, val, "same seed, same split");
    assert_ne!(run(6, 0.05, "c").1, val, "another seed, another split");
    // At least one validation document as soon as there are two.
    std::fs::write(dir.join("two.jsonl"), "{\"body\": \"x\"}\n{\"body\": \"y\"}\n").unwrap();
    let mut o = opts(&[&dir.join("two.jsonl")], &dir.join("two"), Tokenizer::bytes());
    (o.text_field, o.val_fraction) = ("body".into(), 0.01);
    let m = prepare(&o).unwrap();
    assert_eq!((m.val.documents, m.train.documents), (1, 1));
    // ... and never all of them.
    o.val_fraction = 0.99;
    o.out = dir.join("two-b");
    assert_eq!(prepare(&o).unwrap().train.documents, 1);
}

#[test]
fn the_output_directory_is_replaced_only_when_that_is_safe() {
    let dir = temp_dir("outdir");
    std::fs::write(dir.join("t.txt"), "some text, long enough for several tiny shards").unwrap();
    let input = dir.join("t.txt");
    let out = dir.join("data");
    let mut o = opts(&[&input], &out, Tokenizer::bytes());
    o.shard_tokens = 10;
    assert_eq!(prepare(&o).unwrap().train.shards.len(), 5);
    // Same tokenizer: replaced, and the earlier run's extra shards are gone.
    o.shard_tokens = 1000;
    let m = prepare(&o).unwrap();
    assert_eq!(m.train.shards, vec!["data_train_000000.bin".to_string()]);
    let bins = std::fs::read_dir(&out).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some()).count();
    assert_eq!(bins, 2, "one shard and the manifest");
    // Bad input leaves the directory as it was.
    std::fs::write(dir.join("bad.jsonl"), "{\"text\": 5}\n").unwrap();
    assert!(prepare(&opts(&[&dir.join("bad.jsonl")], &out, Tokenizer::bytes())).is_err());
    assert_eq!(Manifest::read(&out).unwrap(), m);
    // Another tokenizer: refused, naming both, unless forced.
    let e = prepare(&opts(&[&input], &out, Tokenizer::gpt2())).unwrap_err().to_string();
    assert!(e.contains("already holds shards of the bytes tokenizer") && e.contains("--force"), "{e}");
    let forced = prepare(&PrepareOpts { force: true, ..opts(&[&input], &out, Tokenizer::gpt2()) }).unwrap();
    assert_eq!(Manifest::read(&out).unwrap(), forced);
    // Shards without a manifest (llm.c data): refused unless forced.
    let llmc = dir.join("llmc");
    std::fs::create_dir_all(&llmc).unwrap();
    write_shard(&llmc.join("tiny_shakespeare_train.bin"), &[1, 2, 3]).unwrap();
    let e = prepare(&opts(&[&input], &llmc, Tokenizer::gpt2())).unwrap_err().to_string();
    assert!(e.contains("without a readable manifest.json") && e.contains("1 files"), "{e}");
    prepare(&PrepareOpts { force: true, ..opts(&[&input], &llmc, Tokenizer::gpt2()) }).unwrap();
    assert!(!llmc.join("tiny_shakespeare_train.bin").exists(), "forced: the old shards are replaced");
}

#[test]
fn bad_input_gives_the_documented_outcome() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let err = |inputs: &[&Path], o: &dyn Fn(&mut PrepareOpts)| {
        let mut opts = opts(inputs, &out, Tokenizer::bytes());
        o(&mut opts);
        let e = prepare(&opts).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    };
    let none = |_: &mut PrepareOpts| {};
    assert!(err(&[&dir.join("missing.txt")], &none).ends_with("missing.txt: no such file or directory"));
    assert!(err(&[&dir.join("*.txt")], &none).contains("no .txt or .jsonl files"));
    std::fs::create_dir_all(dir.join("empty-dir")).unwrap();
    assert!(err(&[&dir.join("empty-dir")], &none).contains("empty-dir: no .txt or .jsonl files there"));
    // JSONL: broken JSON and a missing or non-string field name the file and line.
    std::fs::write(dir.join("broken.jsonl"), "{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n").unwrap();
    assert!(err(&[&dir.join("broken.jsonl")], &none).contains("broken.jsonl:3: not a JSON object"));
    std::fs::write(dir.join("field.jsonl"), "{\"text\": \"ok\"}\n{\"text\": null}\n").unwrap();
    let e = err(&[&dir.join("field.jsonl")], &none);
    assert!(e.contains("field.jsonl:2: no string field 'text' (choose the field with --text-field)"), "{e}");
    let e = err(&[&dir.join("field.jsonl")], &|o| o.text_field = "body".into());
    assert!(e.contains("field.jsonl:1: no string field 'body'"), "{e}");
    // Options.
    let good = dir.join("good.txt");
    std::fs::write(&good, "fine text").unwrap();
    for f in [1.0, -0.1, f64::NAN] {
        assert!(err(&[&good], &|o| o.val_fraction = f).contains("--val-fraction must be in [0, 1)"));
    }
    assert!(err(&[&good], &|o| o.shard_tokens = 0).contains("--shard-tokens must be at least 1"));
    // Not UTF-8: skipped and listed. Whitespace-only documents: dropped and counted. A JSONL
    // file may start with a byte-order mark.
    std::fs::write(dir.join("latin1.txt"), b"caf\xe9").unwrap();
    std::fs::write(dir.join("blank.txt"), " \n\t").unwrap();
    std::fs::write(dir.join("bom.jsonl"), "\u{FEFF}{\"text\": \"with a BOM\"}\n{\"text\": \"  \"}\n").unwrap();
    let inputs = [dir.join("good.txt"), dir.join("latin1.txt"), dir.join("blank.txt"), dir.join("bom.jsonl")];
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let m = prepare(&opts(&inputs, &out, Tokenizer::bytes())).unwrap();
    assert_eq!((m.train.documents, m.empty_documents, m.files), (2, 2, 4));
    assert_eq!(m.skipped.len(), 1);
    assert!(m.skipped[0].path.ends_with("latin1.txt"));
    assert_eq!(m.skipped[0].reason, "not UTF-8 (invalid byte at offset 3)");
    assert_eq!(
        documents(&out, &m.train.shards, Tokenizer::bytes()),
        vec!["with a BOM", "fine text"],
        "files in path order"
    );
    // Nothing left.
    let e = err(&[&dir.join("blank.txt"), &dir.join("latin1.txt")], &|o| o.out = dir.join("o2"));
    assert_eq!(e, "no documents with text in 2 file(s) (1 skipped, 1 empty)");
}

#[test]
fn the_command_line_prepares_and_fails_cleanly() {
    let dir = temp_dir("cli");
    std::fs::create_dir_all(dir.join("texts")).unwrap();
    for i in 0..3 {
        std::fs::write(dir.join(format!("texts/{i}.txt")), format!("document {i}: ünïcödé")).unwrap();
    }
    std::fs::write(dir.join("texts/bad.txt"), [0xff, 0xfe, 0x00]).unwrap();
    let ok =
        gptk(&dir, &["prepare", "--input", "texts", "--out", "d", "--tokenizer", "bytes", "--val-fraction", "0.3"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stdout.contains("d: bytes tokenizer; train 2 documents, 48 tokens in 1 shard(s); val 1 documents, 24 tokens"),
        "{stdout}"
    );
    assert!(stderr.contains("warning: skipped texts/bad.txt: not UTF-8"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no progress bar when stderr is not a terminal");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("d").join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["tokenizer"], "bytes");
    assert_eq!(manifest["vocab_size"], 257);
    assert_eq!(manifest["val"]["shards"][0], "d_val_000000.bin");
    assert_eq!(manifest["skipped"][0]["path"], "texts/bad.txt");
    assert_eq!(manifest["gptk_version"], env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.join("x.jsonl"), "{\"content\": \"a\"}\n").unwrap();
    for (args, needle) in [
        (vec!["prepare", "--input", "nope/*.txt", "--out", "e"], "--input nope/*.txt: no .txt or .jsonl files"),
        (vec!["prepare", "--input", "nope.txt", "--out", "e"], "--input nope.txt: no such file or directory"),
        (vec!["prepare", "--input", "texts", "--out", "d"], "already holds shards of the bytes tokenizer"),
        (vec!["prepare", "--input", "texts", "--out", "f", "--tokenizer", "llama"], "unknown tokenizer 'llama'"),
        (vec!["prepare", "--input", "texts", "--out", "g", "--val-fraction", "1.5"], "--val-fraction must be in"),
        (vec!["prepare", "--input", "x.jsonl", "--out", "h"], "x.jsonl:1: no string field 'text'"),
        (vec!["prepare", "--input", "[", "--out", "i"], "--input [: not a valid glob pattern"),
        (vec!["prepare", "--out", "j"], "--input"),
    ] {
        let out = gptk(&dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
