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
    /// Device name (ssh's %h).
    pub host: String,
    /// Port on the device (ssh's %p).
    pub port: u16,
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
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    client::proxy(&settings, &a.host, a.port, a.p2p).await?;
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
