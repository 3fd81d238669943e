//! Model shape: the handful of numbers that fix a GPT-2-style transformer.
//!
//! Everything else (parameter layout, activation plan, FLOPs) is derived from a [`ModelConfig`].
//! The vocabulary has two sizes, as in llm.c: `vocab_size` (V) is the number of real tokens the
//! softmax runs over; `padded_vocab_size()` (Vp) rounds V plus room for the special tokens up to
//! a multiple of [`VOCAB_PAD_MULTIPLE`], which keeps the classifier matmul aligned for tensor cores
//! and gives the special tokens ([MASK], start, delimiter, extract, pad) rows of their own.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The padded vocabulary is a multiple of this (50257 + specials → 50304 for GPT-2).
pub const VOCAB_PAD_MULTIPLE: usize = 128;
/// Special tokens kept in the vocabulary padding, in this order after the real vocabulary.
pub const NUM_SPECIAL_TOKENS: usize = 5;
/// Layernorm epsilon of GPT-2 (`layer_norm_epsilon` in Hugging Face's config).
pub const LAYERNORM_EPS: f32 = 1e-5;

/// The shape of a GPT-2-style model: pre-norm blocks, learned positions, tanh-GELU MLP of width
/// 4C, tied input/output embeddings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// L: number of transformer blocks.
    pub n_layer: usize,
    /// NH: attention heads per block.
    pub n_head: usize,
    /// C: width of the residual stream.
    pub n_embd: usize,
    /// Longest sequence the position table covers (Hugging Face's `n_positions`).
    pub n_ctx: usize,
    /// V: real vocabulary size (the softmax runs over these).
    pub vocab_size: usize,
}

/// A named preset: `(name, n_layer, n_head, n_embd, n_ctx, description)`.
type Preset = (&'static str, usize, usize, usize, usize, &'static str);

/// GPT-2 sizes as in the paper (d12 = 124M … d48 = 1.5B) and small shapes for CPU work.
pub const PRESETS: &[Preset] = &[
    ("d12", 12, 12, 768, 1024, "GPT-2 small, 124M parameters"),
    ("d24", 24, 16, 1024, 1024, "GPT-2 medium, 350M parameters"),
    ("d36", 36, 20, 1280, 1024, "GPT-2 large, 774M parameters"),
    ("d48", 48, 25, 1600, 1024, "GPT-2 XL, 1.5B parameters"),
    ("d6", 6, 6, 384, 512, "6 layers, 384 wide: a small GPU or patient CPU model"),
    ("tiny", 4, 4, 256, 256, "4 layers, 256 wide: trains on a laptop CPU"),
    ("micro", 2, 2, 128, 128, "2 layers, 128 wide: smoke tests"),
];

/// GPT-2's BPE vocabulary size (r50k_base: 50256 merges + end-of-text).
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// A shape that cannot be built, with the field that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{field} must be at least 1, got {value}")]
    Zero { field: &'static str, value: usize },
    #[error("n_embd ({n_embd}) must be a multiple of n_head ({n_head})")]
    HeadSplit { n_embd: usize, n_head: usize },
    #[error("unknown model preset '{0}' (known: {1})")]
    UnknownPreset(String, String),
    #[error("vocab_size {0} is too large: token ids are stored as u16 in shards and must stay below 65536")]
    VocabTooLarge(usize),
}

impl ModelConfig {
    /// A preset by name with the given vocabulary size.
    pub fn preset(name: &str, vocab_size: usize) -> Result<Self, ConfigError> {
        let p = PRESETS.iter().find(|p| p.0 == name).ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            ConfigError::UnknownPreset(name.to_string(), known.join(", "))
        })?;
        let cfg = ModelConfig { n_layer: p.1, n_head: p.2, n_embd: p.3, n_ctx: p.4, vocab_size };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the shape is buildable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_ctx", self.n_ctx),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field, value });
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ConfigError::HeadSplit { n_embd: self.n_embd, n_head: self.n_head });
        }
        // Compared before padding, which would overflow for a vocabulary near usize::MAX (a
        // hostile config), then after it.
        if self.vocab_size > 1 << 16 || self.padded_vocab_size() > 1 << 16 {
            return Err(ConfigError::VocabTooLarge(self.vocab_size));
        }
        Ok(())
    }

    /// HS: width of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Vp: the real vocabulary plus the special tokens, rounded up to a multiple of 128.
    pub fn padded_vocab_size(&self) -> usize {
        (self.vocab_size + NUM_SPECIAL_TOKENS).div_ceil(VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    }

    /// Number of real (unpadded) parameters, as quoted for GPT-2 (124M for d12): the padding rows
    /// of the embedding are not counted, the special-token rows are.
    pub fn num_parameters(&self) -> usize {
        let (l, c) = (self.n_layer, self.n_embd);
        let v = self.vocab_size + NUM_SPECIAL_TOKENS;
        let per_layer = 2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c);
        v * c + self.n_ctx * c + l * per_layer + 2 * c
    }

    /// Training FLOPs per token (forward + backward = 3× forward), matmuls and attention included,
    /// for sequence length `t`. Attention is counted as if no causal masking were exploited, as
    /// the PaLM paper and nanoGPT count it for MFU.
    pub fn flops_per_token(&self, t: usize) -> f64 {
        let (l, c) = (self.n_layer as f64, self.n_embd as f64);
        let vp = self.padded_vocab_size() as f64;
        let matmul_params = l * 12.0 * c * c + vp * c;
        let attention = l * 2.0 * c * t as f64;
        6.0 * matmul_params + 6.0 * attention
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "L={} NH={} C={} ctx={} V={} (Vp={})",
            self.n_layer,
            self.n_head,
            self.n_embd,
            self.n_ctx,
            self.vocab_size,
            self.padded_vocab_size()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters_and_padded_vocab() {
        let cfg = ModelConfig::preset("d12", GPT2_VOCAB_SIZE).unwrap();
        assert_eq!(cfg.padded_vocab_size(), 50304);
        // 124,439,808 for HF GPT-2 plus 5 special-token rows of 768.
        assert_eq!(cfg.num_parameters(), 124_439_808 + 5 * 768);
    }

    #[test]
    fn padding_leaves_room_for_special_tokens() {
        for v in [1, 123, 128, 256, 257, 50257] {
            let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, n_ctx: 8, vocab_size: v };
            let vp = cfg.padded_vocab_size();
            assert!(vp >= v + NUM_SPECIAL_TOKENS && vp.is_multiple_of(VOCAB_PAD_MULTIPLE), "V={v} Vp={vp}");
        }
    }

    #[test]
    fn bad_shapes_are_rejected_with_the_field() {
        let mut cfg = ModelConfig::preset("tiny", 257).unwrap();
        cfg.n_head = 3;
        assert!(matches!(cfg.validate(), Err(ConfigError::HeadSplit { .. })));
        cfg.n_head = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::Zero { field: "n_head", value: 0 }));
        assert!(ModelConfig::preset("d13", 257).is_err());
        cfg.n_head = 4;
        cfg.vocab_size = usize::MAX;
        assert_eq!(cfg.validate(), Err(ConfigError::VocabTooLarge(usize::MAX)));
    }
}
