//! The binary packet protocol (RFC 4253 §6) with the AEAD ciphers Warren
//! offers. The primitives come from `aws-lc-rs` (AES-GCM and its OpenSSH
//! chacha20-poly1305 construction); this file only frames packets, counts
//! nonces and checks every length before anything is allocated. The key
//! objects zero their key schedules when dropped (aws-lc-rs zeroizes its
//! ChaCha20 keys, and AWS-LC cleanses the AES-GCM context it frees).

use aws_lc_rs::aead::{
    self, Aad, LessSafeKey, Nonce, UnboundKey, chacha20_poly1305_openssh as chacha,
};
use bytes::BytesMut;
use thiserror::Error;

/// Longest `packet_length` accepted from a peer. RFC 4253 asks for at least
/// 35000; our channels announce 65535-byte packets, plus headers.
pub const MAX_PACKET_LEN: usize = 72 * 1024;

pub const TAG_LEN: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet length {0} out of bounds")]
    Length(u32),
    #[error("packet length {0} not a multiple of the cipher block")]
    Alignment(u32),
    #[error("bad padding length")]
    Padding,
    #[error("message authentication failed (corrupt or forged packet)")]
    Mac,
}

/// A cipher Warren offers, in preference order of [`CipherAlg::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    Aes256Gcm,
    Chacha20Poly1305,
    Aes128Gcm,
}

impl CipherAlg {
    pub const ALL: [CipherAlg; 3] = [
        CipherAlg::Aes256Gcm,
        CipherAlg::Chacha20Poly1305,
        CipherAlg::Aes128Gcm,
    ];

    /// The order Warren offers its ciphers in: AES-GCM first when the CPU
    /// has AES and carry-less multiply instructions (AES-GCM is then several
    /// times cheaper per byte than chacha20-poly1305), aes128 before aes256
    /// (fewer rounds); chacha20-poly1305 first on CPUs without them.
    pub fn preferred() -> Vec<CipherAlg> {
        if aes_in_hardware() {
            vec![
                CipherAlg::Aes128Gcm,
                CipherAlg::Aes256Gcm,
                CipherAlg::Chacha20Poly1305,
            ]
        } else {
            vec![
                CipherAlg::Chacha20Poly1305,
                CipherAlg::Aes128Gcm,
                CipherAlg::Aes256Gcm,
            ]
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes256Gcm => "aes256-gcm@openssh.com",
            CipherAlg::Chacha20Poly1305 => "chacha20-poly1305@openssh.com",
            CipherAlg::Aes128Gcm => "aes128-gcm@openssh.com",
        }
    }

    pub fn from_name(name: &str) -> Option<CipherAlg> {
        CipherAlg::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes256Gcm => 32,
            CipherAlg::Chacha20Poly1305 => chacha::KEY_LEN,
            CipherAlg::Aes128Gcm => 16,
        }
    }

    pub fn iv_len(self) -> usize {
        match self {
            CipherAlg::Chacha20Poly1305 => 0,
            _ => 12,
        }
    }

    fn gcm_key(self, key: &[u8]) -> Option<LessSafeKey> {
        let alg = match self {
            CipherAlg::Aes256Gcm => &aead::AES_256_GCM,
            CipherAlg::Aes128Gcm => &aead::AES_128_GCM,
            CipherAlg::Chacha20Poly1305 => return None,
        };
        UnboundKey::new(alg, key).ok().map(LessSafeKey::new)
    }
}

// Runtime CPU-feature detection from the `cpufeatures` crate (on aarch64
// its "aes" covers the crypto extension with PMULL).
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(aes_clmul, "aes", "pclmulqdq");
#[cfg(target_arch = "aarch64")]
cpufeatures::new!(aes_clmul, "aes");

/// Whether this CPU runs AES-GCM in hardware (AES-NI and PCLMULQDQ on
/// x86-64, the crypto extension on aarch64).
pub fn aes_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        aes_clmul::get()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The AES-GCM nonce of RFC 5647 §7.1: a fixed part and a counter that
/// grows by one per packet.
struct GcmNonce([u8; 12]);

impl GcmNonce {
    fn next(&mut self) -> Nonce {
        let n = Nonce::assume_unique_for_key(self.0);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&self.0[4..]);
        let c = u64::from_be_bytes(counter).wrapping_add(1);
        self.0[4..].copy_from_slice(&c.to_be_bytes());
        n
    }
}

/// The IV is derived key material too.
impl Drop for GcmNonce {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

fn gcm_nonce(iv: &[u8]) -> GcmNonce {
    let mut n = [0u8; 12];
    n.copy_from_slice(&iv[..12]);
    GcmNonce(n)
}

enum Keys {
    Plain,
    ChachaSeal(Box<chacha::SealingKey>),
    ChachaOpen(Box<chacha::OpeningKey>),
    Gcm(Box<LessSafeKey>, GcmNonce),
}

/// One direction of the packet protocol.
pub struct Direction {
    keys: Keys,
}

impl Direction {
    pub fn plain() -> Direction {
        Direction { keys: Keys::Plain }
    }

    /// Keys that can open but never seal: every seal fails (for tests of
    /// what the connection does then).
    #[cfg(test)]
    pub fn cannot_seal() -> Direction {
        Direction {
            keys: Keys::ChachaOpen(Box::new(chacha::OpeningKey::new(&[1u8; chacha::KEY_LEN]))),
        }
    }

    /// Keys for sending (`seal`) or receiving (`open`) with `alg`. `key` and
    /// `iv` are at least [`CipherAlg::key_len`] and [`CipherAlg::iv_len`] long.
    pub fn new(alg: CipherAlg, key: &[u8], iv: &[u8], seal: bool) -> Option<Direction> {
        let keys = match alg {
            CipherAlg::Chacha20Poly1305 => {
                let k: &[u8; chacha::KEY_LEN] = key.get(..chacha::KEY_LEN)?.try_into().ok()?;
                if seal {
                    Keys::ChachaSeal(Box::new(chacha::SealingKey::new(k)))
                } else {
                    Keys::ChachaOpen(Box::new(chacha::OpeningKey::new(k)))
                }
            }
            _ => Keys::Gcm(
                Box::new(alg.gcm_key(key.get(..alg.key_len())?)?),
                gcm_nonce(iv.get(..12)?),
            ),
        };
        Some(Direction { keys })
    }

    pub fn is_plain(&self) -> bool {
        matches!(self.keys, Keys::Plain)
    }

    fn block(&self) -> usize {
        match self.keys {
            Keys::Gcm(..) => 16,
            _ => 8,
        }
    }

    fn tag_len(&self) -> usize {
        if self.is_plain() { 0 } else { TAG_LEN }
    }

    /// Bytes a packet with `payload` bytes of payload takes on the wire.
    #[cfg(test)]
    pub fn wire_len(&self, payload: usize) -> usize {
        4 + self.packet_len(payload) + self.tag_len()
    }

    fn packet_len(&self, payload: usize) -> usize {
        let block = self.block();
        // With an AEAD the length field is not part of the padded block.
        let counted = 1 + payload + if self.is_plain() { 4 } else { 0 };
        let mut pad = block - counted % block;
        if pad < 4 {
            pad += block;
        }
        1 + payload + pad
    }

    /// Appends one packet whose payload is `head` followed by `body`.
    /// Returns false, with `out` as it was, when the keys cannot seal (the
    /// connection must then end: a packet never goes without its tag).
    pub fn seal(&mut self, seq: u32, head: &[u8], body: &[u8], out: &mut Vec<u8>) -> bool {
        let payload = head.len() + body.len();
        let packet_len = self.packet_len(payload);
        let pad = packet_len - 1 - payload;
        let start = out.len();
        out.reserve(4 + packet_len + self.tag_len());
        out.extend_from_slice(&(packet_len as u32).to_be_bytes());
        out.push(pad as u8);
        out.extend_from_slice(head);
        out.extend_from_slice(body);
        out.resize(out.len() + pad, 0);
        match self.encrypt(seq, &mut out[start..]) {
            Some(tag) => out.extend_from_slice(&tag),
            None if self.is_plain() => {}
            None => {
                out.truncate(start);
                return false;
            }
        }
        true
    }

    /// Seals the packet whose payload is `head` followed by
    /// `frame[data]` in place, when `frame` has room for the length, the
    /// padding length and `head` before the data and for the padding and tag
    /// after it (it does when it is the received packet the data came in).
    /// On success `frame` is exactly the packet to send.
    pub fn seal_frame(
        &mut self,
        seq: u32,
        head: &[u8],
        frame: &mut BytesMut,
        data: std::ops::Range<usize>,
    ) -> bool {
        if self.is_plain() {
            return false;
        }
        let payload = head.len() + data.len();
        let packet_len = self.packet_len(payload);
        let pad = packet_len - 1 - payload;
        let Some(start) = data.start.checked_sub(5 + head.len()) else {
            return false;
        };
        let end = data.end + pad;
        if end + self.tag_len() > frame.len() {
            return false;
        }
        // Only bytes around the data change until the encryption succeeds
        // (it fails, if ever, before touching anything), so a refused frame
        // still holds its data where it was.
        frame[start..start + 4].copy_from_slice(&(packet_len as u32).to_be_bytes());
        frame[start + 4] = pad as u8;
        frame[start + 5..data.start].copy_from_slice(head);
        frame[data.end..end].fill(0);
        let Some(tag) = self.encrypt(seq, &mut frame[start..end]) else {
            return false;
        };
        frame[end..end + TAG_LEN].copy_from_slice(&tag);
        frame.truncate(end + TAG_LEN);
        let _ = frame.split_to(start);
        true
    }

    /// Encrypts a packet (length field onwards, without the tag) in place;
    /// returns the tag, or `None` with no keys.
    fn encrypt(&mut self, seq: u32, packet: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        match &mut self.keys {
            Keys::Plain | Keys::ChachaOpen(_) => None,
            Keys::ChachaSeal(k) => {
                let mut tag = [0u8; TAG_LEN];
                k.seal_in_place(seq, packet, &mut tag);
                Some(tag)
            }
            Keys::Gcm(k, nonce) => {
                let (len, rest) = packet.split_at_mut(4);
                let aad: [u8; 4] = [len[0], len[1], len[2], len[3]];
                // Sealing cannot fail for packets far below GCM's size limit.
                let tag = k
                    .seal_in_place_separate_tag(nonce.next(), Aad::from(aad), rest)
                    .ok()?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                Some(out)
            }
        }
    }

    /// Decrypts and checks the `packet_length` field from the first four
    /// bytes of a packet; returns the packet's whole length on the wire.
    pub fn packet_size(&self, seq: u32, first: [u8; 4]) -> Result<usize, PacketError> {
        let len = match &self.keys {
            Keys::ChachaOpen(k) => u32::from_be_bytes(k.decrypt_packet_length(seq, first)),
            _ => u32::from_be_bytes(first),
        };
        let l = len as usize;
        if !(8..=MAX_PACKET_LEN).contains(&l) {
            return Err(PacketError::Length(len));
        }
        let counted = if self.is_plain() { l + 4 } else { l };
        if counted % self.block() != 0 {
            return Err(PacketError::Alignment(len));
        }
        Ok(4 + l + self.tag_len())
    }

    /// Authenticates and decrypts one whole packet in place (`buf` is exactly
    /// [`Direction::packet_size`] long); returns the payload's range in `buf`.
    pub fn open(
        &mut self,
        seq: u32,
        buf: &mut [u8],
    ) -> Result<std::ops::Range<usize>, PacketError> {
        let tag_len = self.tag_len();
        if buf.len() < 4 + 8 + tag_len {
            return Err(PacketError::Length(buf.len() as u32));
        }
        let body_end = buf.len() - tag_len;
        match &mut self.keys {
            Keys::Plain => {}
            // Sealing keys in an opening direction: fail closed, never
            // take a packet whose tag nobody checked.
            Keys::ChachaSeal(_) => return Err(PacketError::Mac),
            Keys::ChachaOpen(k) => {
                let (packet, tag) = buf.split_at_mut(body_end);
                let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| PacketError::Mac)?;
                k.open_in_place(seq, packet, tag)
                    .map_err(|_| PacketError::Mac)?;
                // The length field stays encrypted; the caller knows it.
            }
            Keys::Gcm(k, nonce) => {
                let (len, rest) = buf.split_at_mut(4);
                let aad: [u8; 4] = [len[0], len[1], len[2], len[3]];
                k.open_in_place(nonce.next(), Aad::from(aad), rest)
                    .map_err(|_| PacketError::Mac)?;
            }
        }
        let pad = usize::from(buf[4]);
        let packet_len = body_end - 4;
        if pad < 4 || pad + 1 >= packet_len {
            return Err(PacketError::Padding);
        }
        Ok(5..body_end - pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(alg: CipherAlg) -> (Direction, Direction) {
        let key = [7u8; 64];
        let iv = [9u8; 12];
        (
            Direction::new(alg, &key, &iv, true).unwrap(),
            Direction::new(alg, &key, &iv, false).unwrap(),
        )
    }

    fn round_trip(seal: &mut Direction, open: &mut Direction, seq: u32, payload: &[u8]) {
        let mut out = Vec::new();
        seal.seal(seq, &payload[..1], &payload[1..], &mut out);
        assert_eq!(out.len(), seal.wire_len(payload.len()));
        let first = [out[0], out[1], out[2], out[3]];
        let size = open.packet_size(seq, first).unwrap();
        assert_eq!(size, out.len());
        let range = open.open(seq, &mut out).unwrap();
        assert_eq!(&out[range], payload);
    }

    fn block(alg: CipherAlg) -> usize {
        if alg == CipherAlg::Chacha20Poly1305 {
            8
        } else {
            16
        }
    }

    /// A received channel-data packet for `data`, decrypted: what a relay
    /// holds when it forwards it.
    fn received_frame(
        from: CipherAlg,
        head: &[u8],
        data: &[u8],
    ) -> (BytesMut, std::ops::Range<usize>) {
        let (mut s, mut o) = pair(from);
        let mut wire = Vec::new();
        s.seal(4, head, data, &mut wire);
        let range = o.open(4, &mut wire).unwrap();
        let start = range.start + head.len();
        (BytesMut::from(&wire[..]), start..start + data.len())
    }

    #[test]
    fn a_frame_sealed_in_place_is_the_packet_seal_would_make() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        let head_in = [94u8, 0, 0, 0, 1, 0, 0, 0x9c, 0x40];
        let head_out = [94u8, 0, 0, 0, 9, 0, 0, 0x9c, 0x40];
        for from in CipherAlg::ALL {
            for to in CipherAlg::ALL {
                let (mut frame, range) = received_frame(from, &head_in, &data);
                let (mut a, _) = pair(to);
                let (mut b, mut open) = pair(to);
                let mut copied = Vec::new();
                a.seal(11, &head_out, &data, &mut copied);
                if b.seal_frame(11, &head_out, &mut frame, range) {
                    assert_eq!(&frame[..], &copied[..], "{from:?} -> {to:?}");
                    let r = open.open(11, &mut frame).unwrap();
                    assert_eq!(&frame[r.start + 9..r.end], &data[..]);
                } else {
                    // Only a peer with a smaller cipher block can leave too
                    // little padding room; nothing was changed or used up.
                    assert!(block(from) < block(to), "{from:?} -> {to:?}");
                    let mut again = Vec::new();
                    b.seal(11, &head_out, &data, &mut again);
                    assert_eq!(again, copied, "the refused frame consumed no nonce");
                }
            }
        }
    }

    #[test]
    fn a_frame_without_room_is_refused_untouched() {
        let (mut s, _) = pair(CipherAlg::Aes128Gcm);
        let mut frame = BytesMut::from(&[5u8; 100][..]);
        assert!(
            !s.seal_frame(0, &[94u8; 9], &mut frame, 3..90),
            "no room before the data"
        );
        assert!(
            !s.seal_frame(0, &[94u8; 9], &mut frame, 14..100),
            "no room after the data"
        );
        assert_eq!(&frame[..], &[5u8; 100][..]);
        assert!(!Direction::plain().seal_frame(0, &[94u8; 9], &mut frame, 14..50));
    }

    #[test]
    fn every_cipher_round_trips_many_packets() {
        for alg in CipherAlg::ALL {
            let (mut s, mut o) = pair(alg);
            for (seq, n) in [1usize, 2, 15, 16, 17, 100, 32768, 65535]
                .iter()
                .enumerate()
            {
                let payload: Vec<u8> = (0..*n).map(|i| i as u8).collect();
                round_trip(&mut s, &mut o, seq as u32, &payload);
            }
        }
        let (mut s, mut o) = (Direction::plain(), Direction::plain());
        round_trip(&mut s, &mut o, 0, b"\x14hello");
    }

    #[test]
    fn aes_gcm_is_preferred_when_the_cpu_has_aes_instructions() {
        let order = CipherAlg::preferred();
        assert_eq!(order.len(), CipherAlg::ALL.len());
        for alg in CipherAlg::ALL {
            assert!(order.contains(&alg), "{alg:?} offered");
        }
        if aes_in_hardware() {
            assert_eq!(order[..2], [CipherAlg::Aes128Gcm, CipherAlg::Aes256Gcm]);
        } else {
            assert_eq!(order[0], CipherAlg::Chacha20Poly1305);
        }
        #[cfg(target_arch = "x86_64")]
        if std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains(" aes ") && c.contains(" pclmulqdq "))
        {
            assert!(aes_in_hardware(), "cpuinfo lists aes and pclmulqdq");
        }
    }

    #[test]
    fn a_flipped_bit_fails_authentication() {
        for alg in CipherAlg::ALL {
            let (mut s, mut o) = pair(alg);
            let mut out = Vec::new();
            s.seal(3, b"\x5e", &[1u8; 100], &mut out);
            let last = out.len() - 1;
            out[last] ^= 1;
            let first = [out[0], out[1], out[2], out[3]];
            let size = o.packet_size(3, first).unwrap();
            assert_eq!(
                o.open(3, &mut out[..size]),
                Err(PacketError::Mac),
                "{alg:?}"
            );
        }
    }

    /// chacha20-poly1305's sealing keys never open a packet (AES-GCM keys
    /// are the same both ways): a swapped direction fails closed instead of
    /// taking packets whose tag nobody checked.
    #[test]
    fn a_chacha_sealing_direction_opens_nothing() {
        let alg = CipherAlg::Chacha20Poly1305;
        let (mut s, _) = pair(alg);
        let (mut other, _) = pair(alg);
        let mut out = Vec::new();
        s.seal(3, b"\x5e", &[1u8; 100], &mut out);
        assert_eq!(other.open(3, &mut out), Err(PacketError::Mac));
    }

    #[test]
    fn wrong_sequence_number_fails_authentication() {
        let (mut s, mut o) = pair(CipherAlg::Chacha20Poly1305);
        let mut out = Vec::new();
        s.seal(5, b"\x02", b"x", &mut out);
        // chacha's length decrypts to garbage under another sequence number,
        // so the bound check or the tag check fails.
        let first = [out[0], out[1], out[2], out[3]];
        match o.packet_size(6, first) {
            Err(_) => {}
            Ok(size) if size != out.len() => {}
            Ok(size) => assert_eq!(o.open(6, &mut out[..size]), Err(PacketError::Mac)),
        }
    }

    #[test]
    fn oversized_and_misaligned_lengths_are_refused_before_reading() {
        let o = Direction::plain();
        assert!(matches!(
            o.packet_size(0, (1u32 << 30).to_be_bytes()),
            Err(PacketError::Length(_))
        ));
        assert!(matches!(
            o.packet_size(0, 3u32.to_be_bytes()),
            Err(PacketError::Length(_))
        ));
        assert!(matches!(
            o.packet_size(0, 13u32.to_be_bytes()),
            Err(PacketError::Alignment(_))
        ));
        let (_, g) = pair(CipherAlg::Aes256Gcm);
        assert!(matches!(
            g.packet_size(0, 24u32.to_be_bytes()),
            Err(PacketError::Alignment(_))
        ));
    }
}
