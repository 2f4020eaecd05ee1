//! Controller commands: `warren proxy`, `warren ssh`, `warren ls`.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::ClientArgs;
use crate::client::{self, ClientSettings, shell_quote};
use crate::protocol::Name;

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device name (ssh's %h). Without it (and --tls): stdin/stdout carry
    /// the relay's own SSH port, for `ssh -o ProxyCommand=…` to the relay.
    #[arg(required_unless_present = "tls", requires = "port")]
    pub host: Option<String>,
    /// Port on the device (ssh's %p).
    pub port: Option<u16>,
    /// Reach the relay over TLS: a HOST[:PORT] relay address becomes
    /// tls://HOST:443 (tls:// and wss:// addresses are used as they are).
    #[arg(long)]
    pub tls: bool,
    /// Direct paths to devices: `prefer` (used when one comes up, else the
    /// relay), `off` (always the relay) or `require` (fail without one). A direct path is used if up within 500 ms.
    #[arg(long, default_value = "prefer", value_name = "prefer|off|require")]
    pub p2p: crate::p2p::Mode,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// [USER@]DEVICE
    pub destination: String,
    /// Further arguments for ssh (after `--`), e.g. a command to run.
    #[arg(last = true)]
    pub ssh_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only devices with this label (KEY=VALUE; repeat to require several).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogCmdArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this key (name or SHA256 fingerprint).
    #[arg(long)]
    pub key_name: Option<String>,
    #[command(flatten)]
    pub log: super::log::LogFilter,
}

pub async fn proxy(a: ProxyArgs) -> Result<ExitCode> {
    if a.tls && a.host.is_none() {
        return relay_pipe(&a.client).await;
    }
    let mut settings = ClientSettings::resolve(&a.client.overrides())?;
    if a.tls {
        settings.relay = crate::protocol::RelayEndpoint::parse(&settings.relay)?
            .over_tls()
            .to_string();
    }
    let (Some(host), Some(port)) = (a.host, a.port) else {
        anyhow::bail!("give the device and port (ssh's %h %p)");
    };
    client::proxy(&settings, &host, port, a.p2p).await?;
    Ok(ExitCode::SUCCESS)
}

/// `warren proxy --tls` without a device: stdin/stdout to the relay's SSH
/// server over TLS or a WebSocket (stock ssh then pins the relay's host
/// key in its known_hosts). Needs only the relay address (and its CA).
async fn relay_pipe(c: &super::ClientArgs) -> Result<ExitCode> {
    let relay = c
        .relay
        .clone()
        .context("no relay: give --relay tls://HOST:443 (or WARREN_RELAY)")?;
    let relay = crate::protocol::RelayEndpoint::parse(&relay)?.over_tls();
    let o = crate::transport::DialOptions {
        ca: c.ca.clone(),
        ..Default::default()
    };
    let socket = crate::transport::dial(&relay.to_string(), &o).await?;
    let (mut r, mut w) = tokio::io::split(socket);
    let (mut stdin, mut stdout) = (tokio::io::stdin(), tokio::io::stdout());
    let up = async {
        let _ = tokio::io::copy(&mut stdin, &mut w).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut r, &mut stdout).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
    };
    // stdin ending only half-closes: the relay's answer still comes.
    tokio::join!(up, down);
    Ok(ExitCode::SUCCESS)
}

/// Replaces this process with stock ssh, using `warren proxy` to get there.
pub fn ssh(a: SshArgs) -> Result<ExitCode> {
    let s = ClientSettings::resolve(&a.client.overrides())?;
    let device = a.destination.rsplit('@').next().unwrap_or(&a.destination);
    let device =
        Name::parse(device).with_context(|| format!("device name in {:?}", a.destination))?;
    let exe = std::env::current_exe().context("cannot find the warren executable")?;
    let proxy_command = client::sshconfig::proxy_command(&exe, &s);
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-o")
        .arg(format!("ProxyCommand={proxy_command}"))
        // Device names repeat across systems: keep their host keys apart.
        .arg("-o")
        .arg(format!(
            "HostKeyAlias={}",
            client::sshconfig::host_key_alias(&device, &s.system)
        ))
        .arg(&a.destination)
        .args(&a.ssh_args);
    let err = cmd.exec();
    Err(anyhow::anyhow!("cannot run ssh: {err}"))
}

pub async fn ls(a: LsArgs) -> Result<ExitCode> {
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    let mut words = vec!["ls".to_string()];
    for l in &a.labels {
        crate::protocol::device_info::parse_label(l).map_err(anyhow::Error::msg)?;
        words.push("--label".into());
        words.push(l.clone());
    }
    if a.json {
        words.push("--json".into());
    }
    remote(&settings, &words).await
}

/// `warren log`: the relay's `log` command for this key's system.
pub async fn log(a: LogCmdArgs) -> Result<ExitCode> {
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    a.log.query()?;
    let mut words = a.log.to_words();
    if let Some(k) = a.key_name {
        words.push("--key".into());
        words.push(k);
    }
    remote(&settings, &words).await
}

/// Runs a command at the relay and passes its output and exit status on.
async fn remote(settings: &ClientSettings, words: &[String]) -> Result<ExitCode> {
    let conn = client::connect(settings).await?;
    let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    let out = conn.exec(&line.join(" ")).await?;
    conn.disconnect().await;
    use std::io::Write;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
}
