use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::relay::{self, Relay, RelayOptions};

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:2222", env = "WARREN_LISTEN")]
    pub listen: SocketAddr,
    /// Data directory: host key and database (created on first start).
    #[arg(long, env = "WARREN_DATA")]
    pub data: PathBuf,
    /// Prune audit events older than this ("90d", "12h"); kept forever if unset.
    #[arg(long, env = "WARREN_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<std::time::Duration>,
    /// HOST:PORT that new machines reach this relay at, written into invite
    /// tokens [default: --listen, unless it is a wildcard address].
    #[arg(long, env = "WARREN_ADVERTISE")]
    pub advertise: Option<String>,
}

pub async fn run(a: RelayArgs) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let bound = listener.local_addr()?;
    let advertise = match a.advertise {
        Some(addr) => Some(crate::agent::config::relay_address(&addr).context("--advertise")?),
        None if !bound.ip().is_unspecified() => Some(bound.to_string()),
        None => None,
    };
    let options = RelayOptions {
        audit_retention: a.audit_retention,
        advertise,
        ..RelayOptions::default()
    };
    let relay = Relay::open(&a.data, options)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    relay::serve(listener, relay, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
