//! Where a stream goes: [`route`] turns (identity, host, port) into a
//! [`Route`] or a [`Refusal`]. It reads through a [`RouteView`], so the
//! order below is tested without sockets.
//!
//! The order, which is behaviour:
//!
//! 0. **Who may open.** Controllers and admins may. A device key may open
//!    only targets that a gateway rule allows; this is the only store read
//!    on the success path, and only for device keys.
//! 1. **An online device.** The host parses as a [`Name`] and is online in
//!    the key's system: [`Route::Device`], or `PortNotServed` if that port
//!    is not registered. An online name wins over `.via.` and over IP
//!    parsing, because names may contain dots.
//! 2. **`HOST.via.GW`**: [`Route::GatewayByName`] with `explicit: true`.
//! 3. **An IP address**: [`Route::GatewayByScope`], most specific network
//!    first, or `Ambiguous`.
//! 4. **Not a name**: `NotAName`.
//! 5. **The failure path**, with one store read (is the name known?):
//!    unknown, and the system has exactly one online gateway:
//!    [`Route::GatewayByName`] with `explicit: false`; known: `Offline`;
//!    otherwise `NoDevice`, with the `.via.` hint.
//! 6. **In `stream.rs`**: `Disabled` (from the registry), then `OpenFailed`
//!    or `OpenTimeout`.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;

use super::Relay;
use crate::policy::{self, Refusal, Via};
use crate::protocol::cidr::split_via;
use crate::protocol::gateway::{self, GatewayScope, Pick};
use crate::protocol::{DeviceId, Name, Role, Target};
use crate::ssh::server::ServerHandle;
use crate::store::Identity;

/// Where a stream goes: the connection that carries it (`handle`) and what
/// that device is asked to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<H = ServerHandle> {
    /// The device itself, by its name.
    Device { device: DeviceId, handle: H },
    /// A host behind the gateway whose networks hold its address.
    GatewayByScope {
        gateway: DeviceId,
        host: IpAddr,
        handle: H,
    },
    /// A host named through a gateway: `HOST.via.GW` (`explicit`), or a name
    /// that is no device while the system has one gateway.
    GatewayByName {
        gateway: DeviceId,
        host: String,
        explicit: bool,
        handle: H,
    },
}

impl<H> Route<H> {
    /// The device whose connection carries the stream.
    pub fn carrier(&self) -> &DeviceId {
        match self {
            Route::Device { device, .. } => device,
            Route::GatewayByScope { gateway, .. } | Route::GatewayByName { gateway, .. } => gateway,
        }
    }

    /// The address of the `forwarded-tcpip` open: the device's name, or the
    /// real target host, which the gateway dials after its own checks.
    pub fn address(&self) -> String {
        match self {
            Route::Device { device, .. } => device.name.to_string(),
            Route::GatewayByScope { host, .. } => host.to_string(),
            Route::GatewayByName { host, .. } => host.clone(),
        }
    }

    pub fn handle(&self) -> &H {
        match self {
            Route::Device { handle, .. }
            | Route::GatewayByScope { handle, .. }
            | Route::GatewayByName { handle, .. } => handle,
        }
    }

    /// Whom the relay asks to open the stream, for refusal texts.
    pub fn via(&self) -> Via {
        match self {
            Route::Device { device, .. } => Via::Device {
                host: device.name.to_string(),
            },
            _ => Via::Gateway {
                gateway: self.carrier().name.clone(),
                address: self.address(),
            },
        }
    }
}

/// What routing reads: `Relay` implements it; unit tests use an in-memory
/// view (no sockets).
pub trait RouteView {
    type Handle: Clone;
    /// An online device's registered ports and connection.
    fn online(&self, device: &DeviceId) -> Option<(BTreeSet<u32>, Self::Handle)>;
    /// The gateways of `system` online on the connection that announced
    /// them, sorted by name.
    fn gateways(&self, system: &Name) -> Vec<(Name, GatewayScope, Self::Handle)>;
    /// Whether a gateway rule lets device key `who` reach `target`.
    fn rule_allows(&self, who: &Identity, target: &Target) -> impl Future<Output = bool> + Send;
    /// A known device's last sighting; `None`: no such device.
    fn last_seen(&self, device: &DeviceId) -> impl Future<Output = Option<Option<u64>>> + Send;
}

/// Routes `host:port` for `who`, in the order of the module doc.
pub async fn route<V: RouteView>(
    view: &V,
    who: &Identity,
    host: &str,
    port: u32,
) -> Result<Route<V::Handle>, Refusal> {
    may_open(view, who, host, port).await?;
    let system = &who.system;
    let online = Name::parse(host).ok().and_then(|n| {
        let device = DeviceId::new(system.clone(), n);
        view.online(&device).map(|(ports, h)| (device, ports, h))
    });
    if let Some((device, ports, handle)) = online {
        if !ports.contains(&port) {
            return Err(Refusal::PortNotServed {
                device: device.name,
                port,
                serves: ports.into_iter().collect(),
            });
        }
        return Ok(Route::Device { device, handle });
    }
    let port16 = u16::try_from(port).ok().filter(|p| *p != 0);
    if let Some((inner, gw)) = split_via(host) {
        return via(view, system, inner, gw, port16);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return by_address(view, system, ip, port16);
    }
    let name = Name::parse(host).map_err(|err| Refusal::NotAName {
        host: host.to_string(),
        system: system.clone(),
        err,
    })?;
    not_online(view, system, name, port).await
}

/// Step 0: whether `who` may open `host:port` at all.
async fn may_open<V: RouteView>(
    view: &V,
    who: &Identity,
    host: &str,
    port: u32,
) -> Result<(), Refusal> {
    if who.role != Role::Device {
        return policy::may_open_streams(who);
    }
    let Ok(port) = u16::try_from(port) else {
        return Err(Refusal::NotAPort { port });
    };
    let target = Target {
        host: host.to_string(),
        port,
    };
    if view.rule_allows(who, &target).await {
        return Ok(());
    }
    Err(Refusal::NoGatewayRule {
        device: who.name.clone(),
        target: target.to_string(),
    })
}

/// Step 5: a name that is not online. Only here is the store read.
async fn not_online<V: RouteView>(
    view: &V,
    system: &Name,
    name: Name,
    port: u32,
) -> Result<Route<V::Handle>, Refusal> {
    let device = DeviceId::new(system.clone(), name);
    if let Some(last_seen) = view.last_seen(&device).await {
        return Err(Refusal::Offline {
            device: device.name,
            last_seen,
        });
    }
    let gateways = view.gateways(system);
    if let [(gw, scope, handle)] = gateways.as_slice() {
        // The system's only gateway: the name is a host of its network.
        return match u16::try_from(port).ok().filter(|p| scope.ports.contains(p)) {
            Some(_) => Ok(Route::GatewayByName {
                gateway: DeviceId::new(system.clone(), gw.clone()),
                host: device.name.to_string(),
                explicit: false,
                handle: handle.clone(),
            }),
            None => Err(port_refusal(gw, scope, port)),
        };
    }
    Err(Refusal::NoDevice {
        host: device.name.to_string(),
        name: device.name,
        system: system.clone(),
        gateways: gateways.into_iter().map(|(n, _, _)| n).collect(),
    })
}

fn port_refusal(gateway: &Name, scope: &GatewayScope, port: u32) -> Refusal {
    Refusal::GatewayPort {
        gateway: gateway.clone(),
        ports: scope.ports.clone(),
        port,
    }
}

/// Step 2, `HOST.via.GATEWAY`: the controller named the gateway.
fn via<V: RouteView>(
    view: &V,
    system: &Name,
    inner: &str,
    gw: &str,
    port: Option<u16>,
) -> Result<Route<V::Handle>, Refusal> {
    let name = Name::parse(gw).map_err(|err| Refusal::BadGatewayName {
        given: gw.to_string(),
        err,
    })?;
    let gateway = DeviceId::new(system.clone(), name);
    let Some((_, scope, handle)) = view
        .gateways(system)
        .into_iter()
        .find(|(n, _, _)| *n == gateway.name)
    else {
        let (gateway, system) = (gateway.name.clone(), system.clone());
        return Err(
            match view.online(&DeviceId::new(system.clone(), gateway.clone())) {
                Some(_) => Refusal::NotAGateway { gateway, system },
                None => Refusal::GatewayOffline { gateway, system },
            },
        );
    };
    let Some(port) = port else {
        return Err(port_refusal(&gateway.name, &scope, 0));
    };
    match inner.parse::<IpAddr>() {
        Ok(ip) => check(&gateway.name, &scope, ip, port)?,
        // A name inside the network: the gateway resolves it and checks the
        // address against its scope.
        Err(_) if scope.ports.contains(&port) => {}
        Err(_) => return Err(port_refusal(&gateway.name, &scope, u32::from(port))),
    }
    Ok(Route::GatewayByName {
        gateway,
        host: inner.to_string(),
        explicit: true,
        handle,
    })
}

/// Step 3, an address: the gateway whose networks hold it most specifically.
fn by_address<V: RouteView>(
    view: &V,
    system: &Name,
    ip: IpAddr,
    port: Option<u16>,
) -> Result<Route<V::Handle>, Refusal> {
    let gateways = view.gateways(system);
    let picked = gateway::pick(gateways.iter().map(|(n, s, _)| (n, s)), ip);
    let (name, _) = picked.map_err(|p| match p {
        Pick::None if gateways.is_empty() => Refusal::NoGatewayOnline {
            system: system.clone(),
            ip,
        },
        Pick::None => {
            // An admin may have associated it with a gateway whose owner
            // does not permit it: say so rather than "no gateway".
            let refused = gateways.iter().find_map(|(n, s, _)| {
                s.refused_associations()
                    .into_iter()
                    .find(|c| c.contains(ip))
                    .map(|c| (n, c))
            });
            match refused {
                Some((gateway, network)) => Refusal::OutsidePermit {
                    ip,
                    network,
                    gateway: gateway.clone(),
                },
                None => Refusal::OutsideEveryScope {
                    ip,
                    system: system.clone(),
                    served: gateways
                        .iter()
                        .map(|(n, s, _)| (n.clone(), s.effective()))
                        .collect(),
                },
            }
        }
        Pick::Ambiguous(candidates) => Refusal::Ambiguous { ip, candidates },
    })?;
    let Some((name, scope, handle)) = gateways.into_iter().find(|(n, _, _)| *n == name) else {
        return Err(Refusal::GatewayGone { gateway: name });
    };
    check(&name, &scope, ip, port.unwrap_or(0))?;
    Ok(Route::GatewayByScope {
        gateway: DeviceId::new(system.clone(), name),
        host: ip,
        handle,
    })
}

/// [`GatewayScope::check`], typed: why `ip:port` may not be reached
/// through `gateway`, if it may not.
fn check(gateway: &Name, scope: &GatewayScope, ip: IpAddr, port: u16) -> Result<(), Refusal> {
    if scope.best_match(ip).is_none() {
        if let Some(network) = scope
            .refused_associations()
            .into_iter()
            .find(|n| n.contains(ip))
        {
            return Err(Refusal::OutsidePermit {
                ip,
                network,
                gateway: gateway.clone(),
            });
        }
        return Err(Refusal::OutsideScope {
            ip,
            gateway: gateway.clone(),
            served: scope.effective(),
        });
    }
    if !scope.ports.contains(&port) {
        return Err(port_refusal(gateway, scope, u32::from(port)));
    }
    Ok(())
}

impl RouteView for Relay {
    type Handle = ServerHandle;

    fn online(&self, device: &DeviceId) -> Option<(BTreeSet<u32>, ServerHandle)> {
        self.registry
            .lookup(&device.system, &device.name)
            .map(|d| (d.ports, d.handle))
    }

    fn gateways(&self, system: &Name) -> Vec<(Name, GatewayScope, ServerHandle)> {
        let mut out = Vec::new();
        for (name, conn, scope) in self.gateways.of_system(system) {
            if let Some(dev) = self.registry.lookup(system, &name)
                && dev.conn == conn
                && scope.is_gateway()
            {
                out.push((name, scope, dev.handle));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn rule_allows(&self, who: &Identity, target: &Target) -> impl Future<Output = bool> + Send {
        let (s, n, t) = (
            who.system.to_string(),
            who.name.to_string(),
            target.to_string(),
        );
        let store = self.store.clone();
        async move {
            store
                .call(move |st| st.gateway_rule_allows(&s, &n, &t))
                .await
                .unwrap_or(false)
        }
    }

    fn last_seen(&self, device: &DeviceId) -> impl Future<Output = Option<Option<u64>>> + Send {
        let (s, n) = (device.system.to_string(), device.name.to_string());
        let store = self.store.clone();
        async move {
            store
                .call(move |st| st.last_seen(&s, &n))
                .await
                .ok()
                .flatten()
        }
    }
}

#[cfg(test)]
mod tests;
