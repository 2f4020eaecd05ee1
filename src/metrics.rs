//! Prometheus metrics of the relay process, served as text format 0.0.4 on
//! `--metrics ADDR` (`web::serve_metrics`), or OpenMetrics 1.0.0 to a
//! scraper whose `Accept` header asks for it ([`openmetrics`]).
//!
//! Label sets are fixed and small: `system` (tenants, which admins create),
//! `direction`, `result` and `reason` (stable refusal codes). No label names
//! a device, key or peer: a relay with 100,000 devices must not make 100,000
//! series. Most counters move from audit events as they are recorded
//! ([`Metrics::event`]), so a metric and the audit log never disagree about
//! what happened; events that the relay counts but does not record one by
//! one (login floods from one address, see `relay::ratelimit`) count once.
//!
//! One set per process ([`global`]): a process runs one relay; tests that
//! start several read differences.

pub mod openmetrics;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Stream setup: from the controller's `direct-tcpip` to the device's
/// channel open, in seconds. A relay on a LAN is in the low milliseconds; a
/// device on a slow link reaches the open timeout (10 s).
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A store call, queued to a blocking thread and run: SQLite answers in
/// microseconds when idle; a busy disk shows in the upper buckets.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A traced system's message through the relay (`WARREN_TRACE_SYSTEM`, a
/// benchmark's probe): tens of microseconds on an idle relay.
const TRACE_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002,
    0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1,
];

/// The relay's metrics.
pub struct Metrics {
    registry: Registry,
    devices_connected: IntGaugeVec,
    streams_active: IntGauge,
    streams: IntCounterVec,
    bytes: IntCounterVec,
    logins: IntCounter,
    login_failures: IntCounterVec,
    stream_setup: Histogram,
    audit_queue: IntGauge,
    store_calls: Histogram,
    hop_setup: HistogramVec,
    traced_delay: Histogram,
    data_packets: IntCounterVec,
    data_bytes: IntCounterVec,
    /// One render at a time brings the data counters up (two at once
    /// would both add the same difference).
    data_sync: std::sync::Mutex<()>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        // Registration fails only for an invalid or repeated name; the names
        // are fixed, and the unit test `every_metric_registers` builds them.
        #[allow(clippy::expect_used)]
        Metrics::new().expect("metric names are valid and distinct")
    })
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: T,
) -> prometheus::Result<T> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Registers a labelled counter.
fn counters(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// Registers a labelled gauge.
fn gauges(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// Registers a histogram with `buckets` (seconds).
fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
    )
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        gauges(
            &r,
            "warren_build_info",
            "Warren's version; always 1",
            &["version"],
        )?
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        Ok(Metrics {
            devices_connected: gauges(
                &r,
                "warren_devices_connected",
                "Devices online, per system",
                &["system"],
            )?,
            streams_active: register(
                &r,
                IntGauge::new("warren_streams_active", "Streams being spliced now")?,
            )?,
            streams: counters(
                &r,
                "warren_streams_total",
                "Streams asked for, by result (ok, refused) and refusal code",
                &["result", "reason"],
            )?,
            bytes: counters(
                &r,
                "warren_relayed_bytes_total",
                "Bytes of ended streams, per system; up is controller to device",
                &["system", "direction"],
            )?,
            logins: register(
                &r,
                IntCounter::new("warren_logins_total", "SSH logins accepted")?,
            )?,
            login_failures: counters(
                &r,
                "warren_login_failures_total",
                "SSH logins refused, by reason",
                &["reason"],
            )?,
            stream_setup: histogram(
                &r,
                "warren_stream_setup_seconds",
                "Time from a controller's stream request to the device's channel open",
                SETUP_BUCKETS,
            )?,
            audit_queue: register(
                &r,
                IntGauge::new(
                    "warren_audit_queue_depth",
                    "Audit events waiting for the writer",
                )?,
            )?,
            store_calls: histogram(
                &r,
                "warren_store_call_seconds",
                "Store calls from the async side: queue wait plus run time",
                STORE_BUCKETS,
            )?,
            hop_setup: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warren_hop_setup_seconds",
                        "A stream over a hop to another relay, by phase: lookup (of the relay \
                         holding the device), connect (to that relay, or its pooled connection), \
                         open (the channel through it, until the device accepted)",
                    )
                    .buckets(SETUP_BUCKETS.to_vec()),
                    &["phase"],
                )?,
            )?,
            traced_delay: histogram(
                &r,
                "warren_traced_relay_delay_seconds",
                "Messages of the system named by WARREN_TRACE_SYSTEM (a benchmark's probe): \
                 from the relay reading one on a connection to writing it on another",
                TRACE_BUCKETS,
            )?,
            data_packets: counters(
                &r,
                "warren_ssh_data_packets_total",
                "SSH channel data packets received (in) and sent (out), all connections",
                &["direction"],
            )?,
            data_bytes: counters(
                &r,
                "warren_ssh_data_bytes_total",
                "Bytes of data in those packets",
                &["direction"],
            )?,
            data_sync: std::sync::Mutex::new(()),
            registry: r,
        })
    }

    /// Counts one audit event: logins, streams and their bytes.
    pub fn event(&self, e: EventFacts<'_>) {
        match (e.kind, e.result) {
            ("login", "ok") => self.logins.inc(),
            ("login", _) => self
                .login_failures
                .with_label_values(&[e.reason.unwrap_or("other")])
                .inc(),
            ("stream_open", "ok") => {
                self.streams.with_label_values(&["ok", ""]).inc();
                self.streams_active.inc();
            }
            ("stream_open", _) => self
                .streams
                .with_label_values(&["refused", e.reason.unwrap_or("other")])
                .inc(),
            ("stream_close", _) => {
                self.streams_active.dec();
                let system = e.system.unwrap_or("");
                self.bytes
                    .with_label_values(&[system, "up"])
                    .inc_by(e.bytes_up.unwrap_or(0));
                self.bytes
                    .with_label_values(&[system, "down"])
                    .inc_by(e.bytes_down.unwrap_or(0));
            }
            _ => {}
        }
    }

    pub fn stream_setup(&self, took: Duration) {
        self.stream_setup.observe(took.as_secs_f64());
    }

    /// One phase of a hop's setup (`lookup`, `connect`, `open`).
    pub fn hop_phase(&self, phase: &str, took: Duration) {
        self.hop_setup
            .with_label_values(&[phase])
            .observe(took.as_secs_f64());
    }

    /// Count and total seconds of a hop phase so far (the bench's mean).
    pub fn hop_phase_total(&self, phase: &str) -> (u64, f64) {
        let h = self.hop_setup.with_label_values(&[phase]);
        (h.get_sample_count(), h.get_sample_sum())
    }

    pub fn store_call(&self, took: Duration) {
        self.store_calls.observe(took.as_secs_f64());
    }

    /// A traced system's message crossed the relay in `took`.
    pub fn traced_delay(&self, took: Duration) {
        self.traced_delay.observe(took.as_secs_f64());
    }

    /// `n` audit events queued (positive) or written (negative).
    pub fn audit_queued(&self, n: i64) {
        self.audit_queue.add(n);
    }

    /// The text exposition (format 0.0.4), with the devices online now.
    pub fn render(&self, online_per_system: &[(String, usize)]) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.gather(online_per_system), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The exposition a scrape's `Accept` header asks for: OpenMetrics
    /// 1.0.0 only when it names it, else text 0.0.4; and its content type.
    pub fn render_for(
        &self,
        accept: Option<&str>,
        online_per_system: &[(String, usize)],
    ) -> (&'static str, String) {
        if openmetrics::wanted(accept) {
            let families = self.gather(online_per_system);
            (openmetrics::CONTENT_TYPE, openmetrics::encode(&families))
        } else {
            (CONTENT_TYPE, self.render(online_per_system))
        }
    }

    fn gather(
        &self,
        online_per_system: &[(String, usize)],
    ) -> Vec<prometheus::proto::MetricFamily> {
        self.devices_connected.reset();
        for (system, n) in online_per_system {
            self.devices_connected
                .with_label_values(&[system.as_str()])
                .set(*n as i64);
        }
        self.data_counts();
        self.registry.gather()
    }

    /// Brings the data packet counters up to the SSH layer's totals.
    fn data_counts(&self) {
        let _one = self.data_sync.lock().unwrap_or_else(|p| p.into_inner());
        let c = crate::ssh::data_counts();
        for (vec, dir, now) in [
            (&self.data_packets, "in", c.packets_in),
            (&self.data_packets, "out", c.packets_out),
            (&self.data_bytes, "in", c.bytes_in),
            (&self.data_bytes, "out", c.bytes_out),
        ] {
            let counter = vec.with_label_values(&[dir]);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }
}

/// The fields of an audit event that metrics read.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFacts<'a> {
    pub kind: &'a str,
    pub result: &'a str,
    pub reason: Option<&'a str>,
    pub system: Option<&'a str>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_events_count() {
        let m = Metrics::new().unwrap();
        m.event(EventFacts {
            kind: "stream_open",
            result: "ok",
            ..Default::default()
        });
        m.event(EventFacts {
            kind: "stream_close",
            result: "closed",
            system: Some("tau"),
            bytes_up: Some(5),
            bytes_down: Some(7),
            ..Default::default()
        });
        m.event(EventFacts {
            kind: "login",
            result: "refused",
            reason: Some("unknown_key"),
            ..Default::default()
        });
        let text = m.render(&[("tau".into(), 3)]);
        for want in [
            "warren_build_info{version=\"",
            "warren_devices_connected{system=\"tau\"} 3",
            "warren_streams_total{reason=\"\",result=\"ok\"} 1",
            "warren_streams_active 0",
            "warren_relayed_bytes_total{direction=\"up\",system=\"tau\"} 5",
            "warren_relayed_bytes_total{direction=\"down\",system=\"tau\"} 7",
            "warren_login_failures_total{reason=\"unknown_key\"} 1",
            "# TYPE warren_stream_setup_seconds histogram",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        // The SSH layer's data packet counters, brought up at each render
        // (other tests in this process move them: at least what they were).
        let before = crate::ssh::data_counts();
        crate::ssh::proto::mux::counts::count_in(123);
        crate::ssh::proto::mux::counts::count_out(45);
        let text = m.render(&[]);
        let counted = |name: &str, dir: &str| -> u64 {
            let line = format!("warren_ssh_data_{name}_total{{direction=\"{dir}\"}} ");
            let at = text
                .find(&line)
                .unwrap_or_else(|| panic!("{line} not in\n{text}"));
            let rest = &text[at + line.len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        assert!(counted("packets", "in") > before.packets_in);
        assert!(counted("packets", "out") > before.packets_out);
        assert!(counted("bytes", "in") >= before.bytes_in + 123);
        assert!(counted("bytes", "out") >= before.bytes_out + 45);
        // A system gone offline leaves no stale series.
        assert!(!m.render(&[]).contains("warren_devices_connected{"));
    }
}
