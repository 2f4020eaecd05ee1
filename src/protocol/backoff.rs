//! Retry delays for everything that dials the relay again (the agent, the
//! controller's tunnel).

use std::time::Duration;

use super::limits::{BACKOFF_INITIAL, BACKOFF_MAX};

/// Exponential backoff with jitter: each delay is drawn from
/// [d/2, d], with d doubling from [`BACKOFF_INITIAL`] to [`BACKOFF_MAX`].
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let ms = d.as_millis() as u64;
        Duration::from_millis(super::jitter(ms / 2, ms))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::new();
        let mut caps = Vec::new();
        for _ in 0..10 {
            let cap = b.next;
            let d = b.next_delay();
            assert!(
                d <= cap && d >= cap / 2,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
            caps.push(cap.as_secs());
        }
        assert_eq!(caps, vec![1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new();
            for _ in 0..6 {
                b.next_delay();
            }
            seen.insert(b.next_delay().as_millis());
        }
        assert!(
            seen.len() > 10,
            "delays should differ between agents: {seen:?}"
        );
    }
}
