//! Every example configuration under configs/ is a valid `gptk train --config` file.

use clap::{CommandFactory, FromArgMatches, Parser};
use gptk::train::config::TrainConfig;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: TrainConfig,
}

#[test]
fn example_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let matches = Cli::command().get_matches_from(["gptk", "--config", path.to_str().unwrap()]);
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let cfg = cli.cfg.with_config_file(&matches).unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.steps > 0, "{}", path.display());
        n += 1;
    }
    assert!(n >= 3, "found {n} configs");
}
