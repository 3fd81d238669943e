//! Training checkpoints: a Hugging Face model directory plus the state that makes resume exact.
//!
//! `OUT/step_000200/` holds `model.safetensors` + `config.json` (loadable by `transformers` and
//! by every gptk command) and `train_state.safetensors`: the AdamW moments over the whole
//! parameter arena and, in its metadata, the step, the data loader's position, the RNG state and
//! the resolved run configuration. A checkpoint is written into a hidden `.step_000200.partial/`
//! directory and renamed into place only when complete, so a crash mid-save leaves the previous
//! checkpoints untouched; partial directories are ignored and cleaned up by the next save.

use crate::backend::Backend;
use crate::checkpoint::{self, CheckpointError, MODEL_FILE, atomic};
use crate::model::Gpt;
use crate::model::layout::{Arena, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file beside the model that holds optimizer moments and loop state.
pub const STATE_FILE: &str = "train_state.safetensors";
/// The resolved run configuration, as TOML (`gptk train --config` takes it).
pub const RUN_CONFIG_FILE: &str = "run.toml";
const STEP_PREFIX: &str = "step_";
/// Test hook, `STEP:MS`: the save of the checkpoint after `STEP` steps waits `MS` milliseconds
/// between writing its partial directory and renaming it into place, so that a test can kill
/// the process in the middle of a save. Unset, saves never wait.
pub const PAUSE_IN_SAVE_ENV: &str = "GPTK_TEST_PAUSE_IN_SAVE";
const META_STATE: &str = "gptk_train_state";
/// Safetensors metadata key naming the tokenizer a model was trained with.
pub const META_TOKENIZER: &str = "gptk_tokenizer";

/// Everything besides parameters and moments that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
    /// The data loader's position (its own serialised state).
    pub loader: serde_json::Value,
    /// State of the generator that draws MLM masks.
    pub mask_rng: u64,
    /// State of the generator that draws samples.
    pub sample_rng: u64,
    /// The resolved run configuration, to detect a resume with different settings.
    pub run: serde_json::Value,
    /// Tokenizer name ("gpt2" or "bytes").
    pub tokenizer: String,
}

/// Directory name of the checkpoint after `step` optimizer steps.
pub fn step_dir_name(step: usize) -> String {
    format!("{STEP_PREFIX}{step:06}")
}

/// Complete checkpoints under `out`, oldest first, with their step numbers.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(out) else { return Vec::new() };
    let mut found: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix(STEP_PREFIX)?.parse().ok()?;
            let path = e.path();
            (path.join(STATE_FILE).is_file() && path.join(MODEL_FILE).is_file()).then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint under `out`.
pub fn latest(out: &Path) -> Option<PathBuf> {
    list(out).pop().map(|(_, p)| p)
}

/// A model path as users give it: a checkpoint directory, a `.safetensors` file, or a run
/// directory (then its newest checkpoint).
pub fn resolve_model(path: &Path) -> PathBuf {
    if path.is_dir()
        && !path.join(MODEL_FILE).is_file()
        && let Some(latest) = latest(path)
    {
        return latest;
    }
    path.to_path_buf()
}

fn full(arena: Arena, len: usize) -> Tensor {
    Tensor { arena, offset: 0, len }
}

/// Writes the checkpoint after `state.step` steps under `out` and keeps only the newest `keep`
/// (0 keeps all). Returns the checkpoint's directory.
pub fn save<K: Backend>(
    out: &Path,
    model: &mut Gpt<K>,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    let final_dir = out.join(step_dir_name(state.step));
    let partial = out.join(format!(".{}.partial", step_dir_name(state.step)));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let to_host = |model: &mut Gpt<K>, arena| {
        let total = model.params.total;
        model
            .backend
            .download(full(arena, total))
            .map_err(|e| CheckpointError::Format { path: partial.clone(), msg: e.to_string() })
    };
    let params = to_host(model, Arena::Params)?;
    let m = to_host(model, Arena::OptM)?;
    let v = to_host(model, Arena::OptV)?;
    let meta = HashMap::from([(META_TOKENIZER.to_string(), state.tokenizer.clone())]);
    checkpoint::save(&partial, &model.cfg, &model.params, &params, &meta)?;

    let state_path = partial.join(STATE_FILE);
    let (mb, vb) = (bytemuck::cast_slice::<f32, u8>(&m), bytemuck::cast_slice::<f32, u8>(&v));
    let shape = vec![m.len()];
    let views = [
        ("adamw.m", TensorView::new(Dtype::F32, shape.clone(), mb).expect("sizes match")),
        ("adamw.v", TensorView::new(Dtype::F32, shape, vb).expect("sizes match")),
    ];
    let json = serde_json::to_string(state).expect("state serialises");
    let meta = HashMap::from([(META_STATE.to_string(), json)]);
    atomic::write_with(&state_path, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(meta), tmp).map_err(std::io::Error::other)
    })
    .map_err(io(&state_path))?;

    // The resolved run configuration, readable and reusable with `gptk train --config`.
    if let Ok(cfg) = serde_json::from_value::<super::config::TrainConfig>(state.run.clone()) {
        let path = partial.join(RUN_CONFIG_FILE);
        atomic::write_bytes(&path, cfg.to_toml().as_bytes()).map_err(io(&path))?;
    }
    pause_for_tests(state.step);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&partial, &final_dir).map_err(io(&final_dir))?;
    atomic::sync_dir(out).map_err(io(out))?;

    if keep > 0 {
        let all = list(out);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    // Leftovers of interrupted saves.
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&format!(".{STEP_PREFIX}")) && name.ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(final_dir)
}

/// The wait [`PAUSE_IN_SAVE_ENV`] asks for at the save of `step`, if any.
fn pause_for_tests(step: usize) {
    let Ok(value) = std::env::var(PAUSE_IN_SAVE_ENV) else { return };
    let parsed = value.split_once(':').and_then(|(s, ms)| Some((s.parse::<usize>().ok()?, ms.parse::<u64>().ok()?)));
    if let Some((at, ms)) = parsed
        && at == step
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Reads the loop state and the AdamW moments of the checkpoint in `dir`.
pub fn load_state(dir: &Path) -> Result<(TrainState, Vec<f32>, Vec<f32>), CheckpointError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
    parse_state(&path, &bytes)
}

/// [`load_state`] on the bytes of a state file (named `path` in errors): the two moments must be
/// 1-D F32 tensors of one length, and the metadata a readable [`TrainState`].
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<(TrainState, Vec<f32>, Vec<f32>), CheckpointError> {
    let bad = |msg: String| CheckpointError::Format { path: path.to_path_buf(), msg };
    let (_, header) =
        SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_STATE))
        .ok_or_else(|| bad(format!("metadata '{META_STATE}' is missing")))?;
    let state: TrainState =
        serde_json::from_str(json).map_err(|e| bad(format!("metadata '{META_STATE}' is unreadable ({e})")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let read = |name: &str| -> Result<Vec<f32>, CheckpointError> {
        let t = st.tensor(name).map_err(|_| bad(format!("missing tensor '{name}'")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor '{name}' has dtype {:?}, expected F32", t.dtype())));
        }
        if t.shape().len() != 1 {
            return Err(bad(format!("tensor '{name}' has shape {:?}, expected one dimension", t.shape())));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let (m, v) = (read("adamw.m")?, read("adamw.v")?);
    if m.len() != v.len() {
        return Err(bad(format!(
            "tensors 'adamw.m' and 'adamw.v' hold {} and {} values, expected equal",
            m.len(),
            v.len()
        )));
    }
    Ok((state, m, v))
}
