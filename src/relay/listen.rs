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
    let mut admit = admit;
    let admit = move |tcp, peer, ()| admit(tcp, peer);
    accept_loop_gated(listener, stop, tasks, || std::future::ready(()), admit).await;
}

/// [`accept_loop`], accepting only once `gate` is ready: while the relay
/// has no room for another handshake, new connections wait in the
/// kernel's accept queue instead of being accepted and closed (a burst of
/// devices then connects without retries). What the gate gives (the slot it
/// waited for) goes to `admit` with the connection accepted next.
pub async fn accept_loop_gated<G, GFut, T, F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tasks: TaskTracker,
    mut gate: G,
    mut admit: F,
) where
    G: FnMut() -> GFut,
    GFut: Future<Output = T>,
    F: FnMut(TcpStream, SocketAddr, T) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let given = tokio::select! {
            _ = stop.cancelled() => return,
            given = gate() => given,
        };
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
        if let Some(task) = admit(tcp, peer, given) {
            tasks.spawn(task);
        }
    }
}

/// Descriptors the relay keeps for itself (listeners, the store, logs,
/// the runtime): the rest is about one per connected device.
pub const RESERVED_FILES: u64 = 64;

/// Below this soft open-file limit the relay warns at start: a fleet of a
/// few thousand devices would meet "accept failed: too many open files".
const FEW_FILES: u64 = 4096;

/// Raises this process's soft open-file limit to its hard limit (each
/// device holds one descriptor; many systems start services at 1,024), and
/// warns when even the hard limit is low. Returns the limit now in force.
pub fn raise_open_files() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: now.maximum,
        maximum: now.maximum,
    };
    if now.current != now.maximum
        && let Err(e) = setrlimit(Resource::Nofile, raised)
    {
        tracing::warn!(error = %e, "cannot raise the open-file limit to the hard limit");
    }
    let limit = open_files_limit();
    if limit < FEW_FILES {
        tracing::warn!(
            limit,
            "the open-file limit allows about {} devices: raise it (LimitNOFILE= in the \
             systemd unit, or ulimit -n) for a larger fleet",
            limit.saturating_sub(RESERVED_FILES)
        );
    }
    limit
}

/// The soft open-file limit in force (`u64::MAX`: unlimited).
pub fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}
