//! Benchmark of a registration storm's claims on PostgreSQL, for
//! `bench/claims`: two relays (`relay-a`, `relay-b`) of one cluster on
//! `--database`; for each batch size N, relay A claims N new devices in one
//! `devices_up` call (new rows), then relay B claims the same N in one call
//! (a takeover: every row exists, every claim notifies A that it lost the
//! device). Reports each call's time, and the time until A's holder map
//! (fed by the claims' notifications alone) names B for all N.
//!
//! A tenth of the devices are on demand (each call also writes their flags).
//!
//!   cargo run --example bench_claims -- --database postgres://… --devices 1000,5000 --json

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use warren::protocol::device_info::DeviceInfo;
use warren::store::{DeviceUp, Store};

#[derive(Debug, Parser)]
#[command(about = "Time one relay's batch of device claims on PostgreSQL")]
struct Args {
    /// The cluster's database (`postgres://…`), empty or fresh.
    #[arg(long)]
    database: String,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    devices: Vec<usize>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

fn ups(prefix: &str, n: usize) -> Result<Vec<DeviceUp>> {
    (0..n)
        .map(|i| {
            Ok(DeviceUp {
                system: "bench".into(),
                name: format!("{prefix}{i}"),
                peer: "192.0.2.1:40000".parse()?,
                ports: vec![22],
                info: DeviceInfo {
                    on_demand: i % 10 == 0,
                    ..DeviceInfo::default()
                },
            })
        })
        .collect()
}

/// Waits (on A's change notifications, at most 60 s) until A's holder map
/// names another relay for every device of `ups`.
fn until_known(a: &Store, ups: &[DeviceUp]) -> Result<()> {
    let pg = a.postgres().context("not PostgreSQL")?;
    let notifier = pg.change_notifier();
    let all_known = || {
        ups.iter()
            .all(|u| matches!(pg.holder_known(&u.system, &u.name), Some(Some(_))))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let changed = notifier.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if all_known() {
                    return;
                }
                changed.await;
            }
        })
        .await
    })
    .context("relay A's holder map did not learn every claim within 60 s")
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.devices.contains(&0) {
        bail!("--devices: batch sizes must be at least 1");
    }
    let a = Store::open_postgres(&args.database)?;
    let b = Store::open_postgres(&args.database)?;
    let pga = a.postgres().context("not PostgreSQL")?;
    pga.join("relay-a", Some("127.0.0.1:1"), "SHA256:a")?;
    b.postgres()
        .context("not PostgreSQL")?
        .join("relay-b", Some("127.0.0.1:2"), "SHA256:b")?;
    let started = Instant::now();
    while !pga.listening() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("relay A's listening connection did not come up");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut results = Vec::new();
    for (round, &n) in args.devices.iter().enumerate() {
        let batch = ups(&format!("r{round}d"), n)?;
        if !args.json {
            eprintln!("{n} devices: relay A claims them, then relay B takes them over…");
        }
        let t = Instant::now();
        a.devices_up(&batch)?;
        let new = t.elapsed();
        let t = Instant::now();
        b.devices_up(&batch)?;
        let takeover = t.elapsed();
        until_known(&a, &batch)?;
        let known = t.elapsed();
        let r = serde_json::json!({
            "devices": n,
            "new_claims_ms": ms(new),
            "takeover_ms": ms(takeover),
            "takeover_until_a_knows_all_ms": ms(known),
        });
        if !args.json {
            println!(
                "{n} devices: new claims {:.1} ms, takeover {:.1} ms, until relay A's holder map names B for all {:.1} ms",
                ms(new),
                ms(takeover),
                ms(known)
            );
        }
        results.push(r);
    }
    if args.json {
        println!("{}", serde_json::json!({ "batches": results }));
    }
    Ok(())
}
