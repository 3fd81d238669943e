//! The run configuration: every knob of `gptk train`, as command-line flags and as the record
//! saved with each checkpoint.

use super::lr::Decay;
use crate::backend::{AttentionBackward, AttentionKernels, DeviceKind, Precision};
use crate::model::layout::Recompute;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the model learns to predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Objective {
    /// Causal language modelling: the next token, attention over the past only.
    #[serde(rename = "clm")]
    Clm,
    /// Masked language modelling: 15% of positions hidden, bidirectional attention.
    #[serde(rename = "mlm")]
    Mlm,
    /// Both on every batch: CLM loss + `--mlm-weight` × MLM loss.
    #[serde(rename = "clm+mlm")]
    #[value(name = "clm+mlm")]
    ClmMlm,
}

impl Objective {
    pub fn has_clm(self) -> bool {
        matches!(self, Objective::Clm | Objective::ClmMlm)
    }
    pub fn has_mlm(self) -> bool {
        matches!(self, Objective::Mlm | Objective::ClmMlm)
    }
}

/// Everything `gptk train` can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Read settings from a TOML file: keys are the flag names (`batch_size = 8` or
    /// `batch-size = 8`); flags given on the command line win over the file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory of token shards (`*_train_*.bin`, `*_val_*.bin`, from `gptk prepare` or llm.c).
    /// Without it, gptk trains on its built-in corpus (its own sources and docs, byte-level).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory for checkpoints and metrics [default: runs/demo, or runs/<data dir name>;
    /// a fresh runs/<name>-N when that one already holds a run].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Model shape preset: d12 (GPT-2 124M), d24, d36, d48, d6, tiny, micro.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Override the preset's number of layers.
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Override the preset's number of attention heads.
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Override the preset's width.
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Override the preset's context length (positions).
    #[arg(long)]
    pub n_ctx: Option<usize>,
    /// Start from a checkpoint's weights (a Hugging Face GPT-2 directory or .safetensors, or a
    /// gptk checkpoint); its shape replaces --model.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,

    /// Training objective.
    #[arg(long, value_enum, default_value_t = Objective::Clm)]
    pub objective: Objective,
    /// Weight of the MLM loss in `clm+mlm`.
    #[arg(long, default_value_t = 1.0)]
    pub mlm_weight: f32,

    /// Sequences per micro-batch (B).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence (T); at most the model's context.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Tokens per optimizer step; a multiple of B·T, the rest is gradient accumulation
    /// [default: B·T].
    #[arg(long)]
    pub total_batch_tokens: Option<usize>,
    /// Optimizer steps (the learning-rate schedule spans these).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Stop with a checkpoint once this many steps are done, as if interrupted (to split a run
    /// across jobs; continue with --resume).
    #[arg(long)]
    pub stop_at: Option<usize>,

    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_frac: f32,
    /// Steps of linear warmup.
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: usize,
    /// Decay after warmup.
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    pub decay: Decay,
    /// AdamW β1.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    /// AdamW β2.
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f32,
    /// AdamW ε.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f32,
    /// Decoupled weight decay on 2-D weights.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,
    /// Activation recomputation, trading a little compute for memory: 0 keeps every activation;
    /// 1 recomputes each layer's GELU output in the backward (one (B, T, 4C) buffer serves all
    /// layers); 2 also its layernorm outputs. Losses and gradients do not change (`gptk info
    /// --recompute N` shows the memory saved).
    #[arg(long, default_value_t = Recompute::Off)]
    #[serde(default)]
    pub recompute: Recompute,

    /// Validation loss every N steps (0 disables; also run at the end).
    #[arg(long, default_value_t = 50)]
    pub val_every: usize,
    /// Batches per validation.
    #[arg(long, default_value_t = 8)]
    pub val_batches: usize,
    /// Print a sample every N steps (0 disables; also at the end).
    #[arg(long, default_value_t = 100)]
    pub sample_every: usize,
    /// Tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub sample_tokens: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Keep this many newest checkpoints (0 keeps all).
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,

    /// Abort after this many consecutive steps with a non-finite loss or gradient norm (their
    /// updates are skipped).
    #[arg(long, default_value_t = 5)]
    pub max_bad_steps: usize,
    /// Log a loss spike when a step's loss exceeds this multiple of the recent average (0
    /// disables).
    #[arg(long, default_value_t = 2.0)]
    pub spike_factor: f32,

    /// How data-parallel GPU processes share NCCL's id: `tcp` (through MASTER_ADDR:MASTER_PORT)
    /// or `file:PATH` (a new file on a filesystem all ranks see).
    #[arg(long, default_value = "tcp")]
    pub nccl_init: String,
    /// Seconds data-parallel ranks wait for each other (to meet, and at each exchange) before
    /// giving up with a message naming the missing ranks.
    #[arg(long, default_value_t = 600)]
    pub dist_timeout: u64,

    /// Seed for initialisation, data order and sampling.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceKind::Auto)]
    pub device: DeviceKind,
    /// GPU storage precision (the CPU always computes in f32).
    #[arg(long, value_enum, default_value_t = Precision::Bf16)]
    pub precision: Precision,
    /// On a GPU, record each training step as a CUDA graph at its second step and replay the
    /// recording after that: one launch instead of hundreds, the same kernels and the same bits.
    /// The whole step (optimizer included) for one causal batch on one GPU; each micro-batch's
    /// forward and backward otherwise.
    #[arg(long)]
    #[serde(default)]
    pub cuda_graphs: bool,
    /// How the GPU attention backward sums dQ: `deterministic` (a pass of its own, the same bits
    /// on every run) or `atomic` (f32 atomics in the dK/dV pass, as FlashAttention-2: less
    /// arithmetic, the last bits vary from run to run).
    #[arg(long, value_enum, default_value_t = AttentionBackward::Deterministic)]
    #[serde(default)]
    pub attention_backward: AttentionBackward,
    /// Which kernels run the GPU's tensor-core attention: `mma` (mma.sync, every GPU), `wgmma`
    /// (Hopper's warpgroup instructions, compute capability 9.0 only: the forward and either
    /// backward; the same results to rounding) or `wgmma-tma` (as `wgmma`, the forward on a
    /// warp-specialized kernel that loads its tiles by TMA).
    #[arg(long, value_enum, default_value_t = AttentionKernels::Mma)]
    #[serde(default)]
    pub attention_kernels: AttentionKernels,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print only validation losses, warnings and the final checkpoint.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
}

impl TrainConfig {
    /// The settings a resumed run must share with the run it continues, as (name, value) pairs.
    /// Schedules of logging, sampling and checkpoints, the step count and the device may change,
    /// and so may `--recompute`: it changes memory and time, never a loss or a gradient.
    pub fn identity(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--model", self.model.clone()),
            ("--n-layer", format!("{:?}", self.n_layer)),
            ("--n-head", format!("{:?}", self.n_head)),
            ("--n-embd", format!("{:?}", self.n_embd)),
            ("--n-ctx", format!("{:?}", self.n_ctx)),
            ("--init-from", format!("{:?}", self.init_from)),
            ("--data", format!("{:?}", self.data)),
            ("--batch-size", self.batch_size.to_string()),
            ("--seq-len", self.seq_len.to_string()),
            ("--total-batch-tokens", format!("{:?}", self.total_batch_tokens)),
            ("--seed", self.seed.to_string()),
            ("--objective", format!("{:?}", self.objective)),
        ]
    }
}

/// A run configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

impl TrainConfig {
    /// The configuration with the file named by `--config` applied under the flags the user
    /// typed: a setting comes from the command line if given there, else from the file, else
    /// from its default. `matches` are the `train` subcommand's parsed arguments.
    pub fn with_config_file(&self, matches: &clap::ArgMatches) -> Result<TrainConfig, ConfigFileError> {
        let Some(path) = &self.config else { return Ok(self.clone()) };
        let invalid = |msg: String| ConfigFileError::Invalid { path: path.clone(), msg };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io { path: path.clone(), source })?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| invalid(format!("not valid TOML: {}", e.message())))?;
        let mut merged = serde_json::to_value(self).expect("config serialises");
        let fields = merged.as_object_mut().expect("config is an object");
        for (key, value) in table {
            let name = key.replace('-', "_");
            if !fields.contains_key(&name) {
                return Err(invalid(format!("unknown setting '{key}' (settings are the flags of gptk train --help)")));
            }
            if matches.value_source(&name) == Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            fields.insert(name, serde_json::to_value(value).expect("TOML values are JSON values"));
        }
        let mut cfg: TrainConfig = serde_json::from_value(merged).map_err(|e| invalid(e.to_string()))?;
        cfg.config = self.config.clone();
        Ok(cfg)
    }

    /// The resolved configuration as TOML, loadable with `--config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a train config is representable in TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: TrainConfig,
    }

    fn resolve(args: &[&str]) -> Result<TrainConfig, ConfigFileError> {
        let matches = Cli::command().get_matches_from(std::iter::once("gptk").chain(args.iter().copied()));
        let cli = Cli::from_arg_matches(&matches).unwrap();
        cli.cfg.with_config_file(&matches)
    }

    #[test]
    fn the_file_fills_in_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("gptk-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "batch-size = 3\nsteps = 77\nlr = 0.5\nobjective = \"clm+mlm\"\ndata = \"somewhere\"\n")
            .unwrap();
        let f = file.to_str().unwrap();
        let cfg = resolve(&["--config", f, "--steps", "5"]).unwrap();
        assert_eq!((cfg.batch_size, cfg.steps, cfg.lr), (3, 5, 0.5));
        assert_eq!(cfg.objective, Objective::ClmMlm);
        assert_eq!(cfg.data, Some(PathBuf::from("somewhere")));
        // The resolved record reads back to the same configuration.
        std::fs::write(&file, cfg.to_toml()).unwrap();
        let again = resolve(&["--config", f]).unwrap();
        assert_eq!(again, cfg);
        // Without a file nothing changes.
        assert_eq!(resolve(&["--steps", "9"]).unwrap().steps, 9);
    }

    #[test]
    fn bad_files_name_the_file_and_the_setting() {
        let dir = std::env::temp_dir().join(format!("gptk-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        let f = file.to_str().unwrap();
        for (body, needle) in [
            ("lrr = 1", "unknown setting 'lrr'"),
            ("steps = \"many\"", "invalid type"),
            ("steps = ", "not valid TOML"),
            ("device = \"tpu\"", "unknown variant"),
        ] {
            std::fs::write(&file, body).unwrap();
            let e = resolve(&["--config", f]).unwrap_err().to_string();
            assert!(e.contains("bad.toml") && e.contains(needle), "{body}: {e}");
        }
        assert!(resolve(&["--config", "/nonexistent/run.toml"]).unwrap_err().to_string().contains("run.toml"));
    }
}
