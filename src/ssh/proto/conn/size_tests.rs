//! What an idle connection costs in memory: the state every connection
//! task holds for its whole life (README, "Relay memory per idle device").
//! A field, or an inlined future, that makes it grow fails here before it
//! shows in the benchmark.

use super::seal_tests::{Nothing, broken_conn};
use super::*;

#[tokio::test]
async fn an_idle_connection_task_stays_small() {
    let conn = std::mem::size_of::<Conn<Nothing>>();
    eprintln!(
        "Conn {conn} bytes: Transport {}, KeyExchange {}, Auth {}, Channels {}",
        std::mem::size_of::<transport::Transport>(),
        std::mem::size_of::<KeyExchange>(),
        std::mem::size_of::<Auth>(),
        std::mem::size_of::<Channels>(),
    );
    let (mut c, _peer) = broken_conn().await;
    let inner = std::mem::size_of_val(&c.run_inner());
    let run = c.run();
    let task = std::mem::size_of_val(&run);
    drop(run);
    eprintln!("run_inner future {inner} bytes, the task's future {task} bytes");
    // A key exchange's state is boxed: it is not part of an idle connection.
    assert!(conn <= 1024, "Conn is {conn} bytes");
    // The connection once, and the loop's state: not the connection twice
    // (as an `async fn run(self)` would hold it) nor the application's
    // futures inlined (they are boxed).
    assert!(
        task <= conn + inner + 128,
        "the task's future is {task} bytes for a {conn}-byte connection"
    );
    assert!(inner <= 1024, "the loop's state is {inner} bytes");
}

#[test]
fn a_command_stays_small() {
    // The command queue allocates 32 of them per block, one block per
    // connection even when idle.
    assert!(std::mem::size_of::<Cmd>() <= 64);
}
