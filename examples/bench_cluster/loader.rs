//! `bench_cluster devices …`: a loader process holding idle devices of
//! system `fleet`, each like an agent with the cluster's relay list: it
//! registers on its home relay first and, when that connection ends, dials
//! the next relay of its own list after an agent's first backoff delay.
//!
//! Each connection binds a loopback source address of its own before
//! connecting (127.X.Y.Z, from the device and the attempt), so no source
//! address runs out of ephemeral ports however many devices there are.
//!
//! Lines on stdin: `go` (register every device), `status` (answered with
//! `status REGISTERED FAILURES MOVED` and, when any, `error TEXT` lines for
//! the first failures' reasons), end of input (drop everything, exit).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;

use warren::protocol::{Backoff, Name, Role};
use warren::ssh::channel::IncomingChannel;
use warren::ssh::client::{self, ConnectOptions, ForwardedHandler};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::Store;

/// What every device task reports to the loader.
#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    failures: AtomicU64,
    /// Registrations on a relay other than the device's home relay.
    moved: AtomicU64,
    errors: Mutex<Vec<String>>,
    all_registered: tokio::sync::Notify,
}

impl Counters {
    fn failed(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() < 5 && !errors.contains(&why) {
            errors.push(why);
        }
    }
}

/// The device's side of a stream: accept, send one byte, read until the
/// prober closes.
struct Answer;

impl ForwardedHandler for Answer {
    fn forwarded(&mut self, _address: &str, _port: u32, channel: IncomingChannel) {
        tokio::spawn(async move {
            let ch = channel.accept().await;
            if ch.send_data(b"w".to_vec()).await {
                while ch.recv_data().await.is_some() {}
            }
        });
    }
}

/// One device: `order` lists relay indexes, home first.
struct Device {
    index: usize,
    key: Arc<PrivateKey>,
    order: Vec<usize>,
}

struct Shared {
    relays: Vec<String>,
    pins: String,
    sem: Semaphore,
    counters: Counters,
    total: u64,
}

/// A loopback source address for a device's `attempt`-th connection.
fn source(index: usize, attempt: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(
        127,
        1 + (attempt % 200) as u8,
        ((index / 250) % 256) as u8,
        2 + (index % 250) as u8,
    );
    SocketAddr::V4(SocketAddrV4::new(ip, 0))
}

async fn connect_register(
    shared: &Shared,
    d: &Device,
    relay: &str,
    attempt: usize,
) -> Result<client::ClientConnection<Answer>> {
    let addr: SocketAddr = relay.parse().context("relay address")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source(d.index, attempt))?;
    let tcp = tokio::time::timeout(Duration::from_secs(30), socket.connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach relay {relay}: timed out"))?
        .with_context(|| format!("cannot reach relay {relay}"))?;
    let opts = ConnectOptions {
        user: "fleet".into(),
        key: d.key.clone(),
        host_key: shared.pins.clone(),
        dead_after: Duration::from_secs(600),
    };
    let c = client::connect(tcp, &opts, Answer).await?;
    c.register(&format!("d{}", d.index), 22).await?;
    Ok(c)
}

/// Keeps one device registered for as long as the process lives.
async fn run_device(shared: Arc<Shared>, d: Device) {
    let mut backoff = Backoff::new();
    for attempt in 0.. {
        let r = d.order[attempt % d.order.len()];
        let permit = shared.sem.acquire().await;
        let result = connect_register(&shared, &d, &shared.relays[r], attempt).await;
        drop(permit);
        match result {
            Ok(mut conn) => {
                let c = &shared.counters;
                if r != d.order[0] {
                    c.moved.fetch_add(1, Ordering::Relaxed);
                }
                if c.registered.fetch_add(1, Ordering::Relaxed) + 1 == shared.total {
                    c.all_registered.notify_one();
                }
                backoff = Backoff::new();
                conn.is_gone().await;
                c.registered.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => shared.counters.failed(format!("{e:#}")),
        }
        // As the agent: a jittered delay before the next relay of the list.
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn get<'a>(flags: &'a HashMap<String, String>, k: &str) -> Result<&'a String> {
    flags.get(k).with_context(|| format!("--{k} is required"))
}

/// Adds the keys of devices `first..first+count` (8 threads at once).
fn add_keys(store: &Store, first: usize, count: usize) -> Result<Vec<(usize, Arc<PrivateKey>)>> {
    let fleet = Name::parse("fleet")?;
    let chunks: Vec<Vec<usize>> = (first..first + count)
        .collect::<Vec<_>>()
        .chunks(count.div_ceil(8).max(1))
        .map(<[usize]>::to_vec)
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let fleet = &fleet;
                s.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for i in chunk {
                        let key = keys::generate_ed25519()?;
                        let name = Name::parse(&format!("d{i}"))?;
                        store.add_key(fleet, Role::Device, &name, key.public_key())?;
                        out.push((i, Arc::new(key)));
                    }
                    Ok::<_, anyhow::Error>(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("key thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// The relay order of device `i` whose home is `home` of `n`: home first,
/// then the others rotated by `i`, so a dead relay's devices spread evenly
/// over the survivors.
fn order(i: usize, home: usize, n: usize) -> Vec<usize> {
    let others: Vec<usize> = (1..n).map(|k| (home + k) % n).collect();
    let mut out = vec![home];
    for k in 0..others.len() {
        out.push(others[(i + k) % others.len()]);
    }
    out
}

pub async fn devices_process(flags: &HashMap<String, String>) -> Result<()> {
    let (first, count): (usize, usize) =
        (get(flags, "first")?.parse()?, get(flags, "count")?.parse()?);
    let per_relay: usize = get(flags, "per-relay")?.parse()?;
    let connecting: usize = get(flags, "connecting")?.parse()?;
    let relays: Vec<String> = get(flags, "relays")?
        .split(',')
        .map(str::to_string)
        .collect();
    let store = crate::procs::open_store(get(flags, "database")?)?;
    let keys = add_keys(&store, first, count)?;
    drop(store);
    let shared = Arc::new(Shared {
        pins: get(flags, "host-keys")?.clone(),
        sem: Semaphore::new(connecting.max(1)),
        counters: Counters::default(),
        total: count as u64,
        relays,
    });
    println!("ready");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while stdin.next_line().await?.context("no go")? != "go" {}
    let t = Instant::now();
    let n = shared.relays.len();
    for (i, key) in keys {
        let home = (i / per_relay.max(1)).min(n - 1);
        let d = Device {
            index: i,
            key,
            order: order(i, home, n),
        };
        tokio::spawn(run_device(shared.clone(), d));
    }
    shared.counters.all_registered.notified().await;
    println!("registered {:.3}", t.elapsed().as_secs_f64());
    while let Some(line) = stdin.next_line().await? {
        if line == "status" {
            let c = &shared.counters;
            let errors = c.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut out = format!(
                "status {} {} {}",
                c.registered.load(Ordering::Relaxed),
                c.failures.load(Ordering::Relaxed),
                c.moved.load(Ordering::Relaxed)
            );
            for e in errors {
                out.push_str(&format!("\nerror {}", e.replace('\n', " ")));
            }
            println!("{out}\nend");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_relays_devices_spread_over_every_survivor() {
        let mut seen = [0usize; 6];
        for i in 0..600 {
            let o = order(i, 5, 6);
            assert_eq!(o[0], 5);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
            seen[o[1]] += 1;
        }
        assert_eq!(seen, [120, 120, 120, 120, 120, 0]);
    }
}
