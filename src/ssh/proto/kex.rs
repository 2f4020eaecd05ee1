//! Key exchange (RFC 4253 §7–8, RFC 8731): KEXINIT lists and negotiation,
//! curve25519-sha256, the exchange hash and key derivation, ssh-ed25519 host
//! keys. Primitives come from `ring`.

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::digest::{Context, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};

use super::packet::CipherAlg;
use super::wire::{Reader, WireError, Writer, list_has, msg, put_mpint, put_string};

pub const KEX_ALGS: [&str; 2] = ["curve25519-sha256", "curve25519-sha256@libssh.org"];
pub const HOST_KEY_ALG: &str = "ssh-ed25519";
pub const STRICT_C: &str = "kex-strict-c-v00@openssh.com";
pub const STRICT_S: &str = "kex-strict-s-v00@openssh.com";
pub const EXT_INFO_C: &str = "ext-info-c";
/// Signature algorithms the server accepts for user authentication.
pub const SERVER_SIG_ALGS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";

/// The ten name-lists of a KEXINIT (RFC 4253 §7.1), borrowed from its payload.
#[derive(Debug)]
pub struct KexInit<'a> {
    pub kex: &'a str,
    pub host_key: &'a str,
    pub cipher_cs: &'a str,
    pub cipher_sc: &'a str,
    pub first_follows: bool,
}

pub fn parse_kexinit(payload: &[u8]) -> Result<KexInit<'_>, WireError> {
    let mut r = Reader::new(payload);
    if r.u8()? != msg::KEXINIT {
        return Err(WireError("not a KEXINIT"));
    }
    r.bytes(16)?;
    let kex = r.name_list()?;
    let host_key = r.name_list()?;
    let cipher_cs = r.name_list()?;
    let cipher_sc = r.name_list()?;
    for _ in 0..6 {
        r.name_list()?;
    }
    let first_follows = r.bool()?;
    r.u32()?;
    Ok(KexInit {
        kex,
        host_key,
        cipher_cs,
        cipher_sc,
        first_follows,
    })
}

/// Our KEXINIT. The strict-kex and ext-info markers go only into the first.
pub fn our_kexinit(server: bool, first: bool, ciphers: &[CipherAlg]) -> Vec<u8> {
    let mut cookie = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut cookie);
    let mut kex = KEX_ALGS.join(",");
    if first {
        kex.push(',');
        kex.push_str(if server {
            STRICT_S
        } else {
            "ext-info-c,kex-strict-c-v00@openssh.com"
        });
    }
    let ciphers: Vec<&str> = ciphers.iter().map(|c| c.name()).collect();
    let ciphers = ciphers.join(",");
    // MACs are unused with AEAD ciphers, but the list may not be empty.
    Writer::new(msg::KEXINIT)
        .raw(&cookie)
        .string(&kex)
        .string(HOST_KEY_ALG)
        .string(&ciphers)
        .string(&ciphers)
        .string("hmac-sha2-256")
        .string("hmac-sha2-256")
        .string("none")
        .string("none")
        .string("")
        .string("")
        .bool(false)
        .u32(0)
        .finish()
}

/// What both KEXINITs agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub cipher_cs: CipherAlg,
    pub cipher_sc: CipherAlg,
    /// Both sides offered strict key exchange.
    pub strict: bool,
    /// The client asked for EXT_INFO (meaningful to a server).
    pub client_ext_info: bool,
    /// The peer sent a guessed first kex packet that must be ignored.
    pub ignore_guess: bool,
}

fn choose<'a>(client: &'a str, server: &str) -> Option<&'a str> {
    client.split(',').find(|c| list_has(server, c))
}

/// Negotiates per RFC 4253 §7.1: the client's first choice the server has.
pub fn negotiate(
    client: &KexInit,
    server: &KexInit,
    we_are_server: bool,
) -> Result<Negotiated, String> {
    let kex = choose(client.kex, server.kex)
        .filter(|k| KEX_ALGS.contains(k))
        .ok_or_else(|| {
            format!(
                "no common key exchange (peer offers {})",
                if we_are_server {
                    client.kex
                } else {
                    server.kex
                }
            )
        })?;
    choose(client.host_key, server.host_key)
        .filter(|k| *k == HOST_KEY_ALG)
        .ok_or("no common host key algorithm (Warren uses ssh-ed25519)")?;
    let cipher = |c: &str, s: &str| {
        choose(c, s).and_then(CipherAlg::from_name).ok_or_else(|| {
            format!(
                "no common cipher (peer offers {})",
                if we_are_server { c } else { s }
            )
        })
    };
    let cipher_cs = cipher(client.cipher_cs, server.cipher_cs)?;
    let cipher_sc = cipher(client.cipher_sc, server.cipher_sc)?;
    let peer = if we_are_server { client } else { server };
    let guess_right = peer.kex.split(',').next() == Some(kex)
        && peer.host_key.split(',').next() == Some(HOST_KEY_ALG);
    Ok(Negotiated {
        cipher_cs,
        cipher_sc,
        strict: list_has(client.kex, STRICT_C) && list_has(server.kex, STRICT_S),
        client_ext_info: list_has(client.kex, EXT_INFO_C),
        ignore_guess: peer.first_follows && !guess_right,
    })
}

/// Our half of an X25519 exchange.
pub struct Ephemeral {
    private: EphemeralPrivateKey,
    pub public: Vec<u8>,
}

impl Ephemeral {
    pub fn new() -> Result<Ephemeral, String> {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng)
            .map_err(|_| "x25519 key generation failed")?;
        let public = private
            .compute_public_key()
            .map_err(|_| "x25519 public key failed")?
            .as_ref()
            .to_vec();
        Ok(Ephemeral { private, public })
    }

    /// The shared secret with `peer`, as the `mpint` K of the exchange hash.
    pub fn agree(self, peer: &[u8]) -> Result<Vec<u8>, String> {
        if peer.len() != 32 {
            return Err("peer's curve25519 key is not 32 bytes".into());
        }
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agreement::agree_ephemeral(self.private, &peer, |k| {
            let mut out = Vec::with_capacity(37);
            put_mpint(&mut out, k);
            out
        })
        .map_err(|_| "curve25519 agreement failed (invalid peer key)".to_string())
    }
}

/// Inputs of the exchange hash H (RFC 4253 §8, RFC 5656 §4).
pub struct HashInput<'a> {
    pub v_c: &'a [u8],
    pub v_s: &'a [u8],
    pub i_c: &'a [u8],
    pub i_s: &'a [u8],
    pub k_s: &'a [u8],
    pub q_c: &'a [u8],
    pub q_s: &'a [u8],
    /// K, already encoded as an mpint.
    pub k: &'a [u8],
}

pub fn exchange_hash(h: &HashInput) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1024);
    for part in [h.v_c, h.v_s, h.i_c, h.i_s, h.k_s, h.q_c, h.q_s] {
        put_string(&mut buf, part);
    }
    buf.extend_from_slice(h.k);
    ring::digest::digest(&SHA256, &buf).as_ref().to_vec()
}

/// Derives `len` bytes of key material for `letter` (RFC 4253 §7.2).
pub fn derive(k: &[u8], h: &[u8], letter: u8, session_id: &[u8], len: usize) -> Vec<u8> {
    let mut ctx = Context::new(&SHA256);
    ctx.update(k);
    ctx.update(h);
    ctx.update(&[letter]);
    ctx.update(session_id);
    let mut out = ctx.finish().as_ref().to_vec();
    while out.len() < len {
        let mut ctx = Context::new(&SHA256);
        ctx.update(k);
        ctx.update(h);
        ctx.update(&out);
        out.extend_from_slice(ctx.finish().as_ref());
    }
    out.truncate(len);
    out
}

/// The relay's ed25519 host key, ready to sign.
pub struct HostKey {
    pair: Ed25519KeyPair,
    blob: Vec<u8>,
}

impl HostKey {
    pub fn from_seed(seed: &[u8; 32]) -> Result<HostKey, String> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| "invalid ed25519 seed")?;
        let blob = Writer::default()
            .string(HOST_KEY_ALG)
            .string(pair.public_key().as_ref())
            .finish();
        Ok(HostKey { pair, blob })
    }

    /// K_S: the public key in SSH wire format.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        Writer::default()
            .string(HOST_KEY_ALG)
            .string(self.pair.sign(data).as_ref())
            .finish()
    }
}

/// Checks the server's signature of `h` by host key `k_s` (both in wire format).
pub fn verify_host_signature(k_s: &[u8], sig: &[u8], h: &[u8]) -> Result<(), String> {
    let mut kr = Reader::new(k_s);
    let mut sr = Reader::new(sig);
    let parsed = (|| -> Result<(&[u8], &[u8]), WireError> {
        if kr.utf8()? != HOST_KEY_ALG || sr.utf8()? != HOST_KEY_ALG {
            return Err(WireError("host key is not ssh-ed25519"));
        }
        Ok((kr.string()?, sr.string()?))
    })();
    let (public, signature) = parsed.map_err(|e| e.to_string())?;
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(h, signature)
        .map_err(|_| "the relay's host key signature does not verify".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kexinit_round_trips_and_negotiates_strict() {
        let c = our_kexinit(false, true, &CipherAlg::ALL);
        let s = our_kexinit(true, true, &[CipherAlg::Chacha20Poly1305]);
        let (c, s) = (parse_kexinit(&c).unwrap(), parse_kexinit(&s).unwrap());
        let n = negotiate(&c, &s, true).unwrap();
        assert_eq!(n.cipher_cs, CipherAlg::Chacha20Poly1305);
        assert!(n.strict && n.client_ext_info && !n.ignore_guess);
        // Later KEXINITs carry no markers.
        let c2 = our_kexinit(false, false, &CipherAlg::ALL);
        let n2 = negotiate(&parse_kexinit(&c2).unwrap(), &s, true).unwrap();
        assert!(!n2.strict && !n2.client_ext_info);
    }

    #[test]
    fn no_common_cipher_is_an_error() {
        let c = our_kexinit(false, true, &[CipherAlg::Aes128Gcm]);
        let s = our_kexinit(true, true, &[CipherAlg::Aes256Gcm]);
        let err = negotiate(
            &parse_kexinit(&c).unwrap(),
            &parse_kexinit(&s).unwrap(),
            true,
        )
        .unwrap_err();
        assert!(err.contains("cipher"), "{err}");
    }

    #[test]
    fn both_sides_derive_the_same_secret_and_the_signature_verifies() {
        let a = Ephemeral::new().unwrap();
        let b = Ephemeral::new().unwrap();
        let (pa, pb) = (a.public.clone(), b.public.clone());
        assert_eq!(a.agree(&pb).unwrap(), b.agree(&pa).unwrap());
        let host = HostKey::from_seed(&[3u8; 32]).unwrap();
        let sig = host.sign(b"hash");
        verify_host_signature(host.blob(), &sig, b"hash").unwrap();
        assert!(verify_host_signature(host.blob(), &sig, b"hasH").is_err());
        assert!(Ephemeral::new().unwrap().agree(&[0u8; 32]).is_err());
    }

    #[test]
    fn key_derivation_extends_past_one_hash() {
        let k = derive(b"k", b"h", b'C', b"sid", 64);
        assert_eq!(k.len(), 64);
        assert_eq!(&k[..32], &derive(b"k", b"h", b'C', b"sid", 32)[..]);
        assert_ne!(k, derive(b"k", b"h", b'D', b"sid", 64));
    }
}
