//! Audit events: who did what. Each is one structured log line with target
//! `audit` and an `event` field, so operators can filter and ship them.
//! (Persisting them in the store, with queries, is the audit-log issue.)

use std::net::SocketAddr;
use std::time::Duration;

use crate::ssh::SpliceStats;

pub fn login_ok(peer: SocketAddr, system: &str, role: &str, name: &str, fingerprint: &str) {
    tracing::info!(target: "audit", event = "login", result = "ok", %peer, system, role, name, fingerprint);
}

pub fn login_refused(peer: SocketAddr, user: &str, reason: &str) {
    tracing::warn!(target: "audit", event = "login", result = "refused", %peer, user, reason);
}

pub fn device_up(peer: SocketAddr, system: &str, name: &str, port: u32, took_over: bool) {
    tracing::info!(target: "audit", event = "device_up", %peer, system, name, port, took_over);
}

pub fn device_down(system: &str, name: &str, reason: &str) {
    tracing::info!(target: "audit", event = "device_down", system, name, reason);
}

pub fn register_refused(peer: SocketAddr, system: &str, key_name: &str, asked: &str, reason: &str) {
    tracing::warn!(target: "audit", event = "register", result = "refused", %peer, system, key_name, asked, reason);
}

pub fn stream_refused(system: &str, controller: &str, target: &str, reason: &str) {
    tracing::warn!(target: "audit", event = "stream", result = "refused", system, controller, target, reason);
}

pub fn stream_closed(
    system: &str,
    controller: &str,
    target: &str,
    stats: SpliceStats,
    duration: Duration,
) {
    tracing::info!(
        target: "audit",
        event = "stream",
        result = "closed",
        system,
        controller,
        target,
        bytes_to_device = stats.sent,
        bytes_from_device = stats.received,
        duration_ms = duration.as_millis() as u64,
    );
}

pub fn key_revoked_disconnect(system: &str, name: &str, fingerprint: &str) {
    tracing::warn!(target: "audit", event = "key_revoked", action = "disconnect", system, name, fingerprint);
}

pub fn admin(action: &str, detail: &str) {
    tracing::info!(target: "audit", event = "admin", action, detail);
}

/// A public port opened, closed or failed to open (`action`).
pub fn public_port(action: &str, e: &crate::store::Exposure, detail: &str) {
    tracing::info!(
        target: "audit",
        event = "public_port",
        action,
        port = e.port,
        system = %e.system,
        device = %e.device,
        device_port = e.device_port,
        allow_from = %e.allow_from.join(","),
        detail,
    );
}

/// A connection to a public port from a peer outside its allow list.
pub fn public_refused(port: u16, peer: SocketAddr, reason: &str) {
    tracing::warn!(target: "audit", event = "public_connection", result = "refused", port, %peer, reason);
}
