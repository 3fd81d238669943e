//! Classification tasks for fine-tuning, GPT-1 style.
//!
//! A task file is JSONL: `text`, an optional `text_b` for pairs, and `label` (a string or an
//! integer; integers are treated as their decimal text). An example becomes
//! `[START] text [DELIM] text_b [EXTRACT]`, and the classifier reads the final hidden state at the
//! extract token. Texts that do not fit the context are cut from the right (the beginning of a
//! text is kept; in a pair the longer text loses tokens first) and counted, so the caller can
//! report how many examples were cut.

use super::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// One example as read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub text_b: Option<String>,
    pub label: Option<String>,
}

/// A task file that cannot be used, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {msg}", path.display())]
    Line { path: PathBuf, line: usize, msg: String },
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
}

/// Whether examples must carry a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels {
    Required,
    Optional,
}

/// Reads a task file. Empty lines are skipped; every other line must be an object with a
/// non-empty string `text`.
pub fn read_examples(path: &Path, labels: Labels) -> Result<Vec<Example>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io { path: path.to_path_buf(), source })?;
    parse_examples(path, &text, labels)
}

/// [`read_examples`] on the text of the file `path`.
pub fn parse_examples(path: &Path, text: &str, labels: Labels) -> Result<Vec<Example>, TaskError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| TaskError::Line { path: path.to_path_buf(), line: i + 1, msg };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        let string = |field: &str| -> Result<Option<String>, TaskError> {
            match v.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!("'{field}' must be a string, found {other}"))),
            }
        };
        let text = string("text")?.ok_or_else(|| bad("no 'text' field".into()))?;
        if text.trim().is_empty() {
            return Err(bad("'text' is empty".into()));
        }
        let text_b = string("text_b")?;
        if text_b.as_ref().is_some_and(|b| b.trim().is_empty()) {
            return Err(bad("'text_b' is empty".into()));
        }
        let label = match v.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Some(other) => return Err(bad(format!("'label' must be a non-empty string or an integer, found {other}"))),
        };
        if label.is_none() && labels == Labels::Required {
            return Err(bad("no 'label' field".into()));
        }
        out.push(Example { text, text_b, label });
    }
    if out.is_empty() {
        return Err(TaskError::File { path: path.to_path_buf(), msg: "no examples".into() });
    }
    Ok(out)
}

/// The classes of a task, in a fixed order: integers numerically, then strings alphabetically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSet {
    pub names: Vec<String>,
}

impl LabelSet {
    /// The labels seen in `examples`.
    pub fn from_examples(examples: &[Example]) -> LabelSet {
        let mut names: Vec<String> = examples.iter().filter_map(|e| e.label.clone()).collect();
        names.sort_by(|a, b| match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            _ => a.cmp(b),
        });
        names.dedup();
        LabelSet { names }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Class indices of labelled examples; an error names the first label not in the set.
    pub fn indices(&self, examples: &[Example], path: &Path) -> Result<Vec<Option<usize>>, TaskError> {
        examples
            .iter()
            .map(|e| match &e.label {
                None => Ok(None),
                Some(l) => self.index(l).map(Some).ok_or_else(|| TaskError::File {
                    path: path.to_path_buf(),
                    msg: format!("label '{l}' never appears in the training set (known: {})", self.names.join(", ")),
                }),
            })
            .collect()
    }
}

/// An example as model input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    /// Tokens cut to fit the context.
    pub cut: usize,
}

/// `[START] a [DELIM b] [EXTRACT]` in at most `t` tokens, cutting the texts from the right: a
/// single text keeps its first t − 2 tokens; in a pair the shorter text stays whole if it fits
/// in half the room, else both get half. Needs `t` ≥ 3 (5 for pairs) so every text keeps a token.
pub fn encode(tok: &Tokenizer, ex: &Example, t: usize) -> Encoded {
    let mut a = tok.encode(&ex.text);
    let mut b = ex.text_b.as_deref().map(|s| tok.encode(s));
    let budget = t.saturating_sub(2 + usize::from(b.is_some()));
    let before = a.len() + b.as_ref().map_or(0, Vec::len);
    match &mut b {
        None => a.truncate(budget.max(1)),
        Some(b) if a.len() + b.len() > budget => {
            let half = budget / 2;
            let (keep_a, keep_b) = if a.len().min(b.len()) <= half {
                if a.len() <= b.len() { (a.len(), budget - a.len()) } else { (budget - b.len(), b.len()) }
            } else {
                (budget - half, half)
            };
            a.truncate(keep_a.max(1));
            b.truncate(keep_b.max(1));
        }
        Some(_) => {}
    }
    let cut = before - a.len() - b.as_ref().map_or(0, Vec::len);
    let mut tokens = Vec::with_capacity(t);
    tokens.push(tok.start());
    tokens.extend(a);
    if let Some(b) = b {
        tokens.push(tok.delimiter());
        tokens.extend(b);
    }
    tokens.push(tok.extract());
    Encoded { tokens, cut }
}

/// One batch of B sequences of T positions: inputs (padded), next-token targets on real tokens
/// only (−1 elsewhere), class targets (−1 except at each labelled extract position), and the row
/// of each sequence's extract position (b·T + position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskBatch {
    pub inputs: Vec<i32>,
    pub lm_targets: Vec<i32>,
    pub class_targets: Vec<i32>,
    pub extract_rows: Vec<usize>,
}

/// Packs up to B encoded examples (fewer in a last batch: the empty rows are padding that no
/// loss counts).
pub fn batch(tok: &Tokenizer, examples: &[(&Encoded, Option<usize>)], b: usize, t: usize) -> TaskBatch {
    assert!(examples.len() <= b);
    let v = tok.vocab_size() as u32;
    let pad = tok.pad() as i32;
    let mut out = TaskBatch {
        inputs: vec![pad; b * t],
        lm_targets: vec![-1; b * t],
        class_targets: vec![-1; b * t],
        extract_rows: Vec::with_capacity(examples.len()),
    };
    for (row, (enc, class)) in examples.iter().enumerate() {
        let ids = &enc.tokens;
        assert!(ids.len() <= t, "encoded example longer than the context");
        let base = row * t;
        for (i, &id) in ids.iter().enumerate() {
            out.inputs[base + i] = id as i32;
            if let Some(&next) = ids.get(i + 1)
                && next < v
            {
                out.lm_targets[base + i] = next as i32;
            }
        }
        let extract = base + ids.len() - 1;
        out.extract_rows.push(extract);
        if let Some(c) = class {
            out.class_targets[extract] = *c as i32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(a: &str, b: Option<&str>) -> Example {
        Example { text: a.into(), text_b: b.map(Into::into), label: Some("x".into()) }
    }

    #[test]
    fn encoding_frames_and_cuts_from_the_right() {
        let tok = Tokenizer::bytes();
        let e = encode(&tok, &ex("abcdef", None), 16);
        assert_eq!(e.cut, 0);
        assert_eq!(tok.decode(&e.tokens), "[START]abcdef[EXTRACT]");
        let e = encode(&tok, &ex("abcdef", None), 5);
        assert_eq!((tok.decode(&e.tokens).as_str(), e.cut), ("[START]abc[EXTRACT]", 3));
        // Pair: the longer text loses first, both keep their beginnings.
        let e = encode(&tok, &ex("abc", Some("0123456789")), 10);
        assert_eq!((tok.decode(&e.tokens).as_str(), e.cut), ("[START]abc[DELIM]0123[EXTRACT]", 6));
        let e = encode(&tok, &ex("abcdef", Some("012345")), 8);
        assert_eq!(tok.decode(&e.tokens), "[START]abc[DELIM]01[EXTRACT]");
        assert_eq!(e.tokens.len(), 8);
    }

    #[test]
    fn batches_target_real_tokens_and_the_extract_position() {
        let tok = Tokenizer::bytes();
        let (a, b) = (encode(&tok, &ex("hi", None), 8), encode(&tok, &ex("yo", Some("z")), 8));
        let batch = batch(&tok, &[(&a, Some(1)), (&b, None)], 3, 8);
        assert_eq!(batch.extract_rows, vec![3, 8 + 5]);
        assert_eq!(batch.class_targets[3], 1);
        assert_eq!(batch.class_targets.iter().filter(|&&c| c >= 0).count(), 1, "unlabelled rows count for nothing");
        // [START] h i [EXTRACT]: targets h, i, then none (the extract token is not predicted).
        assert_eq!(&batch.lm_targets[..4], &[b'h' as i32, b'i' as i32, -1, -1]);
        assert!(batch.inputs[16..].iter().all(|&x| x == tok.pad() as i32), "the empty row is padding");
        assert!(batch.lm_targets[16..].iter().all(|&x| x == -1));
    }

    #[test]
    fn files_are_checked_line_by_line() {
        let dir = std::env::temp_dir().join(format!("gptk-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t.jsonl");
        std::fs::write(&f, "{\"text\": \"a\", \"label\": 2}\n\n{\"text\": \"b\", \"label\": \"10\"}\n{\"text\": \"c\", \"label\": \"neg\"}\n").unwrap();
        let exs = read_examples(&f, Labels::Required).unwrap();
        let set = LabelSet::from_examples(&exs);
        assert_eq!(set.names, vec!["2", "10", "neg"]);
        for (body, needle) in [
            ("{\"text\": \"\", \"label\": 1}", ":1: 'text' is empty"),
            ("{\"label\": 1}", ":1: no 'text' field"),
            ("{\"text\": \"a\"}", ":1: no 'label' field"),
            ("{\"text\": \"a\", \"label\": 1.5}", "must be a non-empty string or an integer"),
            ("nope", ":1: not JSON"),
            ("", "no examples"),
        ] {
            std::fs::write(&f, body).unwrap();
            let e = read_examples(&f, Labels::Required).unwrap_err().to_string();
            assert!(e.contains(needle), "{body}: {e}");
        }
        std::fs::write(&f, "{\"text\": \"a\", \"label\": \"pos\"}").unwrap();
        let unseen = read_examples(&f, Labels::Required).unwrap();
        let e = set.indices(&unseen, &f).unwrap_err().to_string();
        assert!(e.contains("label 'pos' never appears in the training set"), "{e}");
    }
}
