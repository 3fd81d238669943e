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

/// Runs `gptk` with `args` on the emulated GPU; panics with its output unless it succeeds.
fn gptk(dir: &Path, args: &[&str]) -> String {
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(p) => format!("{}:{}", dir.display(), p.to_string_lossy()),
        None => dir.display().to_string(),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_gptk"))
        .args(args)
        .env("LD_LIBRARY_PATH", library_path)
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
    let Some(dir) = emulated_gpu("gptk_check_passes_on_the_emulated_gpu") else { return };
    let table = gptk(dir, &["check", "--precision", "bf16"]);
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
