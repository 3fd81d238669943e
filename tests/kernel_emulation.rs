//! Every CUDA kernel run on the CPU through the emulation of the CUDA execution model
//! (`scripts/kernel-emu/check_kernels.py`, see docs/cuda.md): g++ builds `kernels/*.cu` against
//! `scripts/kernel-emu/emu.h`, and each entry point runs at the grids the host uses, in every
//! dtype and vector path, against float64 references, its tensors between NaN guards; the
//! tensor-core attention kernels also under each way asynchronous copies and products may
//! complete, with wgmma's view of shared memory brought up to date only by the threads' proxy
//! fences. A kernel whose logic is wrong fails here without a GPU. The same checks run again with
//! the kernels built under ThreadSanitizer (`--racecheck`), which fails on a data race between two
//! CUDA threads of a block, and under AddressSanitizer (`--memcheck`), which fails on an access
//! outside a kernel's arrays or its dynamic shared memory.
//!
//! It needs python3 with numpy, g++ (with its ThreadSanitizer and AddressSanitizer runtimes, for
//! the race and memory checks), and the
//! CUDA headers (nvcc's `include` folder: `NVCC`, or the nvidia-cuda wheels that
//! `.ci/install-nvcc.sh` installs). Where one is missing the test
//! says so and passes, unless `GPTK_REQUIRE_EMULATION` is set, as `.ci/run` sets it: in CI the
//! emulation must run.

use gptk::backend::cuda::kernels;
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

/// The dynamic shared memory each tensor-core attention kernel may use, from the host's own
/// tables, as the JSON object the emulation reads: it poisons that memory before each block and
/// fails a block that touches more. The wgmma kernels are given one alignment atom more, which
/// they may spend aligning their tiles; the emulation's shared memory is aligned already.
fn shared_bytes_json() -> String {
    let slack = kernels::WGMMA_ATOM_BYTES;
    let mut sizes = Vec::new();
    for hs in kernels::FLASH_HEAD_SIZES {
        let (fwd, dkv, dq) = kernels::flash_shared_bytes(hs).expect("a built head size");
        let dkvq = kernels::flash_dkvq_shared_bytes(hs).expect("a built head size");
        let (fwd90, dkv90, dq90, dkvq90) = kernels::flash90_shared_bytes(hs).expect("a built head size");
        for (kind, mma, wgmma) in [
            ("forward", fwd, fwd90),
            ("backward_dkv", dkv, dkv90),
            ("backward_dq", dq, dq90),
            ("backward_dkvq", dkvq, dkvq90),
        ] {
            sizes.push(format!("\"flash_{kind}_hs{hs}\": {mma}"));
            sizes.push(format!("\"flash_{kind}_sm90a_hs{hs}\": {}", wgmma - slack));
        }
        let tma = kernels::flash90_tma_forward_shared_bytes(hs).expect("a built head size");
        sizes.push(format!("\"flash_forward_tma_sm90a_hs{hs}\": {}", tma - slack));
    }
    sizes.push(format!("\"wgmma_probe\": {}", kernels::WGMMA_PROBE_SHARED_BYTES - slack));
    sizes.push(format!("\"tma_probe\": {}", kernels::TMA_PROBE_SHARED_BYTES - slack));
    format!("{{{}}}", sizes.join(", "))
}

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kernel-emu")
}

/// Whether the emulation can run here (`extra` names a further tool it needs, when missing);
/// prints why not and returns false where it cannot and need not.
fn can_run(what: &str, extra: Option<String>) -> bool {
    let Some(missing) = missing_tools().or(extra) else { return true };
    assert!(
        std::env::var_os("GPTK_REQUIRE_EMULATION").is_none(),
        "GPTK_REQUIRE_EMULATION is set but {missing} is missing"
    );
    println!("note: {what} was skipped: no {missing} here");
    false
}

/// Runs check_kernels.py with `args` and fails with its failed rows and last words unless every
/// row passed; returns its tally.
fn run_check(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(script_dir().join("check_kernels.py"))
        .args(args)
        .current_dir(root)
        .env("GPTK_EMU_SHARED_BYTES", shared_bytes_json())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The rows that failed, and the script's last words (the tally, or why it stopped).
    let failed: Vec<&str> = stdout.lines().filter(|l| l.ends_with("FAIL")).collect();
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        out.status.success(),
        "the kernel emulation {args:?} failed ({}):\n{}\n{}\n{stderr}",
        out.status,
        failed.join("\n"),
        tail.join("\n")
    );
    let tally = stdout.lines().last().unwrap_or_default().to_string();
    assert!(tally.ends_with(" passed, 0 failed"), "unexpected last line: {tally}");
    tally
}

#[test]
fn every_kernel_matches_its_float64_reference_under_emulation() {
    if can_run("the kernel emulation", None) {
        println!("kernel emulation: {}", run_check(&[]));
    }
}

/// Why g++'s runtime `library` for the sanitizer `name` cannot be found, or `None` when it can.
fn missing_sanitizer(library: &str, name: &str) -> Option<String> {
    let out = Command::new("g++").arg(format!("-print-file-name={library}")).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let found = Path::new(&path).is_absolute() && Path::new(&path).exists();
    (!found).then(|| format!("{name} runtime for g++ ({library})"))
}

/// The same checks with the kernels built under ThreadSanitizer, each CUDA thread a fiber of its
/// own: two threads of a block that touch the same shared or global memory, one of them writing,
/// with no barrier between them, fail it with both stacks (emu.h says what orders them).
#[test]
fn no_two_cuda_threads_race_under_emulation() {
    if can_run("the kernel race check", missing_sanitizer("libtsan.so", "ThreadSanitizer")) {
        println!("kernel race check: {}", run_check(&["--racecheck"]));
    }
}

/// The same checks with the kernels built under AddressSanitizer: a kernel that reads or writes
/// global memory outside the arrays it is given (the bytes around each are made unaddressable),
/// or dynamic shared memory past what the host gives its launch, fails it with the access's stack,
/// as compute-sanitizer's memcheck would on a GPU; UndefinedBehaviorSanitizer, built in too,
/// fails it on a signed overflow or another undefined operation. The blocks of each launch run
/// in reverse order here (by index in the plain run): a kernel whose results depend on the order
/// of its blocks fails one of the two.
#[test]
fn no_kernel_touches_memory_outside_its_arrays_under_emulation() {
    if can_run("the kernel memory check", missing_sanitizer("libasan.so", "AddressSanitizer")) {
        println!("kernel memory check: {}", run_check(&["--memcheck", "--reverse-blocks"]));
    }
}
