//! The `gptk` command line.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gptk", version, about = "Pretrain and fine-tune GPT-style language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a model (the built-in corpus when no --data is given).
    Train(gptk::train::config::TrainConfig),
    /// Tokenize text files into llm.c token shards.
    Prepare(cli::prepare::PrepareArgs),
    /// Fine-tune a pretrained model for classification (GPT-1 style).
    Finetune(cli::finetune::FinetuneArgs),
    /// Classify examples with a fine-tuned model.
    Predict(cli::finetune::PredictArgs),
    /// Continue a prompt with a trained model.
    Sample(cli::sample::SampleArgs),
    /// Mean next-token cross-entropy of a model over an llm.c token shard.
    Eval(cli::eval::EvalArgs),
    /// Draw a run's loss, learning rate and throughput (or several runs) as a PNG.
    Plot(cli::plot::PlotArgs),
    /// A model's parameters, FLOPs per token and memory plan.
    Info(cli::info::InfoArgs),
    /// Every CUDA kernel and one training step against the CPU reference (needs a GPU).
    Check(cli::check::CheckArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Train(args) => {
            let train_matches = matches.subcommand_matches("train").expect("the train subcommand was parsed");
            args.with_config_file(train_matches).map_err(anyhow::Error::from).and_then(|cfg| cli::train::run(&cfg))
        }
        Command::Prepare(args) => cli::prepare::run(args),
        Command::Sample(args) => cli::sample::run(args),
        Command::Finetune(args) => cli::finetune::run(args),
        Command::Predict(args) => cli::finetune::predict(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Plot(args) => cli::plot::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Check(args) => cli::check::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
