//! Key exchange: KEXINIT to NEWKEYS (RFC 4253 §7-8, with the algorithms
//! of [`super::super::kex`], mlkem768x25519-sha256 among them), strict kex
//! (the Terrapin countermeasure), when to rekey, and the deadline of a
//! running exchange. Packets go out through the [`Transport`], which holds
//! everything else back from our KEXINIT to our NEWKEYS.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::super::kex::{self, ClientKex, HashInput, HostKey, KexAlg, Negotiated};
use super::super::mux::Ctl;
use super::super::packet::{CipherAlg, Direction};
use super::super::wire::{Writer, msg, reason};
use super::transport::Transport;
use super::{Fail, HostCheck, Settings, proto};

/// One key exchange in progress.
struct KexRun {
    ours: Vec<u8>,
    theirs: Option<Vec<u8>>,
    neg: Option<Negotiated>,
    /// The client's keys, between KEX_ECDH_INIT and the reply.
    eph: Option<(ClientKex, Vec<u8>)>,
    /// Keys for the peer's packets after its NEWKEYS.
    next_in: Option<Direction>,
    sent_newkeys: bool,
    ignore_next: bool,
    /// See [`Settings::kex_timeout`].
    started: Instant,
}

/// What the exchange knows of the peer: the host key we sign with
/// (server), or the check of the one offered (client).
pub(super) enum Identity {
    Server(Arc<HostKey>),
    Client(HostCheck),
}

/// The settings the key exchange reads (see [`Settings`]).
struct Policy {
    ciphers: Vec<CipherAlg>,
    kex: Vec<KexAlg>,
    require_strict_kex: bool,
    rekey_bytes: u64,
    rekey_time: Duration,
    kex_timeout: Duration,
}

pub(super) struct KeyExchange {
    server: bool,
    identity: Identity,
    policy: Policy,
    /// Boxed: most of a connection's life has no exchange running, and
    /// the state of one would otherwise be part of every connection.
    run: Option<Box<KexRun>>,
    /// The first exchange finished (both NEWKEYS): strict kex wants no
    /// other packet before it.
    pub(super) first_kex_done: bool,
    pub(super) strict: bool,
    pub(super) session_id: Option<Vec<u8>>,
    v_c: Vec<u8>,
    v_s: Vec<u8>,
    /// When the last exchange finished.
    kex_at: Instant,
    ctl: Arc<Ctl>,
}

impl KeyExchange {
    pub(super) fn new(
        identity: Identity,
        settings: &Settings,
        v_c: Vec<u8>,
        v_s: Vec<u8>,
        ctl: Arc<Ctl>,
    ) -> KeyExchange {
        KeyExchange {
            server: matches!(identity, Identity::Server(_)),
            identity,
            policy: Policy {
                ciphers: settings.ciphers.clone(),
                kex: settings.kex.clone(),
                require_strict_kex: settings.require_strict_kex,
                rekey_bytes: settings.rekey_bytes,
                rekey_time: settings.rekey_time,
                kex_timeout: settings.kex_timeout,
            },
            run: None,
            first_kex_done: false,
            strict: false,
            session_id: None,
            v_c,
            v_s,
            kex_at: Instant::now(),
            ctl,
        }
    }

    /// The peer's KEXINIT arrived and its NEWKEYS has not: only key-exchange
    /// messages may come now.
    pub(super) fn peer_in_kex(&self) -> bool {
        self.run.as_ref().is_some_and(|k| k.neg.is_some())
    }

    /// The peer's KEXINIT of the first exchange said it does strict kex.
    pub(super) fn known_strict(&self) -> bool {
        self.run.as_ref().is_some_and(|k| k.theirs.is_some()) && self.strict
    }

    /// A wrong guessed packet to skip (RFC 4253 §7: first_kex_packet_follows).
    pub(super) fn skip_guess(&mut self, t: u8) -> bool {
        if let Some(run) = self.run.as_mut()
            && run.ignore_next
            && matches!(t, msg::KEX_ECDH_INIT | msg::KEX_ECDH_REPLY)
        {
            run.ignore_next = false;
            return true;
        }
        false
    }

    /// When the loop must wake for this exchange: the rekey time on a quiet
    /// connection, or the running exchange's deadline.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.run {
            Some(k) => Some(k.started + self.policy.kex_timeout),
            None if self.first_kex_done => Some(self.kex_at + self.policy.rekey_time),
            None => None,
        }
    }

    /// A running exchange past its deadline ends the connection.
    pub(super) fn check_deadline(&self) -> Result<(), Fail> {
        if self
            .run
            .as_ref()
            .is_some_and(|k| k.started.elapsed() >= self.policy.kex_timeout)
        {
            return Err(Fail::Protocol(
                reason::KEY_EXCHANGE_FAILED,
                format!(
                    "key exchange not finished within {:?}",
                    self.policy.kex_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Seals our KEXINIT, unless an exchange already runs.
    pub(super) fn start(&mut self, t: &mut Transport) {
        if self.run.is_some() {
            return;
        }
        let ours = kex::our_kexinit(
            self.server,
            self.session_id.is_none(),
            &self.policy.kex,
            &self.policy.ciphers,
        );
        t.seal_now(&ours);
        t.hold();
        self.run = Some(Box::new(KexRun {
            ours,
            theirs: None,
            neg: None,
            eph: None,
            next_in: None,
            sent_newkeys: false,
            ignore_next: false,
            started: Instant::now(),
        }));
    }

    /// Starts a rekey when the keys in use reached a limit: bytes, time,
    /// or half the packets one key may protect.
    pub(super) fn maybe_rekey(&mut self, t: &mut Transport) {
        if self.run.is_none()
            && self.first_kex_done
            && (t.bytes_since_kex >= self.policy.rekey_bytes
                || self.kex_at.elapsed() >= self.policy.rekey_time
                || t.key_half_used())
        {
            tracing::debug!(bytes = t.bytes_since_kex, "rekeying");
            self.start(t);
        }
    }

    pub(super) fn on_kexinit(&mut self, t: &mut Transport, payload: &[u8]) -> Result<(), Fail> {
        if self.run.as_ref().is_some_and(|k| k.theirs.is_some()) {
            return Err(proto("unexpected KEXINIT during key exchange"));
        }
        let first = self.session_id.is_none();
        if first && t.packets_in != 1 && self.strict_offered(payload) {
            return Err(proto(
                "strict key exchange: KEXINIT was not the first message",
            ));
        }
        self.start(t);
        let server = self.server;
        let Some(k) = self.run.as_mut() else {
            return Err(proto("no key exchange"));
        };
        let theirs = payload.to_vec();
        let (c, s) = if server {
            (&theirs, &k.ours)
        } else {
            (&k.ours, &theirs)
        };
        let neg = kex::negotiate(&kex::parse_kexinit(c)?, &kex::parse_kexinit(s)?, server)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        if first {
            if self.policy.require_strict_kex && !neg.strict {
                return Err(Fail::Protocol(
                    reason::KEY_EXCHANGE_FAILED,
                    format!(
                        "strict key exchange required: the peer does not offer {}",
                        if server { kex::STRICT_C } else { kex::STRICT_S }
                    ),
                ));
            }
            self.strict = neg.strict;
        }
        tracing::debug!(
            kex = %neg.kex.name(),
            client_to_server = %neg.cipher_cs.name(),
            server_to_client = %neg.cipher_sc.name(),
            "negotiated ciphers"
        );
        self.ctl.kex_alg.send_replace(Some(neg.kex.name()));
        k.ignore_next = neg.ignore_guess;
        k.neg = Some(neg);
        k.theirs = Some(theirs);
        if !server {
            let (eph, q_c) = ClientKex::new(neg.kex).map_err(proto)?;
            // Q_C, or the hybrid's C_INIT: the same message number and layout.
            let m = Writer::new(msg::KEX_ECDH_INIT).string(&q_c).finish();
            k.eph = Some((eph, q_c));
            t.seal_now(&m);
        }
        Ok(())
    }

    fn strict_offered(&self, peer_kexinit: &[u8]) -> bool {
        let marker = if self.server {
            kex::STRICT_C
        } else {
            kex::STRICT_S
        };
        kex::parse_kexinit(peer_kexinit).is_ok_and(|k| super::super::wire::list_has(k.kex, marker))
    }

    /// Derives both directions' keys from K and H: (ours, theirs).
    fn derive_keys(
        &mut self,
        k: &[u8],
        h: &[u8],
        neg: Negotiated,
    ) -> Result<(Direction, Direction), Fail> {
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        // Both are zeroed when dropped, at the end of this closure.
        let make = |alg: CipherAlg, iv_letter: u8, key_letter: u8, seal: bool| {
            let iv = kex::derive(k, h, iv_letter, &sid, alg.iv_len().max(1));
            let key = kex::derive(k, h, key_letter, &sid, alg.key_len());
            Direction::new(alg, &key, &iv, seal).ok_or_else(|| proto("cipher setup failed"))
        };
        let cs_seal = !self.server;
        let cs = make(neg.cipher_cs, b'A', b'C', cs_seal)?;
        let sc = make(neg.cipher_sc, b'B', b'D', !cs_seal)?;
        Ok(if self.server { (sc, cs) } else { (cs, sc) })
    }

    pub(super) fn on_ecdh_init(&mut self, t: &mut Transport, q_c: &[u8]) -> Result<(), Fail> {
        let Identity::Server(host_key) = &self.identity else {
            return Err(proto("KEX_ECDH_INIT sent to a client"));
        };
        let host_key = host_key.clone();
        let Some(run) = self.run.as_mut() else {
            return Err(proto("KEX_ECDH_INIT outside key exchange"));
        };
        let (Some(neg), Some(theirs)) = (run.neg, run.theirs.clone()) else {
            return Err(proto("KEX_ECDH_INIT before KEXINIT"));
        };
        if run.sent_newkeys || run.next_in.is_some() {
            return Err(proto("second KEX_ECDH_INIT"));
        }
        let (q_s, k) = kex::server_kex(neg.kex, q_c)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let ours = run.ours.clone();
        let h = kex::exchange_hash(&HashInput {
            v_c: &self.v_c,
            v_s: &self.v_s,
            i_c: &theirs,
            i_s: &ours,
            k_s: host_key.blob(),
            q_c,
            q_s: &q_s,
            k: &k,
        });
        let (out, inn) = self.derive_keys(&k, &h, neg)?;
        let reply = Writer::new(msg::KEX_ECDH_REPLY)
            .string(host_key.blob())
            .string(&q_s)
            .string(host_key.sign(&h))
            .finish();
        t.seal_now(&reply);
        self.send_newkeys(t, neg, out, inn);
        Ok(())
    }

    pub(super) fn on_ecdh_reply(
        &mut self,
        t: &mut Transport,
        k_s: &[u8],
        q_s: &[u8],
        sig: &[u8],
    ) -> Result<(), Fail> {
        let Some(run) = self.run.as_mut() else {
            return Err(proto("KEX_ECDH_REPLY outside key exchange"));
        };
        let (Some(neg), Some(theirs), Some((eph, q_c))) =
            (run.neg, run.theirs.clone(), run.eph.take())
        else {
            return Err(proto("unexpected KEX_ECDH_REPLY"));
        };
        let ours = run.ours.clone();
        if let Identity::Client(check_host) = &mut self.identity
            && !check_host(k_s)
        {
            return Err(Fail::Protocol(
                reason::HOST_KEY_NOT_VERIFIABLE,
                "host key mismatch".into(),
            ));
        }
        let k = eph
            .finish(q_s)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let h = kex::exchange_hash(&HashInput {
            v_c: &self.v_c,
            v_s: &self.v_s,
            i_c: &ours,
            i_s: &theirs,
            k_s,
            q_c: &q_c,
            q_s,
            k: &k,
        });
        kex::verify_host_signature(k_s, sig, &h)
            .map_err(|e| Fail::Protocol(reason::KEY_EXCHANGE_FAILED, e))?;
        let (out, inn) = self.derive_keys(&k, &h, neg)?;
        self.send_newkeys(t, neg, out, inn);
        Ok(())
    }

    /// Seals our NEWKEYS and switches to the new keys out; after the first
    /// exchange, EXT_INFO (server) or the service request (client) goes
    /// first under them.
    fn send_newkeys(&mut self, t: &mut Transport, neg: Negotiated, out: Direction, inn: Direction) {
        t.seal_now(&[msg::NEWKEYS]);
        let first = !self.first_kex_done;
        let then = if first && self.server && neg.client_ext_info {
            Some(
                Writer::new(msg::EXT_INFO)
                    .u32(1)
                    .string("server-sig-algs")
                    .string(kex::SERVER_SIG_ALGS)
                    .finish(),
            )
        } else if first && !self.server {
            Some(
                Writer::new(msg::SERVICE_REQUEST)
                    .string("ssh-userauth")
                    .finish(),
            )
        } else {
            None
        };
        if let Some(run) = self.run.as_mut() {
            run.next_in = Some(inn);
            run.sent_newkeys = true;
        }
        t.switch_out(out, self.strict, then);
        self.done_if_complete(t);
    }

    pub(super) fn on_newkeys(&mut self, t: &mut Transport) -> Result<(), Fail> {
        let Some(run) = self.run.as_mut() else {
            return Err(proto("NEWKEYS outside key exchange"));
        };
        let Some(inn) = run.next_in.take() else {
            return Err(proto("NEWKEYS before the key exchange finished"));
        };
        run.neg = None;
        t.switch_in(inn, self.strict);
        self.first_kex_done = true;
        self.done_if_complete(t);
        Ok(())
    }

    fn done_if_complete(&mut self, t: &mut Transport) {
        if let Some(run) = &self.run
            && run.sent_newkeys
            && run.next_in.is_none()
            && run.neg.is_none()
        {
            self.run = None;
            self.ctl.kexes.send_modify(|n| *n += 1);
            t.bytes_since_kex = 0;
            self.kex_at = Instant::now();
        }
    }
}
