//! Running the `warren` binary the way a person would, with a time limit.

use tokio::process::Command;

use super::WAIT;
use super::openssh::{Ran, run};

pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Runs `warren ARGS` quietly, never inheriting a `WARREN_DATA` from outside.
pub async fn warren(args: &[&str]) -> Ran {
    run(
        Command::new(WARREN)
            .args(args)
            .env("WARREN_LOG", "error")
            .env_remove("WARREN_DATA"),
        WAIT,
    )
    .await
}

/// Runs `warren ARGS`, which must succeed; returns its stdout.
pub async fn warren_ok(args: &[&str]) -> String {
    let r = warren(args).await;
    assert!(r.ok, "warren {}: {}", args.join(" "), r.stderr);
    r.stdout_str()
}
