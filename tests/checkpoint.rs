//! Checkpoints in and out: gptk's own files round-trip bit for bit; Hugging Face GPT-2 files
//! written here from Rust (Conv1D weights transposed, real vocabulary only, with or without the
//! `transformer.` prefix and `lm_head.weight`, in f32, f16 and bf16) load to exactly the values
//! they hold; and every kind of bad input gives one line naming the file and the problem.

use gptk::checkpoint::{self, CONFIG_FILE, MODEL_FILE};
use gptk::model::config::ModelConfig;
use gptk::model::layout::ParamLayout;
use gptk::rng::Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh, empty directory for one test.
fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-checkpoint-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny() -> ModelConfig {
    ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, n_ctx: 16, vocab_size: 67 }
}

/// Random values in every parameter; embedding rows from `wte_rows` on stay 0 (what loading a
/// file with `wte_rows` rows gives). Alignment gaps between tensors stay 0.
fn random_params(cfg: &ModelConfig, wte_rows: usize, seed: u64) -> Vec<f32> {
    random_params_with_head(cfg, wte_rows, 0, seed)
}

fn random_params_with_head(cfg: &ModelConfig, wte_rows: usize, n_classes: usize, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::with_head(cfg, n_classes);
    let mut p = vec![0f32; layout.total];
    let mut rng = Rng::new(seed);
    for spec in &layout.specs {
        let live = if spec.name == "wte.weight" { wte_rows * cfg.n_embd } else { spec.tensor.len };
        for x in &mut p[spec.tensor.offset..spec.tensor.offset + live] {
            *x = (rng.normal() * 0.5) as f32;
        }
    }
    p
}

fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!(
            "{what}: element {i} is {} (bits {:#x}), expected {} (bits {:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

#[test]
fn save_then_load_is_bitwise_identical() {
    let dir = tmpdir("roundtrip");
    let cfg = tiny();
    // Every row of the padded embedding is written, special-token and alignment rows included,
    // and a classification head of 3 classes rides along with its labels.
    let params = random_params_with_head(&cfg, cfg.padded_vocab_size(), 3, 1);
    let layout = ParamLayout::with_head(&cfg, 3);
    let meta = HashMap::from([
        ("gptk_note".to_string(), "kept".to_string()),
        (checkpoint::META_LABELS.to_string(), "[\"neg\",\"neu\",\"pos\"]".to_string()),
    ]);
    checkpoint::save(&dir, &cfg, &layout, &params, &meta).unwrap();

    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, [CONFIG_FILE, MODEL_FILE], "no temporary files are left behind");

    for path in [dir.clone(), dir.join(MODEL_FILE)] {
        let loaded = checkpoint::load(&path).unwrap();
        assert_eq!(loaded.cfg, cfg);
        assert_bitwise("params", &loaded.params, &params);
        assert_eq!(loaded.n_classes, 3);
        assert_eq!(loaded.metadata["gptk_note"], "kept");
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }
    // Without config.json the config stored in the safetensors metadata is used.
    std::fs::remove_file(dir.join(CONFIG_FILE)).unwrap();
    let loaded = checkpoint::load(&dir).unwrap();
    assert_eq!(loaded.cfg, cfg);
    assert_bitwise("params (metadata config)", &loaded.params, &params);

    // The labels reach config.json as transformers' id2label.
    checkpoint::save(&dir, &cfg, &layout, &params, &meta).unwrap();
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["id2label"], json!({"0": "neg", "1": "neu", "2": "pos"}));

    // What transformers reads: Vp rows with vocab_size = Vp, the real vocabulary beside it.
    let plain = random_params(&cfg, cfg.padded_vocab_size(), 1);
    checkpoint::save(&dir, &cfg, &ParamLayout::new(&cfg), &plain, &HashMap::new()).unwrap();
    assert_eq!(checkpoint::load(&dir).unwrap().n_classes, 0);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["vocab_size"], json!(cfg.padded_vocab_size()));
    assert_eq!(config["gptk_vocab_size"], json!(cfg.vocab_size));
    assert_eq!(config["model_type"], json!("gpt2"));
    assert_eq!(config["tie_word_embeddings"], json!(true));
}

// ---- Hugging Face files written from Rust ----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dt {
    F32,
    F16,
    Bf16,
}

/// A value as the file stores it, widened back to f32.
fn through(dt: Dt, x: f32) -> f32 {
    match dt {
        Dt::F32 => x,
        Dt::F16 => half::f16::from_f32(x).to_f32(),
        Dt::Bf16 => half::bf16::from_f32(x).to_f32(),
    }
}

fn encode(dt: Dt, xs: &[f32]) -> (Dtype, Vec<u8>) {
    match dt {
        Dt::F32 => (Dtype::F32, xs.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Dt::F16 => (Dtype::F16, xs.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()),
        Dt::Bf16 => (Dtype::BF16, xs.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()),
    }
}

/// One tensor of a file being written: name, dtype, shape, raw bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensors of a GPT-2 checkpoint as `transformers` lays them out: Conv1D weights (C, OC),
/// `wte` with `wte_rows` rows, names with or without `transformer.`.
fn hf_tensors(cfg: &ModelConfig, params: &[f32], dt: Dt, prefix: bool, wte_rows: usize) -> Vec<Raw> {
    let layout = ParamLayout::new(cfg);
    let pre = if prefix { "transformer." } else { "" };
    let mut out = Vec::new();
    for spec in &layout.specs {
        let src = &params[spec.tensor.offset..spec.tensor.end()];
        let (shape, values) = if spec.conv1d {
            let (oc, c) = (spec.shape[0], spec.shape[1]);
            let mut t = vec![0f32; src.len()];
            for o in 0..oc {
                for i in 0..c {
                    t[i * oc + o] = src[o * c + i];
                }
            }
            (vec![c, oc], t)
        } else if spec.name == "wte.weight" {
            (vec![wte_rows, cfg.n_embd], src[..wte_rows * cfg.n_embd].to_vec())
        } else {
            (spec.shape.clone(), src.to_vec())
        };
        let (dtype, bytes) = encode(dt, &values);
        out.push((format!("{pre}{}", spec.name), dtype, shape, bytes));
    }
    out
}

/// A Hugging Face GPT-2 `config.json` for `cfg` (real vocabulary, no gptk fields).
fn hf_config(cfg: &ModelConfig) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.n_ctx,
        "n_inner": null,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "dtype": "float32",
    })
}

fn write_safetensors(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path).unwrap();
}

fn write_config(dir: &Path, config: &Value) {
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(config).unwrap()).unwrap();
}

fn find<'a>(tensors: &'a mut [Raw], short: &str) -> &'a mut Raw {
    tensors.iter_mut().find(|t| t.0.strip_prefix("transformer.").unwrap_or(&t.0) == short).unwrap()
}

/// A valid Hugging Face checkpoint directory for `tiny()` in f32 with the `transformer.` prefix;
/// returns its params as gptk should load them.
fn write_hf_dir(dir: &Path) -> (Vec<Raw>, Vec<f32>) {
    let cfg = tiny();
    let params = random_params(&cfg, cfg.vocab_size, 7);
    let tensors = hf_tensors(&cfg, &params, Dt::F32, true, cfg.vocab_size);
    write_safetensors(&dir.join(MODEL_FILE), &tensors);
    write_config(dir, &hf_config(&cfg));
    (tensors, params)
}

#[test]
fn hugging_face_layouts_load_exactly() {
    let cfg = tiny();
    let c = cfg.n_embd;
    let params = random_params(&cfg, cfg.vocab_size, 3);
    for dt in [Dt::F32, Dt::F16, Dt::Bf16] {
        for prefix in [true, false] {
            for lm_head in [false, true] {
                let what = format!("{dt:?} prefix={prefix} lm_head={lm_head}");
                let dir = tmpdir(&format!("hf-{dt:?}-{prefix}-{lm_head}"));
                let mut tensors = hf_tensors(&cfg, &params, dt, prefix, cfg.vocab_size);
                if lm_head {
                    let wte = find(&mut tensors, "wte.weight").clone();
                    tensors.push(("lm_head.weight".into(), wte.1, wte.2, wte.3));
                }
                if !prefix {
                    // The hub's original gpt2 files also carry the causal-mask buffers.
                    for l in 0..cfg.n_layer {
                        let mask: Vec<f32> = (0..cfg.n_ctx * cfg.n_ctx)
                            .map(|i| ((i % cfg.n_ctx) <= (i / cfg.n_ctx)) as u8 as f32)
                            .collect();
                        let (dtype, bytes) = encode(Dt::F32, &mask);
                        tensors.push((format!("h.{l}.attn.bias"), dtype, vec![1, 1, cfg.n_ctx, cfg.n_ctx], bytes));
                    }
                }
                write_safetensors(&dir.join(MODEL_FILE), &tensors);
                write_config(&dir, &hf_config(&cfg));
                let loaded = checkpoint::load(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(loaded.cfg, cfg, "{what}");
                let want: Vec<f32> = params.iter().map(|&x| through(dt, x)).collect();
                assert_bitwise(&what, &loaded.params, &want);
                assert!(loaded.notes.is_empty(), "{what}: {:?}", loaded.notes);
                // The special-token rows past the real vocabulary start at 0.
                let wte = ParamLayout::new(&cfg).wte;
                assert!(loaded.params[wte.offset + cfg.vocab_size * c..wte.end()].iter().all(|&x| x == 0.0));
            }
        }
    }
}

#[test]
fn bare_safetensors_file_infers_the_shape_from_its_tensors() {
    let dir = tmpdir("bare");
    let cfg = ModelConfig { n_layer: 3, n_head: 2, n_embd: 128, n_ctx: 8, vocab_size: 50 };
    let params = random_params(&cfg, cfg.vocab_size, 5);
    write_safetensors(&dir.join(MODEL_FILE), &hf_tensors(&cfg, &params, Dt::F32, false, cfg.vocab_size));
    let loaded = checkpoint::load(&dir.join(MODEL_FILE)).unwrap();
    // GPT-2's head size of 64 is assumed: 128 wide means 2 heads.
    assert_eq!(loaded.cfg, cfg);
    assert_bitwise("bare", &loaded.params, &params);
    assert!(loaded.notes.iter().any(|n| n.contains("inferred")), "{:?}", loaded.notes);
}

// ---- bad input ----------------------------------------------------------------------------------

/// Loading `path` fails with one line that names `file` and contains every one of `needles`.
fn expect_error(path: &Path, file: &Path, needles: &[&str]) -> String {
    let e = match checkpoint::load(path) {
        Ok(_) => panic!("{} loaded, expected an error containing {needles:?}", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "error is not one line: {e:?}");
    assert!(e.contains(&file.display().to_string()), "error does not name {}: {e}", file.display());
    for n in needles {
        assert!(e.contains(n), "error lacks {n:?}: {e}");
    }
    e
}

#[test]
fn missing_tensor_is_named() {
    let dir = tmpdir("missing");
    let (mut tensors, _) = write_hf_dir(&dir);
    tensors.retain(|t| t.0 != "transformer.h.1.mlp.c_fc.bias");
    write_safetensors(&dir.join(MODEL_FILE), &tensors);
    expect_error(&dir, &dir.join(MODEL_FILE), &["missing tensor 'h.1.mlp.c_fc.bias'"]);
}

#[test]
fn wrong_shapes_are_named() {
    let dir = tmpdir("shape");
    let (tensors, _) = write_hf_dir(&dir);
    // gptk's internal (OC, C) instead of Conv1D's (C, OC).
    let mut t = tensors.clone();
    find(&mut t, "h.0.attn.c_attn.weight").2 = vec![96, 32];
    write_safetensors(&dir.join(MODEL_FILE), &t);
    expect_error(&dir, &dir.join(MODEL_FILE), &["h.0.attn.c_attn.weight", "[96, 32]", "expected [32, 96]"]);
    // A 1-D tensor of the wrong length.
    let mut t = tensors.clone();
    let b = find(&mut t, "ln_f.bias");
    b.2 = vec![16, 2];
    write_safetensors(&dir.join(MODEL_FILE), &t);
    expect_error(&dir, &dir.join(MODEL_FILE), &["ln_f.bias", "[16, 2]", "expected [32]"]);
    // An embedding with more rows than the padded vocabulary has.
    let mut t = tensors.clone();
    let wte = find(&mut t, "wte.weight");
    wte.2 = vec![130, 32];
    wte.3 = vec![0; 130 * 32 * 4];
    write_safetensors(&dir.join(MODEL_FILE), &t);
    expect_error(&dir, &dir.join(MODEL_FILE), &["wte.weight", "[130, 32]"]);
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tmpdir("dtype");
    let (mut tensors, _) = write_hf_dir(&dir);
    let t = find(&mut tensors, "h.0.ln_1.weight");
    t.1 = Dtype::I64;
    t.3 = vec![0; 32 * 8];
    write_safetensors(&dir.join(MODEL_FILE), &tensors);
    expect_error(&dir, &dir.join(MODEL_FILE), &["h.0.ln_1.weight", "I64", "F32, F16, BF16"]);
}

#[test]
fn truncated_and_garbage_files_are_refused() {
    let dir = tmpdir("truncated");
    write_hf_dir(&dir);
    let path = dir.join(MODEL_FILE);
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 9, 3, 0] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        expect_error(&dir, &path, &["not a valid safetensors file"]);
    }
    // A header length pointing far past the end of the file.
    let mut evil = u64::MAX.to_le_bytes().to_vec();
    evil.extend_from_slice(b"{}");
    std::fs::write(&path, &evil).unwrap();
    expect_error(&dir, &path, &["not a valid safetensors file"]);
}

#[test]
fn bad_config_json_is_named() {
    let dir = tmpdir("config");
    write_hf_dir(&dir);
    let config_path = dir.join(CONFIG_FILE);
    let good = hf_config(&tiny());

    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("n_head");
    write_config(&dir, &c);
    expect_error(&dir, &config_path, &["missing field 'n_head'"]);

    std::fs::write(&config_path, "{ \"n_layer\": 2,\n").unwrap();
    expect_error(&dir, &config_path, &["not valid JSON"]);
    std::fs::write(&config_path, "[1, 2]").unwrap();
    expect_error(&dir, &config_path, &["expected a JSON object"]);

    for (field, value, needle) in [
        ("n_layer", json!(-1), "non-negative integer"),
        ("n_head", json!(3), "multiple of n_head"),
        ("model_type", json!("llama"), "only 'gpt2'"),
        ("activation_function", json!("relu"), "tanh-GELU"),
        ("layer_norm_epsilon", json!(1e-6), "1e-5"),
        ("n_inner", json!(100), "n_inner"),
        ("scale_attn_weights", json!(false), "scale_attn_weights"),
        ("scale_attn_by_inverse_layer_idx", json!(true), "scale_attn_by_inverse_layer_idx"),
        // A shape that disagrees with the tensors is refused before anything is allocated.
        ("n_layer", json!(1_000_000_000_000u64), "n_layer"),
        ("n_embd", json!(64), "n_embd"),
        ("n_positions", json!(1_000_000_000_000u64), "n_positions"),
    ] {
        let mut c = good.clone();
        c[field] = value;
        write_config(&dir, &c);
        expect_error(&dir, &config_path, &[needle]);
    }

    // Hugging Face's alternative names are accepted, n_inner = 4·hidden_size included.
    let mut c = good.clone();
    let obj = c.as_object_mut().unwrap();
    for (old, new) in [("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"), ("n_embd", "hidden_size")] {
        let v = obj.remove(old).unwrap();
        obj.insert(new.into(), v);
    }
    obj.insert("n_inner".into(), json!(128));
    write_config(&dir, &c);
    assert_eq!(checkpoint::load(&dir).unwrap().cfg, tiny());
}

#[test]
fn untied_lm_head_is_refused() {
    let dir = tmpdir("untied");
    let (mut tensors, _) = write_hf_dir(&dir);
    let mut head = find(&mut tensors, "wte.weight").clone();
    head.0 = "lm_head.weight".into();
    head.3[4..8].copy_from_slice(&1.5f32.to_le_bytes());
    tensors.push(head);
    write_safetensors(&dir.join(MODEL_FILE), &tensors);
    expect_error(&dir, &dir.join(MODEL_FILE), &["lm_head.weight differs from wte.weight"]);
}

#[test]
fn tensor_under_both_names_is_refused() {
    let dir = tmpdir("twice");
    let (mut tensors, _) = write_hf_dir(&dir);
    let mut dup = find(&mut tensors, "ln_f.bias").clone();
    dup.0 = "ln_f.bias".into();
    tensors.push(dup);
    write_safetensors(&dir.join(MODEL_FILE), &tensors);
    expect_error(&dir, &dir.join(MODEL_FILE), &["'ln_f.bias' appears twice"]);
}

#[test]
fn missing_files_are_named() {
    let dir = tmpdir("nofile");
    expect_error(&dir, &dir, &["no model.safetensors in this directory"]);
    let nowhere = dir.join("nowhere");
    expect_error(&nowhere, &nowhere, &["no such file"]);
    // A sharded checkpoint says so rather than only that model.safetensors is missing.
    std::fs::write(dir.join("model.safetensors.index.json"), "{}").unwrap();
    expect_error(&dir, &dir, &["sharded"]);
}

#[test]
fn bare_file_with_unusual_width_asks_for_a_config() {
    let dir = tmpdir("bare-width");
    let cfg = tiny(); // 32 wide: not a multiple of GPT-2's head size
    let params = random_params(&cfg, cfg.vocab_size, 9);
    write_safetensors(&dir.join(MODEL_FILE), &hf_tensors(&cfg, &params, Dt::F32, true, cfg.vocab_size));
    expect_error(&dir, &dir.join(MODEL_FILE), &["add a config.json"]);
}
