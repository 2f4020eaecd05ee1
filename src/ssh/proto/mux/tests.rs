//! Unit tests of the channel buffers, windows and command queue.

use super::*;

fn handle() -> (ChanHandle, Arc<ChanShared>, crate::ssh::proto::queue::CmdRx) {
    let (cmds, rx) = crate::ssh::proto::queue::channel();
    let tx = ConnTx {
        cmds,
        space: Arc::new(Semaphore::new(OUTBOX)),
        ctl: Ctl::new(),
    };
    let shared = ChanShared::new(0, 32768);
    (ChanHandle::new(1, shared.clone(), tx), shared, rx)
}

#[tokio::test]
async fn window_is_granted_only_as_the_reader_consumes() {
    let (h, shared, mut rx) = handle();
    for _ in 0..(GRANT_AT / 1024) {
        shared.push(In::Data(Bytes::from(vec![0u8; 1024]).into()));
    }
    assert!(rx.try_recv().is_err(), "nothing granted before reading");
    for _ in 0..(GRANT_AT / 1024) - 1 {
        h.recv().await.unwrap();
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing granted below the threshold"
    );
    h.recv().await.unwrap();
    match rx.try_recv() {
        Ok(Cmd::Adjust { id: 1, n }) => assert_eq!(n, GRANT_AT),
        _ => panic!("expected a window adjust"),
    }
}

#[tokio::test]
async fn a_writer_waits_for_its_window_and_no_more() {
    let (h, shared, mut rx) = handle();
    let h = Arc::new(h);
    let w = h.clone();
    let send = tokio::spawn(async move { w.send(Bytes::from(vec![1u8; 100]), false).await });
    tokio::task::yield_now().await;
    assert!(rx.try_recv().is_err(), "no window, no data");
    assert!(shared.add_window(60));
    match rx.recv().await {
        Some(Cmd::Data { data, .. }) => assert_eq!(data.len(), 60),
        _ => panic!("expected data"),
    }
    assert!(shared.add_window(40));
    match rx.recv().await {
        Some(Cmd::Data { data, .. }) => assert_eq!(data.len(), 40),
        _ => panic!("expected data"),
    }
    send.await.unwrap().unwrap();
    assert!(shared.add_window(1));
    assert!(!shared.add_window(u32::MAX), "window overflow is refused");
}

/// A read buffer of `len` bytes and a frame cut from it, the way the
/// connection cuts a received packet; the buffer can be reused (its
/// `try_reclaim` succeeds) only once nothing points into it.
fn frame_in_buffer(len: usize, fill: u8) -> (BytesMut, Chunk) {
    let mut buf = BytesMut::with_capacity(len);
    buf.resize(len, fill);
    let packet = buf.split_to(len / 2);
    buf.clear();
    (
        buf,
        Chunk::Frame {
            packet,
            data: 16..len / 2 - 16,
        },
    )
}

#[test]
fn queued_data_gets_its_own_buffer_after_a_whole_round() {
    let shared = ChanShared::new(0, 32768);
    let (mut first_buf, first) = frame_in_buffer(64 * 1024, 1);
    let (mut second_buf, second) = frame_in_buffer(64 * 1024, 2);
    shared.push(In::Data(first));
    assert!(
        shared.unpin_waiting(),
        "a new entry waits for the next round"
    );
    assert_eq!(shared.pinned(), 1);
    shared.push(In::Data(second));
    assert!(shared.unpin_waiting(), "the second entry is still new");
    assert_eq!(shared.pinned(), 1, "the first entry was copied");
    assert!(first_buf.try_reclaim(64 * 1024), "its read buffer is free");
    assert!(!second_buf.try_reclaim(64 * 1024));
    assert!(!shared.unpin_waiting(), "nothing left to copy");
    assert_eq!(shared.pinned(), 0);
    assert!(second_buf.try_reclaim(64 * 1024));
    let st = shared.lock();
    let data: Vec<u8> = st
        .queue
        .iter()
        .flat_map(|m| match m {
            In::Data(c) => c.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(data.len(), 2 * (32 * 1024 - 32));
    assert!(data[..32 * 1024 - 32].iter().all(|&b| b == 1));
    assert!(data[32 * 1024 - 32..].iter().all(|&b| b == 2));
}

#[test]
fn reading_keeps_the_unpin_marks_in_step() {
    let shared = ChanShared::new(0, 32768);
    let (cmds, _rx) = crate::ssh::proto::queue::channel();
    let tx = ConnTx {
        cmds,
        space: Arc::new(Semaphore::new(OUTBOX)),
        ctl: Ctl::new(),
    };
    let h = ChanHandle::new(1, shared.clone(), tx);
    let (_a, first) = frame_in_buffer(4096, 1);
    shared.push(In::Data(first));
    shared.unpin_waiting();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(h.recv()).unwrap();
    let (mut b_buf, second) = frame_in_buffer(4096, 2);
    shared.push(In::Data(second));
    assert!(shared.unpin_waiting());
    assert_eq!(shared.pinned(), 1, "the new entry waits a whole round");
    assert!(!shared.unpin_waiting());
    assert!(b_buf.try_reclaim(4096));
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_waits_long_lets_go_of_the_read_buffer() {
    let (h, shared, mut rx) = handle();
    let (mut buf, frame) = frame_in_buffer(64 * 1024, 9);
    let h = Arc::new(h);
    let w = h.clone();
    let send = tokio::spawn(async move { w.send(frame, false).await });
    tokio::task::yield_now().await;
    assert!(!buf.try_reclaim(64 * 1024), "the writer holds the frame");
    // No window for longer than `UNPIN_AFTER` (the paused clock jumps).
    tokio::time::sleep(UNPIN_AFTER + Duration::from_millis(1)).await;
    assert!(buf.try_reclaim(64 * 1024), "the waiting data was copied");
    assert!(shared.add_window(WINDOW));
    match rx.recv().await {
        Some(Cmd::Data { data, .. }) => {
            assert_eq!(data.len(), 32 * 1024 - 32);
            assert!(data.iter().all(|&b| b == 9));
        }
        _ => panic!("expected data"),
    }
    send.await.unwrap().unwrap();
}

#[tokio::test]
async fn close_wakes_reader_and_writer() {
    let (h, shared, _rx) = handle();
    let h = Arc::new(h);
    let (r, w) = (h.clone(), h.clone());
    let reader = tokio::spawn(async move { r.recv().await.is_none() });
    let writer =
        tokio::spawn(async move { w.send(Bytes::from_static(b"x"), false).await.is_err() });
    tokio::task::yield_now().await;
    shared.close();
    assert!(reader.await.unwrap());
    assert!(writer.await.unwrap());
}
