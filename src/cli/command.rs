//! The command-line parser and dispatch.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gptk", version, about = "Pretrain and fine-tune GPT-style language models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Pretrain a model (the built-in corpus when no --data is given).
    Train(crate::train::config::TrainConfig),
    /// Tokenize text files into llm.c token shards.
    Prepare(crate::cli::prepare::PrepareArgs),
    /// Fine-tune a pretrained model for classification (GPT-1 style).
    Finetune(crate::cli::finetune::FinetuneArgs),
    /// Classify examples with a fine-tuned model.
    Predict(crate::cli::finetune::PredictArgs),
    /// Continue a prompt with a trained model.
    Sample(crate::cli::sample::SampleArgs),
    /// Mean next-token cross-entropy of a model over an llm.c token shard.
    Eval(crate::cli::eval::EvalArgs),
    /// Start N data-parallel processes on this machine: gptk launch --gpus N -- train …
    Launch(crate::cli::launch::LaunchArgs),
    /// Draw a run's loss, learning rate and throughput (or several runs) as a PNG.
    Plot(crate::cli::plot::PlotArgs),
    /// A model's parameters, FLOPs per token and memory plan.
    Info(crate::cli::info::InfoArgs),
    /// Every CUDA kernel and one training step against the CPU reference (needs a GPU).
    Check(crate::cli::check::CheckArgs),
    /// Kernels timed at GPT-2 shapes against the device's ceilings (needs a GPU).
    Bench(crate::cli::bench::BenchArgs),
}

/// Parses the command line, runs the command, and turns an error into one line on standard
/// error and a failing exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Launch(args) = &cli.command {
        return crate::cli::launch::run(args).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        });
    }
    let result = match &cli.command {
        Command::Launch(_) => unreachable!("handled above"),
        Command::Train(args) => {
            let train_matches = matches.subcommand_matches("train").expect("the train subcommand was parsed");
            args.with_config_file(train_matches)
                .map_err(anyhow::Error::from)
                .and_then(|cfg| crate::cli::train::run(&cfg))
        }
        Command::Prepare(args) => crate::cli::prepare::run(args),
        Command::Sample(args) => crate::cli::sample::run(args),
        Command::Finetune(args) => crate::cli::finetune::run(args),
        Command::Predict(args) => crate::cli::finetune::predict(args),
        Command::Eval(args) => crate::cli::eval::run(args),
        Command::Plot(args) => crate::cli::plot::run(args),
        Command::Info(args) => crate::cli::info::run(args),
        Command::Check(args) => crate::cli::check::run(args),
        Command::Bench(args) => crate::cli::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
