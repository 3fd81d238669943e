//! Data parallelism on the CPU: the sharding math (reduce-scatter, sharded AdamW, all-gather)
//! against one process with the whole batch, and `gptk launch` end to end on loopback.

use gptk::backend::AdamWStep;
use gptk::backend::cpu::CpuBackend;
use gptk::dist::env::Topology;
use gptk::dist::group::Group;
use gptk::model::config::ModelConfig;
use gptk::model::layout::{ActLayout, ParamLayout};
use gptk::model::{Gpt, init_params};
use gptk::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const CFG: ModelConfig = ModelConfig { n_layer: 2, n_head: 2, n_embd: 32, n_ctx: 16, vocab_size: 41 };
const STEPS: usize = 3;

fn adamw(t: u64, grad_norm: f32) -> AdamWStep {
    let grad_scale = if grad_norm > 1.0 { 1.0 / grad_norm } else { 1.0 };
    AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t, grad_scale, seed: 0 }
}

/// The tokens of every step: `rows` sequences of T+1 tokens.
fn batches(rows: usize, t: usize) -> Vec<Vec<i32>> {
    let mut rng = Rng::new(17);
    (0..STEPS).map(|_| (0..rows * (t + 1)).map(|_| rng.below(CFG.vocab_size as u64) as i32).collect()).collect()
}

/// (inputs, targets) of rows `[lo, hi)` of a step's sequences.
fn split(step: &[i32], t: usize, lo: usize, hi: usize) -> (Vec<i32>, Vec<i32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in lo..hi {
        let seq = &step[r * (t + 1)..(r + 1) * (t + 1)];
        x.extend_from_slice(&seq[..t]);
        y.extend_from_slice(&seq[1..]);
    }
    (x, y)
}

/// Trains `STEPS` steps on rows [lo, hi) of each batch; returns the final parameters, and the
/// first step's synchronised gradients (this rank's shard; the rest of the arena is zeroed) and
/// gradient norm.
fn train(
    model: &mut Gpt<CpuBackend<f32>>,
    data: &[Vec<i32>],
    t: usize,
    lo: usize,
    hi: usize,
) -> (Vec<f32>, Vec<f32>, f32) {
    let (mut first_grads, mut first_norm) = (Vec::new(), 0.0);
    for (i, step) in data.iter().enumerate() {
        let (x, y) = split(step, t, lo, hi);
        model.set_batch(&x, &y).unwrap();
        model.zero_grads().unwrap();
        model.forward_backward(true, 1.0).unwrap();
        model.sync_grads().unwrap();
        let norm = model.grad_norm().unwrap();
        if i == 0 {
            let shard = model.shard();
            first_grads = model.backend.grads[..model.params.total].to_vec();
            for (j, g) in first_grads.iter_mut().enumerate() {
                if !shard.contains(&j) {
                    *g = 0.0;
                }
            }
            first_norm = norm;
        }
        model.adamw(&adamw(i as u64 + 1, norm)).unwrap();
    }
    (model.params_to_host().unwrap(), first_grads, first_norm)
}

#[test]
fn sharded_steps_match_one_rank_with_the_whole_batch() {
    let (world, b, t) = (3, 2, 8);
    let data = batches(world * b, t);
    let start = init_params(&CFG, &ParamLayout::new(&CFG), 5);
    let mut single = Gpt::cpu(CFG, world * b, t);
    single.load_params(&start).unwrap();
    let (want, want_grads, want_norm) = train(&mut single, &data, t, 0, world * b);

    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (data, start) = (data.clone(), start.clone());
            std::thread::spawn(move || {
                let topo = Topology {
                    rank,
                    world,
                    local_rank: rank,
                    master: Some(("127.0.0.1".into(), port)),
                    launcher: "test",
                };
                let group = Group::connect(&topo, "dp-test", Duration::from_secs(20)).unwrap();
                let acts = ActLayout::new(&CFG, b, t, None);
                let mut m =
                    Gpt::new(CFG, acts, |p, a| Ok(CpuBackend::<f32>::new(p.padded_total(world), a).with_group(group)))
                        .unwrap();
                assert_eq!(m.rank_world(), (rank, world));
                assert_eq!(m.shard_len() * world, m.params.padded_total(world));
                m.load_params(&start).unwrap();
                train(&mut m, &data, t, rank * b, (rank + 1) * b)
            })
        })
        .collect();
    // The key third of each attention bias has an exactly zero gradient (adding a constant to
    // every key of a query leaves its softmax unchanged), so its float rounding noise is all
    // AdamW sees and turns into steps of ±lr: those elements are not comparable between two
    // summation orders and are left out.
    let layout = ParamLayout::new(&CFG);
    let c = CFG.n_embd;
    let mut comparable = vec![true; layout.total];
    for l in &layout.layers {
        comparable[l.qkv_b.offset + c..l.qkv_b.offset + 2 * c].fill(false);
    }
    let mut grads_seen = vec![0f32; want_grads.len()];
    for (rank, h) in handles.into_iter().enumerate() {
        let (got, grads, norm) = h.join().unwrap();
        // The averaged gradient of each shard is the whole batch's gradient, and so is its norm.
        assert!((norm - want_norm).abs() <= 1e-5 * want_norm, "rank {rank}: grad norm {norm} vs {want_norm}");
        for (s, g) in grads_seen.iter_mut().zip(&grads) {
            *s += g;
        }
        let (worst, at) = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(i, _)| comparable[*i])
            .map(|(i, (a, b))| ((a - b).abs() / (1e-3 + b.abs()), i))
            .fold((0f32, 0), |m, x| if x.0 > m.0 { x } else { m });
        let name = layout
            .specs
            .iter()
            .find(|s| s.tensor.offset <= at && at < s.tensor.end())
            .map_or("padding", |s| s.name.as_str());
        assert!(worst < 1e-3, "rank {rank}: parameters differ from one rank with the whole batch by {worst} ({name})");
        let moved = got.iter().zip(&start).filter(|(a, b)| a != b).count();
        assert!(moved > got.len() / 2, "rank {rank}: the update reached every shard ({moved} of {} moved)", got.len());
    }
    let worst = grads_seen.iter().zip(&want_grads).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = want_grads.iter().fold(0f32, |m, g| m.max(g.abs()));
    assert!(
        worst <= 1e-5 * scale,
        "the shards' averaged gradients differ from the whole batch's by {worst} (largest {scale})"
    );
}

fn gptk(args: &[&str], dir: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gptk"));
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gptk")
}

fn dataset(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("gptk-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("text")).unwrap();
    for i in 0..8 {
        let doc: String = (0..80).map(|j| format!("document {i} line {j}: data parallel training.\n")).collect();
        std::fs::write(dir.join("text").join(format!("{i}.txt")), doc).unwrap();
    }
    let ok = gptk(
        &["prepare", "--input", "text", "--out", "data", "--tokenizer", "bytes", "--val-fraction", "0.25"],
        &dir,
        &[],
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let data = dir.join("data");
    (dir, data)
}

const RUN: &[&str] = &[
    "--device",
    "cpu",
    "--model",
    "micro",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
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
fn launch_trains_with_two_cpu_processes_and_resumes() {
    let (dir, data) = dataset("launch");
    let d = data.to_str().unwrap();
    let out = gptk(
        &[&["launch", "--gpus", "2", "--", "train", "--data", d, "--out", "run", "--steps", "4"], RUN].concat(),
        &dir,
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let steps = stdout.lines().filter(|l| l.contains("\"event\":\"step\"")).count();
    assert_eq!(steps, 4, "only rank 0 reports, once per step:\n{stdout}");
    assert!(stdout.contains("\"event\":\"val\""));
    assert!(dir.join("run/step_000004/model.safetensors").is_file());
    // Continue with the same number of processes.
    let more = gptk(
        &[&["launch", "--gpus", "2", "--", "train", "--data", d, "--out", "run", "--steps", "6", "--resume"], RUN]
            .concat(),
        &dir,
        &[],
    );
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    assert!(dir.join("run/step_000006/model.safetensors").is_file());
    // A different number is refused with the reason.
    let alone = gptk(&[&["train", "--data", d, "--out", "run", "--steps", "8", "--resume"], RUN].concat(), &dir, &[]);
    let err = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success() && err.contains("written by a job of 2 process(es)"), "{err}");
}

#[test]
fn a_rank_that_never_joins_is_named() {
    let (dir, data) = dataset("absent");
    let env = [
        ("RANK", "0".to_string()),
        ("WORLD_SIZE", "2".to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", free_port().to_string()),
    ];
    let out = gptk(
        &[&["train", "--data", data.to_str().unwrap(), "--out", "r", "--steps", "2", "--dist-timeout", "2"], RUN]
            .concat(),
        &dir,
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ranks [1] of 2 did not join within 2 s"), "{err}");
    assert!(!err.contains("panicked"));
}
