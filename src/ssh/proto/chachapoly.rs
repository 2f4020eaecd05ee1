//! `chacha20-poly1305@openssh.com` with wide vector code on x86-64.
//!
//! Stock OpenSSH clients pick this cipher for their leg to the relay, so the
//! relay pays one pass of it for every byte they send or receive. `ring`'s
//! version of the OpenSSH construction runs its 32-bit Poly1305 and a
//! ChaCha20 of its own at about 820 MB/s on the benchmark machine, more than
//! a third of the relay's CPU per GiB relayed (README, "Benchmarks"). This
//! file does the same construction with ChaCha20 on 16 blocks at a time
//! (AVX-512) or 8 (AVX2), and Poly1305 on four blocks at a time (AVX2), at
//! about 1,900 MB/s. Where the CPU has neither, [`Keys::new`] says so and the
//! packet layer keeps using `ring`.
//!
//! The construction (OpenSSH's PROTOCOL.chacha20poly1305): the 64-byte key is
//! a 32-byte main key K_2 followed by a 32-byte header key K_1; the nonce is
//! the packet sequence number as a 64-bit big-endian number. The length field
//! is encrypted with K_1 from block 0; the Poly1305 key is the first 32 bytes
//! of K_2's block 0, and the payload is encrypted with K_2 from block 1. The
//! tag is Poly1305 over the encrypted length and payload. Every step is the
//! same sequence of instructions whatever the data, so timing tells nothing;
//! tags are compared without an early exit.
//!
//! The tests check every path against `ring` (whole packets of every length
//! up to a few blocks past each vector width, random keys and sequence
//! numbers) and against the RFC 8439 vectors.

use super::packet::PacketError;

/// A 16-byte Poly1305 tag.
pub type Tag = [u8; 16];

/// ChaCha20 with the original 64-bit nonce and 64-bit block counter.
#[derive(Clone, Copy)]
struct Stream {
    key: [u32; 8],
    nonce: [u32; 2],
}

impl Stream {
    /// The 16-word input state, each word made a `V` by `splat` (itself
    /// for one block; one lane per block for the vector code), with the
    /// block counter's low and high words given.
    #[inline(always)]
    fn state<V: Copy>(&self, counter: [V; 2], splat: impl Fn(u32) -> V) -> [V; 16] {
        let words = [
            SIGMA[0],
            SIGMA[1],
            SIGMA[2],
            SIGMA[3],
            self.key[0],
            self.key[1],
            self.key[2],
            self.key[3],
            self.key[4],
            self.key[5],
            self.key[6],
            self.key[7],
            0,
            0,
            self.nonce[0],
            self.nonce[1],
        ];
        let mut state = words.map(splat);
        state[12] = counter[0];
        state[13] = counter[1];
        state
    }
}

/// How wide the ChaCha20 code runs on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// 16 blocks per step, AVX-512.
    Avx512,
    /// 8 blocks per step, AVX2.
    Avx2,
}

impl Width {
    /// The widest this CPU runs, or `None` without AVX2 (the packet layer
    /// then uses `ring`).
    pub fn detect() -> Option<Width> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
            {
                return Some(Width::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Some(Width::Avx2);
            }
        }
        None
    }

    /// Every width this CPU runs (for tests and the cipher benchmark).
    pub fn all_available() -> Vec<Width> {
        match Width::detect() {
            Some(Width::Avx512) => vec![Width::Avx512, Width::Avx2],
            Some(Width::Avx2) => vec![Width::Avx2],
            None => Vec::new(),
        }
    }
}

/// Keys for one direction of `chacha20-poly1305@openssh.com`.
pub struct Keys {
    main: [u32; 8],
    header: [u32; 8],
    width: Width,
}

impl Keys {
    /// Keys at the widest this CPU runs; `None` when it has no vector
    /// instructions this file uses.
    pub fn new(key: &[u8; 64]) -> Option<Keys> {
        Keys::with_width(key, Width::detect()?)
    }

    /// Keys at `width`, which the CPU must run (see [`Width::all_available`]).
    pub fn with_width(key: &[u8; 64], width: Width) -> Option<Keys> {
        if !Width::all_available().contains(&width) {
            return None;
        }
        Some(Keys {
            main: words(&key[..32]),
            header: words(&key[32..]),
            width,
        })
    }

    fn stream(&self, key: [u32; 8], seq: u32) -> Stream {
        Stream {
            key,
            nonce: [0, seq.swap_bytes()],
        }
    }

    /// Encrypts `packet` (length field first) in place and returns its
    /// tag; `None`, with nothing changed, for less than a length field.
    pub fn seal(&self, seq: u32, packet: &mut [u8]) -> Option<Tag> {
        if packet.len() < 4 {
            return None;
        }
        let (len, payload) = packet.split_at_mut(4);
        xor_block(self.stream(self.header, seq), 0, len);
        let poly_key = self
            .payload(seq, payload)
            .unwrap_or_else(|| first_block(self.stream(self.main, seq)));
        Some(poly1305(&poly_key, packet))
    }

    /// Checks the tag of `packet` (length field first, still encrypted) and
    /// decrypts its payload in place; the length field stays as it came.
    /// Nothing is decrypted when the tag is wrong.
    pub fn open(&self, seq: u32, packet: &mut [u8], tag: &Tag) -> Result<(), PacketError> {
        if packet.len() < 4 {
            return Err(PacketError::Length(packet.len() as u32));
        }
        let poly_key = first_block(self.stream(self.main, seq));
        let expected = poly1305(&poly_key, packet);
        if !same_tag(&expected, tag) {
            return Err(PacketError::Mac);
        }
        self.payload(seq, &mut packet[4..]);
        Ok(())
    }

    /// The packet length field, decrypted.
    pub fn decrypt_length(&self, seq: u32, mut first: [u8; 4]) -> [u8; 4] {
        xor_block(self.stream(self.header, seq), 0, &mut first);
        first
    }

    /// XORs the main key's stream from block 1 into `payload`; returns the
    /// Poly1305 key (block 0) when the vector code made it in the same pass.
    fn payload(&self, seq: u32, payload: &mut [u8]) -> Option<[u8; 32]> {
        let s = self.stream(self.main, seq);
        if payload.len() <= 3 * 64 {
            for (i, chunk) in payload.chunks_mut(64).enumerate() {
                xor_block(s, 1 + i as u64, chunk);
            }
            return None;
        }
        let mut poly_key = [0u8; 32];
        wide_xor(self.width, s, payload, &mut poly_key);
        Some(poly_key)
    }
}

fn words(key: &[u8]) -> [u32; 8] {
    let mut w = [0u32; 8];
    for (w, b) in w.iter_mut().zip(key.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    w
}

fn same_tag(a: &Tag, b: &Tag) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// One ChaCha20 block (RFC 8439 §2.3, with a 64-bit counter and nonce).
fn block(s: Stream, counter: u64) -> [u32; 16] {
    let init = s.state([counter as u32, (counter >> 32) as u32], |w| w);
    let mut x = init;
    let qr = |x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize| {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    };
    for _ in 0..10 {
        qr(&mut x, 0, 4, 8, 12);
        qr(&mut x, 1, 5, 9, 13);
        qr(&mut x, 2, 6, 10, 14);
        qr(&mut x, 3, 7, 11, 15);
        qr(&mut x, 0, 5, 10, 15);
        qr(&mut x, 1, 6, 11, 12);
        qr(&mut x, 2, 7, 8, 13);
        qr(&mut x, 3, 4, 9, 14);
    }
    for (x, i) in x.iter_mut().zip(init) {
        *x = x.wrapping_add(i);
    }
    x
}

/// XORs block `counter` into `data` (at most 64 bytes).
fn xor_block(s: Stream, counter: u64, data: &mut [u8]) {
    let ks = block(s, counter);
    for (i, b) in data.iter_mut().take(64).enumerate() {
        *b ^= ks[i / 4].to_le_bytes()[i % 4];
    }
}

/// The first 32 bytes of block 0: the Poly1305 key.
fn first_block(s: Stream) -> [u8; 32] {
    let ks = block(s, 0);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(ks) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// XORs blocks 1, 2, ... into `data` and writes the first half of block 0
/// to `poly_key`, with the vector code at `width`.
#[cfg(target_arch = "x86_64")]
fn wide_xor(width: Width, s: Stream, data: &mut [u8], poly_key: &mut [u8; 32]) {
    // SAFETY: a `Keys` has a `width` only after `Width::all_available` found
    // the CPU features its code needs.
    unsafe {
        match width {
            Width::Avx512 => x86::xor_avx512(s, data, poly_key),
            Width::Avx2 => x86::xor_avx2(s, data, poly_key),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn wide_xor(_: Width, s: Stream, data: &mut [u8], poly_key: &mut [u8; 32]) {
    for (i, chunk) in data.chunks_mut(64).enumerate() {
        xor_block(s, 1 + i as u64, chunk);
    }
    *poly_key = first_block(s);
}

/// Poly1305 (RFC 8439 §2.5) of `msg` with a one-time `key`.
pub fn poly1305(key: &[u8; 32], msg: &[u8]) -> Tag {
    let mut p = Poly::new(key);
    let mut used = 0;
    #[cfg(target_arch = "x86_64")]
    if msg.len() >= 128 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        used = unsafe { x86::poly_blocks(&mut p, msg) };
    }
    p.update(&msg[used..]);
    p.finish()
}

/// Poly1305 without vector code (tests compare the two).
#[cfg(test)]
fn poly1305_scalar(key: &[u8; 32], msg: &[u8]) -> Tag {
    let mut p = Poly::new(key);
    p.update(msg);
    p.finish()
}

/// Poly1305 state in radix 2^64: `h = h0 + h1·2^64 + h2·2^128`, kept below
/// a few times 2^130 between blocks.
#[derive(Clone, Copy)]
struct Poly {
    r0: u64,
    r1: u64,
    /// `r1 · 5/4`: `r1` is a multiple of 4 after clamping, and
    /// `2^128 ≡ 5/4 (mod 2^130 − 5)` for such multiples.
    s1: u64,
    h: [u64; 3],
    pad: [u64; 2],
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Poly {
    fn new(key: &[u8; 32]) -> Poly {
        let r0 = le64(&key[0..]) & 0x0fff_fffc_0fff_ffff;
        let r1 = le64(&key[8..]) & 0x0fff_fffc_0fff_fffc;
        Poly {
            r0,
            r1,
            s1: r1 + (r1 >> 2),
            h: [0; 3],
            pad: [le64(&key[16..]), le64(&key[24..])],
        }
    }

    /// `h = (h + m) · r`, partly reduced; `hibit` is 1 for a whole block.
    #[inline(always)]
    fn block(&mut self, m0: u64, m1: u64, hibit: u64) {
        let (r0, r1, s1) = (self.r0 as u128, self.r1 as u128, self.s1 as u128);
        let t = self.h[0] as u128 + m0 as u128;
        let h0 = t as u64 as u128;
        let t = self.h[1] as u128 + m1 as u128 + (t >> 64);
        let h1 = t as u64 as u128;
        let h2 = self.h[2] + (t >> 64) as u64 + hibit;
        let d0 = h0 * r0 + h1 * s1;
        let d1 = h0 * r1 + h1 * r0 + h2 as u128 * s1 + (d0 >> 64);
        let d2 = h2 * self.r0 + (d1 >> 64) as u64;
        // Bits from 2^130 up come back multiplied by 5.
        let t = d0 as u64 as u128 + (d2 >> 2) as u128 * 5;
        self.h[0] = t as u64;
        let t = d1 as u64 as u128 + (t >> 64);
        self.h[1] = t as u64;
        self.h[2] = (d2 & 3) + (t >> 64) as u64;
    }

    fn update(&mut self, msg: &[u8]) {
        let mut chunks = msg.chunks_exact(16);
        for c in &mut chunks {
            self.block(le64(c), le64(&c[8..]), 1);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 16];
            b[..rest.len()].copy_from_slice(rest);
            b[rest.len()] = 1;
            self.block(le64(&b), le64(&b[8..]), 0);
        }
    }

    /// `h · r` for any `h` below a few times 2^130 (the powers of `r`).
    #[cfg(target_arch = "x86_64")]
    fn times_r(&self, h: [u64; 3]) -> [u64; 3] {
        let mut q = Poly { h, ..*self };
        q.block(0, 0, 0);
        q.h
    }

    fn finish(self) -> Tag {
        let [mut h0, mut h1, mut h2] = self.h;
        let t = h0 as u128 + (h2 >> 2) as u128 * 5;
        h2 &= 3;
        h0 = t as u64;
        let t = h1 as u128 + (t >> 64);
        h1 = t as u64;
        h2 += (t >> 64) as u64;
        // h < 2^131 now; subtract p = 2^130 − 5 when h ≥ p, without a branch.
        let t = h0 as u128 + 5;
        let g0 = t as u64;
        let t = h1 as u128 + (t >> 64);
        let g1 = t as u64;
        let g2 = h2 + (t >> 64) as u64;
        let take_g = ((g2 >> 2) & 1).wrapping_neg();
        let h0 = (h0 & !take_g) | (g0 & take_g);
        let h1 = (h1 & !take_g) | (g1 & take_g);
        let t = h0 as u128 + self.pad[0] as u128;
        let t1 = (h1 as u128 + self.pad[1] as u128 + (t >> 64)) as u64;
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&(t as u64).to_le_bytes());
        tag[8..].copy_from_slice(&t1.to_le_bytes());
        tag
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The vector code. Every function here needs the CPU features named in
    //! its `target_feature`; callers check them first.

    use super::{Poly, Stream};
    use std::arch::x86_64::*;

    macro_rules! quarter_rounds {
        ($x:ident, $qr:ident) => {
            for _ in 0..10 {
                $qr(&mut $x, 0, 4, 8, 12);
                $qr(&mut $x, 1, 5, 9, 13);
                $qr(&mut $x, 2, 6, 10, 14);
                $qr(&mut $x, 3, 7, 11, 15);
                $qr(&mut $x, 0, 5, 10, 15);
                $qr(&mut $x, 1, 6, 11, 12);
                $qr(&mut $x, 2, 7, 8, 13);
                $qr(&mut $x, 3, 4, 9, 14);
            }
        };
    }

    /// Runs `step(counter, chunk)` over `data` in chunks of `width` bytes
    /// from block 1, with block 0's first half going to `poly_key`: the
    /// first step makes blocks 0.., so it works on a copy with room for
    /// block 0 in front. A short last chunk also goes through a copy.
    fn in_steps(
        width: usize,
        data: &mut [u8],
        poly_key: &mut [u8; 32],
        mut step: impl FnMut(u64, &mut [u8]),
    ) {
        let blocks = (width / 64) as u64;
        let mut buf = [0u8; 1024];
        let buf = &mut buf[..width];
        let first = data.len().min(width - 64);
        buf[64..64 + first].copy_from_slice(&data[..first]);
        step(0, buf);
        data[..first].copy_from_slice(&buf[64..64 + first]);
        poly_key.copy_from_slice(&buf[..32]);
        let mut counter = blocks;
        let mut chunks = data[first..].chunks_exact_mut(width);
        for c in &mut chunks {
            step(counter, c);
            counter += blocks;
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            buf[..rest.len()].copy_from_slice(rest);
            step(counter, buf);
            rest.copy_from_slice(&buf[..rest.len()]);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn xor_avx512(s: Stream, data: &mut [u8], poly_key: &mut [u8; 32]) {
        in_steps(1024, data, poly_key, |counter, buf| xor16(s, counter, buf));
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn xor_avx2(s: Stream, data: &mut [u8], poly_key: &mut [u8; 32]) {
        in_steps(512, data, poly_key, |counter, buf| xor8(s, counter, buf));
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn qr16(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
        x[a] = _mm512_add_epi32(x[a], x[b]);
        x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
        x[c] = _mm512_add_epi32(x[c], x[d]);
        x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
    }

    /// XORs blocks `counter..counter + 16` into `buf` (1024 bytes). Lane
    /// `l` of vector `w` is word `w` of block `l`; a transpose turns that
    /// into blocks.
    #[target_feature(enable = "avx512f")]
    fn xor16(s: Stream, counter: u64, buf: &mut [u8]) {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let lo = _mm512_add_epi32(_mm512_set1_epi32(counter as i32), lanes);
        let hi = _mm512_set1_epi32((counter >> 32) as i32);
        // Where the low word wrapped, carry one into the high word.
        let wrapped = _mm512_cmplt_epu32_mask(lo, lanes);
        let hi = _mm512_mask_add_epi32(hi, wrapped, hi, _mm512_set1_epi32(1));
        let init = s.state([lo, hi], |w| _mm512_set1_epi32(w as i32));
        let mut x = init;
        quarter_rounds!(x, qr16);
        for (x, i) in x.iter_mut().zip(init) {
            *x = _mm512_add_epi32(*x, i);
        }
        // Words 4g..4g+4 of block 4j + k end up in 128-bit lane j of t[4g + k].
        let mut t = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let a = _mm512_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
            let b = _mm512_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
            let c = _mm512_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
            let d = _mm512_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
            t[4 * g] = _mm512_unpacklo_epi64(a, c);
            t[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
            t[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
            t[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
        }
        for k in 0..4 {
            // A 4x4 transpose of 128-bit lanes across the four word groups.
            let p = _mm512_shuffle_i32x4::<0x44>(t[k], t[4 + k]);
            let q = _mm512_shuffle_i32x4::<0xee>(t[k], t[4 + k]);
            let r = _mm512_shuffle_i32x4::<0x44>(t[8 + k], t[12 + k]);
            let u = _mm512_shuffle_i32x4::<0xee>(t[8 + k], t[12 + k]);
            let blocks = [
                _mm512_shuffle_i32x4::<0x88>(p, r),
                _mm512_shuffle_i32x4::<0xdd>(p, r),
                _mm512_shuffle_i32x4::<0x88>(q, u),
                _mm512_shuffle_i32x4::<0xdd>(q, u),
            ];
            for (j, ks) in blocks.into_iter().enumerate() {
                let at = (4 * j + k) * 64;
                let out = &mut buf[at..at + 64];
                // SAFETY: `out` is 64 bytes; unaligned loads and stores.
                unsafe {
                    let v = _mm512_loadu_si512(out.as_ptr().cast());
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_xor_si512(v, ks));
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rol8x(x: __m256i, n: i32) -> __m256i {
        match n {
            16 => _mm256_shuffle_epi8(
                x,
                _mm256_setr_epi8(
                    2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5,
                    10, 11, 8, 9, 14, 15, 12, 13,
                ),
            ),
            8 => _mm256_shuffle_epi8(
                x,
                _mm256_setr_epi8(
                    3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0, 1, 2, 7, 4, 5, 6,
                    11, 8, 9, 10, 15, 12, 13, 14,
                ),
            ),
            12 => _mm256_or_si256(_mm256_slli_epi32::<12>(x), _mm256_srli_epi32::<20>(x)),
            _ => _mm256_or_si256(_mm256_slli_epi32::<7>(x), _mm256_srli_epi32::<25>(x)),
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn qr8(x: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize) {
        x[a] = _mm256_add_epi32(x[a], x[b]);
        x[d] = rol8x(_mm256_xor_si256(x[d], x[a]), 16);
        x[c] = _mm256_add_epi32(x[c], x[d]);
        x[b] = rol8x(_mm256_xor_si256(x[b], x[c]), 12);
        x[a] = _mm256_add_epi32(x[a], x[b]);
        x[d] = rol8x(_mm256_xor_si256(x[d], x[a]), 8);
        x[c] = _mm256_add_epi32(x[c], x[d]);
        x[b] = rol8x(_mm256_xor_si256(x[b], x[c]), 7);
    }

    /// XORs blocks `counter..counter + 8` into `buf` (512 bytes).
    #[target_feature(enable = "avx2")]
    fn xor8(s: Stream, counter: u64, buf: &mut [u8]) {
        let mut lo = [0i32; 8];
        let mut hi = [0i32; 8];
        for l in 0..8 {
            let c = counter.wrapping_add(l as u64);
            lo[l] = c as i32;
            hi[l] = (c >> 32) as i32;
        }
        let v = |a: [i32; 8]| _mm256_setr_epi32(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        let init = s.state([v(lo), v(hi)], |w| _mm256_set1_epi32(w as i32));
        let mut x = init;
        quarter_rounds!(x, qr8);
        for (x, i) in x.iter_mut().zip(init) {
            *x = _mm256_add_epi32(*x, i);
        }
        // Per half (words 0..8, then 8..16): an 8x8 transpose. After the
        // unpacks, 128-bit lane j of b[k] holds words 0..4 of block 4j + k
        // and lane j of c[k] words 4..8.
        for half in 0..2 {
            let w = &x[8 * half..8 * half + 8];
            let a: [__m256i; 8] = [
                _mm256_unpacklo_epi32(w[0], w[1]),
                _mm256_unpackhi_epi32(w[0], w[1]),
                _mm256_unpacklo_epi32(w[2], w[3]),
                _mm256_unpackhi_epi32(w[2], w[3]),
                _mm256_unpacklo_epi32(w[4], w[5]),
                _mm256_unpackhi_epi32(w[4], w[5]),
                _mm256_unpacklo_epi32(w[6], w[7]),
                _mm256_unpackhi_epi32(w[6], w[7]),
            ];
            let b = [
                _mm256_unpacklo_epi64(a[0], a[2]),
                _mm256_unpackhi_epi64(a[0], a[2]),
                _mm256_unpacklo_epi64(a[1], a[3]),
                _mm256_unpackhi_epi64(a[1], a[3]),
            ];
            let c = [
                _mm256_unpacklo_epi64(a[4], a[6]),
                _mm256_unpackhi_epi64(a[4], a[6]),
                _mm256_unpacklo_epi64(a[5], a[7]),
                _mm256_unpackhi_epi64(a[5], a[7]),
            ];
            for k in 0..4 {
                let low = _mm256_permute2x128_si256::<0x20>(b[k], c[k]);
                let high = _mm256_permute2x128_si256::<0x31>(b[k], c[k]);
                for (blk, ks) in [(k, low), (k + 4, high)] {
                    let at = blk * 64 + 32 * half;
                    let out = &mut buf[at..at + 32];
                    // SAFETY: `out` is 32 bytes; unaligned loads and stores.
                    unsafe {
                        let v = _mm256_loadu_si256(out.as_ptr().cast());
                        _mm256_storeu_si256(out.as_mut_ptr().cast(), _mm256_xor_si256(v, ks));
                    }
                }
            }
        }
    }

    const M26: u64 = (1 << 26) - 1;

    /// `h` in five 26-bit limbs (the last one may be a little longer).
    fn limbs(h: [u64; 3]) -> [u64; 5] {
        [
            h[0] & M26,
            (h[0] >> 26) & M26,
            ((h[0] >> 52) | (h[1] << 12)) & M26,
            (h[1] >> 14) & M26,
            (h[1] >> 40) | (h[2] << 24),
        ]
    }

    /// `vpmuludq`, written out: LLVM turns `_mm256_mul_epu32` of values
    /// whose upper halves it cannot see are zero (after the additions in the
    /// loop below) into a full 64x64 multiply, three multiplies and shifts,
    /// which halves the speed.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn mul32(a: __m256i, b: __m256i) -> __m256i {
        let r;
        // SAFETY: one AVX2 instruction on registers; no memory, no flags.
        unsafe {
            std::arch::asm!(
                "vpmuludq {r}, {a}, {b}",
                r = lateout(ymm_reg) r,
                a = in(ymm_reg) a,
                b = in(ymm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        r
    }

    /// Four lanes of `h · r` in 26-bit limbs, `s = 5r`, carried so every limb
    /// is below 2^26 plus a little.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn mul_lanes(h: &[__m256i; 5], r: &[__m256i; 5], s: &[__m256i; 5]) -> [__m256i; 5] {
        let add = |a, b| _mm256_add_epi64(a, b);
        let sum = |t: [(usize, &[__m256i; 5], usize); 5]| {
            t.iter()
                .map(|&(i, v, j)| mul32(h[i], v[j]))
                .fold(_mm256_setzero_si256(), add)
        };
        let mut d = [
            sum([(0, r, 0), (1, s, 4), (2, s, 3), (3, s, 2), (4, s, 1)]),
            sum([(0, r, 1), (1, r, 0), (2, s, 4), (3, s, 3), (4, s, 2)]),
            sum([(0, r, 2), (1, r, 1), (2, r, 0), (3, s, 4), (4, s, 3)]),
            sum([(0, r, 3), (1, r, 2), (2, r, 1), (3, r, 0), (4, s, 4)]),
            sum([(0, r, 4), (1, r, 3), (2, r, 2), (3, r, 1), (4, r, 0)]),
        ];
        let mask = _mm256_set1_epi64x(M26 as i64);
        let carry = |d: &mut [__m256i; 5], from: usize| {
            let c = _mm256_srli_epi64::<26>(d[from]);
            d[from] = _mm256_and_si256(d[from], mask);
            if from == 4 {
                // 2^130 ≡ 5: the carry out of the top comes back times 5.
                d[0] = add(d[0], add(c, _mm256_slli_epi64::<2>(c)));
            } else {
                d[from + 1] = add(d[from + 1], c);
            }
        };
        for from in [0, 3, 1, 4, 2, 0, 3] {
            carry(&mut d, from);
        }
        d
    }

    /// Blocks `0, 2, 1, 3` of the 64 bytes at `m` in 26-bit limbs, with
    /// the 2^128 bit of a whole block set.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn load4(m: &[u8]) -> [__m256i; 5] {
        // SAFETY: `m` holds at least 64 bytes (checked by the caller's
        // chunking); unaligned loads.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(m[..32].as_ptr().cast()),
                _mm256_loadu_si256(m[32..64].as_ptr().cast()),
            )
        };
        let lo = _mm256_unpacklo_epi64(x, y);
        let hi = _mm256_unpackhi_epi64(x, y);
        let mask = _mm256_set1_epi64x(M26 as i64);
        [
            _mm256_and_si256(lo, mask),
            _mm256_and_si256(_mm256_srli_epi64::<26>(lo), mask),
            _mm256_and_si256(
                _mm256_or_si256(_mm256_srli_epi64::<52>(lo), _mm256_slli_epi64::<12>(hi)),
                mask,
            ),
            _mm256_and_si256(_mm256_srli_epi64::<14>(hi), mask),
            _mm256_or_si256(_mm256_srli_epi64::<40>(hi), _mm256_set1_epi64x(1 << 24)),
        ]
    }

    /// Absorbs the longest multiple of 64 bytes at the start of `msg` into
    /// `p` (which has absorbed nothing yet) and returns its length. Four
    /// accumulators take every fourth block and multiply by `r^4` per step;
    /// at the end they are multiplied by `r^4, r^3, r^2, r` and added, which
    /// gives the same sum as one block at a time.
    #[target_feature(enable = "avx2")]
    pub(super) fn poly_blocks(p: &mut Poly, msg: &[u8]) -> usize {
        let n = msg.len() / 64;
        if n < 2 {
            return 0;
        }
        let r1 = [p.r0, p.r1, 0];
        let r2 = p.times_r(r1);
        let r3 = p.times_r(r2);
        let r4 = p.times_r(r3);
        let (l1, l2, l3, l4) = (limbs(r1), limbs(r2), limbs(r3), limbs(r4));
        let r4v = l4.map(|x| _mm256_set1_epi64x(x as i64));
        let s4v = l4.map(|x| _mm256_set1_epi64x((x * 5) as i64));
        let mut h = load4(msg);
        for chunk in msg[64..n * 64].chunks_exact(64) {
            let prod = mul_lanes(&h, &r4v, &s4v);
            let m = load4(chunk);
            for k in 0..5 {
                h[k] = _mm256_add_epi64(prod[k], m[k]);
            }
        }
        // Lanes hold blocks 0, 2, 1, 3 of each group of four.
        let lane_powers = |k: usize, times: u64| {
            _mm256_setr_epi64x(
                (l4[k] * times) as i64,
                (l2[k] * times) as i64,
                (l3[k] * times) as i64,
                (l1[k] * times) as i64,
            )
        };
        let rf: [__m256i; 5] = std::array::from_fn(|k| lane_powers(k, 1));
        let sf: [__m256i; 5] = std::array::from_fn(|k| lane_powers(k, 5));
        let d = mul_lanes(&h, &rf, &sf);
        let mut t = [0u64; 5];
        for (t, d) in t.iter_mut().zip(d) {
            let mut lanes = [0u64; 4];
            // SAFETY: 32 bytes into a 32-byte array; unaligned store.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), d) };
            *t = lanes.iter().sum();
        }
        // Limbs below 2^28: back to radix 2^64, partly reduced.
        let low = t[0] as u128 + ((t[1] as u128) << 26) + ((t[2] as u128) << 52);
        let mid = (low >> 64) + ((t[3] as u128) << 14) + ((t[4] as u128) << 40);
        let top = (mid >> 64) as u64;
        let x = low as u64 as u128 + (top >> 2) as u128 * 5;
        let y = mid as u64 as u128 + (x >> 64);
        p.h = [x as u64, y as u64, (top & 3) + (y >> 64) as u64];
        n * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::chacha20_poly1305_openssh as reference;

    /// A small deterministic generator (xorshift), so failures repeat.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_cpu_runs_a_vector_width() {
        // The benchmark and CI machines have AVX2 (and AVX-512 here); if
        // this fails, the relay runs on `ring`'s slower code and the tests
        // below check only the scalar parts.
        let widths = Width::all_available();
        eprintln!("vector widths on this CPU: {widths:?}");
        #[cfg(target_arch = "x86_64")]
        assert!(
            !widths.is_empty(),
            "this x86-64 CPU has no AVX2: the vector paths are untested here"
        );
    }

    #[test]
    fn chacha20_block_matches_rfc_8439() {
        // RFC 8439 §2.3.2, with its 32-bit counter 1 and 96-bit nonce
        // 000000090000004a00000000 as our 64-bit counter and nonce.
        let key: Vec<u8> = (0..32).collect();
        let s = Stream {
            key: words(&key),
            nonce: [0x4a00_0000, 0],
        };
        let counter = 1 | (0x0900_0000u64 << 32);
        let mut out = [0u8; 64];
        xor_block(s, counter, &mut out);
        assert_eq!(
            out.to_vec(),
            hex(
                "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e
                 d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
            )
        );
    }

    #[test]
    fn poly1305_matches_rfc_8439() {
        // RFC 8439 §2.5.2.
        let key: [u8; 32] = hex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
            .try_into()
            .unwrap();
        let tag = poly1305(&key, b"Cryptographic Forum Research Group");
        assert_eq!(tag.to_vec(), hex("a8061dc1305136c6c22b8baf0c0127a9"));
    }

    #[test]
    fn vector_poly1305_matches_the_scalar_code() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in (0..1200).chain([4096, 32_768 + 20]) {
            let key: [u8; 32] = rng.bytes(32).try_into().unwrap();
            let msg = rng.bytes(len);
            assert_eq!(poly1305(&key, &msg), poly1305_scalar(&key, &msg), "{len}");
        }
        // Limbs and accumulators at their largest: all-ones keys and data.
        for len in [128, 1024, 65_536] {
            let ones = vec![0xffu8; len];
            assert_eq!(
                poly1305(&[0xff; 32], &ones),
                poly1305_scalar(&[0xff; 32], &ones)
            );
        }
    }

    #[test]
    fn every_width_seals_and_opens_like_ring() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let widths = Width::all_available();
        let mut lens: Vec<usize> = (4..1200).collect();
        lens.extend([4096, 32_768 + 12, 65_536 + 4 + 7]);
        for &len in &lens {
            let key: [u8; 64] = rng.bytes(64).try_into().unwrap();
            let seq = match len % 4 {
                0 => 0,
                1 => u32::MAX,
                _ => rng.next() as u32,
            };
            let plain = rng.bytes(len);
            let mut want = plain.clone();
            let mut want_tag = [0u8; 16];
            reference::SealingKey::new(&key).seal_in_place(seq, &mut want, &mut want_tag);
            for &w in &widths {
                let keys = Keys::with_width(&key, w).unwrap();
                let mut got = plain.clone();
                let tag = keys.seal(seq, &mut got).unwrap();
                assert_eq!(got, want, "{w:?} len {len}");
                assert_eq!(tag, want_tag, "{w:?} len {len}");
                let first = [got[0], got[1], got[2], got[3]];
                assert_eq!(keys.decrypt_length(seq, first), plain[..4], "{w:?}");
                keys.open(seq, &mut got, &tag).unwrap();
                assert_eq!(got[4..], plain[4..], "{w:?} len {len}");
            }
        }
    }

    #[test]
    fn a_wrong_tag_or_byte_opens_nothing() {
        let key = [5u8; 64];
        for w in Width::all_available() {
            let keys = Keys::with_width(&key, w).unwrap();
            let mut packet = vec![0x42u8; 2000];
            let tag = keys.seal(9, &mut packet).unwrap();
            assert!(keys.seal(9, &mut [1, 2, 3]).is_none(), "no length field");
            let sealed = packet.clone();
            let mut bad_tag = tag;
            bad_tag[15] ^= 1;
            assert!(keys.open(9, &mut packet, &bad_tag).is_err());
            assert_eq!(packet, sealed, "nothing decrypted");
            packet[1000] ^= 0x80;
            assert!(keys.open(9, &mut packet, &tag).is_err());
            packet[1000] ^= 0x80;
            assert!(keys.open(10, &mut packet, &tag).is_err(), "wrong sequence");
            keys.open(9, &mut packet, &tag).unwrap();
            assert!(packet[4..].iter().all(|&b| b == 0x42));
        }
    }
}
