//! Access to the web console and the HTTP API: one-time console login
//! links (`console-login`), ending sessions (`console-logout --all`), and
//! bearer tokens for programs (`token create|ls|revoke`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::audit::{self, Event, kind};
use crate::protocol::{Name, Role};
use crate::render::json_text;
use crate::store::Store;
use crate::store::credentials::{CredKind, Credential, NewCredential};

/// Relay setting: the console's base URL, which the relay writes when it
/// serves the console.
pub const CONSOLE_URL_SETTING: &str = "console_url";

/// How long a one-time login link works: long enough to paste it into a
/// browser, short enough that one left in a terminal's scrollback is dead.
pub const LOGIN_TTL: Duration = Duration::from_secs(5 * 60);

/// The longest a token may live: a year; programs get a new one.
pub const TOKEN_MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Clone, Args)]
pub struct ConsoleLoginArgs {
    /// Only this system (a controller's login always sees only its own).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ConsoleLogoutArgs {
    /// End every console session (and unused login link).
    #[arg(long, required = true)]
    pub all: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Make a bearer token for the HTTP API (printed once).
    Create {
        #[arg(long)]
        system: String,
        /// controller (reads its system) or admin (may change it).
        #[arg(long, value_enum)]
        role: Role,
        /// How long it works ("30d", "12h"; at most 366d).
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// Who the token is for, as the audit log names it.
        #[arg(long, default_value = "api")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

/// Who asks for a login link or a token.
pub struct Asker<'a> {
    /// `None`: a local admin (every system).
    pub system: Option<&'a str>,
    pub role: Role,
    /// As the audit log names them.
    pub who: &'a str,
}

/// What an access command printed and the audit events it caused.
pub struct Done {
    pub out: String,
    pub events: Vec<Event>,
}

/// `console-login`: a one-time URL valid [`LOGIN_TTL`].
pub fn console_login(store: &Store, asker: &Asker<'_>, a: &ConsoleLoginArgs) -> Result<Done> {
    let system = match (asker.system, a.system.as_deref()) {
        (Some(own), Some(s)) if s != own => {
            bail!("a controller key sees only its own system ({own}), not {s}")
        }
        (Some(own), _) => Some(own.to_string()),
        (None, Some(s)) => Some(Name::parse(s).context("system name")?.to_string()),
        (None, None) => None,
    };
    let Some(base) = store.setting(CONSOLE_URL_SETTING)? else {
        bail!(
            "the relay serves no console: start it with --http ADDR (and --console-url URL if browsers reach it through a proxy)"
        );
    };
    let link = store.issue_credential(&NewCredential {
        kind: CredKind::Login,
        system: system.as_deref(),
        role: asker.role,
        who: asker.who,
        now: crate::store::now(),
        ttl_secs: LOGIN_TTL.as_secs(),
    })?;
    let url = format!("{base}login/{}", link.secret);
    let mut e = Event::new(kind::CONSOLE_LOGIN, audit::OK)
        .key_name(asker.who)
        .detail(format!(
            "{} login link {} made, valid 5 minutes",
            asker.role, link.record.id
        ));
    e.system = system.clone();
    let out = if a.json {
        #[derive(Serialize)]
        struct Link<'a> {
            url: &'a str,
            expires: u64,
            system: Option<&'a str>,
            role: Role,
        }
        json_text(&Link {
            url: &url,
            expires: link.record.expires,
            system: system.as_deref(),
            role: asker.role,
        })?
    } else {
        format!("{url}\n(works once, for 5 minutes)\n")
    };
    Ok(Done {
        out,
        events: vec![e],
    })
}

/// `console-logout --all`.
pub fn console_logout(store: &Store) -> Result<Done> {
    let n = store.revoke_sessions(crate::store::now())?;
    Ok(Done {
        out: format!("ended {n} console session(s) and login link(s)\n"),
        events: vec![
            Event::new(kind::CONSOLE_LOGOUT, audit::OK)
                .detail(format!("all console sessions ended ({n})")),
        ],
    })
}

/// `token create|ls|revoke`.
pub fn token(store: &Store, command: &TokenCommand) -> Result<Done> {
    match command {
        TokenCommand::Create {
            system,
            role,
            ttl,
            name,
            json,
        } => {
            let system = Name::parse(system).context("system name")?;
            let name = Name::parse(name).context("token name")?;
            if !matches!(role, Role::Controller | Role::Admin) {
                bail!("--role must be controller or admin");
            }
            let ttl = humantime::parse_duration(ttl)
                .with_context(|| format!("--ttl {ttl:?} (write it like \"30d\" or \"12h\")"))?;
            if ttl < Duration::from_secs(60) || ttl > TOKEN_MAX_TTL {
                bail!("--ttl must be between 1m and 366d");
            }
            if !store.systems()?.iter().any(|s| s == system.as_str()) {
                bail!("no system {system} (add it with `system add {system}`)");
            }
            let t = store.issue_credential(&NewCredential {
                kind: CredKind::Token,
                system: Some(system.as_str()),
                role: *role,
                who: name.as_str(),
                now: crate::store::now(),
                ttl_secs: ttl.as_secs(),
            })?;
            let e = Event::new(kind::TOKEN_CREATE, audit::OK)
                .system(system.as_str())
                .detail(format!(
                    "{role} token {} for {name}, expires in {}",
                    t.record.id,
                    humantime::format_duration(ttl)
                ));
            let out = if *json {
                #[derive(Serialize)]
                struct Made<'a> {
                    token: &'a str,
                    #[serde(flatten)]
                    record: &'a Credential,
                }
                json_text(&Made {
                    token: &t.secret,
                    record: &t.record,
                })?
            } else {
                format!("{}\n", t.secret)
            };
            Ok(Done {
                out,
                events: vec![e],
            })
        }
        TokenCommand::Ls { json } => {
            let tokens = store.credentials(CredKind::Token)?;
            let out = if *json {
                json_text(&tokens)?
            } else {
                render_tokens(&tokens)
            };
            Ok(Done {
                out,
                events: Vec::new(),
            })
        }
        TokenCommand::Revoke { id } => {
            let t = store.revoke_credential(CredKind::Token, id.trim(), crate::store::now())?;
            let mut e = Event::new(kind::TOKEN_REVOKE, audit::OK)
                .detail(format!("{} token {} for {}", t.role, t.id, t.who));
            e.system = t.system.clone();
            Ok(Done {
                out: format!("revoked token {}\n", t.id),
                events: vec![e],
            })
        }
    }
}

fn render_tokens(tokens: &[Credential]) -> String {
    let mut rows = vec![
        ["ID", "SYSTEM", "ROLE", "NAME", "STATUS", "EXPIRES"]
            .map(String::from)
            .to_vec(),
    ];
    let now = crate::store::now();
    for t in tokens {
        let status = match t.revoked {
            Some(_) => "revoked",
            None if t.expires <= now => "expired",
            None => "active",
        };
        rows.push(vec![
            t.id.clone(),
            t.system.clone().unwrap_or_else(|| "*".into()),
            t.role.to_string(),
            t.who.clone(),
            status.into(),
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(t.expires),
            )
            .to_string(),
        ]);
    }
    crate::render::table(&rows)
}
