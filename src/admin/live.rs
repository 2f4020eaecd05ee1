//! What admin operations need of a running relay. The relay implements
//! [`LiveRelay`] (in `relay/live.rs`); admin never names the relay's types,
//! so the web console or another front end can offer the same operations.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use super::wake::{WakeOp, WakeReply};
use crate::audit::Event;
use crate::protocol::{DeviceId, Name};
use crate::store::Identity;

/// Why a relay without a broker cannot wake or sleep a device.
pub const NO_BROKER: &str = "this relay has no MQTT broker (warren relay --mqtt URL)";

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What changed in the store, for a running relay to act on at once
/// (today the relay re-checks everything on any change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Keys,
    Devices,
    Gateways,
    Exposures,
    /// Bandwidth limits.
    Rates,
}

/// One device online now, as the relay's registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDevice {
    pub device: DeviceId,
    /// Unix seconds.
    pub since: u64,
    pub peer: SocketAddr,
    pub ports: Vec<u16>,
    /// Live streams to the device.
    pub streams: u64,
    pub disabled: bool,
    /// Direct paths up to it now (`crate::p2p`).
    pub direct: usize,
    /// Why the latest direct-path attempt failed, if it did.
    pub why_relayed: Option<String>,
}

/// A running relay, as admin operations see it.
pub trait LiveRelay: Send + Sync {
    /// The relay's host-key fingerprint.
    fn host_key(&self) -> &str;
    /// Devices online now, of `system` or of all.
    fn online(&self, system: Option<&Name>) -> Vec<LiveDevice>;
    /// Records the events and returns once they are on disk.
    fn record_durable(&self, events: Vec<Event>) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Records an event without waiting for the disk.
    fn record(&self, event: Event);
    /// Returns once every event recorded so far is on disk (before `log` reads).
    fn flush_audit(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// The store changed: act now rather than at the next poll.
    fn changed(&self, change: Change);
    /// Whether a wake of on-demand `device` is in progress.
    fn waking(&self, _device: &DeviceId) -> bool {
        false
    }
    /// Wakes on-demand `device` for `who`; returns once it is online or failed.
    fn wake(&self, device: DeviceId, _who: Identity) -> BoxFuture<'_, WakeReply> {
        Box::pin(async move { WakeReply::failed(&device, WakeOp::Wake, NO_BROKER.into()) })
    }
    /// Asks on-demand `device` to sleep for `who`; returns once it left (or
    /// the wake timeout passed).
    fn sleep(&self, device: DeviceId, _who: Identity) -> BoxFuture<'_, WakeReply> {
        Box::pin(async move { WakeReply::failed(&device, WakeOp::Sleep, NO_BROKER.into()) })
    }
}
