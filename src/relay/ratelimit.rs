//! Failed logins per address: a token bucket for each peer IP. Every failed
//! login takes a token; an address with none left is refused at accept,
//! before any key exchange, until tokens flow back. Successful logins cost
//! nothing, so legitimate users from a shared address keep working.
//!
//! Audit events that cost an attacker nothing (enroll logins, key probes)
//! are aggregated per address and window ([`AuditFloods`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::protocol::limits::{FAILED_LOGIN_TABLE_MAX, RATE_LIMIT_AUDIT_EVERY};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// When this address was last written to the audit log as limited.
    audited: Option<Instant>,
    /// Connections refused since that audit record.
    refused_since: u64,
}

/// The answer for a new connection from a limited address.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused; `audit` carries the number of refusals to record now (the
    /// first one, then one summary per [`RATE_LIMIT_AUDIT_EVERY`]).
    Limited {
        audit: Option<u64>,
    },
}

pub struct FailedLogins {
    burst: f64,
    refill: Duration,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailedLogins {
    pub fn new(burst: u32, refill: Duration) -> FailedLogins {
        FailedLogins {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: &mut Bucket, now: Instant) {
        let gained = now.duration_since(b.updated).as_secs_f64() / self.refill.as_secs_f64();
        b.tokens = (b.tokens + gained).min(self.burst);
        b.updated = now;
    }

    /// Whether a new connection from `ip` may proceed.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = table.get_mut(&ip) else {
            return Verdict::Allow;
        };
        self.refilled(b, now);
        if b.tokens >= 1.0 {
            if b.tokens >= self.burst {
                table.remove(&ip);
            }
            return Verdict::Allow;
        }
        b.refused_since += 1;
        let due = b
            .audited
            .is_none_or(|t| now.duration_since(t) >= RATE_LIMIT_AUDIT_EVERY);
        if due {
            b.audited = Some(now);
            let n = b.refused_since;
            b.refused_since = 0;
            Verdict::Limited { audit: Some(n) }
        } else {
            Verdict::Limited { audit: None }
        }
    }

    /// Records one failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= FAILED_LOGIN_TABLE_MAX && !table.contains_key(&ip) {
            // Forget the addresses that have recovered the most.
            for b in table.values_mut() {
                self.refilled(b, now);
            }
            let burst = self.burst;
            table.retain(|_, b| b.tokens < burst - 1.0);
            if table.len() >= FAILED_LOGIN_TABLE_MAX {
                table.clear();
            }
        }
        let b = table.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            audited: None,
            refused_since: 0,
        });
        self.refilled(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Addresses currently tracked (for tests and status).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Audit events that anyone can cause at will (enroll logins, key probes),
/// aggregated per address: the first of a kind from an address in each
/// window is recorded; the rest are counted, and the count goes into the
/// next one recorded or into a summary ([`AuditFloods::sweep`]).
pub struct AuditFloods {
    window: Duration,
    table: Mutex<HashMap<(IpAddr, Flood), FloodWindow>>,
}

/// The key under which events that are no one address's doing are
/// aggregated (connections closed while the whole cap is full).
pub const ANY_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// What is aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flood {
    /// Logins as user `enroll` (any key may log in).
    EnrollLogin,
    /// Logins as user `enroll` begun and never completed.
    EnrollRefused,
    /// Registered keys asked about without a signature.
    KeyProbe,
    /// Connections closed because the cap on unauthenticated connections
    /// (the address's, or the whole on the TLS port) was full.
    OverCap,
}

#[derive(Debug, Clone, Copy)]
struct FloodWindow {
    started: Instant,
    counted: u64,
}

impl AuditFloods {
    pub fn new(window: Duration) -> AuditFloods {
        AuditFloods {
            window: window.max(Duration::from_millis(1)),
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// One event of `flood` from `ip`: `Some(n)` to record it now (`n`:
    /// events counted, not recorded, in the window before), `None` when it
    /// is only counted.
    pub fn note(&self, ip: IpAddr, flood: Flood, now: Instant) -> Option<u64> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = table.get_mut(&(ip, flood)) {
            if now.duration_since(w.started) < self.window {
                w.counted += 1;
                return None;
            }
            let before = w.counted;
            *w = FloodWindow {
                started: now,
                counted: 0,
            };
            return Some(before);
        }
        if table.len() >= FAILED_LOGIN_TABLE_MAX {
            // Spoofed addresses: forget finished windows, then everything.
            let window = self.window;
            table.retain(|_, w| now.duration_since(w.started) < window);
            if table.len() >= FAILED_LOGIN_TABLE_MAX {
                table.clear();
            }
        }
        table.insert(
            (ip, flood),
            FloodWindow {
                started: now,
                counted: 0,
            },
        );
        Some(0)
    }

    /// Windows that are over: forgotten, and those that counted events
    /// returned with their count, for a summary record.
    pub fn sweep(&self, now: Instant) -> Vec<(IpAddr, Flood, u64)> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        table.retain(|&(ip, flood), w| {
            if now.duration_since(w.started) < self.window {
                return true;
            }
            if w.counted > 0 {
                due.push((ip, flood, w.counted));
            }
            false
        });
        due
    }
}

/// Not-yet-authenticated connections: a global cap and one per address.
pub struct Unauthenticated {
    global: Arc<Semaphore>,
    per_address: usize,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Slots held now, for whoever waits for one to free up (tests).
    held: Arc<watch::Sender<usize>>,
}

/// A held slot; dropping it (at authentication or close) frees both counts.
pub struct Slot {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    by_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    held: Arc<watch::Sender<usize>>,
}

/// A global slot set aside by [`Unauthenticated::reserve`] for the next
/// accepted connection; dropping it frees it.
pub struct Reserved(OwnedSemaphorePermit);

/// Why a new connection got no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Global,
    Address,
}

impl Unauthenticated {
    pub fn new(global: usize, per_address: usize) -> Unauthenticated {
        Unauthenticated {
            global: Arc::new(Semaphore::new(global)),
            per_address: per_address.max(1),
            by_ip: Arc::new(Mutex::new(HashMap::new())),
            held: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Sees the number of slots held, after every take and release.
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.held.subscribe()
    }

    /// Waits until a global slot is free and reserves it for the next
    /// connection accepted ([`Unauthenticated::take`]), so that no other
    /// listener (the TLS front) takes it in between.
    pub async fn reserve(&self) -> Option<Reserved> {
        self.global.clone().acquire_owned().await.ok().map(Reserved)
    }

    pub fn try_take(&self, ip: IpAddr) -> Result<Slot, Full> {
        self.take(ip, None)
    }

    /// A slot for a connection from `ip`, in the global slot `reserved`
    /// if given (it is freed again if the address is over its cap).
    pub fn take(&self, ip: IpAddr, reserved: Option<Reserved>) -> Result<Slot, Full> {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let held = by_ip.entry(ip).or_insert(0);
        if *held >= self.per_address {
            return Err(Full::Address);
        }
        let permit = match reserved {
            Some(Reserved(p)) => p,
            None => match self.global.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if *held == 0 {
                        by_ip.remove(&ip);
                    }
                    return Err(Full::Global);
                }
            },
        };
        *held += 1;
        self.held.send_modify(|n| *n += 1);
        Ok(Slot {
            _global: permit,
            ip,
            by_ip: self.by_ip.clone(),
            held: self.held.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
        self.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_limits_the_address_until_tokens_return() {
        let limit = FailedLogins::new(3, Duration::from_secs(6));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.check(ip, t0), Verdict::Allow);
            limit.failed(ip, t0);
        }
        assert_eq!(limit.check(ip, t0), Verdict::Limited { audit: Some(1) });
        // Further refusals are counted, not audited one by one.
        assert_eq!(limit.check(ip, t0), Verdict::Limited { audit: None });
        assert_eq!(limit.check(ip, t0), Verdict::Limited { audit: None });
        assert_eq!(limit.check(other, t0), Verdict::Allow);
        // One token back after the refill period.
        let t1 = t0 + Duration::from_secs(6);
        assert_eq!(limit.check(ip, t1), Verdict::Allow);
        limit.failed(ip, t1);
        // The summary after RATE_LIMIT_AUDIT_EVERY counts what was refused.
        let t2 = t1 + Duration::from_millis(10);
        assert_eq!(limit.check(ip, t2), Verdict::Limited { audit: None });
        let t3 = t0 + RATE_LIMIT_AUDIT_EVERY + Duration::from_millis(1);
        assert_eq!(limit.check(ip, t3), Verdict::Limited { audit: Some(4) });
        // A full bucket is forgotten.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(limit.check(ip, later), Verdict::Allow);
        assert_eq!(limit.tracked(), 0);
    }

    #[test]
    fn floods_are_recorded_once_per_address_and_window_and_counted() {
        let floods = AuditFloods::new(Duration::from_secs(10));
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(floods.note(ip, Flood::EnrollLogin, t0), Some(0));
        for _ in 0..5 {
            assert_eq!(floods.note(ip, Flood::EnrollLogin, t0), None);
        }
        // Other kinds and other addresses have windows of their own.
        assert_eq!(floods.note(ip, Flood::KeyProbe, t0), Some(0));
        assert_eq!(floods.note(other, Flood::EnrollLogin, t0), Some(0));
        assert!(floods.sweep(t0 + Duration::from_secs(9)).is_empty());
        // The next one after the window carries the count...
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(floods.note(ip, Flood::EnrollLogin, t1), Some(5));
        assert_eq!(floods.note(ip, Flood::EnrollLogin, t1), None);
        assert_eq!(floods.note(ip, Flood::EnrollLogin, t1), None);
        // ...or, when none comes, the sweep does; windows without a count
        // are just forgotten.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(floods.sweep(t2), vec![(ip, Flood::EnrollLogin, 2)]);
        assert!(floods.sweep(t2).is_empty());
        assert_eq!(floods.note(ip, Flood::EnrollLogin, t2), Some(0));
    }

    #[test]
    fn one_address_cannot_take_every_unauthenticated_slot() {
        let u = Unauthenticated::new(5, 2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let a1 = u.try_take(a).unwrap();
        let _a2 = u.try_take(a).unwrap();
        assert_eq!(u.try_take(a).err(), Some(Full::Address));
        let _b = [u.try_take(b).unwrap(), u.try_take(b).unwrap()];
        let c: IpAddr = "198.51.100.3".parse().unwrap();
        let _c = u.try_take(c).unwrap();
        assert_eq!(u.try_take(c).err(), Some(Full::Global));
        let held = u.watch();
        assert_eq!(*held.borrow(), 5);
        drop(a1);
        assert_eq!(*held.borrow(), 4);
        assert!(u.try_take(a).is_ok());
    }

    #[tokio::test]
    async fn a_reserved_slot_is_the_accepted_connections_alone() {
        let u = Unauthenticated::new(2, 1);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let c: IpAddr = "198.51.100.3".parse().unwrap();
        let _a = u.try_take(a).unwrap();
        let reserved = u.reserve().await.unwrap();
        // Another listener (the TLS front) finds the cap full...
        assert_eq!(u.try_take(b).err(), Some(Full::Global));
        // ...and the connection accepted for the reservation gets it.
        let held = u.take(c, Some(reserved)).unwrap();
        assert_eq!(*u.watch().borrow(), 2);
        drop(held);
        // A reservation for an address over its cap is given back.
        let reserved = u.reserve().await.unwrap();
        assert_eq!(u.take(a, Some(reserved)).err(), Some(Full::Address));
        assert!(u.try_take(b).is_ok(), "the reserved slot was freed");
    }

    #[test]
    fn the_table_stays_bounded_under_spoofed_addresses() {
        let limit = FailedLogins::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(FAILED_LOGIN_TABLE_MAX as u32 + 1000) {
            limit.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limit.tracked() <= FAILED_LOGIN_TABLE_MAX);
    }
}
