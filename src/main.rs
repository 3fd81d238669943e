//! The `gptk` command line.

fn main() -> std::process::ExitCode {
    gptk::cli::command::main()
}
