//! `into_request`: what it refuses (with today's texts) and what it builds.

use clap::Parser;

use super::super::remote::{Remote, split_words};
use super::*;
use crate::admin::{ExposeRequest, GatewayRequest};

fn request(line: &str) -> Result<(Request, Format)> {
    let words = split_words(line).unwrap();
    Remote::try_parse_from(words)
        .unwrap()
        .command
        .into_request()
}

/// The whole error chain, as the adapters print it.
fn refused(line: &str) -> String {
    match request(line) {
        Ok((r, _)) => panic!("{line:?} was accepted as {r:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_names_are_refused_naming_the_value() {
    assert!(refused("system add Bad!").starts_with("system name: "));
    assert!(refused("device disable --system tau 'x y'").starts_with("device name: "));
    assert!(refused("device enable --system T dev1").starts_with("system name: "));
    assert!(refused("gateway show GW").starts_with("gateway name: "));
    assert!(refused("gateway rules gw --system OPS").starts_with("system name: "));
    assert!(
        refused("invite --system tau --role device --name 'a b'").starts_with("name: "),
        "{}",
        refused("invite --system tau --role device --name 'a b'")
    );
}

#[test]
fn invites_need_their_values_and_a_sane_ttl() {
    assert_eq!(
        refused("invite --system tau --name dev3"),
        "invite needs --system, --role and --name (or `invite ls`, `invite revoke ID`)"
    );
    assert_eq!(
        refused("invite --system tau --role device --name dev3 --ttl 8d"),
        "--ttl must be between 1s and 7days"
    );
    assert!(
        refused("invite --system tau --role device --name dev3 --ttl forever")
            .starts_with("--ttl \"forever\" (write it like \"1h\" or \"2d\"): ")
    );
    assert_eq!(
        refused("invite --system tau --role device --name dev3 --relay relay:x"),
        "relay address \"relay:x\": bad port"
    );
}

#[test]
fn log_ls_expose_and_gateway_values_are_checked() {
    assert_eq!(
        refused("log --limit 0"),
        format!(
            "--limit must be between 1 and {}",
            crate::protocol::limits::AUDIT_PAGE_MAX
        )
    );
    assert!(refused("log --since yesterday").starts_with("time \"yesterday\": expected RFC 3339"));
    assert_eq!(
        refused("ls --label gpu"),
        "label \"gpu\": expected KEY=VALUE"
    );
    let usage = "usage: expose DEVICE:PORT --system SYSTEM --port RELAY_PORT [--allow-from CIDR]…";
    assert_eq!(refused("expose dev1:22 --system tau"), usage);
    assert_eq!(
        refused("expose dev1 --system tau --port 4040"),
        format!("\"dev1\" is not DEVICE:PORT; {usage}")
    );
    assert_eq!(
        refused("expose dev1:0 --system tau --port 4040"),
        "\"0\" is not a device port (1-65535)"
    );
    assert!(
        refused("expose dev1:22 --system tau --port 4040 --allow-from nowhere")
            .starts_with("--allow-from: \"nowhere\" is not a CIDR")
    );
    assert_eq!(
        refused("gateway allow gw1 9100"),
        "\"9100\": a rule names a service as NAME:PORT (e.g. collector:9100)"
    );
    let bad_net = refused("gateway associate gw1 10.0.0.0/99");
    assert_eq!(
        bad_net,
        crate::protocol::Cidr::parse("10.0.0.0/99").unwrap_err()
    );
}

#[test]
fn requests_carry_checked_values_and_the_format() {
    let (r, f) = request("key revoke '  SHA256:abc  '").unwrap();
    assert!(matches!(r, Request::RevokeKey { ref fingerprint } if fingerprint == "SHA256:abc"));
    assert_eq!(f, Format::Text);
    let (r, f) = request("log --csv --kind login --limit 5").unwrap();
    assert!(
        matches!(&r, Request::Log { query } if query.limit == 5 && query.kind.as_deref() == Some("login"))
    );
    assert_eq!(f, Format::Csv);
    let (r, f) = request("ls --label gpu=a100 --json").unwrap();
    assert!(matches!(&r, Request::ListDevices { system: None, labels }
        if labels == &[("gpu".to_string(), "a100".to_string())]));
    assert_eq!(f, Format::Json);
    let (r, _) = request(
        "invite --system tau --role device --name dev3 --relay relay.example:2222 --ttl 1h",
    )
    .unwrap();
    assert!(
        matches!(&r, Request::CreateInvite { ttl, relay: Some(relay), .. }
        if ttl.as_secs() == 3600 && relay == "relay.example:2222")
    );
    let (r, _) = request("expose dev1:22 --system tau --port 4040 --allow-from 10.0.0.1").unwrap();
    assert!(
        matches!(&r, Request::Expose(ExposeRequest::Add { device, device_port: 22, port: 4040, allow_from })
        if device.to_string() == "tau/dev1" && allow_from == &["10.0.0.1".to_string()])
    );
    let (r, f) = request("gateway show gw1 --system ops --json").unwrap();
    assert!(matches!(&r, Request::Gateway(GatewayRequest::Show(g))
        if g.name.as_str() == "gw1" && g.system.as_ref().map(Name::as_str) == Some("ops")));
    assert_eq!(f, Format::Json);
    let (r, _) = request("gateway deny gw1 collector:9100").unwrap();
    assert!(matches!(&r, Request::Gateway(g) if g.writes()));
    let (r, _) = request("gateway rules gw1").unwrap();
    assert!(matches!(&r, Request::Gateway(g) if !g.writes()));
}
