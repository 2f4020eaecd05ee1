//! Channel data queued for one channel leaves in fewer packets
//! ([`Conn::coalesce`]): in order, within the peer's largest packet and
//! the window its sender took, and a lone message at once.

use bytes::Bytes;

use super::channels::{ChanKind, Entry};
use super::seal_tests::{Nothing, broken_conn};
use super::*;
use crate::protocol::limits::MAX_PACKET_SIZE;
use crate::ssh::proto::mux::{ChanHandle, ChanShared, Chunk, OUTBOX};
use crate::ssh::proto::packet::{CipherAlg, Direction};
use crate::ssh::proto::wire::{Reader, msg as wmsg};

const KEY: [u8; 16] = [7; 16];
const IV: [u8; 12] = [9; 12];

/// A connection sealing with aes128-gcm, the keys to open what it sends,
/// and the other end of its socket (kept open).
async fn sealing_conn() -> (Conn<Nothing>, Direction, tokio::net::TcpStream) {
    let (mut c, peer) = broken_conn().await;
    c.t.seal = Direction::new(CipherAlg::Aes128Gcm, &KEY, &IV, true).unwrap();
    let open = Direction::new(CipherAlg::Aes128Gcm, &KEY, &IV, false).unwrap();
    (c, open, peer)
}

/// Opens channel `id` (the peer's number `id + 100`) whose peer takes
/// packets of `max` bytes; its handle.
fn channel(c: &mut Conn<Nothing>, id: u32, window: u32, max: u32) -> ChanHandle {
    let shared = ChanShared::new(window, max);
    let entry = Entry::new(
        shared.clone(),
        id + 100,
        ChanKind::Open,
        None,
        MAX_PACKET_SIZE,
    );
    c.ch.table.insert(id, entry);
    ChanHandle::new(id, shared, c.tx.clone())
}

/// Queues data as a channel's sender does: outbox space taken first.
fn queue(c: &Conn<Nothing>, id: u32, ext: bool, data: Vec<u8>) {
    c.tx.space
        .try_acquire_many(data.len() as u32)
        .unwrap()
        .forget();
    assert!(c.tx.send(Cmd::Data {
        id,
        ext,
        data: Chunk::Bytes(Bytes::from(data)),
    }));
}

/// Runs the queued commands as the loop does after a wake-up.
fn run_queued(c: &mut Conn<Nothing>) {
    while let Ok(cmd) = c.cmds.try_recv() {
        c.command(cmd);
    }
}

/// What the connection sent: (message type, peer's channel, data) per packet.
fn sent(c: &mut Conn<Nothing>, open: &mut Direction) -> Vec<(u8, u32, Vec<u8>)> {
    let mut wire = c.t.out.take_all();
    let mut out = Vec::new();
    let mut seq = 0u32;
    while !wire.is_empty() {
        let size = open
            .packet_size(seq, [wire[0], wire[1], wire[2], wire[3]])
            .unwrap();
        let mut packet: Vec<u8> = wire.drain(..size).collect();
        let range = open.open(seq, &mut packet).unwrap();
        seq += 1;
        let payload = &packet[range];
        let mut r = Reader::new(&payload[1..]);
        let rid = r.u32().unwrap();
        if payload[0] == wmsg::CHANNEL_EXTENDED_DATA {
            assert_eq!(r.u32().unwrap(), 1);
        }
        out.push((payload[0], rid, r.string().unwrap().to_vec()));
    }
    out
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn queued_data_for_one_channel_leaves_in_order_in_packets_up_to_the_peer_max() {
    let (mut c, mut open, _peer) = sealing_conn().await;
    let _a = channel(&mut c, 1, 1 << 20, 7_000);
    let _b = channel(&mut c, 2, 1 << 20, 65_535);
    let parts: Vec<Vec<u8>> = (0..3).map(|i| bytes(3_000, i)).collect();
    for p in &parts {
        queue(&c, 1, false, p.clone());
    }
    queue(&c, 2, false, bytes(500, 9));
    queue(&c, 1, false, bytes(700, 10));
    run_queued(&mut c);
    let got = sent(&mut c, &mut open);
    let data = wmsg::CHANNEL_DATA;
    // Two parts fit 7,000; the third does not; channel 2's message stays
    // between channel 1's, so channel 1's last part goes alone.
    let want = vec![
        (data, 101, [parts[0].clone(), parts[1].clone()].concat()),
        (data, 101, parts[2].clone()),
        (data, 102, bytes(500, 9)),
        (data, 101, bytes(700, 10)),
    ];
    assert_eq!(got, want);
    assert_eq!(
        c.tx.space.available_permits(),
        OUTBOX,
        "outbox space all given back"
    );
}

#[tokio::test]
async fn a_lone_message_leaves_at_once_and_extended_data_stays_apart() {
    let (mut c, mut open, _peer) = sealing_conn().await;
    let _a = channel(&mut c, 1, 1 << 20, 65_535);
    queue(&c, 1, false, b"ping".to_vec());
    run_queued(&mut c);
    assert_eq!(
        sent(&mut c, &mut open),
        vec![(wmsg::CHANNEL_DATA, 101, b"ping".to_vec())]
    );
    queue(&c, 1, false, b"out".to_vec());
    queue(&c, 1, true, b"err1".to_vec());
    queue(&c, 1, true, b"err2".to_vec());
    queue(&c, 1, false, b"more".to_vec());
    run_queued(&mut c);
    assert_eq!(
        sent(&mut c, &mut open),
        vec![
            (wmsg::CHANNEL_DATA, 101, b"out".to_vec()),
            (wmsg::CHANNEL_EXTENDED_DATA, 101, b"err1err2".to_vec()),
            (wmsg::CHANNEL_DATA, 101, b"more".to_vec()),
        ]
    );
}

#[tokio::test]
async fn joined_packets_stay_within_the_window_their_sender_took() {
    let (mut c, mut open, _peer) = sealing_conn().await;
    // A window of 6,000 bytes: a sender gets exactly that far.
    let h = channel(&mut c, 1, 6_000, 65_535);
    for i in 0..3 {
        h.send(Bytes::from(bytes(2_000, i)), false).await.unwrap();
    }
    let window = |c: &Conn<Nothing>| c.ch.table[&1].shared.lock().remote_window;
    assert_eq!(window(&c), 0, "the senders took the whole window");
    run_queued(&mut c);
    let got = sent(&mut c, &mut open);
    assert_eq!(got.len(), 1, "three parts in one packet");
    assert_eq!(got[0].2.len(), 6_000);
    assert_eq!(window(&c), 0, "joining took no window of its own");
}

#[tokio::test]
async fn big_parts_go_whole_and_joined_packets_keep_to_small_parts() {
    let (mut c, mut open, _peer) = sealing_conn().await;
    let _a = channel(&mut c, 1, 1 << 20, 65_535);
    let big = bytes(20_000, 1);
    queue(&c, 1, false, bytes(100, 2));
    queue(&c, 1, false, bytes(200, 3));
    queue(&c, 1, false, big.clone());
    queue(&c, 1, false, bytes(300, 4));
    run_queued(&mut c);
    let got: Vec<Vec<u8>> = sent(&mut c, &mut open).into_iter().map(|p| p.2).collect();
    let want = vec![[bytes(100, 2), bytes(200, 3)].concat(), big, bytes(300, 4)];
    assert_eq!(got, want);
}

#[tokio::test]
async fn no_joining_behind_the_backlog() {
    let (mut c, mut open, _peer) = sealing_conn().await;
    let _a = channel(&mut c, 1, 1 << 20, 65_535);
    // An older command set aside (as unpinning does): newer data must not
    // jump it by joining data taken from the queue.
    c.backlog.push_back(Cmd::Eof(1));
    queue(&c, 1, false, b"one".to_vec());
    queue(&c, 1, false, b"two".to_vec());
    let first = c.cmds.try_recv().unwrap();
    c.command(first);
    let got = sent(&mut c, &mut open);
    assert_eq!(got, vec![(wmsg::CHANNEL_DATA, 101, b"one".to_vec())]);
}
