//! The CUDA backend's host code, end to end, on the emulated GPU (`scripts/kernel-emu/`, see
//! docs/cuda.md): the driver API and cuBLASLt emulated on the CPU in one library that stands in
//! for libcuda.so and libcublasLt.so, the kernels run by the kernel emulation. `gptk check` runs
//! there as on a GPU: every allocation, copy, launch (grid, block, shared memory, arguments),
//! cuBLASLt call and CUDA graph of the backend, each kernel compared to the CPU reference. What
//! this cannot show is the hardware's own behaviour: its timing, its memory model, the real
//! cuBLASLt's choices.
//!
//! It needs g++ and the CUDA headers (nvcc's `include` folder: `NVCC`, or the nvidia-cuda wheels
//! that `.ci/install-nvcc.sh` installs), and kernels compiled at build time. Where one is missing
//! the test says so and passes, unless `GPTK_REQUIRE_EMULATION` is set, as `.ci/run` sets it.

use gptk::backend::cuda::kernels;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Why the emulated GPU cannot be built here, or `None` when it can.
fn missing_tools() -> Option<String> {
    if !kernels::COMPILED {
        return Some(format!("kernels compiled at build time ({})", kernels::BUILD_STATUS));
    }
    if !Command::new("g++").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("g++".into());
    }
    let headers = Command::new("python3")
        .args(["-c", "import emulated_gpu; emulated_gpu.cuda_include()"])
        .current_dir(script_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output();
    if !headers.is_ok_and(|o| o.status.success()) {
        return Some(
            "python3 and the CUDA headers (cuda.h, cuda_bf16.h: set NVCC or pip install the nvidia-cuda wheels)".into(),
        );
    }
    None
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("kernel-emu")
}

/// The folder holding the emulated GPU's libraries, built once per run of this binary; `None`
/// (after a note) where it cannot be built and is not required.
fn emulated_gpu(test: &str) -> Option<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = DIR.get_or_init(|| {
        if let Some(missing) = missing_tools() {
            return Err(missing);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated-gpu");
        let out = Command::new("python3")
            .arg(script_dir().join("emulated_gpu.py"))
            .arg(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "building the emulated GPU failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(dir)
    });
    match built {
        Ok(dir) => Some(dir),
        Err(missing) if std::env::var_os("GPTK_REQUIRE_EMULATION").is_some() => {
            panic!("{test}: the emulated GPU needs {missing} (GPTK_REQUIRE_EMULATION is set)")
        }
        Err(missing) => {
            println!("note: {test} skipped: the emulated GPU needs {missing}");
            None
        }
    }
}

/// The tests of this file one at a time: each keeps the machine's cores busy.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `gptk` with `args` on the emulated GPU; panics with its output unless it succeeds.
fn gptk(dir: &Path, args: &[&str]) -> String {
    gptk_with(dir, args, &[])
}

/// `gptk` with further environment variables `envs`.
fn gptk_with(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(p) => format!("{}:{}", dir.display(), p.to_string_lossy()),
        None => dir.display().to_string(),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_gptk"))
        .args(args)
        .env("LD_LIBRARY_PATH", library_path)
        .envs(envs.iter().copied())
        .output()
        .expect("gptk runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "gptk {} failed on the emulated GPU:\n{stdout}\n{stderr}", args.join(" "));
    stdout.into_owned()
}

/// The rows of a `gptk check` table that did not pass.
fn failed_rows(table: &str) -> Vec<&str> {
    table.lines().filter(|l| l.trim_end().ends_with("FAIL")).collect()
}

/// f32 storage: the families whose host code differs from bf16's (cuBLASLt's f32 types, the
/// parameters as their own master weights, the optimizer's f32 path, a model step). The other
/// families run the same launches with the other dtype's kernels, which the kernel emulation
/// checks in both; f32 attention runs on the warp-per-row kernels, whose warp shuffles are slow
/// to emulate at the checker's sizes (the model step runs them on a small model).
const F32_FAMILIES: [&str; 7] = [
    "matmul_forward",
    "matmul_backward",
    "matmul_gelu_forward",
    "matmul_backward_gelu",
    "adamw",
    "optimizer_step",
    "model_step",
];

/// One test, so that the two runs do not compete for the machine's cores.
#[test]
fn gptk_check_passes_on_the_emulated_gpu() {
    let _one = serial();
    let Some(dir) = emulated_gpu("gptk_check_passes_on_the_emulated_gpu") else { return };
    // Every launch's blocks in reverse order here (by index everywhere else, `tests/gpu_backend.rs`
    // on the emulated GPU included): a GPU may run them in any order, so no result may depend on it.
    let reverse = [("GPTK_EMU_BLOCK_ORDER", "reverse")];
    let table = gptk_with(dir, &["check", "--precision", "bf16"], &reverse);
    assert!(table.contains("Emulated GPU"), "the check did not run on the emulated GPU:\n{table}");
    assert!(failed_rows(&table).is_empty(), "{table}");
    // Every family ran, the Hopper-only ones included (the emulated device is compute
    // capability 9.0), and the fused paths were taken where cuBLASLt allows them.
    for family in gptk::check::OPS {
        assert!(table.lines().any(|l| l.starts_with(family)), "no {family} rows:\n{table}");
    }
    for path in [", epilogue", "in epilogue", ", CUDA graph", "wgmma, atomic dQ"] {
        assert!(table.contains(path), "no row of the {path:?} path:\n{table}");
    }

    for family in F32_FAMILIES {
        let table = gptk(dir, &["check", "--precision", "f32", "--op", family]);
        assert!(table.lines().any(|l| l.starts_with(family)), "no {family} rows:\n{table}");
        assert!(failed_rows(&table).is_empty(), "{table}");
    }
}

/// The losses of a `gptk train` log, by step.
fn losses(log: &str) -> Vec<(usize, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("step")?;
            let step = rest.trim_start().split('/').next()?.parse().ok()?;
            let loss = l.split("| loss ").nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((step, loss))
        })
        .collect()
}

/// `gptk train --device cuda` with CUDA graphs: the training loop, validation, a checkpoint
/// written from the device and a run resumed from it, on the emulated GPU, with the losses of the
/// CPU backend's run on the same data to bf16's precision.
#[test]
fn training_runs_and_resumes_on_the_emulated_gpu() {
    let _one = serial();
    let Some(dir) = emulated_gpu("training_runs_and_resumes_on_the_emulated_gpu") else { return };
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated-gpu-training");
    let _ = std::fs::remove_dir_all(&work);
    let common = ["--model", "tiny", "--batch-size", "2", "--seq-len", "64", "--sample-every", "0"];
    let run = |out: &Path, device: &str, extra: &[&str]| {
        let out = out.to_str().unwrap();
        let mut args = vec!["train", "--device", device, "--out", out];
        args.extend(common);
        args.extend(extra);
        gptk(dir, &args)
    };
    let (gpu_dir, cpu_dir) = (work.join("gpu"), work.join("cpu"));
    let first =
        run(&gpu_dir, "cuda", &["--steps", "2", "--val-every", "2", "--checkpoint-every", "2", "--cuda-graphs"]);
    assert!(first.contains("Emulated GPU") && first.contains("val loss"), "{first}");
    let resumed = run(&gpu_dir, "cuda", &["--steps", "3", "--val-every", "0", "--resume", "--cuda-graphs"]);
    let gpu: Vec<(usize, f64)> = losses(&first).into_iter().chain(losses(&resumed)).collect();
    assert_eq!(gpu.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3], "{first}\n{resumed}");
    let cpu = losses(&run(&cpu_dir, "cpu", &["--steps", "3", "--val-every", "0"]));
    assert_eq!(cpu.len(), 3);
    for ((step, g), (_, c)) in gpu.iter().zip(&cpu) {
        assert!((g - c).abs() < 0.02 * c.abs(), "step {step}: loss {g} on the emulated GPU, {c} on the CPU");
    }
}
