//! Every command the README shows is a command gptk accepts: each `gptk …` and
//! `cargo run --release -- …` line of its shell blocks parses with the real command line, and
//! every script it names exists. (What the commands do is tested by the other suites.)

use clap::Parser;
use gptk::cli::command::Cli;

/// Splits a shell line into words: whitespace-separated, '…' and "…" quoted, # starts a comment.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, '#') if cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() || any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if !cur.is_empty() || any {
        out.push(cur);
    }
    out
}

#[test]
fn readme_commands_parse() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut in_block = false;
    let mut checked = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let w = words(line);
        let args: Vec<String> = match w.first().map(String::as_str) {
            Some("gptk") => w.clone(),
            Some("cargo") if w.get(1).map(String::as_str) == Some("run") => {
                let at = w.iter().position(|x| x == "--").expect("cargo run … -- args");
                std::iter::once("gptk".to_string()).chain(w[at + 1..].iter().cloned()).collect()
            }
            Some(script) if script.starts_with("scripts/") => {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
                assert!(path.is_file(), "README names {script}, which does not exist");
                checked += 1;
                continue;
            }
            _ => continue,
        };
        if let Err(e) = Cli::try_parse_from(&args) {
            panic!("README line `{line}` does not parse:\n{e}");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} commands found in the README");
}

#[test]
fn the_splitter_handles_quotes_and_comments() {
    assert_eq!(
        words("gptk prepare --input 'a b/*.txt' --out x  # note"),
        ["gptk", "prepare", "--input", "a b/*.txt", "--out", "x"]
    );
    assert_eq!(
        words("gptk sample --prompt \"Once upon\" --x ''"),
        ["gptk", "sample", "--prompt", "Once upon", "--x", ""]
    );
}
