//! The command line: one file per subcommand. Each `run` returns the exit
//! code; errors are printed once, in `main`.

mod admin;
mod agent;
mod demo;
mod doctor;
mod enroll;
mod keygen;
pub use crate::admin::log;
mod proxy;
mod relay;
mod service;
mod socks;
mod sshconfig;
mod wake;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Overrides;

/// Warren: reach machines behind NAT by name, over SSH, through one relay.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WARREN_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: the public SSH server devices register with.
    Relay(Box<relay::RelayArgs>),
    /// Manage the relay's systems and keys (on the relay host).
    Admin(admin::AdminArgs),
    /// Run the device agent: register this machine by name, reconnect forever.
    Agent(agent::AgentArgs),
    /// Write a new ed25519 key pair (OpenSSH format) for an agent or controller.
    Keygen(keygen::KeygenArgs),
    /// Carry one stream to HOST PORT on stdin/stdout (for ssh's ProxyCommand).
    Proxy(proxy::ProxyArgs),
    /// Run stock ssh to a device through the relay: `warren ssh root@dev1`.
    Ssh(proxy::SshArgs),
    /// List the devices of your system, through the relay.
    Ls(proxy::LsArgs),
    /// Enroll this machine with an invite token: make its key, register it
    /// with the relay, write its agent or client config.
    Enroll(enroll::EnrollArgs),
    /// Read the audit log of your system, through the relay.
    Log(proxy::LogCmdArgs),
    /// Wake an on-demand device through the relay (it holds the MQTT
    /// broker's credentials); shows progress until it is online or failed.
    Wake(wake::WakeArgs),
    /// Put an on-demand device to sleep through the relay.
    Sleep(wake::WakeArgs),
    /// Check what usually goes wrong on a device or gateway: relay reachable,
    /// host key pinned, clock skew, scope networks routable, targets answering.
    Doctor(doctor::DoctorArgs),
    /// Start a relay, a device and a connection through it, all on this
    /// machine, and explain each step.
    Demo(demo::DemoArgs),
    /// SOCKS5 proxy that reaches devices by name: `curl --socks5-hostname`.
    Socks(socks::SocksArgs),
    /// Local ports to device ports: `warren forward dev1:80=8080 'red00[1-3]:22' --start-port 2201`.
    Forward(socks::ForwardArgs),
    /// Print `Host` blocks for ~/.ssh/config so plain `ssh dev1` works.
    SshConfig(sshconfig::SshConfigArgs),
    /// Write connect.sh and connect.bat that ssh to one device.
    ConnectScript(sshconfig::ConnectScriptArgs),
    /// Run the agent or forwards as a systemd service.
    Service(service::ServiceArgs),
}

/// Where a controller finds the relay. Each flag can also be set in
/// `~/.config/warren/client.toml` or the environment.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Client config file [default: ~/.config/warren/client.toml].
    #[arg(long, env = "WARREN_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
    /// Relay address: HOST[:PORT] (port 2222 by default), tls://HOST[:PORT]
    /// (SSH inside TLS, port 443 by default) or wss://HOST[:PORT]/ssh (inside
    /// a WebSocket). TLS goes through HTTPS_PROXY when set (minus NO_PROXY).
    #[arg(long, env = "WARREN_RELAY")]
    pub relay: Option<String>,
    /// CA (PEM) that signs the relay's TLS certificate [default: the
    /// system's roots].
    #[arg(long, env = "WARREN_RELAY_CA")]
    pub ca: Option<PathBuf>,
    /// System (tenant) name: the SSH user at the relay.
    #[arg(long, env = "WARREN_SYSTEM")]
    pub system: Option<String>,
    /// Private key file (OpenSSH format).
    #[arg(long, env = "WARREN_KEY")]
    pub key: Option<PathBuf>,
    /// The relay's pinned host-key fingerprint (SHA256:…).
    #[arg(long, env = "WARREN_RELAY_HOST_KEY")]
    pub relay_host_key: Option<String>,
}

impl ClientArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.client_config.clone(),
            relay: self.relay.clone(),
            system: self.system.clone(),
            key: self.key.clone(),
            relay_host_key: self.relay_host_key.clone(),
            relay_ca: self.ca.clone(),
        }
    }
}

pub fn init_logging(cli: &Cli) {
    // `proxy` shares stderr with ssh: only say something when it matters.
    let default = match cli.command {
        Command::Proxy(_)
        | Command::Ssh(_)
        | Command::Ls(_)
        | Command::Log(_)
        | Command::Wake(_)
        | Command::Sleep(_) => "warn",
        Command::Enroll(_) | Command::SshConfig(_) => "warn",
        Command::Demo(_) => "warn",
        Command::Doctor(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a pipe whose reader is
        // gone) is dropped: the default reports it with `eprintln!`, which
        // panics on that same closed stderr and took the relay down.
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Colour codes only on a terminal, and not when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>): a log file or a pipe
/// (`warren relay 2>relay.log`, journald) gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Ssh(a) => proxy::ssh(a),
        Command::ConnectScript(a) => sshconfig::connect_script(a),
        Command::Service(a) => service::run(a),
        command => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            if let Command::Relay(a) = &command {
                relay::bulk_nice(a.bulk_nice);
                relay::thread_slices(&mut builder, a.thread_slice);
            }
            let rt = builder.build()?;
            rt.block_on(async move {
                match command {
                    Command::Relay(a) => relay::run(*a).await,
                    Command::Agent(a) => agent::run(a).await,
                    Command::Proxy(a) => proxy::proxy(a).await,
                    Command::Ls(a) => proxy::ls(a).await,
                    Command::Admin(a) => admin::run(a).await,
                    Command::Enroll(a) => enroll::run(a).await,
                    Command::Log(a) => proxy::log(a).await,
                    Command::Wake(a) => wake::wake(a).await,
                    Command::Sleep(a) => wake::sleep(a).await,
                    Command::Demo(a) => demo::run(a).await,
                    Command::Doctor(a) => doctor::run(a).await,
                    Command::Socks(a) => socks::socks(a).await,
                    Command::Forward(a) => socks::forward(a).await,
                    Command::SshConfig(a) => sshconfig::ssh_config(a).await,
                    Command::Keygen(_)
                    | Command::Ssh(_)
                    | Command::ConnectScript(_)
                    | Command::Service(_) => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Calls `reload` on each SIGHUP until `stop`.
pub(crate) fn on_sighup(
    stop: tokio_util::sync::CancellationToken,
    mut reload: impl FnMut() + Send + 'static,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => match got {
                    Some(()) => reload(),
                    None => return,
                },
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Cli, colour};

    #[test]
    fn the_whole_command_line_is_consistent() {
        // Duplicate flags between flattened argument groups only show when
        // that subcommand runs; check every one here.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("1".into())));
    }
}
