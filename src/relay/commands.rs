//! Commands run over the relay's SSH port: `ssh -p 2222 tau@relay ls`.

use super::{Relay, status};
use crate::ssh::server::ExecOutput;
use crate::store::Identity;

const HELP: &str = "\
This is a Warren relay; it has no shell. Commands:
  ls [--json]   devices of your system: name, online or not, since when, address
  help          this text
Reach a device with: ssh -J SYSTEM@RELAY:PORT USER@DEVICE
";

pub(super) async fn run(relay: &Relay, who: &Identity, command: &str) -> ExecOutput {
    let words: Vec<&str> = command.split_whitespace().collect();
    if !who.role.may_open_streams() {
        return fail(1, format!("{} keys cannot run commands here\n", who.role));
    }
    match words.as_slice() {
        [] | ["help"] | ["--help"] => ExecOutput {
            stdout: HELP.as_bytes().to_vec(),
            stderr: Vec::new(),
            status: if words.is_empty() { 1 } else { 0 },
        },
        ["ls"] | ["ls", "--json"] => ls(relay, who, words.len() == 2).await,
        _ => fail(2, format!("unknown command {command:?}\n{HELP}")),
    }
}

async fn ls(relay: &Relay, who: &Identity, json: bool) -> ExecOutput {
    let devices = match status::list(relay, Some(&who.system)).await {
        Ok(d) => d,
        Err(e) => return fail(1, format!("cannot list devices: {e:#}\n")),
    };
    let stdout = if json {
        let mut s = serde_json::to_string_pretty(&devices).unwrap_or_else(|_| "[]".into());
        s.push('\n');
        s
    } else {
        status::render(&devices, false)
    };
    ExecOutput {
        stdout: stdout.into_bytes(),
        stderr: Vec::new(),
        status: 0,
    }
}

fn fail(status: u32, message: String) -> ExecOutput {
    ExecOutput {
        stdout: Vec::new(),
        stderr: message.into_bytes(),
        status,
    }
}
