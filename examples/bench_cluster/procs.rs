//! The bench's child processes (`relay`, `devices`) and what is read of
//! them: memory from /proc, lines on stdout.

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

/// The store at `at`: a `postgres://` address, else a relay's data
/// directory (SQLite).
pub fn open_store(at: &str) -> Result<warren::store::Store> {
    if at.starts_with("postgres") {
        warren::store::Store::open_postgres(at)
    } else {
        warren::store::Store::open(std::path::Path::new(at))
    }
}

/// Resident anonymous memory plus page tables of `pid`, in KiB
/// (`RssAnon` + `VmPTE` of /proc/PID/status): what the relay's own state
/// costs, without the shared binary's pages.
pub fn anon_pte_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    field("RssAnon:") + field("VmPTE:")
}

/// A child process of this program (`relay` or `devices`), killed when
/// dropped; it reports on stdout, one line at a time.
pub struct Child {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    pub fn spawn(args: &[String]) -> Result<Child> {
        use std::process::Stdio;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench process")?;
        let out = child.stdout.take().context("no stdout")?;
        Ok(Child {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out)),
        })
    }

    pub async fn line(&mut self) -> Result<String> {
        self.lines
            .next_line()
            .await?
            .context("a bench process ended early (see its error above)")
    }

    pub async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(stdin.flush().await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// SIGKILL, as `kill -9`.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A loader's `status` answer.
#[derive(Debug, Default)]
pub struct LoaderStatus {
    pub registered: u64,
    pub failures: u64,
    pub moved: u64,
    pub errors: Vec<String>,
}

/// Asks a loader for its counters.
pub async fn status(l: &mut Child) -> Result<LoaderStatus> {
    l.send("status").await?;
    let mut out = LoaderStatus::default();
    loop {
        let line = l.line().await?;
        if line == "end" {
            return Ok(out);
        }
        if let Some(e) = line.strip_prefix("error ") {
            out.errors.push(e.to_string());
        } else if let Some(rest) = line.strip_prefix("status ") {
            let v: Vec<u64> = rest
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("loader status {rest:?}"))?;
            (out.registered, out.failures, out.moved) = (v[0], v[1], v[2]);
        }
    }
}

/// Every loader's counters, summed; errors up to five distinct ones.
pub async fn status_all(loaders: &mut [Child]) -> Result<LoaderStatus> {
    let mut sum = LoaderStatus::default();
    for l in loaders {
        let s = status(l).await?;
        sum.registered += s.registered;
        sum.failures += s.failures;
        sum.moved += s.moved;
        for e in s.errors {
            if sum.errors.len() < 5 && !sum.errors.contains(&e) {
                sum.errors.push(e);
            }
        }
    }
    Ok(sum)
}
