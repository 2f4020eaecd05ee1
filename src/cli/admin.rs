//! `warren admin`: systems and keys, written straight into the relay's
//! database. A running relay sees the change without a restart.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::audit;
use crate::protocol::{Name, Role};
use crate::relay::{host_key_path, status};
use crate::ssh::keys;
use crate::store::{KeyRecord, Store};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The relay's data directory.
    #[arg(long, env = "WARREN_DATA")]
    pub data: PathBuf,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Print the relay's host-key fingerprint (agents and clients pin it).
    HostKey {
        #[arg(long)]
        json: bool,
    },
    /// Systems (tenants).
    #[command(subcommand)]
    System(SystemCommand),
    /// Keys bound to (system, role, name).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Public ports: `expose dev1:22 --system tau --port 4040 [--allow-from CIDR]`, `expose ls`, `expose rm PORT`.
    Expose(super::expose::ExposeArgs),
    /// Devices and their status.
    Ls {
        /// Only this system.
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Add a system.
    Add { name: String },
    /// List systems.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Register a public key (OpenSSH format; `-` reads standard input).
    Add {
        #[arg(long)]
        system: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Device name (for device keys) or the person's or program's name.
        #[arg(long)]
        name: String,
        pubkey_file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List keys.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; its live connections are closed at once.
    Revoke { fingerprint: String },
}

pub fn run(a: AdminArgs) -> Result<ExitCode> {
    if let AdminCommand::HostKey { json } = a.command {
        return host_key(&a.data, json);
    }
    if !a.data.join(crate::store::DB_FILE).exists() {
        anyhow::bail!(
            "no Warren database in {} (start `warren relay --data {}` once, or check --data)",
            a.data.display(),
            a.data.display()
        );
    }
    let store = Store::open(&a.data)?;
    match a.command {
        AdminCommand::HostKey { .. } => unreachable!("handled above"),
        AdminCommand::System(SystemCommand::Add { name }) => {
            let name = Name::parse(&name).context("system name")?;
            store.add_system(&name)?;
            audit::admin("system_add", name.as_str());
            println!("added system {name}");
        }
        AdminCommand::System(SystemCommand::Ls { json }) => {
            let systems = store.systems()?;
            if json {
                print_json(&systems)?;
            } else {
                for s in systems {
                    println!("{s}");
                }
            }
        }
        AdminCommand::Key(KeyCommand::Add {
            system,
            role,
            name,
            pubkey_file,
            json,
        }) => {
            let system = Name::parse(&system).context("system name")?;
            let name = Name::parse(&name).context("key name")?;
            let key = read_pubkey(&pubkey_file)?;
            let rec = store.add_key(&system, role, &name, &key)?;
            audit::admin(
                "key_add",
                &format!(
                    "{} {} {} {}",
                    rec.system, rec.role, rec.name, rec.fingerprint
                ),
            );
            if json {
                print_json(&rec)?;
            } else {
                println!(
                    "added {} key {} for {} in system {}",
                    rec.role, rec.fingerprint, rec.name, rec.system
                );
            }
        }
        AdminCommand::Key(KeyCommand::Ls { json }) => {
            let keys = store.keys()?;
            if json {
                print_json(&keys)?;
            } else {
                print!("{}", render_keys(&keys));
            }
        }
        AdminCommand::Key(KeyCommand::Revoke { fingerprint }) => {
            let rec = store.revoke_key(fingerprint.trim())?;
            audit::admin(
                "key_revoke",
                &format!(
                    "{} {} {} {}",
                    rec.system, rec.role, rec.name, rec.fingerprint
                ),
            );
            println!(
                "revoked {} key {} ({} in system {}); its connections are being closed",
                rec.role, rec.fingerprint, rec.name, rec.system
            );
        }
        AdminCommand::Expose(e) => super::expose::run(&store, e)?,
        AdminCommand::Ls { system, json } => {
            let devices: Vec<status::DeviceStatus> = store
                .devices(system.as_deref())?
                .into_iter()
                .map(status::from_record)
                .collect();
            if json {
                print_json(&devices)?;
            } else {
                print!("{}", status::render(&devices, true));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn host_key(data: &Path, json: bool) -> Result<ExitCode> {
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let key = keys::load_or_create_host_key(&host_key_path(data))?;
    let fp = keys::fingerprint(key.public_key());
    if json {
        #[derive(Serialize)]
        struct HostKey {
            fingerprint: String,
            public_key: String,
        }
        let public_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        print_json(&HostKey {
            fingerprint: fp,
            public_key,
        })?;
    } else {
        println!("{fp}");
    }
    Ok(ExitCode::SUCCESS)
}

fn read_pubkey(path: &Path) -> Result<keys::PublicKey> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(crate::protocol::limits::MAX_CONFIG_FILE)
            .read_to_string(&mut text)?;
        return keys::parse_public(&text);
    }
    keys::read_public(path)
}

fn render_keys(keys: &[KeyRecord]) -> String {
    let mut rows = vec![
        ["SYSTEM", "ROLE", "NAME", "TYPE", "FINGERPRINT", "STATUS"]
            .map(String::from)
            .to_vec(),
    ];
    for k in keys {
        rows.push(vec![
            k.system.clone(),
            k.role.to_string(),
            k.name.clone(),
            k.algorithm.clone(),
            k.fingerprint.clone(),
            match k.revoked {
                Some(t) => format!("revoked {}", status::when(Some(t))),
                None => "active".into(),
            },
        ]);
    }
    status::table(&rows)
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
