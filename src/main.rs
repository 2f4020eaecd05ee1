#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = warren::cli::Cli::parse();
    warren::cli::init_logging(&cli);
    match warren::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // Not `eprintln!`: with stderr closed it would panic (exit 101).
            let _ = writeln!(std::io::stderr(), "warren: {err:#}");
            ExitCode::from(1)
        }
    }
}
