use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::client::enroll::{self, EnrollRequest};
use crate::files;
use crate::protocol::Role;
use crate::protocol::device_info::parse_label;
use crate::protocol::token::Invite;

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The invite token (`warren1.…`) from `warren admin invite`.
    #[arg(env = "WARREN_TOKEN")]
    pub token: String,
    /// Config file to write [default: ~/.config/warren/agent.toml for a
    /// device, ~/.config/warren/client.toml otherwise]. The key is written
    /// beside it with the extension `.key` (mode 0600).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A label for a device's agent config (KEY=VALUE; repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The CA (PEM) of a `tls://` or `wss://` relay's certificate, when the
    /// system's roots do not trust it; the written config keeps it as
    /// `relay_ca`.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: EnrollArgs) -> Result<ExitCode> {
    let invite = Invite::decode(&a.token)?;
    let labels: BTreeMap<String, String> = a
        .labels
        .iter()
        .map(|l| parse_label(l).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let default = match invite.role {
        Role::Device => files::config_path(files::AGENT_CONFIG),
        Role::Controller | Role::Admin => files::config_path(files::CLIENT_CONFIG),
    };
    let config = a
        .config
        .or(default)
        .ok_or_else(|| anyhow::anyhow!("no config path: pass --config PATH"))?;
    let done = enroll::enroll(&EnrollRequest {
        token: a.token,
        config,
        labels,
        ca: a.ca,
    })
    .await?;
    if a.json {
        crate::render::print_json(&done)?;
    } else {
        println!(
            "enrolled as {} {} in system {} (key {})",
            done.role, done.name, done.system, done.fingerprint
        );
        println!("wrote {} and {}", done.config.display(), done.key.display());
        match done.role {
            Role::Device => println!(
                "start the agent with: warren agent --config {}",
                done.config.display()
            ),
            Role::Controller | Role::Admin => println!(
                "reach a device with: warren ssh --client-config {} USER@DEVICE",
                done.config.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
