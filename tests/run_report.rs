//! scripts/gpu-report.py, which turns a scripts/gpu-check.sh output folder into the page
//! docs/gpu-runs/ keeps: on a folder written by hand in the formats gptk prints, and end to end on
//! a real gpu-check.sh run on this machine (no GPU: its stages fail, and the page says so).

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{script, temp_dir};

fn report(out: &Path) -> Output {
    Command::new("python3").arg(script("gpu-report.py")).arg(out).args(["--date", "2026-01-02"]).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_report_collects_stages_checks_training_and_benchmarks() {
    let out = temp_dir("run-report-fixture");
    let write = |name: &str, body: &str| std::fs::write(out.join(name), body).unwrap();
    write("COMMIT", "abc1234\n");
    write(
        "summary.txt",
        "INFO  binaries built from commit abc1234\nPASS  nvidia-smi (0s)\nFAIL  check-bf16: exit 1 (12s)\n\
         PASS  check-f32 (9s)\nSKIP  memcheck: compute-sanitizer is not installed\nPASS  train-tiny (8s)\n\
         FAIL  bench: timed out after 45s\ntotal 95s, 2 failed stage(s); logs in ./gpu-run\n",
    );
    write(
        "nvidia-smi.log",
        "=== nvidia-smi: nvidia-smi\n| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |\n\
         |   0  NVIDIA H200                    On  |   00000000:19:00.0 Off |                    0 |\n",
    );
    let case_row = |op: &str, case: &str, tensor: &str, used: f64, result: &str| {
        format!("{op:<19} {case:<40} {tensor:<34} {:>9} {:>10.3e} {:>10.3e} {used:>9.1}%  {result}\n", 40, 1e-3, 1e-3)
    };
    let row = |op: &str, tensor: &str, used: f64, result: &str| case_row(op, "N=5 C=8", tensor, used, result);
    let mut check = String::from("=== check-bf16: gptk check --precision bf16\nchecking H200 with bf16 storage\n");
    check += &row("layernorm_forward", "out", 12.5, "ok");
    check += &row("layernorm_forward", "mean", 40.0, "ok");
    check += &row("attention_forward", "out", 180.0, "FAIL");
    // Cases that name the path their epilogue work took, one row per tensor.
    let gelu_bwd = "N=17 C=32 OC=13 bias, epilogue, bias grad in epilogue";
    for tensor in ["dinp", "dw", "dbias"] {
        check += &case_row("matmul_backward_gelu", gelu_bwd, tensor, 20.0, "ok");
    }
    check += &case_row("matmul_backward_gelu", "N=5 C=7 OC=3 bias, apart, bias grad apart", "dinp", 20.0, "ok");
    check += &case_row("matmul_gelu_forward", "N=5 C=7 OC=3 bias, apart", "out", 20.0, "ok");
    check += &case_row("matmul_backward", "N=1 C=1 OC=1 bias, bias grad apart", "dbias", 20.0, "ok");
    // Each case's guard row: counted apart, not as a case or an op's tolerance.
    check += &case_row("matmul_backward_gelu", gelu_bwd, "guards (outside the tensors)", 0.0, "ok");
    check += &case_row("layernorm_forward", "N=5 C=8", "guards (outside the tensors)", f64::INFINITY, "FAIL");
    check += "9 passed, 2 failed\nError: 2 of 11 comparisons failed\n";
    write("check-bf16.log", &check);
    write("check-f32.log", &format!("=== check-f32\n{}1 passed, 0 failed\n", row("adamw", "params", 3.0, "ok")));
    let step = |s: usize, loss: f64, tps: f64| {
        format!(
            "{{\"event\":\"step\",\"step\":{s},\"steps\":5,\"loss\":{loss},\"lr\":0.001,\"grad_norm\":1.0,\"ms\":10.0,\
             \"tokens_per_s\":{tps},\"mfu\":0.25,\"eta_s\":0.0}}\n"
        )
    };
    let mut train = String::from("=== train-tiny: gptk train\n");
    for (s, loss, tps) in [(1, 5.6, 100.0), (2, 5.0, 900.0), (3, 4.5, 1000.0), (4, 4.0, 1100.0), (5, 3.5, 1200.0)] {
        train += &step(s, loss, tps);
    }
    train += "{\"event\":\"val\",\"step\":5,\"val_loss\":3.75,\"tokens\":1000}\n";
    write("train-tiny.log", &train);
    write("bench.log", "=== bench: gptk bench\nlayernorm  N=8192 C=768  fwd  0.021 ms  1200 GB/s\n");

    let o = report(&out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    for want in [
        "# GPU run 2026-01-02",
        "- commit: `abc1234`",
        "NVIDIA H200 · driver 580.65.06 · CUDA 13.0",
        "total 95s, 2 failed stage(s)",
        "| check-bf16 | FAIL | exit 1 (12s) |",
        "| memcheck | SKIP | compute-sanitizer is not installed |",
        "| nvidia-smi | PASS | 0s |",
        "Result: **9 passed, 2 failed**",
        "Guards around the tensors intact in 1 of 2 cases.",
        "cuBLASLt epilogues: GELU in the epilogue in 1 of 3 cases; bias gradient in the epilogue in 1 of 3 cases.",
        "| attention_forward | 180.0% |",
        "| layernorm_forward | 40.0% |",
        "Result: **1 passed, 0 failed**",
        // Loss first → last, the last validation loss, tokens/s over steps 4 and 5, MFU.
        "| train-tiny | 5 | 5.600 → 3.500 | 3.750 (step 5) | 1,150 | 25.0% |",
        "layernorm  N=8192 C=768  fwd  0.021 ms  1200 GB/s",
    ] {
        assert!(page.contains(want), "missing {want:?} in:\n{page}");
    }
    // The failing rows are quoted whole; a guard row's infinite share is not an op's tolerance.
    assert!(page.lines().any(|l| l.starts_with("attention_forward") && l.ends_with("FAIL")), "{page}");
    assert!(page.lines().any(|l| l.starts_with("layernorm_forward") && l.contains("guards") && l.ends_with("FAIL")));
    assert!(!page.contains("| layernorm_forward | inf%"), "{page}");

    // Not a gpu-check.sh folder: one line, non-zero.
    let empty = temp_dir("run-report-empty");
    let o = report(&empty);
    assert!(!o.status.success());
    assert_eq!(text(&o.stderr).trim().lines().count(), 1, "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("summary.txt is missing"));
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&empty).ok();
}

#[test]
fn a_real_gpu_check_run_without_a_gpu_gives_a_page_that_says_what_failed() {
    // A bundle of this build's gptk and a commit file; ONLY keeps the run to the checker stages.
    let bundle = temp_dir("run-report-bundle");
    std::fs::copy(env!("CARGO_BIN_EXE_gptk"), bundle.join("gptk")).unwrap();
    std::fs::write(bundle.join("COMMIT"), "feedbee\n").unwrap();
    let out = temp_dir("run-report-run");
    let o = Command::new("bash")
        .arg(script("gpu-check.sh"))
        .arg(&bundle)
        .env("OUT", &out)
        .env("ONLY", "check-bf16")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
    if gptk::backend::cuda::probe().is_ok() {
        println!("note: a GPU is present; the no-GPU page was not exercised");
        return;
    }
    assert!(!o.status.success(), "gpu-check.sh passed without a GPU:\n{summary}");
    assert!(summary.contains("FAIL  check-bf16"), "{summary}");
    let o = report(&out);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.contains("- commit: `feedbee`"), "{page}");
    assert!(page.contains("| check-bf16 | FAIL |"), "{page}");
    assert!(page.contains("| check-f32 | SKIP |"), "{page}");
    assert!(page.contains("no total line (the run stopped before the end; see the log)"), "{page}");
    // The checker's own one-line reason is quoted.
    assert!(page.contains("Its last line: `error: gptk check needs a CUDA GPU"), "{page}");
    std::fs::remove_dir_all(&bundle).ok();
    std::fs::remove_dir_all(&out).ok();
}
