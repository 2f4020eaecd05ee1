#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = warren::cli::Cli::parse();
    warren::cli::init_logging(&cli);
    match warren::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("warren: {err:#}");
            ExitCode::from(1)
        }
    }
}
