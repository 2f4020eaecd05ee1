//! Commands run over the relay's SSH port: `ssh -p 2222 tau@relay ls`.
//!
//! The command line is exactly a `warren admin` command line (same parser,
//! same output). Controllers may run `ls` and `log`, limited to their own
//! system; admin keys may run every admin command, for every system. A
//! refused command is audited.

use std::net::SocketAddr;

use clap::Parser;

use super::Relay;
use crate::admin::{self, AdminCommand, Caller};
use crate::audit::{self, Event, kind};
use crate::protocol::Role;
use crate::ssh::server::ExecOutput;
use crate::store::Identity;

const HELP: &str = "\
This is a Warren relay; it has no shell. Commands:
  ls [--label K=V] [--json]     devices of your system: status, since, last seen, address, labels
  log [--device D] [--key K] [--kind K] [--since T] [--until T] [--before ID] [--json|--csv]
                                the audit log of your system, newest first, 20 per page
  console-login                 a one-time URL (5 minutes) for the web console, read-only
                                for controller keys
  help                          this text
Admin keys may also run every `warren admin` command, e.g.
  invite --system tau --role device --name dev3 [--ttl 1h]
  invite ls | invite revoke ID | key ls | key revoke FP
  device disable --system tau dev1 | device enable --system tau dev1
Reach a device with: ssh -J SYSTEM@RELAY:PORT USER@DEVICE
";

/// The remote command line: the `warren admin` grammar without `--data`.
#[derive(Debug, Parser)]
#[command(name = "ssh relay", no_binary_name = true, disable_version_flag = true)]
struct Remote {
    #[command(subcommand)]
    command: AdminCommand,
}

pub(super) async fn run(
    relay: &Relay,
    who: &Identity,
    peer: SocketAddr,
    command: &str,
) -> ExecOutput {
    if !who.role.may_open_streams() {
        return ExecOutput::fail(1, format!("{} keys cannot run commands here\n", who.role));
    }
    let words = match split_words(command) {
        Ok(w) => w,
        Err(e) => return ExecOutput::fail(2, format!("{e}\n")),
    };
    match words.first().map(String::as_str) {
        None => return ExecOutput::with_status(HELP, 1),
        Some("help") => return ExecOutput::with_status(HELP, 0),
        _ => {}
    }
    let mut command = match Remote::try_parse_from(&words) {
        Ok(r) => r.command,
        Err(e) => {
            let text = e.render().to_string();
            return if e.use_stderr() {
                ExecOutput::fail(2, format!("{text}\n{HELP}"))
            } else {
                ExecOutput::with_status(text, 0)
            };
        }
    };
    if who.role != Role::Admin
        && let Err(reason) = limit_to_own_system(who, &mut command)
    {
        relay.audit().record(
            Event::new(kind::COMMAND, audit::REFUSED)
                .peer(peer)
                .system(who.system.as_str())
                .key(who.name.as_str(), who.fingerprint.as_str())
                .detail(format!("{reason}: {}", words.join(" "))),
        );
        // The refusal is on record before the caller hears of it.
        let _ = relay.audit().flush().await;
        return ExecOutput::fail(1, format!("{reason}\n"));
    }
    let caller = Caller::Remote { relay, who, peer };
    match admin::execute(relay.store(), &caller, command).await {
        Ok(reply) => {
            if let Err(e) = relay.audit().record_durable(reply.events).await {
                return ExecOutput::fail(
                    1,
                    format!("done, but writing the audit log failed: {e:#}\n"),
                );
            }
            if reply.changed {
                relay.store_changed();
            }
            ExecOutput {
                stdout: reply.out.into_bytes(),
                stderr: reply.err.into_bytes(),
                status: 0,
            }
        }
        Err(e) => ExecOutput::fail(1, format!("{e:#}\n")),
    }
}

/// Controllers may list devices and read the log of their own system only.
fn limit_to_own_system(who: &Identity, command: &mut AdminCommand) -> Result<(), String> {
    let own = who.system.to_string();
    let check = |asked: &mut Option<String>| match asked {
        Some(s) if *s != own => Err(format!(
            "a controller key sees only its own system ({own}), not {s}"
        )),
        _ => {
            *asked = Some(own.clone());
            Ok(())
        }
    };
    match command {
        AdminCommand::Ls(a) => check(&mut a.system),
        AdminCommand::Log(a) => check(&mut a.system),
        AdminCommand::ConsoleLogin(a) => check(&mut a.system),
        other => Err(format!(
            "{} keys may run only ls, log and help; `{}` needs an admin key",
            who.role,
            command_name(other)
        )),
    }
}

fn command_name(c: &AdminCommand) -> &'static str {
    match c {
        AdminCommand::HostKey { .. } => "host-key",
        AdminCommand::System(_) => "system",
        AdminCommand::Key(_) => "key",
        AdminCommand::Gateway(_) => "gateway",
        AdminCommand::Expose(_) => "expose",
        AdminCommand::Ls(_) => "ls",
        AdminCommand::Invite(_) => "invite",
        AdminCommand::Device(_) => "device",
        AdminCommand::Log(_) => "log",
        AdminCommand::ConsoleLogin(_) => "console-login",
        AdminCommand::ConsoleLogout(_) => "console-logout",
        AdminCommand::Token(_) => "token",
    }
}

/// Splits a command line into words: spaces separate, and single or double
/// quotes keep spaces inside a word (ssh joins its arguments with spaces).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unbalanced quote in command".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_spaces_and_respect_quotes() {
        assert_eq!(
            split_words("log  --since '2026-11-26 10:00:00' --json").unwrap(),
            vec!["log", "--since", "2026-11-26 10:00:00", "--json"]
        );
        assert_eq!(split_words("a \"\" b").unwrap(), vec!["a", "", "b"]);
        assert!(split_words("ls 'oops").is_err());
        // What `shell_quote` makes of a quote inside a word.
        assert_eq!(split_words(r"'it'\''s'").unwrap(), vec!["it's"]);
    }
}
