//! Entry points that run the SSH parsers over arbitrary bytes, for the
//! `fuzz/` targets and the smoke test. None of them may panic.

use super::kex;
use super::packet::{CipherAlg, Direction};
use super::wire::Reader;

/// The packet decoder, plain and with each cipher: length check, then
/// authentication and padding checks on whatever `data` holds.
pub fn packet(data: &[u8]) {
    let key = [1u8; 64];
    let iv = [2u8; 12];
    let mut dirs = vec![Direction::plain()];
    for alg in CipherAlg::ALL {
        if let Some(d) = Direction::new(alg, &key, &iv, false) {
            dirs.push(d);
        }
    }
    for mut d in dirs {
        if data.len() < 4 {
            continue;
        }
        let seq = u32::from(data[0]);
        if let Ok(size) = d.packet_size(seq, [data[0], data[1], data[2], data[3]])
            && size <= data.len()
        {
            let mut buf = data[..size].to_vec();
            if let Ok(range) = d.open(seq, &mut buf) {
                let _ = &buf[range];
            }
        }
    }
}

/// Every message parser: KEXINIT, user keys, and the field layouts of the
/// messages the connection task reads.
pub fn messages(data: &[u8]) {
    if let Ok(k) = kex::parse_kexinit(data) {
        let ours = kex::our_kexinit(true, true, &kex::KexAlg::ALL, &CipherAlg::ALL);
        if let Ok(o) = kex::parse_kexinit(&ours) {
            let _ = kex::negotiate(&k, &o, true);
            let _ = kex::negotiate(&o, &k, false);
        }
    }
    let _ = kex::verify_host_signature(data, data, b"h");
    let mut r = Reader::new(data);
    if let Ok(alg) = r.utf8()
        && let Ok(blob) = r.string()
    {
        let _ = super::conn::user_key(alg, blob);
    }
    let _ = ssh_key::Signature::try_from(data);
    super::conn::parse_any(data);
}

#[cfg(test)]
mod tests {
    /// The fuzz targets' smoke run: the same entry points over a bounded,
    /// seeded random corpus plus mutations of valid messages.
    #[test]
    fn parsers_survive_random_and_mutated_input() {
        use super::super::packet::{CipherAlg, Direction};
        use super::super::wire::{Writer, msg};
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seeds: Vec<Vec<u8>> = vec![
            super::kex::our_kexinit(true, true, &super::kex::KexAlg::ALL, &CipherAlg::ALL),
            Writer::new(msg::CHANNEL_OPEN)
                .string("direct-tcpip")
                .u32(1)
                .u32(2)
                .u32(3)
                .string("h")
                .u32(4)
                .finish(),
            Writer::new(msg::CHANNEL_REQUEST)
                .u32(1)
                .string("exec")
                .bool(true)
                .string("ls")
                .finish(),
            Writer::new(msg::USERAUTH_REQUEST)
                .string("u")
                .string("ssh-connection")
                .string("publickey")
                .bool(true)
                .string("ssh-ed25519")
                .string([0u8; 51])
                .string([1u8; 83])
                .finish(),
            Writer::new(msg::GLOBAL_REQUEST)
                .string("tcpip-forward")
                .bool(true)
                .string("d")
                .u32(22)
                .finish(),
        ];
        let mut sealed = Vec::new();
        Direction::plain().seal(0, &seeds[0][..1], &seeds[0][1..], &mut sealed);
        seeds.push(sealed);
        for i in 0..20_000u32 {
            let mut input = if i % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                seeds[(next() % seeds.len() as u64) as usize].clone()
            };
            if !input.is_empty() {
                for _ in 0..(next() % 4) {
                    let at = (next() % input.len() as u64) as usize;
                    input[at] = next() as u8;
                }
                if next() % 3 == 0 {
                    input.truncate((next() % input.len() as u64) as usize);
                }
            }
            super::packet(&input);
            super::messages(&input);
        }
    }
}
