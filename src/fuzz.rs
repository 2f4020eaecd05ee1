//! Entry points for fuzzing every parser of outside input: one function per
//! parser family, each taking arbitrary bytes and returning nothing. They
//! must never panic, whatever the input; a parser may only accept or refuse.
//!
//! Used by the cargo-fuzz targets in `fuzz-input/` (long runs) and by the
//! seeded smoke run in `tests/fuzz_smoke.rs` (every test run).

use std::collections::BTreeMap;

use crate::agent::config::AgentFile;
use crate::agent::gateway::GatewayConfig;
use crate::client::ClientFile;
use crate::protocol::device_info::{DeviceInfo, check_labels, parse_label};
use crate::protocol::token::Invite;
use crate::protocol::{AllowList, Cidr, Name, RelayAddress, cidr};
use crate::ssh::keys::parse_fingerprint;

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Invite tokens (`warren enroll TOKEN`, and the relay's `enroll` command).
/// Also decodes the bytes as the JSON inside a well-formed envelope, so
/// the fuzzer reaches the field checks, not only the base64 layer.
pub fn token(data: &[u8]) {
    let raw = text(data).into_owned();
    let wrapped = format!(
        "{}{}",
        crate::protocol::token::TOKEN_PREFIX,
        data_encoding::BASE64URL_NOPAD.encode(data)
    );
    for s in [raw, wrapped] {
        if let Ok(invite) = Invite::decode(&s) {
            let _ = RelayAddress::parse(&invite.relay);
            let _ = parse_fingerprint(&invite.host_key);
            // What decodes must encode and decode to the same invite.
            debug_assert_eq!(
                Invite::decode(&invite.encode()).ok().as_ref(),
                Some(&invite)
            );
        }
    }
}

/// System, device and key names, and the SSH user name at login.
pub fn name(data: &[u8]) {
    let s = text(data);
    if let Ok(n) = Name::parse(&s) {
        // An accepted name is its own canonical form.
        debug_assert_eq!(Name::parse(n.as_str()).ok().as_ref(), Some(&n));
    }
}

/// Agent allowlist targets (`22=127.0.0.1:22`), relay addresses and
/// host-key fingerprints.
pub fn target(data: &[u8]) {
    let s = text(data);
    let _ = crate::protocol::Target::parse(&s);
    let entries: Vec<&str> = s.split(',').collect();
    if let Ok(list) = AllowList::parse(&entries) {
        for p in list.ports() {
            let _ = list.target_for(u32::from(p));
        }
    }
    let _ = RelayAddress::parse(&s);
    let _ = parse_fingerprint(&s);
}

/// `HOST.via.GATEWAY` and CIDR networks, with containment checks on what
/// parses.
pub fn gateway(data: &[u8]) {
    let s = text(data);
    if let Some((host, gw)) = cidr::split_via(&s) {
        let _ = Name::parse(gw);
        let _ = host.parse::<std::net::IpAddr>();
    }
    let parts: Vec<&str> = s.split([',', ' ']).collect();
    if let Ok(nets) = cidr::parse_list(&parts) {
        for a in &nets {
            let _ = a.first_host();
            for b in &nets {
                let _ = a.covers(b);
                let _ = a.contains(b.first_host());
            }
        }
    }
    let _ = Cidr::parse(&s);
}

/// Device info and labels (`device-info …` from an agent, `--label K=V`).
pub fn labels(data: &[u8]) {
    let s = text(data);
    let words: Vec<&str> = s.split_whitespace().collect();
    let _ = DeviceInfo::parse(&words);
    let mut labels = BTreeMap::new();
    for w in &words {
        if let Ok((k, v)) = parse_label(w) {
            labels.insert(k, v);
        }
    }
    let _ = check_labels(&labels);
}

/// Agent and client configuration files, validated as far as they can be
/// without reading a key file.
pub fn config(data: &[u8]) {
    let s = text(data);
    if let Ok(file) = toml::from_str::<AgentFile>(&s) {
        let _ = Name::parse(&file.system);
        let _ = Name::parse(&file.name);
        let _ = RelayAddress::parse(&file.relay);
        let _ = parse_fingerprint(&file.relay_host_key);
        if let Some(allow) = &file.allow {
            let _ = AllowList::parse(allow);
        }
        if let Some(t) = &file.keepalive_timeout {
            let _ = humantime::parse_duration(t);
        }
        if let Some(l) = &file.labels {
            let _ = check_labels(l);
        }
        let _ = GatewayConfig::from_file(
            file.scope.as_deref(),
            file.scope_ports.as_deref(),
            file.permit.as_deref(),
            &file.listen,
        );
    }
    if let Ok(file) = toml::from_str::<ClientFile>(&s) {
        if let Some(r) = &file.relay {
            let _ = RelayAddress::parse(r);
        }
        if let Some(fp) = &file.relay_host_key {
            let _ = parse_fingerprint(fp);
        }
    }
}

/// Host ranges (`node[01-10]`), as `warren ls`/`ssh-config` take them.
pub fn hostlist(data: &[u8]) {
    if let Ok(names) = crate::client::hostlist::expand(&text(data)) {
        debug_assert!(names.len() <= crate::client::hostlist::MAX_EXPANSION);
    }
}

/// A SOCKS5 client's greeting, authentication and request, fed to the
/// local SOCKS server's handshake (with and without a password), and
/// `--auth USER:PASSWORD` and the relay's public port ranges.
pub fn socks(data: &[u8]) {
    use crate::client::socks::{Credentials, handshake};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let creds = Credentials::parse("user:secret").ok();
    for auth in [None, creds.as_ref()] {
        let mut stream = tokio::io::join(data, tokio::io::sink());
        let _ = rt.block_on(handshake(&mut stream, auth));
    }
    let s = text(data);
    let _ = Credentials::parse(&s);
    let items: Vec<&str> = s.split(',').collect();
    let _ = crate::relay::config::PortRanges::parse(&items);
}

/// Direct paths: a UDP discovery request as the relay reads it (from
/// anyone) and a reply as a client reads it, a signalling line as the
/// relay and both ends parse it, and a direct stream's header.
pub fn p2p(data: &[u8]) {
    use crate::p2p::{discovery, signal};
    let from = std::net::SocketAddr::from(([198, 51, 100, 1], 40000));
    if let Some(reply) = discovery::answer(data, from, 7) {
        // Never an amplifier: no reply is larger than its request.
        debug_assert!(reply.len() <= data.len());
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&data[6..18]);
        debug_assert_eq!(
            discovery::parse_reply(&reply, &txid).map(|r| r.seen),
            Some(from)
        );
    }
    if data.len() >= 18 {
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&data[6..18]);
        let _ = discovery::parse_reply(data, &txid);
    }
    let _ = signal::Signal::parse(data);
    let _ = signal::parse_session(&text(data));
    let _ = serde_json::from_slice::<signal::Header>(data);
}

/// Every entry point, for a target that spreads one input over all.
/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// MQTT: commands on a device's `cmd` topic, state reports, topics and
/// broker addresses (on-demand devices).
pub fn mqtt(data: &[u8]) {
    use crate::mqtt::{BrokerUrl, Command, Report, Topics};
    if let Ok(c) = Command::parse(data) {
        // An accepted command survives its own encoding.
        debug_assert_eq!(Command::parse(c.to_json().as_bytes()).ok(), Some(c));
    }
    if let Ok(r) = Report::parse(data) {
        debug_assert_eq!(Report::parse(r.to_json().as_bytes()).ok(), Some(r));
    }
    let s = text(data);
    let _ = Topics::default().parse_state(&s);
    let _ = Topics::new(&s);
    let _ = BrokerUrl::parse(&s);
}

pub const ALL: &[(&str, Target)] = &[
    ("token", token),
    ("name", name),
    ("target", target),
    ("gateway", gateway),
    ("labels", labels),
    ("config", config),
    ("hostlist", hostlist),
    ("socks", socks),
    ("mqtt", mqtt),
    ("p2p", p2p),
];
