//! The SSH layer's limits against a real relay process, measured from
//! outside: a peer that needs no credentials (any key may log in as
//! `enroll`) must not make the relay's memory grow.

mod common;

use tokio::net::TcpStream;

use common::WAIT;
use common::cli::RelayProcess;
use warren::ssh::fuzzing::Peer;
use warren::ssh::keys;

const CHANNEL_OPEN: u8 = 90;
const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
const CHANNEL_EOF: u8 = 96;
const GLOBAL_REQUEST: u8 = 80;
const REQUEST_SUCCESS: u8 = 81;
const REQUEST_FAILURE: u8 = 82;
const CHANNEL_REQUEST: u8 = 98;

/// Anonymous resident memory of process `pid` (heap and such), in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon in /proc/PID/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// A relay process, and a peer logged in to it as `enroll` (no credentials:
/// any key may).
async fn enroll_peer(dir: &std::path::Path) -> (RelayProcess, Peer) {
    let relay = RelayProcess::start(&[], 0, &[], &dir.join("data")).await;
    let s = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
    let mut peer = Peer::handshake(s).await.unwrap();
    let key = keys::generate_ed25519().unwrap();
    peer.login("enroll", &key).await.unwrap();
    (relay, peer)
}

/// Opens `n` session channels (ours numbered from 0) granting the relay
/// `window` bytes each; returns the relay's ids for them.
async fn open_sessions(peer: &mut Peer, n: u32, window: u32) -> Vec<[u8; 4]> {
    let mut relay_ids = Vec::new();
    for ours in 0..n {
        let mut open = vec![CHANNEL_OPEN];
        string(&mut open, b"session");
        for v in [ours, window, 32 * 1024] {
            open.extend_from_slice(&v.to_be_bytes());
        }
        peer.send(&open).await.unwrap();
        let conf = peer.recv().await.expect("session channel confirmed");
        assert_eq!(conf[0], CHANNEL_OPEN_CONFIRMATION);
        relay_ids.push(<[u8; 4]>::try_from(&conf[5..9]).unwrap());
    }
    relay_ids
}

/// Runs `command` on each channel, asking for no reply.
async fn exec_each(peer: &mut Peer, relay_ids: &[[u8; 4]], command: &[u8]) {
    for id in relay_ids {
        let mut exec = vec![CHANNEL_REQUEST];
        exec.extend_from_slice(id);
        string(&mut exec, b"exec");
        exec.push(0);
        string(&mut exec, command);
        peer.send(&exec).await.unwrap();
    }
}

#[tokio::test]
async fn a_million_eofs_on_one_channel_do_not_grow_the_relays_memory() {
    let dir = tempfile::tempdir().unwrap();
    // No credentials: the enroll user takes any key.
    let (relay, mut peer) = enroll_peer(dir.path()).await;
    let pid = relay.child.id().unwrap();
    let relay_id = open_sessions(&mut peer, 1, 1 << 20).await[0];
    let before = rss_anon(pid);

    let mut eof = vec![CHANNEL_EOF];
    eof.extend_from_slice(&relay_id);
    let mut out = Vec::new();
    let mut sent = 0;
    'flood: for _ in 0..100 {
        out.clear();
        for _ in 0..10_000 {
            peer.seal(&eof, &mut out);
        }
        if peer.write(&out).await.is_err() {
            break 'flood;
        }
        sent += 10_000;
    }
    // Either the relay ended the connection, or it answers a request sent
    // after every EOF: then it has read them all.
    let mut ping = vec![GLOBAL_REQUEST];
    string(&mut ping, b"keepalive@openssh.com");
    ping.push(1);
    let _ = peer.send(&ping).await;
    let settled = async {
        while let Some(m) = peer.recv().await {
            if m[0] == REQUEST_SUCCESS || m[0] == REQUEST_FAILURE {
                return "answered";
            }
        }
        "ended"
    };
    let how = tokio::time::timeout(WAIT * 4, settled)
        .await
        .expect("the relay answers or ends the connection");
    let after = rss_anon(pid);
    let grew = after.saturating_sub(before);
    eprintln!("{sent} EOFs sent; relay {how}; RssAnon {before} -> {after} bytes");
    assert!(
        grew < 1024 * 1024,
        "relay memory grew by {grew} bytes after {sent} EOFs ({how})"
    );
    assert_eq!(how, "ended", "a repeated EOF ends the connection");
}

/// An enrollment connection (any key logs in as `enroll`) may try only a
/// few tokens: past [`MAX_ENROLL_ATTEMPTS`] each `enroll` is refused at
/// once, before any store work, so one connection cannot guess or queue.
#[tokio::test]
async fn an_enroll_connection_gets_a_few_attempts_only() {
    use warren::protocol::limits::MAX_ENROLL_ATTEMPTS;
    const CHANNEL_EXTENDED_DATA: u8 = 95;
    const CHANNEL_CLOSE: u8 = 97;
    const SENT: u32 = 6;

    let dir = tempfile::tempdir().unwrap();
    let (_relay, mut peer) = enroll_peer(dir.path()).await;
    let relay_ids = open_sessions(&mut peer, SENT, 1 << 20).await;
    exec_each(&mut peer, &relay_ids, b"enroll warren1.not-a-token").await;
    // Each channel's stderr, until the relay closes all of them.
    let mut stderr = vec![String::new(); SENT as usize];
    let mut closed = 0;
    tokio::time::timeout(WAIT * 2, async {
        while closed < SENT {
            let m = peer.recv().await.expect("the relay answers every command");
            let ours = || u32::from_be_bytes(m[1..5].try_into().unwrap()) as usize;
            match m[0] {
                CHANNEL_EXTENDED_DATA => {
                    stderr[ours()].push_str(&String::from_utf8_lossy(&m[13..]));
                }
                CHANNEL_CLOSE => closed += 1,
                _ => {}
            }
        }
    })
    .await
    .expect("every command answered");
    let capped = stderr
        .iter()
        .filter(|e| e.contains(&format!("at most {MAX_ENROLL_ATTEMPTS} enroll attempts")))
        .count();
    assert_eq!(capped, SENT as usize - MAX_ENROLL_ATTEMPTS, "{stderr:?}");
}

/// Data a peer sends on a session channel whose command is still running
/// (its output held back by a window of 0) has no reader: the relay drops
/// it as it arrives instead of keeping up to a whole window (2 MiB) per
/// channel. Before, 16 such channels of an `enroll` peer held 32 MiB.
#[tokio::test]
async fn data_sent_to_a_running_command_is_not_kept() {
    const CHANNEL_DATA: u8 = 94;
    const CHANNELS: u32 = 16;
    const CHUNK: usize = 16 * 1024;
    // What the relay grants a channel before any window adjustment.
    const WINDOW: usize = 2 * 1024 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let (relay, mut peer) = enroll_peer(dir.path()).await;
    let pid = relay.child.id().unwrap();
    // A window of 0: the commands' output can never be sent.
    let relay_ids = open_sessions(&mut peer, CHANNELS, 0).await;
    exec_each(&mut peer, &relay_ids, b"enroll warren1.not-a-token").await;
    let before = rss_anon(pid);
    let chunk = vec![0x55u8; CHUNK];
    let mut out = Vec::new();
    for id in &relay_ids {
        out.clear();
        for _ in 0..WINDOW / CHUNK {
            let mut data = vec![CHANNEL_DATA];
            data.extend_from_slice(id);
            string(&mut data, &chunk);
            peer.seal(&data, &mut out);
        }
        peer.write(&out).await.unwrap();
    }
    // The relay has read it all once it answers a request sent after it.
    let mut ping = vec![GLOBAL_REQUEST];
    string(&mut ping, b"keepalive@openssh.com");
    ping.push(1);
    peer.send(&ping).await.unwrap();
    tokio::time::timeout(WAIT * 4, async {
        loop {
            let m = peer.recv().await.expect("the relay keeps the connection");
            if m[0] == REQUEST_SUCCESS || m[0] == REQUEST_FAILURE {
                break;
            }
        }
    })
    .await
    .expect("the relay answers");
    let after = rss_anon(pid);
    let grew = after.saturating_sub(before);
    let sent = CHANNELS as usize * WINDOW;
    eprintln!("{sent} bytes sent to running commands; RssAnon {before} -> {after} bytes");
    assert!(
        grew < 4 * 1024 * 1024,
        "relay memory grew by {grew} bytes after {sent} bytes sent to commands"
    );
}
