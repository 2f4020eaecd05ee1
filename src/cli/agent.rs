use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSettings};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent config file (TOML): relay, system, name, key, relay_host_key, allow.
    #[arg(long, env = "WARREN_AGENT_CONFIG")]
    pub config: PathBuf,
}

pub async fn run(a: AgentArgs) -> Result<ExitCode> {
    let settings = AgentSettings::load(&a.config)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    agent::run(settings, shutdown, None).await;
    Ok(ExitCode::SUCCESS)
}
