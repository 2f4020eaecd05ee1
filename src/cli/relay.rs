use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{BrokerSettings, BrokerUrl, Topics};
use crate::protocol::Name;
use crate::relay::config::{PortRanges, RelayFile};
use crate::relay::udp::Discovery;
use crate::relay::wake::WakeOptions;
use crate::relay::{Relay, RelayOptions};
use crate::ssh::algorithms::{Ciphers, KexAlgorithms};

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Config file (TOML with the same settings as these flags; flags win).
    /// SIGHUP re-reads it and applies `public_ports`; the other settings
    /// take a restart.
    #[arg(long, env = "WARREN_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:2222].
    #[arg(long, env = "WARREN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: host key and database (created on first start).
    #[arg(long, env = "WARREN_DATA")]
    pub data: Option<PathBuf>,
    /// PostgreSQL database shared by a cluster of relays
    /// (postgres://USER@HOST/DB); the host key stays in --data. Without it
    /// the state is the SQLite database in --data.
    #[arg(long, env = "WARREN_DATABASE")]
    pub database: Option<String>,
    /// Relay ports admins may expose publicly, e.g. 4000-4100 (repeatable).
    /// None by default: `warren admin expose` then opens nothing.
    #[arg(long = "public-ports")]
    pub public_ports: Vec<String>,
    /// Address public ports listen on [default: the --listen address].
    #[arg(long)]
    pub public_bind: Option<IpAddr>,
    /// Prune audit events older than this ("90d", "12h"); kept forever if unset.
    #[arg(long, env = "WARREN_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<std::time::Duration>,
    /// HOST:PORT that new machines reach this relay at, written into invite
    /// tokens [default: --listen, unless it is a wildcard address].
    #[arg(long, env = "WARREN_ADVERTISE")]
    pub advertise: Option<String>,
    /// Ciphers offered, in order of preference, comma-separated, like
    /// sshd's Ciphers; or -NAME,... to drop some from the default
    /// [default: aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com
    /// on CPUs with AES instructions, chacha20 first otherwise].
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(Ciphers))]
    pub ciphers: Option<Ciphers>,
    /// Key exchanges offered, in order, like sshd's KexAlgorithms
    /// [default: mlkem768x25519-sha256,curve25519-sha256,curve25519-sha256@libssh.org].
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(KexAlgorithms))]
    pub kex_algorithms: Option<KexAlgorithms>,
    /// Refuse clients that do not offer strict key exchange
    /// (kex-strict-c-v00@openssh.com; OpenSSH 9.6 and later do).
    #[arg(long)]
    pub require_strict_kex: bool,
    /// MQTT broker that wakes on-demand devices: mqtt://HOST[:PORT] or
    /// mqtts://HOST[:PORT]. A stream to an asleep device then publishes
    /// `connect` on its cmd topic and waits for it (--wake-timeout).
    #[arg(long, env = "WARREN_MQTT")]
    pub mqtt: Option<String>,
    /// Broker user name.
    #[arg(long)]
    pub mqtt_username: Option<String>,
    /// File holding the broker password (its first line).
    #[arg(long)]
    pub mqtt_password_file: Option<PathBuf>,
    /// A private CA (PEM) for mqtts:// [default: the system's roots].
    #[arg(long)]
    pub mqtt_ca: Option<PathBuf>,
    /// TLS client certificate (PEM) for brokers that require one; with --mqtt-key.
    #[arg(long)]
    pub mqtt_cert: Option<PathBuf>,
    /// The key of --mqtt-cert (PEM).
    #[arg(long)]
    pub mqtt_key: Option<PathBuf>,
    /// First topic levels of the device topics [default: warren].
    #[arg(long)]
    pub mqtt_topic_prefix: Option<String>,
    /// How long a stream to an asleep device waits for it to come online ("30s").
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wake_timeout: Option<std::time::Duration>,
    /// UDP address discovery for direct paths: ADDR, or `off` (no direct
    /// paths) [default: the --listen address and port, on UDP]. A second
    /// UDP port (any free one) tells symmetric NATs apart.
    #[arg(long, value_name = "ADDR|off")]
    pub udp: Option<String>,
    /// A system whose streams never take direct paths (repeatable).
    #[arg(long = "forbid-direct", value_name = "SYSTEM")]
    pub forbid_direct: Vec<String>,
    /// Bandwidth limit of every system without one of its own (bytes per
    /// second each way, shared by its streams): 100M, 1G… [default: none].
    #[arg(long, value_name = "RATE")]
    pub system_rate: Option<String>,
    /// Bandwidth limit of every device without one of its own [default: none].
    #[arg(long, value_name = "RATE")]
    pub device_rate: Option<String>,
    /// Connections accepted but not yet logged in that the relay holds at
    /// once, 2 or more; past it, new ones on the SSH port wait in the
    /// kernel's accept queue (like sshd's MaxStartups), and those on the TLS
    /// port or a WebSocket are closed. Each costs a descriptor and at most a
    /// bounded handshake buffer: raise it to re-register a large fleet
    /// faster after a restart [default: 256].
    #[arg(long, value_name = "N")]
    pub max_unauthenticated: Option<usize>,
    /// Of those, how many one address may hold; past it, its new
    /// connections are closed [default: 32, or the whole cap if lower].
    #[arg(long, value_name = "N")]
    pub max_unauthenticated_per_address: Option<usize>,
    /// Serve the HTTP API and web console on this address, e.g.
    /// 127.0.0.1:8080 (off by default; put it behind SSH or a TLS proxy).
    #[arg(long, env = "WARREN_HTTP")]
    pub http: Option<SocketAddr>,
    /// The console's URL as browsers reach it, printed by `console-login`
    /// [default: http://HTTP-ADDRESS/].
    #[arg(long)]
    pub console_url: Option<String>,
    /// Serve Prometheus metrics at /metrics on this address (off by default).
    #[arg(long, env = "WARREN_METRICS")]
    pub metrics: Option<SocketAddr>,
    /// One TLS port for networks that let only web traffic out, e.g.
    /// 0.0.0.0:443: SSH inside TLS (ALPN warren-ssh), plain SSH, HTTPS to
    /// the console and API (with --http), and SSH in a WebSocket on /ssh.
    /// Needs --cert and --key; SIGHUP reloads them.
    #[arg(long, env = "WARREN_TLS")]
    pub tls: Option<SocketAddr>,
    /// The TLS port's certificate chain (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The TLS port's private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Time slice the relay's threads ask of the scheduler (Linux 6.12 and
    /// later): a woken relay thread then preempts CPU-bound work on the
    /// host sooner, so messages wait less for a core; its CPU share is
    /// unchanged. 100us to 100ms, or 0 for the kernel's default (a flag
    /// only: the threads start before the config file is read).
    #[arg(long, env = "WARREN_THREAD_SLICE", default_value = "100us",
          value_parser = crate::relay::slice::parse)]
    pub thread_slice: std::time::Duration,
    /// While another system is active, a thread doing a bulk system's
    /// slice of relaying runs this much nicer (0 to 19; 0: never), so the
    /// scheduler runs the other systems' messages, and the processes of
    /// the relay's scheduling group, first [default: 10]. Needs
    /// CAP_SYS_NICE (root has it) or LimitNICE= to set the thread back;
    /// otherwise the relay says so and runs without. A flag (and
    /// environment variable) only: it is set before the threads start.
    #[arg(long, env = "WARREN_BULK_NICE",
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub bulk_nice: Option<i32>,
}

/// Turns on the lower priority of bulk slices (`--bulk-nice`, default
/// [`crate::ssh::nice::DEFAULT`]); where the host does not allow it, says
/// so and runs without: a warning when the operator asked for it, a note
/// when it is the default.
pub fn bulk_nice(asked: Option<i32>) {
    let step = asked.unwrap_or(crate::ssh::nice::DEFAULT);
    match crate::ssh::nice::set(step) {
        Ok(()) if step > 0 => {
            tracing::info!(step, "bulk slices run nicer while another system is active")
        }
        Ok(()) => {}
        Err(e) => {
            const WHY: &str = "bulk slices keep the relay's priority (--bulk-nice needs CAP_SYS_NICE or LimitNICE= to set a thread back)";
            if asked.is_some() {
                tracing::warn!(error = %e, "{WHY}");
            } else {
                tracing::info!(error = %e, "{WHY}");
            }
        }
    }
}

/// Makes the calling thread and every thread the relay's runtime starts ask
/// for `slice` (see `relay::slice`; zero: the kernel's default), and start
/// at the relay's own nice value once bulk slices may be lowered
/// (`ssh::nice::on_thread_start`). Says at
/// start what it got; a failure is a warning, once, and the relay runs on.
pub fn thread_slices(builder: &mut tokio::runtime::Builder, slice: std::time::Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    let ask = move || {
        if slice.is_zero() {
            return false;
        }
        let result = crate::relay::slice::request(slice);
        if matches!(result, Ok(true)) || WARNED.swap(true, Ordering::Relaxed) {
            return matches!(result, Ok(true));
        }
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::info!(error = %e, "the relay's threads keep the scheduler's time slices");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the relay's threads keep the scheduler's default time slice");
            }
            Ok(_) => tracing::info!(
                "the relay runs under a real-time or idle scheduling policy: its time slices are left as they are"
            ),
        }
        false
    };
    if ask() {
        tracing::info!(slice = ?slice, "the relay's threads ask for short time slices");
    }
    builder.on_thread_start(move || {
        crate::ssh::nice::on_thread_start();
        ask();
    });
}

/// `--mqtt` and its companions (flags win over the config file).
fn wake_options(a: &RelayArgs, file: &RelayFile) -> Result<Option<WakeOptions>> {
    let Some(url) = a.mqtt.clone().or(file.mqtt.clone()) else {
        return Ok(None);
    };
    let url = BrokerUrl::parse(&url).context("--mqtt")?;
    let password = match a
        .mqtt_password_file
        .as_ref()
        .or(file.mqtt_password_file.as_ref())
    {
        Some(p) => Some(crate::mqtt::read_password(p)?),
        None => None,
    };
    let cert = a.mqtt_cert.clone().or(file.mqtt_cert.clone());
    let key = a.mqtt_key.clone().or(file.mqtt_key.clone());
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => anyhow::bail!("--mqtt-cert and --mqtt-key go together"),
    };
    let topics = match a
        .mqtt_topic_prefix
        .as_ref()
        .or(file.mqtt_topic_prefix.as_ref())
    {
        Some(p) => Topics::new(p)?,
        None => Topics::default(),
    };
    let timeout = match (a.wake_timeout, &file.wake_timeout) {
        (Some(t), _) => t,
        (None, Some(t)) => humantime::parse_duration(t)
            .with_context(|| format!("wake_timeout {t:?} (write it like \"30s\")"))?,
        (None, None) => crate::relay::wake::DEFAULT_WAKE_TIMEOUT,
    };
    let broker = BrokerSettings {
        url,
        username: a.mqtt_username.clone().or(file.mqtt_username.clone()),
        password,
        ca: a.mqtt_ca.clone().or(file.mqtt_ca.clone()),
        client_cert,
    };
    Ok(Some(WakeOptions {
        broker,
        topics,
        timeout,
    }))
}

pub async fn run(a: RelayArgs) -> Result<ExitCode> {
    let file = match &a.config {
        Some(path) => RelayFile::load(path)?,
        None => RelayFile::default(),
    };
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 2222)));
    crate::relay::listen::raise_open_files();
    let data = a.data.clone().or(file.data.clone()).context(
        "no data directory: give --data DIR (or WARREN_DATA, or data in the --config file)",
    )?;
    let http = HttpFlags {
        http: a.http,
        metrics: a.metrics,
        console_url: a.console_url.clone(),
    };
    let http_on = http.http.is_some() || file.http.is_some();
    let ports_by_flag = !a.public_ports.is_empty();
    // Bound now (a taken port fails before anything else), but listening
    // only once the store is open and migrated: a script that waits for the
    // port and then runs `warren admin` must find the database ready.
    let socket = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let bound = socket.local_addr()?;
    let tls = tls_port(&a, &file).await?;
    let (discovery, options) = relay_options(&a, &file, bound).await?;
    let server = Relay::open(&data, options)?;
    let http = http_listeners(&http, &file, server.relay()).await?;
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.cancel();
    });
    if let Some(path) = a.config.clone() {
        let r = server.relay().clone();
        let started = file;
        super::on_sighup(shutdown.clone(), move || {
            reload(&r, &path, &started, ports_by_flag)
        })?;
    }
    if let Some(d) = discovery {
        tokio::spawn(d.serve(shutdown.clone()));
    }
    if let Some(t) = tls {
        t.spawn(server.relay(), http_on, &shutdown)?;
    }
    http.spawn(server.relay(), &shutdown);
    server.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The relay's options from the flags and the file (flags win), and UDP
/// discovery bound beside the SSH port at `bound`.
async fn relay_options(
    a: &RelayArgs,
    file: &RelayFile,
    bound: SocketAddr,
) -> Result<(Option<Discovery>, RelayOptions)> {
    let wake = wake_options(a, file)?;
    let public_ports = if a.public_ports.is_empty() {
        PortRanges::parse(file.public_ports.as_deref().unwrap_or_default())?
    } else {
        PortRanges::parse(&a.public_ports).context("--public-ports")?
    };
    // Checked by RelayFile::load; parsed again here for the values.
    let ciphers = match (&a.ciphers, &file.ciphers) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) => c.parse().map_err(anyhow::Error::msg)?,
        (None, None) => Ciphers::default(),
    };
    let kex_algorithms = match (&a.kex_algorithms, &file.kex_algorithms) {
        (Some(k), _) => k.clone(),
        (None, Some(k)) => k.parse().map_err(anyhow::Error::msg)?,
        (None, None) => KexAlgorithms::default(),
    };
    let (discovery, udp_port) =
        udp_discovery(a.udp.as_deref().or(file.udp.as_deref()), bound).await?;
    let forbid_direct = forbid_direct(&a.forbid_direct, file.forbid_direct.as_deref())?;
    let advertise = match &a.advertise {
        Some(addr) => Some(
            crate::protocol::RelayAddress::parse(addr)
                .map(crate::protocol::RelayAddress::into_string)
                .context("--advertise")?,
        ),
        None if !bound.ip().is_unspecified() => Some(bound.to_string()),
        None => None,
    };
    let (max_unauthenticated, max_unauthenticated_per_address) = unauthenticated_caps(a, file)?;
    let options = RelayOptions {
        max_unauthenticated,
        max_unauthenticated_per_address,
        wake,
        public_ports,
        public_bind: a.public_bind.or(file.public_bind),
        audit_retention: a.audit_retention,
        advertise,
        ciphers,
        kex_algorithms,
        require_strict_kex: a.require_strict_kex || file.require_strict_kex.unwrap_or(false),
        database: a.database.clone().or(file.database.clone()),
        udp_port,
        forbid_direct,
        system_rate: default_rate("--system-rate", &a.system_rate, &file.system_rate)?,
        device_rate: default_rate("--device-rate", &a.device_rate, &file.device_rate)?,
        ..RelayOptions::default()
    };
    Ok((discovery, options))
}

/// The TLS port (`--tls`), bound before the relay serves, with its
/// certificate loaded (a bad certificate fails the start).
struct TlsPort {
    listener: tokio::net::TcpListener,
    certs: std::sync::Arc<crate::transport::tls::CertFiles>,
}

async fn tls_port(a: &RelayArgs, file: &RelayFile) -> Result<Option<TlsPort>> {
    let Some(addr) = a.tls.or(file.tls) else {
        return Ok(None);
    };
    let (Some(cert), Some(key)) = (
        a.cert.clone().or(file.tls_cert.clone()),
        a.key.clone().or(file.tls_key.clone()),
    ) else {
        anyhow::bail!(
            "--tls needs --cert FILE and --key FILE (PEM; tls_cert and tls_key in the config file)"
        );
    };
    let certs = crate::transport::tls::CertFiles::load(&cert, &key).context("--tls")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--tls)"))?;
    Ok(Some(TlsPort { listener, certs }))
}

impl TlsPort {
    /// Serves the port; SIGHUP reloads its certificate and key.
    fn spawn(
        self,
        relay: &std::sync::Arc<Relay>,
        http_on: bool,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let certs = self.certs.clone();
        super::on_sighup(shutdown.clone(), move || match certs.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => tracing::error!(
                "SIGHUP: TLS certificate not reloaded, keeping the running one: {e:#}"
            ),
        })?;
        let web = http_on.then(|| crate::web::Web {
            relay: relay.clone(),
            secure: true,
        });
        let front = crate::front::Front {
            certs: self.certs,
            web,
        };
        let (r, stop) = (relay.clone(), shutdown.clone());
        relay.spawn(async move {
            if let Err(e) = crate::front::serve(r, self.listener, front, stop).await {
                tracing::error!(error = %format!("{e:#}"), "TLS port stopped");
            }
        });
        Ok(())
    }
}

/// Binds UDP discovery: `spec` (an address, or `off`), by default the SSH
/// listener's own address and port. Returns it and the port it announces.
async fn udp_discovery(
    spec: Option<&str>,
    ssh: SocketAddr,
) -> Result<(Option<Discovery>, Option<u16>)> {
    let addr = match spec {
        Some("off") => return Ok((None, None)),
        Some(s) => s
            .parse::<SocketAddr>()
            .with_context(|| format!("--udp {s:?}: write IP:PORT or off"))?,
        None => ssh,
    };
    let d = Discovery::bind(addr).await?;
    let bound = d.local_addr()?;
    tracing::info!(udp = %bound, "UDP discovery for direct paths");
    Ok((Some(d), Some(bound.port())))
}

/// The caps on connections not yet logged in, from the flags and the file
/// (flags win): the whole from 2 to [`MAX_UNAUTHENTICATED_CAP`] (the SSH
/// port's accept loop holds one slot while it waits for a connection: with
/// 1 the TLS port and WebSockets would never get one), one address's from
/// 1 to the whole.
fn unauthenticated_caps(a: &RelayArgs, file: &RelayFile) -> Result<(usize, usize)> {
    let pick = |flag: &str, by_flag: Option<usize>, in_file: Option<usize>, default, least| {
        let n = by_flag.or(in_file).unwrap_or(default);
        if !(least..=MAX_UNAUTHENTICATED_CAP).contains(&n) {
            anyhow::bail!(
                "--{flag} (or the config file's {}): {n} is out of range: {least} to {MAX_UNAUTHENTICATED_CAP}",
                flag.replace('-', "_")
            );
        }
        Ok(n)
    };
    let all = pick(
        "max-unauthenticated",
        a.max_unauthenticated,
        file.max_unauthenticated,
        crate::protocol::limits::MAX_UNAUTHENTICATED,
        2,
    )?;
    let per = pick(
        "max-unauthenticated-per-address",
        a.max_unauthenticated_per_address,
        file.max_unauthenticated_per_address,
        crate::protocol::limits::MAX_UNAUTHENTICATED_PER_ADDRESS.min(all),
        1,
    )?;
    if per > all {
        anyhow::bail!(
            "max_unauthenticated_per_address {per} is larger than max_unauthenticated {all} \
             (flags --max-unauthenticated-per-address and --max-unauthenticated, or the config \
             file's keys): one address cannot hold more than the whole"
        );
    }
    Ok((all, per))
}

/// Highest cap on connections not yet logged in: far above what one
/// process's descriptors allow, low enough that a typo is caught.
const MAX_UNAUTHENTICATED_CAP: usize = 100_000;

/// `--system-rate`/`--device-rate` (or the file's): a rate, or `none`.
fn default_rate(
    flag: &str,
    by_flag: &Option<String>,
    in_file: &Option<String>,
) -> Result<Option<crate::protocol::rate::Rate>> {
    match by_flag.as_deref().or(in_file.as_deref()) {
        None => Ok(None),
        Some(v) => crate::protocol::rate::Rate::parse(v, None).map_err(|e| {
            anyhow::anyhow!(
                "{flag} (or the config file's {}): {e}",
                &flag[2..].replace('-', "_")
            )
        }),
    }
}

fn forbid_direct(flags: &[String], file: Option<&[String]>) -> Result<Vec<Name>> {
    let names = if flags.is_empty() {
        file.unwrap_or_default()
    } else {
        flags
    };
    names
        .iter()
        .map(|s| Name::parse(s).with_context(|| format!("--forbid-direct {s:?}")))
        .collect()
}

/// The HTTP API's and the metrics' listeners, bound before the relay serves
/// (a taken port fails the start).
struct HttpListeners {
    api: Option<tokio::net::TcpListener>,
    metrics: Option<tokio::net::TcpListener>,
    /// Browsers reach the console over https (a TLS proxy in front):
    /// session cookies get `Secure`.
    secure: bool,
}

/// The HTTP flags, taken before the rest of the arguments are used up.
struct HttpFlags {
    http: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    console_url: Option<String>,
}

async fn http_listeners(
    a: &HttpFlags,
    file: &RelayFile,
    relay: &std::sync::Arc<Relay>,
) -> Result<HttpListeners> {
    let bind = |addr: Option<SocketAddr>, what: &'static str| async move {
        match addr {
            Some(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Some)
                .with_context(|| format!("cannot listen on {addr} ({what})")),
            None => Ok(None),
        }
    };
    let api = bind(a.http.or(file.http), "--http").await?;
    let metrics = bind(a.metrics.or(file.metrics), "--metrics").await?;
    let mut secure = false;
    if let Some(l) = &api {
        let url = match a.console_url.clone().or(file.console_url.clone()) {
            Some(u) if u.ends_with('/') => u,
            Some(u) => format!("{u}/"),
            None => format!("http://{}/", l.local_addr()?),
        };
        relay
            .store()
            .set_setting(crate::web::CONSOLE_URL_SETTING, &url)?;
        secure = url.starts_with("https://");
    }
    Ok(HttpListeners {
        api,
        metrics,
        secure,
    })
}

impl HttpListeners {
    fn spawn(self, relay: &std::sync::Arc<Relay>, shutdown: &CancellationToken) {
        if let Some(l) = self.api {
            let web = crate::web::Web {
                relay: relay.clone(),
                secure: self.secure,
            };
            let stop = shutdown.clone();
            relay.spawn(async move {
                if let Err(e) = crate::web::serve(l, web, stop).await {
                    tracing::error!(error = %format!("{e:#}"), "HTTP API stopped");
                }
            });
        }
        if let Some(l) = self.metrics {
            let (r, stop) = (relay.clone(), shutdown.clone());
            relay.spawn(async move {
                if let Err(e) = crate::web::serve_metrics(l, r, stop).await {
                    tracing::error!(error = %format!("{e:#}"), "metrics stopped");
                }
            });
        }
    }
}

/// Pending connections the kernel queues for the accept loop (capped by
/// net.core.somaxconn, 4096 on current kernels): a burst of devices waits
/// there while the relay's handshake slots are full.
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP socket bound to `addr` (address reuse as `TcpListener::bind`), not yet listening.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Re-reads the config file; applies `public_ports`, reports the rest.
fn reload(relay: &Relay, path: &std::path::Path, started: &RelayFile, ports_by_flag: bool) {
    let new = match RelayFile::load(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(config = %path.display(), "SIGHUP: config reload refused, keeping the running config: {e:#}");
            return;
        }
    };
    let mut restart = Vec::new();
    if new.listen != started.listen {
        restart.push("listen");
    }
    if new.data != started.data {
        restart.push("data");
    }
    if new.public_bind != started.public_bind {
        restart.push("public_bind");
    }
    if new.ciphers != started.ciphers {
        restart.push("ciphers");
    }
    if new.kex_algorithms != started.kex_algorithms {
        restart.push("kex_algorithms");
    }
    if new.require_strict_kex != started.require_strict_kex {
        restart.push("require_strict_kex");
    }
    if new.tls != started.tls {
        // The certificate files are re-read on every SIGHUP; the port is not.
        restart.push("tls");
    }
    if !restart.is_empty() {
        tracing::warn!(
            "config reload: {} changed; that takes a restart (kept the running values)",
            restart.join(", ")
        );
    }
    if ports_by_flag {
        tracing::warn!(
            "config reload: public_ports is set by --public-ports, which wins over the file"
        );
    } else {
        // Validated by load.
        let ranges =
            PortRanges::parse(new.public_ports.as_deref().unwrap_or_default()).unwrap_or_default();
        tracing::info!(public_ports = %ranges, "config reloaded");
        relay.set_public_ports(ranges);
    }
}
