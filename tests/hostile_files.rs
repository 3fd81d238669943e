//! Every file gptk reads is treated as hostile: a wrong, truncated or crafted file gives one
//! error line naming the file, never a panic and never an allocation sized by the file's claims
//! rather than its contents.
//!
//! The inputs that once got through are rebuilt here (and kept as files under
//! `tests/fuzz-regressions/<target>/`, replayed through the fuzz targets); every fuzz target also
//! runs a short seeded mutation on each `cargo test` (`scripts/fuzz.sh` runs them for longer).
//! A global allocator refuses any single allocation above 1 GiB, so an input that makes a parser
//! size a buffer from a claim aborts this test binary with "memory allocation of N bytes failed".

#[path = "../fuzz/src/mutate.rs"]
#[allow(dead_code)] // the time budget is for scripts/fuzz.sh
mod mutate;
#[path = "../fuzz/src/targets.rs"]
mod targets;

use gptk::checkpoint;
use gptk::data::loader::{Loader, Split};
use gptk::data::prepare::{MANIFEST_FILE, Manifest};
use gptk::data::shard::{self, HEADER_BYTES, Shard};
use gptk::train::checkpoint::parse_state;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const ALLOC_LIMIT_BYTES: usize = 1 << 30;

/// The system allocator, refusing single allocations above [`ALLOC_LIMIT_BYTES`].
struct Capped;

// SAFETY: defers to `System` for every allocation it grants.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT_BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT_BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT_BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `weights` (a safetensors file) with `extra` tensors added and metadata replaced by `meta` when
/// given.
fn with_tensors(weights: &[u8], extra: &[(&str, Vec<usize>)], meta: Option<HashMap<String, String>>) -> Vec<u8> {
    let (_, header) = SafeTensors::read_metadata(weights).unwrap();
    let st = SafeTensors::deserialize(weights).unwrap();
    let mut views: Vec<(String, TensorView)> = st.tensors();
    for (name, shape) in extra {
        views.push((name.to_string(), TensorView::new(Dtype::F32, shape.clone(), &[]).unwrap()));
    }
    let meta = meta.or_else(|| header.metadata().clone());
    safetensors::tensor::serialize(views, meta).unwrap()
}

/// Loads through the library and expects an error containing every needle.
fn load_error(weights: &[u8], config: Option<&str>, needles: &[&str]) -> String {
    let cp = Path::new("dir/config.json");
    let err = checkpoint::load_bytes(Path::new("dir/model.safetensors"), weights, config.map(|c| (cp, c)))
        .expect_err("a hostile model must be refused")
        .to_string();
    for needle in needles {
        assert!(err.contains(needle), "error lacks '{needle}': {err}");
    }
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

fn with_field(config: &str, key: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(config).unwrap();
    v[key] = value;
    v.to_string()
}

/// A tensor of zero elements named after block 10^11 with a config (from config.json, or the
/// header's own record when `with_config` is false) claiming 10^11 layers.
fn crafted_huge_block(with_config: bool) -> (Option<String>, Vec<u8>) {
    let (config, weights) = targets::small_model(0);
    let huge = [("transformer.h.99999999999.ln_1.weight", vec![0])];
    if with_config {
        (Some(with_field(&config, "n_layer", 100_000_000_000u64.into())), with_tensors(&weights, &huge, None))
    } else {
        let record = r#"{"n_layer":100000000000,"n_head":2,"n_embd":4,"n_ctx":3,"vocab_size":7}"#;
        let meta = HashMap::from([("gptk_config".to_string(), record.to_string())]);
        (None, with_tensors(&weights, &huge, Some(meta)))
    }
}

/// A classification head of shape `[2^40, 0]`: no values, a huge class count.
fn crafted_zero_width_head() -> (Option<String>, Vec<u8>) {
    let (config, weights) = targets::small_model(0);
    let head = [("gptk.head.weight", vec![1 << 40, 0]), ("gptk.head.bias", vec![0])];
    (Some(config), with_tensors(&weights, &head, None))
}

/// Weights whose `gptk_config` record has a vocabulary of 2^64 - 1, and no config.json.
fn crafted_huge_vocab() -> (Option<String>, Vec<u8>) {
    let (_, weights) = targets::small_model(0);
    let cfg = format!(r#"{{"n_layer":1,"n_head":2,"n_embd":4,"n_ctx":3,"vocab_size":{}}}"#, u64::MAX);
    (None, with_tensors(&weights, &[], Some(HashMap::from([("gptk_config".to_string(), cfg)]))))
}

// Found by review of the size checks: a tensor of zero elements named after block 10^11 passed
// the layer count of a config claiming 10^11 layers (and the count inferred without a config), so
// the parameter table and buffer were built for 10^11 layers before any tensor was looked up.
#[test]
fn zero_size_tensor_with_a_huge_block_number_is_refused_before_allocation() {
    let (config, crafted) = crafted_huge_block(true);
    let needles = ["dir/config.json", "parameter values", "does not describe these weights"];
    load_error(&crafted, config.as_deref(), &needles);
    // Without config.json the shape comes from the header's own record.
    let (_, bare) = crafted_huge_block(false);
    load_error(&bare, None, &["dir/model.safetensors", "parameter values"]);
}

// Found by review: a classification head `[2^40, 0]` holds no values, yet its first dimension
// was taken as the number of classes and sized the parameter buffer (2^40 × C floats).
#[test]
fn head_with_a_zero_width_is_refused_before_allocation() {
    let (config, crafted) = crafted_zero_width_head();
    load_error(&crafted, config.as_deref(), &["gptk.head.weight", "expected [classes, 4]"]);
}

// Found by the fuzz targets' debug assertions: a `gptk_config` record with a vocabulary near
// usize::MAX overflowed the padded-vocabulary arithmetic in `ModelConfig::validate` (a panic with
// overflow checks; a wrapped, accepted size without).
#[test]
fn vocabulary_near_usize_max_is_refused_without_overflow() {
    let (_, crafted) = crafted_huge_vocab();
    load_error(&crafted, None, &["vocab_size 18446744073709551615 is too large"]);
}

#[test]
fn configs_claiming_more_than_the_weights_hold_are_refused() {
    let (config, weights) = targets::small_model(0);
    for (key, value, needle) in [
        ("n_layer", serde_json::json!(1u64 << 40), "n_layer is 1099511627776"),
        ("n_embd", serde_json::json!(1u64 << 40), "n_embd is 1099511627776"),
        ("n_positions", serde_json::json!(u64::MAX), "n_positions is 18446744073709551615"),
        // `vocab_size` counts the padded rows; the real vocabulary is `gptk_vocab_size`.
        ("gptk_vocab_size", serde_json::json!(u64::MAX), "too large"),
        ("n_head", serde_json::json!(0), "n_head must be at least 1"),
        ("n_layer", serde_json::json!(-1), "must be a non-negative integer"),
        ("n_layer", serde_json::json!(1.5), "must be a non-negative integer"),
    ] {
        let c = with_field(&config, key, value);
        load_error(&weights, Some(&c), &["dir/config.json", needle]);
    }
    load_error(&weights, Some("[1, 2]"), &["expected a JSON object"]);
    load_error(&weights, Some("{\"n_layer\": 1"), &["not valid JSON"]);
}

/// A safetensors header of `json` over `data`.
fn raw_safetensors(json: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("header length of 2^64 - 1", u64::MAX.to_le_bytes().iter().copied().chain(*b"{}").collect()),
        ("header past the end", {
            let mut b = raw_safetensors("{}", &[]);
            b[..8].copy_from_slice(&1000u64.to_le_bytes());
            b
        }),
        (
            "data past the end",
            raw_safetensors(r#"{"wte.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, &[0; 8]),
        ),
        (
            "shape product overflowing",
            raw_safetensors(
                r#"{"wte.weight":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        ),
        (
            "offsets overflowing",
            raw_safetensors(
                r#"{"wte.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
                &[0; 4],
            ),
        ),
        (
            "shape disagreeing with the offsets",
            raw_safetensors(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}}"#, &[0; 4]),
        ),
        ("eight bytes", 0u64.to_le_bytes().to_vec()),
        ("nothing", Vec::new()),
    ];
    for (what, bytes) in cases {
        let err = load_error(&bytes, None, &["dir/model.safetensors"]);
        assert!(err.contains("not a valid safetensors file"), "{what}: {err}");
    }
    // Valid framing, wrong content.
    let wrong_dtype = raw_safetensors(
        r#"{"wte.weight":{"dtype":"I64","shape":[7,4],"data_offsets":[0,224]},"wpe.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[224,272]}}"#,
        &[0; 272],
    );
    load_error(&wrong_dtype, None, &["n_embd 4 is not a multiple of 64"]);
    let (config, _) = targets::small_model(0);
    load_error(&wrong_dtype, Some(&config), &["the tensors hold 0 blocks"]);
}

#[test]
fn training_state_files_are_checked() {
    let path = Path::new("ckpt/train_state.safetensors");
    let good = targets::state_file(8);
    let (state, m, v) = parse_state(path, &good).unwrap();
    assert_eq!((state.step, m.len(), v.len()), (4, 8, 8));
    let meta = |json: &str| Some(HashMap::from([("gptk_train_state".to_string(), json.to_string())]));
    let (_, header) = SafeTensors::read_metadata(&good).unwrap();
    let state_json = header.metadata().as_ref().unwrap()["gptk_train_state"].clone();
    let floats = vec![0u8; 32];
    fn view(shape: Vec<usize>, bytes: &[u8]) -> TensorView<'_> {
        TensorView::new(Dtype::F32, shape, bytes).unwrap()
    }
    // (tensors, metadata, what the error must say)
    type Case<'a> = (Vec<(&'a str, TensorView<'a>)>, Option<HashMap<String, String>>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("adamw.m", view(vec![8], &floats)), ("adamw.v", view(vec![4], &floats[..16]))],
            meta(&state_json),
            "hold 8 and 4 values",
        ),
        (
            vec![("adamw.m", view(vec![2, 4], &floats)), ("adamw.v", view(vec![8], &floats))],
            meta(&state_json),
            "expected one dimension",
        ),
        (vec![("adamw.m", view(vec![8], &floats))], meta(&state_json), "missing tensor 'adamw.v'"),
        (
            vec![
                ("adamw.m", TensorView::new(Dtype::I32, vec![8], &floats).unwrap()),
                ("adamw.v", view(vec![8], &floats)),
            ],
            meta(&state_json),
            "dtype I32, expected F32",
        ),
        (
            vec![("adamw.m", view(vec![8], &floats)), ("adamw.v", view(vec![8], &floats))],
            None,
            "metadata 'gptk_train_state' is missing",
        ),
        (
            vec![("adamw.m", view(vec![8], &floats)), ("adamw.v", view(vec![8], &floats))],
            meta(r#"{"step": -1}"#),
            "unreadable",
        ),
    ];
    for (views, meta, needle) in cases {
        let bytes = safetensors::tensor::serialize(views, meta).unwrap();
        let err = parse_state(path, &bytes).expect_err("refused").to_string();
        assert!(err.starts_with("ckpt/train_state.safetensors: ") && err.contains(needle), "{needle}: {err}");
    }
    let mut cut = good.clone();
    cut.truncate(good.len() - 1);
    assert!(parse_state(path, &cut).unwrap_err().to_string().contains("not a valid safetensors file"));
}

#[test]
fn shard_headers_that_lie_are_refused() {
    let path = Path::new("d/x_train_000000.bin");
    let good = targets::shard_file(&[1, 2, 3]);
    assert_eq!(shard::parse_header(path, &good, good.len() as u64).unwrap(), 3);
    let with = |word: usize, value: i32| {
        let mut b = good.clone();
        b[4 * word..4 * word + 4].copy_from_slice(&value.to_le_bytes());
        b
    };
    for (bytes, needle) in [
        (with(2, i32::MAX), "header says 2147483647 tokens (4294968318 bytes) but the file has 1030 bytes"),
        (with(2, -1), "negative token count -1"),
        (with(2, 4), "header says 4 tokens"),
        (with(1, 2), "version 2"),
        (with(1, 7), "unsupported version 7"),
        (with(0, 0), "bad magic 0"),
        (good[..HEADER_BYTES - 1].to_vec(), "shorter than the 1024-byte"),
    ] {
        let err = shard::parse_header(path, &bytes[..bytes.len().min(HEADER_BYTES)], bytes.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("d/x_train_000000.bin: ") && err.contains(needle), "{needle}: {err}");
    }
    // The same through a real file.
    let dir = temp_dir("shard");
    let file = dir.join("x_train_000000.bin");
    std::fs::write(&file, with(2, i32::MAX)).unwrap();
    assert!(Shard::open(&file).err().unwrap().to_string().contains("header says 2147483647 tokens"));
}

// Found by review: shard names in manifest.json were joined to the data directory as they were,
// so "../../elsewhere/x.bin" or an absolute path made gptk read files outside it.
#[test]
fn manifest_shard_names_cannot_leave_the_directory() {
    let good = String::from_utf8(targets::seeds("manifest").remove(0)).unwrap();
    let path = Path::new("data/manifest.json");
    assert!(Manifest::parse(path, &good).is_ok());
    for name in ["../../etc/passwd", "/etc/passwd", "sub/x_train_000000.bin", "..", ".", ""] {
        let bad = good.replace("d_train_000000.bin", &name.replace('\\', "\\\\"));
        let err = Manifest::parse(path, &bad).expect_err("refused").to_string();
        assert!(err.contains("is not a file name in this directory"), "{name}: {err}");
    }
    for (from, to, needle) in [
        ("\"vocab_size\":257", "\"vocab_size\":-1", "not a gptk manifest"),
        ("\"shards\":[\"d_train_000000.bin\"]", "\"shards\":\"d\"", "not a gptk manifest"),
    ] {
        let err = Manifest::parse(path, &good.replace(from, to)).expect_err("refused").to_string();
        assert!(err.starts_with("data/manifest.json: ") && err.contains(needle), "{err}");
    }
    // Through the loader: a real directory whose manifest points outside it.
    let dir = temp_dir("manifest");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(dir.join("outside_train_000000.bin"), targets::shard_file(&[1; 100])).unwrap();
    std::fs::write(data.join(MANIFEST_FILE), good.replace("d_train_000000.bin", "../outside_train_000000.bin"))
        .unwrap();
    let err = Loader::open(&data, Split::Train, 1, 4, 0, 0, 1).err().expect("refused").to_string();
    assert!(err.contains("manifest.json") && err.contains("not a file name"), "{err}");
}

#[test]
fn jsonl_inputs_name_the_line() {
    use gptk::data::prepare::jsonl_texts;
    use gptk::data::task::{Labels, parse_examples};
    let p = Path::new("in.jsonl");
    assert_eq!(jsonl_texts(p, "\u{FEFF}{\"text\":\"a\"}\n\n{\"text\":\"b\"}", "text").unwrap(), ["a", "b"]);
    for (body, needle) in [
        ("{\"text\":\"a\"}\n{\"text\":", "in.jsonl:2: not a JSON object"),
        ("{\"text\": 5}", "in.jsonl:1: no string field 'text'"),
        ("[\"text\"]", "in.jsonl:1: no string field 'text'"),
        ("{\"text\":\"\\ud800\"}", "in.jsonl:1: not a JSON object"),
        ("{\"text\":\"a\"}\n1e999999", "in.jsonl:2: not a JSON object"),
    ] {
        let err = jsonl_texts(p, body, "text").unwrap_err().to_string();
        assert!(err.contains(needle), "{body}: {err}");
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(jsonl_texts(p, &deep, "text").unwrap_err().to_string().contains("in.jsonl:1: not a JSON object"));
    for (body, needle) in [
        ("{\"text\":\"a\",\"label\":18446744073709551616}", "'label' must be a non-empty string or an integer"),
        ("{\"text\":\"a\",\"label\":\"\"}", "'label' must be a non-empty string"),
        ("{\"text\":\"a\",\"text_b\":7,\"label\":1}", "'text_b' must be a string"),
        (&deep, "task.jsonl:1: not JSON"),
    ] {
        let err = parse_examples(Path::new("task.jsonl"), body, Labels::Required).unwrap_err().to_string();
        assert!(err.contains(needle), "{body:.40}: {err}");
    }
}

/// A training-state file whose two moments differ in length (the target asserts they agree).
fn crafted_uneven_moments() -> Vec<u8> {
    let good = targets::state_file(8);
    let (_, header) = SafeTensors::read_metadata(&good).unwrap();
    let floats = [0u8; 32];
    let views = [
        ("adamw.m", TensorView::new(Dtype::F32, vec![8], &floats).unwrap()),
        ("adamw.v", TensorView::new(Dtype::F32, vec![4], &floats[..16]).unwrap()),
    ];
    safetensors::tensor::serialize(views, header.metadata().clone()).unwrap()
}

/// The crafted inputs of the tests above, as files of the fuzz targets' formats: (target, file
/// name, bytes). `tests/fuzz-regressions/` holds them; `write_regression_inputs` rewrites them.
fn regression_inputs() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let model = |(config, weights): (Option<String>, Vec<u8>)| targets::model_input(config.as_deref(), &weights);
    let manifest = String::from_utf8(targets::seeds("manifest").remove(0)).unwrap();
    vec![
        ("model_file", "zero-size-tensor-of-block-1e11", model(crafted_huge_block(true))),
        ("model_file", "zero-size-tensor-of-block-1e11-no-config", model(crafted_huge_block(false))),
        ("model_file", "head-of-2e40-classes-and-zero-width", model(crafted_zero_width_head())),
        ("model_file", "vocabulary-of-2e64-minus-1", model(crafted_huge_vocab())),
        ("config_json", "vocabulary-of-2e64-minus-1", {
            let (config, _) = targets::small_model(0);
            with_field(&config, "gptk_vocab_size", u64::MAX.into()).into_bytes()
        }),
        ("train_state", "moments-of-different-lengths", crafted_uneven_moments()),
        ("shard_header", "count-of-2e31-minus-1", {
            let mut b = targets::shard_file(&[1, 2, 3]);
            b[8..12].copy_from_slice(&i32::MAX.to_le_bytes());
            b
        }),
        ("manifest", "shard-outside-the-directory", manifest.replace("d_train_000000.bin", "../../x.bin").into_bytes()),
    ]
}

fn regressions_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

/// Rewrites `tests/fuzz-regressions/` from `regression_inputs` (run with `--ignored` after adding
/// a case; inputs found by `scripts/fuzz.sh` are copied there by hand).
#[test]
#[ignore]
fn write_regression_inputs() {
    for (target, name, bytes) in regression_inputs() {
        let dir = regressions_root().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Inputs kept from earlier failures, replayed through their targets.
#[test]
fn fuzz_regressions_replay() {
    let root = regressions_root();
    for (target, name, _) in regression_inputs() {
        let file = root.join(target).join(name);
        assert!(file.is_file(), "{} is missing (cargo test --test hostile_files -- --ignored)", file.display());
    }
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else { continue };
        for e in entries.flatten() {
            let input = std::fs::read(e.path()).unwrap();
            let run = std::panic::catch_unwind(|| target(&input));
            assert!(run.is_ok(), "{name}: {} panics", e.path().display());
            replayed += 1;
        }
    }
    assert!(replayed >= regression_inputs().len(), "{replayed} inputs under {}", root.display());
}

/// A short, seeded mutation run of every target: the same inputs on every run.
#[test]
fn every_fuzz_target_survives_a_short_mutation_run() {
    for (name, target) in targets::TARGETS {
        let seeds = targets::seeds(name);
        match mutate::run(*target, &seeds, mutate::Budget::Iterations(3000), 0x6B7) {
            Ok(runs) => assert_eq!(runs, 3000),
            Err(f) => panic!("{name}: {} on input {:?}", f.message, String::from_utf8_lossy(&f.input)),
        }
    }
}

fn gptk(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).current_dir(dir).output().expect("run gptk")
}

// Found by review: a training-state file whose moments do not match the model reached the
// backend's upload, which asserts on the length (a panic).
#[test]
fn resume_with_a_state_file_of_another_model_is_one_line() {
    let dir = temp_dir("resume-state");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text: String = (0..400).map(|i| format!("line {i} of a small text.\n")).collect();
    std::fs::write(dir.join("doc.txt"), text).unwrap();
    let prep =
        gptk(&["prepare", "--input", "doc.txt", "--out", "data", "--tokenizer", "bytes", "--val-fraction", "0"], &dir);
    assert!(prep.status.success(), "{}", String::from_utf8_lossy(&prep.stderr));
    let args = [
        "train",
        "--data",
        "data",
        "--out",
        "run",
        "--model",
        "micro",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--sample-every",
        "0",
        "--val-every",
        "0",
        "--steps",
    ];
    let first = gptk(&[&args[..], &["2"]].concat(), &dir);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let state = dir.join("run/step_000002/train_state.safetensors");
    let (_, header) =
        SafeTensors::read_metadata(&std::fs::read(&state).unwrap()).map(|(n, h)| (n, h.metadata().clone())).unwrap();
    let floats = vec![0u8; 40];
    let views = [
        ("adamw.m", TensorView::new(Dtype::F32, vec![10], &floats).unwrap()),
        ("adamw.v", TensorView::new(Dtype::F32, vec![10], &floats).unwrap()),
    ];
    std::fs::write(&state, safetensors::tensor::serialize(views, header).unwrap()).unwrap();
    let out = gptk(&[&args[..], &["4", "--resume"]].concat(), &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("train_state.safetensors: the optimizer moments hold 10 values"), "{err}");
}
