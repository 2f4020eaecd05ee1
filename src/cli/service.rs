//! `warren service install agent|forward`: a systemd unit that keeps an agent
//! or a set of forwards running (restart always, after the network is up).
//! `--print` shows the unit instead, for review or for machines without
//! systemd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::agent::AgentSettings;
use crate::protocol::Name;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write a systemd unit and enable it (`--print` only shows it).
    #[command(subcommand)]
    Install(InstallWhat),
}

#[derive(Debug, Subcommand)]
pub enum InstallWhat {
    /// The device agent: `warren agent --config FILE`.
    Agent(AgentUnit),
    /// Forwards: `warren forward ARGS…` (give them after `--`).
    Forward(ForwardUnit),
}

#[derive(Debug, Args)]
pub struct UnitOptions {
    /// Print the unit on stdout; write and enable nothing.
    #[arg(long)]
    pub print: bool,
    /// Where to write the unit.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// Write the unit but do not run `systemctl enable --now`.
    #[arg(long)]
    pub no_enable: bool,
    /// Run the service as this user (`User=`); root if not given.
    #[arg(long)]
    pub run_as: Option<String>,
}

#[derive(Debug, Args)]
pub struct AgentUnit {
    #[command(flatten)]
    pub unit: UnitOptions,
    /// The agent's config file (checked now, so the unit will start).
    #[arg(long, default_value = "/etc/warren/agent.toml")]
    pub config: PathBuf,
    /// Unit name (without .service).
    #[arg(long, default_value = "warren-agent")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ForwardUnit {
    #[command(flatten)]
    pub unit: UnitOptions,
    /// Names the unit `warren-forward-NAME`.
    #[arg(long)]
    pub name: String,
    /// Arguments for `warren forward`, after `--`.
    #[arg(last = true, required = true)]
    pub args: Vec<String>,
}

pub fn run(a: ServiceArgs) -> Result<ExitCode> {
    let ServiceCommand::Install(what) = a.command;
    let exe = std::env::current_exe().context("cannot find the warren executable")?;
    let (unit, name, text) = match what {
        InstallWhat::Agent(u) => {
            let name = unit_name(&u.name)?;
            let config = std::path::absolute(&u.config)
                .with_context(|| format!("config path {}", u.config.display()))?;
            AgentSettings::load(&config)?;
            let description = "Warren agent: this device's tunnel to the relay";
            let args = vec![
                exe.to_string_lossy().into_owned(),
                "agent".into(),
                "--config".into(),
                config.to_string_lossy().into_owned(),
            ];
            let text = render_unit(description, &args, u.unit.run_as.as_deref(), true);
            (u.unit, name, text)
        }
        InstallWhat::Forward(u) => {
            let name = unit_name(&format!("warren-forward-{}", u.name))?;
            check_forward_args(&u.args)?;
            let mut args = vec![exe.to_string_lossy().into_owned(), "forward".into()];
            args.extend(u.args.iter().cloned());
            let description = format!("Warren forwards ({})", u.name);
            let text = render_unit(&description, &args, u.unit.run_as.as_deref(), false);
            (u.unit, name, text)
        }
    };
    if let Some(user) = &unit.run_as {
        Name::parse(user).with_context(|| format!("--run-as {user:?}"))?;
    }
    if unit.print {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    install(&unit, &name, &text)
}

fn unit_name(s: &str) -> Result<String> {
    // Unit names here are Warren names plus a fixed prefix: no slashes, no
    // surprises in a path or a systemctl argument.
    Name::parse(s).with_context(|| format!("unit name {s:?}"))?;
    Ok(format!("{s}.service"))
}

/// Parses the arguments as `warren forward` would, so a bad spec fails now
/// rather than in a restart loop; relative paths would break under systemd.
fn check_forward_args(args: &[String]) -> Result<()> {
    let argv = ["warren", "forward"]
        .into_iter()
        .map(String::from)
        .chain(args.iter().cloned());
    let cli = super::Cli::try_parse_from(argv)
        .map_err(|e| anyhow::anyhow!("these are not valid `warren forward` arguments:\n{e}"))?;
    let super::Command::Forward(f) = cli.command else {
        bail!("expected `warren forward` arguments");
    };
    crate::client::forward::plan(&f.specs, f.start_port, f.bind)?;
    for p in [&f.client.client_config, &f.client.key]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            bail!(
                "{} is a relative path; a service starts in /, give an absolute path",
                p.display()
            );
        }
    }
    Ok(())
}

/// Quotes one ExecStart word for systemd: `%` and `$` are systemd's own
/// specifiers and are doubled; words with spaces or quotes are quoted.
pub fn systemd_word(s: &str) -> String {
    let s = s.replace('%', "%%").replace('$', "$$");
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        return s;
    }
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn render_unit(description: &str, args: &[String], user: Option<&str>, reload: bool) -> String {
    let exec: Vec<String> = args.iter().map(|a| systemd_word(a)).collect();
    let mut service = format!("[Service]\nExecStart={}\n", exec.join(" "));
    if reload {
        service.push_str("ExecReload=/bin/kill -HUP $MAINPID\n");
    }
    if let Some(u) = user {
        service.push_str(&format!("User={u}\n"));
    }
    service.push_str("Restart=always\nRestartSec=5\n");
    format!(
        "# Written by `warren service install`.\n\
         [Unit]\n\
         Description={description}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         # Keep restarting however often it fails: the unit's whole job is to stay up.\n\
         StartLimitIntervalSec=0\n\
         \n\
         {service}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn install(unit: &UnitOptions, name: &str, text: &str) -> Result<ExitCode> {
    std::fs::create_dir_all(&unit.unit_dir)
        .with_context(|| format!("cannot create {}", unit.unit_dir.display()))?;
    let path = unit.unit_dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    if unit.no_enable {
        println!("not enabled (--no-enable); start it with: systemctl enable --now {name}");
        return Ok(ExitCode::SUCCESS);
    }
    if !has_systemctl() {
        println!("no systemctl here; enable the unit by hand where systemd runs");
        return Ok(ExitCode::SUCCESS);
    }
    // A unit outside systemd's search path is enabled by its full path.
    let target = if unit.unit_dir == Path::new("/etc/systemd/system") {
        name.to_string()
    } else {
        path.to_string_lossy().into_owned()
    };
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", "--now", &target])?;
    println!("enabled and started {name}");
    Ok(ExitCode::SUCCESS)
}

fn has_systemctl() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("systemctl").is_file()))
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("systemctl")
        .args(args)
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "`systemctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_words_are_escaped() {
        assert_eq!(systemd_word("/usr/bin/warren"), "/usr/bin/warren");
        assert_eq!(systemd_word("a b"), "\"a b\"");
        assert_eq!(systemd_word("100%"), "100%%");
        assert_eq!(systemd_word("$HOME"), "$$HOME");
        assert_eq!(systemd_word("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(systemd_word(""), "\"\"");
    }

    #[test]
    fn unit_restarts_always_after_network() {
        let text = render_unit(
            "d",
            &["/bin/warren".into(), "agent".into()],
            Some("warren"),
            true,
        );
        for line in [
            "Wants=network-online.target",
            "After=network-online.target",
            "Restart=always",
            "ExecStart=/bin/warren agent",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "User=warren",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
