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
}

pub async fn run(a: RelayArgs) -> Result<ExitCode> {
    let relay = Relay::open(&a.data, RelayOptions::default())?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    relay::serve(listener, relay, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
