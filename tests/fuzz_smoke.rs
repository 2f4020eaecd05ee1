//! A short, seeded fuzz run over every parser of outside input (the same
//! entry points as the cargo-fuzz targets in `fuzz-input/`): valid seeds,
//! mutated by byte flips, insertions, deletions, splices and repeats, plus
//! plain random bytes. Deterministic, bounded (a few seconds), and fails
//! with the offending input if any parser panics.
//!
//! Each crash a long `cargo fuzz` run finds becomes a case in
//! `regressions` below.

use std::panic::{AssertUnwindSafe, catch_unwind};

use warren::fuzz;

/// xorshift64*: tiny, seeded, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "dev1",
    "tau",
    "a-b-c",
    "22=127.0.0.1:22",
    "8080=localhost:80,127.0.0.1:22",
    "relay.example.org:2222",
    "[::1]:2222",
    "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
    "10.0.0.0/8",
    "192.168.1.0/24 fd00::/8 0.0.0.0/0",
    "10.1.2.3.via.gw1",
    "db.via.site-a",
    "node[01-10]",
    "rack[1-2]-gpu[0,3-5]",
    "\u{5}\u{1}\u{0}\u{5}\u{1}\u{0}\u{3}\u{4}dev1\u{0}\u{16}",
    "\u{5}\u{1}\u{2}\u{1}\u{4}user\u{6}secret\u{5}\u{1}\u{0}\u{1}\u{7f}\u{0}\u{0}\u{1}\u{0}\u{50}",
    "user:pa:ss",
    "2000-2099,8080",
    "device-info version=0.1.0 label=site=lab label=rack=3",
    "site=lab",
    "{\"op\":\"connect\",\"id\":\"relay-1\"}",
    "{\"state\":\"error\",\"reason\":\"relay unreachable\",\"at\":\"2026-01-01T00:00:00Z\",\"version\":\"0.1.0\"}",
    "warren/tau/dev1/state",
    "mqtts://broker.example:8883",
    "warren1.eyJyZWxheSI6IjEyNy4wLjAuMToyMjIyIn0",
    "relay = \"127.0.0.1:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"dev1\"\n\
     relay_host_key = \"SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\"\n\
     allow = [\"22=127.0.0.1:22\"]\nkeepalive_timeout = \"30s\"\nscope = [\"10.0.0.0/8\"]\n\
     scope_ports = [22, 443]\n[labels]\nsite = \"lab\"\n[[listen]]\nbind = \"0.0.0.0:8080\"\nto = \"web:80\"\n",
    "relay = \"r:2222\"\nsystem = \"tau\"\nkey = \"k\"\nrelay_host_key = \"SHA256:x\"\n",
    "{\"relay\":\"127.0.0.1:2222\",\"host_key\":\"SHA256:x\",\"system\":\"tau\",\"role\":\"device\",\
     \"name\":\"dev1\",\"id\":\"0123456789ab\",\"expires\":1,\"secret\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
];

const SPICE: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\xc3\x28",
    b".via.",
    b"/",
    b"/129",
    b"/-1",
    b":",
    b":99999",
    b"=",
    b"[",
    b"]",
    b"\"",
    b"\n",
    b"\\u0000",
    b"%",
    b"..",
    b"-",
    b"::",
    b"\xe2\x80\xae",
    b"99999999999999999999",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i + 1);
                input.drain(i..i + n);
            }
            3 => {
                let s = SPICE[rng.below(SPICE.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, s.iter().copied());
            }
            4 => {
                let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let i = rng.below(len + 1);
                let j = rng.below(other.len() + 1);
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            5 if len > 0 && len < 4096 => {
                // Repeat a slice: long and nested inputs.
                let i = rng.below(len);
                let chunk = input[i..].to_vec();
                for _ in 0..rng.below(64) {
                    input.extend_from_slice(&chunk);
                }
            }
            _ => {
                let n = rng.below(64);
                input.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
}

fn run_one(target: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        panic!(
            "fuzz target {target} panicked on input {:?} (add it to regressions)",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn every_parser_survives_a_seeded_fuzz_run() {
    const ROUNDS: usize = 4_000;
    let mut total = 0;
    let started = std::time::Instant::now();
    for (i, (target, f)) in fuzz::ALL.iter().enumerate() {
        let mut rng = Rng(0x5EED_0000 + i as u64);
        for seed in SEEDS {
            run_one(target, *f, seed.as_bytes());
        }
        for _ in 0..ROUNDS {
            let mut input = if rng.below(8) == 0 {
                (0..rng.below(256)).map(|_| rng.next() as u8).collect()
            } else {
                SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec()
            };
            mutate(&mut rng, &mut input);
            input.truncate(256 * 1024);
            run_one(target, *f, &input);
            total += 1;
        }
    }
    eprintln!(
        "fuzz smoke: {total} inputs over {} targets in {:?}",
        fuzz::ALL.len(),
        started.elapsed()
    );
}

/// Inputs that once broke a parser, or sit at its limits.
#[test]
fn regressions() {
    let cases: &[&[u8]] = &[
        b"",
        b".via.",
        b"a.via.",
        b".via.b",
        b"x.via.y.via.z",
        b"0.0.0.0/0",
        b"::/0",
        b"::ffff:10.0.0.1/128",
        b"10.0.0.0/33",
        b"fd00::/129",
        b"1.2.3.4/",
        b"65536=127.0.0.1:22",
        b"0=127.0.0.1:0",
        b"[::1",
        b"warren1.",
        b"warren1.====",
        b"label=\xff",
        b"node[1-1000000]",
        b"n[9-1]",
        b"n[[1]]",
        b"n[]",
        b"\x05\xff",
        b"\x05\x01\x00\x05\x01\x00\x03\xff",
    ];
    for (target, f) in fuzz::ALL {
        for c in cases {
            run_one(target, *f, c);
        }
        run_one(target, *f, &vec![b'a'; 1 << 20]);
        run_one(target, *f, &"[".repeat(100_000).into_bytes());
    }
}

/// Mutates a `conn` input message by message (its u16-length framing
/// kept), so that most mutations reach the handlers instead of breaking
/// the framing: flip bytes, drop, repeat or swap messages, splice in
/// another seed's messages.
fn mutate_messages(rng: &mut Rng, seeds: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let (mode, rest) = input.split_first().unwrap_or((&1, &[]));
    let mut msgs: Vec<Vec<u8>> = warren::ssh::fuzzing::split_messages(rest)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    for _ in 0..1 + rng.below(3) {
        let n = msgs.len();
        match rng.below(6) {
            0 if n > 0 => {
                let m = &mut msgs[rng.below(n)];
                if !m.is_empty() {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
            }
            1 if n > 0 => {
                msgs.remove(rng.below(n));
            }
            2 if n > 0 => {
                let m = msgs[rng.below(n)].clone();
                for _ in 0..1 + rng.below(50) {
                    msgs.insert(rng.below(msgs.len() + 1), m.clone());
                }
            }
            3 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                msgs.swap(a, b);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let theirs = warren::ssh::fuzzing::split_messages(&other[1..]);
                if !theirs.is_empty() {
                    let m = theirs[rng.below(theirs.len())].to_vec();
                    msgs.insert(rng.below(n + 1), m);
                }
            }
            _ if n > 0 => {
                let m = &mut msgs[rng.below(n)];
                let cut = rng.below(m.len() + 1);
                m.truncate(cut);
            }
            _ => {}
        }
    }
    let mut out = vec![*mode ^ u8::from(rng.below(16) == 0)];
    for m in msgs {
        let m = &m[..m.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// The connection task (a real server `Conn` after a real key exchange)
/// fed seeded message sequences: it must neither panic nor hang (see
/// `warren::ssh::fuzzing::conn`).
#[test]
fn the_connection_task_survives_a_seeded_fuzz_run() {
    const ROUNDS: usize = 150;
    let seeds = warren::ssh::fuzzing::conn_seeds();
    let started = std::time::Instant::now();
    let check = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| warren::ssh::fuzzing::conn(input))).is_err() {
            panic!("fuzz target conn panicked on input {input:?} (add it to regressions)");
        }
    };
    for seed in &seeds {
        check(seed);
    }
    let mut rng = Rng(0x5EED_C044);
    for _ in 0..ROUNDS {
        let input = if rng.below(10) == 0 {
            let mut raw = vec![1u8];
            raw.extend((0..rng.below(512)).map(|_| rng.next() as u8));
            raw
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate_messages(&mut rng, &seeds, seed)
        };
        check(&input);
    }
    eprintln!(
        "conn fuzz smoke: {} inputs in {:?}",
        seeds.len() + ROUNDS,
        started.elapsed()
    );
}
