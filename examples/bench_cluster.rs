//! Cluster benchmark on loopback (run by `bench/cluster`, which starts a
//! PostgreSQL server of its own):
//!
//! 1. the relay-to-relay hop: round trip and throughput of an echo stream
//!    to a device on relay A, from a controller on A (direct) and on B (one
//!    hop), in this process;
//! 2. logins per second on a relay with SQLite and with PostgreSQL, in this
//!    process;
//! 3. three relays on one database with `--devices` idle devices each, each
//!    relay a process of its own (this program with `relay`) and the devices
//!    logged in by loader processes (`devices`) of at most
//!    `--per-loader` devices each (open files stay under 20,000 a process):
//!    registration time, and each relay process's memory growth per device.
//!
//!   cargo run --release --example bench_cluster -- --database postgres://… [--devices 1000] [--json]

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
    devices: usize,
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
        devices: 1000,
        logins: 200,
        rtts: 500,
        mib: 64,
        per_loader: 5000,
        scale_only: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--database" => a.database = value()?,
            "--devices" => a.devices = value()?.parse()?,
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
struct Scale {
    relays: usize,
    devices_per_relay: usize,
    loaders: usize,
    /// From the loaders' start signal until every device is registered.
    registration_s: f64,
    /// Until the database shows every device online (status writes lag).
    all_online_in_store_s: f64,
    /// Each relay process's resident memory growth, per device it holds.
    rss_growth_kib_per_device: Vec<f64>,
    rss_before_mib: Vec<f64>,
    rss_after_mib: Vec<f64>,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A child process of this program (`relay` or `devices`), killed when
/// dropped; it reports on stdout, one line at a time.
struct Child {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    fn spawn(args: &[String]) -> Result<Child> {
        use std::process::Stdio;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench process")?;
        let out = child.stdout.take().context("no stdout")?;
        Ok(Child {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out)),
        })
    }

    async fn line(&mut self) -> Result<String> {
        self.lines
            .next_line()
            .await?
            .context("a bench process ended early (see its error above)")
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(stdin.flush().await?)
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// `bench_cluster relay --database URL`: one relay on 127.0.0.1:0; prints
/// `ADDR HOSTKEY`, serves until stdin closes.
async fn relay_process(database: &str) -> Result<()> {
    let r = relay(Some(database)).await?;
    println!("{} {}", r.addr, r.relay.host_key());
    let mut rest = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut rest).await;
    Ok(())
}

/// `bench_cluster devices --database URL --relay ADDR --host-key FP --first
/// I --count N`: adds keys for devices dI… of system fleet, prints `ready`,
/// waits for `go`, registers them 8 at a time, prints `registered SECONDS`,
/// holds them until stdin closes.
async fn devices_process(flags: &std::collections::HashMap<String, String>) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let get = |k: &str| flags.get(k).with_context(|| format!("--{k} is required"));
    let (first, count): (usize, usize) = (get("first")?.parse()?, get("count")?.parse()?);
    let store = Store::open_postgres(get("database")?)?;
    let mut keys = Vec::with_capacity(count);
    for i in first..first + count {
        keys.push((i, add_key(&store, "fleet", Role::Device, &format!("d{i}"))?));
    }
    let target = Arc::new((get("relay")?.clone(), get("host-key")?.clone()));
    println!("ready");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while stdin.next_line().await?.context("no go")? != "go" {}
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = Vec::new();
    for (i, key) in keys {
        let (target, permit) = (target.clone(), sem.clone().acquire_owned().await?);
        tasks.push(tokio::spawn(async move {
            let tcp = client::dial(&target.0, Duration::from_secs(30)).await?;
            let opts = ConnectOptions {
                user: "fleet".into(),
                key,
                host_key: target.1.clone(),
                dead_after: Duration::from_secs(600),
            };
            let c = client::connect(tcp, &opts, NoForwards).await?;
            c.register(&format!("d{i}"), 22).await?;
            drop(permit);
            Ok::<_, anyhow::Error>(c)
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(t.await??);
    }
    println!("registered {:.3}", t.elapsed().as_secs_f64());
    while stdin.next_line().await?.is_some() {}
    drop(conns);
    Ok(())
}

/// Loader processes for each relay's devices, at most `--per-loader` each.
fn spawn_loaders(a: &Args, relays: &[(String, String)]) -> Result<Vec<Child>> {
    let url = a.database.as_str();
    let mut loaders = Vec::new();
    for (r, (addr, fp)) in relays.iter().enumerate() {
        let mut first = r * a.devices;
        let end = first + a.devices;
        while first < end {
            let count = a.per_loader.min(end - first);
            let args: Vec<String> = [
                "devices",
                "--database",
                url,
                "--relay",
                addr,
                "--host-key",
                fp,
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--first".into(),
                first.to_string(),
                "--count".into(),
                count.to_string(),
            ])
            .collect();
            loaders.push(Child::spawn(&args)?);
            first += count;
        }
    }
    Ok(loaders)
}

async fn scale(a: &Args) -> Result<Scale> {
    let url = a.database.as_str();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let mut c = Child::spawn(&["relay".into(), "--database".into(), url.into()])?;
        let line = c.line().await?;
        let (addr, fp) = line.split_once(' ').context("relay line")?;
        relays.push((addr.to_string(), fp.to_string(), c));
    }
    let store = Store::open_postgres(url)?;
    store.add_system(&Name::parse("fleet")?)?;
    let targets: Vec<(String, String)> =
        relays.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    let mut loaders = spawn_loaders(a, &targets)?;
    eprintln!("scale: {} loader processes adding keys …", loaders.len());
    for l in &mut loaders {
        if l.line().await? != "ready" {
            bail!("a loader did not get ready");
        }
    }
    let before: Vec<u64> = relays.iter().map(|r| rss_kib(r.2.pid())).collect();
    eprintln!("scale: registering {} devices …", 3 * a.devices);
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
    let want = 3 * a.devices;
    loop {
        let online = store
            .devices(Some("fleet"))?
            .iter()
            .filter(|d| d.online)
            .count();
        if online >= want {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {online} of {want} devices online in the store after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_online_in_store_s = t.elapsed().as_secs_f64();
    let after: Vec<u64> = relays.iter().map(|r| rss_kib(r.2.pid())).collect();
    let mib = |v: &[u64]| v.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>();
    Ok(Scale {
        relays: relays.len(),
        devices_per_relay: a.devices,
        loaders: loaders.len(),
        registration_s,
        all_online_in_store_s,
        rss_growth_kib_per_device: before
            .iter()
            .zip(&after)
            .map(|(b, a2)| a2.saturating_sub(*b) as f64 / a.devices.max(1) as f64)
            .collect(),
        rss_before_mib: mib(&before),
        rss_after_mib: mib(&after),
    })
}

#[derive(Debug, Serialize)]
struct Report {
    hop: Vec<Path>,
    logins: Vec<Logins>,
    scale: Scale,
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
    eprintln!("scale: 3 relays × {} idle devices …", a.devices);
    let scale = scale(&a).await?;
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
    let s = &report.scale;
    let per: Vec<String> = s
        .rss_growth_kib_per_device
        .iter()
        .map(|k| format!("{k:.1}"))
        .collect();
    println!(
        "{} relays × {} idle devices ({} loader processes): registered in {:.1} s, all online in the store after {:.1} s; relay memory per device {} KiB",
        s.relays,
        s.devices_per_relay,
        s.loaders,
        s.registration_s,
        s.all_online_in_store_s,
        per.join(" / ")
    );
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
    devices_process(&flags).await
}
