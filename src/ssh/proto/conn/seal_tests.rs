//! What the connection does when a packet cannot be sealed.

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::channels::{ChanKind, Entry};
use super::*;
use crate::protocol::limits::MAX_PACKET_SIZE;
use crate::ssh::proto::kex;
use crate::ssh::proto::mux::{ChanHandle, ChanShared};
use crate::ssh::proto::packet::Direction;

/// Refuses everything; the connection under test never gets that far.
pub(super) struct Nothing;

impl Events for Nothing {
    async fn check_key(&mut self, _: &str, _: &PublicKey, _: bool) -> bool {
        false
    }
    fn authenticated(&mut self, _: ConnTx) {}
    async fn global_request(&mut self, _: &str, _: &[u8]) -> bool {
        false
    }
    fn channel_open(&mut self, _: OpenRequest, incoming: Incoming) {
        incoming.refuse(1, "no");
    }
    async fn exec(&mut self, _: &str) -> ExecOutput {
        ExecOutput::default()
    }
}

/// A server connection whose sealing keys cannot seal (keys made for
/// opening), and the other end of its socket.
pub(super) async fn broken_conn() -> (Conn<Nothing>, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    let side = Side::Server {
        host_key: Arc::new(kex::HostKey::from_seed(&[3u8; 32]).unwrap()),
        max_auth_attempts: 6,
    };
    let (mut c, _tx) = Conn::new(s, b"SSH-2.0-x".to_vec(), side, Settings::default(), Nothing);
    c.t.seal = Direction::cannot_seal();
    (c, peer)
}

#[tokio::test]
async fn a_seal_that_fails_ends_the_connection_and_sends_nothing() {
    // A message: nothing goes out, and the connection ends at once,
    // without a DISCONNECT it could not seal either.
    let (c, mut peer) = broken_conn().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), c.run())
        .await
        .unwrap();
    assert!(
        matches!(&ended, Ended::Local(t) if t.contains("sealing a packet failed")),
        "{ended:?}"
    );
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "{} bytes sent without a tag", got.len());

    // Channel data: the same.
    let (mut c, _peer) = broken_conn().await;
    let shared = ChanShared::new(1 << 20, 32768);
    let entry = Entry::new(shared.clone(), 0, ChanKind::Open, None, MAX_PACKET_SIZE);
    c.ch.table.insert(0, entry);
    let _h = ChanHandle::new(0, shared, c.tx.clone());
    c.command(Cmd::Data {
        id: 0,
        ext: false,
        data: Bytes::from_static(b"secret").into(),
    });
    assert!(c.t.out.is_empty(), "channel data queued without a tag");
    assert!(matches!(c.t.write_some(), Err(Fail::Broken(_))));
}
