//! `wake DEVICE` and `sleep DEVICE`: on-demand devices, woken or put to
//! sleep by the running relay, which holds the MQTT broker's credentials
//! (controllers need none). One operation for remote admin (`ssh tau@relay
//! wake dev1`), `warren wake`, and later the HTTP API.

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Caller, Format, Request};
use crate::protocol::{DeviceId, Name};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct WakeArgs {
    /// The device's system [default: the caller's own].
    #[arg(long)]
    pub system: Option<String>,
    /// The on-demand device.
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeOp {
    Wake,
    Sleep,
}

/// How a wake or sleep ended (`--json`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WakeReply {
    pub device: String,
    pub op: WakeOp,
    /// `online`, `asleep`, `requested` (sent; the device did not leave
    /// within the wake timeout) or `failed`.
    pub result: String,
    /// Time until online (wake) or gone (sleep).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WakeReply {
    pub fn failed(device: &DeviceId, op: WakeOp, reason: String) -> WakeReply {
        WakeReply {
            device: device.name.to_string(),
            op,
            result: "failed".into(),
            took_ms: None,
            reason: Some(reason),
        }
    }

    pub(super) fn text(&self) -> String {
        let took = self
            .took_ms
            .map(|ms| format!(" after {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        format!("{}: {}{took}\n", self.device, self.result)
    }
}

impl WakeArgs {
    /// The typed request; `--json` picks the format.
    pub(super) fn into_request(self, op: WakeOp) -> Result<(Request, Format)> {
        let request = Request::Wake {
            op,
            system: self.system,
            device: Name::parse(&self.device).context("device name")?,
        };
        Ok((request, Format::json_if(self.json)))
    }
}

/// Runs `wake` or `sleep`: only through a running relay, only for an
/// on-demand device. A failed wake is an error carrying the device's reason.
pub(super) async fn run(
    store: &Store,
    caller: &Caller<'_>,
    op: WakeOp,
    system: Option<String>,
    device: Name,
) -> Result<WakeReply> {
    let Caller::Remote { live, who, .. } = caller else {
        bail!(
            "wake and sleep go through the running relay, which holds the broker credentials: \
             `ssh SYSTEM@RELAY wake DEVICE` or `warren wake DEVICE`"
        );
    };
    let system = match &system {
        Some(s) => Name::parse(s).context("system name")?,
        None => who.system.clone(),
    };
    let device = DeviceId::new(system, device);
    let (s, n) = (device.system.to_string(), device.name.to_string());
    if store
        .call(move |st| st.on_demand_device(&s, &n))
        .await?
        .is_none()
    {
        bail!(
            "{} is not an on-demand device of system {} (its agent has no [on_demand], or it never registered)",
            device.name,
            device.system
        );
    }
    let reply = match op {
        WakeOp::Wake => live.wake(device, (*who).clone()).await,
        WakeOp::Sleep => live.sleep(device, (*who).clone()).await,
    };
    if reply.result == "failed" {
        let why = reply.reason.unwrap_or_default();
        bail!(
            "{}: {} failed: {why}",
            reply.device,
            if op == WakeOp::Wake { "wake" } else { "sleep" }
        );
    }
    Ok(reply)
}
