//! Tokenizers: round trips, the special-token ids and decoding that never panics.

use gptk::data::tokenizer::{Special, Tokenizer};
use gptk::model::config::{GPT2_VOCAB_SIZE, ModelConfig};
use gptk::rng::Rng;

const SAMPLES: &[&str] = &[
    "",
    "a",
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election.",
    "Zweites Dokument — äöü ß, 日本語のテキスト, 한국어, العربية, 🦀🦀 👩‍👩‍👧.",
    "tabs\tand\r\nCRLF line ends\n\n\nand   runs   of   spaces   ",
    "<|endoftext|> [MASK] [PAD] are only text here",
    "numbers 1234567890 3.14159 -42 1e-9 and punctuation !@#$%^&*()_+{}|:\"<>?",
];

fn both() -> [Tokenizer; 2] {
    [Tokenizer::gpt2(), Tokenizer::bytes()]
}

#[test]
fn encode_then_decode_is_the_identity() {
    for tok in both() {
        for text in SAMPLES {
            let ids = tok.encode(text);
            assert!(ids.iter().all(|&i| i < tok.eot()), "{}: only real tokens below end-of-text", tok.name());
            assert_eq!(&tok.decode(&ids), text, "{}", tok.name());
        }
    }
}

#[test]
fn vocabularies_are_as_documented() {
    let gpt2 = Tokenizer::gpt2();
    assert_eq!((gpt2.vocab_size(), gpt2.eot(), gpt2.name()), (GPT2_VOCAB_SIZE, 50256, "gpt2"));
    let bytes = Tokenizer::bytes();
    assert_eq!((bytes.vocab_size(), bytes.eot(), bytes.name()), (257, 256, "bytes"));
    assert_eq!(bytes.encode("é"), vec![0xC3, 0xA9], "bytes are UTF-8 bytes");
    assert_eq!(gpt2.encode(" the"), vec![262]);
    let e = Tokenizer::from_name("sentencepiece").unwrap_err().to_string();
    assert_eq!(e, "unknown tokenizer 'sentencepiece' (known: gpt2, bytes)");
}

#[test]
fn special_ids_follow_the_real_vocabulary_inside_the_padding() {
    for tok in both() {
        let v = tok.vocab_size() as u32;
        let expected = [(tok.mask(), "[MASK]"), (tok.start(), "[START]"), (tok.delimiter(), "[DELIM]")];
        let expected = expected.into_iter().chain([(tok.extract(), "[EXTRACT]"), (tok.pad(), "[PAD]")]);
        for (k, (id, marker)) in expected.enumerate() {
            assert_eq!(id, v + k as u32, "{}", tok.name());
            assert_eq!(tok.special(Special::ALL[k]), id);
            assert_eq!(tok.decode(&[id]), marker);
        }
        let cfg = ModelConfig { n_layer: 1, n_head: 1, n_embd: 8, n_ctx: 8, vocab_size: tok.vocab_size() };
        assert!(tok.pad() < cfg.padded_vocab_size() as u32, "specials fit the padding");
        // No text ever encodes to a special id or end-of-text.
        for text in SAMPLES {
            assert!(tok.encode(text).iter().all(|&i| i < v - 1));
        }
        assert_eq!(tok.decode(&[tok.eot()]), "<|endoftext|>");
    }
}

#[test]
fn decoding_any_ids_never_panics() {
    let mut rng = Rng::new(11);
    for tok in both() {
        let vp = tok.padded_vocab_size() as u64;
        for _ in 0..200 {
            let ids: Vec<u32> = (0..rng.below(40)).map(|_| rng.below(vp + 3) as u32).collect();
            let text = tok.decode(&ids);
            assert!(!text.is_empty() || ids.is_empty());
        }
        assert_eq!(tok.decode(&[u32::MAX, tok.vocab_size() as u32 + 5]), "\u{FFFD}\u{FFFD}");
    }
    // A token that is half of a multi-byte character decodes lossily, not with a panic.
    let bytes = Tokenizer::bytes();
    assert_eq!(bytes.decode(&[0xE6, 0x97]), "\u{FFFD}");
    assert_eq!(bytes.decode(&[0xE6, 0x97, 0xA5]), "日");
}
