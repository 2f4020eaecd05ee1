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
    let (records, gws) = store
        .call(move |s| {
            Ok((
                s.devices(system.as_deref())?,
                s.gateways(system.as_deref())?,
            ))
        })
        .await?;
    let mut out = match live {
        Some(live) => overlay(records, live.online(name.as_ref())),
        None => records,
    };
    add_scopes(&mut out, &gws);
    Ok(out)
}

/// The store's records with the registry's online devices laid over them.
/// The registry is the truth about "now": a device the store still has
/// online but the registry has not is offline (its status write is queued).
fn overlay(records: Vec<DeviceStatus>, live: Vec<LiveDevice>) -> Vec<DeviceStatus> {
    let mut out: Vec<DeviceStatus> = records
        .into_iter()
        .map(|mut d| {
            d.online = false;
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

/// Keeps the devices that carry every `KEY=VALUE` label in `want`.
pub fn filter_labels(devices: Vec<DeviceStatus>, want: &[(String, String)]) -> Vec<DeviceStatus> {
    devices
        .into_iter()
        .filter(|d| crate::protocol::device_info::DeviceInfo::matches(&d.labels, want))
        .collect()
}

/// A table for people. `with_system` adds the system column (admin view).
pub fn render(devices: &[DeviceStatus], with_system: bool) -> String {
    let mut rows = vec![{
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
        ];
        if devices.iter().any(|d| !d.scope.is_empty()) {
            h.push("SCOPE");
        }
        if with_system {
            h.insert(0, "SYSTEM");
        }
        h.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for d in devices {
        let mut r = vec![
            d.name.clone(),
            format!(
                "{}{}",
                if d.online { "online" } else { "offline" },
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
                d.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ];
        if devices.iter().any(|d| !d.scope.is_empty()) {
            r.push(if d.scope.is_empty() {
                "-".into()
            } else {
                d.scope.join(",")
            });
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
        };
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
        assert_eq!(when(None), "never");
    }

    #[test]
    fn the_registry_is_the_truth_about_now() {
        let stored = |name: &str, online: bool| DeviceStatus {
            system: "tau".into(),
            name: name.into(),
            online,
            since: Some(1),
            last_seen: Some(1),
            address: None,
            ports: vec![],
            version: Some("0.1.0".into()),
            labels: BTreeMap::from([("site".into(), "lab".into())]),
            streams: 4,
            disabled: false,
            scope: vec![],
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
        // Version and labels come from the store.
        assert_eq!(d.version.as_deref(), Some("0.1.0"));
        assert_eq!(d.labels.get("site").map(String::as_str), Some("lab"));
    }
}
