//! The access commands: their checked values, their text and JSON, and who
//! may run them over SSH.

use clap::Parser;

use super::*;
use crate::admin::remote::{Remote, check_remote, split_words};
use crate::admin::render;
use crate::policy::CommandRefusal;
use crate::store::Identity;

fn request(line: &str) -> Result<(Request, Format)> {
    Remote::try_parse_from(split_words(line).unwrap())
        .unwrap()
        .command
        .into_request()
}

fn refused(line: &str) -> String {
    match request(line) {
        Ok((r, _)) => panic!("{line:?} was accepted as {r:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn credential(revoked: Option<u64>) -> Credential {
    Credential {
        id: "tok1".into(),
        kind: CredKind::Token,
        system: Some("tau".into()),
        role: Role::Admin,
        who: "robot".into(),
        created: 1_000_000_000,
        expires: 1_000_086_400,
        used: None,
        revoked,
    }
}

fn text(reply: &Reply) -> String {
    render(reply, Format::Text).unwrap().out
}

fn json(reply: &Reply) -> serde_json::Value {
    let value = serde_json::from_str(&render(reply, Format::Json).unwrap().out).unwrap();
    assert_eq!(crate::admin::json_value(reply).unwrap(), value, "{reply:?}");
    value
}

#[test]
fn token_create_checks_its_values() {
    assert_eq!(
        refused("token create --system tau --role device"),
        "--role must be controller or admin"
    );
    assert_eq!(
        refused("token create --system tau --role admin --ttl 400d"),
        "--ttl must be between 1m and 366d"
    );
    assert!(
        refused("token create --system tau --role admin --name 'a b'").starts_with("token name: ")
    );
    assert!(refused("token create --system T --role admin").starts_with("system name: "));
    let (r, f) = request("token create --system tau --role controller --ttl 12h --json").unwrap();
    assert_eq!(f, Format::Json);
    match r {
        Request::Token(TokenRequest::Create {
            system,
            role,
            ttl,
            name,
        }) => {
            assert_eq!(
                (system.as_str(), role, name.as_str()),
                ("tau", Role::Controller, "api")
            );
            assert_eq!(ttl, Duration::from_secs(12 * 3600));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        request(" token revoke ' tok1 '").unwrap().0,
        Request::Token(TokenRequest::Revoke { id }) if id == "tok1"
    ));
    assert!(refused("console-login --system 'no way'").starts_with("system name: "));
}

#[test]
fn replies_render_as_before_typed_replies() {
    let link = Reply::ConsoleLogin(LoginLink {
        url: "http://127.0.0.1:8080/login/abc.def".into(),
        expires: 1_000_000_300,
        system: Some("tau".into()),
        role: Role::Controller,
    });
    assert_eq!(
        text(&link),
        "http://127.0.0.1:8080/login/abc.def\n(works once, for 5 minutes)\n"
    );
    assert_eq!(
        json(&link),
        serde_json::json!({"url": "http://127.0.0.1:8080/login/abc.def",
            "expires": 1_000_000_300u64, "system": "tau", "role": "controller"})
    );
    let ended = Reply::SessionsEnded { count: 3 };
    assert_eq!(
        text(&ended),
        "ended 3 console session(s) and login link(s)\n"
    );
    assert_eq!(
        json(&ended),
        serde_json::json!({"kind": "sessions_ended", "data": {"count": 3}})
    );
    let made = Reply::TokenMade(TokenMade {
        token: "tok1.secret".into(),
        record: credential(None),
    });
    assert_eq!(text(&made), "tok1.secret\n");
    let v = json(&made);
    assert_eq!(
        (v["token"].as_str(), v["id"].as_str()),
        (Some("tok1.secret"), Some("tok1"))
    );
    let list = Reply::Tokens(vec![credential(Some(1_000_000_001))]);
    let table = text(&list);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("revoked"), "{table}");
    assert!(!json(&list).to_string().contains("secret"));
    assert_eq!(
        text(&Reply::TokenRevoked(credential(Some(1)))),
        "revoked token tok1\n"
    );
}

#[test]
fn a_controller_gets_console_login_for_its_own_system_only() {
    let alice = Identity {
        system: Name::parse("tau").unwrap(),
        role: Role::Controller,
        name: Name::parse("alice").unwrap(),
        fingerprint: "SHA256:x".into(),
    };
    let mut own = request("console-login").unwrap().0;
    assert_eq!(check_remote(&alice, &mut own), Ok(()));
    assert!(matches!(&own, Request::ConsoleLogin { system } if system.as_deref() == Some("tau")));
    let mut other = request("console-login --system beta").unwrap().0;
    let refusal = check_remote(&alice, &mut other).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "a controller key sees only its own system (tau), not beta"
    );
    for (line, word) in [
        ("token ls", "token"),
        ("console-logout --all", "console-logout"),
    ] {
        assert_eq!(
            check_remote(&alice, &mut request(line).unwrap().0),
            Err(CommandRefusal::NeedsAdmin {
                role: Role::Controller,
                command: word
            })
        );
    }
}
