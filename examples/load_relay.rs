//! Load test: one relay process holding many idle devices plus many
//! concurrent active streams, with churn, for a set time. Checks that no
//! stream or connection fails, that the relay's file descriptors return to
//! their starting count afterwards (nothing leaked), and that its memory
//! stays flat after warm-up; prints the figures (`--json` for scripts).
//!
//! The documented run (README, "Reliability"):
//!   cargo run --release --example load_relay -- --devices 10000 --streams 200 --duration 10m
//!
//! The test suite runs a short version (tests/load.rs).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use warren::agent::{self, AgentEvent, AgentSettings};
use warren::protocol::{AllowList, Name, Role};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::Store;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub relay_bin: PathBuf,
    /// Idle devices (plain registered connections).
    pub devices: usize,
    /// Devices with an agent serving an echo service, which streams go to.
    pub active_devices: usize,
    /// Concurrent streams, each opening, echoing 16 KiB and closing in a loop.
    pub streams: usize,
    pub duration: Duration,
    /// Idle devices dropped and reconnected per second.
    pub churn_per_sec: u32,
    /// Handshakes at once (the relay lets one address have 32 unauthenticated).
    pub concurrency: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub devices: usize,
    pub streams: usize,
    pub seconds: f64,
    pub connect_seconds: f64,
    pub streams_done: u64,
    pub stream_errors: u64,
    pub reconnects: u64,
    pub reconnect_errors: u64,
    pub relay_fds_start: usize,
    pub relay_fds_loaded: usize,
    pub relay_fds_end: usize,
    pub relay_rss_start_kib: u64,
    pub relay_rss_warm_kib: u64,
    pub relay_rss_end_kib: u64,
    pub relay_rss_peak_kib: u64,
    /// After every client left: what the relay gives back.
    pub relay_rss_after_kib: u64,
    pub relay_threads_start: u64,
    pub relay_threads_end: u64,
}

const STREAM_BYTES: usize = 16 * 1024;

/// Raises this process's open-file limit (children inherit it).
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit failed");
        }
        let target = want.max(lim.rlim_cur);
        if target > lim.rlim_max {
            lim.rlim_max = target;
        }
        lim.rlim_cur = target;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!(
                "cannot raise RLIMIT_NOFILE to {target}: run as root or raise the hard limit (ulimit -Hn)"
            );
        }
    }
    Ok(lim.rlim_cur)
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Relay {
    child: Child,
    pid: u32,
    addr: String,
    host_key: String,
}

async fn start_relay(bin: &Path, data: &Path) -> Result<Relay> {
    let mut child = Command::new(bin)
        .args(["relay", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("WARREN_LOG", "warn,warren::relay=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("relay pid")?;
    let mut lines = BufReader::new(child.stderr.take().context("relay stderr")?).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await? {
            if let Some(rest) = l.split("127.0.0.1:").nth(1)
                && l.contains("relay listening")
            {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return Ok(format!("127.0.0.1:{port}"));
            }
        }
        bail!("relay exited before listening")
    })
    .await
    .context("relay did not start within 30 s")??;
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("relay: {l}");
            }
        }
    });
    let host = keys::load_or_create_host_key(&warren::relay::host_key_path(data))?;
    Ok(Relay {
        child,
        pid,
        addr,
        host_key: keys::fingerprint(host.public_key()).into(),
    })
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

async fn connect(
    addr: &str,
    host_key: &str,
    user: &str,
    key: Arc<PrivateKey>,
) -> Result<ClientConnection<NoForwards>> {
    let tcp = TcpStream::connect(addr).await?;
    let opts = ConnectOptions {
        user: user.into(),
        key,
        host_key: host_key.into(),
        dead_after: Duration::from_secs(300),
    };
    client::connect(tcp, &opts, NoForwards).await
}

async fn idle_device(
    addr: &str,
    host_key: &str,
    name: &str,
    key: Arc<PrivateKey>,
) -> Result<ClientConnection<NoForwards>> {
    let conn = connect(addr, host_key, "tau", key).await?;
    conn.register(name, 22).await?;
    Ok(conn)
}

/// One stream: open, send 16 KiB, read it back, close.
async fn one_stream(conn: &ClientConnection<NoForwards>, dev: &str, port: u16) -> Result<()> {
    let ch = conn.open(dev, u32::from(port)).await?;
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    let msg = vec![0x5a; STREAM_BYTES];
    near.write_all(&msg).await?;
    near.shutdown().await?;
    let mut back = Vec::with_capacity(STREAM_BYTES);
    tokio::time::timeout(Duration::from_secs(30), near.read_to_end(&mut back)).await??;
    drop(near);
    let _ = splice.await;
    if back != msg {
        bail!("{dev}: echoed {} bytes, not {STREAM_BYTES}", back.len());
    }
    Ok(())
}

pub async fn run(cfg: LoadConfig) -> Result<Report> {
    // Each process (this one, the relay) holds one socket per device, and
    // this one also both ends of each stream's echo; plus room for the rest.
    let need = (cfg.devices + cfg.active_devices + cfg.streams * 3) as u64 + 1024;
    raise_nofile(need)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let store = Store::open(&data)?;
    let tau = Name::parse("tau")?;
    store.add_system(&tau)?;
    let mut idle_keys = Vec::with_capacity(cfg.devices);
    for i in 0..cfg.devices {
        let k = Arc::new(keys::generate_ed25519()?);
        store.add_key(
            &tau,
            Role::Device,
            &Name::parse(&format!("i{i}"))?,
            k.public_key(),
        )?;
        idle_keys.push(k);
    }
    let mut active_keys = Vec::new();
    for i in 0..cfg.active_devices {
        let k = Arc::new(keys::generate_ed25519()?);
        store.add_key(
            &tau,
            Role::Device,
            &Name::parse(&format!("a{i}"))?,
            k.public_key(),
        )?;
        active_keys.push(k);
    }
    let alice = Arc::new(keys::generate_ed25519()?);
    store.add_key(
        &tau,
        Role::Controller,
        &Name::parse("alice")?,
        alice.public_key(),
    )?;
    drop(store);

    let mut relay = start_relay(&cfg.relay_bin, &data).await?;
    let pid = relay.pid;
    let mut report = Report {
        devices: cfg.devices,
        streams: cfg.streams,
        relay_fds_start: fd_count(pid),
        relay_rss_start_kib: proc_status(pid, "VmRSS:"),
        relay_threads_start: proc_status(pid, "Threads:"),
        ..Report::default()
    };
    let (addr, host_key) = (relay.addr.clone(), relay.host_key.clone());

    // Active devices: real agents serving an echo service.
    let port = echo_server().await?;
    let stop_agents = CancellationToken::new();
    let (tx, mut events) = mpsc::unbounded_channel();
    for (i, key) in active_keys.iter().enumerate() {
        let settings = AgentSettings {
            relay: addr.clone(),
            system: tau.clone(),
            name: Name::parse(&format!("a{i}"))?,
            key: key.clone(),
            relay_host_key: host_key.clone(),
            allow: AllowList::parse(&[format!("127.0.0.1:{port}")]).map_err(anyhow::Error::msg)?,
            dead_after: Duration::from_secs(60),
            labels: Default::default(),
            gateway: Default::default(),
            on_demand: None,
            p2p: true,
            relay_ca: None,
        };
        let (tx, _) = (tx.clone(), ());
        let (etx, mut erx) = mpsc::unbounded_channel();
        tokio::spawn(agent::run(settings, stop_agents.clone(), Some(etx)));
        tokio::spawn(async move {
            while let Some(e) = erx.recv().await {
                let _ = tx.send(e);
            }
        });
    }
    let mut online = 0;
    while online < cfg.active_devices {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Some(AgentEvent::Online)) => online += 1,
            Ok(Some(_)) => {}
            _ => bail!("only {online} of {} agents came online", cfg.active_devices),
        }
    }

    // Idle devices, `concurrency` handshakes at a time.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, key) in idle_keys.iter().enumerate() {
        let (gate, addr, host_key, key) =
            (gate.clone(), addr.clone(), host_key.clone(), key.clone());
        set.spawn(async move {
            let _p = gate.acquire_owned().await?;
            let c = idle_device(&addr, &host_key, &format!("i{i}"), key)
                .await
                .with_context(|| format!("idle device i{i}"))?;
            anyhow::Ok((i, c))
        });
    }
    let mut idle: Vec<Option<ClientConnection<NoForwards>>> =
        (0..cfg.devices).map(|_| None).collect();
    while let Some(j) = set.join_next().await {
        let (i, c) = j??;
        idle[i] = Some(c);
    }
    report.connect_seconds = started.elapsed().as_secs_f64();
    report.relay_fds_loaded = fd_count(pid);
    eprintln!(
        "load: {} idle + {} active devices up in {:.1} s; relay {} fds, {} MiB",
        cfg.devices,
        cfg.active_devices,
        report.connect_seconds,
        report.relay_fds_loaded,
        proc_status(pid, "VmRSS:") >> 10
    );

    // The run: streams, churn, and a memory sampler.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    // Warm-up: the first third of the run (streams' buffers, allocator
    // arenas); memory after it must stay flat.
    let warm = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let per_conn = 10;
    for c in 0..cfg.streams.div_ceil(per_conn) {
        let conn = Arc::new(connect(&addr, &host_key, "tau", alice.clone()).await?);
        for s in 0..per_conn.min(cfg.streams - c * per_conn) {
            let (conn, stop, done, errors) =
                (conn.clone(), stop.clone(), done.clone(), errors.clone());
            let dev = format!("a{}", (c * per_conn + s) % cfg.active_devices.max(1));
            workers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match one_stream(&conn, &dev, port).await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("stream error: {e:#}");
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
    }
    let sampler = {
        let (stop, peak, warm, done) = (stop.clone(), peak.clone(), warm.clone(), done.clone());
        let warm_at = Instant::now() + cfg.duration / 3;
        let t0 = Instant::now();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let rss = proc_status(pid, "VmRSS:");
                n += 1;
                if n.is_multiple_of(60) {
                    eprintln!(
                        "load: {:>5.0} s  relay {} MiB, {} fds, {} streams done",
                        t0.elapsed().as_secs_f64(),
                        rss >> 10,
                        fd_count(pid),
                        done.load(Ordering::Relaxed)
                    );
                }
                peak.fetch_max(rss, Ordering::Relaxed);
                if Instant::now() >= warm_at && warm.load(Ordering::Relaxed) == 0 {
                    warm.store(rss, Ordering::Relaxed);
                }
            }
        })
    };
    let run_started = Instant::now();
    let mut churn = tokio::time::interval(Duration::from_secs_f64(
        1.0 / f64::from(cfg.churn_per_sec.max(1)),
    ));
    let mut next = 0usize;
    while run_started.elapsed() < cfg.duration {
        churn.tick().await;
        if cfg.churn_per_sec == 0 || cfg.devices == 0 {
            continue;
        }
        let i = next % cfg.devices;
        next += 1;
        if let Some(old) = idle[i].take() {
            old.disconnect().await;
        }
        report.reconnects += 1;
        match idle_device(&addr, &host_key, &format!("i{i}"), idle_keys[i].clone()).await {
            Ok(c) => idle[i] = Some(c),
            Err(e) => {
                eprintln!("reconnect i{i}: {e:#}");
                report.reconnect_errors += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(j) = workers.join_next().await {
        j?;
    }
    let _ = sampler.await;
    report.seconds = run_started.elapsed().as_secs_f64();
    report.streams_done = done.load(Ordering::Relaxed);
    report.stream_errors = errors.load(Ordering::Relaxed);
    report.relay_rss_end_kib = proc_status(pid, "VmRSS:");
    report.relay_rss_warm_kib = warm.load(Ordering::Relaxed);
    report.relay_rss_peak_kib = peak.load(Ordering::Relaxed).max(report.relay_rss_end_kib);
    let closed_idle = idle.iter().flatten().filter(|c| c.is_closed()).count();
    if closed_idle > 0 {
        bail!("{closed_idle} idle devices were disconnected during the run");
    }

    // Everyone leaves; the relay must return to its starting descriptors.
    drop(idle);
    stop_agents.cancel();
    let settle = Instant::now();
    loop {
        report.relay_fds_end = fd_count(pid);
        if report.relay_fds_end <= report.relay_fds_start
            || settle.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.relay_threads_end = proc_status(pid, "Threads:");
    report.relay_rss_after_kib = proc_status(pid, "VmRSS:");
    let _ = relay.child.start_kill();
    let _ = relay.child.wait().await;
    Ok(report)
}

#[derive(Debug, clap::Parser)]
#[command(
    about = "Hold many idle devices and active streams on one relay; report leaks and memory"
)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    #[arg(long, default_value_t = 20)]
    active_devices: usize,
    #[arg(long, default_value_t = 200)]
    streams: usize,
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 10)]
    churn_per_sec: u32,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The warren binary [default: next to this example's directory].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    use clap::Parser;
    let a = Args::parse();
    let relay_bin = match a.relay_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("locating the warren binary")?
            .join("warren"),
    };
    let report = run(LoadConfig {
        relay_bin,
        devices: a.devices,
        active_devices: a.active_devices,
        streams: a.streams,
        duration: a.duration,
        churn_per_sec: a.churn_per_sec,
        concurrency: a.concurrency,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report:#?}");
    }
    if report.stream_errors > 0 || report.reconnect_errors > 0 {
        bail!("errors during the run");
    }
    if report.relay_fds_end > report.relay_fds_start {
        bail!(
            "relay file descriptors leaked: {} at start, {} at end",
            report.relay_fds_start,
            report.relay_fds_end
        );
    }
    Ok(())
}
