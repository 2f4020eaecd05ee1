//! Each system's fair share of the relay's workers ([`crate::ssh::fair`]):
//! every connection of a system, controllers and devices, takes its bulk
//! turns in the system's one share, with a turn per runtime worker; while
//! another system is active, a system's bulk work keeps one turn back.
//!
//! `WARREN_TRACE_SYSTEM=NAME` (for benchmarks) times that system's
//! messages through the relay into the metric
//! `warren_traced_relay_delay_seconds`; `WARREN_FAIR_KEEP=0` turns keeping
//! a turn back off, to measure without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::protocol::Name;
use crate::ssh::fair::{self, Share, Tenants, Trace};

pub struct Shares {
    turns: usize,
    tenants: Arc<Tenants>,
    traced: Option<String>,
    map: Mutex<HashMap<Name, Share>>,
    /// Systems in the map after the last pruning.
    pruned_at: Mutex<usize>,
}

impl Shares {
    /// Shares of one turn per worker of the current runtime.
    pub fn per_worker() -> Shares {
        let mut s = Shares::new(fair::workers());
        s.traced = std::env::var("WARREN_TRACE_SYSTEM").ok();
        if std::env::var("WARREN_FAIR_KEEP").is_ok_and(|v| v == "0") {
            s.tenants = Tenants::keeping(false);
        }
        s
    }

    pub fn new(turns: usize) -> Shares {
        Shares {
            turns,
            tenants: Tenants::new(),
            traced: None,
            map: Mutex::default(),
            pruned_at: Mutex::new(0),
        }
    }

    /// The share of `system` (made on first use).
    pub fn share(&self, system: &Name) -> Share {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(system) {
            return s.clone();
        }
        let mut pruned = self.pruned_at.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 2 * (*pruned).max(64) {
            map.retain(|_, s| !s.unused());
            *pruned = map.len();
        }
        let trace = (self.traced.as_deref() == Some(system.as_str()))
            .then(|| Trace::new(|d| crate::metrics::global().traced_delay(d)));
        let s = self.tenants.share(self.turns, trace);
        map.insert(system.clone(), s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_share_per_system_and_unused_ones_go() {
        let shares = Shares::new(2);
        let tau = Name::parse("tau").unwrap();
        let a = shares.share(&tau);
        assert!(a.same(&shares.share(&tau)));
        assert!(!a.same(&shares.share(&Name::parse("rho").unwrap())));
        assert_eq!(a.size(), 2);
        for i in 0..200 {
            shares.share(&Name::parse(&format!("s{i}")).unwrap());
        }
        let n = shares.map.lock().unwrap().len();
        assert!(n < 150, "unused shares were pruned: {n}");
        assert!(a.same(&shares.share(&tau)), "a share in use stays");
    }
}
