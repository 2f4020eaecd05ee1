//! `warren demo`: the main job on an embedded default, explained step by step.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentEvent, AgentSettings};
use crate::client::{self, ClientSettings};
use crate::protocol::{AllowList, Name, Role};
use crate::relay::{self, Relay, RelayOptions};
use crate::ssh::keys;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep everything running after the demonstration (Ctrl-C to stop), to
    /// try the printed stock ssh commands.
    #[arg(long)]
    pub stay: bool,
}

// Longer than most functions here, on purpose: it reads top to bottom as
// the numbered steps it prints, so the code and the demo's story match.
pub async fn run(a: DemoArgs) -> Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("warren-demo-").tempdir()?;
    let base = dir.path();
    let data = base.join("relay-data");
    let system = Name::parse("demo")?;
    let dev = Name::parse("dev1")?;

    // 1. The relay.
    let server = Relay::open(&data, RelayOptions::default())?;
    let relay = server.relay().clone();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let relay_task = tokio::spawn(server.serve(listener, stop.clone()));
    say(&format!(
        "1. Started a relay on {relay_addr} (data in {}).\n   Its host key is {}; agents and clients pin it.",
        data.display(),
        relay.host_key()
    ));

    // 2. A system with a device key and a controller key.
    let device_key = make_key(base, "dev1_key")?;
    let controller_key = make_key(base, "alice_key")?;
    let store = relay.store();
    store.add_system(&system)?;
    store.add_key(&system, Role::Device, &dev, device_key.public_key())?;
    store.add_key(
        &system,
        Role::Controller,
        &Name::parse("alice")?,
        controller_key.public_key(),
    )?;
    say("2. Created system \"demo\" with a device key for dev1 and a controller key for alice.");

    // 3. A service on the device, and the agent that registers dev1.
    let service = TcpListener::bind("127.0.0.1:0").await?;
    let service_port = service.local_addr()?.port();
    tokio::spawn(serve_hello(service));
    let settings = AgentSettings {
        relay: relay_addr.to_string(),
        system: system.clone(),
        name: dev.clone(),
        key: std::sync::Arc::new(device_key),
        relay_host_key: relay.host_key().to_string(),
        allow: AllowList::parse(&[format!("127.0.0.1:{service_port}")])
            .map_err(anyhow::Error::msg)?,
        dead_after: Duration::from_secs(30),
        labels: Default::default(),
        gateway: Default::default(),
        on_demand: None,
        p2p: true,
        relay_ca: None,
    };
    let (tx, mut events) = mpsc::unbounded_channel();
    let agent_task = tokio::spawn(agent::run(settings, stop.clone(), Some(tx)));
    match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
        Ok(Some(AgentEvent::Online)) => {}
        other => bail!("the demo agent did not come online: {other:?}"),
    }
    say(&format!(
        "3. Started a web service on dev1 (127.0.0.1:{service_port}) and the agent. The agent dialed\n   \
         the relay (outbound only, as it would from behind NAT) and registered the name dev1\n   \
         with `tcpip-forward`, just as `ssh -R dev1:{service_port}:localhost:{service_port}` would."
    ));

    // 4. A controller reaches dev1 by name.
    controller_steps(base, relay_addr, &system, relay.host_key(), service_port).await?;

    let ssh_config = write_ssh_config(base, relay_addr)?;
    say(&format!(
        "Stock OpenSSH works the same way (these work while `warren demo --stay` runs):\n\n\
         \x20 ssh -F {cfg} relay ls\n\
         \x20 ssh -F {cfg} -N -L 8080:dev1:{service_port} relay &   then: curl http://127.0.0.1:8080/\n\
         \x20 ssh -F {cfg} -N -D 1080 relay &                  then: curl --socks5-hostname 127.0.0.1:1080 http://dev1:{service_port}/\n\n\
         On real machines: `warren relay` on a public host, `warren agent` on each device,\n\
         and `ssh -J demo@relay:2222 user@dev1` from anywhere. See the README.",
        cfg = ssh_config.display()
    ));

    if a.stay {
        say("Running; press Ctrl-C to stop.");
        super::shutdown_signal().await;
    }
    stop.cancel();
    let _ = agent_task.await;
    relay_task.await??;
    Ok(ExitCode::SUCCESS)
}

/// Steps 4 and 5: as controller alice, a stream to dev1 through the relay,
/// then `ls` at the relay.
async fn controller_steps(
    base: &Path,
    relay_addr: std::net::SocketAddr,
    system: &Name,
    relay_host_key: &str,
    service_port: u16,
) -> Result<()> {
    let client_settings = ClientSettings {
        relay: relay_addr.to_string(),
        system: system.clone(),
        key_path: base.join("alice_key"),
        key: std::sync::Arc::new(keys::read_private(&base.join("alice_key"))?),
        relay_host_key: relay_host_key.to_string(),
        socks_auth: None,
        relay_ca: None,
    };
    let conn = client::connect(&client_settings).await?;
    let channel = conn.open("dev1", u32::from(service_port)).await?;
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let (far_r, far_w) = tokio::io::split(far);
    let splice = tokio::spawn(channel.splice_io(far_r, far_w));
    near.write_all(b"GET / HTTP/1.0\r\nHost: dev1\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), near.read_to_string(&mut response))
        .await
        .context("no answer from dev1")??;
    drop(near);
    let _ = splice.await;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    say(&format!(
        "4. As controller alice, opened a stream to dev1:{service_port} through the relay and sent an\n   \
         HTTP request. dev1 answered: {body:?}"
    ));
    let listing = conn.exec("ls").await?;
    say(&format!(
        "5. `ls` at the relay lists the system's devices:\n\n{}",
        indent(&String::from_utf8_lossy(&listing.stdout))
    ));
    conn.disconnect().await;
    Ok(())
}

fn say(s: &str) {
    println!("{s}\n");
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

fn make_key(dir: &Path, file: &str) -> Result<keys::PrivateKey> {
    let key = keys::generate_ed25519()?;
    keys::write_pair(&key, &dir.join(file), file)?;
    Ok(key)
}

/// An ssh config and known_hosts for stock ssh, pinning the relay's host key.
fn write_ssh_config(dir: &Path, addr: std::net::SocketAddr) -> Result<std::path::PathBuf> {
    let host_pub = std::fs::read_to_string(
        relay::host_key_path(&dir.join("relay-data")).with_extension("pub"),
    )?;
    let known = dir.join("known_hosts");
    std::fs::write(
        &known,
        format!("[{}]:{} {}", addr.ip(), addr.port(), host_pub),
    )?;
    let cfg = dir.join("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host relay\n  HostName {}\n  Port {}\n  User demo\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n",
            addr.ip(),
            addr.port(),
            dir.join("alice_key").display(),
            known.display()
        ),
    )?;
    Ok(cfg)
}

/// A minimal HTTP responder standing in for a device's web service.
async fn serve_hello(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = "hello from dev1\n";
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        });
    }
}
