//! `warren socks` and `warren forward`: long-running controller commands
//! that carry many streams over one relay connection.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::ClientArgs;
use crate::client::socks::{self, Credentials};
use crate::client::tunnel::Tunnel;
use crate::client::{ClientSettings, forward};

#[derive(Debug, Args)]
pub struct SocksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Address to listen on. Anything but loopback needs --auth.
    #[arg(long, default_value = "127.0.0.1:1080")]
    pub listen: SocketAddr,
    /// USER:PASSWORD that SOCKS clients must give (RFC 1929); also
    /// `socks_auth` in client.toml.
    #[arg(long, env = "WARREN_SOCKS_AUTH", hide_env_values = true)]
    pub auth: Option<String>,
    /// Direct paths to devices: `prefer` (used when one comes up, else the
    /// relay), `off` (always the relay) or `require` (fail without one).
    #[arg(long, default_value = "prefer", value_name = "prefer|off|require")]
    pub p2p: crate::p2p::Mode,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// DEVICE:PORT[=[ADDR:]LOCALPORT], e.g. `dev1:80=127.0.0.1:8080`. DEVICE
    /// may be a host range: `red00[1-3]:80`, `node[01-10]:22`, `a[1,3,5-7]:22`.
    /// Local port 0 picks any free port.
    #[arg(required = true)]
    pub specs: Vec<String>,
    /// First local port for specs without `=LOCALPORT`; counts up.
    #[arg(long)]
    pub start_port: Option<u16>,
    /// Local address for specs that give only a port.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Print the table of forwards as JSON (one line).
    #[arg(long)]
    pub json: bool,
    /// Direct paths to devices: `prefer` (used when one comes up, else the
    /// relay), `off` (always the relay) or `require` (fail without one).
    #[arg(long, default_value = "prefer", value_name = "prefer|off|require")]
    pub p2p: crate::p2p::Mode,
}

fn signal_token() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    shutdown
}

pub async fn socks(a: SocksArgs) -> Result<ExitCode> {
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    let auth = match &a.auth {
        Some(s) => Some(Credentials::parse(s).context("--auth")?),
        None => settings.socks_auth.clone(),
    };
    socks::check_listen(a.listen, auth.as_ref())?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let shutdown = signal_token();
    let mut tunnel = Tunnel::start(settings, shutdown.clone(), None);
    tunnel.set_p2p(a.p2p);
    let tunnel = Arc::new(tunnel);
    println!(
        "SOCKS5 proxy on {} (names resolve at the relay; e.g. curl --socks5-hostname {} http://dev1:8080/)",
        listener.local_addr()?,
        listener.local_addr()?
    );
    std::io::stdout().flush()?;
    socks::serve(listener, tunnel, auth, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

pub async fn forward(a: ForwardArgs) -> Result<ExitCode> {
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    let planned = forward::plan(&a.specs, a.start_port, a.bind)?;
    let bound = forward::bind(&planned).await?;
    let table: Vec<forward::Forward> = bound.iter().map(|(f, _)| f.clone()).collect();
    if a.json {
        println!("{}", serde_json::to_string(&table)?);
    } else {
        print!("{}", forward::render(&table));
    }
    std::io::stdout().flush()?;
    let shutdown = signal_token();
    let mut tunnel = Tunnel::start(settings, shutdown.clone(), None);
    tunnel.set_p2p(a.p2p);
    let tunnel = Arc::new(tunnel);
    // Direct paths come up in the background while streams are relayed.
    for f in &table {
        tunnel.keep_direct(&f.device, f.port);
    }
    forward::serve(bound, tunnel, shutdown).await;
    Ok(ExitCode::SUCCESS)
}
