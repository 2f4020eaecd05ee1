//! Latency probe for `bench/run`: an echo target behind the device, and two
//! clients that time it through a relay.
//!
//! - `echo --listen 127.0.0.1:0`: prints `listening PORT`; for every accepted
//!   connection it writes one greeting byte (as sshd writes its banner first),
//!   then echoes everything back. One thread per connection, TCP_NODELAY.
//! - `rtt --connect ADDR --count N --size 64`: one connection; after the
//!   greeting, N times: write SIZE bytes, read SIZE bytes back. Prints one JSON
//!   line with p50/p99/min/max/mean in microseconds.
//! - `first-byte --connect ADDR --count N`: N times: open a new TCP connection
//!   (to an `ssh -L` port, so a new stream through an established controller
//!   connection) and time it until the greeting byte arrives. Prints one JSON
//!   line like `rtt`.
//!
//! Blocking std sockets on purpose: nothing between the clock and the socket
//! but one system call.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Echo target and latency probes (benchmark helper)")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Echo server: greeting byte, then echo.
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Round trips of SIZE-byte messages on one connection.
    Rtt {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Unmeasured round trips first.
        #[arg(long, default_value_t = 100)]
        warmup: usize,
    },
    /// New connection to first (greeting) byte, COUNT times.
    FirstByte {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Unmeasured connections first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Echo { listen } => echo(&listen),
        Cmd::Rtt {
            connect,
            count,
            size,
            warmup,
        } => rtt(&connect, count, size, warmup),
        Cmd::FirstByte {
            connect,
            count,
            warmup,
        } => first_byte(&connect, count, warmup),
    }
}

fn echo(listen: &str) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    for conn in l.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            if s.write_all(b"!").is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

fn connect(addr: &str) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn greeting(s: &mut TcpStream) -> Result<()> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .context("waiting for the greeting byte")?;
    if b[0] != b'!' {
        bail!("unexpected greeting byte {:#x}", b[0]);
    }
    Ok(())
}

fn rtt(addr: &str, count: usize, size: usize, warmup: usize) -> Result<()> {
    if count == 0 || size == 0 {
        bail!("--count and --size must be at least 1");
    }
    let mut s = connect(addr)?;
    greeting(&mut s)?;
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back).context("reading the echo")?;
        let dt = t0.elapsed();
        if back != msg {
            bail!("echo differs from what was sent");
        }
        if i >= warmup {
            samples.push(dt);
        }
    }
    report("rtt", &mut samples);
    Ok(())
}

fn first_byte(addr: &str, count: usize, warmup: usize) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t0 = Instant::now();
        let mut s = connect(addr)?;
        greeting(&mut s).with_context(|| format!("stream {i}"))?;
        let dt = t0.elapsed();
        drop(s);
        if i >= warmup {
            samples.push(dt);
        }
    }
    report("first_byte", &mut samples);
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

fn report(what: &str, samples: &mut [Duration]) {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    let out = serde_json::json!({
        "probe": what,
        "n": us.len(),
        "p50_us": pct(&us, 50.0),
        "p90_us": pct(&us, 90.0),
        "p99_us": pct(&us, 99.0),
        "min_us": us[0],
        "max_us": us[us.len() - 1],
        "mean_us": mean,
    });
    println!("{out}");
}
