//! The audit CSV export of 100,000 events streams in constant memory. In a
//! test binary of its own: it reads this process's peak memory.

mod common;

use common::web::TestWeb;
use common::*;
use warren::audit::{Event, kind};
use warren::protocol::Role;

/// This process's resident memory now and at its peak since the last
/// reset, in bytes (Linux `/proc/self/status`).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Resets the peak (`VmHWM`) to the current resident size.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_export_of_100000_events_streams_in_constant_memory() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let detail = "x".repeat(1000);
    for batch in 0..10u64 {
        let events: Vec<Event> = (0..10_000u64)
            .map(|i| {
                let mut e = Event::new(kind::STREAM_CLOSE, "closed")
                    .system("tau")
                    .device(format!("dev{}", i % 100))
                    .detail(detail.as_str());
                e.time_ms = 1_700_000_000_000 + (batch * 10_000 + i) * 10;
                e
            })
            .collect();
        r.store().append_audit(&events).unwrap();
    }
    let token = w.token("tau", Role::Admin);
    let mut resp = w
        .http
        .get(w.url("api/v1/audit.csv"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    reset_peak();
    let (start, _) = memory();
    let (mut bytes, mut lines, mut last_id) = (0usize, 0usize, String::new());
    let mut tail = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        tail.extend_from_slice(&chunk);
        if let Some(pos) = tail.iter().rposition(|b| *b == b'\n') {
            let done: Vec<u8> = tail.drain(..=pos).collect();
            let text = String::from_utf8(done).unwrap();
            if let Some(l) = text.lines().last() {
                last_id = l.split(',').next().unwrap().to_string();
            }
        }
    }
    let (_, peak) = memory();
    assert_eq!(lines, 100_001, "a header and every event");
    assert_eq!(last_id, "1", "the oldest event comes last");
    assert!(
        bytes > 100_000_000,
        "{bytes} bytes: the export is larger than the bound below"
    );
    // What stays: the store's page caches, the allocator's arenas and the
    // HTTP buffers, a fixed amount (12-14 MB here, for 37 MB or 107 MB exported).
    let grew = peak.saturating_sub(start);
    eprintln!("peak memory grew by {grew} bytes while exporting {bytes} bytes");
    assert!(
        grew < 20_000_000,
        "peak memory grew by {grew} bytes while exporting {bytes} bytes"
    );
}
