//! Admin commands over the relay's SSH port (`ssh -p 2222 tau@relay ls`):
//! the command line (the `warren admin` grammar without `--data`, split into
//! words as a shell would) and who may run what. Admin keys run every
//! command, for every system; controllers run `ls`, `log` and `console-login` of their own
//! system only; device keys run none.

use clap::Parser;

use super::wake::WakeOp;
use super::{AdminCommand, Request};
use crate::policy::CommandRefusal;
use crate::protocol::Role;
use crate::store::Identity;

pub const HELP: &str = "\
This is a Warren relay; it has no shell. Commands:
  ls [--label K=V] [--json]     devices of your system: status, since, last seen, address, labels
  log [--device D] [--key K] [--kind K] [--since T] [--until T] [--before ID] [--json|--csv]
                                the audit log of your system, newest first, 20 per page
  wake DEVICE [--json]          wake an on-demand device (over the relay's MQTT broker); waits until online
  sleep DEVICE [--json]         put an on-demand device to sleep
  console-login                 a one-time URL (5 minutes) for the web console, read-only
                                for controller keys
  help                          this text
Admin keys may also run every `warren admin` command, e.g.
  invite --system tau --role device --name dev3 [--ttl 1h]
  invite ls | invite revoke ID | key ls | key revoke FP
  device disable --system tau dev1 | device enable --system tau dev1
  device label --system tau dev1 site=lab9 [--remove gpu] [--reset room]
  system set tau --rate 10M | device set --system tau dev1 --rate 1M | … --rate none
Reach a device with: ssh -J SYSTEM@RELAY:PORT USER@DEVICE
";

/// The remote command line: the `warren admin` grammar without `--data`.
#[derive(Debug, Parser)]
#[command(name = "ssh relay", no_binary_name = true, disable_version_flag = true)]
pub struct Remote {
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Splits a command line into words: spaces separate, and single or double
/// quotes keep spaces inside a word (ssh joins its arguments with spaces).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    shlex::split(line).ok_or_else(|| "unbalanced quote in command".to_string())
}

/// Whether the key may run commands at all (device keys may not).
pub fn may_run_commands(who: &Identity) -> Result<(), CommandRefusal> {
    if who.role.may_open_streams() {
        Ok(())
    } else {
        Err(CommandRefusal::CannotRunCommands { role: who.role })
    }
}

/// Whether `who` may run the command `command` (its first word) at all:
/// admin keys every one, controllers `ls`, `log` and `console-login`. Checked before the
/// command's values, so a refused command is refused as such whatever
/// they are.
pub fn may_run(who: &Identity, command: &'static str) -> Result<(), CommandRefusal> {
    may_run_commands(who)?;
    if who.role == Role::Admin
        || matches!(command, "ls" | "log" | "wake" | "sleep" | "console-login")
    {
        return Ok(());
    }
    Err(CommandRefusal::NeedsAdmin {
        role: who.role,
        command,
    })
}

/// Whether `who` may run `request` remotely ([`may_run`]). A controller's
/// `ls` and `log` are limited to its own system (the system is filled in).
pub fn check_remote(who: &Identity, request: &mut Request) -> Result<(), CommandRefusal> {
    may_run(who, command_name(request))?;
    if who.role == Role::Admin {
        return Ok(());
    }
    let check = |asked: &mut Option<String>| match asked {
        Some(s) if *s != who.system.as_str() => Err(CommandRefusal::OtherSystem {
            own: who.system.clone(),
            asked: s.clone(),
        }),
        _ => {
            *asked = Some(who.system.to_string());
            Ok(())
        }
    };
    match request {
        Request::ListDevices { system, .. } => check(system),
        Request::Log { query } => check(&mut query.system),
        Request::Wake { system, .. } => check(system),
        Request::ConsoleLogin { system } => check(system),
        // `may_run` let only these (and `ls`, `log`) through.
        _ => Ok(()),
    }
}

/// The command's first word, as the refusal names it.
fn command_name(r: &Request) -> &'static str {
    match r {
        Request::HostKey => "host-key",
        Request::AddSystem { .. } | Request::ListSystems => "system",
        Request::SetRate { device: None, .. } => "system",
        Request::SetRate {
            device: Some(_), ..
        } => "device",
        Request::AddKey { .. } | Request::ListKeys | Request::RevokeKey { .. } => "key",
        Request::Gateway(_) => "gateway",
        Request::Expose(_) => "expose",
        Request::ListDevices { .. } => "ls",
        Request::CreateInvite { .. } | Request::ListInvites | Request::RevokeInvite { .. } => {
            "invite"
        }
        Request::SetDisabled { .. } | Request::SetLabels { .. } => "device",
        Request::Log { .. } => "log",
        Request::Wake { op, .. } => match op {
            WakeOp::Wake => "wake",
            WakeOp::Sleep => "sleep",
        },
        Request::ConsoleLogin { .. } => "console-login",
        Request::ConsoleLogout => "console-logout",
        Request::Token(_) => "token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Name;

    fn who(role: Role) -> Identity {
        Identity {
            system: Name::parse("tau").unwrap(),
            role,
            name: Name::parse("alice").unwrap(),
            fingerprint: "SHA256:x".into(),
        }
    }

    fn parse(line: &str) -> Request {
        let command: AdminCommand = Remote::try_parse_from(split_words(line).unwrap())
            .unwrap()
            .command;
        command.into_request().unwrap().0
    }

    #[test]
    fn a_controller_wakes_and_puts_to_sleep_devices_of_its_own_system_only() {
        let alice = who(Role::Controller);
        let mut wake = parse("wake dev1 --json");
        assert_eq!(check_remote(&alice, &mut wake), Ok(()));
        assert!(matches!(
            &wake,
            Request::Wake { op: WakeOp::Wake, system, device }
                if system.as_deref() == Some("tau") && device.as_str() == "dev1"
        ));
        let refused = check_remote(&alice, &mut parse("sleep --system ops dev1")).unwrap_err();
        assert_eq!(refused.code(), "other_system");
        assert!(check_remote(&who(Role::Device), &mut parse("wake dev1")).is_err());
    }

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

    #[test]
    fn a_controller_runs_ls_and_log_of_its_own_system_only() {
        let alice = who(Role::Controller);
        let mut ls = parse("ls");
        assert_eq!(check_remote(&alice, &mut ls), Ok(()));
        assert!(
            matches!(&ls, Request::ListDevices { system, .. } if system.as_deref() == Some("tau"))
        );
        let mut other = parse("log --system ops");
        let refused = check_remote(&alice, &mut other).unwrap_err();
        assert!(
            matches!(&refused, CommandRefusal::OtherSystem { asked, .. } if asked == "ops"),
            "{refused:?}"
        );
        assert_eq!(refused.code(), "other_system");
        let refused = check_remote(&alice, &mut parse("key ls")).unwrap_err();
        assert_eq!(
            refused,
            CommandRefusal::NeedsAdmin {
                role: Role::Controller,
                command: "key"
            }
        );
        assert_eq!(
            refused.to_string(),
            "controller keys may run only ls, log and help; `key` needs an admin key"
        );
    }

    #[test]
    fn a_controller_is_refused_by_command_before_its_values_are_read() {
        let alice = who(Role::Controller);
        let command = Remote::try_parse_from(["invite", "--system", "NOT A NAME"])
            .unwrap()
            .command;
        assert!(command.into_request().is_err(), "the values are bad");
        let command = Remote::try_parse_from(["invite", "--system", "NOT A NAME"])
            .unwrap()
            .command;
        assert_eq!(
            may_run(&alice, command.name()),
            Err(CommandRefusal::NeedsAdmin {
                role: Role::Controller,
                command: "invite"
            })
        );
        assert_eq!(may_run(&alice, "log"), Ok(()));
        assert_eq!(may_run(&who(Role::Admin), "invite"), Ok(()));
    }

    #[test]
    fn an_admin_runs_everything_and_a_device_nothing() {
        let mut cmd = parse("gateway ls --system ops");
        assert_eq!(check_remote(&who(Role::Admin), &mut cmd), Ok(()));
        assert!(matches!(
            check_remote(&who(Role::Device), &mut parse("ls")),
            Err(CommandRefusal::CannotRunCommands { role: Role::Device })
        ));
    }
}
