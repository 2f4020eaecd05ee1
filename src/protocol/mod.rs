//! The wire contract shared by relay, agent and client: what a name is, what a
//! target is, and every limit and timeout with the reason for its value.
//!
//! Nothing here imports from the rest of the crate.

pub mod address;
pub mod backoff;
pub mod cidr;
pub mod device_info;
pub mod gateway;
pub mod limits;
pub mod names;
pub mod rate;
pub mod target;
pub mod token;

pub use address::{RelayAddress, RelayEndpoint};
pub use backoff::Backoff;
pub use cidr::Cidr;
pub use names::{DeviceId, Name, NameError, Role};
pub use target::{AllowList, Target};

/// A number from `lo..=hi` for jitter (retry delays), drawn from the one
/// random source of the crate (`aws-lc-rs`). Not for secrets: the modulo
/// bias is negligible for delays but would not be for keys.
pub fn jitter(lo: u64, hi: u64) -> u64 {
    let mut b = [0u8; 8];
    // AWS-LC aborts rather than report a failed draw; if it ever did, the
    // zeros give the low end, still a valid delay.
    let _ = aws_lc_rs::rand::fill(&mut b);
    let span = hi.saturating_sub(lo).saturating_add(1);
    lo + u64::from_le_bytes(b) % span
}

#[cfg(test)]
mod tests {
    #[test]
    fn jitter_stays_in_range_and_varies() {
        let draws: Vec<u64> = (0..200).map(|_| super::jitter(500, 1000)).collect();
        assert!(draws.iter().all(|d| (500..=1000).contains(d)));
        assert!(draws.iter().any(|d| *d != draws[0]), "200 equal draws");
        assert_eq!(super::jitter(7, 7), 7);
    }
}
