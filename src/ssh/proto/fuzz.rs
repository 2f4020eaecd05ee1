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
        let ours = kex::our_kexinit(true, true, &CipherAlg::ALL);
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
