//! Every CUDA kernel run on the CPU through the emulation of the CUDA execution model
//! (`scripts/kernel-emu/check_kernels.py`, see docs/cuda.md): g++ builds `kernels/*.cu` against
//! `scripts/kernel-emu/emu.h`, and each entry point runs at the grids the host uses, in every
//! dtype and vector path, against float64 references, its tensors between NaN guards; the
//! tensor-core attention kernels also under each way asynchronous copies and products may
//! complete, with wgmma's view of shared memory brought up to date only by the threads' proxy
//! fences. A kernel whose logic is wrong fails here without a GPU.
//!
//! It needs python3 with numpy, g++, and the CUDA headers (nvcc's `include` folder: `NVCC`, or
//! the nvidia-cuda wheels that `.ci/install-nvcc.sh` installs). Where one is missing the test
//! says so and passes, unless `GPTK_REQUIRE_EMULATION` is set, as `.ci/run` sets it: in CI the
//! emulation must run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the emulation cannot run here, or `None` when it can.
fn missing_tools() -> Option<String> {
    let numpy = Command::new("python3").args(["-c", "import numpy"]).output();
    if !numpy.is_ok_and(|o| o.status.success()) {
        return Some("python3 with numpy".into());
    }
    if !Command::new("g++").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("g++".into());
    }
    // The script's own search for the CUDA headers (it exits with a message where they are not).
    let headers = Command::new("python3")
        .args(["-c", "import check_kernels; check_kernels.cuda_include()"])
        .current_dir(script_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    if !headers.is_ok_and(|o| o.status.success()) {
        return Some("CUDA headers (cuda_bf16.h: set NVCC or pip install nvidia-cuda-nvcc)".into());
    }
    None
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kernel-emu")
}

#[test]
fn every_kernel_matches_its_float64_reference_under_emulation() {
    if let Some(what) = missing_tools() {
        assert!(
            std::env::var_os("GPTK_REQUIRE_EMULATION").is_none(),
            "GPTK_REQUIRE_EMULATION is set but {what} is missing"
        );
        println!("note: the kernel emulation was skipped: no {what} here");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(script_dir().join("check_kernels.py"))
        .current_dir(root)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The rows that failed, and the script's last words (the tally, or why it stopped).
    let failed: Vec<&str> = stdout.lines().filter(|l| l.ends_with("FAIL")).collect();
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        out.status.success(),
        "the kernel emulation failed ({}):\n{}\n{}\n{stderr}",
        out.status,
        failed.join("\n"),
        tail.join("\n")
    );
    let tally = stdout.lines().last().unwrap_or_default();
    println!("kernel emulation: {tally}");
    assert!(tally.ends_with(" passed, 0 failed"), "unexpected last line: {tally}");
}
