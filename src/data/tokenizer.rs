//! Tokenizers: GPT-2's byte-pair encoding (offline, the r50k_base ranks shipped inside the
//! `tiktoken-rs` crate) and plain bytes for small models.
//!
//! Both put end-of-text last among the real tokens (id V − 1: 50256 for GPT-2, 256 for bytes) and
//! the five special tokens right after, in the vocabulary padding: [MASK] = V, start = V + 1,
//! delimiter = V + 2, extract = V + 3, pad = V + 4. They never collide with real tokens, the
//! softmax never predicts them, and decoding shows them as readable markers. Text is encoded
//! without interpreting special-token strings, so "<|endoftext|>" inside a document is text.

use std::fmt;

/// Tokens that exist only in gptk's vocabulary padding, in id order after V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Mask,
    Start,
    Delimiter,
    Extract,
    Pad,
}

impl Special {
    pub const ALL: [Special; 5] = [Special::Mask, Special::Start, Special::Delimiter, Special::Extract, Special::Pad];

    /// How decoding shows the token.
    pub fn marker(self) -> &'static str {
        match self {
            Special::Mask => "[MASK]",
            Special::Start => "[START]",
            Special::Delimiter => "[DELIM]",
            Special::Extract => "[EXTRACT]",
            Special::Pad => "[PAD]",
        }
    }
}

/// Which tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gpt2,
    Bytes,
}

/// A tokenizer by name: `gpt2` or `bytes`.
#[derive(Clone, Copy)]
pub struct Tokenizer {
    kind: Kind,
}

/// An unknown tokenizer name.
#[derive(Debug, thiserror::Error)]
#[error("unknown tokenizer '{0}' (known: gpt2, bytes)")]
pub struct UnknownTokenizer(pub String);

/// GPT-2's vocabulary: 50256 merges and bytes, then end-of-text.
const GPT2_VOCAB: usize = 50257;
/// Bytes, then end-of-text.
const BYTES_VOCAB: usize = 257;

impl Tokenizer {
    pub fn gpt2() -> Self {
        Tokenizer { kind: Kind::Gpt2 }
    }

    pub fn bytes() -> Self {
        Tokenizer { kind: Kind::Bytes }
    }

    pub fn from_name(name: &str) -> Result<Self, UnknownTokenizer> {
        match name {
            "gpt2" => Ok(Self::gpt2()),
            "bytes" => Ok(Self::bytes()),
            other => Err(UnknownTokenizer(other.to_string())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Gpt2 => "gpt2",
            Kind::Bytes => "bytes",
        }
    }

    /// V: real tokens, end-of-text included.
    pub fn vocab_size(&self) -> usize {
        match self.kind {
            Kind::Gpt2 => GPT2_VOCAB,
            Kind::Bytes => BYTES_VOCAB,
        }
    }

    /// End-of-text, the document separator.
    pub fn eot(&self) -> u32 {
        self.vocab_size() as u32 - 1
    }

    pub fn special(&self, s: Special) -> u32 {
        self.vocab_size() as u32 + s as u32
    }

    pub fn mask(&self) -> u32 {
        self.special(Special::Mask)
    }
    pub fn start(&self) -> u32 {
        self.special(Special::Start)
    }
    pub fn delimiter(&self) -> u32 {
        self.special(Special::Delimiter)
    }
    pub fn extract(&self) -> u32 {
        self.special(Special::Extract)
    }
    pub fn pad(&self) -> u32 {
        self.special(Special::Pad)
    }

    /// Token ids of `text` (special-token strings are ordinary text).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.kind {
            Kind::Gpt2 => tiktoken_rs::r50k_base_singleton().encode_ordinary(text),
            Kind::Bytes => text.bytes().map(u32::from).collect(),
        }
    }

    /// The bytes of `ids`; end-of-text and special tokens become their markers, ids outside the
    /// vocabulary become U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let v = self.vocab_size() as u32;
        let mut out = Vec::with_capacity(ids.len() * 2);
        for &id in ids {
            if id == self.eot() {
                out.extend_from_slice(b"<|endoftext|>");
            } else if id >= v {
                match Special::ALL.get((id - v) as usize) {
                    Some(s) => out.extend_from_slice(s.marker().as_bytes()),
                    None => out.extend_from_slice("\u{FFFD}".as_bytes()),
                }
            } else {
                match self.kind {
                    Kind::Bytes => out.push(id as u8),
                    Kind::Gpt2 => match tiktoken_rs::r50k_base_singleton().decode_bytes(&[id]) {
                        Ok(bytes) => out.extend_from_slice(&bytes),
                        Err(_) => out.extend_from_slice("\u{FFFD}".as_bytes()),
                    },
                }
            }
        }
        out
    }

    /// Text of `ids`; byte sequences that are not UTF-8 become U+FFFD. Never panics.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokenizer({})", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    const TEXT: &str = "Hello, world! Ünïcödé — 日本語 and emoji 🦀.\n\tTabs and  spaces.";

    #[test]
    fn both_tokenizers_round_trip_text() {
        for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
            let ids = tok.encode(TEXT);
            assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size() - 1), "{}", tok.name());
            assert_eq!(tok.decode(&ids), TEXT, "{}", tok.name());
        }
    }

    #[test]
    fn gpt2_matches_known_ids() {
        // "Hello world" is [15496, 995] in GPT-2's vocabulary; end-of-text is 50256.
        let tok = Tokenizer::gpt2();
        assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
        assert_eq!(tok.eot(), 50256);
        assert_eq!(tok.encode("<|endoftext|>").len(), 6, "special strings are plain text");
    }

    #[test]
    fn special_tokens_live_in_the_padding_and_decode() {
        for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
            let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, n_ctx: 8, vocab_size: tok.vocab_size() };
            let vp = cfg.padded_vocab_size() as u32;
            let ids: Vec<u32> = Special::ALL.iter().map(|&s| tok.special(s)).collect();
            assert!(ids.iter().all(|&i| i >= tok.vocab_size() as u32 && i < vp));
            assert_eq!(tok.decode(&ids), "[MASK][START][DELIM][EXTRACT][PAD]");
            // Anything else decodes without panicking.
            assert_eq!(tok.decode(&[vp - 1, u32::MAX]), "\u{FFFD}\u{FFFD}");
        }
    }

    #[test]
    fn names_round_trip() {
        for name in ["gpt2", "bytes"] {
            assert_eq!(Tokenizer::from_name(name).unwrap().name(), name);
        }
        assert!(Tokenizer::from_name("llama").is_err());
    }
}
