//! Bandwidth limits on the relay's data path: a token bucket per system and
//! per device ([`Bucket`], each direction on its own), the limits an admin
//! stored laid over the relay's defaults ([`Bandwidth`]), and the
//! [`Shaper`] each relayed stream carries, which charges both of its
//! buckets for every packet before passing it on.
//!
//! A bucket is a virtual clock (GCRA): each packet moves the time at which
//! the bucket is empty again by `bytes / rate`; a packet waits while that
//! time is more than a burst ahead of now. Streams of one system share its
//! bucket, so together they get the system's rate, and a device's limit
//! holds inside its system's. Changing a limit takes effect at once on live
//! streams: the bucket's clock restarts and every stream waiting on it
//! wakes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::protocol::rate::Rate;
use crate::protocol::{DeviceId, Name};
use crate::ssh::{Pace, PaceWait, SpliceDirection};

/// One token bucket: a rate (or none) and a virtual clock per direction.
pub struct Bucket {
    /// Whether `rate` is set, read without the lock on every packet.
    limited: AtomicBool,
    state: Mutex<State>,
    /// Bumped when the rate changes: streams waiting on the old one go on.
    changed: watch::Sender<u64>,
}

struct State {
    rate: Option<Rate>,
    /// When each direction's bucket is full again (index: [`SpliceDirection`]).
    empty_at: [Instant; 2],
}

impl Bucket {
    fn new(rate: Option<Rate>) -> Bucket {
        let now = Instant::now();
        Bucket {
            limited: AtomicBool::new(rate.is_some()),
            state: Mutex::new(State {
                rate,
                empty_at: [now, now],
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain values, consistent at every point.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rate(&self) -> Option<Rate> {
        self.lock().rate
    }

    /// Sets the limit; a change restarts the clock and wakes waiting streams.
    fn set(&self, rate: Option<Rate>) {
        {
            let mut st = self.lock();
            if st.rate == rate {
                return;
            }
            let now = Instant::now();
            st.rate = rate;
            st.empty_at = [now, now];
            self.limited.store(rate.is_some(), Ordering::Relaxed);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Charges `n` bytes going `dir` at `now`: how long they must wait.
    pub fn charge(&self, dir: SpliceDirection, n: usize, now: Instant) -> Duration {
        if !self.limited.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let mut st = self.lock();
        let Some(rate) = st.rate else {
            return Duration::ZERO;
        };
        let per_byte = 1.0 / rate.bytes_per_second as f64;
        let slot = &mut st.empty_at[dir as usize];
        let from = (*slot).max(now);
        *slot = from + Duration::from_secs_f64(n as f64 * per_byte);
        let burst = Duration::from_secs_f64(rate.burst as f64 * per_byte);
        slot.saturating_duration_since(now + burst)
    }
}

/// The limits in force: the relay's defaults, and what admins stored.
pub struct Bandwidth {
    default_system: Option<Rate>,
    default_device: Option<Rate>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    systems: HashMap<Name, Rate>,
    devices: HashMap<DeviceId, Rate>,
    /// Buckets of live streams (dropped with the last stream that uses one).
    system_buckets: HashMap<Name, Weak<Bucket>>,
    device_buckets: HashMap<DeviceId, Weak<Bucket>>,
}

impl Inner {
    fn system_rate(&self, d: &Bandwidth, s: &Name) -> Option<Rate> {
        self.systems.get(s).copied().or(d.default_system)
    }

    fn device_rate(&self, d: &Bandwidth, id: &DeviceId) -> Option<Rate> {
        self.devices.get(id).copied().or(d.default_device)
    }
}

/// One stored limit: a system's (`device` `None`) or a device's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRate {
    pub system: Name,
    pub device: Option<Name>,
    pub rate: Rate,
}

/// Gets the live bucket in `map` or makes one with `rate`.
fn bucket<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Weak<Bucket>>,
    key: &K,
    rate: Option<Rate>,
) -> Arc<Bucket> {
    if let Some(b) = map.get(key).and_then(Weak::upgrade) {
        return b;
    }
    let b = Arc::new(Bucket::new(rate));
    map.insert(key.clone(), Arc::downgrade(&b));
    b
}

impl Bandwidth {
    pub fn new(default_system: Option<Rate>, default_device: Option<Rate>) -> Bandwidth {
        Bandwidth {
            default_system,
            default_device,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shaper of a new stream to `device`: its system's and its own bucket.
    pub fn shaper(&self, device: &DeviceId) -> Shaper {
        let mut inner = self.lock();
        let srate = inner.system_rate(self, &device.system);
        let drate = inner.device_rate(self, device);
        Shaper {
            system: bucket(&mut inner.system_buckets, &device.system, srate),
            device: bucket(&mut inner.device_buckets, device, drate),
            opener: None,
        }
    }

    /// The shaper of a stream that device `opener` opened (a gateway's
    /// listen forward) to `device`: the opener's own bucket is charged too
    /// (both are of one system, whose bucket is charged once).
    pub fn shaper_from(&self, device: &DeviceId, opener: &DeviceId) -> Shaper {
        let mut shaper = self.shaper(device);
        if opener != device {
            let mut inner = self.lock();
            let rate = inner.device_rate(self, opener);
            shaper.opener = Some(bucket(&mut inner.device_buckets, opener, rate));
        }
        shaper
    }

    /// Whether a stream to `device` is paced (its or its system's limit):
    /// such a stream must stay on the relay, never take a direct path.
    pub fn limited(&self, device: &DeviceId) -> bool {
        let inner = self.lock();
        inner.system_rate(self, &device.system).is_some()
            || inner.device_rate(self, device).is_some()
    }

    /// Replaces the stored limits (read from the store after a change) and
    /// applies them to live streams at once.
    pub fn set(&self, stored: Vec<StoredRate>) {
        let mut inner = self.lock();
        inner.systems.clear();
        inner.devices.clear();
        for s in stored {
            match s.device {
                None => inner.systems.insert(s.system, s.rate),
                Some(d) => inner.devices.insert(DeviceId::new(s.system, d), s.rate),
            };
        }
        inner.system_buckets.retain(|_, b| b.strong_count() > 0);
        inner.device_buckets.retain(|_, b| b.strong_count() > 0);
        for (s, b) in &inner.system_buckets {
            if let Some(b) = b.upgrade() {
                b.set(inner.system_rate(self, s));
            }
        }
        for (d, b) in &inner.device_buckets {
            if let Some(b) = b.upgrade() {
                b.set(inner.device_rate(self, d));
            }
        }
    }

    /// The limit in force for a system (its own, else the relay's default).
    pub fn system_rate(&self, system: &Name) -> Option<Rate> {
        self.lock().system_rate(self, system)
    }

    /// The limit in force for a device of its own (its own, else the default).
    pub fn device_rate(&self, device: &DeviceId) -> Option<Rate> {
        self.lock().device_rate(self, device)
    }
}

/// A stream's buckets: its system's, its device's, and for a stream that
/// a device opened, the opener's.
#[derive(Clone)]
pub struct Shaper {
    system: Arc<Bucket>,
    device: Arc<Bucket>,
    opener: Option<Arc<Bucket>>,
}

impl Pace for Shaper {
    fn take(&self, dir: SpliceDirection, n: usize) -> Option<PaceWait> {
        let now = Instant::now();
        let mut wait = self
            .system
            .charge(dir, n, now)
            .max(self.device.charge(dir, n, now));
        if let Some(o) = &self.opener {
            wait = wait.max(o.charge(dir, n, now));
        }
        if wait.is_zero() {
            return None;
        }
        let (mut a, mut b) = (
            self.system.changed.subscribe(),
            self.device.changed.subscribe(),
        );
        let mut c = self.opener.as_ref().map(|o| o.changed.subscribe());
        Some(Box::pin(async move {
            let opener = async {
                match &mut c {
                    Some(c) => c.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = a.changed() => {}
                _ = b.changed() => {}
                _ = opener => {}
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(bps: u64, burst: u64) -> Rate {
        Rate::with_burst(bps, burst).unwrap()
    }

    fn id(s: &str, d: &str) -> DeviceId {
        DeviceId::new(Name::parse(s).unwrap(), Name::parse(d).unwrap())
    }

    /// The bytes a bucket lets through in `secs` of virtual time, in
    /// packets of `packet` bytes sent as soon as allowed.
    fn through(b: &Bucket, dir: SpliceDirection, packet: usize, secs: f64) -> u64 {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let (mut at, mut sent) = (start, 0u64);
        while at < end {
            at += b.charge(dir, packet, at);
            if at >= end {
                break;
            }
            sent += packet as u64;
        }
        sent
    }

    #[test]
    fn a_bucket_holds_its_rate_after_the_burst() {
        let b = Bucket::new(Some(rate(1_000_000, 100_000)));
        let sent = through(&b, SpliceDirection::Forward, 32 * 1024, 10.0);
        // 10 s at 1 MB/s, plus the burst, within one packet.
        let want = 10_000_000 + 100_000;
        assert!(sent.abs_diff(want) <= 2 * 32 * 1024, "{sent} vs {want}");
        // The other direction has a bucket of its own.
        let back = through(&b, SpliceDirection::Back, 1000, 1.0);
        assert!(back.abs_diff(1_100_000) <= 2000, "{back}");
    }

    #[test]
    fn no_rate_never_waits_and_a_change_applies_at_once() {
        let b = Bucket::new(None);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(
                b.charge(SpliceDirection::Forward, 1 << 20, now),
                Duration::ZERO
            );
        }
        b.set(Some(rate(1000, 64 * 1024)));
        assert_eq!(*b.changed.borrow(), 1);
        let now = Instant::now();
        assert_eq!(
            b.charge(SpliceDirection::Forward, 64 * 1024, now),
            Duration::ZERO
        );
        let wait = b.charge(SpliceDirection::Forward, 1000, now);
        assert!(
            wait.abs_diff(Duration::from_secs(1)) < Duration::from_millis(5),
            "{wait:?}"
        );
        b.set(None);
        assert_eq!(
            b.charge(SpliceDirection::Forward, 1 << 30, Instant::now()),
            Duration::ZERO
        );
    }

    #[test]
    fn stored_limits_win_over_defaults_and_reach_live_streams() {
        let bw = Bandwidth::new(Some(rate(10_000_000, 1_000_000)), None);
        let dev1 = id("tau", "dev1");
        let shaper = bw.shaper(&dev1);
        assert_eq!(shaper.system.rate(), Some(rate(10_000_000, 1_000_000)));
        assert_eq!(shaper.device.rate(), None);
        let mine = rate(2_000_000, 200_000);
        bw.set(vec![
            StoredRate {
                system: dev1.system.clone(),
                device: None,
                rate: mine,
            },
            StoredRate {
                system: dev1.system.clone(),
                device: Some(dev1.name.clone()),
                rate: rate(1000, 65_536),
            },
        ]);
        assert_eq!(
            shaper.system.rate(),
            Some(mine),
            "a live stream sees the new limit"
        );
        assert_eq!(shaper.device.rate(), Some(rate(1000, 65_536)));
        // Another stream to the same device shares its buckets.
        assert!(Arc::ptr_eq(&bw.shaper(&dev1).device, &shaper.device));
        bw.set(Vec::new());
        assert_eq!(
            shaper.system.rate(),
            Some(rate(10_000_000, 1_000_000)),
            "back to the default"
        );
        assert_eq!(bw.device_rate(&dev1), None);
        drop(shaper);
        bw.set(Vec::new());
        assert!(
            bw.lock().device_buckets.is_empty(),
            "buckets go with their streams"
        );
    }

    #[test]
    fn a_stream_a_device_opened_is_paced_by_the_opener_too() {
        let bw = Bandwidth::new(None, None);
        let (gw, dev1) = (id("tau", "gw"), id("tau", "dev1"));
        assert!(!bw.limited(&dev1));
        bw.set(vec![StoredRate {
            system: gw.system.clone(),
            device: Some(gw.name.clone()),
            rate: rate(1000, 65_536),
        }]);
        assert!(bw.limited(&gw) && !bw.limited(&dev1));
        // To dev1 alone: not paced; opened by the limited gateway: paced.
        assert!(
            bw.shaper(&dev1)
                .take(SpliceDirection::Forward, 1 << 20)
                .is_none()
        );
        let s = bw.shaper_from(&dev1, &gw);
        assert!(
            s.take(SpliceDirection::Forward, 65_536).is_none(),
            "the burst"
        );
        assert!(s.take(SpliceDirection::Back, 1 << 20).is_some());
        assert!(bw.shaper_from(&gw, &gw).opener.is_none(), "one bucket once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_stream_goes_on_when_its_limit_is_cleared() {
        let bw = Bandwidth::new(None, None);
        let dev1 = id("tau", "dev1");
        bw.set(vec![StoredRate {
            system: dev1.system.clone(),
            device: None,
            rate: rate(1000, 65_536),
        }]);
        let shaper = bw.shaper(&dev1);
        assert!(
            shaper.take(SpliceDirection::Forward, 65_536).is_none(),
            "the burst"
        );
        let wait = shaper.take(SpliceDirection::Forward, 100_000).unwrap();
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(wait);
        tokio::task::yield_now().await;
        bw.set(Vec::new());
        waiting.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "waited the old limit out"
        );
    }
}
