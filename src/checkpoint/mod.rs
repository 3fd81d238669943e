//! Hugging Face GPT-2 checkpoints in and out: `model.safetensors` + `config.json`.
//!
//! gptk reads what `transformers`' `save_pretrained` writes for GPT-2 (and the bare
//! `model.safetensors` of the hub): tensor names with or without the `transformer.` prefix, with
//! or without a tied `lm_head.weight`, Conv1D weights `(C, OC)`, in f32, f16 or bf16. It writes
//! the same format back (f32, `transformer.` names, no `lm_head`), so `transformers` loads it.
//! The embedding is written with all Vp rows (special tokens live in the padding) and
//! `config.json` records `vocab_size = Vp` plus `gptk_vocab_size = V`, the real vocabulary.
//!
//! Every file is treated as untrusted: sizes, shapes and dtypes are checked before use, and each
//! failure is one line naming the file and what was expected.

pub mod atomic;

use crate::model::config::{ConfigError, ModelConfig};
use crate::model::layout::{HEAD_WEIGHT, ParamLayout};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// File names inside a checkpoint directory, as `save_pretrained` writes them.
pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
/// What `save_pretrained` writes instead of `model.safetensors` for a model split into shards.
const SHARD_INDEX_FILE: &str = "model.safetensors.index.json";
/// GPT-2's head size, assumed when a bare safetensors file says nothing about heads.
pub const GPT2_HEAD_SIZE: usize = 64;
/// Token ids are u16 in shards; a larger vocabulary is refused before any arithmetic on it.
const MAX_VOCAB_SIZE: usize = 1 << 16;
/// Safetensors metadata key under which gptk stores its `ModelConfig` as JSON.
const META_CONFIG: &str = "gptk_config";

/// A checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

fn format_err(path: &Path, msg: impl Into<String>) -> CheckpointError {
    CheckpointError::Format { path: path.to_path_buf(), msg: msg.into() }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// A model read from disk: its shape and its parameters in gptk's layout order.
#[derive(Debug)]
pub struct LoadedModel {
    pub cfg: ModelConfig,
    /// f32 values over `ParamLayout::new(&cfg)`, padding included.
    pub params: Vec<f32>,
    /// Things the user may want to know (inferred fields, ignored tensors).
    pub notes: Vec<String>,
    /// The safetensors metadata map (gptk stores extra records there: tokenizer, labels).
    pub metadata: HashMap<String, String>,
    /// Outputs of the classification head written by `gptk finetune` (0: none); the head's
    /// tensors are part of `params` (`ParamLayout::with_head`).
    pub n_classes: usize,
}

/// Safetensors metadata key holding a fine-tuned model's class names (a JSON array).
pub const META_LABELS: &str = "gptk_labels";

/// Where the weights and config of `path` live: a directory holding `model.safetensors` (and
/// usually `config.json`), or a `.safetensors` file (with `config.json` beside it if present).
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>), CheckpointError> {
    let weights = if path.is_dir() { path.join(MODEL_FILE) } else { path.to_path_buf() };
    if !weights.is_file() {
        let what = if path.join(SHARD_INDEX_FILE).is_file() {
            format!("a sharded checkpoint ({SHARD_INDEX_FILE}); gptk reads a single {MODEL_FILE}")
        } else if path.is_dir() {
            format!("no {MODEL_FILE} in this directory")
        } else {
            "no such file".to_string()
        };
        return Err(format_err(path, what));
    }
    let config = weights.parent().map(|d| d.join(CONFIG_FILE)).filter(|c| c.is_file());
    Ok((weights, config))
}

/// Reads a GPT-2 checkpoint (see the module docs for what is accepted).
pub fn load(path: &Path) -> Result<LoadedModel, CheckpointError> {
    let (weights_path, config_path) = resolve(path)?;
    let file = File::open(&weights_path).map_err(io_err(&weights_path))?;
    // SAFETY: the map is read-only; a file changed underneath us during loading is outside what
    // gptk can defend against (as for every mmap-based loader).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(&weights_path))?;
    let config = match &config_path {
        Some(cp) => Some((cp.as_path(), std::fs::read_to_string(cp).map_err(io_err(cp))?)),
        None => None,
    };
    load_bytes(&weights_path, &map, config.as_ref().map(|(p, text)| (*p, text.as_str())))
}

/// Reads a checkpoint from the bytes of its `model.safetensors` (named `weights_path` in errors)
/// and the text of its `config.json`, if it has one. Every size in the bytes is checked against
/// the bytes themselves before anything is allocated from it.
pub fn load_bytes(
    weights_path: &Path,
    bytes: &[u8],
    config: Option<(&Path, &str)>,
) -> Result<LoadedModel, CheckpointError> {
    let weights_path = weights_path.to_path_buf();
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format_err(&weights_path, format!("not a valid safetensors file ({e})")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(&weights_path, format!("not a valid safetensors file ({e})")))?;
    let views: HashMap<String, TensorView> = st.tensors().into_iter().collect();
    let mut notes = Vec::new();

    // Strip the `transformer.` prefix; refuse a file that has both spellings of one name.
    let mut by_name: HashMap<String, (&str, &TensorView)> = HashMap::new();
    for (name, view) in &views {
        let short = name.strip_prefix("transformer.").unwrap_or(name);
        if by_name.insert(short.to_string(), (name, view)).is_some() {
            return Err(format_err(
                &weights_path,
                format!("tensor '{short}' appears twice (with and without 'transformer.')"),
            ));
        }
    }

    let cfg = match config {
        Some((cp, text)) => config_from_str(cp, text)?,
        None => {
            if let Some(json) = metadata.get(META_CONFIG) {
                serde_json::from_str::<ModelConfig>(json).map_err(|e| {
                    format_err(&weights_path, format!("metadata '{META_CONFIG}' is not a model config ({e})"))
                })?
            } else {
                let cfg = infer_config(&weights_path, &by_name)?;
                notes.push(format!(
                    "no {CONFIG_FILE} beside {}: shape inferred from the tensors ({cfg}), head size {GPT2_HEAD_SIZE} assumed",
                    weights_path.display()
                ));
                cfg
            }
        }
    };
    let config_source = config.map_or(weights_path.as_path(), |(cp, _)| cp);
    cfg.validate().map_err(|e| format_err(config_source, e.to_string()))?;
    check_shape_against_tensors(&cfg, config_source, &weights_path, &by_name)?;

    let n_classes = match by_name.get(HEAD_WEIGHT) {
        Some((_, view)) if view.shape().len() == 2 && view.shape()[0] > 0 && view.shape()[1] == cfg.n_embd => {
            view.shape()[0]
        }
        Some((_, view)) => {
            return Err(format_err(
                &weights_path,
                format!("tensor '{HEAD_WEIGHT}' has shape {:?}, expected [classes, {}]", view.shape(), cfg.n_embd),
            ));
        }
        None => 0,
    };
    let missing = |name: &str| format_err(&weights_path, format!("missing tensor '{name}' (expected for {cfg})"));
    // A missing tensor is named before the sizes are compared, when that is cheap: the layout's
    // table has a dozen entries a block, bounded here by the tensors the file holds.
    if cfg.n_layer <= by_name.len()
        && let Some(spec) =
            ParamLayout::with_head(&cfg, n_classes).specs.iter().find(|s| !by_name.contains_key(s.name.as_str()))
    {
        return Err(missing(&spec.name));
    }
    check_size_against_tensors(&cfg, n_classes, config_source, &weights_path, &by_name)?;
    let layout = ParamLayout::with_head(&cfg, n_classes);
    let mut params = vec![0f32; layout.total];
    let mut used: HashSet<&str> = HashSet::new();
    for spec in &layout.specs {
        let (full, view) = by_name.get(spec.name.as_str()).ok_or_else(|| missing(&spec.name))?;
        used.insert(spec.name.as_str());
        let values = to_f32(&weights_path, full, view)?;
        let dst = &mut params[spec.tensor.offset..spec.tensor.end()];
        let shape = view.shape();
        if spec.name == "wte.weight" {
            let (vp, c) = (spec.shape[0], spec.shape[1]);
            if shape.len() != 2 || shape[1] != c || shape[0] < cfg.vocab_size || shape[0] > vp {
                return Err(format_err(
                    &weights_path,
                    format!("tensor '{full}' has shape {shape:?}, expected [{}..={vp}, {c}]", cfg.vocab_size),
                ));
            }
            dst[..values.len()].copy_from_slice(&values);
        } else if spec.conv1d {
            let (oc, c) = (spec.shape[0], spec.shape[1]);
            if shape != [c, oc] {
                return Err(format_err(
                    &weights_path,
                    format!("tensor '{full}' has shape {shape:?}, expected [{c}, {oc}] (Conv1D)"),
                ));
            }
            for i in 0..c {
                for o in 0..oc {
                    dst[o * c + i] = values[i * oc + o];
                }
            }
        } else {
            if shape != spec.shape.as_slice() {
                return Err(format_err(
                    &weights_path,
                    format!("tensor '{full}' has shape {shape:?}, expected {:?}", spec.shape),
                ));
            }
            dst.copy_from_slice(&values);
        }
    }

    // A separate lm_head must be the tied embedding: same shape as the file's wte, same values.
    if let Some((full, view)) = by_name.get("lm_head.weight") {
        used.insert("lm_head.weight");
        let wte_shape = by_name["wte.weight"].1.shape();
        if view.shape() != wte_shape {
            return Err(format_err(
                &weights_path,
                format!("tensor '{full}' has shape {:?}, expected {wte_shape:?} like wte.weight", view.shape()),
            ));
        }
        let head = to_f32(&weights_path, full, view)?;
        let wte = &params[layout.wte.offset..layout.wte.offset + head.len()];
        let same = |(a, b): (&f32, &f32)| a == b || (a.is_nan() && b.is_nan());
        if let Some(i) = head.iter().zip(wte).position(|p| !same(p)) {
            return Err(format_err(
                &weights_path,
                format!(
                    "lm_head.weight differs from wte.weight (first at row {}, column {}: {} vs {}): gptk ties the \
                     input and output embeddings",
                    i / cfg.n_embd,
                    i % cfg.n_embd,
                    head[i],
                    wte[i]
                ),
            ));
        }
    }

    let mut ignored = Vec::new();
    for (short, (full, view)) in &by_name {
        if used.contains(short.as_str()) {
            continue;
        }
        if short.ends_with(".attn.bias") || short.ends_with(".attn.masked_bias") {
            continue; // causal-mask buffers of older transformers versions
        }
        let _ = (full, view);
        ignored.push(short.clone());
    }
    if !ignored.is_empty() {
        ignored.sort();
        notes.push(format!("ignored tensors that are not GPT-2 parameters: {}", ignored.join(", ")));
    }
    Ok(LoadedModel { cfg, params, notes, metadata, n_classes })
}

/// Decodes a tensor to f32, refusing dtypes a GPT-2 checkpoint does not use.
fn to_f32(path: &Path, name: &str, view: &TensorView) -> Result<Vec<f32>, CheckpointError> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(format_err(path, format!("tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16")));
        }
    })
}

fn get_usize(path: &Path, obj: &Map<String, Value>, keys: &[&str]) -> Result<usize, CheckpointError> {
    for key in keys {
        if let Some(v) = obj.get(*key) {
            return v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format_err(path, format!("field '{key}' must be a non-negative integer, found {v}")));
        }
    }
    Err(format_err(path, format!("missing field '{}'", keys.join("' or '"))))
}

/// Reads the fields of a Hugging Face GPT-2 `config.json` that fix the shape, and checks the
/// ones that would change the arithmetic.
pub fn config_from_json(path: &Path) -> Result<ModelConfig, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    config_from_str(path, &text)
}

/// [`config_from_json`] on the text of the file `path`.
pub fn config_from_str(path: &Path, text: &str) -> Result<ModelConfig, CheckpointError> {
    let value: Value = serde_json::from_str(text).map_err(|e| format_err(path, format!("not valid JSON ({e})")))?;
    let obj = value.as_object().ok_or_else(|| format_err(path, "expected a JSON object"))?;
    if let Some(t) = obj.get("model_type").and_then(Value::as_str)
        && t != "gpt2"
    {
        return Err(format_err(path, format!("model_type is '{t}', only 'gpt2' is supported")));
    }
    if let Some(act) = obj.get("activation_function").and_then(Value::as_str)
        && !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast")
    {
        return Err(format_err(
            path,
            format!("activation_function '{act}' is not supported (gptk uses tanh-GELU, 'gelu_new')"),
        ));
    }
    if let Some(eps) = obj.get("layer_norm_epsilon").and_then(Value::as_f64)
        && (eps - 1e-5).abs() > 1e-12
    {
        return Err(format_err(path, format!("layer_norm_epsilon {eps} is not supported (gptk uses 1e-5)")));
    }
    // Options of transformers' GPT-2 that change the attention arithmetic.
    for (key, gpt2_value) in [("scale_attn_weights", true), ("scale_attn_by_inverse_layer_idx", false)] {
        if let Some(v) = obj.get(key).and_then(Value::as_bool).filter(|&v| v != gpt2_value) {
            return Err(format_err(path, format!("{key} = {v} is not supported (gptk computes GPT-2's attention)")));
        }
    }
    let vocab_size = match obj.get("gptk_vocab_size") {
        Some(_) => get_usize(path, obj, &["gptk_vocab_size"])?,
        None => get_usize(path, obj, &["vocab_size"])?,
    };
    if vocab_size > MAX_VOCAB_SIZE {
        return Err(format_err(path, ConfigError::VocabTooLarge(vocab_size).to_string()));
    }
    let cfg = ModelConfig {
        n_layer: get_usize(path, obj, &["n_layer", "num_hidden_layers"])?,
        n_head: get_usize(path, obj, &["n_head", "num_attention_heads"])?,
        n_embd: get_usize(path, obj, &["n_embd", "hidden_size"])?,
        n_ctx: get_usize(path, obj, &["n_positions", "n_ctx", "max_position_embeddings"])?,
        vocab_size,
    };
    if let Some(inner) = obj.get("n_inner").filter(|v| !v.is_null())
        && inner.as_u64() != (cfg.n_embd as u64).checked_mul(4)
    {
        return Err(format_err(path, format!("n_inner {inner} is not supported (gptk's MLP is 4 × n_embd)")));
    }
    cfg.validate().map_err(|e: ConfigError| format_err(path, e.to_string()))?;
    Ok(cfg)
}

/// Checks that the shape read from `config_source` agrees with the tensors of `weights` on the
/// numbers that size the parameter layout (width, context, depth, vocabulary), so that a config
/// that is wrong, or hostile, is reported before anything is allocated from it.
fn check_shape_against_tensors(
    cfg: &ModelConfig,
    config_source: &Path,
    weights: &Path,
    by_name: &HashMap<String, (&str, &TensorView)>,
) -> Result<(), CheckpointError> {
    let shape = |name: &str| -> Result<&[usize], CheckpointError> {
        let (full, view) = by_name
            .get(name)
            .ok_or_else(|| format_err(weights, format!("missing tensor '{name}' (expected for {cfg})")))?;
        match view.shape() {
            s @ [_, _] => Ok(s),
            s => Err(format_err(weights, format!("tensor '{full}' has shape {s:?}, expected 2 dimensions"))),
        }
    };
    let disagree = |what: String| {
        format_err(
            config_source,
            format!("{what} in {}; the config does not describe these weights", weights.display()),
        )
    };
    let wte = shape("wte.weight")?;
    if wte[1] != cfg.n_embd {
        return Err(disagree(format!("n_embd is {} but wte.weight is {wte:?}", cfg.n_embd)));
    }
    if wte[0] < cfg.vocab_size || wte[0] > cfg.padded_vocab_size() {
        return Err(disagree(format!(
            "the vocabulary is {} (padded {}) but wte.weight is {wte:?}",
            cfg.vocab_size,
            cfg.padded_vocab_size()
        )));
    }
    let wpe = shape("wpe.weight")?;
    if wpe != [cfg.n_ctx, cfg.n_embd] {
        return Err(disagree(format!("n_positions is {} but wpe.weight is {wpe:?}", cfg.n_ctx)));
    }
    let blocks = by_name
        .keys()
        .filter_map(|n| n.strip_prefix("h.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    if blocks != cfg.n_layer {
        return Err(disagree(format!("n_layer is {} but the tensors hold {blocks} blocks (h.N)", cfg.n_layer)));
    }
    Ok(())
}

/// Parameters the shape `cfg` (with a head of `n_classes`) needs from a file, the embedding
/// counted at its smallest (V rows); `None` when the count does not fit in `usize`.
fn required_values(cfg: &ModelConfig, n_classes: usize) -> Option<usize> {
    let c = cfg.n_embd;
    let per_layer = c.checked_mul(c)?.checked_mul(12)?.checked_add(c.checked_mul(13)?)?;
    cfg.vocab_size
        .checked_add(cfg.n_ctx)?
        .checked_mul(c)?
        .checked_add(per_layer.checked_mul(cfg.n_layer)?)?
        .checked_add(c.checked_mul(2)?)?
        .checked_add(n_classes.checked_mul(c.checked_add(1)?)?)
}

/// Refuses a shape that needs more parameter values than the file holds, before the parameter
/// layout and buffer are built from it: tensors of zero elements can carry any name (`h.N` with
/// a huge N) or a huge dimension beside a zero, so names and shapes alone do not bound the
/// allocation; the values actually present in the file do.
fn check_size_against_tensors(
    cfg: &ModelConfig,
    n_classes: usize,
    config_source: &Path,
    weights: &Path,
    by_name: &HashMap<String, (&str, &TensorView)>,
) -> Result<(), CheckpointError> {
    // Each view's element count is backed by its bytes (the safetensors crate checks that), so
    // the sum is at most the file's length.
    let present: usize = by_name.values().map(|(_, v)| v.shape().iter().product::<usize>()).sum();
    match required_values(cfg, n_classes) {
        Some(needed) if needed <= present => Ok(()),
        needed => Err(format_err(
            config_source,
            format!(
                "{cfg} needs {} parameter values but {} holds {present}; the config does not describe these weights",
                needed.map_or("more than 2^64".to_string(), |n| n.to_string()),
                weights.display()
            ),
        )),
    }
}

/// The shape of a bare safetensors file from its tensors: layers counted, C from wte, context
/// from wpe, heads from GPT-2's head size.
fn infer_config(path: &Path, by_name: &HashMap<String, (&str, &TensorView)>) -> Result<ModelConfig, CheckpointError> {
    let shape_of =
        |name: &str| {
            by_name.get(name).map(|(_, v)| v.shape().to_vec()).filter(|s| s.len() == 2).ok_or_else(|| {
                format_err(path, format!("missing 2-D tensor '{name}' (needed to infer the model shape)"))
            })
        };
    let wte = shape_of("wte.weight")?;
    let wpe = shape_of("wpe.weight")?;
    let n_layer = by_name
        .keys()
        .filter_map(|n| n.strip_prefix("h.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let n_embd = wte[1];
    if n_embd % GPT2_HEAD_SIZE != 0 {
        return Err(format_err(
            path,
            format!("n_embd {n_embd} is not a multiple of {GPT2_HEAD_SIZE}; add a {CONFIG_FILE} with n_head"),
        ));
    }
    Ok(ModelConfig { n_layer, n_head: n_embd / GPT2_HEAD_SIZE, n_embd, n_ctx: wpe[0], vocab_size: wte[0] })
}

/// The `config.json` gptk writes: what `transformers` needs to build `GPT2LMHeadModel`, plus
/// `gptk_vocab_size` (the real vocabulary; `vocab_size` counts the padded rows).
pub fn config_json(cfg: &ModelConfig) -> Value {
    let eot = cfg.vocab_size - 1;
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.n_ctx,
        "n_ctx": cfg.n_ctx,
        "vocab_size": cfg.padded_vocab_size(),
        "gptk_vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    })
}

/// Writes `dir/model.safetensors` and `dir/config.json` atomically (each a temporary file,
/// fsynced, renamed). `params` follows `layout` (which may carry a classification head, saved
/// under its own `gptk.head.*` names); `metadata` entries are stored in the safetensors header,
/// and class names under [`META_LABELS`] also go to config.json as `id2label`.
pub fn save(
    dir: &Path,
    cfg: &ModelConfig,
    layout: &ParamLayout,
    params: &[f32],
    metadata: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    assert_eq!(params.len(), layout.total, "parameter vector does not match the layout");
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(layout.specs.len());
    for spec in &layout.specs {
        let src = &params[spec.tensor.offset..spec.tensor.end()];
        let (shape, bytes) = if spec.conv1d {
            let (oc, c) = (spec.shape[0], spec.shape[1]);
            let mut t = vec![0f32; src.len()];
            for o in 0..oc {
                for i in 0..c {
                    t[i * oc + o] = src[o * c + i];
                }
            }
            (vec![c, oc], bytemuck::cast_slice::<f32, u8>(&t).to_vec())
        } else {
            (spec.shape.clone(), bytemuck::cast_slice::<f32, u8>(src).to_vec())
        };
        let name =
            if spec.name.starts_with("gptk.") { spec.name.clone() } else { format!("transformer.{}", spec.name) };
        buffers.push((name, shape, bytes));
    }
    let weights = dir.join(MODEL_FILE);
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, s, b)| {
            Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| format_err(&weights, e.to_string()))?))
        })
        .collect::<Result<_, CheckpointError>>()?;
    let mut meta = metadata.clone();
    meta.insert("format".into(), "pt".into());
    meta.insert(META_CONFIG.into(), serde_json::to_string(cfg).expect("config serialises"));
    atomic::write_with(&weights, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(meta), tmp).map_err(std::io::Error::other)
    })
    .map_err(io_err(&weights))?;
    let config = dir.join(CONFIG_FILE);
    let mut json = config_json(cfg);
    if let Some(labels) = metadata.get(META_LABELS).and_then(|l| serde_json::from_str::<Vec<String>>(l).ok()) {
        let id2label: Map<String, Value> = labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
        let label2id: Map<String, Value> = labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        json["id2label"] = Value::Object(id2label);
        json["label2id"] = Value::Object(label2id);
    }
    let text = serde_json::to_string_pretty(&json).expect("json serialises");
    atomic::write_bytes(&config, text.as_bytes()).map_err(io_err(&config))?;
    Ok(())
}
