//! Server time of the web console and the HTTP API at scale: the devices
//! page and the API's device list with N devices, an audit page and a
//! filtered audit page over M events, and the CSV export rate.
//!
//! `cargo run --release --example bench_web -- [DEVICES] [EVENTS]`
//! (defaults 10000 and 1000000). Prints one JSON object.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warren::audit::{Event, kind};
use warren::protocol::device_info::DeviceInfo;
use warren::protocol::{Name, Role};
use warren::relay::{Relay, RelayOptions};
use warren::store::credentials::{CredKind, NewCredential};

/// Best of `n` runs of `f`, and the last body.
async fn best<F, Fut>(n: usize, mut f: F) -> (Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut best = Duration::MAX;
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        size = f().await;
        best = best.min(t.elapsed());
    }
    (best, size)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(10_000);
    let events = args.get(1).copied().unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let server = Relay::open(dir.path(), RelayOptions::default())?;
    let relay = server.relay().clone();
    let store = relay.store().clone();
    store.add_system(&Name::parse("tau")?)?;
    eprintln!("adding {devices} devices and {events} audit events…");
    let peer: SocketAddr = "192.0.2.1:40000".parse()?;
    for i in 0..devices {
        store.device_up(
            "tau",
            &format!("dev{i:05}"),
            peer,
            &[22],
            &DeviceInfo::default(),
        )?;
    }
    let t0 = 1_700_000_000_000u64;
    let mut done = 0;
    while done < events {
        let n = (events - done).min(50_000);
        let batch: Vec<Event> = (done..done + n)
            .map(|i| {
                let mut e = Event::new(kind::STREAM_CLOSE, "closed")
                    .system("tau")
                    .device(format!("dev{:05}", i % devices.max(1)))
                    .key_name("alice")
                    .target("dev:22")
                    .detail("closed");
                e.time_ms = t0 + i as u64 * 100;
                e
            })
            .collect();
        store.append_audit(&batch)?;
        done += n;
        eprint!("\r{done} events");
    }
    eprintln!();
    let token = store
        .issue_credential(&NewCredential {
            kind: CredKind::Token,
            system: None,
            role: Role::Admin,
            who: "bench",
            now: warren::store::now(),
            ttl_secs: 3600,
        })?
        .secret;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let ssh = TcpListener::bind("127.0.0.1:0").await?;
    tokio::spawn(server.serve(ssh, stop.clone()));
    let web = warren::web::Web {
        relay,
        secure: false,
    };
    tokio::spawn(warren::web::serve(listener, web, stop.clone()));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, token, base) = (http.clone(), token.clone(), base.clone());
        async move {
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.bytes().await.unwrap().len()
        }
    };
    let mid = t0 + (events as u64 / 2) * 100;
    let range = |ms: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    let (api_list, _) = best(5, || get("/api/v1/devices?limit=100".into())).await;
    let (api_sorted, _) = best(5, || {
        get("/api/v1/devices?limit=100&sort=-last_seen&status=online".into())
    })
    .await;
    let (page, page_bytes) = best(5, || get("/devices?limit=100".into())).await;
    let (audit, _) = best(5, || get("/api/v1/audit?limit=100".into())).await;
    let filtered = format!(
        "/api/v1/audit?limit=100&device=dev00042&since={}&until={}",
        range(mid),
        range(mid + 3_600_000_000)
    );
    let (audit_filtered, _) = best(5, || get(filtered.clone())).await;
    let (log_page, _) = best(5, || get("/log".into())).await;
    let t = Instant::now();
    let csv_bytes = get("/api/v1/audit.csv".into()).await;
    let csv = t.elapsed();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "devices": devices,
            "events": events,
            "api_devices_page_ms": ms(api_list),
            "api_devices_sorted_filtered_ms": ms(api_sorted),
            "console_devices_page_ms": ms(page),
            "console_devices_page_bytes": page_bytes,
            "api_audit_page_ms": ms(audit),
            "api_audit_filtered_range_ms": ms(audit_filtered),
            "console_log_page_ms": ms(log_page),
            "csv_seconds": ms(csv) / 1000.0,
            "csv_events_per_second": (events as f64 / csv.as_secs_f64()).round(),
            "csv_megabytes": csv_bytes as f64 / 1e6,
        })
    );
    stop.cancel();
    Ok(())
}
