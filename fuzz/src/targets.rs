//! The fuzz targets: each feeds arbitrary bytes to one of gptk's file parsers and checks that it
//! answers with a value or an error, never a panic, and never allocates more than the input
//! justifies (the harness caps allocations). `seeds` builds valid files for each, so mutation
//! starts from inputs that reach deep into the parser.
//!
//! This file is also compiled into `tests/hostile_files.rs`, which replays the inputs that once
//! failed and runs a short seeded mutation of every target on each `cargo test`.

use gptk::checkpoint;
use gptk::data::loader::LoaderState;
use gptk::data::prepare::{self, Manifest};
use gptk::data::shard::{self, HEADER_BYTES};
use gptk::data::task::{self, LabelSet, Labels};
use gptk::data::tokenizer::Tokenizer;
use gptk::model::config::ModelConfig;
use gptk::model::layout::ParamLayout;
use gptk::train::checkpoint::{self as train_checkpoint, TrainState};
use gptk::train::config::TrainConfig;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fuzz target: reads its input and must neither panic nor hang.
pub type Target = fn(&[u8]);

/// Every target by name, as `scripts/fuzz.sh` and the tests run them.
pub const TARGETS: &[(&str, Target)] = &[
    ("model_file", model_file),
    ("config_json", config_json),
    ("train_state", train_state),
    ("shard_header", shard_header),
    ("manifest", manifest),
    ("prepare_jsonl", prepare_jsonl),
    ("task_jsonl", task_jsonl),
    ("tokenizer", tokenizer),
];

/// `model_file` input marker: no config.json, the weights alone.
const NO_CONFIG: u16 = u16::MAX;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A model directory as bytes: a little-endian u16 length of config.json (`NO_CONFIG` for none),
/// config.json, then model.safetensors. Loads through `checkpoint::load_bytes` as
/// `gptk train --init-from` and `gptk eval` would.
pub fn model_file(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([data[0], data[1]]);
    let rest = &data[2..];
    let (config, weights) = if n == NO_CONFIG || n as usize > rest.len() {
        (None, rest)
    } else {
        (Some(text(&rest[..n as usize])), &rest[n as usize..])
    };
    let config_path = Path::new("config.json");
    let loaded =
        checkpoint::load_bytes(Path::new("model.safetensors"), weights, config.as_deref().map(|c| (config_path, c)));
    if let Ok(m) = loaded {
        assert!(m.cfg.validate().is_ok(), "loaded an invalid shape {:?}", m.cfg);
        assert_eq!(m.params.len(), ParamLayout::with_head(&m.cfg, m.n_classes).total);
    }
}

/// A Hugging Face config.json.
pub fn config_json(data: &[u8]) {
    if let Ok(cfg) = checkpoint::config_from_str(Path::new("config.json"), &text(data)) {
        assert!(cfg.validate().is_ok(), "accepted an invalid shape {cfg:?}");
    }
}

/// A training-state file (`train_state.safetensors`), then the loader position and run
/// configuration inside it, as `gptk train --resume` reads them.
pub fn train_state(data: &[u8]) {
    let Ok((state, m, v)) = train_checkpoint::parse_state(Path::new("train_state.safetensors"), data) else {
        return;
    };
    assert_eq!(m.len(), v.len());
    if let Ok(loader) = serde_json::from_value::<LoaderState>(state.loader.clone()) {
        let _ = format!("{loader:?}");
    }
    if let Ok(cfg) = serde_json::from_value::<TrainConfig>(state.run) {
        let _ = (cfg.identity(), cfg.to_toml());
    }
}

/// An llm.c token shard's header against the file's length.
pub fn shard_header(data: &[u8]) {
    let header = &data[..data.len().min(HEADER_BYTES)];
    if let Ok(n) = shard::parse_header(Path::new("x_train_000000.bin"), header, data.len() as u64) {
        assert_eq!(data.len(), HEADER_BYTES + 2 * n);
    }
}

/// A prepared directory's manifest.json.
pub fn manifest(data: &[u8]) {
    let dir = Path::new("data");
    if let Ok(m) = Manifest::parse(&dir.join(prepare::MANIFEST_FILE), &text(data)) {
        for name in m.train.shards.iter().chain(&m.val.shards) {
            assert_eq!(dir.join(name).parent(), Some(dir), "shard '{name}' escapes its directory");
        }
    }
}

/// A `.jsonl` input of `gptk prepare`.
pub fn prepare_jsonl(data: &[u8]) {
    if let Ok(texts) = prepare::jsonl_texts(Path::new("in.jsonl"), &text(data), "text") {
        let tok = Tokenizer::bytes();
        for t in texts {
            let _ = tok.encode(&t);
        }
    }
}

/// A fine-tuning task file, then its labels, encoding and batches.
pub fn task_jsonl(data: &[u8]) {
    let path = Path::new("task.jsonl");
    let body = text(data);
    let _ = task::parse_examples(path, &body, Labels::Required);
    let Ok(examples) = task::parse_examples(path, &body, Labels::Optional) else { return };
    let labels = LabelSet::from_examples(&examples);
    let Ok(classes) = labels.indices(&examples, path) else { return };
    let tok = Tokenizer::bytes();
    // A context of 5..=20 positions, from the input's length (pairs need at least 5).
    let t = 5 + data.len() % 16;
    let encoded: Vec<_> = examples.iter().map(|e| task::encode(&tok, e, t)).collect();
    for (chunk, cls) in encoded.chunks(4).zip(classes.chunks(4)) {
        let rows: Vec<_> = chunk.iter().zip(cls).map(|(e, c)| (e, *c)).collect();
        let b = task::batch(&tok, &rows, 4, t);
        assert_eq!(b.inputs.len(), 4 * t);
    }
}

/// Text of any bytes through both tokenizers (decoding gives the text back), and arbitrary ids
/// through decoding.
pub fn tokenizer(data: &[u8]) {
    let s = text(data);
    for tok in [Tokenizer::bytes(), Tokenizer::gpt2()] {
        let ids = tok.encode(&s);
        assert!(ids.iter().all(|&i| i < tok.eot()), "{} encoded a special id", tok.name());
        assert_eq!(tok.decode(&ids), s, "{} does not round-trip", tok.name());
        let raw: Vec<u32> = data.chunks(4).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32)).collect();
        let _ = tok.decode(&raw);
    }
}

/// A small, valid model directory: its config.json and model.safetensors (a classification
/// head when `n_classes` > 0).
pub fn small_model(n_classes: usize) -> (String, Vec<u8>) {
    let cfg = ModelConfig { n_layer: 1, n_head: 2, n_embd: 4, n_ctx: 3, vocab_size: 7 };
    let layout = ParamLayout::with_head(&cfg, n_classes);
    let params: Vec<f32> = (0..layout.total).map(|i| (i % 13) as f32 * 0.125 - 0.5).collect();
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let k = MADE.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("gptk-fuzz-seed-{}-{k}", std::process::id()));
    let mut meta = HashMap::new();
    if n_classes > 0 {
        let labels: Vec<String> = (0..n_classes).map(|i| format!("c{i}")).collect();
        meta.insert(checkpoint::META_LABELS.to_string(), serde_json::to_string(&labels).expect("labels"));
    }
    checkpoint::save(&dir, &cfg, &layout, &params, &meta).expect("seed model saves");
    let config = std::fs::read_to_string(dir.join(checkpoint::CONFIG_FILE)).expect("seed config");
    let weights = std::fs::read(dir.join(checkpoint::MODEL_FILE)).expect("seed weights");
    let _ = std::fs::remove_dir_all(&dir);
    (config, weights)
}

pub fn model_input(config: Option<&str>, weights: &[u8]) -> Vec<u8> {
    let mut out = match config {
        Some(c) => {
            let mut v = (c.len() as u16).to_le_bytes().to_vec();
            v.extend_from_slice(c.as_bytes());
            v
        }
        None => NO_CONFIG.to_le_bytes().to_vec(),
    };
    out.extend_from_slice(weights);
    out
}

/// A run configuration as checkpoints record it.
const RUN_JSON: &str = r#"{"batch_size":2,"beta1":0.9,"beta2":0.95,"checkpoint_every":2,"data":"data","decay":"cosine","device":"auto","dist_timeout":600,"eps":1e-8,"grad_clip":1.0,"init_from":null,"json":true,"keep_checkpoints":3,"lr":0.001,"max_bad_steps":3,"min_lr_frac":0.1,"mlm_weight":1.0,"model":"micro","n_ctx":null,"n_embd":null,"n_head":null,"n_layer":null,"nccl_init":"tcp","objective":"clm","out":"a","precision":"bf16","quiet":false,"resume":false,"sample_every":0,"sample_tokens":128,"seed":1337,"seq_len":32,"spike_factor":2.0,"steps":20,"stop_at":null,"total_batch_tokens":null,"val_batches":8,"val_every":0,"warmup_steps":2,"weight_decay":0.1}"#;

pub fn state_file(n: usize) -> Vec<u8> {
    let state = TrainState {
        step: 4,
        tokens_seen: 256,
        loader: serde_json::json!({"batch_tokens": 64, "epoch": 0, "index": 4, "rank": 0, "seed": 1337,
            "windows_per_epoch": 431, "world": 1}),
        mask_rng: 1,
        sample_rng: 2,
        run: serde_json::from_str(RUN_JSON).expect("run json"),
        tokenizer: "bytes".into(),
    };
    let m: Vec<u8> = (0..n).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let views = [
        ("adamw.m", TensorView::new(Dtype::F32, vec![n], &m).expect("view")),
        ("adamw.v", TensorView::new(Dtype::F32, vec![n], &m).expect("view")),
    ];
    let meta = HashMap::from([("gptk_train_state".to_string(), serde_json::to_string(&state).expect("state"))]);
    safetensors::tensor::serialize(views, Some(meta)).expect("state serialises")
}

pub fn shard_file(tokens: &[u16]) -> Vec<u8> {
    let mut header = [0i32; shard::HEADER_INTS];
    header[0] = shard::SHARD_MAGIC;
    header[1] = shard::SHARD_VERSION;
    header[2] = tokens.len() as i32;
    let mut out: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    out.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
    out
}

/// Valid (and a few nearly valid) inputs for target `name`.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "model_file" => {
            let (config, weights) = small_model(0);
            let (head_config, head_weights) = small_model(3);
            vec![
                model_input(Some(&config), &weights),
                model_input(None, &weights),
                model_input(Some(&head_config), &head_weights),
                model_input(None, &head_weights),
            ]
        }
        "config_json" => vec![small_model(0).0.into_bytes(), small_model(2).0.into_bytes()],
        "train_state" => vec![state_file(8), state_file(0)],
        "shard_header" => vec![shard_file(&[1, 2, 3, 256]), shard_file(&[])],
        "manifest" => vec![
            br#"{"tokenizer":"bytes","vocab_size":257,"train":{"documents":2,"tokens":80,"shards":["d_train_000000.bin"]},"val":{"documents":1,"tokens":9,"shards":["d_val_000000.bin"]},"empty_documents":0,"skipped":[{"path":"x.txt","reason":"not UTF-8"}],"files":3,"seed":1,"val_fraction":0.1,"shard_tokens":100,"gptk_version":"0.1.0"}"#.to_vec(),
        ],
        "prepare_jsonl" => vec![
            "{\"text\": \"one document\"}\n\n{\"text\": \"two\\nlines\", \"id\": 3}\n".into(),
            "\u{FEFF}{\"text\": \"with a byte-order mark\"}".into(),
        ],
        "task_jsonl" => vec![
            "{\"text\": \"good film\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n".into(),
            "{\"text\": \"a\", \"text_b\": \"b c d e f\", \"label\": 2}\n{\"text\": \"x\", \"label\": 10}\n".into(),
            "{\"text\": \"unlabelled\"}\n".into(),
        ],
        "tokenizer" => vec![
            "Hello, world! Ünïcödé — 日本語 🦀\n\t  spaces".into(),
            b"\xff\xfe invalid \xc3 utf8 <|endoftext|>".to_vec(),
        ],
        other => panic!("no fuzz target '{other}'"),
    }
}
