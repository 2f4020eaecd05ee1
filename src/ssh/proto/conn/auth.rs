//! User authentication (RFC 4252), public keys only: the server counts
//! attempts and key queries and enforces the login deadline; the client
//! signs with its one key.

use std::sync::Arc;

use signature::{Signer, Verifier};
use ssh_encoding::Encode;
use ssh_key::{Algorithm, HashAlg, PrivateKey, Signature};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::wire::{Writer, msg, reason};
use super::msg::{Method, user_key};
use super::{Conn, Events, Fail, proto};

/// Public-key queries (no signature) per attempt allowed: a client offers
/// each key it holds before signing with one, but every query costs the
/// application a key lookup and tells the peer whether a key is known.
const QUERIES_PER_ATTEMPT: usize = 2;

/// The client's side of authentication.
pub(super) struct ClientAuth {
    pub(super) user: String,
    pub(super) key: Arc<PrivateKey>,
    pub(super) server_sig_algs: Option<String>,
    /// Told once whether the login worked.
    pub(super) done: Option<oneshot::Sender<Result<(), String>>>,
}

pub(super) struct Auth {
    pub(super) authed: bool,
    /// The client asked for the user authentication service.
    userauth: bool,
    /// The free "none" probe was used.
    probed: bool,
    failures: usize,
    /// Public-key queries without a signature.
    key_queries: usize,
    max_attempts: usize,
    /// Server: the login must succeed by then (see
    /// [`super::Settings::login_grace`]).
    pub(super) deadline: Option<Instant>,
    pub(super) client: Option<ClientAuth>,
}

impl Auth {
    pub(super) fn server(max_attempts: usize, deadline: Option<Instant>) -> Auth {
        Auth {
            authed: false,
            userauth: false,
            probed: false,
            failures: 0,
            key_queries: 0,
            max_attempts,
            deadline,
            client: None,
        }
    }

    pub(super) fn client(client: ClientAuth) -> Auth {
        Auth {
            client: Some(client),
            ..Auth::server(0, None)
        }
    }

    /// Tells the client's caller how the login ended, once.
    pub(super) fn tell(&mut self, result: Result<(), String>) {
        if let Some(done) = self.client.as_mut().and_then(|c| c.done.take()) {
            let _ = done.send(result);
        }
    }

    /// The client asked for the user authentication service.
    pub(super) fn service_accepted(&self) -> bool {
        self.userauth
    }

    /// While not logged in, when the login deadline passes.
    pub(super) fn pending_deadline(&self) -> Option<Instant> {
        self.deadline.filter(|_| !self.authed)
    }
}

/// The end of a login that took too long.
pub(super) fn timed_out() -> Fail {
    Fail::Protocol(reason::BY_APPLICATION, "authentication timeout".into())
}

impl<E: Events> Conn<E> {
    pub(super) fn on_service_request(&mut self, name: &str) -> Result<(), Fail> {
        if name != "ssh-userauth" || self.auth.authed {
            return Err(proto(format!("service {name:?} not available")));
        }
        let m = Writer::new(msg::SERVICE_ACCEPT).string(name).finish();
        self.send(m);
        self.auth.userauth = true;
        Ok(())
    }

    /// Server: whether the application lets `key` log in as `user`,
    /// bounded by the login deadline.
    async fn check_key(
        &mut self,
        user: &str,
        key: &ssh_key::PublicKey,
        verified: bool,
    ) -> Result<bool, Fail> {
        let check = self.events.check_key(user, key, verified);
        let ok = match self.auth.deadline {
            Some(at) => tokio::time::timeout_at(at, check)
                .await
                .map_err(|_| timed_out())?,
            None => check.await,
        };
        if !ok && let Some(why) = self.events.login_refusal() {
            return Err(Fail::Protocol(reason::BY_APPLICATION, why));
        }
        Ok(ok)
    }

    pub(super) async fn on_userauth_request(
        &mut self,
        user: &str,
        service: &str,
        method: Method<'_>,
    ) -> Result<(), Fail> {
        if self.auth.client.is_some() {
            return Err(proto("USERAUTH_REQUEST sent to a client"));
        }
        if service != "ssh-connection" {
            return Err(proto(format!("service {service:?} not available")));
        }
        let (alg, blob, sig) = match method {
            Method::Publickey { alg, blob, sig } => (alg, blob, sig),
            Method::Other(method) => {
                // "none" and anything else: the list of what works. OpenSSH
                // starts with "none"; that first one is free.
                let free = method == "none" && !std::mem::replace(&mut self.auth.probed, true);
                return self.auth_fail(!free);
            }
        };
        let Some(key) = user_key(alg, blob) else {
            return self.auth_fail(true);
        };
        let Some(sig) = sig else {
            self.auth.key_queries += 1;
            if self.auth.key_queries > QUERIES_PER_ATTEMPT * self.auth.max_attempts {
                return Err(Fail::Protocol(
                    reason::NO_MORE_AUTH_METHODS,
                    "too many public key queries".into(),
                ));
            }
            if self.check_key(user, &key, false).await? {
                let m = Writer::new(msg::USERAUTH_PK_OK)
                    .string(alg)
                    .string(blob)
                    .finish();
                self.send(m);
                return Ok(());
            }
            return self.auth_fail(true);
        };
        let sid = self.kx.session_id.clone().unwrap_or_default();
        let data = Writer::default()
            .string(&sid)
            .u8(msg::USERAUTH_REQUEST)
            .string(user)
            .string(service)
            .string("publickey")
            .bool(true)
            .string(alg)
            .string(blob)
            .finish();
        let good = Signature::try_from(sig)
            .ok()
            .filter(|s| s.algorithm().as_str() == alg)
            .is_some_and(|s| Verifier::verify(key.key_data(), &data, &s).is_ok());
        if good && self.check_key(user, &key, true).await? {
            self.auth.authed = true;
            self.send(vec![msg::USERAUTH_SUCCESS]);
            self.events.authenticated(self.tx.clone());
            return Ok(());
        }
        self.auth_fail(true)
    }

    fn auth_fail(&mut self, counts: bool) -> Result<(), Fail> {
        if counts {
            self.auth.failures += 1;
            if self.auth.failures >= self.auth.max_attempts {
                return Err(Fail::Protocol(
                    reason::NO_MORE_AUTH_METHODS,
                    "too many authentication failures".into(),
                ));
            }
        }
        let m = Writer::new(msg::USERAUTH_FAILURE)
            .string("publickey")
            .bool(false)
            .finish();
        self.send(m);
        Ok(())
    }

    pub(super) fn on_ext_info(&mut self, server_sig_algs: Option<&str>) {
        if let (Some(c), Some(algs)) = (self.auth.client.as_mut(), server_sig_algs) {
            c.server_sig_algs = Some(algs.to_string());
        }
    }

    pub(super) fn on_userauth_success(&mut self) {
        self.auth.authed = true;
        self.events.authenticated(self.tx.clone());
        self.auth.tell(Ok(()));
    }

    pub(super) fn on_userauth_failure(&mut self) -> Fail {
        self.auth.tell(Err("key refused".into()));
        Fail::Protocol(reason::BY_APPLICATION, "key refused".into())
    }

    /// Client: the signed public-key request.
    pub(super) fn send_userauth(&mut self) -> Result<(), Fail> {
        let Some(c) = &self.auth.client else {
            return Err(proto("not a client"));
        };
        let (user, key) = (c.user.clone(), c.key.clone());
        let blob =
            key.public_key().key_data().encode_vec().map_err(|e| {
                Fail::Protocol(reason::BY_APPLICATION, format!("encoding key: {e}"))
            })?;
        let rsa_hash = match &c.server_sig_algs {
            Some(list) if !super::super::wire::list_has(list, "rsa-sha2-512") => HashAlg::Sha256,
            _ => HashAlg::Sha512,
        };
        let alg = match key.algorithm() {
            Algorithm::Rsa { .. } => Algorithm::Rsa {
                hash: Some(rsa_hash),
            },
            a => a,
        };
        let alg_name = alg.as_str().to_string();
        let sid = self.kx.session_id.clone().unwrap_or_default();
        let head = Writer::new(msg::USERAUTH_REQUEST)
            .string(&user)
            .string("ssh-connection")
            .string("publickey")
            .bool(true)
            .string(&alg_name)
            .string(&blob)
            .finish();
        let data = Writer::default().string(&sid).raw(&head).finish();
        let sig: Result<Signature, _> = match key.key_data().rsa() {
            Some(rsa) => (rsa, Some(rsa_hash)).try_sign(&data),
            None => key.try_sign(&data),
        };
        let sig =
            sig.map_err(|e| Fail::Protocol(reason::BY_APPLICATION, format!("signing: {e}")))?;
        let sig = sig.encode_vec().map_err(|e| {
            Fail::Protocol(reason::BY_APPLICATION, format!("encoding signature: {e}"))
        })?;
        let m = Writer { buf: head }.string(&sig).finish();
        self.send(m);
        Ok(())
    }
}
