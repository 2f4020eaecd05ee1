//! Device status as people and scripts read it (`ls`, `ls --json`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::Relay;
use crate::protocol::Name;
use crate::render::{table, when};
use crate::store::{self, DeviceRecord};

/// One device as listed: the store's record with the live registry's
/// online state laid over it (the registry is the truth about "now").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceStatus {
    pub system: String,
    pub name: String,
    pub online: bool,
    /// Unix seconds: online since, or offline since.
    pub since: Option<u64>,
    pub last_seen: Option<u64>,
    /// Address the device connected from (last known when offline).
    pub address: Option<String>,
    pub ports: Vec<u16>,
    /// Agent version (none for devices on stock `ssh -R`).
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Live streams to the device.
    pub streams: u64,
    /// An admin disabled it: no streams.
    pub disabled: bool,
    /// A gateway's networks: its own scope and served associations (empty
    /// for a plain device).
    #[serde(default)]
    pub scope: Vec<String>,
    /// `online`, `offline`, `asleep` (an on-demand device, woken on use) or
    /// `waking` (a wake in progress).
    pub status: String,
    /// An on-demand device's last reported state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandInfo>,
}

/// What an on-demand device last reported on its MQTT state topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OnDemandInfo {
    /// `asleep`, `connecting`, `online`, `error` or `offline`.
    pub state: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, as the device reported it.
    pub at: Option<String>,
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
        d.on_demand = Some(OnDemandInfo {
            state: r.state,
            reason: r.reason,
            at: r.at,
        });
    }
}

/// Lists devices of `system` (or all) as the running relay sees them.
pub async fn list(relay: &Relay, system: Option<&Name>) -> anyhow::Result<Vec<DeviceStatus>> {
    let filter = system.map(|s| s.to_string());
    let records = relay
        .store()
        .call(move |s| s.devices(filter.as_deref()))
        .await?;
    let live = relay.registry().online(system);
    // The registry is the truth about "now": a device the store still has
    // online but the registry has not is offline (its status write is queued).
    let mut out: Vec<DeviceStatus> = records
        .into_iter()
        .map(from_record)
        .map(|mut d| {
            d.online = false;
            d.status = "offline".into();
            d.streams = 0;
            d
        })
        .collect();
    for (id, entry) in live {
        let ports = entry
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
        let streams = relay.registry().stream_count(&id) as u64;
        let disabled = relay.registry().is_disabled(&id.system, &id.name);
        let now = DeviceStatus {
            system: id.system.to_string(),
            name: id.name.to_string(),
            online: true,
            since: Some(entry.since),
            last_seen: Some(store::now()),
            address: Some(entry.peer.to_string()),
            ports,
            version: None,
            labels: BTreeMap::new(),
            streams,
            disabled,
            scope: Vec::new(),
            status: "online".into(),
            on_demand: None,
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
    let filter = system.map(|s| s.to_string());
    let gws = relay
        .store()
        .call(move |s| s.gateways(filter.as_deref()))
        .await?;
    add_scopes(&mut out, &gws);
    on_demand(relay, system, &mut out).await?;
    Ok(out)
}

/// Lays the on-demand devices' reports and wakes in progress over the list.
async fn on_demand(
    relay: &Relay,
    system: Option<&Name>,
    out: &mut [DeviceStatus],
) -> anyhow::Result<()> {
    let filter = system.map(|s| s.to_string());
    let sleepers = relay
        .store()
        .call(move |s| s.on_demand_devices(filter.as_deref()))
        .await?;
    add_on_demand(out, sleepers, |s, n| {
        let (Ok(s), Ok(n)) = (Name::parse(s), Name::parse(n)) else {
            return false;
        };
        relay
            .waker()
            .is_some_and(|w| w.is_waking(&crate::protocol::DeviceId::new(s, n)))
    });
    Ok(())
}

/// The store's view alone (for `warren admin ls` when no relay runs here).
pub fn from_record(d: DeviceRecord) -> DeviceStatus {
    DeviceStatus {
        system: d.system,
        name: d.name,
        online: d.online,
        since: d.since,
        last_seen: d.last_seen,
        address: d.address,
        ports: d.ports,
        version: d.version,
        labels: d.labels,
        streams: d.streams,
        disabled: d.disabled,
        scope: Vec::new(),
        status: if d.online { "online" } else { "offline" }.into(),
        on_demand: None,
    }
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
            status: "online".into(),
            on_demand: None,
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
        add_on_demand(
            std::slice::from_mut(&mut asleep),
            vec![record("error")],
            |_, _| false,
        );
        assert_eq!(asleep.status, "asleep");
        assert!(render(&[asleep.clone()], false).contains("dev2  asleep,error"));
        add_on_demand(
            std::slice::from_mut(&mut asleep),
            vec![record("asleep")],
            |_, n| n == "dev2",
        );
        assert_eq!(asleep.status, "waking");
        add_on_demand(
            std::slice::from_mut(&mut asleep),
            vec![record("offline")],
            |_, _| false,
        );
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
        assert_eq!(when(None), "never");
    }
}
