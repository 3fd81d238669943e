//! Helpers shared by the end-to-end CLI tests: running gptk, scratch folders, a small byte-level
//! dataset, and reading the JSON lines `gptk train --json` prints.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `gptk ARGS` run in `dir`.
pub fn gptk_command(args: &[&str], dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gptk"));
    c.args(args).current_dir(dir);
    c
}

pub fn gptk(args: &[&str], dir: &Path) -> Output {
    gptk_command(args, dir).output().expect("run gptk")
}

/// A script of the repository's `scripts/` folder.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// A fresh, empty scratch folder `gptk-NAME-PID` under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small byte-level dataset (a few thousand tokens of varied text, 20% held out) prepared into
/// `dir/data`; returns that folder.
pub fn byte_dataset(dir: &Path) -> PathBuf {
    let text = dir.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for i in 0..12 {
        let doc: String =
            (0..60).map(|j| format!("line {j} of document {i}: the quick brown fox {}.\n", i * j % 7)).collect();
        std::fs::write(text.join(format!("doc{i:02}.txt")), doc).unwrap();
    }
    let out =
        gptk(&["prepare", "--input", "text", "--out", "data", "--tokenizer", "bytes", "--val-fraction", "0.2"], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir.join("data")
}

/// The JSON lines of one event kind (`step`, `val`, …) in a `--json` run's output.
pub fn events(stdout: &[u8], kind: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == kind)
        .collect()
}

/// (step, loss as printed) of every step event of a successful `--json` run: the shortest
/// round-trip form of an f32, so equal strings are equal bits.
pub fn step_losses(out: &Output) -> Vec<(u64, String)> {
    assert!(out.status.success(), "gptk failed: {}", String::from_utf8_lossy(&out.stderr));
    events(&out.stdout, "step").iter().map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string())).collect()
}
