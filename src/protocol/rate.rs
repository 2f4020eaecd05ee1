//! Bandwidth limits as people write them (`10M`, `512Ki`, `none`) and as
//! the relay applies them: bytes per second, each direction, with a burst.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::limits::{MAX_RATE, MIN_BURST, MIN_RATE, RATE_BURST_TIME};

/// A bandwidth limit: at most `bytes_per_second` each way, after a burst of
/// `burst` bytes at full speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub bytes_per_second: u64,
    pub burst: u64,
}

impl Rate {
    /// `rate` with the default burst: [`RATE_BURST_TIME`] of it, at least
    /// [`MIN_BURST`].
    pub fn new(bytes_per_second: u64) -> Result<Rate, String> {
        let burst = (bytes_per_second as u128 * RATE_BURST_TIME.as_millis() / 1000) as u64;
        Rate::with_burst(bytes_per_second, burst.max(MIN_BURST))
    }

    /// Checks both values.
    pub fn with_burst(bytes_per_second: u64, burst: u64) -> Result<Rate, String> {
        if !(MIN_RATE..=MAX_RATE).contains(&bytes_per_second) {
            return Err(format!(
                "a rate must be between {} and {} bytes per second (got {bytes_per_second})",
                size(MIN_RATE),
                size(MAX_RATE)
            ));
        }
        if !(MIN_BURST..=MAX_RATE).contains(&burst) {
            return Err(format!(
                "a burst must be between {} and {} bytes (got {burst})",
                size(MIN_BURST),
                size(MAX_RATE)
            ));
        }
        Ok(Rate {
            bytes_per_second,
            burst,
        })
    }

    /// `--rate` and `--burst` as given: `Ok(None)` for `none` (no limit of
    /// its own).
    pub fn parse(rate: &str, burst: Option<&str>) -> Result<Option<Rate>, String> {
        let rate = rate.trim();
        if rate.eq_ignore_ascii_case("none") {
            if burst.is_some() {
                return Err("--burst goes with a rate, not with `none`".into());
            }
            return Ok(None);
        }
        let bps = parse_size(rate.strip_suffix("/s").unwrap_or(rate))
            .map_err(|e| format!("rate {rate:?}: {e}"))?;
        match burst {
            None => Rate::new(bps).map(Some),
            Some(b) => {
                let burst = parse_size(b.trim()).map_err(|e| format!("burst {b:?}: {e}"))?;
                Rate::with_burst(bps, burst).map(Some)
            }
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", size(self.bytes_per_second))?;
        if *self != Rate::new(self.bytes_per_second).unwrap_or(*self) {
            write!(f, " (burst {})", size(self.burst))?;
        }
        Ok(())
    }
}

const UNITS: &[(&str, u64)] = &[
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("K", 1_000),
    ("", 1),
];

/// `10M` (10,000,000), `512Ki` (524,288), `1.5G`, `4096`; an optional
/// trailing `B` (`10MB`); unit letters in any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Some(&(_, mult)) = UNITS.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) else {
        return Err(format!(
            "unknown unit {unit:?} (write bytes per second like 10M, 512K, 1G or 256Ki; none for no limit)"
        ));
    };
    let n: f64 = number
        .parse()
        .map_err(|_| "not a number (write it like 10M, 512K or 1G)".to_string())?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err("out of range".into());
    }
    Ok(bytes.round() as u64)
}

/// The shortest exact form of `n` bytes: `10M`, `512Ki`, `100G`, `1500`.
pub fn size(n: u64) -> String {
    UNITS
        .iter()
        .filter(|(_, mult)| *mult > 1 && n >= *mult && n.is_multiple_of(*mult))
        .min_by_key(|(_, mult)| n / mult)
        .map_or_else(
            || n.to_string(),
            |(unit, mult)| format!("{}{unit}", n / mult),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r = Rate::parse("10M", None).unwrap().unwrap();
        assert_eq!(r.bytes_per_second, 10_000_000);
        assert_eq!(r.burst, 1_000_000, "a tenth of a second");
        assert_eq!(r.to_string(), "10M/s");
        let r = Rate::parse("512Ki/s", Some("128Ki")).unwrap().unwrap();
        assert_eq!((r.bytes_per_second, r.burst), (524_288, 131_072));
        assert_eq!(r.to_string(), "512Ki/s (burst 128Ki)");
        assert_eq!(
            Rate::parse("1.5MB", None)
                .unwrap()
                .unwrap()
                .bytes_per_second,
            1_500_000
        );
        let small = Rate::parse("100K", None).unwrap().unwrap();
        assert_eq!(small.burst, MIN_BURST, "at least the smallest burst");
        assert_eq!(Rate::parse("none", None).unwrap(), None);
        assert_eq!(Rate::parse("NONE", None).unwrap(), None);
        assert_eq!(size(1_500_000), "1500K");
        assert_eq!(size(1234), "1234");
        assert_eq!(size(MAX_RATE), "100G");
        assert_eq!(size(1 << 20), "1Mi");
    }

    #[test]
    fn bad_rates_are_refused_clearly() {
        for (bad, says) in [
            ("", "not a number"),
            ("fast", "unknown unit"),
            ("10X", "unknown unit"),
            ("-5M", "unknown unit"),
            ("0", "out of range"),
            ("12", "between"),
            ("1000G", "between"),
            ("1e400", "unknown unit"),
        ] {
            let e = Rate::parse(bad, None).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let e = Rate::parse("10M", Some("1")).unwrap_err();
        assert!(e.contains("a burst must be between"), "{e}");
        let e = Rate::parse("none", Some("1M")).unwrap_err();
        assert!(e.contains("not with `none`"), "{e}");
    }
}
