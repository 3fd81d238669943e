//! Reads a GPT-2 checkpoint with `gptk::checkpoint::load` and writes it back with
//! `gptk::checkpoint::save`: whatever Hugging Face spelling came in (prefix or not, tied
//! `lm_head` or not, f32/f16/bf16), gptk's own format comes out (f32, `transformer.` names, the
//! embedding padded to Vp rows, `gptk_vocab_size` in config.json). `scripts/hf_roundtrip.py`
//! drives it to check that `transformers` reads the result as the model it started from.
//!
//! Usage: cargo run --release --example convert -- IN OUT
//! IN is a checkpoint directory or a .safetensors file; OUT is a directory (created).

use gptk::model::layout::ParamLayout;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: convert IN OUT (IN: checkpoint directory or .safetensors file, OUT: directory)");
        return ExitCode::from(2);
    };
    let loaded = match gptk::checkpoint::load(input) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    // Only gptk's own records travel; the writer sets the format and config entries itself.
    let metadata: HashMap<String, String> =
        loaded.metadata.into_iter().filter(|(k, _)| k.starts_with("gptk_") && k != "gptk_config").collect();
    if let Err(e) = gptk::checkpoint::save(
        output,
        &loaded.cfg,
        &ParamLayout::with_head(&loaded.cfg, loaded.n_classes),
        &loaded.params,
        &metadata,
    ) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}: {} -> {}", loaded.cfg, input.display(), output.display());
    ExitCode::SUCCESS
}
