//! Build script: embeds the demo corpus (the project's own sources and docs) so that `gptk train`
//! with no data has something to learn from, and compiles the CUDA kernels into one fatbin that
//! the binary carries, so that running on a GPU never needs a CUDA compiler.
//!
//! Kernels: every `kernels/*.cu` is `#include`d into one generated translation unit and compiled
//! by nvcc to a fatbin holding SASS for each real architecture and PTX for the last virtual one
//! (default `sm_80,sm_90,compute_90`; `GPTK_CUDA_ARCHS` overrides). The ptxas resource report
//! (`-Xptxas -v`: registers, spills, shared memory per kernel) is kept beside it in OUT_DIR, and
//! `OUT_DIR/cuda_kernels.rs` tells the crate what was built. Kernels of Hopper's own instruction
//! set (`kernels/*_sm90a.cu`: wgmma) run on compute capability 9.0 only, so they are compiled
//! apart, into a second fatbin holding only sm_90a code, which the backend loads on such a device
//! (their ptxas lines are added to the same report). Each unit is also compiled to PTX once, to
//! read every entry point's parameter list (`OUT_DIR/kernel-params.txt`, which the tests hold
//! against the host's launches). Without nvcc the crate still builds, with a warning; the CUDA
//! backend then reports how to install the compiler.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of these kinds under these folders make up the built-in corpus.
const CORPUS_DIRS: &[&str] = &["src", "docs", "kernels", "scripts"];
const CORPUS_EXTENSIONS: &[&str] = &["rs", "md", "cu", "cuh", "sh", "py"];
const CORPUS_FILES: &[&str] = &["README.md"];

/// Where the kernel sources live.
const KERNEL_DIR: &str = "kernels";
/// Architectures when `GPTK_CUDA_ARCHS` is unset: SASS for Ampere and Hopper, PTX for Hopper
/// so that newer GPUs can JIT it.
const DEFAULT_ARCHS: &str = "sm_80,sm_90,compute_90";
/// Kernel files whose name ends so are built for `SM90A_ARCH` alone, into their own fatbin.
const SM90A_SUFFIX: &str = "_sm90a.cu";
const SM90A_ARCH: &str = "-gencode=arch=compute_90a,code=sm_90a";
/// What the kernel build leaves in OUT_DIR: the fatbin, the sm_90a fatbin, the ptxas report and
/// the entry points' parameter lists.
const OUTPUTS: [&str; 4] =
    ["gptk_kernels.fatbin", "gptk_kernels_sm90a.fatbin", "ptxas-report.txt", "kernel-params.txt"];
/// The virtual architectures whose PTX gives the parameter lists of the two units.
const PTX_ARCHS: [&str; 2] = ["compute_90", "compute_90a"];
/// The pip wheel that provides nvcc, named in the warning when none is found.
const NVCC_HINT: &str = "pip install nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 (see .ci/install-nvcc.sh)";

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| CORPUS_EXTENSIONS.contains(&e)) {
            out.push(path);
        }
    }
}

/// Writes OUT_DIR/corpus.txt: every corpus file, sorted by path, each preceded by a one-line
/// header naming it and separated by a NUL byte (the trainer turns NULs into end-of-text).
fn embed_corpus(out_dir: &Path) {
    let mut files: Vec<PathBuf> = CORPUS_FILES.iter().map(PathBuf::from).filter(|p| p.is_file()).collect();
    for dir in CORPUS_DIRS {
        println!("cargo:rerun-if-changed={dir}");
        collect(Path::new(dir), &mut files);
    }
    for f in CORPUS_FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    files.sort();
    let mut corpus = Vec::new();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        corpus.extend_from_slice(format!("// file: {}\n", f.display()).as_bytes());
        corpus.extend_from_slice(text.replace('\0', "").as_bytes());
        corpus.push(0);
    }
    std::fs::write(out_dir.join("corpus.txt"), corpus).expect("write corpus");
}

/// True when `path` is a file that runs.
fn is_program(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Python's package folders (site-packages, user site, and `sys.path`, which also covers
/// PYTHONPATH), asked of the first Python found.
fn python_package_dirs() -> Vec<PathBuf> {
    const ASK: &str = "import site, sys\n\
        dirs = list(sys.path)\n\
        try:\n    dirs += site.getsitepackages()\nexcept Exception:\n    pass\n\
        try:\n    dirs.append(site.getusersitepackages())\nexcept Exception:\n    pass\n\
        print('\\n'.join(d for d in dirs if d))";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python).args(["-c", ASK]).output() else { continue };
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
        }
    }
    Vec::new()
}

/// Finds nvcc: `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, `PATH`, `/usr/local/cuda`, then the
/// `nvidia-cuda-nvcc` wheel inside Python's package folders. Returns the path and where it was
/// found.
fn find_nvcc() -> Option<(PathBuf, String)> {
    if let Some(p) = std::env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if is_program(&p) {
            return Some((p, "NVCC".into()));
        }
        println!("cargo:warning=NVCC={} is not an executable file; looking elsewhere", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            let p = Path::new(&home).join("bin/nvcc");
            if is_program(&p) {
                return Some((p, var.into()));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if is_program(&p) {
                return Some((p, "PATH".into()));
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if is_program(&p) {
        return Some((p, "/usr/local/cuda".into()));
    }
    // The wheels put nvcc under nvidia/cu13/bin (CUDA 13) or nvidia/cuda_nvcc/bin (CUDA 12).
    for dir in python_package_dirs() {
        for sub in ["nvidia/cu13/bin/nvcc", "nvidia/cuda_nvcc/bin/nvcc"] {
            let p = dir.join(sub);
            if is_program(&p) {
                return Some((p, format!("Python package folder {}", dir.display())));
            }
        }
    }
    None
}

/// nvcc's `-gencode` flags for a list like `sm_80,sm_90,compute_90`.
fn gencode_flags(archs: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        if let Some(n) = arch.strip_prefix("sm_") {
            flags.push(format!("-gencode=arch=compute_{n},code=sm_{n}"));
        } else if let Some(n) = arch.strip_prefix("compute_") {
            flags.push(format!("-gencode=arch=compute_{n},code=compute_{n}"));
        } else {
            panic!("GPTK_CUDA_ARCHS: '{arch}' is neither sm_NN nor compute_NN");
        }
    }
    assert!(!flags.is_empty(), "GPTK_CUDA_ARCHS names no architecture");
    flags
}

/// The kernel sources, sorted; every one is a rerun trigger.
fn kernel_sources() -> Vec<PathBuf> {
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(KERNEL_DIR).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")));
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    files
}

/// Escapes a string for a Rust string literal.
fn rust_str(s: &str) -> String {
    format!("{s:?}")
}

/// Compiles the kernels, or explains why not, and writes OUT_DIR/cuda_kernels.rs.
fn build_kernels(out_dir: &Path) {
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "GPTK_CUDA_ARCHS", "GPTK_NVCC_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let sources = kernel_sources();
    let [fatbin, fatbin_sm90a, report, params] = OUTPUTS.map(|name| out_dir.join(name));
    let archs = std::env::var("GPTK_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let is_sm90a = |p: &PathBuf| p.to_str().is_some_and(|s| s.ends_with(SM90A_SUFFIX));
    let cu: Vec<&PathBuf> = sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
    let (sm90a_units, units): (Vec<&PathBuf>, Vec<&PathBuf>) = cu.into_iter().partition(|p| is_sm90a(p));

    let status;
    let mut nvcc_version = String::new();
    let compiled = match find_nvcc() {
        None => {
            println!(
                "cargo:warning=nvcc not found: building without CUDA kernels (--device cuda will fail). \
                 Get it with: {NVCC_HINT}, then `cargo clean -p gptk` and rebuild"
            );
            status = format!("nvcc was not found at build time; get it with: {NVCC_HINT}, then rebuild");
            false
        }
        Some(_) if units.is_empty() => {
            status = "no kernels/*.cu at build time".into();
            false
        }
        Some((nvcc, origin)) => {
            let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
            // One translation unit per fatbin: one module to load each.
            let write_unit = |files: &[&PathBuf], name: &str| {
                let mut unity = String::from("// Generated by build.rs: kernel files in one translation unit.\n");
                for u in files {
                    unity.push_str(&format!("#include \"{}\"\n", manifest.join(u).display()));
                }
                let path = out_dir.join(name);
                std::fs::write(&path, &unity).expect("write a kernel translation unit");
                (path, unity)
            };
            let (unity_path, unity) = write_unit(&units, "gptk_kernels.cu");
            let (sm90a_path, sm90a_unity) = write_unit(&sm90a_units, "gptk_kernels_sm90a.cu");
            if let Ok(out) = Command::new(&nvcc).arg("--version").output() {
                nvcc_version =
                    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
            }
            let extra = std::env::var("GPTK_NVCC_FLAGS").unwrap_or_default();
            // The corpus makes this script rerun on every source edit; recompile the kernels
            // only when what they are built from changed.
            let mut key = format!("{}\n{nvcc_version}\n{archs}\n{extra}\n{unity}\n{sm90a_unity}", nvcc.display());
            for s in &sources {
                key.push_str(&std::fs::read_to_string(s).unwrap_or_default());
            }
            let stamp = out_dir.join("gptk_kernels.stamp");
            let stamp_text = format!("{:016x}", fnv1a(key.as_bytes()));
            let up_to_date = std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text)
                && fatbin.metadata().is_ok_and(|m| m.len() > 0)
                && fatbin_sm90a.is_file()
                && report.is_file()
                && params.is_file();
            if up_to_date {
                status = format!("compiled by {} ({nvcc_version}, found via {origin}) for {archs}", nvcc.display());
                write_generated(out_dir, true, &archs, &status, &nvcc_version);
                return;
            }
            let _ = std::fs::remove_file(&stamp);
            let mut text = String::new();
            let mut param_lists = String::new();
            let builds = [
                (gencode_flags(&archs), &fatbin, &unity_path, true, PTX_ARCHS[0]),
                (vec![SM90A_ARCH.to_string()], &fatbin_sm90a, &sm90a_path, !sm90a_units.is_empty(), PTX_ARCHS[1]),
            ];
            for (flags, target, unit, wanted, ptx_arch) in builds {
                if !wanted {
                    std::fs::write(target, b"").expect("write an empty fatbin");
                    continue;
                }
                let mut cmd = Command::new(&nvcc);
                cmd.arg("-fatbin")
                    .args(flags)
                    .args(["-O3", "-std=c++17", "-lineinfo", "-Xptxas", "-v"])
                    .arg(format!("-I{}", manifest.join(KERNEL_DIR).display()))
                    .arg("-o")
                    .arg(target)
                    .arg(unit);
                cmd.args(extra.split_whitespace());
                let out = cmd.output().unwrap_or_else(|e| panic!("running {} failed: {e}", nvcc.display()));
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                std::fs::write(&report, &text).expect("write the ptxas report");
                if !out.status.success() {
                    panic!(
                        "nvcc ({}, found via {origin}) failed to compile the kernels:\n{text}\n\
                         (unset NVCC/CUDA_HOME or fix the kernels; the full report is in {})",
                        nvcc.display(),
                        report.display()
                    );
                }
                let ptx = out_dir.join("kernel-params.ptx");
                let mut cmd = Command::new(&nvcc);
                cmd.arg("-ptx")
                    .arg(format!("-arch={ptx_arch}"))
                    .args(["-O3", "-std=c++17"])
                    .arg(format!("-I{}", manifest.join(KERNEL_DIR).display()))
                    .arg("-o")
                    .arg(&ptx)
                    .arg(unit);
                cmd.args(extra.split_whitespace());
                let out = cmd.output().unwrap_or_else(|e| panic!("running {} failed: {e}", nvcc.display()));
                if !out.status.success() {
                    panic!(
                        "nvcc ({}) failed to compile the kernels to PTX:\n{}",
                        nvcc.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let ptx_text = std::fs::read_to_string(&ptx).expect("read the kernels' PTX");
                param_lists.push_str(&entry_parameters(&ptx_text));
                let _ = std::fs::remove_file(&ptx);
            }
            std::fs::write(&params, &param_lists).expect("write the kernel parameter lists");
            std::fs::write(&stamp, &stamp_text).expect("write the kernel build stamp");
            status = format!("compiled by {} ({nvcc_version}, found via {origin}) for {archs}", nvcc.display());
            true
        }
    };
    if !compiled {
        std::fs::write(&fatbin, b"").expect("write an empty fatbin");
        std::fs::write(&fatbin_sm90a, b"").expect("write an empty fatbin");
        std::fs::write(&report, b"").expect("write an empty ptxas report");
        std::fs::write(&params, b"").expect("write empty kernel parameter lists");
    }
    write_generated(out_dir, compiled, &archs, &status, &nvcc_version);
}

/// Every `.entry` of a PTX text as one line: its name, then each parameter's state space type
/// (`.u64`, `.u32`, `.f32`; an aggregate as `.align N .b8 [bytes]`), in order.
fn entry_parameters(ptx: &str) -> String {
    let mut out = String::new();
    let mut lines = ptx.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(".visible .entry ").or_else(|| line.strip_prefix(".entry ")) else {
            continue;
        };
        let name = rest.split('(').next().unwrap_or_default().trim();
        out.push_str(name);
        if !rest.trim_end().ends_with("()") {
            for param in lines.by_ref().take_while(|l| !l.starts_with(')')) {
                // ".param .u64 name_param_0," → ".u64"; ".param .align 8 .b8 name_param_1[16]" →
                // ".align 8 .b8 [16]".
                let words: Vec<&str> = param.trim_end_matches(',').split_whitespace().skip(1).collect();
                let (last, kind) = words.split_last().map_or(("", &[][..]), |(l, k)| (*l, k));
                out.push(' ');
                out.push_str(&kind.join(" "));
                if let Some(i) = last.find('[') {
                    out.push_str(&format!(" {}", &last[i..]));
                }
            }
        }
        out.push('\n');
    }
    out
}

/// 64-bit FNV-1a: a stable fingerprint of the kernel build inputs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Writes OUT_DIR/cuda_kernels.rs, which the crate includes.
fn write_generated(out_dir: &Path, compiled: bool, archs: &str, status: &str, nvcc_version: &str) {
    let [fatbin, fatbin_sm90a, report, params] = OUTPUTS.map(|name| out_dir.join(name));
    let generated = format!(
        "/// True when nvcc compiled the kernels at build time.\n\
         pub const COMPILED: bool = {compiled};\n\
         /// The architectures the fatbin was built for (`GPTK_CUDA_ARCHS`).\n\
         pub const ARCHS: &str = {archs};\n\
         /// How the kernels were (or were not) built, one line.\n\
         pub const BUILD_STATUS: &str = {status};\n\
         /// nvcc's version line, empty without nvcc.\n\
         pub const NVCC_VERSION: &str = {nvcc_version};\n\
         /// The fatbin holding every kernel (empty without nvcc).\n\
         pub static FATBIN: &[u8] = include_bytes!({fatbin});\n\
         /// The kernels of kernels/*_sm90a.cu, sm_90a code only (empty without nvcc).\n\
         pub static FATBIN_SM90A: &[u8] = include_bytes!({fatbin_sm90a});\n\
         /// Where the ptxas resource report was written at build time.\n\
         pub const PTXAS_REPORT_PATH: &str = {report};\n\
         /// The ptxas resource report (`-Xptxas -v`), empty without nvcc.\n\
         pub const PTXAS_REPORT: &str = include_str!({report});\n\
         /// Every entry point's PTX parameters, a line each: the name, then each parameter's\n\
         /// type (`.u64`, `.u32`, `.f32`); empty without nvcc.\n\
         pub const PTX_PARAMS: &str = include_str!({params});\n",
        archs = rust_str(archs),
        status = rust_str(status),
        nvcc_version = rust_str(nvcc_version),
        fatbin = rust_str(&fatbin.display().to_string()),
        fatbin_sm90a = rust_str(&fatbin_sm90a.display().to_string()),
        report = rust_str(&report.display().to_string()),
        params = rust_str(&params.display().to_string()),
    );
    std::fs::write(out_dir.join("cuda_kernels.rs"), generated).expect("write cuda_kernels.rs");
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    embed_corpus(&out_dir);
    build_kernels(&out_dir);
}
