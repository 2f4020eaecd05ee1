//! Device status as people and scripts read it (`ls`, `ls --json`).

use std::collections::BTreeMap;

use super::live::{LiveDevice, LiveRelay};
use crate::protocol::Name;
use crate::render::{table, when};
pub use crate::store::DeviceStatus;
use crate::store::{self, Store};

/// Lists devices of `system` (or all): the store's view, with the online
/// state of a running relay laid over it when there is one.
pub async fn list(
    store: &Store,
    live: Option<&dyn LiveRelay>,
    system: Option<String>,
) -> anyhow::Result<Vec<DeviceStatus>> {
    let name = match (live, &system) {
        (Some(_), Some(s)) => Some(Name::parse(s)?),
        _ => None,
    };
    let (records, gws, sleepers, rates) = store
        .call(move |s| {
            Ok((
                s.devices(system.as_deref())?,
                s.gateways(system.as_deref())?,
                s.on_demand_devices(system.as_deref())?,
                s.rates()?,
            ))
        })
        .await?;
    let mut out = match live {
        Some(live) => overlay(records, live.online(name.as_ref())),
        None => records,
    };
    add_scopes(&mut out, &gws);
    add_rates(&mut out, &rates);
    add_on_demand(&mut out, sleepers, |s, n| {
        let (Some(live), Ok(s), Ok(n)) = (live, Name::parse(s), Name::parse(n)) else {
            return false;
        };
        live.waking(&crate::protocol::DeviceId::new(s, n))
    });
    Ok(out)
}

/// Lays on-demand devices' reports over the list and sets each STATUS.
pub fn add_on_demand(
    devices: &mut [DeviceStatus],
    records: Vec<store::OnDemandRecord>,
    waking: impl Fn(&str, &str) -> bool,
) {
    for r in records {
        let Some(d) = devices
            .iter_mut()
            .find(|d| d.system == r.system && d.name == r.name)
        else {
            continue;
        };
        if !d.online {
            d.status = if waking(&r.system, &r.name) {
                "waking"
            } else if r.state.as_deref() == Some("offline") {
                // Its MQTT session ended (the last will): it cannot be woken.
                "offline"
            } else {
                "asleep"
            }
            .into();
        }
        d.on_demand = Some(store::OnDemandInfo {
            state: r.state,
            reason: r.reason,
            at: r.at,
        });
    }
}

/// The store's records with the registry's online devices laid over them.
/// The registry is the truth about "now": a device the store still has
/// online but the registry has not is offline (its status write is queued).
fn overlay(records: Vec<DeviceStatus>, live: Vec<LiveDevice>) -> Vec<DeviceStatus> {
    let mut out: Vec<DeviceStatus> = records
        .into_iter()
        .map(|mut d| {
            d.online = false;
            d.status = "offline".into();
            d.streams = 0;
            d
        })
        .collect();
    for l in live {
        let now = DeviceStatus {
            system: l.device.system.to_string(),
            name: l.device.name.to_string(),
            online: true,
            since: Some(l.since),
            last_seen: Some(store::now()),
            address: Some(l.peer.to_string()),
            ports: l.ports,
            version: None,
            labels: BTreeMap::new(),
            streams: l.streams,
            disabled: l.disabled,
            scope: Vec::new(),
            status: "online".into(),
            on_demand: None,
            path: Some(if l.direct > 0 { "direct" } else { "relayed" }.into()),
            path_why: if l.direct > 0 { None } else { l.why_relayed },
            rate: None,
            system_rate: None,
            admin_labels: Vec::new(),
            hidden_labels: Vec::new(),
        };
        match out
            .iter_mut()
            .find(|d| d.system == now.system && d.name == now.name)
        {
            // The store knows version and labels (written at registration;
            // a write still queued shows at the next `ls`).
            Some(d) => {
                let (version, labels) = (d.version.take(), std::mem::take(&mut d.labels));
                *d = DeviceStatus {
                    version,
                    labels,
                    admin_labels: std::mem::take(&mut d.admin_labels),
                    hidden_labels: std::mem::take(&mut d.hidden_labels),
                    ..now
                };
            }
            None => out.push(now),
        }
    }
    out.sort_by(|a, b| (&a.system, &a.name).cmp(&(&b.system, &b.name)));
    out
}

/// Fills in each gateway's networks: its scope, then the associations its
/// permit lets through.
pub fn add_scopes(devices: &mut [DeviceStatus], gateways: &[store::GatewayRecord]) {
    for g in gateways {
        let Some(d) = devices
            .iter_mut()
            .find(|d| d.system == g.system && d.name == g.name)
        else {
            continue;
        };
        let parse = |l: &[String]| -> Vec<crate::protocol::Cidr> {
            l.iter().filter_map(|c| c.parse().ok()).collect()
        };
        let scope = crate::protocol::gateway::GatewayScope {
            scope: parse(&g.scope),
            ports: g.ports.clone(),
            permit: g.permit.as_deref().map(parse),
            associations: parse(&g.associations),
        };
        d.scope = scope.effective().iter().map(|c| c.to_string()).collect();
    }
}

/// Fills in each device's own and its system's bandwidth limit.
pub fn add_rates(devices: &mut [DeviceStatus], rates: &[store::RateRecord]) {
    for d in devices {
        for r in rates.iter().filter(|r| r.system == d.system) {
            match &r.device {
                None => d.system_rate = Some(r.rate),
                Some(n) if *n == d.name => d.rate = Some(r.rate),
                Some(_) => {}
            }
        }
    }
}

/// The RATE column: the device's limit, then its system's.
fn rate_cell(d: &DeviceStatus) -> String {
    match (d.rate, d.system_rate) {
        (Some(r), Some(s)) => format!("{r} (system {s})"),
        (Some(r), None) => r.to_string(),
        (None, Some(s)) => format!("system {s}"),
        (None, None) => "-".into(),
    }
}

/// Keeps the devices that carry every `KEY=VALUE` label in `want`.
pub fn filter_labels(devices: Vec<DeviceStatus>, want: &[(String, String)]) -> Vec<DeviceStatus> {
    devices
        .into_iter()
        .filter(|d| crate::protocol::device_info::DeviceInfo::matches(&d.labels, want))
        .collect()
}

/// The table's header: the optional columns only when some device has them.
fn header(devices: &[DeviceStatus], with_system: bool, any_rate: bool) -> Vec<String> {
    let mut h = vec![
        "NAME",
        "STATUS",
        "SINCE",
        "LAST SEEN",
        "ADDRESS",
        "PORTS",
        "STREAMS",
        "VERSION",
        "LABELS",
        "PATH",
    ];
    if devices.iter().any(|d| !d.scope.is_empty()) {
        h.push("SCOPE");
    }
    if any_rate {
        h.push("RATE");
    }
    if with_system {
        h.insert(0, "SYSTEM");
    }
    h.into_iter().map(String::from).collect::<Vec<_>>()
}

/// A table for people. `with_system` adds the system column (admin view).
pub fn render(devices: &[DeviceStatus], with_system: bool) -> String {
    let any_rate = devices
        .iter()
        .any(|d| d.rate.is_some() || d.system_rate.is_some());
    let mut rows = vec![header(devices, with_system, any_rate)];
    for d in devices {
        let mut r = vec![
            d.name.clone(),
            format!(
                "{}{}{}",
                d.status,
                match &d.on_demand {
                    Some(o) if !d.online && o.state.as_deref() == Some("error") => ",error",
                    _ => "",
                },
                if d.disabled { ",disabled" } else { "" }
            ),
            when(d.since),
            when(d.last_seen),
            d.address.clone().unwrap_or_else(|| "-".into()),
            d.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            d.streams.to_string(),
            d.version.clone().unwrap_or_else(|| "-".into()),
            if d.labels.is_empty() {
                "-".into()
            } else {
                // `*`: the admin's label, overriding the agent's.
                d.labels
                    .iter()
                    .map(|(k, v)| {
                        let admin = if d.admin_labels.contains(k) { "*" } else { "" };
                        format!("{k}={v}{admin}")
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            },
            match (&d.path, &d.path_why) {
                (Some(p), Some(why)) => format!("{p} ({why})"),
                (Some(p), None) => p.clone(),
                (None, _) => "-".into(),
            },
        ];
        if devices.iter().any(|d| !d.scope.is_empty()) {
            r.push(if d.scope.is_empty() {
                "-".into()
            } else {
                d.scope.join(",")
            });
        }
        if any_rate {
            r.push(rate_cell(d));
        }
        if with_system {
            r.insert(0, d.system.clone());
        }
        rows.push(r);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_readable_table() {
        let d = DeviceStatus {
            system: "tau".into(),
            name: "dev1".into(),
            online: true,
            since: Some(store::now() - 125),
            last_seen: Some(store::now()),
            address: Some("198.51.100.4:40000".into()),
            ports: vec![22, 8080],
            version: Some("0.1.0".into()),
            labels: BTreeMap::from([("gpu".into(), "a100".into())]),
            streams: 3,
            disabled: false,
            scope: vec![],
            status: "online".into(),
            on_demand: None,
            path: Some("relayed".into()),
            path_why: Some("symmetric NAT on device dev1's side".into()),
            rate: None,
            system_rate: None,
            admin_labels: Vec::new(),
            hidden_labels: Vec::new(),
        };
        let mut asleep = DeviceStatus {
            name: "dev2".into(),
            online: false,
            status: "offline".into(),
            ..d.clone()
        };
        let record = |state: &str| store::OnDemandRecord {
            system: "tau".into(),
            name: "dev2".into(),
            state: Some(state.into()),
            reason: Some("relay unreachable".into()),
            at: None,
        };
        let one = std::slice::from_mut(&mut asleep);
        add_on_demand(one, vec![record("error")], |_, _| false);
        assert_eq!(asleep.status, "asleep");
        assert!(render(std::slice::from_ref(&asleep), false).contains("dev2  asleep,error"));
        let one = std::slice::from_mut(&mut asleep);
        add_on_demand(one, vec![record("asleep")], |_, n| n == "dev2");
        assert_eq!(asleep.status, "waking");
        let one = std::slice::from_mut(&mut asleep);
        add_on_demand(one, vec![record("offline")], |_, _| false);
        assert_eq!(asleep.status, "offline");
        let json = serde_json::to_value(&asleep).unwrap();
        assert_eq!(json["on_demand"]["reason"], "relay unreachable");
        let t = render(&[d], false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("dev1  online"), "{t}");
        assert!(lines[1].contains("(2m ago)"), "{t}");
        assert!(lines[1].contains("22,8080"));
        assert!(
            lines[1].contains("gpu=a100") && lines[1].contains("0.1.0"),
            "{t}"
        );
        assert!(
            lines[0].ends_with("PATH")
                && lines[1].ends_with("relayed (symmetric NAT on device dev1's side)"),
            "{t}"
        );
        assert_eq!(when(None), "never");
    }

    #[test]
    fn limits_show_in_the_listing_and_its_json() {
        let rate = |s: &str| {
            crate::protocol::rate::Rate::parse(s, None)
                .unwrap()
                .unwrap()
        };
        let d = |name: &str| DeviceStatus::offline("tau", name);
        let plain = render(&[d("dev1")], false);
        assert!(!plain.contains("RATE"), "no column without limits: {plain}");
        let mut list = vec![d("dev1"), d("dev2")];
        let stored = |device: Option<&str>, r: &str| store::RateRecord {
            system: "tau".into(),
            device: device.map(String::from),
            rate: rate(r),
        };
        add_rates(
            &mut list,
            &[stored(None, "10M"), stored(Some("dev2"), "1M")],
        );
        assert_eq!(list[0].rate, None);
        assert_eq!(list[1].rate, Some(rate("1M")));
        assert_eq!(list[0].system_rate, Some(rate("10M")));
        let t = render(&list, false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("RATE"), "{t}");
        assert!(lines[1].ends_with("system 10M/s"), "{t}");
        assert!(lines[2].ends_with("1M/s (system 10M/s)"), "{t}");
        let json = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(json["rate"]["bytes_per_second"], 1_000_000);
        assert_eq!(json["rate"]["burst"], 100_000);
        assert_eq!(json["system_rate"]["bytes_per_second"], 10_000_000);
        assert!(serde_json::to_value(&list[0]).unwrap()["rate"].is_null());
    }

    #[test]
    fn the_registry_is_the_truth_about_now() {
        let stored = |name: &str, online: bool| DeviceStatus {
            online,
            since: Some(1),
            last_seen: Some(1),
            version: Some("0.1.0".into()),
            labels: BTreeMap::from([("site".into(), "lab".into())]),
            streams: 4,
            status: if online { "online" } else { "offline" }.into(),
            ..DeviceStatus::offline("tau", name)
        };
        let live = LiveDevice {
            device: crate::protocol::DeviceId::new(
                Name::parse("tau").unwrap(),
                Name::parse("dev2").unwrap(),
            ),
            since: 50,
            peer: "192.0.2.1:4000".parse().unwrap(),
            ports: vec![22],
            streams: 1,
            disabled: true,
            direct: 1,
            why_relayed: None,
        };
        // dev1: the store still says online, the registry does not have it.
        let out = overlay(
            vec![stored("dev1", true), stored("dev2", false)],
            vec![live],
        );
        assert!(!out[0].online && out[0].streams == 0, "{:?}", out[0]);
        let d = &out[1];
        assert!(d.online && d.disabled && d.streams == 1 && d.since == Some(50));
        assert_eq!(d.address.as_deref(), Some("192.0.2.1:4000"));
        assert_eq!(d.path.as_deref(), Some("direct"), "{d:?}");
        assert_eq!(out[0].path, None, "offline: no path");
        // Version and labels come from the store.
        assert_eq!(d.version.as_deref(), Some("0.1.0"));
        assert_eq!(d.labels.get("site").map(String::as_str), Some("lab"));
    }
}
