//! How fast this CPU seals SSH packets with each cipher Warren speaks, with
//! the primitives Warren's packet layer (`src/ssh/proto/packet.rs`) calls:
//! `aws-lc-rs`'s OpenSSH construction for `chacha20-poly1305@openssh.com`
//! and its AES-GCM for `aes128-gcm`/`aes256-gcm@openssh.com`. A relay pays
//! one open and one seal per byte it forwards, so these rates bound its CPU
//! per GiB from below.
//!
//! ```sh
//! cargo run --release --example bench_ciphers -- --packet 32768 --seconds 1
//! ```
//!
//! Prints one JSON line per cipher: the median MB/s over 5 runs.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use aws_lc_rs::aead::{
    self, Aad, LessSafeKey, Nonce, UnboundKey, chacha20_poly1305_openssh as chacha,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Packet sealing speed per SSH cipher (benchmark helper)")]
struct Args {
    /// Packet size in bytes (OpenSSH sends channel data in 32 KiB packets).
    #[arg(long, default_value_t = 32 * 1024)]
    packet: usize,
    /// Length of each of the 5 timed runs.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

/// Seals one packet in place, given its sequence number.
type Sealer<'a> = dyn Fn(u32, &mut [u8]) + 'a;

/// Seals packets of `len` bytes for `time`; returns MB/s.
fn rate(time: Duration, len: usize, mut seal: impl FnMut(u32, &mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; len];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < time {
        for _ in 0..64 {
            seal(n as u32, &mut buf);
            n += 1;
        }
    }
    (n as f64 * len as f64) / start.elapsed().as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let time = Duration::from_secs_f64(args.seconds);
    let key = [7u8; 64];
    let sealer = chacha::SealingKey::new(&key);
    let aes128 = LessSafeKey::new(
        UnboundKey::new(&aead::AES_128_GCM, &key[..16]).map_err(|_| anyhow!("aes128 key"))?,
    );
    let aes256 = LessSafeKey::new(
        UnboundKey::new(&aead::AES_256_GCM, &key[..32]).map_err(|_| anyhow!("aes256 key"))?,
    );
    let gcm = |k: &LessSafeKey, seq: u32, buf: &mut [u8]| {
        let mut nonce = [0u8; 12];
        nonce[8..].copy_from_slice(&seq.to_be_bytes());
        let (len, rest) = buf.split_at_mut(4);
        let aad = [len[0], len[1], len[2], len[3]];
        let tag =
            k.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), rest);
        std::hint::black_box(tag.is_ok());
    };
    let runs: [(&str, Box<Sealer>); 3] = [
        (
            "chacha20-poly1305@openssh.com",
            Box::new(|seq, buf: &mut [u8]| {
                let mut tag = [0u8; chacha::TAG_LEN];
                sealer.seal_in_place(seq, buf, &mut tag);
                std::hint::black_box(tag);
            }),
        ),
        (
            "aes128-gcm@openssh.com",
            Box::new(|seq, buf: &mut [u8]| gcm(&aes128, seq, buf)),
        ),
        (
            "aes256-gcm@openssh.com",
            Box::new(|seq, buf: &mut [u8]| gcm(&aes256, seq, buf)),
        ),
    ];
    for (name, seal) in &runs {
        let mbs: Vec<f64> = (0..5).map(|_| rate(time, args.packet, seal)).collect();
        println!(
            "{}",
            serde_json::json!({
                "cipher": name,
                "provider": "aws-lc-rs",
                "packet_bytes": args.packet,
                "seal_mb_s": (median(mbs.clone()) as u64),
                "min_mb_s": (mbs.iter().cloned().fold(f64::INFINITY, f64::min) as u64),
                "max_mb_s": (mbs.iter().cloned().fold(0.0, f64::max) as u64),
            })
        );
    }
    Ok(())
}
