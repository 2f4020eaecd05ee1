//! `warren doctor`: checks a device's or gateway's setup and prints a
//! pass/fail list (exit status 1 when anything fails).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::agent::doctor;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Agent config file to check.
    #[arg(
        long,
        env = "WARREN_AGENT_CONFIG",
        default_value = "/etc/warren/agent.toml"
    )]
    pub config: PathBuf,
    /// Print the checks as JSON: {"ok": bool, "checks": [{"check", "ok", "detail"}]}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: DoctorArgs) -> Result<ExitCode> {
    let report = doctor::run(&a.config).await;
    if a.json {
        crate::render::print_json(&report)?;
    } else {
        print!("{}", doctor::render(&report));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
