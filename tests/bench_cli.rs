//! `gptk bench` where there is no GPU (one line, failing exit), its argument errors, and the
//! agreement of its case list with scripts/torch_attention.py, whose JSON `--compare` matches
//! case by case.

use gptk::backend::cuda;
use gptk::bench;
use std::process::{Command, Output};

fn gptk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).output().expect("run gptk")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn without_a_gpu_bench_fails_with_one_line() {
    if cuda::probe().is_ok() {
        println!("note: a GPU is present; the no-GPU message was not exercised");
        return;
    }
    let o = gptk(&["bench"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains("gptk bench needs a CUDA GPU"), "{err}");
    assert!(o.stdout.is_empty(), "nothing on stdout: {:?}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn bench_names_the_known_ops_and_reads_its_compare_file_first() {
    let o = gptk(&["bench", "--op", "no-such-op"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("known: attention"), "{}", stderr(&o));

    let dir = std::env::temp_dir().join(format!("gptk-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"results\": 3}").unwrap();
    let o = gptk(&["bench", "--compare", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a benchmark report"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_pytorch_script_times_the_same_cases() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/torch_attention.py");
    let Ok(o) = Command::new("python3").args([script, "--list-cases"]).output() else {
        println!("note: no python3 here; the PyTorch script's case list was not compared");
        return;
    };
    assert!(o.status.success(), "{}", stderr(&o));
    let theirs: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    let ours: Vec<String> = bench::select(Some("attention")).unwrap().iter().map(|c| c.name()).collect();
    assert_eq!(theirs, ours);
}
