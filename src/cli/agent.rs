use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSettings};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent config file (TOML): relay, system, name, key, relay_host_key,
    /// allow, labels [default: ~/.config/warren/agent.toml, as `warren enroll` writes it].
    #[arg(long, env = "WARREN_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

pub async fn run(a: AgentArgs) -> Result<ExitCode> {
    let config = a
        .config
        .or_else(crate::agent::config::default_config_path)
        .ok_or_else(|| anyhow::anyhow!("no agent config: pass --config PATH"))?;
    let settings = AgentSettings::load(&config)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    agent::run(settings, shutdown, None).await;
    Ok(ExitCode::SUCCESS)
}
