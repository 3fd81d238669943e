//! `gptk eval` end to end: the built binary on a checkpoint and a shard written here. The loss
//! it prints must be the library's own number, and each kind of bad input must end the process
//! with a non-zero status and one `error: ...` line naming the file, never a panic.

use gptk::checkpoint;
use gptk::data::shard::{SequentialBatches, Shard, write_shard};
use gptk::model::config::ModelConfig;
use gptk::model::layout::ParamLayout;
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const B: usize = 2;
const T: usize = 8;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gptk-cli-eval-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny() -> ModelConfig {
    ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, n_ctx: 16, vocab_size: 67 }
}

/// GPT-2's initialisation with biases and gains perturbed, so every parameter matters.
fn params(cfg: &ModelConfig) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut p = init_params(cfg, &layout, 3);
    let mut rng = Rng::new(4);
    for spec in layout.specs.iter().filter(|s| !s.decay) {
        for x in &mut p[spec.tensor.offset..spec.tensor.end()] {
            *x += (rng.normal() * 0.1) as f32;
        }
    }
    p
}

/// A checkpoint directory and a shard of `n_tokens` random real tokens.
fn setup(tag: &str, params: &[f32], n_tokens: usize) -> (PathBuf, PathBuf, PathBuf) {
    let dir = tmpdir(tag);
    let model = dir.join("model");
    checkpoint::save(&model, &tiny(), &ParamLayout::new(&tiny()), params, &HashMap::new()).unwrap();
    let mut rng = Rng::new(5);
    let tokens: Vec<u16> = (0..n_tokens).map(|_| rng.below(tiny().vocab_size as u64) as u16).collect();
    let shard = dir.join("val.bin");
    write_shard(&shard, &tokens).unwrap();
    (dir, model, shard)
}

fn gptk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).output().expect("run gptk")
}

fn eval_args<'a>(model: &'a Path, shard: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = ["eval", "--model", &model.display().to_string(), "--data", &shard.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // B and T unless `extra` sets them (an option given twice is a usage error).
    for (flag, value) in [("--batch-size", "2"), ("--seq-len", "8")] {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_eval(model: &Path, shard: &Path, extra: &[&str]) -> Output {
    let args = eval_args(model, shard, extra);
    gptk(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn json_of(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gptk eval failed: {stderr}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line expected: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The library's mean loss over the first `max` batches of `shard`, as `gptk eval` defines it.
fn library_loss(model_dir: &Path, shard: &Path, max: usize) -> (f64, usize) {
    let loaded = checkpoint::load(model_dir).unwrap();
    let mut model = Gpt::cpu(loaded.cfg, B, T);
    model.load_params(&loaded.params).unwrap();
    let shard = Shard::open(shard).unwrap();
    let mut batches = SequentialBatches::new(&shard, B, T).unwrap();
    let (mut x, mut y) = (vec![0; B * T], vec![0; B * T]);
    let (mut sum, mut n) = (0f64, 0);
    while n < max && batches.next_into(&mut x, &mut y) {
        model.set_batch(&x, &y).unwrap();
        sum += model.forward(true).unwrap() as f64;
        n += 1;
    }
    (sum / n as f64, n)
}

#[test]
fn json_loss_is_the_library_loss() {
    // 5 whole batches of B·T = 16 (81 tokens needed) and a tail too short for a sixth.
    let (_dir, model, shard) = setup("json", &params(&tiny()), 90);
    let v = json_of(&run_eval(&model, &shard, &["--json"]));
    let (want, n) = library_loss(&model, &shard, usize::MAX);
    assert_eq!(n, 5);
    assert_eq!(v["tokens"].as_u64(), Some((n * B * T) as u64), "{v}");
    assert_eq!(v["batches"].as_u64(), Some(n as u64), "{v}");
    // The CPU backend is bitwise reproducible and JSON carries an f64 exactly: equality.
    assert_eq!(v["loss"].as_f64(), Some(want), "{v}");
    assert!((v["perplexity"].as_f64().unwrap() - want.exp()).abs() <= 1e-12 * want.exp());
    // A random model is near but not at the uniform loss.
    assert!((want - (tiny().vocab_size as f64).ln()).abs() < 0.5, "{want}");
}

#[test]
fn max_batches_limits_the_evaluation() {
    let (_dir, model, shard) = setup("max", &params(&tiny()), 90);
    let v = json_of(&run_eval(&model, &shard, &["--json", "--max-batches", "2"]));
    let (want, n) = library_loss(&model, &shard, 2);
    assert_eq!((n, v["batches"].as_u64(), v["tokens"].as_u64()), (2, Some(2), Some(32)), "{v}");
    assert_eq!(v["loss"].as_f64(), Some(want), "{v}");
    // More than the shard holds is the whole shard.
    let v = json_of(&run_eval(&model, &shard, &["--json", "--max-batches", "99"]));
    assert_eq!(v["batches"].as_u64(), Some(5), "{v}");
}

#[test]
fn all_zero_model_has_the_uniform_loss() {
    // Zero weights make every logit 0, so the loss is ln V whatever the tokens: a value the
    // library does not compute for us.
    let cfg = tiny();
    let zeros = vec![0f32; ParamLayout::new(&cfg).total];
    let (_dir, model, shard) = setup("zero", &zeros, 40);
    let v = json_of(&run_eval(&model, &shard, &["--json"]));
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - (cfg.vocab_size as f64).ln()).abs() < 1e-6, "{loss} vs ln {}", cfg.vocab_size);
}

#[test]
fn text_output_reports_loss_and_perplexity() {
    let (_dir, model, shard) = setup("text", &params(&tiny()), 40);
    let out = run_eval(&model, &shard, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("loss ") && text.contains("perplexity") && text.contains("32 tokens"), "{text}");
}

// ---- bad input ----------------------------------------------------------------------------------

/// The run failed with a non-zero exit code and exactly one `error: ` line on stderr that names
/// `file` and contains `needle`; nothing panicked.
fn assert_fails(out: &Output, file: &Path, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "gptk panicked: {stderr}");
    assert!(out.status.code().is_some_and(|c| c != 0), "expected a non-zero exit, got {:?}: {stderr}", out.status);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(&file.display().to_string()), "error does not name {}: {stderr}", file.display());
    assert!(lines[0].contains(needle), "error lacks {needle:?}: {stderr}");
}

#[test]
fn wrong_magic_is_an_error() {
    let (_dir, model, shard) = setup("magic", &params(&tiny()), 40);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    assert_fails(&run_eval(&model, &shard, &[]), &shard, "bad magic");
}

#[test]
fn shard_shorter_than_one_batch_is_an_error() {
    // One batch needs B·T + 1 = 17 tokens.
    let (_dir, model, shard) = setup("short", &params(&tiny()), 16);
    assert_fails(&run_eval(&model, &shard, &[]), &shard, "shorter than one batch");
    std::fs::write(&shard, [0u8; 7]).unwrap();
    assert_fails(&run_eval(&model, &shard, &[]), &shard, "shorter than the 1024-byte");
}

#[test]
fn seq_len_beyond_the_context_is_an_error() {
    let (_dir, model, shard) = setup("ctx", &params(&tiny()), 100);
    let out = run_eval(&model, &shard, &["--seq-len", "17"]);
    assert_fails(&out, &model, "longer than the model's context of 16");
}

#[test]
fn missing_or_broken_model_is_an_error() {
    let (dir, model, shard) = setup("nomodel", &params(&tiny()), 40);
    let nowhere = dir.join("nowhere");
    assert_fails(&run_eval(&nowhere, &shard, &[]), &nowhere, "no such file");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails(&run_eval(&empty, &shard, &[]), &empty, "no model.safetensors");
    let weights = model.join(checkpoint::MODEL_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&run_eval(&model, &shard, &[]), &weights, "not a valid safetensors file");
}

#[test]
fn missing_shard_is_an_error() {
    let (dir, model, _) = setup("noshard", &params(&tiny()), 40);
    let nowhere = dir.join("nowhere.bin");
    assert_fails(&run_eval(&model, &nowhere, &[]), &nowhere, "No such file");
}

#[test]
fn tokens_outside_the_vocabulary_are_an_error() {
    let (dir, model, _) = setup("vocab", &params(&tiny()), 40);
    let shard = dir.join("bad.bin");
    let mut tokens = vec![1u16; 40];
    tokens[21] = 67; // the first id past the real vocabulary (the [MASK] token)
    write_shard(&shard, &tokens).unwrap();
    assert_fails(&run_eval(&model, &shard, &[]), &shard, "token 67 at position 21 is outside the vocabulary of 67");
    tokens[21] = 65535;
    write_shard(&shard, &tokens).unwrap();
    assert_fails(&run_eval(&model, &shard, &[]), &shard, "token 65535 at position 21");
    // A bad token past the evaluated batches is not read, so it is not an error.
    tokens[21] = 1;
    tokens[39] = 999;
    write_shard(&shard, &tokens).unwrap();
    let v = json_of(&run_eval(&model, &shard, &["--json", "--max-batches", "1"]));
    assert_eq!(v["batches"].as_u64(), Some(1));
}

#[test]
fn zero_sizes_are_errors() {
    let (_dir, model, shard) = setup("zero-sizes", &params(&tiny()), 40);
    for flag in [["--max-batches", "0"], ["--batch-size", "0"]] {
        let out = run_eval(&model, &shard, &flag);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "no loss may be printed: {}", String::from_utf8_lossy(&out.stdout));
    }
}
