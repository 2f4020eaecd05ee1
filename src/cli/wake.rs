//! `warren wake DEVICE` and `warren sleep DEVICE` (controller): ask the
//! relay, which holds the broker credentials, to wake an on-demand device
//! or put it to sleep. `wake` shows its progress until the device is online
//! or failed.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::ClientArgs;
use crate::client::{self, ClientSettings};
use crate::protocol::Name;

/// How often `wake` says it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct WakeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The on-demand device.
    pub device: String,
    /// The relay's answer as JSON (device, op, result, took_ms, reason).
    #[arg(long)]
    pub json: bool,
}

pub async fn wake(a: WakeArgs) -> Result<ExitCode> {
    run("wake", a).await
}

pub async fn sleep(a: WakeArgs) -> Result<ExitCode> {
    run("sleep", a).await
}

async fn run(op: &str, a: WakeArgs) -> Result<ExitCode> {
    let name = Name::parse(&a.device)?;
    let settings = ClientSettings::resolve(&a.client.overrides())?;
    let conn = client::connect(&settings).await?;
    let mut line = format!("{op} {name}");
    if a.json {
        line.push_str(" --json");
    }
    let started = Instant::now();
    let verb = if op == "wake" {
        "waking"
    } else {
        "putting to sleep"
    };
    if !a.json {
        eprintln!("{verb} {name} through the relay …");
    }
    let exec = conn.exec(&line);
    tokio::pin!(exec);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let out = loop {
        tokio::select! {
            out = &mut exec => break out?,
            _ = tick.tick() => if !a.json {
                eprintln!("  still {verb} {name}: {}s", started.elapsed().as_secs());
            },
        }
    };
    conn.disconnect().await;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(1)))
}
