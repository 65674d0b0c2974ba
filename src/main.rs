//! The `sheepdev` binary: parse the command line, set up logging, run, and turn any error
//! into one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sheepdev::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHEEPDEV_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    match sheepdev::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sheepdev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
