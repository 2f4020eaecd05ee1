//! End-to-end tests of the SSH layer over loopback: Warren's client against
//! Warren's server, and a raw test peer that breaks the protocol on purpose.
//! This file holds the test server and the raw peer; the tests are in
//! [`transport`], [`auth`] and [`channels`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use signature::Signer;
use ssh_encoding::Encode;
use ssh_key::{PrivateKey, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{self, Conn, Events, ExecOutput, Incoming, Settings, Side};
use super::kex::{self, Ephemeral, HashInput, HostKey, KexAlg};
use super::mux::{self, ChanHandle, ConnTx, In, OpenRequest, WINDOW};
use super::packet::{CipherAlg, Direction};
use super::wire::{Reader, Writer, msg};
use crate::ssh::client::{self, ConnectOptions, NoForwards};
use crate::ssh::keys::{fingerprint, generate_ed25519};

mod auth;
mod channels;
mod transport;

const WAIT: Duration = Duration::from_secs(20);

/// What the test server granted: anything past zero after a broken
/// exchange is a failure.
#[derive(Default)]
struct Granted {
    auths: AtomicUsize,
    globals: AtomicUsize,
    opens: AtomicUsize,
    tx: Mutex<Option<ConnTx>>,
}

impl Granted {
    fn nothing(&self) -> bool {
        self.auths.load(Ordering::SeqCst) == 0
            && self.globals.load(Ordering::SeqCst) == 0
            && self.opens.load(Ordering::SeqCst) == 0
    }
}

struct TestEvents {
    user_key: PublicKey,
    granted: Arc<Granted>,
}

/// Channels opened to "hold": accepted and never read.
static HELD: Mutex<Vec<ChanHandle>> = Mutex::new(Vec::new());

/// Channel behaviours, chosen by the direct-tcpip host name.
async fn serve_channel(host: String, ch: ChanHandle) {
    match host.as_str() {
        "hold" => HELD.lock().unwrap().push(ch),
        "echo" => {
            while let Some(m) = ch.recv().await {
                match m {
                    In::Data(d) => {
                        let sent = ch.send(d, false).await;
                        if sent.is_err() {
                            return;
                        }
                    }
                    In::Eof => ch.eof(),
                    _ => {}
                }
            }
        }
        "source" => {
            let chunk = Bytes::from(vec![7u8; 32 * 1024]);
            for _ in 0..(64 * 1024 * 1024 / chunk.len()) {
                if ch.send(chunk.clone(), false).await.is_err() {
                    return;
                }
            }
            ch.eof();
            while ch.recv().await.is_some() {}
        }
        _ => {}
    }
}

impl Events for TestEvents {
    async fn check_key(&mut self, user: &str, key: &PublicKey, _verified: bool) -> bool {
        if user == "slow" {
            // A key lookup that never answers (see the login deadline tests).
            std::future::pending::<()>().await;
        }
        user == "u" && key.key_data() == self.user_key.key_data()
    }

    fn authenticated(&mut self, tx: ConnTx) {
        self.granted.auths.fetch_add(1, Ordering::SeqCst);
        *self.granted.tx.lock().unwrap() = Some(tx);
    }

    async fn global_request(&mut self, _name: &str, _data: &[u8]) -> bool {
        self.granted.globals.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn channel_open(&mut self, open: OpenRequest, incoming: Incoming) {
        self.granted.opens.fetch_add(1, Ordering::SeqCst);
        if let OpenRequest::DirectTcpip { host, .. } = open {
            let ch = incoming.accept();
            tokio::spawn(serve_channel(host, ch));
        }
    }

    async fn exec(&mut self, command: &str) -> ExecOutput {
        if command == "big" {
            return ExecOutput {
                stdout: vec![b'o'; 5 << 20],
                stderr: vec![b'e'; 3 << 20],
                status: 0,
            };
        }
        ExecOutput {
            stdout: format!("ran {command}").into_bytes(),
            stderr: Vec::new(),
            status: 3,
        }
    }
}

struct TestServer {
    addr: std::net::SocketAddr,
    host: Arc<HostKey>,
    host_fp: String,
    user: Arc<PrivateKey>,
    granted: Arc<Granted>,
    ended: tokio::sync::mpsc::UnboundedReceiver<mux::Ended>,
    /// The server side of each connection, to open channels towards the client.
    conns: tokio::sync::mpsc::UnboundedReceiver<ConnTx>,
}

async fn server(settings: Settings) -> TestServer {
    server_for(settings, generate_ed25519().unwrap()).await
}

async fn server_for(settings: Settings, user: PrivateKey) -> TestServer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let host_private = generate_ed25519().unwrap();
    let seed = host_private
        .key_data()
        .ed25519()
        .unwrap()
        .private
        .to_bytes();
    let host = Arc::new(HostKey::from_seed(&seed).unwrap());
    let host_fp = fingerprint(host_private.public_key());
    let user = Arc::new(user);
    let granted = Arc::new(Granted::default());
    let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let (conns_tx, conns) = tokio::sync::mpsc::unbounded_channel();
    let (h, g, k) = (host.clone(), granted.clone(), user.public_key().clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (h, g, k, settings, ended_tx, conns_tx) = (
                h.clone(),
                g.clone(),
                k.clone(),
                settings.clone(),
                ended_tx.clone(),
                conns_tx.clone(),
            );
            tokio::spawn(async move {
                let Ok(v) = conn::version_exchange(&mut s, true).await else {
                    return;
                };
                let side = Side::Server {
                    host_key: h,
                    max_auth_attempts: 6,
                };
                let events = TestEvents {
                    user_key: k,
                    granted: g,
                };
                let (c, tx) = Conn::new(s, v, side, settings, events);
                let _ = conns_tx.send(tx);
                let _ = ended_tx.send(c.run().await);
            });
        }
    });
    TestServer {
        addr,
        host,
        host_fp: host_fp.into(),
        user,
        granted,
        ended,
        conns,
    }
}

impl TestServer {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            user: "u".into(),
            key: self.user.clone(),
            host_key: self.host_fp.clone(),
            dead_after: Duration::from_secs(30),
        }
    }

    async fn client(&self, settings: Settings) -> client::ClientConnection<NoForwards> {
        let s = TcpStream::connect(self.addr).await.unwrap();
        client::connect_with(s, &self.options(), NoForwards, settings)
            .await
            .unwrap()
    }

    /// Waits for the server side of a connection to end; returns how.
    async fn ended(&mut self) -> mux::Ended {
        tokio::time::timeout(WAIT, self.ended.recv())
            .await
            .unwrap()
            .unwrap()
    }
}

async fn echo(conn: &client::ClientConnection<NoForwards>, data: &[u8]) -> Vec<u8> {
    let ch = conn.open("echo", 1).await.unwrap();
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(near);
        let wr = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let rd = r.read_to_end(&mut back);
        let (_, n) = tokio::join!(wr, rd);
        n.unwrap();
        back
    });
    near = tokio::io::duplex(1).0;
    drop(near);
    let back = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    let _ = tokio::time::timeout(WAIT, splice).await;
    back
}

// ---- a raw peer that can break the rules ----

struct Raw {
    s: TcpStream,
    seal: Direction,
    open: Direction,
    seq_out: u32,
    seq_in: u32,
    sid: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Raw {
    /// Connects and runs a key exchange. `strict` offers strict kex;
    /// `before_newkeys` is sent (plain) just before our NEWKEYS.
    async fn connect(
        addr: std::net::SocketAddr,
        strict: bool,
        before_newkeys: Option<Vec<u8>>,
    ) -> Raw {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let v_s = conn::version_exchange(&mut s, false).await.unwrap();
        let mut raw = Raw {
            s,
            seal: Direction::plain(),
            open: Direction::plain(),
            seq_out: 0,
            seq_in: 0,
            sid: Vec::new(),
            rbuf: Vec::new(),
        };
        let i_c = kex::our_kexinit(
            false,
            strict,
            &[kex::KexAlg::Curve25519],
            &[CipherAlg::Chacha20Poly1305],
        );
        raw.send(&i_c).await;
        let i_s = raw.recv().await.unwrap();
        let eph = Ephemeral::new().unwrap();
        let q_c = eph.public.clone();
        raw.send(&Writer::new(msg::KEX_ECDH_INIT).string(&q_c).finish())
            .await;
        let reply = raw.recv().await.unwrap();
        let mut r = Reader::new(&reply[1..]);
        let (k_s, q_s) = (r.string().unwrap().to_vec(), r.string().unwrap().to_vec());
        let k = eph.agree(&q_s).unwrap();
        let h = kex::exchange_hash(&HashInput {
            v_c: conn::VERSION.as_bytes(),
            v_s: &v_s,
            i_c: &i_c,
            i_s: &i_s,
            k_s: &k_s,
            q_c: &q_c,
            q_s: &q_s,
            k: &k,
        });
        if let Some(m) = before_newkeys {
            raw.send(&m).await;
        }
        raw.send(&[msg::NEWKEYS]).await;
        let alg = CipherAlg::Chacha20Poly1305;
        let key = |l| kex::derive(&k, &h, l, &h, alg.key_len());
        raw.seal = Direction::new(alg, &key(b'C'), &[], true).unwrap();
        if strict {
            raw.seq_out = 0;
        }
        let nk = raw.recv().await;
        if nk.as_deref() == Some(&[msg::NEWKEYS][..]) {
            raw.open = Direction::new(alg, &key(b'D'), &[], false).unwrap();
            if strict {
                raw.seq_in = 0;
            }
        }
        raw.sid = h;
        raw
    }

    async fn send(&mut self, payload: &[u8]) {
        let mut out = Vec::new();
        self.seal
            .seal(self.seq_out, &payload[..1], &payload[1..], &mut out);
        self.seq_out = self.seq_out.wrapping_add(1);
        let _ = self.s.write_all(&out).await;
    }

    /// The next message; `None` on EOF or after a DISCONNECT.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.rbuf.len() >= 4 {
                let first = [self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]];
                let size = self.open.packet_size(self.seq_in, first).ok()?;
                if self.rbuf.len() >= size {
                    let mut p: Vec<u8> = self.rbuf.drain(..size).collect();
                    let range = self.open.open(self.seq_in, &mut p).ok()?;
                    self.seq_in = self.seq_in.wrapping_add(1);
                    let payload = p[range].to_vec();
                    if payload[0] == msg::DISCONNECT {
                        return None;
                    }
                    if payload[0] == msg::EXT_INFO {
                        continue;
                    }
                    return Some(payload);
                }
            }
            let mut buf = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads until the server hangs up; fails if it does not within WAIT.
    async fn hung_up(&mut self) {
        let end = async { while self.recv().await.is_some() {} };
        tokio::time::timeout(WAIT, end)
            .await
            .expect("server ends the connection");
    }

    fn signed_auth(&self, key: &PrivateKey, corrupt: bool) -> Vec<u8> {
        let blob = key.public_key().key_data().encode_vec().unwrap();
        let head = Writer::new(msg::USERAUTH_REQUEST)
            .string("u")
            .string("ssh-connection")
            .string("publickey")
            .bool(true)
            .string("ssh-ed25519")
            .string(&blob)
            .finish();
        let mut data = Writer::default().string(&self.sid).raw(&head).finish();
        if corrupt {
            data.push(0);
        }
        let sig: ssh_key::Signature = key.try_sign(&data).unwrap();
        Writer { buf: head }
            .string(sig.encode_vec().unwrap())
            .finish()
    }

    /// Asks for the user authentication service.
    async fn service_request(&mut self) {
        self.send(
            &Writer::new(msg::SERVICE_REQUEST)
                .string("ssh-userauth")
                .finish(),
        )
        .await;
        assert_eq!(self.recv().await.unwrap()[0], msg::SERVICE_ACCEPT);
    }

    async fn login(&mut self, key: &PrivateKey) {
        self.service_request().await;
        let m = self.signed_auth(key, false);
        self.send(&m).await;
        assert_eq!(self.recv().await.unwrap()[0], msg::USERAUTH_SUCCESS);
    }
}

fn known_line(srv: &TestServer) -> String {
    let key = PublicKey::from_bytes(srv.host.blob()).unwrap();
    format!(
        "[127.0.0.1]:{} {}",
        srv.addr.port(),
        key.to_openssh().unwrap()
    )
}

/// Hands the forwarded channels the server opens to the test.
struct Capture(tokio::sync::mpsc::UnboundedSender<crate::ssh::IncomingChannel>);

impl client::ForwardedHandler for Capture {
    fn forwarded(&mut self, _address: &str, _port: u32, channel: crate::ssh::IncomingChannel) {
        let _ = self.0.send(channel);
    }
}

/// The held channel with `len` bytes queued: how many of its entries still
/// share a read buffer, and whether the peer closed it.
fn held(len: usize) -> Option<(usize, bool)> {
    HELD.lock()
        .unwrap()
        .iter()
        .find(|h| h.queued() == len)
        .map(|h| (h.pinned(), h.is_closed()))
}

/// Takes the held channel with `len` bytes queued and reads them all.
async fn take_held(len: usize) -> Vec<u8> {
    let h = {
        let mut all = HELD.lock().unwrap();
        let i = all.iter().position(|h| h.queued() == len).unwrap();
        all.swap_remove(i)
    };
    let mut got = Vec::new();
    while got.len() < len {
        match tokio::time::timeout(WAIT, h.recv()).await.unwrap() {
            Some(In::Data(d)) => got.extend_from_slice(&d),
            other => panic!("expected data, got {other:?}"),
        }
    }
    got
}

/// Sends one plain KEXINIT `payload` as a client would, then waits for the
/// server to end the connection; returns how it ended.
async fn kexinit_then_end(srv: &mut TestServer, payload: &[u8]) -> mux::Ended {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    conn::version_exchange(&mut s, false).await.unwrap();
    let mut out = Vec::new();
    Direction::plain().seal(0, &payload[..1], &payload[1..], &mut out);
    s.write_all(&out).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await;
    srv.ended().await
}

/// A client KEXINIT with these kex and compression lists.
fn client_kexinit(kex: &str, compression: &str) -> Vec<u8> {
    Writer::new(msg::KEXINIT)
        .raw(&[1u8; 16])
        .string(kex)
        .string("ssh-ed25519")
        .string("aes128-gcm@openssh.com")
        .string("aes128-gcm@openssh.com")
        .string("hmac-sha2-256")
        .string("hmac-sha2-256")
        .string(compression)
        .string(compression)
        .string("")
        .string("")
        .bool(false)
        .u32(0)
        .finish()
}

fn key_query(key: &PrivateKey) -> Vec<u8> {
    Writer::new(msg::USERAUTH_REQUEST)
        .string("u")
        .string("ssh-connection")
        .string("publickey")
        .bool(false)
        .string("ssh-ed25519")
        .string(key.public_key().key_data().encode_vec().unwrap())
        .finish()
}

/// The raw peer, logged in, opens a channel of `kind` ("session", or a
/// direct-tcpip to `host`) announcing `max`; returns the reply.
async fn raw_open(raw: &mut Raw, kind: &str, host: &str, max: u32) -> Vec<u8> {
    let mut w = Writer::new(msg::CHANNEL_OPEN)
        .string(kind)
        .u32(5)
        .u32(1 << 20)
        .u32(max);
    if kind != "session" {
        w = w.string(host).u32(1).string("127.0.0.1").u32(1);
    }
    raw.send(&w.finish()).await;
    raw.recv().await.unwrap()
}

/// An opening of a forwarded-tcpip channel by the server, as the raw peer
/// received it: the opener's pending result and the server's channel id.
type Opening = (
    tokio::task::JoinHandle<Result<ChanHandle, mux::OpenRefused>>,
    u32,
);

/// The raw peer logs in; the server opens a forwarded-tcpip channel to it
/// (asking for packets up to `ours`), which the raw peer receives.
async fn raw_receives_forward(srv: &mut TestServer, raw: &mut Raw, ours: u32) -> Opening {
    let server_tx = srv.conns.recv().await.unwrap();
    raw.login(&srv.user).await;
    let extra = Writer::default()
        .string("127.0.0.1")
        .u32(22)
        .string("127.0.0.1")
        .u32(1)
        .finish();
    let opening = tokio::spawn(async move { server_tx.open("forwarded-tcpip", extra, ours).await });
    let open = raw.recv().await.unwrap();
    assert_eq!(open[0], msg::CHANNEL_OPEN);
    let mut r = Reader::new(&open[1..]);
    assert_eq!(r.utf8().unwrap(), "forwarded-tcpip");
    let (id, _window, max) = (r.u32().unwrap(), r.u32().unwrap(), r.u32().unwrap());
    assert_eq!(max, ours);
    (opening, id)
}

/// The raw peer, logged in, accepts the forwarded-tcpip channel the server
/// opens (asking for packets up to `ours`), announcing `theirs`; returns
/// the opener's result and the server's channel id.
async fn raw_accepts_forward(
    srv: &mut TestServer,
    raw: &mut Raw,
    ours: u32,
    theirs: u32,
) -> (Result<ChanHandle, mux::OpenRefused>, u32) {
    let (opening, id) = raw_receives_forward(srv, raw, ours).await;
    raw.send(
        &Writer::new(msg::CHANNEL_OPEN_CONFIRMATION)
            .u32(id)
            .u32(7)
            .u32(1 << 20)
            .u32(theirs)
            .finish(),
    )
    .await;
    let opened = tokio::time::timeout(WAIT, opening).await.unwrap().unwrap();
    (opened, id)
}
