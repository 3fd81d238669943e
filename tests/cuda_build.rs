//! Checks of the CUDA build that need no GPU: the kernel list agrees with the sources, every
//! kernel compiled for sm_90 without spilling registers (read from the ptxas report build.rs
//! kept), the embedded fatbin holds machine code for sm_90, and the backend fails with one line
//! where there is no GPU. The build-output checks skip, with a note, only when nvcc was absent
//! at build time.

use gptk::backend::cuda::args::{self, Param};
use gptk::backend::cuda::{self, kernels};
use gptk::backend::{BackendError, Precision};
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, ParamLayout};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The `#define NAME value` lines of a kernel source.
fn defines(source: &str) -> BTreeMap<String, String> {
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

fn kernel_source(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn skip_without_nvcc(test: &str) -> bool {
    if !kernels::COMPILED {
        println!("note: {test} skipped: nvcc was absent when this crate was built ({})", kernels::BUILD_STATUS);
    }
    !kernels::COMPILED
}

/// (name, file) of every use of the entry-point macro `macro_name` in kernels/*.cu, sorted; the
/// files built for sm_90a alone (`*_sm90a.cu`) when `sm90a`, the others when not.
fn entry_points_in_sources(macro_name: &str, sm90a: bool) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cu") {
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            if file.ends_with("_sm90a.cu") != sm90a {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for chunk in text.split(&format!("{macro_name}(")).skip(1) {
                found.push((chunk.split(',').next().unwrap().trim().to_string(), file.clone()));
            }
        }
    }
    found.sort();
    found
}

fn sorted(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list.iter().map(|(n, f)| (n.to_string(), f.to_string())).collect();
    v.sort();
    v
}

#[test]
fn kernel_list_matches_the_entry_points_in_the_sources() {
    assert_eq!(
        entry_points_in_sources("GPTK_ENTRY_POINTS", false),
        sorted(kernels::KERNELS),
        "kernels::KERNELS must list every GPTK_ENTRY_POINTS of kernels/*.cu"
    );
    assert_eq!(
        entry_points_in_sources("GPTK_BF16_ENTRY_POINT", false),
        sorted(kernels::BF16_KERNELS),
        "kernels::BF16_KERNELS must list every GPTK_BF16_ENTRY_POINT of kernels/*.cu"
    );
    assert_eq!(
        entry_points_in_sources("GPTK_BF16_ENTRY_POINT", true),
        sorted(kernels::SM90A_KERNELS),
        "kernels::SM90A_KERNELS must list every GPTK_BF16_ENTRY_POINT of kernels/*_sm90a.cu"
    );
    assert!(entry_points_in_sources("GPTK_ENTRY_POINTS", true).is_empty(), "the sm_90a kernels are bf16 only");
}

#[test]
fn block_sizes_match_the_kernel_sources() {
    let expect = [
        ("gelu.cu", "ELEMENTWISE_BLOCK", kernels::ELEMENTWISE_BLOCK as usize),
        ("encoder.cu", "ENCODER_BLOCK", kernels::ENCODER_BLOCK as usize),
        ("layernorm.cu", "LAYERNORM_BLOCK", kernels::LAYERNORM_BLOCK as usize),
        ("attention.cu", "ATTENTION_BLOCK", kernels::ATTENTION_BLOCK as usize),
        ("attention.cu", "ATTENTION_MAX_HS", kernels::ATTENTION_MAX_HS),
        ("loss.cu", "LOSS_BLOCK", kernels::LOSS_BLOCK as usize),
        ("adamw.cu", "ADAMW_BLOCK", kernels::ADAMW_BLOCK as usize),
        ("adamw.cu", "ADAMW_ELEMS", kernels::ADAMW_ELEMS),
        ("adamw.cu", "STEP_SCALARS_BLOCK", kernels::STEP_SCALARS_BLOCK as usize),
        ("reduce.cu", "REDUCE_BLOCK", kernels::REDUCE_BLOCK as usize),
        ("matmul.cu", "MATMUL_BLOCK", kernels::MATMUL_BLOCK as usize),
        ("flash_attention.cu", "FLASH_BLOCK", kernels::FLASH_BLOCK as usize),
        ("flash_attention.cu", "FLASH_WARPS", kernels::FLASH_WARPS),
        ("flash_attention.cu", "FLASH_FWD_ROWS", kernels::FLASH_FWD_ROWS),
        ("flash_attention.cu", "FLASH_FWD_KEYS_HS64", kernels::FLASH_FWD_KEYS_HS64),
        ("flash_attention.cu", "FLASH_FWD_KEYS_HS128", kernels::FLASH_FWD_KEYS_HS128),
        ("flash_attention.cu", "FLASH_DKV_KEYS", kernels::FLASH_DKV_KEYS),
        ("flash_attention.cu", "FLASH_DKV_ROWS_HS64", kernels::FLASH_DKV_ROWS_HS64),
        ("flash_attention.cu", "FLASH_DKV_ROWS_HS128", kernels::FLASH_DKV_ROWS_HS128),
        ("flash_attention.cu", "FLASH_DQ_ROWS", kernels::FLASH_DQ_ROWS),
        ("flash_attention.cu", "FLASH_DQ_KEYS", kernels::FLASH_DQ_KEYS),
        ("flash_attention.cu", "FLASH_SMEM_PAD", kernels::FLASH_SMEM_PAD),
        ("flash_attention_sm90a.cu", "FLASH90_BLOCK", kernels::FLASH90_BLOCK as usize),
        ("flash_attention_sm90a.cu", "FLASH90_ROWS", kernels::FLASH90_ROWS),
        ("flash_attention_sm90a.cu", "FLASH90_KEYS_HS64", kernels::FLASH90_KEYS_HS64),
        ("flash_attention_sm90a.cu", "FLASH90_KEYS_HS128", kernels::FLASH90_KEYS_HS128),
        ("flash_attention_sm90a.cu", "FLASH90_DQ_KEYS", kernels::FLASH90_DQ_KEYS),
        ("flash_attention_sm90a.cu", "FLASH90_DKV_KEYS", kernels::FLASH90_DKV_KEYS),
        ("flash_attention_sm90a.cu", "FLASH90_DKV_ROWS_HS64", kernels::FLASH90_DKV_ROWS_HS64),
        ("flash_attention_sm90a.cu", "FLASH90_DKV_ROWS_HS128", kernels::FLASH90_DKV_ROWS_HS128),
        ("flash_attention_sm90a.cu", "FLASH90_WS_BLOCK", kernels::FLASH90_WS_BLOCK as usize),
        ("flash_attention_sm90a.cu", "FLASH90_TMA_STAGES", kernels::FLASH90_TMA_STAGES),
        ("flash_attention_sm90a.cu", "FLASH90_TMA_BOX", kernels::FLASH90_TMA_BOX),
        ("flash_attention_sm90a.cu", "TMA_PROBE_BLOCK", kernels::TMA_PROBE_BLOCK as usize),
    ];
    for (file, name, value) in expect {
        let d = defines(&kernel_source(file));
        assert_eq!(d.get(name).map(String::as_str), Some(value.to_string().as_str()), "{file}: {name}");
    }
}

/// The text inside the parentheses that open at byte `open` of `s`.
fn parenthesised(s: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, ch) in s[open..].char_indices() {
        match ch {
            '(' => depth += 1,
            ')' if depth == 1 => return &s[open + 1..open + i],
            ')' => depth -= 1,
            _ => {}
        }
    }
    panic!("unbalanced parentheses after: {}", &s[open..(open + 80).min(s.len())])
}

/// `s` split at the commas outside parentheses, each part trimmed.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

/// How one C parameter declaration (`const T* dout`, `long long n`, `const __grid_constant__
/// CUtensorMap map`) is passed, and its name in lower case.
fn c_param(decl: &str) -> (String, Param) {
    let name_at = decl.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    let (ty, name) = (decl[..name_at].trim(), &decl[name_at..]);
    let kind = match ty {
        _ if ty.contains('*') => Param::Ptr,
        // A tensor map goes by value, and must stay in the parameter space (`__grid_constant__`):
        // TMA copies read it from there.
        "const __grid_constant__ CUtensorMap" => Param::TensorMap,
        "int" => Param::I32,
        "long long" => Param::I64,
        "unsigned long long" => Param::U64,
        "float" => Param::F32,
        _ => panic!("kernel parameter '{decl}': a type the launches do not pass ({ty})"),
    };
    (name.to_lowercase(), kind)
}

/// Every entry point of kernels/*.cu with its parameters as the source declares them, by the
/// name the backend uses (the family of a GPTK_ENTRY_POINTS pair, the name of a
/// GPTK_BF16_ENTRY_POINT): the parameter list is the macro's PARAMS argument, a parenthesised
/// list or the name of a `#define NAME(T) (…)` / `#define NAME (…)` holding one.
fn entry_point_params_in_sources() -> BTreeMap<String, Vec<(String, Param)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap().replace("\\\n", " ");
        let define = |name: &str| -> &str {
            let at = [format!("#define {name}(T)"), format!("#define {name} ")]
                .iter()
                .find_map(|d| text.find(d.as_str()).map(|i| i + d.len()))
                .unwrap_or_else(|| panic!("{}: no #define of {name}", path.display()));
            let open = at + text[at..].find('(').unwrap();
            parenthesised(&text, open)
        };
        for (macro_name, params_at) in [("GPTK_ENTRY_POINTS(", 2), ("GPTK_BF16_ENTRY_POINT(", 3)] {
            for (at, _) in text.match_indices(macro_name) {
                let args = split_top_level(parenthesised(&text, at + macro_name.len() - 1));
                let params = args[params_at];
                let list = if params.starts_with('(') { parenthesised(params, 0) } else { define(params) };
                let params = split_top_level(list).into_iter().map(c_param).collect();
                assert!(found.insert(args[0].to_string(), params).is_none(), "{} declared twice", args[0]);
            }
        }
    }
    found
}

/// What the backend calls each entry point, with the names the PTX gives it.
fn backend_entry_points() -> Vec<(&'static str, Vec<String>)> {
    let pairs =
        kernels::KERNELS.iter().map(|(n, _)| (*n, kernels::DTYPE_SUFFIXES.map(|s| format!("{n}_{s}")).to_vec()));
    let bf16 = kernels::BF16_KERNELS.iter().chain(kernels::SM90A_KERNELS).map(|(n, _)| (*n, vec![format!("{n}_bf16")]));
    pairs.chain(bf16).collect()
}

/// The parameters of one entry point's line of the PTX parameter lists, each as build.rs spells
/// it (`.u64`; an aggregate as `.align 128 .b8 [128]`).
fn ptx_params(list: &str) -> Vec<String> {
    let mut params: Vec<String> = Vec::new();
    for word in list.split_whitespace() {
        match params.last_mut() {
            // An aggregate's words run to its size.
            Some(p) if p.starts_with(".align") && !p.ends_with(']') => *p += &format!(" {word}"),
            _ => params.push(word.to_string()),
        }
    }
    params
}

/// The launches pass each kernel the parameters it declares: every entry point has exactly one
/// parameter list in `args`, whose names, order and pointer-or-value match the source's, and
/// whose widths and classes match the PTX nvcc made of it (a pointer or a `long long` is `.u64`,
/// an `int` `.u32`, a `float` `.f32`, a tensor map 128 bytes as aligned as the launch's copy).
#[test]
fn launch_parameter_lists_match_the_kernels() {
    let entry_points = backend_entry_points();
    let names: BTreeSet<&str> = entry_points.iter().map(|(n, _)| *n).collect();
    let mut claimed = BTreeMap::new();
    for (list, (kernels_of_list, _)) in args::SIGNATURES.iter().enumerate() {
        for k in *kernels_of_list {
            assert!(names.contains(k), "args lists {k}, which is no entry point of kernels/*.cu");
            assert!(claimed.insert(*k, list).is_none(), "args lists {k} twice");
        }
    }
    let sources = entry_point_params_in_sources();
    for (name, _) in &entry_points {
        let rust = args::params_of(name).unwrap_or_else(|| panic!("no parameter list in args takes {name}"));
        let rust: Vec<(String, Param)> = rust.iter().map(|(n, k)| (n.to_string(), *k)).collect();
        assert_eq!(sources[*name], rust, "{name}: the kernel's parameters (left) and its launch's (right)");
    }

    if skip_without_nvcc("launch_parameter_lists_match_the_kernels (against the PTX)") {
        return;
    }
    let ptx: BTreeMap<&str, Vec<String>> = kernels::PTX_PARAMS
        .lines()
        .map(|l| l.split_once(' ').map_or((l, vec![]), |(n, rest)| (n, ptx_params(rest))))
        .collect();
    // A tensor map is 128 bytes, aligned to 64 by CUDA 12's header and to 128 by CUDA 13's (which
    // cudarc's type follows): the launch's copy must be at least as aligned as the parameter.
    let map_size = size_of::<args::TensorMap>();
    let map_fits = |ptx: &str| {
        let align = ptx.strip_prefix(".align ").and_then(|r| r.strip_suffix(&format!(" .b8 [{map_size}]")));
        align
            .and_then(|a| a.parse::<usize>().ok())
            .is_some_and(|a| a >= 64 && align_of::<args::TensorMap>().is_multiple_of(a))
    };
    let mut seen = 0;
    for (name, ptx_names) in &entry_points {
        let params = args::params_of(name).unwrap();
        for full in ptx_names {
            let got = ptx.get(full.as_str()).unwrap_or_else(|| panic!("{full} is not in the PTX"));
            // The PTX's spelling of each parameter where it fits the launch's, for one comparison.
            let want: Vec<&str> = params
                .iter()
                .enumerate()
                .map(|(i, (_, k))| match k {
                    Param::Ptr | Param::I64 | Param::U64 => ".u64",
                    Param::I32 => ".u32",
                    Param::F32 => ".f32",
                    Param::TensorMap => {
                        got.get(i).map(String::as_str).filter(|g| map_fits(g)).unwrap_or("a 128-byte tensor map")
                    }
                })
                .collect();
            assert_eq!(got, &want, "{full}: the PTX's parameters (left) and the launch's (right)");
            seen += 1;
        }
    }
    assert_eq!(seen, ptx.len(), "the PTX has entry points the backend does not launch: {:?}", ptx.keys());
}

#[test]
fn every_kernel_compiles_for_sm90_without_spills() {
    if skip_without_nvcc("every_kernel_compiles_for_sm90_without_spills") {
        return;
    }
    if !kernels::ARCHS.split(',').any(|a| a.trim() == "sm_90") {
        println!("note: GPTK_CUDA_ARCHS={} has no sm_90; nothing to check", kernels::ARCHS);
        return;
    }
    let report = kernels::resources();
    assert!(!report.is_empty(), "the ptxas report at {} is empty", kernels::PTXAS_REPORT_PATH);
    println!("{:<36} {:>6} {:>5} {:>6} {:>6} {:>6}", "kernel", "arch", "regs", "stack", "spill", "smem");
    let both = kernels::KERNELS.iter().flat_map(|k| kernels::DTYPE_SUFFIXES.map(|s| (k, s, "sm_90")));
    let bf16_only = kernels::BF16_KERNELS.iter().map(|k| (k, "bf16", "sm_90"));
    let sm90a = kernels::SM90A_KERNELS.iter().map(|k| (k, "bf16", "sm_90a"));
    for ((name, file), suffix, arch) in both.chain(bf16_only).chain(sm90a) {
        let full = format!("{name}_{suffix}");
        let k = report
            .iter()
            .find(|k| k.name == full && k.arch == arch)
            .unwrap_or_else(|| panic!("{full} (kernels/{file}) is not in the {arch} ptxas report"));
        println!(
            "{:<36} {:>6} {:>5} {:>6} {:>6} {:>6}",
            full,
            arch,
            k.registers,
            k.stack_bytes,
            k.spill_store_bytes + k.spill_load_bytes,
            k.shared_bytes
        );
        assert_eq!(
            (k.spill_store_bytes, k.spill_load_bytes),
            (0, 0),
            "{full} (kernels/{file}) spills registers on {arch}: {k:?}"
        );
        assert!(k.registers > 0, "{full}: no register count parsed: {k:?}");
    }
}

/// ptxas adds synchronisation the kernel did not ask for around warpgroup instructions, and says
/// so in the report with a C75xx note: wgmma serialized (each waiting for the one before) when it
/// cannot prove a branch around them warpgroup-uniform (C7520), a `warpgroup.arrive` or `.wait`
/// injected where registers an in-flight wgmma reads or writes are touched (C7519, C7517). A
/// kernel that compiles and is right but gives up much of what wgmma is for.
#[test]
fn ptxas_adds_no_warpgroup_synchronisation() {
    if skip_without_nvcc("ptxas_adds_no_warpgroup_synchronisation") {
        return;
    }
    let notes: Vec<&str> = kernels::PTXAS_REPORT.lines().filter(|l| l.contains("(C75")).collect();
    assert!(notes.is_empty(), "ptxas synchronises warpgroup instructions:\n{}", notes.join("\n"));
}

#[test]
fn fatbin_holds_code_for_every_requested_architecture() {
    if skip_without_nvcc("fatbin_holds_code_for_every_requested_architecture") {
        return;
    }
    let entries = kernels::fatbin_entries(kernels::FATBIN).expect("the embedded kernels are a fatbin image");
    let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
    for arch in kernels::ARCHS.split(',').map(str::trim) {
        assert!(targets.contains(&arch), "no {arch} code in the fatbin (it holds {targets:?})");
    }
    if kernels::ARCHS.split(',').any(|a| a.trim() == "sm_90") {
        let sm90 = entries.iter().find(|e| e.target == "sm_90").unwrap();
        assert!(sm90.bytes > 1000, "the sm_90 code object is implausibly small: {sm90:?}");
    }
    // The wgmma kernels: one machine-code object for compute capability 9.0 (the fatbin header
    // numbers sm_90a as 90), no PTX (sm_90a code is for that one architecture).
    let entries = kernels::fatbin_entries(kernels::FATBIN_SM90A).expect("the sm_90a kernels are a fatbin image");
    let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(targets, ["sm_90"], "the sm_90a fatbin holds {targets:?}");
    assert!(entries[0].bytes > 1000, "the sm_90a code object is implausibly small: {:?}", entries[0]);
}

#[test]
fn without_a_usable_gpu_the_backend_fails_with_one_line() {
    let cfg = ModelConfig::preset("micro", 257).unwrap();
    let params = ParamLayout::new(&cfg);
    let acts = ActLayout::new(&cfg, 2, 16, None);
    match cuda::CudaBackend::new(&params, &acts, Precision::Bf16, 0) {
        Ok(_) => println!("note: a GPU is present; the no-GPU message was not exercised"),
        Err(e @ BackendError::Unavailable(_)) => {
            let line = e.to_string();
            assert!(!line.contains('\n') && !line.is_empty(), "not one line: {line:?}");
            if !kernels::COMPILED {
                assert!(line.contains("pip install nvidia-cuda-nvcc"), "no install hint: {line}");
            }
        }
        Err(other) => panic!("expected Unavailable without a GPU, got {other}"),
    }
    if !cuda::is_compiled() {
        assert!(cuda::probe().is_err());
    }
}

/// cuobjdump, for reading the machine code of the kernels: `CUOBJDUMP`, else on `PATH`, else
/// under nvidia/cu13/bin in Python's package folders (the `nvidia-cuda-cuobjdump` wheel, which
/// .ci/install-nvcc.sh installs with `nvidia-cuda-nvdisasm`, the disassembler it runs).
fn find_cuobjdump() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("CUOBJDUMP").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join("cuobjdump")).find(|p| p.is_file()));
    if let Some(p) = on_path.flatten() {
        return Some(p);
    }
    let script = "import site, sys\nfor d in sys.path + site.getsitepackages(): print(d)";
    let out = std::process::Command::new("python3").args(["-c", script]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|d| Path::new(d).join("nvidia/cu13/bin/cuobjdump"))
        .find(|p| p.is_file())
}

/// The instructions of each kernel of the sm_90a fatbin, by function name, as cuobjdump prints
/// them (`HGMMA.64x64x16.F32.BF16 R88, R120, gdesc[UR12].tnspB, R88`); None, with a note, without
/// nvcc or cuobjdump.
fn sm90a_sass(test: &str) -> Option<BTreeMap<String, Vec<String>>> {
    if skip_without_nvcc(test) {
        return None;
    }
    let Some(tool) = find_cuobjdump() else {
        println!("note: {test} skipped: no cuobjdump (CUOBJDUMP, PATH or the nvidia-cuda-cuobjdump wheel)");
        return None;
    };
    let file = std::env::temp_dir().join(format!("gptk-sm90a-{}.fatbin", std::process::id()));
    std::fs::write(&file, kernels::FATBIN_SM90A).unwrap();
    let out = std::process::Command::new(&tool).arg("-sass").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    assert!(out.status.success(), "{} -sass: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
    let mut kernels = BTreeMap::new();
    let mut current: Option<&mut Vec<String>> = None;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("Function : ") {
            current = Some(kernels.entry(name.trim().to_string()).or_default());
        } else if let (Some(list), Some(rest)) = (current.as_mut(), line.trim().strip_prefix("/*")) {
            // `/*0a40*/  INSTRUCTION ;  /* encoding */`; encoding-only lines have no `;`.
            if let Some((_, text)) = rest.split_once("*/")
                && let Some((instruction, _)) = text.split_once(';')
            {
                list.push(instruction.trim().to_string());
            }
        }
    }
    Some(kernels)
}

/// What the wgmma kernels are for, in their machine code: every one runs `HGMMA`; the forward
/// computes its softmax (`MUFU.EX2`) after waiting for S alone (`WARPGROUP.DEPBAR.LE gsb0, 0x1`)
/// and before any other warpgroup instruction, so before waiting for its P·V product (ptxas put
/// that wait above the softmax when it stood in the same basic block), the dK/dV kernels their
/// Pᵀ likewise beside the previous tile's dV and dK products, the dQ kernel at HS = 128 its P
/// beside the previous tile's dQ product; the atomic-dQ backward's
/// dK/dV products run on through the barrier before dQ's product.
#[test]
fn wgmma_kernels_overlap_their_softmax_and_products() {
    let Some(sass) = sm90a_sass("wgmma_kernels_overlap_their_softmax_and_products") else {
        return;
    };
    let at =
        |list: &[String], from: usize, what: &str| list[from..].iter().position(|i| i.contains(what)).map(|p| p + from);
    // (The TMA probe only copies.)
    for (name, _) in kernels::SM90A_KERNELS.iter().filter(|(name, _)| *name != "tma_probe") {
        let code = &sass[&format!("{name}_bf16")];
        assert!(code.iter().any(|i| i.starts_with("HGMMA")), "{name}: no HGMMA in its SASS");
    }
    // Each kernel that overlaps, and a tile's exponentials per thread (the forward and dQ: keys / 2
    // of a key tile; dK/dV: queries / 2 of a query tile).
    let overlapping = [
        ("flash_forward_sm90a_hs64_bf16", 64),
        ("flash_forward_sm90a_hs128_bf16", 32),
        ("flash_backward_dkv_sm90a_hs64_bf16", 32),
        ("flash_backward_dkv_sm90a_hs128_bf16", 16),
        ("flash_backward_dkvq_sm90a_hs64_bf16", 32),
        ("flash_backward_dkvq_sm90a_hs128_bf16", 16),
        ("flash_backward_dq_sm90a_hs128_bf16", 32),
    ];
    for (name, tile_exps) in overlapping {
        let code = &sass[name];
        let s_done =
            at(code, 0, "WARPGROUP.DEPBAR.LE gsb0, 0x1").unwrap_or_else(|| panic!("{name}: no wait for S alone"));
        // Up to the next warpgroup instruction (in the code's layout; a wait ptxas put before
        // the softmax would come first).
        let next = at(code, s_done + 1, "WARPGROUP.").unwrap_or(code.len());
        let exps = code[s_done..next].iter().filter(|i| i.starts_with("MUFU.EX2")).count();
        assert!(exps >= tile_exps, "{name}: {exps} exponentials after the wait for S alone, not a tile's {tile_exps}");
    }
    for name in ["flash_backward_dkvq_sm90a_hs64_bf16", "flash_backward_dkvq_sm90a_hs128_bf16"] {
        let code = &sass[name];
        // dK/dV's products: A from registers (`HGMMA… R88, R120, gdesc….tnspB`).
        let is_dkv = |i: &String| i.starts_with("HGMMA") && i.contains(".tnspB") && !i.contains(".tnspA");
        let last = code.iter().rposition(is_dkv).unwrap_or_else(|| panic!("{name}: no dK/dV product"));
        // The wait for all (the wait for S alone, 0x1, lets them run on).
        let wait =
            at(code, last, "WARPGROUP.DEPBAR.LE gsb0, 0x0").unwrap_or_else(|| panic!("{name}: no wait after dK/dV"));
        assert!(
            code[last..wait].iter().any(|i| i.starts_with("BAR.SYNC")),
            "{name}: the dK/dV products are waited for before the barrier"
        );
    }
}
