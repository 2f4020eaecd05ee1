//! Commands run over the relay's SSH port: `ssh -p 2222 tau@relay ls`.
//!
//! A thin adapter over [`crate::admin`]: split the line into words, parse
//! the `warren admin` grammar, turn it into a typed request, check who may
//! run it ([`admin::check_remote`]; a refused command is audited with its
//! reason code), run, commit (the audit record is durable before the caller
//! hears of success), render.

use std::net::SocketAddr;

use clap::Parser;

use super::Relay;
use crate::admin::remote::{HELP, Remote, may_run, may_run_commands, split_words};
use crate::admin::{self, Caller};
use crate::audit::{self, Event, kind};
use crate::policy::CommandRefusal;
use crate::ssh::server::ExecOutput;
use crate::store::Identity;

pub(super) async fn run(
    relay: &Relay,
    who: &Identity,
    peer: SocketAddr,
    command: &str,
) -> ExecOutput {
    if let Err(refusal) = may_run_commands(who) {
        return ExecOutput::fail(1, format!("{refusal}\n"));
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
    let command = match Remote::try_parse_from(&words) {
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
    // A command the key may not run is refused as such, whatever its values.
    if let Err(refusal) = may_run(who, command.name()) {
        return refuse(relay, who, peer, &words, refusal).await;
    }
    let (mut request, format) = match command.into_request() {
        Ok(r) => r,
        Err(e) => return ExecOutput::fail(1, format!("{e:#}\n")),
    };
    if let Err(refusal) = admin::check_remote(who, &mut request) {
        return refuse(relay, who, peer, &words, refusal).await;
    }
    let caller = Caller::Remote {
        live: relay,
        who,
        peer,
    };
    let outcome = match admin::run(relay.store(), &caller, request).await {
        Ok(outcome) => outcome,
        Err(e) => return ExecOutput::fail(1, format!("{e:#}\n")),
    };
    if let Err(e) = admin::commit(relay.store(), &caller, &outcome).await {
        return ExecOutput::fail(1, format!("{e:#}\n"));
    }
    match admin::render(&outcome.reply, format) {
        Ok(text) => ExecOutput {
            stdout: text.out.into_bytes(),
            stderr: text.err.into_bytes(),
            status: 0,
        },
        Err(e) => ExecOutput::fail(1, format!("{e:#}\n")),
    }
}

/// A command `who` may not run: audited with its reason code, and the
/// record is on disk before the caller hears of it.
async fn refuse(
    relay: &Relay,
    who: &Identity,
    peer: SocketAddr,
    words: &[String],
    refusal: CommandRefusal,
) -> ExecOutput {
    relay.audit().record(
        Event::new(kind::COMMAND, audit::REFUSED)
            .peer(peer)
            .system(who.system.as_str())
            .key(who.name.as_str(), who.fingerprint.as_str())
            .reason(refusal.code())
            .detail(format!("{refusal}: {}", words.join(" "))),
    );
    let _ = relay.audit().flush().await;
    ExecOutput::fail(1, format!("{refusal}\n"))
}
