//! `gptk train` end to end on the CPU: exact resume, the built-in corpus, and bad input.

use std::path::Path;

mod common;
use common::{byte_dataset as dataset, gptk, step_losses, temp_dir};

const SMALL: &[&str] = &[
    "--model",
    "micro",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--steps",
    "6",
    "--warmup-steps",
    "2",
    "--val-every",
    "2",
    "--val-batches",
    "2",
    "--sample-every",
    "0",
    "--checkpoint-every",
    "2",
    "--json",
];

#[test]
fn resumed_run_reproduces_the_uninterrupted_losses_bitwise() {
    let dir = temp_dir("train-resume");
    let data = dataset(&dir);
    let d = data.to_str().unwrap();
    let whole = step_losses(&gptk(&[&["train", "--data", d, "--out", "a"], SMALL].concat(), &dir));
    assert_eq!(whole.len(), 6);
    let first = step_losses(&gptk(&[&["train", "--data", d, "--out", "b", "--stop-at", "3"], SMALL].concat(), &dir));
    assert_eq!(first.len(), 3);
    let second = step_losses(&gptk(&[&["train", "--data", d, "--out", "b", "--resume"], SMALL].concat(), &dir));
    assert_eq!(second.len(), 3);
    let resumed: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(whole, resumed, "losses differ after resume");
    // The final parameters and optimizer moments are identical too.
    let a = gptk::checkpoint::load(&dir.join("a/step_000006")).unwrap();
    let b = gptk::checkpoint::load(&dir.join("b/step_000006")).unwrap();
    assert!(a.params == b.params, "final parameters differ");
    let (sa, ma, va) = gptk::train::checkpoint::load_state(&dir.join("a/step_000006")).unwrap();
    let (sb, mb, vb) = gptk::train::checkpoint::load_state(&dir.join("b/step_000006")).unwrap();
    assert!(ma == mb && va == vb, "optimizer moments differ");
    assert_eq!((sa.step, sa.loader, sa.mask_rng, sa.sample_rng), (sb.step, sb.loader, sb.mask_rng, sb.sample_rng));
    // Metrics of the resumed run hold each step once.
    let metrics = std::fs::read_to_string(dir.join("b/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    // Each checkpoint carries its resolved configuration, which reproduces the run.
    let toml = std::fs::read_to_string(dir.join("a/step_000006/run.toml")).unwrap();
    assert!(toml.contains("batch_size = 2") && toml.contains("steps = 6"), "{toml}");
    let again = step_losses(&gptk(&["train", "--config", "a/step_000006/run.toml", "--out", "c", "--json"], &dir));
    assert_eq!(again, whole, "a run from the saved run.toml repeats the losses");
}

#[test]
fn loss_falls_and_a_checkpoint_samples() {
    let dir = temp_dir("train-falls");
    let data = dataset(&dir);
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        "run",
        "--model",
        "micro",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--steps",
        "40",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--val-every",
        "0",
        "--sample-every",
        "0",
        "--json",
    ];
    let losses = step_losses(&gptk(&args, &dir));
    let first: f64 = losses[0].1.parse().unwrap();
    let last: f64 = losses.last().unwrap().1.parse().unwrap();
    assert!(first > 5.0, "starts near ln(257) = 5.55, got {first}");
    assert!(last < first - 1.5, "loss falls: {first} -> {last}");
    let out =
        gptk(&["sample", "--model", "run", "--prompt", "line 3 of", "--max-new-tokens", "20", "--seed", "1"], &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("line 3 of"));
    let again =
        gptk(&["sample", "--model", "run", "--prompt", "line 3 of", "--max-new-tokens", "20", "--seed", "1"], &dir);
    assert_eq!(out.stdout, again.stdout, "sampling with a seed is reproducible");
    // eval takes the run directory (its newest checkpoint) as sample does.
    let val = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("_val_"))
        .expect("a validation shard");
    let eval = |model: &str| {
        let args = ["eval", "--model", model, "--data", val.to_str().unwrap(), "--batch-size", "2", "--seq-len", "32"];
        let out = gptk(&args, &dir);
        assert!(out.status.success(), "eval {model}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(eval("run"), eval("run/step_000040"));
}

fn fails_with(args: &[&str], dir: &Path, needle: &str) {
    let out = gptk(args, dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(err.contains(needle), "stderr for {args:?} lacks '{needle}': {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
}

#[test]
fn bad_runs_fail_with_one_clear_line() {
    let dir = temp_dir("train-bad");
    let data = dataset(&dir);
    let d = data.to_str().unwrap();
    let ok = gptk(&[&["train", "--data", d, "--out", "r"], SMALL].concat(), &dir);
    assert!(ok.status.success());
    fails_with(&[&["train", "--data", d, "--out", "r"], SMALL].concat(), &dir, "holds checkpoints of an earlier run");
    fails_with(
        &[
            "train",
            "--data",
            d,
            "--out",
            "r",
            "--resume",
            "--steps",
            "9",
            "--batch-size",
            "3",
            "--seq-len",
            "32",
            "--model",
            "micro",
        ],
        &dir,
        "--batch-size is 3 but the run",
    );
    fails_with(
        &["train", "--data", d, "--out", "s", "--model", "micro", "--seq-len", "999"],
        &dir,
        "longer than the model's context",
    );
    fails_with(&["train", "--data", "nowhere", "--out", "t"], &dir, "nowhere");
    fails_with(&["train", "--data", d, "--out", "u", "--model", "huge"], &dir, "unknown model preset 'huge'");
    fails_with(&["train", "--data", d, "--out", "v", "--batch-size", "0"], &dir, "--batch-size must be at least 1");
    fails_with(&["train", "--data", d, "--out", "w", "--resume"], &dir, "no checkpoint to resume from");
    fails_with(
        &[
            "train",
            "--data",
            d,
            "--out",
            "x",
            "--model",
            "micro",
            "--batch-size",
            "1000",
            "--seq-len",
            "100",
            "--steps",
            "1",
        ],
        &dir,
        "shorter than one batch",
    );
    // A byte-level model on GPT-2-tokenized data.
    let gpt2 = dir.join("gpt2data");
    let prep = gptk(&["prepare", "--input", dir.join("text").to_str().unwrap(), "--out", gpt2.to_str().unwrap()], &dir);
    assert!(prep.status.success());
    fails_with(
        &["train", "--data", gpt2.to_str().unwrap(), "--out", "y", "--init-from", "r"],
        &dir,
        "the data's tokenizer (gpt2) has 50257",
    );
}

#[test]
fn gpu_only_flags_on_the_cpu_warn_and_change_nothing() {
    let dir = temp_dir("train-graphs-cpu");
    let data = dataset(&dir);
    let d = data.to_str().unwrap();
    let plain = step_losses(&gptk(&[&["train", "--data", d, "--out", "a", "--device", "cpu"], SMALL].concat(), &dir));
    let gpu_only = ["--cuda-graphs", "--attention-backward", "atomic", "--attention-kernels", "wgmma"];
    let args = [&["train", "--data", d, "--out", "b", "--device", "cpu"], &gpu_only[..], SMALL].concat();
    let out = gptk(&args, &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--cuda-graphs has no effect on the CPU"), "{err}");
    assert!(err.contains("--attention-backward atomic has no effect on the CPU"), "{err}");
    assert!(err.contains("--attention-kernels wgmma has no effect on the CPU"), "{err}");
    assert_eq!(step_losses(&out), plain);
    // The setting is kept with the run, like every flag.
    let toml = std::fs::read_to_string(dir.join("b/step_000006/run.toml")).unwrap();
    assert!(toml.contains("cuda_graphs = true") && toml.contains("attention_backward = \"atomic\""), "{toml}");
    assert!(toml.contains("attention_kernels = \"wgmma\""), "{toml}");
}
