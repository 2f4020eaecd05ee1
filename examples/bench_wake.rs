//! Benchmark of on-demand devices (README, "On-demand devices",
//! Benchmarks): a real mosquitto on a loopback port of its own, the
//! `warren relay` binary with `--mqtt`, and in this process an on-demand
//! agent (idle_timeout 1 s) serving an echo service.
//!
//! 1. Wake latency: `--reps` times, wait until the device is asleep, then
//!    time a controller's stream open to the first echoed byte (p50/p99).
//! 2. Memory: the relay's RSS before and after `--devices` more on-demand
//!    devices registered once and went to sleep (as each agent does at its
//!    first start), so what an asleep device costs the relay.
//!
//!   cargo run --release --example bench_wake -- --reps 50 --devices 1000 [--json]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use warren::agent::AgentSettings;
use warren::agent::on_demand::{self, OnDemand, OnDemandEvent};
use warren::mqtt::{BrokerSettings, BrokerUrl, State, Topics};
use warren::protocol::device_info::DeviceInfo;
use warren::protocol::{AllowList, Name, Role};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::Store;

#[derive(Debug, Serialize)]
struct Report {
    wakes: usize,
    open_to_first_byte_ms_p50: f64,
    open_to_first_byte_ms_p99: f64,
    open_to_first_byte_ms_max: f64,
    asleep_devices: usize,
    relay_rss_before_kib: u64,
    relay_rss_after_kib: u64,
    relay_bytes_per_asleep_device: f64,
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// mosquitto, anonymous on loopback (the tests use a password file and ACL).
async fn start_broker(dir: &Path) -> Result<(Child, u16)> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nlog_dest stderr\nmax_connections -1\n"
        ),
    )?;
    let mut child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = lines.next_line().await? {
            if l.contains(" running") {
                return Ok(());
            }
        }
        bail!("mosquitto exited")
    })
    .await
    .context("mosquitto did not start")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, port))
}

async fn start_relay(bin: &Path, data: &Path, mqtt: &str) -> Result<(Child, u32, String)> {
    let mut child = Command::new(bin)
        .args(["relay", "--listen", "127.0.0.1:0", "--mqtt", mqtt, "--data"])
        .arg(data)
        .env("WARREN_LOG", "warn,warren::relay=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("relay pid")?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
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
    .context("relay did not start")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, pid, addr))
}

async fn connect(
    addr: &str,
    host_key: &str,
    key: Arc<PrivateKey>,
) -> Result<ClientConnection<NoForwards>> {
    let tcp = TcpStream::connect(addr).await?;
    let opts = ConnectOptions {
        user: "tau".into(),
        key,
        host_key: host_key.into(),
        dead_after: Duration::from_secs(300),
    };
    client::connect(tcp, &opts, NoForwards).await
}

/// The relay's STATUS of `dev`, from remote `ls --json`.
async fn status_of(conn: &ClientConnection<NoForwards>, dev: &str) -> Result<String> {
    let out = conn.exec("ls --json").await?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let found = list
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == dev))
        .and_then(|d| d["status"].as_str())
        .unwrap_or("missing");
    Ok(found.to_string())
}

/// Polls `ls --json` until `dev` is `want` (a benchmark may poll).
async fn until_status(conn: &ClientConnection<NoForwards>, dev: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(conn, dev).await? != want {
        if Instant::now() > deadline {
            bail!("{dev} not {want} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
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

/// One timed wake: stream open to the first echoed byte.
async fn one_wake(conn: &ClientConnection<NoForwards>) -> Result<Duration> {
    let started = Instant::now();
    let ch = conn.open("dev0", 22).await?;
    let (mut near, far) = tokio::io::duplex(1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    near.write_all(b"x").await?;
    let mut b = [0u8; 1];
    near.read_exact(&mut b).await?;
    let took = started.elapsed();
    drop(near);
    let _ = splice.await;
    Ok(took)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    reps: usize,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// The warren binary [default: next to this example's directory].
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// The keys made before the relay starts: a controller, and devices dev0…devN.
struct Keys {
    controller: Arc<PrivateKey>,
    devices: Vec<Arc<PrivateKey>>,
}

fn make_keys(data: &Path, n: usize) -> Result<Keys> {
    let tau = Name::parse("tau")?;
    let store = Store::open(data)?;
    store.add_system(&tau)?;
    let controller = Arc::new(keys::generate_ed25519()?);
    store.add_key(
        &tau,
        Role::Controller,
        &Name::parse("bench")?,
        controller.public_key(),
    )?;
    let mut devices = Vec::new();
    for i in 0..=n {
        let k = keys::generate_ed25519()?;
        store.add_key(
            &tau,
            Role::Device,
            &Name::parse(&format!("dev{i}"))?,
            k.public_key(),
        )?;
        devices.push(Arc::new(k));
    }
    Ok(Keys {
        controller,
        devices,
    })
}

/// Phase 1: `reps` wakes of dev0 (an on-demand agent in this process);
/// each stream open to first byte, in ms, sorted.
async fn wake_phase(
    addr: &str,
    host_key: &str,
    mqtt: &str,
    key: Arc<PrivateKey>,
    conn: &ClientConnection<NoForwards>,
    reps: usize,
) -> Result<(Vec<f64>, CancellationToken)> {
    let echo = echo_server().await?;
    let od = OnDemand {
        broker: BrokerSettings {
            url: BrokerUrl::parse(mqtt)?,
            username: None,
            password: None,
            ca: None,
            client_cert: None,
        },
        idle_timeout: Duration::from_secs(1),
        topics: Topics::default(),
    };
    let settings = AgentSettings {
        relay: addr.to_string(),
        system: Name::parse("tau")?,
        name: Name::parse("dev0")?,
        key,
        relay_host_key: host_key.to_string(),
        allow: AllowList::parse(&[format!("22=127.0.0.1:{echo}")]).map_err(anyhow::Error::msg)?,
        dead_after: Duration::from_secs(30),
        labels: Default::default(),
        gateway: Default::default(),
        on_demand: Some(od.clone()),
        p2p: true,
        relay_ca: None,
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    tokio::spawn(on_demand::run(settings, od, stop.clone(), Some(tx)));
    let mut took = Vec::new();
    for i in 0..reps {
        until_status(conn, "dev0", "asleep").await?;
        let t = one_wake(conn).await.with_context(|| format!("wake {i}"))?;
        took.push(t.as_secs_f64() * 1000.0);
        // Its idle sleep before the next wake.
        loop {
            match events.recv().await {
                Some(OnDemandEvent::State {
                    state: State::Asleep,
                    ..
                }) => break,
                Some(_) => {}
                None => bail!("the agent stopped"),
            }
        }
        eprintln!("wake {}: {:.1} ms", i + 1, took[i]);
    }
    took.sort_by(f64::total_cmp);
    Ok((took, stop))
}

/// Phase 2: devices dev1…devN register once as on-demand agents and leave.
async fn register_asleep(addr: &str, host_key: &str, keys: &[Arc<PrivateKey>]) -> Result<()> {
    let mut info = DeviceInfo::ours(Default::default());
    info.on_demand = true;
    let info = info.to_command();
    for (i, key) in keys.iter().enumerate().skip(1) {
        let c = connect(addr, host_key, key.clone()).await?;
        c.exec(&info).await?;
        c.register(&format!("dev{i}"), 22).await?;
        c.disconnect().await;
        if i % 100 == 0 {
            eprintln!("{i} devices registered and asleep");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    use clap::Parser;
    let a = Args::parse();
    let bin = match a.relay_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("locating the warren binary")?
            .join("warren"),
    };
    let dir = tempfile::tempdir()?;
    let (_broker, mqtt_port) = start_broker(dir.path()).await?;
    let mqtt = format!("mqtt://127.0.0.1:{mqtt_port}");
    let data = dir.path().join("data");
    let keys = make_keys(&data, a.devices)?;
    let (_relay, pid, addr) = start_relay(&bin, &data, &mqtt).await?;
    let host = keys::load_or_create_host_key(&warren::relay::host_key_path(&data))?;
    let host_key = keys::fingerprint(host.public_key());
    let conn = connect(&addr, &host_key, keys.controller.clone()).await?;
    let dev0 = keys.devices[0].clone();
    let (took, stop) = wake_phase(&addr, &host_key, &mqtt, dev0, &conn, a.reps).await?;

    until_status(&conn, "dev0", "asleep").await?;
    let before = proc_rss_kib(pid);
    register_asleep(&addr, &host_key, &keys.devices).await?;
    until_status(&conn, &format!("dev{}", a.devices), "asleep").await?;
    let after = proc_rss_kib(pid);
    stop.cancel();
    let report = Report {
        wakes: took.len(),
        open_to_first_byte_ms_p50: percentile(&took, 0.5),
        open_to_first_byte_ms_p99: percentile(&took, 0.99),
        open_to_first_byte_ms_max: took.last().copied().unwrap_or(0.0),
        asleep_devices: a.devices + 1,
        relay_rss_before_kib: before,
        relay_rss_after_kib: after,
        relay_bytes_per_asleep_device: (after.saturating_sub(before) as f64 * 1024.0)
            / a.devices.max(1) as f64,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report:#?}");
    }
    Ok(())
}
