//! Load generator for `bench/run`: N idle devices held in one process.
//!
//! Warren mode (default): registers N new ed25519 device keys (`bdev0`,
//! `bdev1`, …) straight into the relay's data directory, then opens N
//! connections, each registering its own name, as `warren agent` would.
//!
//! OpenSSH mode (`--openssh-key`): the same client code against a stock sshd,
//! for comparison. Every connection logs in with one key as `--user` and asks
//! for a remote forward of `127.0.0.1:0` (what `ssh -R 0:…` sends), so sshd
//! holds one listening socket per device, as it would for `ssh -R`.
//!
//! Protocol on stdout/stdin, for the benchmark script:
//!   prints `keys-registered N`, then (with `--wait-go`) waits for one line
//!   on stdin; connects (at most `--concurrency` handshakes at once; a
//!   refused or dropped connection is retried after `--retry-ms` with
//!   jitter, up to `--attempts` times); prints
//!   `all-up UP SECONDS failed F retries R p50 P50 p99 P99 max MAX`, where
//!   SECONDS is the time from "go" until the last device was registered (its
//!   `tcpip-forward` answered) and P50/P99/MAX are per-device times from "go"
//!   to registered; holds every connection until stdin closes (or
//!   SIGINT/SIGTERM), then prints how many were still open and exits.
//!
//! `--rejoin`: while holding, a device whose connection drops (the relay was
//! killed) connects again at once and then every `--retry-ms` (jittered)
//! until it is registered; once every dropped device is back, prints
//! `rejoined N SECONDS refused R p50 P50 p99 P99`, SECONDS from the first
//! drop seen to the last device registered again, R the attempts that failed.
//!
//! `--handshakes SECONDS`: instead of holding devices, `--concurrency`
//! workers log in (key exchange and public-key auth), close and log in again
//! for SECONDS; prints `handshakes N failed F seconds S`.
//!
//! Example:
//!   cargo run --release --example bench_devices -- \
//!     --relay 127.0.0.1:2222 --data /var/lib/warren --host-key SHA256:… --n 1000

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use warren::protocol::{Name, Role};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::Store;

#[derive(Debug, Parser)]
#[command(about = "Hold N idle device connections to a relay (benchmark load generator)")]
struct Args {
    /// Relay (or sshd) address, HOST:PORT.
    #[arg(long)]
    relay: String,
    /// The relay's data directory (Warren mode: keys are registered there).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The relay's host-key fingerprint (SHA256:…).
    #[arg(long)]
    host_key: String,
    /// Number of devices.
    #[arg(long)]
    n: usize,
    /// System name (Warren mode; created if missing).
    #[arg(long, default_value = "tau")]
    system: String,
    /// Device name prefix (Warren mode).
    #[arg(long, default_value = "bdev")]
    prefix: String,
    /// Connections in their handshake at once (the relay caps unauthenticated
    /// connections; sshd has MaxStartups).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Connection attempts per device before it counts as failed.
    #[arg(long, default_value_t = 40)]
    attempts: u64,
    /// Base delay before a retry (the delay is drawn from [base/2, base]).
    #[arg(long, default_value_t = 250)]
    retry_ms: u64,
    /// Wait for a line on stdin after registering keys, before connecting.
    #[arg(long)]
    wait_go: bool,
    /// OpenSSH mode: log in to a stock sshd with this private key.
    #[arg(long)]
    openssh_key: Option<PathBuf>,
    /// OpenSSH mode: the login user.
    #[arg(long, default_value = "root")]
    user: String,
    /// While holding, reconnect devices whose connection dropped (see above).
    #[arg(long)]
    rejoin: bool,
    /// Measure logins per second for this many seconds instead (see above).
    #[arg(long)]
    handshakes: Option<f64>,
    /// Spread connections over this many loopback source addresses,
    /// 127.0.0.2, 127.0.0.3, … (device i binds address i mod N before
    /// connecting), as a fleet comes from many addresses; each address also
    /// keeps its own ephemeral ports. 0: the kernel's choice (127.0.0.1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=254))]
    sources: u16,
}

/// What one device connection needs.
struct Device {
    key: Arc<PrivateKey>,
    user: String,
    /// The forward to request: (address, port).
    forward: (String, u32),
    /// Local address to connect from (`--sources`), if any.
    source: Option<Ipv4Addr>,
}

/// Device `i`'s source address with `--sources n` (see [`Args::sources`]).
fn source_address(i: usize, n: u16) -> Option<Ipv4Addr> {
    if n == 0 {
        return None;
    }
    let k = (i % usize::from(n)) as u8;
    Some(Ipv4Addr::new(127, 0, 0, 2 + k))
}

/// Connects to `relay` from `source` (bound before connecting) or from
/// wherever the kernel picks.
async fn dial(relay: &str, source: Option<Ipv4Addr>) -> Result<TcpStream> {
    let Some(src) = source else {
        return Ok(TcpStream::connect(relay).await?);
    };
    let to: SocketAddr = tokio::net::lookup_host(relay)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{relay}: no IPv4 address"))?;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("binding {src}"))?;
    Ok(sock.connect(to).await?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let devices = prepare(&args)?;
    say(&format!("keys-registered {}", devices.len()))?;

    let mut stdin = BufReader::new(tokio::io::stdin());
    if args.wait_go {
        let mut line = String::new();
        stdin.read_line(&mut line).await?;
    }

    if let Some(secs) = args.handshakes {
        return handshakes(&args, devices, Duration::from_secs_f64(secs)).await;
    }
    let started = Instant::now();
    let total = devices.len();
    let up = connect_all(&args, devices, started).await;
    let mut times: Vec<f64> = up.conns.iter().map(|(t, _)| *t).collect();
    times.sort_by(f64::total_cmp);
    let last = times.last().copied().unwrap_or(0.0);
    let q = |p: f64| {
        if times.is_empty() {
            return 0.0;
        }
        times[((times.len() - 1) as f64 * p).round() as usize]
    };
    say(&format!(
        "all-up {} {:.3} failed {} retries {} p50 {:.3} p99 {:.3} max {:.3}",
        times.len(),
        last,
        total - times.len(),
        up.retries,
        q(0.5),
        q(0.99),
        last
    ))?;
    for e in up.errors.iter().take(5) {
        eprintln!("failed: {e:#}");
    }
    let conns: Vec<_> = up.conns.into_iter().map(|(_, c)| c).collect();
    let conns = if args.rejoin {
        let mut sink = Vec::new();
        tokio::select! {
            c = rejoin(&args, conns, up.devices) => c?,
            _ = stdin.read_to_end(&mut sink) => return Ok(()),
        }
    } else {
        conns
    };

    // Hold until stdin closes or a signal arrives.
    let mut sink = Vec::new();
    tokio::select! {
        _ = stdin.read_to_end(&mut sink) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm() => {}
    }
    let open = conns.iter().filter(|c| !c.is_closed()).count();
    say(&format!("still-open {open} of {}", conns.len()))?;
    Ok(())
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Makes the keys (and, in Warren mode, registers them).
fn prepare(args: &Args) -> Result<Vec<Device>> {
    if let Some(path) = &args.openssh_key {
        let key = Arc::new(keys::read_private(path)?);
        return Ok((0..args.n)
            .map(|i| Device {
                key: key.clone(),
                user: args.user.clone(),
                forward: ("127.0.0.1".to_string(), 0),
                source: source_address(i, args.sources),
            })
            .collect());
    }
    let data = args
        .data
        .as_ref()
        .context("--data is required in Warren mode")?;
    let store = Store::open(data)?;
    let system = Name::parse(&args.system).context("system name")?;
    if !store.systems()?.iter().any(|s| s == system.as_str()) {
        store.add_system(&system)?;
    }
    let mut devices = Vec::with_capacity(args.n);
    for i in 0..args.n {
        let name = format!("{}{i}", args.prefix);
        let key = keys::generate_ed25519()?;
        store
            .add_key(
                &system,
                Role::Device,
                &Name::parse(&name).context("device name")?,
                key.public_key(),
            )
            .with_context(|| format!("registering the key of {name}"))?;
        devices.push(Device {
            key: Arc::new(key),
            user: args.system.clone(),
            forward: (name, 22),
            source: source_address(i, args.sources),
        });
    }
    Ok(devices)
}

/// What `connect_all` got: (seconds from "go" to registered, connection)
/// per device that made it, retries made, errors of those that did not.
struct Up {
    conns: Vec<(f64, ClientConnection<NoForwards>)>,
    /// The devices of `conns`, in the same order.
    devices: Vec<Arc<Device>>,
    retries: u64,
    errors: Vec<anyhow::Error>,
}

/// Opens every connection, at most `concurrency` handshakes at a time.
async fn connect_all(args: &Args, devices: Vec<Device>, started: Instant) -> Up {
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let retries = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for (i, dev) in devices.into_iter().enumerate() {
        let gate = gate.clone();
        let relay = args.relay.clone();
        let host_key = args.host_key.clone();
        let retries = retries.clone();
        let (attempts, retry_ms) = (args.attempts.max(1), args.retry_ms.max(2));
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let conn = connect_one(&relay, &host_key, &dev, attempts, retry_ms, &retries)
                .await
                .with_context(|| format!("device {i} ({})", dev.forward.0))?;
            anyhow::Ok((started.elapsed().as_secs_f64(), conn, Arc::new(dev)))
        });
    }
    let mut up = Up {
        conns: Vec::with_capacity(set.len()),
        devices: Vec::with_capacity(set.len()),
        retries: 0,
        errors: Vec::new(),
    };
    while let Some(joined) = set.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((t, c, d)) => {
                up.conns.push((t, c));
                up.devices.push(d);
            }
            Err(e) => up.errors.push(e),
        }
    }
    up.retries = retries.load(Ordering::Relaxed);
    up
}

async fn connect_one(
    relay: &str,
    host_key: &str,
    dev: &Device,
    attempts: u64,
    retry_ms: u64,
    retries: &AtomicU64,
) -> Result<ClientConnection<NoForwards>> {
    let opts = ConnectOptions {
        user: dev.user.clone(),
        key: dev.key.clone(),
        host_key: host_key.to_string(),
        // Idle devices: keepalives every 100 s from this side (the relay sends
        // its own every 15 s).
        dead_after: Duration::from_secs(300),
    };
    let mut last = None;
    // A loaded relay may close connections past its unauthenticated cap
    // (sshd: MaxStartups); retry like a device would, with jitter.
    for attempt in 0..attempts {
        if attempt > 0 {
            retries.fetch_add(1, Ordering::Relaxed);
            let ms = warren::protocol::jitter(retry_ms / 2, retry_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let tcp = match dial(relay, dev.source).await {
            Ok(t) => t,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match client::connect(tcp, &opts, NoForwards).await {
            Ok(conn) => match conn.register(&dev.forward.0, dev.forward.1).await {
                Ok(_) => return Ok(conn),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Waits until connections drop, connects each dropped device again, and
/// reports once all are back (see the module doc).
async fn rejoin(
    args: &Args,
    conns: Vec<ClientConnection<NoForwards>>,
    devices: Vec<Arc<Device>>,
) -> Result<Vec<ClientConnection<NoForwards>>> {
    let refused = Arc::new(AtomicU64::new(0));
    let first_drop = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut set = JoinSet::new();
    for (conn, dev) in conns.into_iter().zip(devices) {
        let (relay, host_key) = (args.relay.clone(), args.host_key.clone());
        let (refused, first_drop) = (refused.clone(), first_drop.clone());
        let retry_ms = args.retry_ms.max(2);
        set.spawn(async move {
            // Idle connections: a drop is noticed within this poll.
            while !conn.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let dropped = *first_drop.get_or_init(Instant::now);
            drop(conn);
            let conn = connect_one(&relay, &host_key, &dev, u64::MAX, retry_ms, &refused).await?;
            anyhow::Ok((dropped.elapsed().as_secs_f64(), conn))
        });
    }
    let mut back = Vec::new();
    let mut times = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (t, c) = joined??;
        times.push(t);
        back.push(c);
    }
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    say(&format!(
        "rejoined {} {:.3} refused {} p50 {:.3} p99 {:.3}",
        back.len(),
        q(1.0),
        refused.load(Ordering::Relaxed),
        q(0.5),
        q(0.99)
    ))?;
    Ok(back)
}

/// Logs in and out again and again for `length` with `--concurrency`
/// workers, each with its own device key (see the module doc).
async fn handshakes(args: &Args, devices: Vec<Device>, length: Duration) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for dev in devices.into_iter().take(args.concurrency.max(1)) {
        let (relay, host_key) = (args.relay.clone(), args.host_key.clone());
        let (done, failed) = (done.clone(), failed.clone());
        set.spawn(async move {
            let opts = ConnectOptions {
                user: dev.user.clone(),
                key: dev.key.clone(),
                host_key,
                dead_after: Duration::from_secs(30),
            };
            while started.elapsed() < length {
                let ok = match dial(&relay, dev.source).await {
                    Ok(tcp) => client::connect(tcp, &opts, NoForwards).await.is_ok(),
                    Err(_) => false,
                };
                let counter = if ok { &done } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while set.join_next().await.is_some() {}
    say(&format!(
        "handshakes {} failed {} seconds {:.3}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    ))
}
