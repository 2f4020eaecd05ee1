//! Entry points that run the SSH parsers over arbitrary bytes, for the
//! `fuzz/` targets and the smoke test. None of them may panic.
//!
//! [`conn`] drives the connection task itself (a real server [`Conn`])
//! with message sequences after a real key exchange, made by [`Peer`]: a
//! scripted client that can send any message, for fuzzing and for tests
//! that break the protocol on purpose against a relay.

use std::sync::Arc;
use std::time::Duration;

use signature::Signer;
use ssh_encoding::Encode;
use ssh_key::{PrivateKey, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::{self, Conn, Events, ExecOutput, Incoming, Settings, Side};
use super::kex::{self, Ephemeral, HashInput, HostKey, KexAlg};
use super::mux::{ChanHandle, ConnTx, In, OpenRequest};
use super::packet::{CipherAlg, Direction};
use super::wire::{Reader, Writer, msg};

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

/// Every message parser: KEXINIT, user keys, and the connection task's own
/// message parser ([`conn::msg::parse`]).
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
        let _ = conn::user_key(alg, blob);
    }
    let _ = ssh_key::Signature::try_from(data);
    if let Ok(conn::msg::Msg::UserauthRequest {
        method: conn::msg::Method::Publickey { alg, blob, sig },
        ..
    }) = conn::msg::parse(data)
    {
        let _ = conn::user_key(alg, blob);
        if let Some(sig) = sig {
            let _ = ssh_key::Signature::try_from(sig);
        }
    }
    let _ = conn::msg::data_header(data);
}

/// A scripted SSH client: a real key exchange (curve25519-sha256,
/// chacha20-poly1305, strict kex) and public-key login, then any message
/// at all. The host key is checked against the exchange, not pinned.
pub struct Peer {
    s: TcpStream,
    seal: Direction,
    open: Direction,
    seq_out: u32,
    seq_in: u32,
    sid: Vec<u8>,
    rbuf: Vec<u8>,
}

impl Peer {
    /// Version and key exchange on `s`.
    pub async fn handshake(mut s: TcpStream) -> Result<Peer, String> {
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let v_s = conn::version_exchange(&mut s, false).await?;
        let mut p = Peer {
            s,
            seal: Direction::plain(),
            open: Direction::plain(),
            seq_out: 0,
            seq_in: 0,
            sid: Vec::new(),
            rbuf: Vec::new(),
        };
        let alg = CipherAlg::Chacha20Poly1305;
        let i_c = kex::our_kexinit(false, true, &[KexAlg::Curve25519], &[alg]);
        p.send(&i_c).await.map_err(|e| e.to_string())?;
        let i_s = p.expect(msg::KEXINIT).await?;
        let neg = kex::negotiate(
            &kex::parse_kexinit(&i_c).map_err(|e| e.to_string())?,
            &kex::parse_kexinit(&i_s).map_err(|e| e.to_string())?,
            false,
        )?;
        let eph = Ephemeral::new()?;
        let q_c = eph.public.clone();
        let init = Writer::new(msg::KEX_ECDH_INIT).string(&q_c).finish();
        p.send(&init).await.map_err(|e| e.to_string())?;
        let reply = p.expect(msg::KEX_ECDH_REPLY).await?;
        let mut r = Reader::new(&reply[1..]);
        let parts = (|| Ok::<_, super::wire::WireError>((r.string()?, r.string()?, r.string()?)))();
        let (k_s, q_s, sig) = parts.map_err(|e| e.to_string())?;
        let k = eph.agree(q_s)?;
        let h = kex::exchange_hash(&HashInput {
            v_c: conn::VERSION.as_bytes(),
            v_s: &v_s,
            i_c: &i_c,
            i_s: &i_s,
            k_s,
            q_c: &q_c,
            q_s,
            k: &k,
        });
        kex::verify_host_signature(k_s, sig, &h)?;
        p.expect(msg::NEWKEYS).await?;
        p.send(&[msg::NEWKEYS]).await.map_err(|e| e.to_string())?;
        let key = |l| kex::derive(&k, &h, l, &h, alg.key_len());
        p.seal = Direction::new(neg.cipher_cs, &key(b'C'), &[], true).ok_or("cipher")?;
        p.open = Direction::new(neg.cipher_sc, &key(b'D'), &[], false).ok_or("cipher")?;
        if neg.strict {
            (p.seq_out, p.seq_in) = (0, 0);
        }
        p.sid = h;
        Ok(p)
    }

    /// Logs in as `user` with `key` (the service request, then a signed
    /// public-key request).
    pub async fn login(&mut self, user: &str, key: &PrivateKey) -> Result<(), String> {
        let m = Writer::new(msg::SERVICE_REQUEST)
            .string("ssh-userauth")
            .finish();
        self.send(&m).await.map_err(|e| e.to_string())?;
        self.expect(msg::SERVICE_ACCEPT).await?;
        let blob = key
            .public_key()
            .key_data()
            .encode_vec()
            .map_err(|e| e.to_string())?;
        let alg = key.algorithm().as_str().to_string();
        let head = Writer::new(msg::USERAUTH_REQUEST)
            .string(user)
            .string("ssh-connection")
            .string("publickey")
            .bool(true)
            .string(&alg)
            .string(&blob)
            .finish();
        let data = Writer::default().string(&self.sid).raw(&head).finish();
        let sig: ssh_key::Signature = key.try_sign(&data).map_err(|e| e.to_string())?;
        let sig = sig.encode_vec().map_err(|e| e.to_string())?;
        let m = Writer { buf: head }.string(&sig).finish();
        self.send(&m).await.map_err(|e| e.to_string())?;
        self.expect(msg::USERAUTH_SUCCESS).await.map(|_| ())
    }

    /// Appends `payload` sealed as the next packet to `out` (to send many
    /// at once with [`Peer::write`]).
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload.is_empty() {
            return;
        }
        self.seal
            .seal(self.seq_out, &payload[..1], &payload[1..], out);
        self.seq_out = self.seq_out.wrapping_add(1);
    }

    /// Sends one message.
    pub async fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::new();
        self.seal(payload, &mut out);
        self.write(&out).await
    }

    /// Writes sealed packets, reading (and keeping) what arrives meanwhile,
    /// so that a server that answers never waits on us.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let (mut r, mut w) = self.s.split();
        let write = w.write_all(data);
        tokio::pin!(write);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                res = &mut write => return res,
                n = r.read(&mut buf) => match n {
                    Ok(n) if n > 0 => self.rbuf.extend_from_slice(&buf[..n]),
                    _ => return write.await,
                },
            }
        }
    }

    /// The next message (EXT_INFO and IGNORE skipped), within `limit`;
    /// `None` on EOF, a DISCONNECT, a packet we cannot open, or time out.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.rbuf.len() >= 4 {
                let first = [self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]];
                let size = self.open.packet_size(self.seq_in, first).ok()?;
                if self.rbuf.len() >= size {
                    let mut p: Vec<u8> = self.rbuf.drain(..size).collect();
                    let range = self.open.open(self.seq_in, &mut p).ok()?;
                    self.seq_in = self.seq_in.wrapping_add(1);
                    let payload = p.get(range)?.to_vec();
                    match payload.first() {
                        None | Some(&msg::DISCONNECT) => return None,
                        Some(&msg::EXT_INFO) | Some(&msg::IGNORE) => continue,
                        Some(_) => return Some(payload),
                    }
                }
            }
            let mut buf = [0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.rbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// [`Peer::recv_within`] 20 s.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.recv_within(Duration::from_secs(20)).await
    }

    async fn expect(&mut self, t: u8) -> Result<Vec<u8>, String> {
        match self.recv().await {
            Some(m) if m[0] == t => Ok(m),
            Some(m) => Err(format!("expected message {t}, got {}", m[0])),
            None => Err(format!("connection ended waiting for message {t}")),
        }
    }

    /// Reads until the server closes the connection, within `limit`;
    /// whether it did.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The server's application for [`conn`]: one user key, channels that echo
/// ("echo"), are refused ("refuse") or are held unread (anything else).
struct FuzzEvents {
    user: PublicKey,
    held: Vec<ChanHandle>,
}

impl Events for FuzzEvents {
    async fn check_key(&mut self, user: &str, key: &PublicKey, _verified: bool) -> bool {
        user == "fuzz" && key.key_data() == self.user.key_data()
    }

    fn authenticated(&mut self, _tx: ConnTx) {}

    async fn global_request(&mut self, _name: &str, data: &[u8]) -> bool {
        data.len().is_multiple_of(2)
    }

    fn channel_open(&mut self, open: OpenRequest, incoming: Incoming) {
        let host = match open {
            OpenRequest::DirectTcpip { host, .. } => host,
            OpenRequest::ForwardedTcpip { address, .. } => address,
            OpenRequest::P2p { host, .. } => host,
        };
        match host.as_str() {
            "refuse" => incoming.refuse(1, "refused"),
            "echo" => {
                let ch = incoming.accept();
                tokio::spawn(async move {
                    while let Some(m) = ch.recv().await {
                        let sent = match m {
                            In::Data(d) => ch.send(d, false).await,
                            In::Eof => {
                                ch.eof();
                                Ok(())
                            }
                            _ => Ok(()),
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                });
            }
            _ => self.held.push(incoming.accept()),
        }
    }

    async fn exec(&mut self, command: &str) -> ExecOutput {
        ExecOutput {
            stdout: command.as_bytes().to_vec(),
            stderr: b"err".to_vec(),
            status: command.len() as u32,
        }
    }
}

/// The user key [`conn`]'s peer logs in with (fixed: no key generation per
/// input).
fn fuzz_user() -> PrivateKey {
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&[7u8; 32]);
    PrivateKey::from(pair)
}

/// How long the connection task may take to answer or end once the input
/// has been sent.
const SETTLE: Duration = Duration::from_secs(10);

/// Splits a fuzz input into messages: each is a big-endian u16 length and
/// that many bytes (or what is left).
pub fn split_messages(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let n = n.min(body.len());
        out.push(&body[..n]);
        rest = &body[n..];
    }
    out
}

/// The connection task under fuzz: a real server [`Conn`] on loopback,
/// a completed key exchange with [`Peer`], then the messages of `data`
/// (see [`split_messages`]; the first byte's low bit says whether the peer
/// logs in first), each sealed and sent. The task must not panic, and must
/// then either answer a final request or end, within [`SETTLE`].
pub fn conn(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(drive(mode & 1 == 1, data));
}

// A panic is how a fuzz entry reports what it found.
#[allow(clippy::panic)]
async fn drive(login: bool, data: &[u8]) {
    let Ok(l) = TcpListener::bind("127.0.0.1:0").await else {
        return;
    };
    let Ok(addr) = l.local_addr() else {
        return;
    };
    let user = fuzz_user();
    let Ok(host) = HostKey::from_seed(&[9u8; 32]) else {
        return;
    };
    let events = FuzzEvents {
        user: user.public_key().clone(),
        held: Vec::new(),
    };
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.ok()?;
        s.set_nodelay(true).ok()?;
        let v = conn::version_exchange(&mut s, true).await.ok()?;
        let side = Side::Server {
            host_key: Arc::new(host),
            max_auth_attempts: 6,
        };
        let (c, _tx) = Conn::new(s, v, side, Settings::default(), events);
        Some(c.run().await)
    });
    let client = async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut peer = Peer::handshake(s).await?;
        if login {
            peer.login("fuzz", &user).await?;
        }
        Ok::<Peer, String>(peer)
    };
    let mut peer = match client.await {
        Ok(p) => p,
        Err(e) => panic!("handshake with the connection task failed: {e}"),
    };
    let mut out = Vec::new();
    for m in split_messages(data) {
        peer.seal(m, &mut out);
    }
    // The server may end the connection at any point: a failed write is fine.
    let _ = peer.write(&out).await;
    // A request nothing in the input can have asked: an unknown channel
    // type, refused at once by a task that still serves.
    const PING: u32 = 0xFFFF_FF0F;
    let ping = Writer::new(msg::CHANNEL_OPEN)
        .string("warren-fuzz-ping")
        .u32(PING)
        .u32(0)
        .u32(32768)
        .finish();
    let _ = peer.send(&ping).await;
    let answered = async {
        while let Some(m) = peer.recv_within(SETTLE).await {
            if m[0] == msg::CHANNEL_OPEN_FAILURE && m.get(1..5) == Some(&PING.to_be_bytes()[..]) {
                return true;
            }
        }
        false
    };
    let answered = answered.await;
    if !answered {
        // Then the task must end by itself (it may be in a key exchange
        // the input started, which our ping broke).
        match tokio::time::timeout(SETTLE, server).await {
            Err(_) => panic!("the connection task neither answered nor ended"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
        return;
    }
    drop(peer);
    match tokio::time::timeout(SETTLE, server).await {
        Err(_) => panic!("the connection task did not end after the peer left"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(_) => {}
    }
}

/// Inputs for [`conn`] that follow the protocol some way before they break
/// it: the starting corpus of the fuzz target and the smoke run.
pub fn conn_seeds() -> Vec<Vec<u8>> {
    let query = seed::key_query();
    let table: [(bool, Vec<Vec<u8>>); 7] = [
        (true, seed::session_channel()),
        (true, seed::data_channel()),
        (true, seed::odd_opens()),
        (true, seed::globals(query.clone())),
        (false, vec![query.clone(); 20]),
        (false, seed::login_out_of_order(query)),
        (true, seed::rekey()),
    ];
    table
        .into_iter()
        .map(|(login, msgs)| seed::input(login, &msgs))
        .collect()
}

/// The messages of [`conn_seeds`], and how an input is made of them.
mod seed {
    use ssh_encoding::Encode;

    use super::super::kex::{self, KexAlg};
    use super::super::packet::CipherAlg;
    use super::super::wire::{Writer, msg};
    use super::fuzz_user;

    /// An input for [`super::conn`]: the login bit, then each message with
    /// its length.
    pub(super) fn input(login: bool, msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut input = vec![u8::from(login)];
        for m in msgs {
            let n = u16::try_from(m.len()).unwrap_or(u16::MAX);
            input.extend_from_slice(&n.to_be_bytes());
            input.extend_from_slice(&m[..usize::from(n)]);
        }
        input
    }

    fn open(kind: &str, id: u32, window: u32, max: u32, host: &str) -> Vec<u8> {
        let w = Writer::new(msg::CHANNEL_OPEN)
            .string(kind)
            .u32(id)
            .u32(window)
            .u32(max);
        if kind == "session" {
            w.finish()
        } else {
            w.string(host).u32(22).string("127.0.0.1").u32(1).finish()
        }
    }

    fn data(id: u32, len: usize) -> Vec<u8> {
        Writer::new(msg::CHANNEL_DATA)
            .u32(id)
            .string(vec![b'd'; len])
            .finish()
    }

    fn eof(id: u32) -> Vec<u8> {
        Writer::new(msg::CHANNEL_EOF).u32(id).finish()
    }

    fn close(id: u32) -> Vec<u8> {
        Writer::new(msg::CHANNEL_CLOSE).u32(id).finish()
    }

    fn request(id: u32, kind: &str, extra: &[u8]) -> Vec<u8> {
        Writer::new(msg::CHANNEL_REQUEST)
            .u32(id)
            .string(kind)
            .bool(true)
            .raw(extra)
            .finish()
    }

    fn global(name: &str) -> Vec<u8> {
        Writer::new(msg::GLOBAL_REQUEST)
            .string(name)
            .bool(true)
            .string("dev")
            .u32(22)
            .finish()
    }

    /// A public-key query (no signature) for the fuzz user's key.
    pub(super) fn key_query() -> Vec<u8> {
        let user = fuzz_user();
        let blob = user
            .public_key()
            .key_data()
            .encode_vec()
            .unwrap_or_default();
        Writer::new(msg::USERAUTH_REQUEST)
            .string("fuzz")
            .string("ssh-connection")
            .string("publickey")
            .bool(false)
            .string("ssh-ed25519")
            .string(&blob)
            .finish()
    }

    pub(super) fn session_channel() -> Vec<Vec<u8>> {
        vec![
            open("session", 0, 1 << 20, 32768, ""),
            request(0, "exec", &Writer::default().string("ls").finish()),
            eof(0),
            eof(0),
            request(0, "exit-status", &[0, 0, 0, 1]),
            request(0, "exit-status", &[0, 0, 0, 2]),
            close(0),
        ]
    }

    pub(super) fn data_channel() -> Vec<Vec<u8>> {
        vec![
            open("direct-tcpip", 1, 1 << 20, 32768, "echo"),
            data(0, 5),
            data(0, 9000),
            Writer::new(msg::CHANNEL_WINDOW_ADJUST)
                .u32(0)
                .u32(1 << 16)
                .finish(),
            Writer::new(msg::CHANNEL_EXTENDED_DATA)
                .u32(0)
                .u32(1)
                .string("e")
                .finish(),
            eof(0),
            eof(0),
            close(0),
            close(0),
        ]
    }

    pub(super) fn odd_opens() -> Vec<Vec<u8>> {
        vec![
            open("direct-tcpip", 2, 0, 32768, "hold"),
            open("direct-tcpip", 3, 1 << 20, 100, "echo"),
            open("direct-tcpip", 4, 1 << 20, 32768, "refuse"),
            data(0, 40_000),
            Writer::new(msg::CHANNEL_OPEN_CONFIRMATION)
                .u32(7)
                .u32(8)
                .u32(1 << 20)
                .u32(32768)
                .finish(),
            close(0),
            eof(0),
        ]
    }

    pub(super) fn globals(query: Vec<u8>) -> Vec<Vec<u8>> {
        vec![
            global("tcpip-forward"),
            global("cancel-tcpip-forward"),
            global("keepalive@openssh.com"),
            vec![msg::REQUEST_SUCCESS],
            vec![200, 1, 2, 3],
            Writer::new(msg::IGNORE).string("x").finish(),
            query,
        ]
    }

    pub(super) fn login_out_of_order(query: Vec<u8>) -> Vec<Vec<u8>> {
        vec![
            Writer::new(msg::SERVICE_REQUEST)
                .string("ssh-userauth")
                .finish(),
            query,
            Writer::new(msg::USERAUTH_REQUEST)
                .string("fuzz")
                .string("ssh-connection")
                .string("none")
                .finish(),
            open("session", 0, 1 << 20, 32768, ""),
        ]
    }

    pub(super) fn rekey() -> Vec<Vec<u8>> {
        vec![
            kex::our_kexinit(false, false, &[KexAlg::Curve25519], &CipherAlg::ALL),
            Writer::new(msg::KEX_ECDH_INIT).string([5u8; 32]).finish(),
            vec![msg::NEWKEYS],
        ]
    }
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
