//! Key exchange (RFC 4253 §7–8, RFC 8731, draft-ietf-sshm-mlkem-hybrid-kex):
//! KEXINIT lists and negotiation, mlkem768x25519-sha256 and
//! curve25519-sha256, the exchange hash and key derivation, ssh-ed25519 host
//! keys. Primitives come from `aws-lc-rs`; the shared secret and derived keys
//! are zeroed when dropped.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use super::packet::CipherAlg;
use super::wire::{Reader, WireError, Writer, list_has, msg, put_mpint, put_string};

pub const HOST_KEY_ALG: &str = "ssh-ed25519";
pub const STRICT_C: &str = "kex-strict-c-v00@openssh.com";
pub const STRICT_S: &str = "kex-strict-s-v00@openssh.com";
pub const EXT_INFO_C: &str = "ext-info-c";
/// Signature algorithms the server accepts for user authentication.
pub const SERVER_SIG_ALGS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";
/// The one compression Warren speaks.
pub const COMPRESSION_NONE: &str = "none";

/// ML-KEM-768 sizes (FIPS 203): encapsulation key and ciphertext.
const MLKEM768_PUBLIC_LEN: usize = 1184;
const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
const X25519_LEN: usize = 32;

/// A key exchange Warren offers, in preference order of [`KexAlg::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KexAlg {
    /// ML-KEM-768 with X25519, SHA-256 (the post-quantum hybrid of
    /// draft-ietf-sshm-mlkem-hybrid-kex; OpenSSH 10's default).
    Mlkem768X25519,
    Curve25519,
    /// The same exchange under its pre-RFC name, for older clients.
    Curve25519Libssh,
}

impl KexAlg {
    pub const ALL: [KexAlg; 3] = [
        KexAlg::Mlkem768X25519,
        KexAlg::Curve25519,
        KexAlg::Curve25519Libssh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KexAlg::Mlkem768X25519 => "mlkem768x25519-sha256",
            KexAlg::Curve25519 => "curve25519-sha256",
            KexAlg::Curve25519Libssh => "curve25519-sha256@libssh.org",
        }
    }

    pub fn from_name(name: &str) -> Option<KexAlg> {
        KexAlg::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Parses an operator's comma-separated list of algorithm names (as sshd's
/// `Ciphers`/`KexAlgorithms`), keeping its order; an unknown or repeated
/// name, or an empty list, is refused with the names Warren knows.
pub fn parse_names<T: Copy + PartialEq>(
    what: &str,
    list: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<Vec<T>, String> {
    let known = || all.iter().map(|a| name(*a)).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let Some(alg) = all.iter().copied().find(|a| name(*a) == item) else {
            return Err(format!("unknown {what} {item:?} (known: {})", known()));
        };
        if out.contains(&alg) {
            return Err(format!("{what} {item:?} is listed twice"));
        }
        out.push(alg);
    }
    Ok(out)
}

/// The ten name-lists of a KEXINIT (RFC 4253 §7.1), borrowed from its payload.
#[derive(Debug)]
pub struct KexInit<'a> {
    pub kex: &'a str,
    pub host_key: &'a str,
    pub cipher_cs: &'a str,
    pub cipher_sc: &'a str,
    pub comp_cs: &'a str,
    pub comp_sc: &'a str,
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
    // MACs: never negotiated, as every cipher Warren speaks is an AEAD.
    r.name_list()?;
    r.name_list()?;
    let comp_cs = r.name_list()?;
    let comp_sc = r.name_list()?;
    // Languages: never used (RFC 4253 §7.1 lets both be empty).
    r.name_list()?;
    r.name_list()?;
    let first_follows = r.bool()?;
    r.u32()?;
    Ok(KexInit {
        kex,
        host_key,
        cipher_cs,
        cipher_sc,
        comp_cs,
        comp_sc,
        first_follows,
    })
}

/// Our KEXINIT. The strict-kex and ext-info markers go only into the first.
pub fn our_kexinit(
    server: bool,
    first: bool,
    kex_algs: &[KexAlg],
    ciphers: &[CipherAlg],
) -> Vec<u8> {
    let mut cookie = [0u8; 16];
    // A cookie only has to differ between connections; a failing system
    // RNG is caught when the ephemeral keys are made.
    let _ = aws_lc_rs::rand::fill(&mut cookie);
    let mut kex: Vec<&str> = kex_algs.iter().map(|k| k.name()).collect();
    if first {
        if server {
            kex.push(STRICT_S);
        } else {
            kex.extend([EXT_INFO_C, STRICT_C]);
        }
    }
    let kex = kex.join(",");
    let ciphers: Vec<&str> = ciphers.iter().map(|c| c.name()).collect();
    let ciphers = ciphers.join(",");
    // Every cipher Warren speaks is an AEAD, so no MAC is ever used (RFC
    // 5647 §5.1; OpenSSH skips MAC negotiation for them too); the list may
    // not be empty, so it names one a peer will recognise.
    Writer::new(msg::KEXINIT)
        .raw(&cookie)
        .string(&kex)
        .string(HOST_KEY_ALG)
        .string(&ciphers)
        .string(&ciphers)
        .string("hmac-sha2-256")
        .string("hmac-sha2-256")
        .string(COMPRESSION_NONE)
        .string(COMPRESSION_NONE)
        .string("")
        .string("")
        .bool(false)
        .u32(0)
        .finish()
}

/// What both KEXINITs agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub kex: KexAlg,
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
/// Our own lists only hold what we implement, so any common name is ours.
pub fn negotiate(
    client: &KexInit,
    server: &KexInit,
    we_are_server: bool,
) -> Result<Negotiated, String> {
    let peer = if we_are_server { client } else { server };
    let kex = choose(client.kex, server.kex)
        .and_then(KexAlg::from_name)
        .ok_or_else(|| format!("no common key exchange (peer offers {})", peer.kex))?;
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
    // MAC lists are parsed but not negotiated: every cipher above is an
    // AEAD, whose tag replaces the MAC.
    for (dir, c, s) in [
        ("client to server", client.comp_cs, server.comp_cs),
        ("server to client", client.comp_sc, server.comp_sc),
    ] {
        if choose(c, s) != Some(COMPRESSION_NONE) {
            let theirs = if we_are_server { c } else { s };
            return Err(format!(
                "no common compression {dir} (peer offers {theirs:?}; Warren supports only \"none\")"
            ));
        }
    }
    let guess_right = peer.kex.split(',').next() == Some(kex.name())
        && peer.host_key.split(',').next() == Some(HOST_KEY_ALG);
    Ok(Negotiated {
        kex,
        cipher_cs,
        cipher_sc,
        strict: list_has(client.kex, STRICT_C) && list_has(server.kex, STRICT_S),
        client_ext_info: list_has(client.kex, EXT_INFO_C),
        ignore_guess: peer.first_follows && !guess_right,
    })
}

/// K, the shared secret, already encoded for the exchange hash and key
/// derivation (an mpint for curve25519, a string for the hybrid). Zeroed
/// when dropped.
pub type SharedSecret = Zeroizing<Vec<u8>>;

/// Our half of an X25519 exchange.
pub struct Ephemeral {
    private: EphemeralPrivateKey,
    pub public: Vec<u8>,
}

impl Ephemeral {
    pub fn new() -> Result<Ephemeral, String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng)
            .map_err(|_| "x25519 key generation failed")?;
        let public = private
            .compute_public_key()
            .map_err(|_| "x25519 public key failed")?
            .as_ref()
            .to_vec();
        Ok(Ephemeral { private, public })
    }

    /// The raw X25519 shared secret with `peer` (an all-zero result, from a
    /// low-order point, is refused by aws-lc-rs).
    fn raw_agree(self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        if peer.len() != X25519_LEN {
            return Err("peer's curve25519 key is not 32 bytes".into());
        }
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agreement::agree_ephemeral(self.private, peer, (), |k| Ok(Zeroizing::new(k.to_vec())))
            .map_err(|()| "curve25519 agreement failed (invalid peer key)".to_string())
    }

    /// The shared secret with `peer`, as the `mpint` K of the exchange hash.
    pub fn agree(self, peer: &[u8]) -> Result<SharedSecret, String> {
        let raw = self.raw_agree(peer)?;
        let mut out = Zeroizing::new(Vec::with_capacity(37));
        put_mpint(&mut out, &raw);
        Ok(out)
    }
}

/// The hybrid's K: SHA-256 of the ML-KEM and X25519 shared secrets, encoded
/// as an SSH string (not an mpint).
pub fn hybrid_secret(mlkem: &[u8], x25519: &[u8]) -> SharedSecret {
    let mut ctx = Context::new(&SHA256);
    ctx.update(mlkem);
    ctx.update(x25519);
    let digest = ctx.finish();
    let mut out = Zeroizing::new(Vec::with_capacity(36));
    put_string(&mut out, digest.as_ref());
    out
}

/// The client's side of the negotiated exchange, between sending its
/// public value and reading the server's.
pub enum ClientKex {
    Curve(Ephemeral),
    Hybrid {
        x25519: Ephemeral,
        mlkem: DecapsulationKey,
    },
}

impl ClientKex {
    /// Fresh keys for `alg`, and Q_C (the hybrid's C_INIT: the ML-KEM
    /// encapsulation key followed by the X25519 public key).
    pub fn new(alg: KexAlg) -> Result<(ClientKex, Vec<u8>), String> {
        let x25519 = Ephemeral::new()?;
        match alg {
            KexAlg::Curve25519 | KexAlg::Curve25519Libssh => {
                let q_c = x25519.public.clone();
                Ok((ClientKex::Curve(x25519), q_c))
            }
            KexAlg::Mlkem768X25519 => {
                let mlkem = DecapsulationKey::generate(&ML_KEM_768)
                    .map_err(|_| "ML-KEM-768 key generation failed")?;
                let public = mlkem
                    .encapsulation_key()
                    .and_then(|k| k.key_bytes())
                    .map_err(|_| "ML-KEM-768 encapsulation key failed")?;
                let mut q_c = public.as_ref().to_vec();
                q_c.extend_from_slice(&x25519.public);
                Ok((ClientKex::Hybrid { x25519, mlkem }, q_c))
            }
        }
    }

    /// K from the server's Q_S (the hybrid's S_REPLY: the ML-KEM ciphertext
    /// followed by the server's X25519 public key).
    pub fn finish(self, q_s: &[u8]) -> Result<SharedSecret, String> {
        match self {
            ClientKex::Curve(e) => e.agree(q_s),
            ClientKex::Hybrid { x25519, mlkem } => {
                if q_s.len() != MLKEM768_CIPHERTEXT_LEN + X25519_LEN {
                    return Err(format!(
                        "server's mlkem768x25519 reply is {} bytes, not {}",
                        q_s.len(),
                        MLKEM768_CIPHERTEXT_LEN + X25519_LEN
                    ));
                }
                let (ct, x) = q_s.split_at(MLKEM768_CIPHERTEXT_LEN);
                let pq = mlkem
                    .decapsulate(Ciphertext::from(ct))
                    .map_err(|_| "ML-KEM-768 decapsulation failed")?;
                let cl = x25519.raw_agree(x)?;
                Ok(hybrid_secret(pq.as_ref(), &cl))
            }
        }
    }
}

/// The server's side: Q_S (the hybrid's S_REPLY) and K for the client's Q_C.
pub fn server_kex(alg: KexAlg, q_c: &[u8]) -> Result<(Vec<u8>, SharedSecret), String> {
    let x25519 = Ephemeral::new()?;
    let q_s_x = x25519.public.clone();
    match alg {
        KexAlg::Curve25519 | KexAlg::Curve25519Libssh => {
            let k = x25519.agree(q_c)?;
            Ok((q_s_x, k))
        }
        KexAlg::Mlkem768X25519 => {
            if q_c.len() != MLKEM768_PUBLIC_LEN + X25519_LEN {
                return Err(format!(
                    "client's mlkem768x25519 init is {} bytes, not {}",
                    q_c.len(),
                    MLKEM768_PUBLIC_LEN + X25519_LEN
                ));
            }
            let (pk, x) = q_c.split_at(MLKEM768_PUBLIC_LEN);
            let pk = EncapsulationKey::new(&ML_KEM_768, pk)
                .map_err(|_| "client's ML-KEM-768 encapsulation key is invalid")?;
            let (ct, pq) = pk
                .encapsulate()
                .map_err(|_| "ML-KEM-768 encapsulation failed")?;
            let cl = x25519.raw_agree(x)?;
            let mut q_s = ct.as_ref().to_vec();
            q_s.extend_from_slice(&q_s_x);
            Ok((q_s, hybrid_secret(pq.as_ref(), &cl)))
        }
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
    /// K, already encoded (see [`SharedSecret`]).
    pub k: &'a [u8],
}

pub fn exchange_hash(h: &HashInput) -> Vec<u8> {
    let parts = [h.v_c, h.v_s, h.i_c, h.i_s, h.k_s, h.q_c, h.q_s];
    // Sized up front: the buffer holds K, and is zeroed when dropped.
    let len = parts.iter().map(|p| 4 + p.len()).sum::<usize>() + h.k.len();
    let mut buf = Zeroizing::new(Vec::with_capacity(len));
    for part in parts {
        put_string(&mut buf, part);
    }
    buf.extend_from_slice(h.k);
    aws_lc_rs::digest::digest(&SHA256, &buf).as_ref().to_vec()
}

/// Derives `len` bytes of key material for `letter` (RFC 4253 §7.2).
/// The result is zeroed when dropped.
pub fn derive(k: &[u8], h: &[u8], letter: u8, session_id: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut ctx = Context::new(&SHA256);
    ctx.update(k);
    ctx.update(h);
    ctx.update(&[letter]);
    ctx.update(session_id);
    // Room for the whole output up front, so that growing it never leaves
    // a copy of key material behind in a freed buffer.
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    out.extend_from_slice(ctx.finish().as_ref());
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

    fn kexinit(server: bool, first: bool, ciphers: &[CipherAlg]) -> Vec<u8> {
        our_kexinit(server, first, &KexAlg::ALL, ciphers)
    }

    #[test]
    fn kexinit_round_trips_and_negotiates_strict() {
        let c = kexinit(false, true, &CipherAlg::ALL);
        let s = kexinit(true, true, &[CipherAlg::Chacha20Poly1305]);
        let (c, s) = (parse_kexinit(&c).unwrap(), parse_kexinit(&s).unwrap());
        let n = negotiate(&c, &s, true).unwrap();
        assert_eq!(n.cipher_cs, CipherAlg::Chacha20Poly1305);
        assert_eq!(n.kex, KexAlg::Mlkem768X25519);
        assert!(n.strict && n.client_ext_info && !n.ignore_guess);
        // Later KEXINITs carry no markers.
        let c2 = kexinit(false, false, &CipherAlg::ALL);
        let n2 = negotiate(&parse_kexinit(&c2).unwrap(), &s, true).unwrap();
        assert!(!n2.strict && !n2.client_ext_info);
    }

    #[test]
    fn no_common_cipher_is_an_error() {
        let c = kexinit(false, true, &[CipherAlg::Aes128Gcm]);
        let s = kexinit(true, true, &[CipherAlg::Aes256Gcm]);
        let err = negotiate(
            &parse_kexinit(&c).unwrap(),
            &parse_kexinit(&s).unwrap(),
            true,
        )
        .unwrap_err();
        assert!(err.contains("cipher"), "{err}");
    }

    /// A KEXINIT as another implementation would send it.
    fn foreign_kexinit(kex: &str, comp: &str) -> Vec<u8> {
        Writer::new(msg::KEXINIT)
            .raw(&[0u8; 16])
            .string(kex)
            .string("ssh-ed25519")
            .string("aes128-gcm@openssh.com")
            .string("aes128-gcm@openssh.com")
            .string("umac-64-etm@openssh.com")
            .string("umac-64-etm@openssh.com")
            .string(comp)
            .string(comp)
            .string("")
            .string("")
            .bool(false)
            .u32(0)
            .finish()
    }

    #[test]
    fn kex_follows_the_clients_order_among_what_both_offer() {
        let s = kexinit(true, true, &CipherAlg::ALL);
        let s = parse_kexinit(&s).unwrap();
        for (offer, want) in [
            (
                "mlkem768x25519-sha256,curve25519-sha256",
                KexAlg::Mlkem768X25519,
            ),
            (
                "sntrup761x25519-sha512,curve25519-sha256,mlkem768x25519-sha256",
                KexAlg::Curve25519,
            ),
            ("curve25519-sha256@libssh.org", KexAlg::Curve25519Libssh),
        ] {
            let c = foreign_kexinit(offer, "none");
            let n = negotiate(&parse_kexinit(&c).unwrap(), &s, true).unwrap();
            assert_eq!(n.kex, want, "{offer}");
        }
        // A server without the hybrid: the client's next choice.
        let s = our_kexinit(true, true, &[KexAlg::Curve25519], &CipherAlg::ALL);
        let c = foreign_kexinit("mlkem768x25519-sha256,curve25519-sha256", "none");
        let n = negotiate(
            &parse_kexinit(&c).unwrap(),
            &parse_kexinit(&s).unwrap(),
            true,
        );
        assert_eq!(n.unwrap().kex, KexAlg::Curve25519);
        let c = foreign_kexinit("diffie-hellman-group14-sha256", "none");
        let err = negotiate(
            &parse_kexinit(&c).unwrap(),
            &parse_kexinit(&s).unwrap(),
            true,
        )
        .unwrap_err();
        assert!(err.contains("diffie-hellman-group14-sha256"), "{err}");
    }

    #[test]
    fn a_peer_without_compression_none_is_refused_by_name() {
        let s = kexinit(true, true, &CipherAlg::ALL);
        let s = parse_kexinit(&s).unwrap();
        let c = foreign_kexinit("curve25519-sha256", "zlib@openssh.com");
        let err = negotiate(&parse_kexinit(&c).unwrap(), &s, true).unwrap_err();
        assert!(
            err.contains("compression") && err.contains("zlib@openssh.com"),
            "{err}"
        );
        // "none" anywhere in the list is fine (OpenSSH's Compression=yes).
        let c = foreign_kexinit("curve25519-sha256", "zlib@openssh.com,none");
        negotiate(&parse_kexinit(&c).unwrap(), &s, true).unwrap();
    }

    #[test]
    fn operator_lists_keep_their_order_and_refuse_unknown_names() {
        let k = parse_names(
            "key exchange",
            "curve25519-sha256,mlkem768x25519-sha256",
            &KexAlg::ALL,
            KexAlg::name,
        );
        assert_eq!(k.unwrap(), [KexAlg::Curve25519, KexAlg::Mlkem768X25519]);
        let err = parse_names(
            "cipher",
            "aes128-gcm@openssh.com,aes128-ctr",
            &CipherAlg::ALL,
            CipherAlg::name,
        )
        .unwrap_err();
        assert!(err.contains("\"aes128-ctr\""), "{err}");
        for c in CipherAlg::ALL {
            assert!(err.contains(c.name()), "{err}");
        }
        assert!(parse_names("cipher", "", &CipherAlg::ALL, CipherAlg::name).is_err());
        assert!(
            parse_names(
                "key exchange",
                "curve25519-sha256,curve25519-sha256",
                &KexAlg::ALL,
                KexAlg::name
            )
            .is_err()
        );
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
    fn hybrid_client_and_server_agree_and_lengths_are_checked() {
        for alg in KexAlg::ALL {
            let (client, q_c) = ClientKex::new(alg).unwrap();
            let (q_s, k_server) = server_kex(alg, &q_c).unwrap();
            if alg == KexAlg::Mlkem768X25519 {
                assert_eq!(q_c.len(), 1184 + 32);
                assert_eq!(q_s.len(), 1088 + 32);
                // K is a string of 32 bytes, not an mpint.
                assert_eq!(k_server.len(), 36);
                assert_eq!(&k_server[..4], &[0, 0, 0, 32]);
            }
            assert_eq!(client.finish(&q_s).unwrap(), k_server, "{alg:?}");
        }
        let (_, q_c) = ClientKex::new(KexAlg::Mlkem768X25519).unwrap();
        assert!(server_kex(KexAlg::Mlkem768X25519, &q_c[..1215]).is_err());
        assert!(server_kex(KexAlg::Mlkem768X25519, &[q_c.clone(), vec![0]].concat()).is_err());
        // An encapsulation key whose coefficients are out of range fails
        // the FIPS 203 modulus check.
        let mut bad = q_c.clone();
        bad[..1184].fill(0xff);
        assert!(server_kex(KexAlg::Mlkem768X25519, &bad).is_err());
        // An all-zero X25519 half makes an all-zero shared secret: refused.
        let mut low = q_c.clone();
        low[1184..].fill(0);
        assert!(server_kex(KexAlg::Mlkem768X25519, &low).is_err());
        let (client, q_c) = ClientKex::new(KexAlg::Mlkem768X25519).unwrap();
        let (q_s, _) = server_kex(KexAlg::Mlkem768X25519, &q_c).unwrap();
        assert!(client.finish(&q_s[..1119]).is_err());
        // A tampered ciphertext decapsulates (implicit rejection) to a
        // different secret, so the exchange hashes will not match.
        let (client, q_c) = ClientKex::new(KexAlg::Mlkem768X25519).unwrap();
        let (mut q_s, k) = server_kex(KexAlg::Mlkem768X25519, &q_c).unwrap();
        q_s[7] ^= 1;
        assert_ne!(client.finish(&q_s).unwrap(), k);
    }

    /// The combiner of draft-ietf-sshm-mlkem-hybrid-kex §2.4 on fixed
    /// inputs: K = string(SHA-256(K_PQ || K_CL)), computed here from the
    /// spec's definition with SHA-256 of the 64-byte concatenation.
    #[test]
    fn hybrid_secret_is_the_string_encoded_hash_of_both_secrets() {
        let pq = [0x11u8; 32];
        let cl = [0x22u8; 32];
        let k = hybrid_secret(&pq, &cl);
        let mut both = pq.to_vec();
        both.extend_from_slice(&cl);
        let want = aws_lc_rs::digest::digest(&SHA256, &both);
        assert_eq!(&k[..4], &[0, 0, 0, 32]);
        assert_eq!(&k[4..], want.as_ref());
        // SHA-256 of 32 bytes 0x11 then 32 bytes 0x22, from a separate tool
        // (`printf` + `sha256sum`), so the test does not only check itself.
        assert_eq!(data_encoding::HEXLOWER.encode(&k[4..]), HYBRID_FIXED_K);
    }

    const HYBRID_FIXED_K: &str = "5189c77d29fe5d546a045ec46986852785fea5c13ac7da9c115ff5fb6edf817c";

    #[test]
    fn key_derivation_extends_past_one_hash() {
        let k = derive(b"k", b"h", b'C', b"sid", 64);
        assert_eq!(k.len(), 64);
        assert_eq!(&k[..32], &derive(b"k", b"h", b'C', b"sid", 32)[..]);
        assert_ne!(k, derive(b"k", b"h", b'D', b"sid", 64));
    }
}
