//! `gptk bench` where there is no GPU (one line, failing exit), its argument errors, a saved
//! report printed and compared with no GPU, and the agreement of its case table with
//! scripts/torch_reference.py (names and work counts), whose JSON `--compare` matches case by
//! case.

use gptk::backend::cuda;
use gptk::bench::{self, Ceilings, Measurement, Phase, Report, StepResult, Work};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{script, temp_dir};

fn gptk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptk")).args(args).output().expect("run gptk")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// True when `python3 -c CODE` runs here.
fn python_can(code: &str) -> bool {
    Command::new("python3").args(["-c", code]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn without_a_gpu_bench_fails_with_one_line() {
    if cuda::probe().is_ok() {
        println!("note: a GPU is present; the no-GPU message was not exercised");
        return;
    }
    for args in [&["bench"][..], &["bench", "--op", "step"], &["bench", "--op", "matmul", "--json"]] {
        let o = gptk(args);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
        assert!(err.contains("gptk bench needs a CUDA GPU"), "{err}");
        assert!(o.stdout.is_empty(), "nothing on stdout: {:?}", stdout(&o));
    }
}

#[test]
fn bench_names_the_known_ops_and_reads_its_compare_file_first() {
    let o = gptk(&["bench", "--op", "no-such-op"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    for family in ["encoder", "layernorm", "matmul", "attention", "cross_entropy", "adamw", "grad_norm", "step"] {
        assert!(err.contains(family), "{family} missing from: {err}");
    }
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let dir = temp_dir("bench-cli");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"results\": 3}").unwrap();
    let o = gptk(&["bench", "--compare", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a benchmark report"), "{}", stderr(&o));
    let o = gptk(&["bench", "--results", dir.join("absent.json").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("absent.json"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

fn measurement(op: &str, case: &str, pass: &str, median_ms: f64, work: Work) -> Measurement {
    let (flops, bytes) = match work {
        Work::Flops(f) => (Some(f), None),
        Work::Bytes(b) => (None, Some(b)),
    };
    Measurement {
        op: op.into(),
        case: case.into(),
        pass: pass.into(),
        median_ms,
        min_ms: median_ms,
        iters: 5,
        flops,
        bytes,
    }
}

fn step(variant: &str, median_ms: f64) -> StepResult {
    let tokens_per_s = 8192.0 / (median_ms * 1e-3);
    StepResult {
        model: "d12".into(),
        b: 8,
        t: 1024,
        variant: variant.into(),
        median_ms,
        min_ms: median_ms,
        iters: 5,
        tokens_per_s,
        flops_per_token: 1e9,
        peak_flops: Some(1e15),
        mfu: Some(tokens_per_s * 1e9 / 1e15),
        device_bytes: Some(10.0 * (1u64 << 30) as f64),
        allocated_bytes: Some(9.0 * (1u64 << 30) as f64),
        loss_first: Some(11.0),
        loss_last: Some(10.5),
        phases: vec![Phase { name: "forward".into(), median_ms: median_ms / 3.0 }],
    }
}

/// gptk: layernorm fwd 1 ms, bwd 2 ms, matmul fwd 1 ms; d12 step 80 ms. PyTorch: layernorm fwd
/// 2 ms, bwd 1 ms, gelu fwd; eager step 100 ms, compiled 60 ms.
fn reports() -> (Report, Report) {
    let ln = "N=8192 C=768";
    let gptk = Report {
        source: "gptk".into(),
        device: "NVIDIA H200".into(),
        software: Some("gptk 0.1.0".into()),
        ceilings: Ceilings { copy_gbps: 4000.0, gemm_bf16_tflops: 800.0 },
        results: vec![
            measurement("layernorm", ln, "fwd", 1.0, Work::Bytes(2e9)),
            measurement("layernorm", ln, "bwd", 2.0, Work::Bytes(4e9)),
            measurement("matmul", "fc N=8192 C=768 OC=3072 bias", "fwd", 1.0, Work::Flops(4e11)),
        ],
        steps: vec![step("gptk", 80.0)],
        notes: vec![],
    };
    let torch = Report {
        source: "pytorch".into(),
        device: "NVIDIA H200".into(),
        software: Some("torch 2.11.0".into()),
        ceilings: Ceilings { copy_gbps: 4100.0, gemm_bf16_tflops: 790.0 },
        results: vec![
            measurement("layernorm", ln, "fwd", 2.0, Work::Bytes(2e9)),
            measurement("layernorm", ln, "bwd", 1.0, Work::Bytes(4e9)),
            measurement("gelu", "N=8192 C=3072", "fwd", 0.5, Work::Bytes(1e8)),
        ],
        steps: vec![step("eager", 100.0), step("compile", 60.0)],
        notes: vec!["compile step: a note".into()],
    };
    (gptk, torch)
}

#[test]
fn a_saved_report_is_printed_and_compared_without_a_gpu() {
    let dir = temp_dir("bench-saved");
    let (ours, theirs) = reports();
    let (ours_path, theirs_path) = (dir.join("gptk.json"), dir.join("torch.json"));
    std::fs::write(&ours_path, serde_json::to_string(&ours).unwrap()).unwrap();
    std::fs::write(&theirs_path, serde_json::to_string(&theirs).unwrap()).unwrap();
    let o = gptk(&["bench", "--results", ours_path.to_str().unwrap(), "--compare", theirs_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |needle: &str| -> String {
        out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}")).into()
    };
    let row = |op: &str, pass: &str| -> String {
        let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        out.lines()
            .find(|l| {
                words(l).first().map(String::as_str) == Some(op) && words(l).get(3).map(String::as_str) == Some(pass)
            })
            .unwrap_or_else(|| panic!("no {op} {pass} row in:\n{out}"))
            .into()
    };
    // layernorm fwd: 2 GB in 1 ms = 2000 GB/s, half the copy ceiling; PyTorch 2 ms: 2.00×.
    let fwd = row("layernorm", "fwd");
    assert!(fwd.contains("2000.0 GB") && fwd.contains("50.0%") && fwd.contains("2.00×"), "{fwd}");
    let bwd = row("layernorm", "bwd");
    assert!(bwd.contains("0.50×"), "{bwd}");
    // No PyTorch counterpart: dashes.
    let mm = line("fc N=8192 C=768 OC=3072 bias");
    assert!(mm.contains("400.0 TFLOP") && mm.trim_end().ends_with('-'), "{mm}");
    // Geometric mean of 2 and 0.5 is 1.
    let family = line("1.00× over 2 case(s)");
    assert!(family.trim_start().starts_with("layernorm"), "{family}");
    assert!(line("all kernels").contains("1.00× over 2 case(s)"), "{out}");
    assert!(line("step d12 B=8 T=1024: gptk 102400 tokens/s, PyTorch eager 81920").contains("1.25×"), "{out}");
    assert!(line("PyTorch compile 136533").contains("0.75×"), "{out}");
    assert!(line("PyTorch compile:").contains("MFU"), "{out}");
    assert!(line("not in PyTorch's report").contains("matmul [fc N=8192 C=768 OC=3072 bias] fwd"), "{out}");
    assert!(out.contains("PyTorch note: compile step: a note"), "{out}");
    assert!(line("device memory").contains("10.00 GiB taken"), "{out}");

    // --op keeps one family of the saved report, and drops the step.
    let o = gptk(&["bench", "--results", ours_path.to_str().unwrap(), "--op", "matmul"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("fc N=8192") && !out.contains("layernorm ") && !out.contains("step:"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_reference_script_compiles() {
    if !python_can("import py_compile") {
        println!("note: no python3 here; the PyTorch scripts were not compiled");
        return;
    }
    // Compiled in memory: no __pycache__ left beside the script.
    let code = "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')";
    let o = Command::new("python3").args(["-c", code]).arg(script("torch_reference.py")).output().unwrap();
    assert!(o.status.success(), "torch_reference.py: {}", stderr(&o));
}

/// One line of a case list: op, case, pass and (`flops` or `bytes`, the count); the training
/// step's line has no pass and no count.
type CaseLine = (String, String, String, Option<(String, f64)>);

/// gptk's case table as `op \t case \t pass \t kind=work` lines, then the step, as
/// scripts/torch_reference.py --list-cases prints its own.
fn gptk_case_lines(op: Option<&str>) -> Vec<CaseLine> {
    let sel = bench::select(op).unwrap();
    let mut lines = Vec::new();
    for c in &sel.cases {
        for (pass, work) in c.passes() {
            let work = match work {
                Work::Flops(f) => ("flops".to_string(), f),
                Work::Bytes(b) => ("bytes".to_string(), b),
            };
            lines.push((c.op().to_string(), c.name(), pass.to_string(), Some(work)));
        }
    }
    if sel.step {
        let name = bench::step_name(bench::STEP_MODEL, bench::gpt2::B, bench::gpt2::T);
        lines.push((bench::STEP_FAMILY.into(), name, String::new(), None));
    }
    lines
}

fn script_case_lines(script_name: &str, extra: &[&str]) -> Vec<CaseLine> {
    let o = Command::new("python3").arg(script(script_name)).arg("--list-cases").args(extra).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            match f.as_slice() {
                [op, case, pass, work] => {
                    let (kind, value) = work.split_once('=').expect("kind=value");
                    let value: f64 = value.parse().unwrap_or_else(|e| panic!("{value}: {e}"));
                    (op.to_string(), case.to_string(), pass.to_string(), Some((kind.to_string(), value)))
                }
                [op, case] => (op.to_string(), case.to_string(), String::new(), None),
                _ => panic!("unexpected line {l:?}"),
            }
        })
        .collect()
}

#[test]
fn the_pytorch_script_times_the_same_cases_with_the_same_counts() {
    if !python_can("import argparse") {
        println!("note: no python3 here; the PyTorch script's case list was not compared");
        return;
    }
    let theirs = script_case_lines("torch_reference.py", &[]);
    let ours = gptk_case_lines(None);
    assert_eq!(theirs.len(), ours.len(), "case counts differ");
    for (t, o) in theirs.iter().zip(&ours) {
        assert_eq!(t, o);
    }
    // Filters select the same families on both sides.
    for op in ["attention", "norm", "step", "matmul"] {
        assert_eq!(script_case_lines("torch_reference.py", &["--op", op]), gptk_case_lines(Some(op)), "--op {op}");
    }
    assert!(gptk_case_lines(Some("attention")).iter().all(|l| l.0.starts_with("attention")));
}

#[test]
fn the_pytorch_script_runs_every_path_on_the_cpu() {
    if !python_can("import torch") {
        println!("note: no PyTorch here; the reference script's smoke run was skipped");
        return;
    }
    let dir = temp_dir("bench-smoke");
    let out = dir.join("torch.json");
    let o = Command::new("python3")
        .arg(script("torch_reference.py"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let report: Report = serde_json::from_str(&text).expect("the script's JSON is a gptk benchmark report");
    assert_eq!(report.source, "pytorch");
    // Every kernel family and every pass of gptk's table, at the toy sizes (fewer shapes).
    let distinct = |pairs: Vec<(String, String)>| {
        let mut out: Vec<(String, String)> = Vec::new();
        for p in pairs {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    };
    let ours = distinct(gptk_case_lines(None).into_iter().filter(|l| l.3.is_some()).map(|l| (l.0, l.2)).collect());
    let theirs = distinct(report.results.iter().map(|m| (m.op.clone(), m.pass.clone())).collect());
    assert_eq!(theirs, ours);
    for m in &report.results {
        assert!(m.min_ms.is_finite() && m.flops.is_some() != m.bytes.is_some(), "{m:?}");
    }
    let s = &report.steps[0];
    assert_eq!((s.model.as_str(), s.variant.as_str()), ("smoke", "eager"));
    assert!(s.tokens_per_s > 0.0 && s.median_ms > 0.0, "{s:?}");
    let phases: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(phases, ["forward", "backward", "optimizer"]);
    // Random tokens start near ln(V) = ln(500) ≈ 6.2, and a few AdamW steps on one batch lower it.
    let (first, last) = (s.loss_first.unwrap(), s.loss_last.unwrap());
    assert!((first - 500f64.ln()).abs() < 0.5 && last < first, "loss {first} → {last}");

    // gptk reads the file as it is: printed as a saved report, and compared with itself.
    let path = out.to_str().unwrap();
    let o = gptk(&["bench", "--results", path, "--compare", path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = stdout(&o);
    let all = printed.lines().find(|l| l.trim_start().starts_with("all kernels")).unwrap_or_default();
    assert!(all.contains("1.00×"), "{printed}");
    // The step line names each side's variant (here both are PyTorch's eager step).
    assert!(printed.contains("step smoke B=2 T=64: eager") && printed.contains("PyTorch eager"), "{printed}");
    std::fs::remove_dir_all(&dir).ok();
}

/// tests/reference/torch_bench.json: a report written by hand in the exact format of
/// scripts/torch_reference.py (its key order, integer byte counts, the step's three phases),
/// naming cases of gptk's table. None of its numbers was measured.
fn torch_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/torch_bench.json")
}

#[test]
fn a_report_in_the_scripts_format_is_compared_case_by_case() {
    let text = std::fs::read_to_string(torch_fixture()).unwrap();
    let torch: Report = serde_json::from_str(&text).expect("the fixture is a benchmark report");
    // Its cases are gptk's, with gptk's work counts.
    let table = gptk_case_lines(None);
    for m in &torch.results {
        let line = table
            .iter()
            .find(|l| (l.0.as_str(), l.1.as_str(), l.2.as_str()) == (&m.op, &m.case, &m.pass))
            .unwrap_or_else(|| panic!("{} [{}] {} is not in gptk's table", m.op, m.case, m.pass));
        let work = line.3.clone().unwrap();
        assert_eq!(Some(work.1), if work.0 == "flops" { m.flops } else { m.bytes }, "{m:?}");
    }

    // gptk: layernorm fwd 2× faster, bwd as fast; attention 1.2× in every pass; a gelu case
    // PyTorch's report lacks; PyTorch's bidirectional attention and adamw cases missing here; a
    // step of 64 ms.
    let ln = "N=8192 C=768";
    let att = "B=8 NH=12 T=1024 HS=64 causal";
    let f = 12884901888.0;
    let mut ours = reports().0;
    ours.results = vec![
        measurement("layernorm", ln, "fwd", 0.01, Work::Bytes(25234432.0)),
        measurement("layernorm", ln, "bwd", 0.03, Work::Bytes(50404864.0)),
        measurement("attention", att, "fwd", 0.5, Work::Flops(f)),
        measurement("attention", att, "bwd", 1.25, Work::Flops(2.5 * f)),
        measurement("attention", att, "fwd+bwd", 1.75, Work::Flops(3.5 * f)),
        measurement("gelu", "N=8192 C=3072", "fwd", 0.05, Work::Bytes(100663296.0)),
    ];
    ours.steps = vec![step("gptk", 64.0)];
    let dir = temp_dir("bench-fixture");
    let ours_path = dir.join("gptk.json");
    std::fs::write(&ours_path, serde_json::to_string_pretty(&ours).unwrap()).unwrap();
    let fixture = torch_fixture();
    let o = gptk(&["bench", "--results", ours_path.to_str().unwrap(), "--compare", fixture.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |needle: &str| -> String {
        out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}")).into()
    };
    assert!(line("PyTorch (torch 0.0 (not a measurement), hand-made fixture)").contains("4000 GB/s"), "{out}");
    let family = |op: &str| line(&format!("  {op:<13} "));
    assert!(family("layernorm").contains("1.41× over 2 case(s)"), "{out}");
    assert!(family("attention").contains("1.20× over 3 case(s)"), "{out}");
    assert!(line("all kernels").contains("over 5 case(s)"), "{out}");
    assert!(line("not in PyTorch's report").contains("gelu [N=8192 C=3072] fwd"), "{out}");
    // Of the cases only PyTorch has, those of the families gptk ran.
    let only = line("only in PyTorch's report");
    assert!(only.contains("attention [B=8 NH=12 T=1024 HS=64 bidirectional] fwd") && !only.contains("adamw"), "{out}");
    // 8192 tokens in 64 ms against 128 ms eager and 80 ms compiled.
    assert!(line("PyTorch eager 64000 tokens/s").contains("2.00×"), "{out}");
    assert!(line("PyTorch compile 102400 tokens/s").contains("1.25×"), "{out}");
    assert!(out.contains("PyTorch note: hand-made test fixture"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_cpu_step_script_times_both_sides_in_turns() {
    if !python_can("import torch, numpy") {
        println!("note: no PyTorch here; scripts/cpu_step_vs_torch.py was not run");
        return;
    }
    let o = Command::new("python3")
        .arg(script("cpu_step_vs_torch.py"))
        .args(["--gptk", env!("CARGO_BIN_EXE_gptk"), "--threads", "1", "--steps", "1", "--repeats", "2"])
        .args(["--vocab", "bytes", "--batch-size", "2", "--seq-len", "16", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout(&o).trim()).expect("one JSON list");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r["vocab"].as_str(), r["repeats"].as_u64(), r["seq_len"].as_u64()), (Some("bytes"), Some(2), Some(16)));
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {r}"));
    assert!(num("gptk_ms") > 0.0 && num("torch_ms") > 0.0, "{r}");
    assert!(num("speedup_min") <= num("speedup_max"), "{r}");
    let ratio = num("torch_ms") / num("gptk_ms");
    assert!((ratio - num("speedup")).abs() < 0.01 * ratio, "{r}");
}
