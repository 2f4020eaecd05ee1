//! `wake NAME` and `sleep NAME` over the relay's SSH port (`ssh tau@relay
//! wake dev1`, and `warren wake dev1`, which runs it): a controller or
//! admin asks the relay, which holds the broker credentials; the caller
//! needs none. `wake` answers once the device is online or failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Relay;
use super::wake::{self, WakeOutcome, kind};
use crate::audit::{self, Event};
use crate::mqtt::Op;
use crate::protocol::{DeviceId, Name};
use crate::ssh::server::ExecOutput;
use crate::store::Identity;

/// What `wake`/`sleep` answer (`--json`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reply {
    pub device: String,
    pub op: &'static str,
    /// `online`, `asleep`, `requested` or `failed`.
    pub result: &'static str,
    /// Time until online (wake) or offline (sleep).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reply {
    fn text(&self) -> String {
        let took = self
            .took_ms
            .map(|ms| format!(" after {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        match (self.result, &self.reason) {
            ("failed", Some(r)) => format!("{}: {} failed: {r}\n", self.device, self.op),
            (result, _) => format!("{}: {result}{took}\n", self.device),
        }
    }
}

/// Whether `command` is one of these (its first word).
pub fn is_remote(command: &str) -> bool {
    matches!(
        command.split_whitespace().next(),
        Some("wake") | Some("sleep")
    )
}

/// Runs `wake NAME [--json]` or `sleep NAME [--json]` for `who`, on a
/// device of `who`'s own system.
pub async fn run(relay: &Arc<Relay>, who: &Identity, command: &str) -> ExecOutput {
    let words: Vec<&str> = command.split_whitespace().collect();
    let json = words.contains(&"--json");
    let rest: Vec<&str> = words[1..]
        .iter()
        .copied()
        .filter(|w| *w != "--json")
        .collect();
    let op = if words.first() == Some(&"wake") {
        Op::Connect
    } else {
        Op::Disconnect
    };
    let usage = format!("usage: {} DEVICE [--json]\n", words[0]);
    let [name] = rest.as_slice() else {
        return ExecOutput::fail(2, usage);
    };
    let name = match Name::parse(name) {
        Ok(n) => n,
        Err(e) => return ExecOutput::fail(2, format!("{e}\n{usage}")),
    };
    let device = DeviceId::new(who.system.clone(), name);
    let reply = match check(relay, &device).await {
        Err(why) => return ExecOutput::fail(1, format!("{why}\n")),
        Ok(()) if op == Op::Connect => wake_now(relay, who, &device).await,
        Ok(()) => sleep_now(relay, who, &device).await,
    };
    let status = u32::from(reply.result == "failed");
    let out = if json {
        format!("{}\n", serde_json::to_string(&reply).unwrap_or_default())
    } else {
        reply.text()
    };
    ExecOutput::with_status(out, status)
}

/// The device must be on demand, and the relay must have a broker.
async fn check(relay: &Relay, device: &DeviceId) -> Result<(), String> {
    let (s, n) = (device.system.to_string(), device.name.to_string());
    let known = relay
        .store()
        .call(move |st| st.on_demand_device(&s, &n))
        .await
        .map_err(|e| format!("{e:#}"))?;
    if known.is_none() {
        return Err(format!(
            "{} is not an on-demand device of system {} (its agent has no [on_demand], or it never registered)",
            device.name, device.system
        ));
    }
    if relay.waker().is_none() {
        return Err("this relay has no MQTT broker (warren relay --mqtt URL)".into());
    }
    Ok(())
}

async fn wake_now(relay: &Arc<Relay>, who: &Identity, device: &DeviceId) -> Reply {
    let mut reply = Reply {
        device: device.name.to_string(),
        op: "wake",
        result: "online",
        took_ms: Some(0),
        reason: None,
    };
    if relay
        .registry()
        .lookup(&device.system, &device.name)
        .is_some()
    {
        return reply;
    }
    let Some(waker) = relay.waker() else {
        return reply;
    };
    match wake::wake(relay, waker, device, who.name.as_str()).await {
        WakeOutcome::Online { took } => reply.took_ms = Some(took.as_millis() as u64),
        failed => {
            reply.result = "failed";
            reply.took_ms = None;
            reply.reason = failed.refusal(device).map(|r| r.to_string());
        }
    }
    reply
}

/// Publishes `disconnect` and, if the device is online, waits (at most the
/// wake timeout) until it has left.
async fn sleep_now(relay: &Arc<Relay>, who: &Identity, device: &DeviceId) -> Reply {
    let mut reply = Reply {
        device: device.name.to_string(),
        op: "sleep",
        result: "requested",
        took_ms: None,
        reason: None,
    };
    let Some(waker) = relay.waker() else {
        return reply;
    };
    let started = Instant::now();
    let mut changes = relay.registry().watch();
    let published = waker.command(device, Op::Disconnect).await;
    let event = Event::new(kind::SLEEP_REQUEST, audit::OK)
        .system(device.system.as_str())
        .key(who.name.as_str(), who.fingerprint.as_str())
        .device(device.name.as_str());
    if let Err(e) = published {
        relay.audit().record(event.clone().detail(format!("{e:#}")));
        reply.result = "failed";
        reply.reason = Some(format!("{e:#}"));
        return reply;
    }
    relay.audit().record(event);
    let gone = async {
        while relay
            .registry()
            .lookup(&device.system, &device.name)
            .is_some()
        {
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(waker.timeout().max(Duration::from_secs(1)), gone)
        .await
        .is_ok()
    {
        reply.result = "asleep";
        reply.took_ms = Some(started.elapsed().as_millis() as u64);
    }
    reply
}
