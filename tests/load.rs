//! A short load run (the documented one is 10,000 devices for 10 minutes:
//! examples/load_relay.rs): 500 idle devices, 10 agents and 100
//! concurrent streams, with churn, on one relay process for 30 s (debug
//! build on a shared 2-core machine: connecting is the slow part). No stream
//! or connection fails, the relay's file descriptors return to their start,
//! and its memory after the run is within a bound of its warm-up figure.

#[path = "../examples/load_relay.rs"]
mod load_relay;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_devices_and_a_hundred_streams_with_churn_leak_nothing() {
    let report = load_relay::run(load_relay::LoadConfig {
        relay_bin: env!("CARGO_BIN_EXE_warren").into(),
        devices: 500,
        active_devices: 10,
        streams: 100,
        duration: Duration::from_secs(30),
        churn_per_sec: 10,
        concurrency: 16,
    })
    .await
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.stream_errors, 0);
    assert_eq!(report.reconnect_errors, 0);
    assert!(report.streams_done > 100, "{report:?}");
    assert!(report.reconnects >= 20, "{report:?}");
    assert!(
        report.relay_fds_loaded >= 500,
        "the relay held every device: {report:?}"
    );
    assert!(
        report.relay_fds_end <= report.relay_fds_start,
        "relay fds leaked: {report:?}"
    );
    // Flat after warm-up (the first third of the run): at most 25% (and
    // 16 MiB of slack) above it.
    assert!(
        report.relay_rss_end_kib <= report.relay_rss_warm_kib * 5 / 4 + 16 * 1024,
        "relay memory grew: {report:?}"
    );
}
