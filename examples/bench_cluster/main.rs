//! Cluster benchmark on loopback (run by `bench/cluster`, which starts a
//! PostgreSQL server of its own):
//!
//! 1. the relay-to-relay hop: round trip and throughput of an echo stream
//!    to a device on relay A, from a controller on A (direct) and on B (one
//!    hop), in this process;
//! 2. logins per second on a relay with SQLite and with PostgreSQL, in this
//!    process;
//! 3. `--relays` relays on one database with `--devices` idle devices homed
//!    on each (`scale.rs`), each relay a process of its own (this program
//!    with `relay`) and the devices held by loader processes (`devices`,
//!    `loader.rs`) of at most `--per-loader` devices each (open files stay
//!    under 20,000 a process): registration time, time until the database
//!    shows them all online, each relay's memory per device, and streams
//!    from every relay to a sample of every relay's devices; with `--kill`,
//!    one relay killed (SIGKILL) while its devices move to the others
//!    (`kill.rs`: when they are registered again, claimed in the store,
//!    known to each survivor's holder map, and reachable from every survivor).
//!
//!   cargo run --release --example bench_cluster -- --database postgres://… [--relays 3]
//!     [--devices 1000] [--per-loader 18000] [--connecting 32] [--sample 20] [--kill]
//!     [--scale-only] [--json]

mod kill;
mod loader;
mod procs;
mod scale;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use warren::agent::{self, AgentEvent, AgentSettings};
use warren::protocol::{AllowList, Name, Role};
use warren::relay::{Relay, RelayOptions};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::Store;

struct Args {
    database: String,
    relays: usize,
    devices: usize,
    /// Devices connecting at once, per loader process.
    connecting: usize,
    /// Devices of each relay that streams are opened to, from every relay.
    sample: usize,
    /// Kill one relay (SIGKILL) once every device is reachable.
    kill: bool,
    /// With `--kill`: poll the store and the survivors' maps only once every
    /// device is registered again (`--quiet-move`), so that the polling adds
    /// no load while they move; the claimed and learned times are then
    /// upper bounds.
    quiet_move: bool,
    /// One relay on SQLite (no database): the single relay's figures,
    /// measured the same way.
    sqlite: bool,
    logins: usize,
    rtts: usize,
    mib: usize,
    per_loader: usize,
    /// Only the idle devices' part (`--scale-only`).
    scale_only: bool,
    json: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        database: String::new(),
        relays: 3,
        devices: 1000,
        connecting: 32,
        sample: 20,
        kill: false,
        quiet_move: false,
        sqlite: false,
        logins: 200,
        rtts: 500,
        mib: 64,
        per_loader: 18000,
        scale_only: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database" => a.database = value()?,
            "--relays" => a.relays = value()?.parse()?,
            "--devices" => a.devices = value()?.parse()?,
            "--connecting" => a.connecting = value()?.parse()?,
            "--sample" => a.sample = value()?.parse()?,
            "--kill" => a.kill = true,
            "--quiet-move" => a.quiet_move = true,
            "--sqlite" => a.sqlite = true,
            "--logins" => a.logins = value()?.parse()?,
            "--rtts" => a.rtts = value()?.parse()?,
            "--mib" => a.mib = value()?.parse()?,
            "--per-loader" => a.per_loader = value()?.parse()?,
            "--json" => a.json = true,
            "--scale-only" => a.scale_only = true,
            other => bail!("unknown option {other}"),
        }
    }
    if a.database.is_empty() {
        bail!("--database postgres://… is required (bench/cluster starts one)");
    }
    if a.quiet_move && !a.kill {
        bail!("--quiet-move changes what --kill polls: give it with --kill");
    }
    if a.sqlite {
        if a.kill {
            bail!("--sqlite is one relay without a database: no --kill");
        }
        a.relays = 1;
    }
    if a.relays == 0 || a.devices == 0 || a.per_loader == 0 {
        bail!("--relays, --devices and --per-loader must be at least 1");
    }
    if a.per_loader > 19_000 {
        bail!(
            "--per-loader {} is over 19,000: a process here may hold 20,000 open files",
            a.per_loader
        );
    }
    if a.kill {
        // The survivors take the killed relay's devices evenly.
        let after = a.devices + a.devices.div_ceil(a.relays.saturating_sub(1).max(1));
        if a.relays < 2 {
            bail!("--kill needs at least 2 relays");
        }
        if after > 19_000 {
            bail!(
                "--kill with {} relays × {} devices leaves {after} devices on each survivor, over \
                 the 19,000 one process may hold here (20,000 open files); use --devices {} or fewer",
                a.relays,
                a.devices,
                19_000 * (a.relays - 1) / a.relays
            );
        }
    }
    Ok(a)
}

/// A relay serving on 127.0.0.1:0 until dropped.
struct Running {
    relay: Arc<Relay>,
    addr: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(database: Option<&str>) -> Result<Running> {
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let server = Relay::open(
        dir.path(),
        RelayOptions {
            database: database.map(str::to_string),
            advertise: Some(addr.clone()),
            ..Default::default()
        },
    )?;
    let relay = server.relay().clone();
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(listener, stop.clone()));
    Ok(Running {
        relay,
        addr,
        stop,
        _dir: dir,
    })
}

fn add_key(store: &Store, system: &str, role: Role, name: &str) -> Result<Arc<PrivateKey>> {
    let key = keys::generate_ed25519()?;
    store.add_key(
        &Name::parse(system)?,
        role,
        &Name::parse(name)?,
        key.public_key(),
    )?;
    Ok(Arc::new(key))
}

async fn login(
    r: &Running,
    user: &str,
    key: Arc<PrivateKey>,
) -> Result<ClientConnection<NoForwards>> {
    let tcp = client::dial(&r.addr, Duration::from_secs(10)).await?;
    let opts = ConnectOptions {
        user: user.into(),
        key,
        host_key: r.relay.host_key().to_string(),
        dead_after: Duration::from_secs(30),
    };
    client::connect(tcp, &opts, NoForwards).await
}

async fn echo_server() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(port)
}

#[derive(Debug, Serialize)]
struct Path {
    via: &'static str,
    rtt_median_us: u128,
    rtt_p99_us: u128,
    echo_mib_per_s: f64,
}

/// Round trips of 64 bytes, then `mib` MiB echoed, through `conn` to dev1.
async fn measure(
    conn: &ClientConnection<NoForwards>,
    port: u16,
    a: &Args,
    via: &'static str,
) -> Result<Path> {
    let ch = conn.open("dev1", u32::from(port)).await?;
    let (mut near, far) = tokio::io::duplex(256 * 1024);
    let (fr, fw) = tokio::io::split(far);
    tokio::spawn(ch.splice_io(fr, fw));
    let mut rtts = Vec::with_capacity(a.rtts);
    let mut buf = [0u8; 64];
    for _ in 0..a.rtts {
        let t = Instant::now();
        near.write_all(&[7u8; 64]).await?;
        near.read_exact(&mut buf).await?;
        rtts.push(t.elapsed().as_micros());
    }
    rtts.sort_unstable();
    let (mut r, mut w) = tokio::io::split(near);
    let total = a.mib * 1024 * 1024;
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(&chunk).await?;
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(())
    });
    let mut got = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < total {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            bail!("stream ended after {got} bytes");
        }
        got += n;
    }
    writer.await??;
    let secs = t.elapsed().as_secs_f64();
    Ok(Path {
        via,
        rtt_median_us: rtts[rtts.len() / 2],
        rtt_p99_us: rtts[rtts.len() * 99 / 100],
        echo_mib_per_s: a.mib as f64 / secs,
    })
}

async fn hop(a: &Args) -> Result<Vec<Path>> {
    let (ra, rb) = (
        relay(Some(&a.database)).await?,
        relay(Some(&a.database)).await?,
    );
    let store = ra.relay.store();
    store.add_system(&Name::parse("tau")?)?;
    let dev = add_key(store, "tau", Role::Device, "dev1")?;
    let alice = add_key(store, "tau", Role::Controller, "alice")?;
    let port = echo_server().await?;
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let settings = AgentSettings {
        relay: ra.addr.clone(),
        system: Name::parse("tau")?,
        name: Name::parse("dev1")?,
        key: dev,
        relay_host_key: ra.relay.host_key().to_string(),
        allow: AllowList::parse(&[format!("127.0.0.1:{port}")]).map_err(anyhow::Error::msg)?,
        dead_after: Duration::from_secs(30),
        labels: Default::default(),
        gateway: Default::default(),
        on_demand: None,
        p2p: true,
        relay_ca: None,
    };
    tokio::spawn(agent::run(settings, stop.clone(), Some(tx)));
    while events.recv().await.context("agent stopped")? != AgentEvent::Online {}
    // The device's claim is in the store before the hop looks it up.
    let mut written = ra.relay.status_written();
    while ra
        .relay
        .store()
        .devices(Some("tau"))?
        .iter()
        .all(|d| !d.online)
    {
        written.changed().await?;
    }
    let direct = login(&ra, "tau", alice.clone()).await?;
    let through = login(&rb, "tau", alice).await?;
    let out = vec![
        measure(&direct, port, a, "direct (relay A)").await?,
        measure(&through, port, a, "one hop (relay B → A)").await?,
    ];
    stop.cancel();
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Logins {
    backend: &'static str,
    logins: usize,
    per_second: f64,
}

/// `n` logins, 8 at a time, each a full SSH handshake and key lookup.
async fn logins(database: Option<&str>, n: usize) -> Result<Logins> {
    let r = Arc::new(relay(database).await?);
    let store = r.relay.store();
    store.add_system(&Name::parse("logins")?)?;
    let key = add_key(store, "logins", Role::Controller, "alice")?;
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (r, key, permit) = (r.clone(), key.clone(), sem.clone().acquire_owned().await?);
        tasks.push(tokio::spawn(async move {
            let c = login(&r, "logins", key).await;
            drop(permit);
            c.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Logins {
        backend: if database.is_some() {
            "postgresql"
        } else {
            "sqlite"
        },
        logins: n,
        per_second: n as f64 / t.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Serialize)]
struct Report {
    hop: Vec<Path>,
    logins: Vec<Logins>,
    scale: scale::Scale,
}

/// `bench_cluster relay --database URL`: one relay on 127.0.0.1:0; prints
/// `ADDR HOSTKEY STORE`, serves until stdin closes. `--database sqlite`:
/// a single relay on SQLite, STORE its data directory.
async fn relay_process(database: &str) -> Result<()> {
    let r = relay(Some(database).filter(|d| *d != "sqlite")).await?;
    let store = if database == "sqlite" {
        r._dir.path().display().to_string()
    } else {
        database.to_string()
    };
    println!("{} {} {store}", r.addr, r.relay.host_key());
    // `hops`: the hop setup phases so far (count and seconds of each);
    // `lookups`: holder lookups that asked the store; `holders …`: see
    // [`holders`].
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "hops" {
            let m = warren::metrics::global();
            let phases: Vec<String> = ["lookup", "connect", "open"]
                .iter()
                .map(|p| {
                    let (n, secs) = m.hop_phase_total(p);
                    format!("{n} {secs}")
                })
                .collect();
            println!("hops {}", phases.join(" "));
        } else if line == "lookups" {
            let n = r
                .relay
                .store()
                .postgres()
                .map_or(0, |pg| pg.holder_queries());
            println!("lookups {n}");
        } else if let Some(ask) = line.strip_prefix("holders ") {
            println!("holders {}", holders(&r, ask)?);
        }
    }
    Ok(())
}

/// `SYSTEM dFIRST COUNT KILLED`: what this relay's holder map says of
/// devices dFIRST… (COUNT of them): `LEARNED NAMING_KILLED UNKNOWN`, where
/// LEARNED held here or by a beating relay other than KILLED, UNKNOWN no
/// entry or a relay whose heartbeat stopped (the store decides).
fn holders(r: &Running, ask: &str) -> Result<String> {
    let v: Vec<&str> = ask.split(' ').collect();
    let [system, first, count, killed] = v[..] else {
        bail!("holders SYSTEM dFIRST COUNT KILLED, not {ask:?}");
    };
    let first: usize = first.strip_prefix('d').context("dFIRST")?.parse()?;
    let count: usize = count.parse()?;
    let pg = r
        .relay
        .store()
        .postgres()
        .context("a relay on PostgreSQL")?;
    let (mut learned, mut naming_killed, mut unknown) = (0, 0, 0);
    for i in first..first + count {
        match pg.holder_known(system, &format!("d{i}")) {
            Some(Some(h)) if h.id == killed => naming_killed += 1,
            Some(_) => learned += 1,
            None => unknown += 1,
        }
    }
    Ok(format!("{learned} {naming_killed} {unknown}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some("relay") | Some("devices") => return child_mode().await,
        _ => {}
    }
    let a = args()?;
    let (mut hop_paths, mut login_rates) = (Vec::new(), Vec::new());
    if !a.scale_only {
        eprintln!(
            "hop: {} round trips, {} MiB echoed, direct and through a second relay …",
            a.rtts, a.mib
        );
        hop_paths = hop(&a).await?;
        eprintln!("logins: {} on SQLite, then on PostgreSQL …", a.logins);
        login_rates = vec![
            logins(None, a.logins).await?,
            logins(Some(&a.database), a.logins).await?,
        ];
    }
    eprintln!("scale: {} relays × {} idle devices …", a.relays, a.devices);
    let scale = scale::scale(&a).await?;
    let report = Report {
        hop: hop_paths,
        logins: login_rates,
        scale,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for p in &report.hop {
        println!(
            "{:<24} rtt median {:>5} µs  p99 {:>6} µs  echo {:>7.1} MiB/s",
            p.via, p.rtt_median_us, p.rtt_p99_us, p.echo_mib_per_s
        );
    }
    for l in &report.logins {
        println!(
            "logins on {:<10} {:>7.1}/s ({} logins, 8 at a time)",
            l.backend, l.per_second, l.logins
        );
    }
    scale::print(&report.scale);
    Ok(())
}

/// `relay` and `devices`: the processes `scale` starts.
async fn child_mode() -> Result<()> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_default();
    let mut flags = std::collections::HashMap::new();
    while let Some(flag) = it.next() {
        let key = flag.strip_prefix("--").context("flags only")?.to_string();
        flags.insert(
            key,
            it.next().with_context(|| format!("{flag} needs a value"))?,
        );
    }
    if mode == "relay" {
        let db = flags.get("database").context("--database is required")?;
        return relay_process(db).await;
    }
    loader::devices_process(&flags).await
}
