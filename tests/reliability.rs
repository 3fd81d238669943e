//! What `gptk train` promises when things go wrong, end to end on tiny CPU models: a process
//! killed in the middle of a save leaves the previous checkpoint usable and resumable; SIGINT and
//! SIGTERM finish the step, save and exit 0; non-finite steps are skipped, counted and end the
//! run after a limit; loss spikes are logged; the same command gives bitwise the same losses
//! whatever the number of threads. docs/reliability.md lists these promises.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{byte_dataset, events, gptk, gptk_command, step_losses, temp_dir};

/// Longest a test waits for a training process to reach a point.
const WAIT: Duration = Duration::from_secs(120);

/// A micro model on the CPU, six steps, a checkpoint every two, the newest two kept.
const SMALL: &[&str] = &[
    "--data",
    "data",
    "--device",
    "cpu",
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
    "--keep-checkpoints",
    "2",
];

/// `gptk train --out OUT` with [`SMALL`]'s settings, those `extra` gives replaced.
/// The six-step both-objectives run of [`train_args`] into `out`, with one environment variable set.
fn train_with_env(dir: &Path, out: &str, var: &str, value: &str) -> Output {
    gptk_command(&train_args(out, &["--objective", "clm+mlm", "--json"]), dir).env(var, value).output().unwrap()
}

/// The parameters of the last checkpoint of such a run.
fn final_params(dir: &Path, out: &str) -> Vec<f32> {
    gptk::checkpoint::load(&dir.join(out).join("step_000006")).unwrap().params
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--out", out];
    for pair in SMALL.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// The validation shard of a prepared dataset.
fn val_shard(data: &Path) -> PathBuf {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("_val_"))
        .expect("a validation shard")
}

/// The names of the entries of a run directory that look like checkpoints, sorted.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("step_"))
        .collect();
    names.sort();
    names
}

/// A training process that is killed if the test fails while it runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, child: &mut Child, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("gptk ended ({status}) before {what}: {err}");
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_usable() {
    let dir = temp_dir("reliability-sigkill");
    let val = val_shard(&byte_dataset(&dir));
    let whole = step_losses(&gptk(&train_args("whole", &["--json"]), &dir));
    assert_eq!(whole.len(), 6);
    assert_eq!(checkpoints(&dir.join("whole")), ["step_000004", "step_000006"], "the newest two are kept");

    // The save of step 4 waits once its partial directory is written; kill the process there.
    let mut running = Running(
        gptk_command(&train_args("run", &["--json"]), &dir)
            .env("GPTK_TEST_PAUSE_IN_SAVE", "4:60000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut running.0;
    let partial = dir.join("run/.step_000004.partial");
    wait_until("the partial checkpoint of step 4", child, || partial.join("run.toml").is_file());
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9), "killed by SIGKILL");
    assert!(partial.join("model.safetensors").is_file(), "the save was under way");
    assert_eq!(checkpoints(&dir.join("run")), [".step_000004.partial", "step_000002"], "no step_000004 yet");
    let previous = dir.join("run/step_000002");

    // The previous checkpoint loads in every command.
    gptk::checkpoint::load(&previous).unwrap();
    let eval = gptk(
        &[
            "eval",
            "--model",
            "run/step_000002",
            "--data",
            val.to_str().unwrap(),
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--device",
            "cpu",
            "--json",
        ],
        &dir,
    );
    assert!(eval.status.success(), "eval: {}", String::from_utf8_lossy(&eval.stderr));
    let sample =
        gptk(&["sample", "--model", "run", "--prompt", "line", "--max-new-tokens", "8", "--device", "cpu"], &dir);
    assert!(sample.status.success(), "sample: {}", String::from_utf8_lossy(&sample.stderr));

    // --resume takes it, says so, and the run ends as if nothing had happened.
    let resumed = gptk(&train_args("run", &["--json", "--resume"]), &dir);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(err.contains("resuming from run/step_000002 (step 2)"), "{err}");
    assert_eq!(step_losses(&resumed), whole[2..], "losses after the resume");
    let a = gptk::checkpoint::load(&dir.join("whole/step_000006")).unwrap();
    let b = gptk::checkpoint::load(&dir.join("run/step_000006")).unwrap();
    assert!(a.params == b.params, "final parameters differ");
    assert!(!partial.exists(), "the next save cleans up the partial directory");
    assert_eq!(checkpoints(&dir.join("run")), ["step_000004", "step_000006"]);
}

/// Runs until a few steps are printed, sends `signal`, and returns the output and the step the
/// run stopped after.
fn interrupt(dir: &Path, out: &str, signal: &str) -> (Output, u64) {
    // No validation, samples or periodic checkpoints: the only save is the one the signal asks for.
    let args =
        train_args(out, &["--steps", "100000", "--val-every", "0", "--sample-every", "0", "--checkpoint-every", "0"]);
    let mut running = Running(gptk_command(&args, dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let child = &mut running.0;
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let start = Instant::now();
    loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "gptk ended early: {seen}");
        seen.push_str(&line);
        if line.starts_with("step") && line.contains("    3/") {
            break;
        }
        assert!(start.elapsed() < WAIT, "no third step: {seen}");
    }
    let kill = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    stdout.read_to_string(&mut seen).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIG{signal} ends the run with 0, got {status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let stopped: u64 = seen
        .lines()
        .find_map(|l| l.strip_prefix("interrupted after step "))
        .unwrap_or_else(|| panic!("no 'interrupted' line: {seen}"))
        .parse()
        .unwrap();
    // The step under way finished: the last step printed is the one saved.
    let last_step = seen.lines().rfind(|l| l.starts_with("step")).unwrap();
    assert!(last_step.starts_with(&format!("step {stopped:>5}/")), "{last_step} vs {stopped}");
    (Output { status, stdout: seen.into_bytes(), stderr: err.into_bytes() }, stopped)
}

#[test]
fn sigint_and_sigterm_finish_the_step_save_and_exit_zero() {
    let dir = temp_dir("reliability-signals");
    byte_dataset(&dir);
    for signal in ["INT", "TERM"] {
        let out = format!("run-{signal}");
        let (output, stopped) = interrupt(&dir, &out, signal);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let ckpt = format!("{out}/step_{stopped:06}");
        assert!(stdout.contains(&format!("checkpoint: {ckpt}\n")), "SIG{signal}: path not printed: {stdout}");
        assert!(stdout.contains(&format!("resume with --resume --out {out}")), "{stdout}");
        let (state, _, _) = gptk::train::checkpoint::load_state(&dir.join(&ckpt)).unwrap();
        assert_eq!(state.step as u64, stopped);
        gptk::checkpoint::load(&dir.join(&ckpt)).unwrap();

        let more = (stopped + 2).to_string();
        let resumed = gptk(
            &[
                "train",
                "--out",
                &out,
                "--data",
                "data",
                "--device",
                "cpu",
                "--model",
                "micro",
                "--batch-size",
                "2",
                "--seq-len",
                "32",
                "--steps",
                &more,
                "--val-every",
                "0",
                "--sample-every",
                "0",
                "--resume",
                "--json",
            ],
            &dir,
        );
        let err = String::from_utf8_lossy(&resumed.stderr);
        assert!(err.contains(&format!("resuming from {ckpt} (step {stopped})")), "{err}");
        let steps: Vec<u64> = step_losses(&resumed).iter().map(|s| s.0).collect();
        assert_eq!(steps, [stopped + 1, stopped + 2]);
    }
}

#[test]
fn non_finite_steps_are_skipped_counted_and_end_the_run() {
    // Steps run op by op, and whole steps as `--cuda-graphs` takes them (the guard in the
    // backend's `optimizer_step`; on the CPU here, unrecorded).
    for (name, graphs) in [("reliability-nan", false), ("reliability-nan-whole-steps", true)] {
        non_finite_run(name, graphs);
    }
}

fn non_finite_run(name: &str, graphs: bool) {
    let dir = temp_dir(name);
    byte_dataset(&dir);
    // A learning rate of 1e30 makes the weights overflow after the first update.
    let mut args = vec!["--lr", "1e30", "--warmup-steps", "0", "--steps", "20", "--checkpoint-every", "1"];
    args.extend(["--max-bad-steps", "3", "--json"]);
    if graphs {
        args.push("--cuda-graphs");
    }
    let out = gptk(&train_args("run", &args), &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run must fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let skipped = events(&out.stdout, "skipped");
    let counts: Vec<u64> = skipped.iter().map(|v| v["consecutive"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3], "{skipped:?}");
    let last_bad = skipped[2]["step"].as_u64().unwrap();
    let last_good = skipped[0]["step"].as_u64().unwrap() - 1;
    assert!(last_good >= 1, "the first step is finite");
    let needle = format!(
        "step {last_bad}: loss or gradient norm not finite for 3 consecutive steps (loss NaN, grad norm NaN); \
         last good checkpoint: run/step_{last_good:06}"
    );
    let message: Vec<&str> = err.lines().filter(|l| l.contains("not finite")).collect();
    assert!(message.len() == 1 && message[0].contains(&needle), "expected '{needle}' in: {err}");
    // The metrics record the skipped steps too, and no checkpoint was written after the last good one.
    let metrics = std::fs::read(dir.join("run/metrics.jsonl")).unwrap();
    assert_eq!(events(&metrics, "skipped").len(), 3);
    let newest = gptk::train::checkpoint::latest(&dir.join("run")).unwrap();
    assert_eq!(newest, dir.join(format!("run/step_{last_good:06}")));
}

#[test]
fn loss_spikes_are_logged() {
    let dir = temp_dir("reliability-spike");
    byte_dataset(&dir);
    // Any step after the first is above half the running average.
    let out = gptk(&train_args("run", &["--spike-factor", "0.5", "--json"]), &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spikes: Vec<u64> = events(&out.stdout, "spike").iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(spikes, [2, 3, 4, 5, 6]);
    let metrics = std::fs::read(dir.join("run/metrics.jsonl")).unwrap();
    assert_eq!(events(&metrics, "spike").len(), 5);
    let text = gptk(&train_args("text", &["--spike-factor", "0.5"]), &dir);
    assert!(String::from_utf8_lossy(&text.stderr).contains("warning: loss spike at step 2: "));
    // The default factor of 2 does not fire on a healthy run.
    let quiet = gptk(&train_args("default", &["--json"]), &dir);
    assert!(events(&quiet.stdout, "spike").is_empty());
}

#[test]
fn the_avx2_loops_give_bitwise_the_same_training_as_the_baseline_code() {
    if !gptk::backend::cpu::vector::simd_enabled() {
        println!("note: this CPU has no AVX2 + FMA; there is no second code path to compare");
        return;
    }
    let dir = temp_dir("reliability-simd");
    byte_dataset(&dir);
    let run = |out: &str, simd: &str| {
        let output = train_with_env(&dir, out, "GPTK_CPU_SIMD", simd);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        (step_losses(&output), final_params(&dir, out))
    };
    let (avx2, baseline) = (run("avx2", "1"), run("baseline", "0"));
    assert_eq!(avx2.0.len(), 6);
    assert_eq!(avx2.0, baseline.0, "training losses with and without the AVX2 loops");
    assert!(avx2.1 == baseline.1, "final parameters differ with and without the AVX2 loops");
}

#[test]
fn same_seed_and_command_give_bitwise_the_same_losses_on_any_thread_count() {
    let dir = temp_dir("reliability-determinism");
    byte_dataset(&dir);
    // The micro model at B·T = 64 runs its larger matmuls on several threads.
    let run = |out: &str, threads: &str| {
        let output = train_with_env(&dir, out, "RAYON_NUM_THREADS", threads);
        let losses = step_losses(&output);
        let val: Vec<String> = events(&output.stdout, "val").iter().map(|v| v["val_loss"].to_string()).collect();
        (losses, val, final_params(&dir, out))
    };
    let first = run("one-thread", "1");
    assert_eq!(first.0.len(), 6);
    for (out, threads) in [("one-thread-again", "1"), ("two-threads", "2"), ("three-threads", "3")] {
        let other = run(out, threads);
        assert_eq!(other.0, first.0, "training losses with {threads} thread(s)");
        assert_eq!(other.1, first.1, "validation losses with {threads} thread(s)");
        assert!(other.2 == first.2, "final parameters differ with {threads} thread(s)");
    }
}
