//! The route order against an in-memory view: one test per route and per
//! refusal the router makes.

use std::collections::{BTreeSet, HashMap};

use super::*;
use crate::protocol::Cidr;

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn id(name: &str) -> DeviceId {
    DeviceId::new(n("tau"), n(name))
}

fn nets(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| Cidr::parse(s).unwrap()).collect()
}

fn scope(nets_: &[&str], ports: &[u16]) -> GatewayScope {
    GatewayScope {
        scope: nets(nets_),
        ports: ports.to_vec(),
        permit: None,
        associations: vec![],
    }
}

fn who(role: Role, name: &str) -> Identity {
    Identity {
        system: n("tau"),
        role,
        name: n(name),
        fingerprint: "SHA256:x".into(),
    }
}

#[derive(Default)]
struct View {
    online: HashMap<DeviceId, BTreeSet<u32>>,
    gateways: Vec<(Name, GatewayScope)>,
    rules: Vec<String>,
    known: HashMap<DeviceId, Option<u64>>,
}

impl View {
    fn device(mut self, name: &str, ports: &[u32]) -> View {
        self.online
            .insert(id(name), ports.iter().copied().collect());
        self
    }

    fn gateway(mut self, name: &str, s: GatewayScope) -> View {
        self.online
            .insert(id(name), s.ports.iter().map(|p| u32::from(*p)).collect());
        self.gateways.push((n(name), s));
        self.gateways.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }
}

impl RouteView for View {
    type Handle = String;

    fn online(&self, device: &DeviceId) -> Option<(BTreeSet<u32>, String)> {
        self.online
            .get(device)
            .map(|p| (p.clone(), device.name.to_string()))
    }

    fn gateways(&self, _system: &Name) -> Vec<(Name, GatewayScope, String)> {
        self.gateways
            .iter()
            .map(|(n, s)| (n.clone(), s.clone(), n.to_string()))
            .collect()
    }

    fn rule_allows(&self, _who: &Identity, target: &Target) -> impl Future<Output = bool> + Send {
        std::future::ready(self.rules.contains(&target.to_string()))
    }

    fn last_seen(&self, device: &DeviceId) -> impl Future<Output = Option<Option<u64>>> + Send {
        std::future::ready(self.known.get(device).copied())
    }
}

async fn go(view: &View, host: &str, port: u32) -> Result<Route<String>, Refusal> {
    route(view, &who(Role::Controller, "alice"), host, port).await
}

#[tokio::test]
async fn an_online_device_by_name() {
    let view = View::default().device("dev1", &[22]);
    let r = go(&view, "dev1", 22).await.unwrap();
    assert_eq!(
        r,
        Route::Device {
            device: id("dev1"),
            handle: "dev1".into()
        }
    );
    assert_eq!(r.address(), "dev1");
}

#[tokio::test]
async fn an_online_name_wins_over_via_and_addresses() {
    let view = View::default()
        .device("db.via.gw", &[22])
        .gateway("gw", scope(&["10.0.0.0/8"], &[22]));
    let r = go(&view, "db.via.gw", 22).await.unwrap();
    assert!(matches!(r, Route::Device { .. }), "{r:?}");
}

#[tokio::test]
async fn a_port_the_device_does_not_serve() {
    let view = View::default().device("dev1", &[22, 80]);
    let e = go(&view, "dev1", 8080).await.unwrap_err();
    assert!(
        matches!(e, Refusal::PortNotServed { port: 8080, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "device dev1 does not serve port 8080 (it serves 22, 80)"
    );
}

#[tokio::test]
async fn an_address_goes_to_the_most_specific_gateway() {
    let view = View::default()
        .gateway("wide", scope(&["10.0.0.0/8"], &[22]))
        .gateway("narrow", scope(&["10.0.1.0/24"], &[22]));
    let r = go(&view, "10.0.1.7", 22).await.unwrap();
    assert_eq!(
        r,
        Route::GatewayByScope {
            gateway: id("narrow"),
            host: "10.0.1.7".parse().unwrap(),
            handle: "narrow".into()
        }
    );
    assert_eq!(r.address(), "10.0.1.7");
}

#[tokio::test]
async fn via_names_the_gateway() {
    let view = View::default()
        .gateway("a", scope(&["10.0.0.0/8"], &[22]))
        .gateway("b", scope(&["10.0.0.0/8"], &[22]));
    let r = go(&view, "db.via.b", 22).await.unwrap();
    assert_eq!(r.carrier(), &id("b"));
    assert!(matches!(r, Route::GatewayByName { explicit: true, ref host, .. } if host == "db"));
}

#[tokio::test]
async fn an_unknown_name_goes_to_the_only_gateway() {
    let view = View::default().gateway("gw", scope(&["10.0.0.0/8"], &[22]));
    let r = go(&view, "db", 22).await.unwrap();
    assert!(
        matches!(
            r,
            Route::GatewayByName {
                explicit: false,
                ..
            }
        ),
        "{r:?}"
    );
    let e = go(&view, "db", 80).await.unwrap_err();
    assert!(matches!(e, Refusal::GatewayPort { port: 80, .. }), "{e:?}");
}

#[tokio::test]
async fn a_known_device_not_online_is_offline() {
    let mut view = View::default().gateway("gw", scope(&["10.0.0.0/8"], &[22]));
    view.known.insert(id("dev2"), Some(0));
    let e = go(&view, "dev2", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::Offline { .. }), "{e:?}");
}

#[tokio::test]
async fn no_device_hints_at_via_with_several_gateways() {
    let view = View::default()
        .gateway("a", scope(&["10.0.0.0/8"], &[22]))
        .gateway("b", scope(&["10.1.0.0/16"], &[22]));
    let e = go(&view, "db", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::NoDevice { .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("name the gateway: db.via.a (gateways: a, b)"),
        "{e}"
    );
}

#[tokio::test]
async fn not_a_name() {
    let e = go(&View::default(), "Bad Name", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::NotAName { .. }), "{e:?}");
}

#[tokio::test]
async fn via_refusals() {
    let view = View::default()
        .device("plain", &[22])
        .gateway("gw", scope(&["10.0.1.0/24"], &[22]));
    let e = go(&view, "db.via.Bad!", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::BadGatewayName { .. }), "{e:?}");
    let e = go(&view, "db.via.plain", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::NotAGateway { .. }), "{e:?}");
    let e = go(&view, "db.via.gone", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::GatewayOffline { .. }), "{e:?}");
    let e = go(&view, "db.via.gw", 70000).await.unwrap_err();
    assert!(matches!(e, Refusal::GatewayPort { port: 0, .. }), "{e:?}");
    let e = go(&view, "10.9.9.9.via.gw", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::OutsideScope { .. }), "{e:?}");
}

#[tokio::test]
async fn address_refusals() {
    let e = go(&View::default(), "10.0.1.7", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::NoGatewayOnline { .. }), "{e:?}");
    let mut permitted = scope(&["10.0.1.0/24"], &[22]);
    permitted.permit = Some(nets(&["10.0.0.0/8"]));
    permitted.associations = nets(&["172.16.0.0/16"]);
    let view = View::default().gateway("gw", permitted);
    let e = go(&view, "172.16.3.4", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::OutsidePermit { .. }), "{e:?}");
    let e = go(&view, "192.168.0.1", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::OutsideEveryScope { .. }), "{e:?}");
    let e = go(&view, "10.0.1.7", 80).await.unwrap_err();
    assert!(matches!(e, Refusal::GatewayPort { port: 80, .. }), "{e:?}");
    let view = View::default()
        .gateway("a", scope(&["10.0.0.0/8"], &[22]))
        .gateway("b", scope(&["10.0.0.0/8"], &[22]));
    let e = go(&view, "10.0.1.7", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::Ambiguous { .. }), "{e:?}");
}

#[tokio::test]
async fn who_may_open() {
    let mut view = View::default().gateway("gw", scope(&["10.0.0.0/8"], &[22]));
    let device = who(Role::Device, "gw");
    let e = route(&view, &device, "db", 99999).await.unwrap_err();
    assert!(matches!(e, Refusal::NotAPort { port: 99999 }), "{e:?}");
    let e = route(&view, &device, "db", 22).await.unwrap_err();
    assert!(matches!(e, Refusal::NoGatewayRule { .. }), "{e:?}");
    view.rules.push("db:22".into());
    assert!(route(&view, &device, "db", 22).await.is_ok());
}
