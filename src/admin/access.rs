//! Access to the web console and the HTTP API: one-time console login
//! links (`console-login`), ending sessions (`console-logout --all`), and
//! bearer tokens for programs (`token create|ls|revoke`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Format, Outcome, Reply, Request};
use crate::audit::{self, Event, kind};
use crate::protocol::{Name, Role};
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

/// `token create|ls|revoke`, its values checked.
#[derive(Debug)]
pub enum TokenRequest {
    Create {
        system: Name,
        role: Role,
        ttl: Duration,
        name: Name,
    },
    List,
    Revoke {
        /// Trimmed.
        id: String,
    },
}

impl ConsoleLoginArgs {
    pub(super) fn into_request(self) -> Result<(Request, Format)> {
        let system = self
            .system
            .map(|s| Name::parse(&s).map(|n| n.to_string()))
            .transpose()
            .context("system name")?;
        Ok((Request::ConsoleLogin { system }, Format::json_if(self.json)))
    }
}

impl TokenCommand {
    pub(super) fn into_request(self) -> Result<(Request, Format)> {
        let (request, format) = match self {
            TokenCommand::Create {
                system,
                role,
                ttl,
                name,
                json,
            } => {
                let system = Name::parse(&system).context("system name")?;
                let name = Name::parse(&name).context("token name")?;
                if !matches!(role, Role::Controller | Role::Admin) {
                    bail!("--role must be controller or admin");
                }
                let ttl = humantime::parse_duration(&ttl)
                    .with_context(|| format!("--ttl {ttl:?} (write it like \"30d\" or \"12h\")"))?;
                if ttl < Duration::from_secs(60) || ttl > TOKEN_MAX_TTL {
                    bail!("--ttl must be between 1m and 366d");
                }
                let create = TokenRequest::Create {
                    system,
                    role,
                    ttl,
                    name,
                };
                (create, Format::json_if(json))
            }
            TokenCommand::Ls { json } => (TokenRequest::List, Format::json_if(json)),
            TokenCommand::Revoke { id } => (
                TokenRequest::Revoke {
                    id: id.trim().to_string(),
                },
                Format::Text,
            ),
        };
        Ok((Request::Token(request), format))
    }
}

/// Who asks for a login link or a token.
pub struct Asker<'a> {
    /// `None`: a local admin (every system).
    pub system: Option<&'a str>,
    pub role: Role,
    /// As the audit log names them.
    pub who: &'a str,
}

/// A one-time console login link.
#[derive(Debug, Clone, Serialize)]
pub struct LoginLink {
    pub url: String,
    pub expires: u64,
    pub system: Option<String>,
    pub role: Role,
}

/// A new API token: its secret (shown this once) and its record.
#[derive(Debug, Clone, Serialize)]
pub struct TokenMade {
    pub token: String,
    #[serde(flatten)]
    pub record: Credential,
}

/// Runs `console-login`, `console-logout` or `token` for `asker`.
pub fn run(store: &Store, asker: &Asker<'_>, request: Request) -> Result<Outcome> {
    match request {
        Request::ConsoleLogin { system } => console_login(store, asker, system.as_deref()),
        Request::ConsoleLogout => console_logout(store),
        Request::Token(t) => token(store, t),
        _ => bail!("not an access request"),
    }
}

/// `console-login`: a one-time URL valid [`LOGIN_TTL`], for `system` only
/// when given (a controller's is always its own).
pub fn console_login(store: &Store, asker: &Asker<'_>, system: Option<&str>) -> Result<Outcome> {
    let system = match (asker.system, system) {
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
    let mut e = Event::new(kind::CONSOLE_LOGIN, audit::OK)
        .key_name(asker.who)
        .detail(format!(
            "{} login link {} made, valid 5 minutes",
            asker.role, link.record.id
        ));
    e.system = system.clone();
    Ok(Outcome {
        reply: Reply::ConsoleLogin(LoginLink {
            url: format!("{base}login/{}", link.secret),
            expires: link.record.expires,
            system,
            role: asker.role,
        }),
        events: vec![e],
        change: None,
    })
}

/// `console-logout --all`.
pub fn console_logout(store: &Store) -> Result<Outcome> {
    let n = store.revoke_sessions(crate::store::now())?;
    Ok(Outcome {
        reply: Reply::SessionsEnded { count: n as u64 },
        events: vec![
            Event::new(kind::CONSOLE_LOGOUT, audit::OK)
                .detail(format!("all console sessions ended ({n})")),
        ],
        change: None,
    })
}

/// `token create|ls|revoke`.
fn token(store: &Store, request: TokenRequest) -> Result<Outcome> {
    match request {
        TokenRequest::Create {
            system,
            role,
            ttl,
            name,
        } => {
            if !store.systems()?.iter().any(|s| s == system.as_str()) {
                bail!("no system {system} (add it with `system add {system}`)");
            }
            let t = store.issue_credential(&NewCredential {
                kind: CredKind::Token,
                system: Some(system.as_str()),
                role,
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
            Ok(Outcome {
                reply: Reply::TokenMade(TokenMade {
                    token: t.secret,
                    record: t.record,
                }),
                events: vec![e],
                change: None,
            })
        }
        TokenRequest::List => Ok(Outcome::read(Reply::Tokens(
            store.credentials(CredKind::Token)?,
        ))),
        TokenRequest::Revoke { id } => {
            let t = store.revoke_credential(CredKind::Token, &id, crate::store::now())?;
            let mut e = Event::new(kind::TOKEN_REVOKE, audit::OK)
                .detail(format!("{} token {} for {}", t.role, t.id, t.who));
            e.system = t.system.clone();
            Ok(Outcome {
                reply: Reply::TokenRevoked(t),
                events: vec![e],
                change: None,
            })
        }
    }
}

/// The text of the access replies (and of none other).
pub(super) fn render_text(reply: &Reply) -> String {
    match reply {
        Reply::ConsoleLogin(link) => format!("{}\n(works once, for 5 minutes)\n", link.url),
        Reply::SessionsEnded { count } => {
            format!("ended {count} console session(s) and login link(s)\n")
        }
        Reply::TokenMade(t) => format!("{}\n", t.token),
        Reply::Tokens(tokens) => render_tokens(tokens),
        Reply::TokenRevoked(t) => format!("revoked token {}\n", t.id),
        _ => String::new(),
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

#[cfg(test)]
mod tests;
