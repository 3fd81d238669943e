//! Tokenizers: GPT-2's byte-pair encoding (offline, the r50k_base ranks shipped inside the
//! `tiktoken-rs` crate) and plain bytes for small models.
//!
//! Both put end-of-text last among the real tokens (id V − 1: 50256 for GPT-2, 256 for bytes) and
//! the five special tokens right after, in the vocabulary padding: [MASK] = V, start = V + 1,
//! delimiter = V + 2, extract = V + 3, pad = V + 4. They never collide with real tokens, the
//! softmax never predicts them, and decoding shows them as readable markers. Text is encoded
//! without interpreting special-token strings, so "<|endoftext|>" or "[MASK]" inside a document
//! is text.
//!
//! GPT-2 splits text into pieces with a regular expression that needs look-around, which
//! `tiktoken-rs` runs on `fancy-regex`; that engine gives up (and `tiktoken-rs` panics) on a
//! whitespace run of about a million characters. Such runs are cut out before the regular
//! expression sees them and encoded piecewise at places where the result is provably the same
//! (see [`LONG_WHITESPACE_BYTES`]), so `encode` accepts any text and gives GPT-2's tokens.

use crate::model::config::{GPT2_VOCAB_SIZE, NUM_SPECIAL_TOKENS, VOCAB_PAD_MULTIPLE};
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
    pub const ALL: [Special; NUM_SPECIAL_TOKENS] =
        [Special::Mask, Special::Start, Special::Delimiter, Special::Extract, Special::Pad];

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

/// How decoding shows end-of-text (GPT-2's own spelling).
pub const EOT_MARKER: &str = "<|endoftext|>";
/// How decoding shows an id that is no token (past the special tokens): the Unicode replacement
/// character, as for bytes that are not UTF-8.
pub const UNKNOWN_MARKER: &str = "\u{FFFD}";
/// Byte-level vocabulary: the 256 bytes, then end-of-text.
pub const BYTES_VOCAB_SIZE: usize = 257;

/// Whitespace runs longer than this (in bytes) are encoded outside the regular expression, in
/// chunks of about this size. Well below the ~1M characters where `fancy-regex` gives up, well
/// above anything ordinary text holds.
pub const LONG_WHITESPACE_BYTES: usize = 1 << 16;

/// Which tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gpt2,
    Bytes,
}

/// A tokenizer by name: `gpt2` or `bytes`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Tokenizer {
    kind: Kind,
}

/// An unknown tokenizer name.
#[derive(Debug, thiserror::Error)]
#[error("unknown tokenizer '{0}' (known: gpt2, bytes)")]
pub struct UnknownTokenizer(pub String);

impl Tokenizer {
    /// Names `from_name` accepts.
    pub const NAMES: [&'static str; 2] = ["gpt2", "bytes"];

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
            Kind::Gpt2 => GPT2_VOCAB_SIZE,
            Kind::Bytes => BYTES_VOCAB_SIZE,
        }
    }

    /// Vp: V plus the special tokens, rounded up as the model pads its vocabulary.
    pub fn padded_vocab_size(&self) -> usize {
        (self.vocab_size() + NUM_SPECIAL_TOKENS).div_ceil(VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    }

    /// End-of-text, the document separator.
    pub fn eot(&self) -> u32 {
        self.vocab_size() as u32 - 1
    }

    pub fn special(&self, s: Special) -> u32 {
        self.vocab_size() as u32 + s as u32
    }

    /// The special token `id` stands for, if any.
    pub fn special_of(&self, id: u32) -> Option<Special> {
        let v = self.vocab_size() as u32;
        id.checked_sub(v).and_then(|k| Special::ALL.get(k as usize).copied())
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

    /// Token ids of `text`: real tokens below end-of-text only (special-token strings are
    /// ordinary text). Never panics.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.kind {
            Kind::Gpt2 => encode_gpt2(text, LONG_WHITESPACE_BYTES),
            Kind::Bytes => text.bytes().map(u32::from).collect(),
        }
    }

    /// The bytes of `ids`; end-of-text and special tokens become their markers, ids outside the
    /// vocabulary become U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 2);
        for &id in ids {
            if id == self.eot() {
                out.extend_from_slice(EOT_MARKER.as_bytes());
            } else if id >= self.vocab_size() as u32 {
                let marker = self.special_of(id).map_or(UNKNOWN_MARKER, Special::marker);
                out.extend_from_slice(marker.as_bytes());
            } else {
                match self.kind {
                    Kind::Bytes => out.push(id as u8),
                    Kind::Gpt2 => match tiktoken_rs::r50k_base_singleton().decode_bytes(&[id]) {
                        Ok(bytes) => out.extend_from_slice(&bytes),
                        Err(_) => out.extend_from_slice(UNKNOWN_MARKER.as_bytes()),
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

/// GPT-2 BPE of `text`, with whitespace runs longer than `long` bytes kept away from the regular
/// expression.
///
/// Why this gives GPT-2's tokens: GPT-2's pattern never lets a piece that starts at a
/// non-whitespace character run into following whitespace, so the text before a maximal
/// whitespace run W ends on a piece boundary. Inside the text, W minus its last character is one
/// piece (`\s+(?!\S)`) and the last character starts the next piece (as the optional space of
/// ` ?\p{L}+`-style pieces, or alone); at the end of the text W is one piece (`\s+$`). A piece
/// made only of whitespace can be cut wherever no token spans the cut; in r50k_base the only
/// token of several whitespace characters is "\n\n", so any cut between two ASCII whitespace
/// bytes that are not both '\n' keeps the result (`whitespace_tokens_are_as_assumed` checks this
/// against the vocabulary).
fn encode_gpt2(text: &str, long: usize) -> Vec<u32> {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let mut out = Vec::with_capacity(text.len() / 3);
    let mut rest = text;
    while let Some((start, end)) = find_long_whitespace(rest, long) {
        out.extend(bpe.encode_ordinary(&rest[..start]));
        let run = &rest[start..end];
        // Inside the text the last whitespace character belongs to the next piece.
        let piece_end = if end < rest.len() { run.char_indices().last().map_or(0, |(i, _)| i) } else { run.len() };
        let mut piece = &run[..piece_end];
        while !piece.is_empty() {
            let cut = whitespace_cut(piece, long);
            out.extend(bpe.encode_ordinary(&piece[..cut]));
            piece = &piece[cut..];
        }
        rest = &rest[start + piece_end..];
    }
    out.extend(bpe.encode_ordinary(rest));
    out
}

/// Byte range of the first maximal whitespace run of `text` longer than `long` bytes and of at
/// least two characters (a single character never troubles the regular expression).
fn find_long_whitespace(text: &str, long: usize) -> Option<(usize, usize)> {
    let mut run: Option<(usize, usize)> = None; // (start, characters)
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            run = Some(run.map_or((i, 1), |(s, n)| (s, n + 1)));
        } else if let Some((s, n)) = run.take()
            && i - s > long
            && n >= 2
        {
            return Some((s, i));
        }
    }
    run.filter(|&(s, n)| text.len() - s > long && n >= 2).map(|(s, _)| (s, text.len()))
}

/// Where to end the next chunk of the whitespace-only `piece`: the whole piece when it is short,
/// else the first cut at or after `long` bytes where no r50k_base token can span it: between two
/// ASCII whitespace bytes that are not both '\n', or inside a run of '\n' after an even number
/// of them (BPE pairs a run of newlines from its left end). A piece with no such cut is left
/// whole up to 4 × `long` bytes; past that (a huge run of non-ASCII whitespace) it is cut at a
/// character boundary, and its tokens decode to the same text but may differ from GPT-2's.
fn whitespace_cut(piece: &str, long: usize) -> usize {
    if piece.len() <= long {
        return piece.len();
    }
    let b = piece.as_bytes();
    let mut newlines = 0; // '\n' bytes just before position i
    for i in 1..b.len() {
        newlines = if b[i - 1] == b'\n' { newlines + 1 } else { 0 };
        if i < long || !(b[i - 1].is_ascii_whitespace() && b[i].is_ascii_whitespace()) {
            continue;
        }
        if !(b[i - 1] == b'\n' && b[i] == b'\n') || newlines % 2 == 0 {
            return i;
        }
    }
    if b.len() <= 4 * long {
        return b.len(); // still far from where the regular expression gives up
    }
    (long..b.len()).find(|&i| piece.is_char_boundary(i)).unwrap_or(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use crate::rng::Rng;

    const TEXT: &str = "Hello, world! Ünïcödé — 日本語 and emoji 🦀.\n\tTabs and  spaces.";

    #[test]
    fn both_tokenizers_round_trip_text() {
        for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
            let ids = tok.encode(TEXT);
            assert!(ids.iter().all(|&i| i < tok.eot()), "{}", tok.name());
            assert_eq!(tok.decode(&ids), TEXT, "{}", tok.name());
        }
    }

    #[test]
    fn gpt2_matches_known_ids() {
        // "Hello world" is [15496, 995] in GPT-2's vocabulary; end-of-text is 50256.
        let tok = Tokenizer::gpt2();
        assert_eq!(tok.encode("Hello world"), vec![15496, 995]);
        assert_eq!(tok.eot(), 50256);
        // Special strings are plain text: '<', '|', 'end', 'of', 'text', '|', '>'.
        assert_eq!(tok.encode("<|endoftext|>"), vec![27, 91, 437, 1659, 5239, 91, 29]);
        assert_eq!(tok.padded_vocab_size(), 50304);
        assert_eq!(Tokenizer::bytes().padded_vocab_size(), 384);
    }

    #[test]
    fn special_tokens_live_in_the_padding_and_decode() {
        for tok in [Tokenizer::gpt2(), Tokenizer::bytes()] {
            let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, n_ctx: 8, vocab_size: tok.vocab_size() };
            let vp = cfg.padded_vocab_size() as u32;
            assert_eq!(vp as usize, tok.padded_vocab_size());
            let ids = [tok.mask(), tok.start(), tok.delimiter(), tok.extract(), tok.pad()];
            for (k, &id) in ids.iter().enumerate() {
                assert_eq!(id, tok.vocab_size() as u32 + k as u32);
                assert_eq!(tok.special_of(id), Some(Special::ALL[k]));
            }
            assert!(ids.iter().all(|&i| i > tok.eot() && i < vp));
            assert_eq!(tok.special_of(tok.eot()), None);
            assert_eq!(tok.decode(&ids), "[MASK][START][DELIM][EXTRACT][PAD]");
            // Anything else decodes without panicking.
            assert_eq!(tok.decode(&[vp - 1, vp, u32::MAX]), "\u{FFFD}\u{FFFD}\u{FFFD}");
        }
    }

    #[test]
    fn names_round_trip() {
        for name in Tokenizer::NAMES {
            assert_eq!(Tokenizer::from_name(name).unwrap().name(), name);
        }
        assert!(Tokenizer::from_name("llama").is_err());
    }

    #[test]
    fn whitespace_tokens_are_as_assumed() {
        // The cut rule of `whitespace_cut` holds if no token spans two ASCII whitespace bytes
        // other than "\n\n": every token containing two adjacent ASCII whitespace bytes is "\n\n".
        let bpe = tiktoken_rs::r50k_base_singleton();
        for id in 0..GPT2_VOCAB_SIZE as u32 - 1 {
            let b = bpe.decode_bytes(&[id]).unwrap();
            if b.windows(2).any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_whitespace()) {
                assert_eq!(b, b"\n\n", "token {id}");
            }
        }
    }

    #[test]
    fn long_whitespace_runs_encode_as_gpt2_does() {
        // With a small threshold the piecewise path runs on short texts, where the regular
        // expression itself still works and gives the reference.
        let bpe = tiktoken_rs::r50k_base_singleton();
        let alphabet = [" ", " ", "\n", "\n", "\t", "\r", "a", "Bc", "7", "!", "é", "'s", "\u{3000}a"];
        let mut rng = Rng::new(5);
        for case in 0..2000 {
            let len = 1 + rng.below(60) as usize;
            let text: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            for long in [1, 2, 3, 7] {
                assert_eq!(encode_gpt2(&text, long), bpe.encode_ordinary(&text), "case {case} long {long}: {text:?}");
            }
        }
        // A run far past what the regular expression survives.
        let tok = Tokenizer::gpt2();
        let text = format!("a{}b \t\n{}", " \n".repeat(600_000), "\n".repeat(1_100_001));
        assert_eq!(tok.decode(&tok.encode(&text)), text);
        // Only non-ASCII whitespace: cut at character boundaries, still the same text.
        let text = format!("x{}y", "\u{3000}".repeat(400_000));
        assert_eq!(tok.decode(&tok.encode(&text)), text);
    }
}
