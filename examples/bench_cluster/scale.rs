//! The cluster at scale: `--relays` relays on one database, each a process
//! of its own, `--devices` idle devices homed on each, held by loader
//! processes; then streams from every relay to a sample of every relay's
//! devices (reachable from any relay), and with `--kill` one relay killed
//! with SIGKILL while its devices move to the others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::Args;
use crate::procs::{Child, anon_pte_kib};
use warren::protocol::{Name, Role};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::store::Store;

#[derive(Debug, Serialize)]
pub struct Scale {
    pub relays: usize,
    pub devices_per_relay: usize,
    pub loaders: usize,
    /// From the loaders' start signal until every device is registered.
    pub registration_s: f64,
    /// Until the database shows every device online (status writes lag).
    pub all_online_in_store_s: f64,
    /// Each relay's growth of RssAnon+VmPTE, per device it holds.
    pub memory_kib_per_device: Vec<f64>,
    pub memory_before_mib: Vec<f64>,
    pub memory_after_mib: Vec<f64>,
    /// Streams from every relay to a sample of every relay's devices.
    pub reach: Reach,
    pub kill: Option<crate::kill::Kill>,
}

#[derive(Debug, Serialize, Default)]
pub struct Reach {
    pub streams: usize,
    pub failures: usize,
    /// Until the relay confirmed the stream (the device accepted it).
    pub opened_p50_ms: f64,
    /// First byte from the relay the device is on, and over a hop.
    pub direct_p50_ms: f64,
    pub hop_p50_ms: f64,
    pub first_byte_p50_ms: f64,
    pub first_byte_p99_ms: f64,
    pub errors: Vec<String>,
    /// Where a hop's setup went on the relays asked (their mean, ms):
    /// finding the relay that holds the device, the connection to it (a
    /// pooled one, or dialed and logged in), the channel opened through it.
    pub hop_phases_mean_ms: Option<HopPhases>,
}

#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct HopPhases {
    pub hops: u64,
    pub lookup: f64,
    pub connect: f64,
    pub open: f64,
}

/// Each relay's hop phase totals so far: (count, seconds) of lookup,
/// connect and open, summed over `relays`.
pub async fn hop_totals(relays: &mut [(String, String, Child)]) -> Result<[(u64, f64); 3]> {
    let mut sum = [(0u64, 0f64); 3];
    for r in relays {
        r.2.send("hops").await?;
        let line = r.2.line().await?;
        let v: Vec<&str> = line
            .strip_prefix("hops ")
            .context("a relay's hop phases")?
            .split(' ')
            .collect();
        for (i, s) in sum.iter_mut().enumerate() {
            s.0 += v.get(2 * i).context("hop phase count")?.parse::<u64>()?;
            s.1 += v.get(2 * i + 1).context("hop phase time")?.parse::<f64>()?;
        }
    }
    Ok(sum)
}

/// The mean of each phase between two [`hop_totals`].
pub fn hop_phases(before: [(u64, f64); 3], after: [(u64, f64); 3]) -> Option<HopPhases> {
    let mean = |i: usize| {
        let n = after[i].0.saturating_sub(before[i].0);
        (after[i].1 - before[i].1) * 1000.0 / n.max(1) as f64
    };
    let hops = after[0].0.saturating_sub(before[0].0);
    (hops > 0).then(|| HopPhases {
        hops,
        lookup: mean(0),
        connect: mean(1),
        open: mean(2),
    })
}

/// Relay processes, each `(address, host key, process)`, and where their
/// store is (the database, or with `--sqlite` the relay's data directory).
async fn start_relays(a: &Args) -> Result<(Vec<(String, String, Child)>, String)> {
    let mut relays = Vec::new();
    let db = if a.sqlite {
        "sqlite"
    } else {
        a.database.as_str()
    };
    let mut store = String::new();
    for _ in 0..a.relays {
        let mut c = Child::spawn(&["relay".into(), "--database".into(), db.into()])?;
        let line = c.line().await?;
        let mut f = line.splitn(3, ' ');
        let (Some(addr), Some(fp), Some(at)) = (f.next(), f.next(), f.next()) else {
            bail!("relay line {line:?}");
        };
        store = at.to_string();
        relays.push((addr.to_string(), fp.to_string(), c));
    }
    Ok((relays, store))
}

/// Loader processes of at most `--per-loader` devices each.
fn spawn_loaders(a: &Args, store: &str, addrs: &str, pins: &str) -> Result<Vec<Child>> {
    let total = a.relays * a.devices;
    let mut loaders = Vec::new();
    let mut first = 0;
    while first < total {
        let count = a.per_loader.min(total - first);
        let mut args: Vec<String> = vec!["devices".into()];
        for (k, v) in [
            ("--database", store.to_string()),
            ("--relays", addrs.to_string()),
            ("--host-keys", pins.to_string()),
            ("--first", first.to_string()),
            ("--count", count.to_string()),
            ("--per-relay", a.devices.to_string()),
            ("--connecting", a.connecting.to_string()),
        ] {
            args.extend([k.to_string(), v]);
        }
        loaders.push(Child::spawn(&args)?);
        first += count;
    }
    Ok(loaders)
}

/// Polls the database (once a second) until `want` fleet devices are online.
async fn wait_online(store: &Store, want: usize, t: Instant) -> Result<f64> {
    loop {
        let s = store.clone();
        let online = tokio::task::spawn_blocking(move || s.devices(Some("fleet")))
            .await??
            .iter()
            .filter(|d| d.online)
            .count();
        if online >= want {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(1200) {
            bail!("only {online} of {want} devices online in the store after 20 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub type Conn = Arc<ClientConnection<NoForwards>>;

/// A controller of `fleet` logged in to each relay.
async fn controllers(store: &Store, relays: &[(String, String)]) -> Result<Vec<Conn>> {
    let key = Arc::new(warren::ssh::keys::generate_ed25519()?);
    store.add_key(
        &Name::parse("fleet")?,
        Role::Controller,
        &Name::parse("prober")?,
        key.public_key(),
    )?;
    let mut out = Vec::new();
    for (addr, fp) in relays {
        let tcp = client::dial(addr, Duration::from_secs(10)).await?;
        let opts = ConnectOptions {
            user: "fleet".into(),
            key: key.clone(),
            host_key: fp.clone(),
            dead_after: Duration::from_secs(600),
        };
        out.push(Arc::new(client::connect(tcp, &opts, NoForwards).await?));
    }
    Ok(out)
}

/// One stream to device `i`: the time until the relay confirmed it, and
/// until its first byte.
async fn first_byte(conn: &Conn, i: usize) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    let fut = async {
        let ch = conn.open(&format!("d{i}"), 22).await?;
        let opened = t.elapsed();
        let b = ch.recv_data().await.context("stream ended before a byte")?;
        ch.close();
        anyhow::ensure!(b.as_ref() == b"w", "unexpected first bytes {b:?}");
        Ok((opened, t.elapsed()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow::anyhow!("no first byte within 10 s"))?
}

/// Streams from each of `conns` to each of `targets`, 16 at a time;
/// `home` says which relay a device is on (for direct against hop).
pub async fn reach(conns: &[Conn], targets: &[usize], home: impl Fn(usize) -> usize) -> Reach {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = JoinSet::new();
    for (r, c) in conns.iter().enumerate() {
        for &i in targets {
            let (c, sem, direct) = (c.clone(), sem.clone(), home(i) == r);
            set.spawn(async move {
                let _permit = sem.acquire().await;
                first_byte(&c, i).await.map(|t| (t, direct))
            });
        }
    }
    let mut out = Reach::default();
    let mut times = Vec::new();
    let mut opened = Vec::new();
    let (mut direct, mut hop) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        out.streams += 1;
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(((o, d), is_direct)) => {
                opened.push(o.as_secs_f64() * 1000.0);
                times.push(d.as_secs_f64() * 1000.0);
                if is_direct { &mut direct } else { &mut hop }.push(d.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                out.failures += 1;
                let e = format!("{e:#}");
                if out.errors.len() < 5 && !out.errors.contains(&e) {
                    out.errors.push(e);
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    opened.sort_by(f64::total_cmp);
    if !times.is_empty() {
        out.opened_p50_ms = opened[opened.len() / 2];
        for v in [&mut direct, &mut hop] {
            v.sort_by(f64::total_cmp);
        }
        out.direct_p50_ms = direct.get(direct.len() / 2).copied().unwrap_or(0.0);
        out.hop_p50_ms = hop.get(hop.len() / 2).copied().unwrap_or(0.0);
        out.first_byte_p50_ms = times[times.len() / 2];
        out.first_byte_p99_ms = times[(times.len() * 99 / 100).min(times.len() - 1)];
    }
    out
}

/// `sample` devices spread over the devices homed on relay `r`.
pub fn sample_of(a: &Args, r: usize) -> Vec<usize> {
    let n = a.sample.min(a.devices).max(1);
    (0..n).map(|j| r * a.devices + j * a.devices / n).collect()
}

pub async fn scale(a: &Args) -> Result<Scale> {
    let (mut relays, store_at) = start_relays(a).await?;
    let store = crate::procs::open_store(&store_at)?;
    store.add_system(&Name::parse("fleet")?)?;
    let targets: Vec<(String, String)> =
        relays.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    let addrs: Vec<&str> = targets.iter().map(|t| t.0.as_str()).collect();
    let pins: Vec<&str> = targets.iter().map(|t| t.1.as_str()).collect();
    let mut loaders = spawn_loaders(a, &store_at, &addrs.join(","), &pins.join(","))?;
    eprintln!("scale: {} loader processes adding keys …", loaders.len());
    for l in &mut loaders {
        if l.line().await? != "ready" {
            bail!("a loader did not get ready");
        }
    }
    let before: Vec<u64> = relays.iter().map(|r| anon_pte_kib(r.2.pid())).collect();
    let total = a.relays * a.devices;
    eprintln!("scale: registering {total} devices …");
    let t = Instant::now();
    for l in &mut loaders {
        l.send("go").await?;
    }
    for l in &mut loaders {
        let line = l.line().await?;
        if !line.starts_with("registered") {
            bail!("a loader said {line:?}");
        }
    }
    let registration_s = t.elapsed().as_secs_f64();
    eprintln!("scale: registered in {registration_s:.1} s; waiting for the database …");
    let all_online_in_store_s = wait_online(&store, total, t).await?;
    let after: Vec<u64> = relays.iter().map(|r| anon_pte_kib(r.2.pid())).collect();
    let conns = controllers(&store, &targets).await?;
    let sample: Vec<usize> = (0..a.relays).flat_map(|r| sample_of(a, r)).collect();
    eprintln!(
        "scale: {} streams, from every relay to {} devices of every relay …",
        conns.len() * sample.len(),
        a.sample
    );
    let per = a.devices;
    let before_hops = hop_totals(&mut relays).await?;
    let mut reached = reach(&conns, &sample, |i| i / per).await;
    reached.hop_phases_mean_ms = hop_phases(before_hops, hop_totals(&mut relays).await?);
    let kill = if a.kill {
        Some(crate::kill::kill_one(a, &mut relays, &mut loaders, &conns).await?)
    } else {
        None
    };
    let mib = |v: &[u64]| v.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>();
    Ok(Scale {
        relays: a.relays,
        devices_per_relay: a.devices,
        loaders: loaders.len(),
        registration_s,
        all_online_in_store_s,
        memory_kib_per_device: before
            .iter()
            .zip(&after)
            .map(|(b, a2)| a2.saturating_sub(*b) as f64 / a.devices.max(1) as f64)
            .collect(),
        memory_before_mib: mib(&before),
        memory_after_mib: mib(&after),
        reach: reached,
        kill,
    })
}

/// The scale part as lines of text.
pub fn print(s: &Scale) {
    let per: Vec<String> = s
        .memory_kib_per_device
        .iter()
        .map(|k| format!("{k:.1}"))
        .collect();
    println!(
        "{} relays × {} idle devices ({} loader processes): registered in {:.1} s, all online in the store after {:.1} s",
        s.relays, s.devices_per_relay, s.loaders, s.registration_s, s.all_online_in_store_s,
    );
    println!(
        "relay memory (RssAnon+VmPTE) per device: {} KiB",
        per.join(" / ")
    );
    let r = &s.reach;
    println!(
        "reachable from any relay: {} streams, {} failed; first byte p50 {:.2} ms (direct {:.2}, over a hop {:.2}), p99 {:.2} ms; confirmed p50 {:.2} ms {:?}",
        r.streams,
        r.failures,
        r.first_byte_p50_ms,
        r.direct_p50_ms,
        r.hop_p50_ms,
        r.first_byte_p99_ms,
        r.opened_p50_ms,
        r.errors
    );
    if let Some(h) = &r.hop_phases_mean_ms {
        println!(
            "hop setup on the relays asked, mean of {} hops: lookup {:.2} ms, connect {:.2} ms, open {:.2} ms",
            h.hops, h.lookup, h.connect, h.open
        );
    }
    if let Some(k) = &s.kill {
        crate::kill::print(k);
    }
}
