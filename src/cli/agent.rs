use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentSettings};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent config file (TOML): relay, system, name, key, relay_host_key,
    /// allow, labels, [on_demand] [default: ~/.config/warren/agent.toml, as `warren enroll` writes it].
    /// SIGHUP re-reads it (the allowlist applies at once; live streams stay).
    #[arg(long, env = "WARREN_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
}

pub async fn run(a: AgentArgs) -> Result<ExitCode> {
    let config_path = a
        .config
        .or_else(|| crate::files::config_path(crate::files::AGENT_CONFIG))
        .ok_or_else(|| anyhow::anyhow!("no agent config: pass --config PATH"))?;
    let settings = AgentSettings::load(&config_path)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    if let Some(od) = settings.on_demand.clone() {
        // The broker session and the relay connection are set up from the
        // config once; a changed config takes a restart.
        agent::on_demand::run(settings, od, shutdown, None).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let (tx, config) = watch::channel(settings);
    let path = config_path;
    super::on_sighup(shutdown.clone(), move || match AgentSettings::load(&path) {
        Ok(new) => {
            tracing::info!(config = %path.display(), "SIGHUP: reloading config");
            let _ = tx.send(new);
        }
        Err(e) => tracing::error!(
            config = %path.display(),
            "SIGHUP: config reload refused, keeping the running config: {e:#}"
        ),
    })?;
    agent::run_with_reload(config, shutdown, None).await;
    Ok(ExitCode::SUCCESS)
}
