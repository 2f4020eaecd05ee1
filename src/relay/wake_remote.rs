//! The relay's side of the `wake` and `sleep` admin operations
//! ([`crate::admin::wake`], through [`crate::admin::LiveRelay`]).

use std::time::{Duration, Instant};

use super::Relay;
use super::wake::{self, WakeOutcome, kind};
use crate::admin::NO_BROKER;
use crate::admin::wake::{WakeOp, WakeReply};
use crate::audit::{self, Event};
use crate::mqtt::Op;
use crate::protocol::DeviceId;
use crate::store::Identity;

/// Wakes `device` (at once if it is online already).
pub(super) async fn wake_now(relay: &Relay, who: &Identity, device: &DeviceId) -> WakeReply {
    let Some(waker) = relay.waker() else {
        return WakeReply::failed(device, WakeOp::Wake, NO_BROKER.into());
    };
    let mut reply = WakeReply {
        device: device.name.to_string(),
        op: WakeOp::Wake,
        result: "online".into(),
        took_ms: Some(0),
        reason: None,
    };
    let here = relay
        .registry()
        .lookup(&device.system, &device.name)
        .is_some();
    // In a cluster, awake on another relay is online too.
    if here
        || super::hop::holder(relay, &device.system, device.name.as_str())
            .await
            .is_some()
    {
        return reply;
    }
    match wake::wake(relay, waker, device, who.name.as_str()).await {
        WakeOutcome::Online { took } => reply.took_ms = Some(took.as_millis() as u64),
        failed => {
            let reason = failed
                .refusal(device)
                .map(|r| r.to_string())
                .unwrap_or_default();
            return WakeReply::failed(device, WakeOp::Wake, reason);
        }
    }
    reply
}

/// Publishes `disconnect` and, if the device is online, waits (at most the
/// wake timeout) until it has left. Audited as `sleep_request`.
pub(super) async fn sleep_now(relay: &Relay, who: &Identity, device: &DeviceId) -> WakeReply {
    let Some(waker) = relay.waker() else {
        return WakeReply::failed(device, WakeOp::Sleep, NO_BROKER.into());
    };
    let started = Instant::now();
    let mut changes = relay.registry().watch();
    let event = Event::new(kind::SLEEP_REQUEST, audit::OK)
        .system(device.system.as_str())
        .key(who.name.as_str(), who.fingerprint.as_str())
        .device(device.name.as_str());
    if let Err(e) = waker.command(device, Op::Disconnect).await {
        let why = format!("{e:#}");
        let mut failed = event.detail(why.clone());
        failed.result = "failed".into();
        relay.audit().record(failed);
        return WakeReply::failed(device, WakeOp::Sleep, why);
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
    let left = tokio::time::timeout(waker.timeout().max(Duration::from_secs(1)), gone).await;
    WakeReply {
        device: device.name.to_string(),
        op: WakeOp::Sleep,
        result: if left.is_ok() { "asleep" } else { "requested" }.into(),
        took_ms: left.is_ok().then(|| started.elapsed().as_millis() as u64),
        reason: None,
    }
}
