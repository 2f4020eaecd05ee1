//! `warren ssh-config` and `warren connect-script`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;

use super::ClientArgs;
use crate::client::sshconfig::{self, ConfigOptions};
use crate::client::{self, ClientSettings};
use crate::protocol::Name;

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Device names (host ranges like `node[01-10]` allowed).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub names: Vec<String>,
    /// Every device of the system, as the relay lists them.
    #[arg(long)]
    pub all: bool,
    /// Login user on the devices (`User` line).
    #[arg(long)]
    pub user: Option<String>,
    /// Prefix for each `Host` alias (e.g. `tau-` for `ssh tau-dev1`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Reach the relay over TLS in the ProxyCommand: a HOST[:PORT] relay
    /// address becomes tls://HOST:443 (tls:// and wss:// stay as they are).
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, Args)]
pub struct ConnectScriptArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The device to connect to.
    pub name: String,
    /// Login user on the device.
    #[arg(long)]
    pub user: Option<String>,
    /// Directory to write connect.sh and connect.bat into.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The key's path on the Windows machine, for connect.bat.
    #[arg(long, default_value = r"%USERPROFILE%\.ssh\id_ed25519")]
    pub windows_key: String,
}

fn warren_exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the warren executable")
}

pub async fn ssh_config(a: SshConfigArgs) -> Result<ExitCode> {
    let mut s = ClientSettings::resolve(&a.client.overrides())?;
    if a.tls {
        s.relay = crate::protocol::RelayEndpoint::parse(&s.relay)?
            .over_tls()
            .to_string();
    }
    let devices = if a.all {
        all_devices(&s).await?
    } else {
        let mut out = Vec::new();
        for pattern in &a.names {
            for n in client::hostlist::expand(pattern)? {
                out.push(Name::parse(&n).with_context(|| format!("device name {n:?}"))?);
            }
        }
        out
    };
    if let Some(u) = &a.user {
        check_word("user", u)?;
    }
    check_word("prefix", &a.prefix)?;
    let exe = warren_exe()?;
    let o = ConfigOptions {
        exe: &exe,
        user: a.user.as_deref(),
        prefix: &a.prefix,
    };
    print!("{}", sshconfig::render_config(&s, &devices, &o));
    Ok(ExitCode::SUCCESS)
}

/// ssh_config words cannot hold spaces or quotes without escaping rules
/// that differ between versions: refuse them instead.
fn check_word(what: &str, s: &str) -> Result<()> {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '#')
    {
        bail!("{what} {s:?} may not contain spaces, quotes or '#'");
    }
    Ok(())
}

async fn all_devices(s: &ClientSettings) -> Result<Vec<Name>> {
    #[derive(Deserialize)]
    struct Device {
        name: String,
    }
    let conn = client::connect(s).await?;
    let out = conn.exec("ls --json").await?;
    conn.disconnect().await;
    if out.status != 0 {
        bail!(
            "relay refused to list devices: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list: Vec<Device> =
        serde_json::from_slice(&out.stdout).context("relay sent an unreadable device list")?;
    list.iter()
        .map(|d| Name::parse(&d.name).with_context(|| format!("device name {:?}", d.name)))
        .collect()
}

pub fn connect_script(a: ConnectScriptArgs) -> Result<ExitCode> {
    let s = ClientSettings::resolve(&a.client.overrides())?;
    let device = Name::parse(&a.name).with_context(|| format!("device name {:?}", a.name))?;
    if let Some(u) = &a.user {
        check_word("user", u)?;
    }
    let exe = warren_exe()?;
    let sh = a.dir.join("connect.sh");
    let bat = a.dir.join("connect.bat");
    std::fs::write(
        &sh,
        sshconfig::render_sh(&s, &device, a.user.as_deref(), &exe),
    )
    .with_context(|| format!("cannot write {}", sh.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(
        &bat,
        sshconfig::render_bat(&s, &device, a.user.as_deref(), &a.windows_key),
    )
    .with_context(|| format!("cannot write {}", bat.display()))?;
    println!("wrote {} and {}", sh.display(), bat.display());
    Ok(ExitCode::SUCCESS)
}
