//! Unit tests of a splice's direct path: when it is taken, when it falls
//! back to the queue, and that bytes keep their order either way.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicUsize;
use std::task::Poll;

use super::*;

/// A channel of one connection: its handle, its buffers, and the
/// connection's command queue (what the connection task would seal).
struct End {
    h: ChanHandle,
    shared: Arc<ChanShared>,
    cmds: crate::ssh::proto::queue::CmdRx,
}

fn end(id: u32, window: u32) -> End {
    let (cmds, rx) = crate::ssh::proto::queue::channel();
    let tx = ConnTx {
        cmds,
        space: Arc::new(Semaphore::new(OUTBOX)),
        ctl: Ctl::new(),
    };
    let shared = ChanShared::new(window, 32 * 1024);
    End {
        h: ChanHandle::new(id, shared.clone(), tx),
        shared,
        cmds: rx,
    }
}

fn data(b: &[u8]) -> Chunk {
    Bytes::copy_from_slice(b).into()
}

/// Lets `h`'s reader wait in `recv` with nothing in hand, as an idle pump
/// does; returns the pending read.
async fn idle_reader(h: &ChanHandle) -> std::pin::Pin<Box<impl Future<Output = Option<In>> + '_>> {
    let mut recv = Box::pin(h.recv());
    let first = std::future::poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx).is_pending())).await;
    assert!(first, "the reader found something to read");
    recv
}

fn sent_data(rx: &mut crate::ssh::proto::queue::CmdRx) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        if let Cmd::Data { id, data, .. } = c {
            out.push((id, data.to_vec()));
        }
    }
    out
}

#[tokio::test]
async fn data_for_an_idle_reader_goes_straight_to_the_other_connection() {
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    let moved = a.h.direct_to(&b.h, None);
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"ping")), Pushed::Direct(None));
    assert_eq!(sent_data(&mut b.cmds), vec![(7, b"ping".to_vec())]);
    assert_eq!(moved.load(Ordering::Relaxed), 4);
    assert!(!a.shared.has_queued(), "nothing waits for the reader");
    assert_eq!(b.shared.lock().remote_window, (1 << 20) - 4);
    assert_eq!(b.h.tx.space.available_permits(), OUTBOX - 4);
}

#[tokio::test]
async fn a_busy_reader_keeps_the_order_through_its_queue() {
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    a.h.direct_to(&b.h, None);
    // The reader took "one" and has not passed it on yet: "two" must
    // wait behind it even though the queue is empty.
    a.shared.push_data(data(b"one"));
    let one = a.h.recv().await;
    assert!(matches!(one, Some(In::Data(ref d)) if &d[..] == b"one"));
    assert_eq!(a.shared.push_data(data(b"two")), Pushed::Queued);
    assert!(sent_data(&mut b.cmds).is_empty());
    // Nor does anything pass the queue while it holds something.
    assert_eq!(a.shared.push_data(data(b"three")), Pushed::Queued);
    assert!(sent_data(&mut b.cmds).is_empty());
    assert!(a.shared.has_queued());
}

#[tokio::test]
async fn no_window_or_no_outbox_space_falls_back_to_the_queue() {
    let (a, b) = (end(1, 0), end(7, 3));
    a.h.direct_to(&b.h, None);
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"four")), Pushed::Queued);
    assert_eq!(b.shared.lock().remote_window, 3, "the window is untouched");
    drop(_recv);
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    a.h.direct_to(&b.h, None);
    b.h.tx.space.forget_permits(OUTBOX - 2);
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"four")), Pushed::Queued);
    assert_eq!(
        b.shared.lock().remote_window,
        1 << 20,
        "the window is given back"
    );
    assert_eq!(b.h.tx.space.available_permits(), 2);
    assert!(sent_data(&mut b.cmds).is_empty());
}

#[tokio::test]
async fn a_pace_that_holds_the_data_hands_its_wait_to_the_reader() {
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    let charged = Arc::new(AtomicUsize::new(0));
    let c = charged.clone();
    let charge: Charge = Box::new(move |n| {
        c.fetch_add(n, Ordering::Relaxed);
        Some(Box::pin(async {}) as PaceHold)
    });
    a.h.direct_to(&b.h, Some(charge));
    let recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"slow")), Pushed::Queued);
    assert_eq!(charged.load(Ordering::Relaxed), 4, "charged once");
    assert!(sent_data(&mut b.cmds).is_empty());
    assert_eq!(b.shared.lock().remote_window, 1 << 20);
    assert_eq!(b.h.tx.space.available_permits(), OUTBOX);
    assert!(matches!(recv.await, Some(In::Data(ref d)) if &d[..] == b"slow"));
    assert!(
        a.h.take_pace_hold().is_some(),
        "the reader waits, not charges"
    );
    assert!(a.h.take_pace_hold().is_none());
}

#[tokio::test]
async fn window_taken_directly_is_granted_back_as_a_reader_would() {
    let (a, b) = (end(1, 0), end(7, u32::MAX));
    a.h.direct_to(&b.h, None);
    let chunk = 16 * 1024;
    let mut grants = Vec::new();
    for _ in 0..(GRANT_AT as usize / chunk) {
        let _recv = idle_reader(&a.h).await;
        match a.shared.push_data(Bytes::from(vec![0u8; chunk]).into()) {
            Pushed::Direct(g) => grants.push(g),
            Pushed::Queued => panic!("queued with window and space"),
        }
        // Give the outbox its space back, as the sealing connection does.
        b.h.tx.space.add_permits(chunk);
    }
    let last = grants.pop().flatten();
    assert!(grants.iter().all(Option::is_none), "granted early");
    assert_eq!(last, Some(GRANT_AT));
}

#[tokio::test]
async fn after_no_direct_everything_is_queued() {
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    a.h.direct_to(&b.h, None);
    a.h.no_direct();
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"late")), Pushed::Queued);
    assert!(sent_data(&mut b.cmds).is_empty());
}

/// A connection task that seals what its queue brings: it gives the
/// outbox space back and hands the peer more window now and then, like
/// the far end's WINDOW_ADJUST.
async fn drain(mut b: End, total: usize, out: Arc<StdMutex<Vec<u8>>>) {
    let mut got = 0;
    while got < total {
        match b.cmds.recv().await {
            Some(Cmd::Data { data, .. }) => {
                got += data.len();
                out.lock().unwrap().extend_from_slice(&data);
                b.h.tx.space.add_permits(data.len());
                if got.is_multiple_of(3) {
                    tokio::task::yield_now().await;
                }
                b.shared.add_window(data.len() as u32);
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// Until the reader waits with nothing queued.
async fn idle(shared: &ChanShared) {
    loop {
        {
            let st = shared.lock();
            if st.reader_waiting && st.queue.is_empty() {
                return;
            }
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_keep_their_order_between_the_direct_path_and_the_pump() {
    let (a, b) = (end(1, 0), end(7, 700));
    let total = 200_000usize;
    let moved = a.h.direct_to(&b.h, None);
    let b_shared = b.shared.clone();
    let b_tx = b.h.tx.clone();
    let out = Arc::new(StdMutex::new(Vec::new()));
    let sealer = tokio::spawn(drain(b, total, out.clone()));
    // The pump: what the direct path could not take, passed on in order.
    let writer = ChanHandle::new(7, b_shared, b_tx);
    let reader = Arc::new(a.h);
    let r = reader.clone();
    let pump = tokio::spawn(async move {
        while let Some(In::Data(d)) = r.recv().await {
            if writer.send(d, false).await.is_err() {
                return;
            }
        }
    });
    // The receiving connection, on another worker: packets of varied size.
    let mut sent = 0usize;
    let mut n = 0usize;
    while sent < total {
        let len = (1 + n * 37 % 300).min(total - sent);
        let chunk: Vec<u8> = (sent..sent + len).map(|i| (i % 251) as u8).collect();
        a.shared.push_data(Bytes::from(chunk).into());
        sent += len;
        n += 1;
        // Now and then the pump catches up, as between bursts.
        if n.is_multiple_of(7) {
            tokio::time::timeout(std::time::Duration::from_secs(10), idle(&a.shared))
                .await
                .expect("the pump caught up");
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), sealer)
        .await
        .expect("all bytes arrived")
        .unwrap();
    pump.abort();
    let out = out.lock().unwrap();
    assert_eq!(out.len(), total);
    for (i, &b) in out.iter().enumerate() {
        assert_eq!(b, (i % 251) as u8, "byte {i} out of order");
    }
    let direct = moved.load(Ordering::Relaxed);
    eprintln!("{direct} of {total} bytes went the direct way");
    assert!(direct > 0, "the direct path was never taken");
    assert!((direct as usize) < total, "the queue was never used");
}

/// Counts wake-ups of a task.
struct CountWakes(AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn data_passed_on_in_a_row_wakes_the_other_connection_once() {
    let (a, mut b) = (end(1, 0), end(7, 1 << 20));
    a.h.direct_to(&b.h, None);
    let _recv = idle_reader(&a.h).await;
    // The other connection's task waits for a command.
    let count = Arc::new(CountWakes(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(count.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    {
        let mut waiting = Box::pin(b.cmds.recv());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let mut wakes = Wakes::default();
        for m in [&b"one"[..], b"two", b"three"] {
            assert_eq!(
                a.shared.push_data_waking(data(m), &mut wakes),
                Pushed::Direct(None)
            );
        }
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            0,
            "woken before the read was handled"
        );
        wakes.flush();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        drop(wakes);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "woken twice");
        match waiting.as_mut().poll(&mut cx) {
            Poll::Ready(Some(Cmd::Data { data, .. })) => assert_eq!(&data[..], b"one"),
            _ => panic!("the first command was not there"),
        }
    }
    let rest = sent_data(&mut b.cmds);
    assert_eq!(rest, vec![(7, b"two".to_vec()), (7, b"three".to_vec())]);
    // Dropping what is owed wakes too (a read that ended in an error).
    let mut waiting = Box::pin(b.cmds.recv());
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    let mut wakes = Wakes::default();
    a.shared.push_data_waking(data(b"four"), &mut wakes);
    drop(wakes);
    assert_eq!(count.0.load(Ordering::Relaxed), 2);
}

/// A socket's write side that takes `room` bytes, then would block (or
/// fails every write, when `broken`).
struct Sink {
    took: StdMutex<Vec<u8>>,
    room: AtomicUsize,
    broken: bool,
}

impl Sink {
    fn new(room: usize) -> Arc<Sink> {
        Arc::new(Sink {
            took: StdMutex::new(Vec::new()),
            room: AtomicUsize::new(room),
            broken: false,
        })
    }

    fn took(&self) -> Vec<u8> {
        self.took.lock().unwrap().clone()
    }
}

impl DirectSink for Sink {
    fn try_write(&self, data: &[u8]) -> std::io::Result<usize> {
        if self.broken {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = self.room.load(Ordering::Relaxed).min(data.len());
        if n == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.room.fetch_sub(n, Ordering::Relaxed);
        self.took.lock().unwrap().extend_from_slice(&data[..n]);
        Ok(n)
    }
}

fn queued_data(h: &ChanHandle) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| h.try_recv_data(usize::MAX).map(|d| d.to_vec())).collect()
}

#[tokio::test]
async fn data_for_an_idle_reader_is_written_to_the_socket() {
    let a = end(1, 0);
    let sink = Sink::new(1 << 20);
    let moved = a.h.direct_to_sink(sink.clone());
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"ping")), Pushed::Direct(None));
    assert_eq!(sink.took(), b"ping");
    assert_eq!(moved.load(Ordering::Relaxed), 4);
    assert!(!a.shared.has_queued(), "nothing waits for the reader");
    // Window is granted back as a reader would, once enough went.
    let big = vec![7u8; GRANT_AT as usize];
    assert_eq!(
        a.shared.push_data(Bytes::from(big).into()),
        Pushed::Direct(Some(GRANT_AT + 4))
    );
}

#[tokio::test]
async fn what_the_socket_does_not_take_is_queued_first() {
    let a = end(1, 0);
    let sink = Sink::new(3);
    let moved = a.h.direct_to_sink(sink.clone());
    let recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"abcdef")), Pushed::Direct(None));
    assert_eq!(sink.took(), b"abc");
    assert_eq!(moved.load(Ordering::Relaxed), 3);
    // The rest waits for the reader, and what comes next waits behind it
    // even though the socket has room again.
    sink.room.store(1 << 20, Ordering::Relaxed);
    assert_eq!(a.shared.push_data(data(b"gh")), Pushed::Queued);
    assert!(matches!(recv.await, Some(In::Data(ref d)) if &d[..] == b"def"));
    assert_eq!(queued_data(&a.h), vec![b"gh".to_vec()]);
    assert_eq!(sink.took(), b"abc", "nothing passed the queue");
}

#[tokio::test]
async fn a_full_or_broken_socket_leaves_the_data_to_the_splice() {
    let a = end(1, 0);
    let sink = Sink::new(0);
    let moved = a.h.direct_to_sink(sink.clone());
    let recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"full")), Pushed::Queued);
    assert!(matches!(recv.await, Some(In::Data(ref d)) if &d[..] == b"full"));
    assert_eq!(moved.load(Ordering::Relaxed), 0);
    let a = end(1, 0);
    let broken = Arc::new(Sink {
        took: StdMutex::new(Vec::new()),
        room: AtomicUsize::new(1 << 20),
        broken: true,
    });
    a.h.direct_to_sink(broken);
    let recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"gone")), Pushed::Queued);
    assert!(matches!(recv.await, Some(In::Data(ref d)) if &d[..] == b"gone"));
    // After no_direct nothing goes to the socket.
    let a = end(1, 0);
    let sink = Sink::new(1 << 20);
    a.h.direct_to_sink(sink.clone());
    a.h.no_direct();
    let _recv = idle_reader(&a.h).await;
    assert_eq!(a.shared.push_data(data(b"late")), Pushed::Queued);
    assert!(sink.took().is_empty());
}
