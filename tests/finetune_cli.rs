//! `gptk finetune` and `gptk predict` end to end on the CPU, and their answers to bad input.

use std::path::{Path, PathBuf};

mod common;
use common::{gptk, temp_dir};

/// A separable task: the label is the kind of word the passage is made of.
fn task(dir: &Path, name: &str, n: usize, seed: usize) -> PathBuf {
    let kinds = [("fruit", ["apple", "pear", "plum", "fig"]), ("stone", ["granite", "slate", "flint", "basalt"])];
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let (label, words) = kinds[(i * 7 + seed) % 2];
            let text: Vec<&str> = (0..6).map(|j| words[(i * 3 + j * 5 + seed) % 4]).collect();
            format!("{{\"text\": \"{}\", \"label\": \"{label}\"}}", text.join(" "))
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// A small byte-level model pretrained for a few steps (its weights only matter as a start).
fn pretrained(dir: &Path) -> PathBuf {
    let text = dir.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for i in 0..4 {
        std::fs::write(text.join(format!("{i}.txt")), "apple pear granite slate plum flint fig basalt. ".repeat(40))
            .unwrap();
    }
    let ok = gptk(&["prepare", "--input", "text", "--out", "data", "--tokenizer", "bytes"], dir);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let ok = gptk(
        &[
            "train",
            "--data",
            "data",
            "--out",
            "pre",
            "--model",
            "micro",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--steps",
            "3",
            "--sample-every",
            "0",
            "--json",
        ],
        dir,
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    dir.join("pre")
}

#[test]
fn finetune_learns_a_separable_task_and_predict_uses_the_head() {
    let dir = temp_dir("finetune-learn");
    pretrained(&dir);
    task(&dir, "train.jsonl", 64, 0);
    task(&dir, "val.jsonl", 16, 1);
    let out = gptk(
        &[
            "finetune",
            "--model",
            "pre",
            "--train",
            "train.jsonl",
            "--val",
            "val.jsonl",
            "--out",
            "ft",
            "--epochs",
            "4",
            "--lr",
            "1e-3",
            "--batch-size",
            "8",
            "--seq-len",
            "48",
            "--json",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["event"] == "result")
        .unwrap();
    assert!(result["val_accuracy"].as_f64().unwrap() >= 0.9, "{result}");
    assert_eq!(result["labels"], serde_json::json!(["fruit", "stone"]));
    // predict: one line per example, a label and its probabilities; accuracy on labelled input.
    let out = gptk(&["predict", "--model", "ft", "--input", "val.jsonl"], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let preds: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(preds.len(), 16);
    let p = &preds[0]["probs"];
    let total = p["fruit"].as_f64().unwrap() + p["stone"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(String::from_utf8_lossy(&out.stderr).contains("accuracy"));
    // The head and labels live in the checkpoint; transformers sees them as id2label.
    let config = std::fs::read_to_string(dir.join("ft/config.json")).unwrap();
    assert!(config.contains("\"id2label\""));
}

fn fails_with(args: &[&str], dir: &Path, needle: &str) {
    let out = gptk(args, dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(err.contains(needle), "stderr for {args:?} lacks '{needle}': {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
}

#[test]
fn bad_tasks_fail_with_one_clear_line() {
    let dir = temp_dir("finetune-bad");
    pretrained(&dir);
    task(&dir, "train.jsonl", 8, 0);
    let base = ["finetune", "--model", "pre", "--train", "train.jsonl", "--epochs", "1", "--seq-len", "32"];
    let with_val =
        |val: &str| -> Vec<String> { base.iter().map(|s| s.to_string()).chain(["--val".into(), val.into()]).collect() };
    let run = |val: &str, needle: &str| {
        let args = with_val(val);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, &dir, needle);
    };
    std::fs::write(dir.join("unseen.jsonl"), "{\"text\": \"apple\", \"label\": \"metal\"}").unwrap();
    run("unseen.jsonl", "label 'metal' never appears in the training set");
    std::fs::write(dir.join("nolabel.jsonl"), "{\"text\": \"apple\"}").unwrap();
    run("nolabel.jsonl", "nolabel.jsonl:1: no 'label' field");
    std::fs::write(dir.join("empty.jsonl"), "{\"text\": \" \", \"label\": \"fruit\"}").unwrap();
    run("empty.jsonl", "empty.jsonl:1: 'text' is empty");
    std::fs::write(dir.join("one.jsonl"), "{\"text\": \"apple\", \"label\": \"fruit\"}").unwrap();
    fails_with(
        &["finetune", "--model", "pre", "--train", "one.jsonl", "--val", "one.jsonl"],
        &dir,
        "at least 2 labels",
    );
    fails_with(&["predict", "--model", "pre", "--input", "one.jsonl"], &dir, "has no classification head");
    let args = with_val("train.jsonl");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--bidirectional"]);
    fails_with(&args, &dir, "--bidirectional needs --lm-weight 0");
    fails_with(
        &["finetune", "--model", "pre", "--train", "train.jsonl", "--val", "train.jsonl", "--seq-len", "2"],
        &dir,
        "leaves no room for text",
    );
}
