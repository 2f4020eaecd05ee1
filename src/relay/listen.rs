//! The relay's one accept loop, for its SSH port and for each public port.
//! It only accepts, asks `admit` whether to serve the peer, and spawns what
//! `admit` returns: handshakes and everything slow run in the spawned task,
//! so one slow peer never stalls the others.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::limits::ACCEPT_RETRY;

/// Accepts on `listener` until `stop`, spawning on `tasks` the task that
/// `admit` returns for each connection (`None`: refused, the socket closes).
/// The listener closes when this returns.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
    admit: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_loop_gated(listener, stop, tasks, || std::future::ready(()), admit).await;
}

/// [`accept_loop`], accepting only once `gate` is ready: while the relay
/// has no room for another handshake, new connections wait in the
/// kernel's accept queue instead of being accepted and closed (a burst of
/// devices then connects without retries).
pub async fn accept_loop_gated<G, GFut, F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
    mut gate: G,
    mut admit: F,
) where
    G: FnMut() -> GFut,
    GFut: Future<Output = ()>,
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = gate() => {}
        }
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: wait a little
                    // rather than spin, and keep serving.
                    let port = listener.local_addr().map(|a| a.port()).ok();
                    tracing::warn!(?port, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        if let Some(task) = admit(tcp, peer) {
            tasks.spawn(task);
        }
    }
}
