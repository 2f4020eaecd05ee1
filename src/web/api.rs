//! The JSON routes over the admin operations: systems, devices, keys,
//! invites, gateways and public ports. Each builds a typed admin request
//! from checked values and runs it through [`ops`] (the same `admin::run`
//! and `admin::commit` as the CLI); reads return the JSON the command
//! prints with `--json`, changes what the CLI prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::Path;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Web;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::input::{Json, Query};
use super::ops::{self, Access, Ctx, name, parsed, value};
use crate::admin::{ExposeRequest, GatewayRef, GatewayRequest, KeySource, Reply, Request};
use crate::protocol::device_info::parse_label;
use crate::protocol::{DeviceId, Name, Role};
use crate::store::DeviceStatus;
use crate::store::labels::LabelEdit;

type Reply_ = ApiResult<axum::Json<Value>>;

/// `system` from a request, refused for a caller limited to another one.
fn own(p: &Principal, system: &str) -> ApiResult<Name> {
    let s = name("system", system)?;
    p.scope(Some(s.to_string()))?;
    Ok(s)
}

/// A list as its `ls --json` prints it, limited to the caller's system.
pub async fn scoped_list(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    request: Request,
) -> ApiResult<Value> {
    let all = ops::read(web, p, peer, request).await?;
    let list: Vec<Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| {
            p.system()
                .is_none_or(|own| x.get("system").unwrap_or(x).as_str() == Some(own))
        })
        .cloned()
        .collect();
    Ok(Value::Array(list))
}

pub async fn systems(c: Ctx) -> Reply_ {
    Ok(axum::Json(
        scoped_list(&c.web, &c.p, c.peer, Request::ListSystems).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSystem {
    pub name: String,
}

pub async fn add_system(c: Ctx, Json(b): Json<NewSystem>) -> Reply_ {
    if c.p.system().is_some() {
        return Err(ApiError::forbidden(
            "other_system",
            "a login or token limited to one system cannot add systems",
        ));
    }
    let name = name("system name", &b.name)?;
    c.change(Request::AddSystem { name }).await
}

/// Filters, sort and page of the device list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    pub system: Option<String>,
    /// online, offline, asleep, waking or disabled.
    pub status: Option<String>,
    /// KEY=VALUE.
    pub label: Option<String>,
    /// Part of the name.
    pub name: Option<String>,
    /// name, system, status, since, last_seen, streams; `-` first for descending.
    pub sort: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// Devices per page when no `limit` is given, and the most one page holds.
pub const DEVICE_PAGE: usize = 100;
pub const DEVICE_PAGE_MAX: usize = 10_000;

/// The device list, filtered, sorted and paged.
pub async fn device_list(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    q: DeviceParams,
) -> ApiResult<Value> {
    let system = match p.scope(q.system.clone())? {
        Some(s) => Some(name("system", &s)?.to_string()),
        None => None,
    };
    let labels = match &q.label {
        Some(l) => {
            vec![parse_label(&value("label", l)?).map_err(|e| ApiError::bad("bad_value", e))?]
        }
        None => Vec::new(),
    };
    let devices = list_devices(web, p, peer, system, labels).await?;
    // Values for the filters and the sort below, made from the typed list
    // (no JSON text printed and parsed back).
    let mut list = devices
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|e| ApiError::internal(&e.into()))?;
    if let Some(st) = q.status.as_deref() {
        if !STATUSES.contains(&st) {
            return Err(ApiError::bad(
                "bad_query",
                format!("status {st:?}: {}", STATUSES.join(", ")),
            ));
        }
        list.retain(|d| status_of(d) == st);
    }
    if let Some(n) = q.name.as_deref().filter(|n| !n.is_empty()) {
        list.retain(|d| d["name"].as_str().is_some_and(|s| s.contains(n)));
    }
    sort_devices(&mut list, q.sort.as_deref().unwrap_or("name"))?;
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(DEVICE_PAGE));
    if limit == 0 || limit > DEVICE_PAGE_MAX {
        return Err(ApiError::bad(
            "bad_limit",
            format!("limit must be between 1 and {DEVICE_PAGE_MAX}"),
        ));
    }
    let total = list.len();
    let page: Vec<Value> = list.into_iter().skip(offset).take(limit).collect();
    Ok(json!({ "devices": page, "total": total, "offset": offset, "limit": limit }))
}

/// The devices of `system` (every one when `None`; the route has limited
/// it to the caller's), typed: no JSON text to print and parse back.
async fn list_devices(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    system: Option<String>,
    labels: Vec<(String, String)>,
) -> ApiResult<Vec<DeviceStatus>> {
    let request = Request::ListDevices { system, labels };
    match ops::request_for(web, p, peer, Access::Read, request).await? {
        Reply::Devices { devices, .. } => Ok(devices),
        other => Err(ApiError::internal(&anyhow::anyhow!("ls replied {other:?}"))),
    }
}

/// What a device's status may be, as the list filters and shows it.
pub const STATUSES: [&str; 5] = ["online", "offline", "asleep", "waking", "disabled"];

/// A device's status: `disabled` by an admin; else `asleep` or `waking`
/// for an on-demand device that is not online (issue 16's wake on use);
/// else online or offline.
pub fn status_of(d: &Value) -> &'static str {
    if d["disabled"].as_bool() == Some(true) {
        return "disabled";
    }
    if d["online"].as_bool() == Some(true) {
        return "online";
    }
    match d["status"].as_str() {
        Some("asleep") => "asleep",
        Some("waking") => "waking",
        _ => "offline",
    }
}

fn sort_devices(list: &mut [Value], sort: &str) -> ApiResult<()> {
    let (desc, key) = match sort.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, sort),
    };
    let text = |d: &Value, k: &str| d[k].as_str().unwrap_or("").to_string();
    let num = |d: &Value, k: &str| d[k].as_u64().unwrap_or(0);
    match key {
        "name" | "system" | "address" | "version" => {
            list.sort_by_cached_key(|a| (text(a, key), text(a, "name")))
        }
        "status" => list.sort_by_cached_key(|a| (status_of(a), text(a, "name"))),
        "since" | "last_seen" | "streams" => {
            list.sort_by_cached_key(|a| (num(a, key), text(a, "name")))
        }
        other => {
            return Err(ApiError::bad(
                "bad_query",
                format!(
                    "sort {other:?}: name, system, status, since, last_seen, streams, address, version"
                ),
            ));
        }
    }
    if desc {
        list.reverse();
    }
    Ok(())
}

pub async fn devices(c: Ctx, Query(q): Query<DeviceParams>) -> Reply_ {
    Ok(axum::Json(device_list(&c.web, &c.p, c.peer, q).await?))
}

/// One device: its status, and its recent history from the audit log.
pub async fn device_detail(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    system: &str,
    device: &str,
) -> ApiResult<Value> {
    let system = own(p, system)?.to_string();
    let name = name("name", device)?.to_string();
    let found = list_devices(web, p, peer, Some(system.clone()), Vec::new())
        .await?
        .into_iter()
        .find(|d| d.name == name);
    let Some(device) = found
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ApiError::internal(&e.into()))?
    else {
        return Err(ApiError::not_found(format!(
            "no device {name} in system {system}"
        )));
    };
    let q = crate::store::AuditQuery {
        system: Some(system),
        device: Some(name),
        limit: 20,
        ..Default::default()
    };
    let history = super::audit::page(web, q).await?;
    Ok(json!({ "device": device, "history": history.events }))
}

pub async fn device(c: Ctx, Path((system, name)): Path<(String, String)>) -> Reply_ {
    Ok(axum::Json(
        device_detail(&c.web, &c.p, c.peer, &system, &name).await?,
    ))
}

/// `POST /devices/{system}/{name}/{disable|enable}`.
pub async fn device_action(
    c: Ctx,
    Path((system, device, action)): Path<(String, String, String)>,
) -> Reply_ {
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => {
            return Err(ApiError::not_found(format!(
                "no device action {action:?}: disable or enable"
            )));
        }
    };
    let device = DeviceId::new(own(&c.p, &system)?, name("name", &device)?);
    c.change(Request::SetDisabled { device, disabled }).await
}

/// The body of `PUT /devices/{system}/{name}/labels`: labels to set, agent
/// labels to hide, and keys whose admin label or removal is forgotten.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub reset: Vec<String>,
}

/// `PUT /devices/{system}/{name}/labels`, as `device label --json`.
pub async fn set_labels(
    c: Ctx,
    Path((system, device)): Path<(String, String)>,
    Json(b): Json<LabelChange>,
) -> Reply_ {
    let device = DeviceId::new(own(&c.p, &system)?, name("name", &device)?);
    let edit =
        LabelEdit::new(b.set, b.remove, b.reset).map_err(|e| ApiError::bad("bad_value", e))?;
    let request = Request::SetLabels { device, edit };
    let reply = ops::request_for(&c.web, &c.p, c.peer, Access::Change, request).await?;
    // What `device label --json` prints: the device's admin labels after.
    Ok(axum::Json(
        crate::admin::json_value(&reply).map_err(|e| ApiError::internal(&e))?,
    ))
}

pub async fn keys(c: Ctx) -> Reply_ {
    Ok(axum::Json(
        scoped_list(&c.web, &c.p, c.peer, Request::ListKeys).await?,
    ))
}

/// `POST /keys`: a key given as its OpenSSH text, as `key add` registers
/// one from a file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub system: String,
    pub role: String,
    pub name: String,
    /// `ssh-ed25519 AAAA… comment` (ed25519, ecdsa or rsa).
    pub public_key: String,
}

pub async fn add_key(c: Ctx, Json(b): Json<NewKey>) -> Reply_ {
    let request = Request::AddKey {
        system: own(&c.p, &b.system)?,
        role: parsed("role", &b.role, str::parse::<Role>)?,
        name: name("name", &b.name)?,
        key: KeySource::Text(parsed("public_key", &b.public_key, |k| {
            crate::ssh::keys::parse_public(k).map(|_| k.to_string())
        })?),
    };
    c.change(request).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub fingerprint: String,
}

/// `POST /keys/revoke {"fingerprint": "SHA256:…"}`.
pub async fn revoke_key(c: Ctx, Json(b): Json<Fingerprint>) -> Reply_ {
    let fingerprint = value("fingerprint", &b.fingerprint)?;
    let listed = (Request::ListKeys, "fingerprint");
    let revoke = Request::RevokeKey {
        fingerprint: fingerprint.clone(),
    };
    revoke_listed(&c.web, &c.p, c.peer, listed, &fingerprint, revoke).await
}

/// Runs `revoke` when the caller's own list (`listed`: the request and
/// the field that names an item) holds `id`; 404 otherwise, so nothing of
/// another system is even confirmed to exist.
async fn revoke_listed(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    (list, field): (Request, &str),
    id: &str,
    revoke: Request,
) -> Reply_ {
    let list = scoped_list(web, p, peer, list).await?;
    let known = list
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v[field].as_str() == Some(id));
    if !known {
        return Err(ApiError::not_found(format!("no {field} {id}")));
    }
    ops::change(web, p, peer, revoke).await
}

pub async fn invites(c: Ctx) -> Reply_ {
    Ok(axum::Json(
        scoped_list(&c.web, &c.p, c.peer, Request::ListInvites).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    pub system: String,
    pub role: String,
    pub name: String,
    pub ttl: Option<String>,
}

/// `POST /invites`: the token is in the reply, once.
pub async fn create_invite(c: Ctx, Json(b): Json<NewInvite>) -> Reply_ {
    let ttl = match &b.ttl {
        Some(t) => Some(value("ttl", t)?),
        None => None,
    };
    let request = Request::CreateInvite {
        system: own(&c.p, &b.system)?,
        role: parsed("role", &b.role, str::parse::<Role>)?,
        name: name("name", &b.name)?,
        ttl: crate::admin::invite_ttl(ttl.as_deref())
            .map_err(|e| ApiError::bad("bad_value", format!("{e:#}")))?,
        relay: None,
    };
    let reply = ops::request_for(&c.web, &c.p, c.peer, Access::Change, request).await?;
    Ok(axum::Json(
        crate::admin::json_value(&reply).map_err(|e| ApiError::internal(&e))?,
    ))
}

pub async fn revoke_invite(c: Ctx, Path(id): Path<String>) -> Reply_ {
    let id = value("id", &id)?;
    let revoke = Request::RevokeInvite { id: id.clone() };
    revoke_listed(
        &c.web,
        &c.p,
        c.peer,
        (Request::ListInvites, "id"),
        &id,
        revoke,
    )
    .await
}

pub async fn gateways(c: Ctx) -> Reply_ {
    let list = GatewayRequest::List {
        system: c.p.system().map(String::from),
    };
    Ok(axum::Json(
        scoped_list(&c.web, &c.p, c.peer, Request::Gateway(list)).await?,
    ))
}

/// A gateway named in a route, in the caller's system.
fn gateway_ref(p: &Principal, system: &str, gateway: &str) -> ApiResult<GatewayRef> {
    Ok(GatewayRef {
        system: Some(own(p, system)?),
        name: name("name", gateway)?,
    })
}

pub async fn gateway_detail(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    system: &str,
    gateway: &str,
) -> ApiResult<Value> {
    let show = GatewayRequest::Show(gateway_ref(p, system, gateway)?);
    ops::read(web, p, peer, Request::Gateway(show)).await
}

pub async fn gateway(c: Ctx, Path((system, name)): Path<(String, String)>) -> Reply_ {
    Ok(axum::Json(
        gateway_detail(&c.web, &c.p, c.peer, &system, &name).await?,
    ))
}

/// The body of a gateway change: a network (associate, dissociate) or a
/// target (allow, deny).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayChange {
    pub network: Option<String>,
    pub target: Option<String>,
}

/// `POST /gateways/{system}/{name}/{associate|dissociate|allow|deny}`.
pub async fn gateway_action(
    c: Ctx,
    Path((system, gateway, action)): Path<(String, String, String)>,
    Json(b): Json<GatewayChange>,
) -> Reply_ {
    let gw = gateway_ref(&c.p, &system, &gateway)?;
    use crate::admin::{parse_cidr, parse_target};
    let request = match (action.as_str(), &b.network, &b.target) {
        ("associate", Some(n), None) => {
            GatewayRequest::Associate(gw, parsed("network", n, parse_cidr)?)
        }
        ("dissociate", Some(n), None) => {
            GatewayRequest::Dissociate(gw, parsed("network", n, parse_cidr)?)
        }
        ("allow", None, Some(t)) => GatewayRequest::Allow(gw, parsed("target", t, parse_target)?),
        ("deny", None, Some(t)) => GatewayRequest::Deny(gw, parsed("target", t, parse_target)?),
        ("associate" | "dissociate", ..) => {
            return Err(ApiError::bad(
                "bad_body",
                format!("{action} takes {{\"network\": CIDR}}"),
            ));
        }
        ("allow" | "deny", ..) => {
            return Err(ApiError::bad(
                "bad_body",
                format!("{action} takes {{\"target\": \"NAME:PORT\"}}"),
            ));
        }
        _ => return Err(ApiError::not_found(format!("no gateway action {action:?}"))),
    };
    c.change(Request::Gateway(request)).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub force: Option<bool>,
}

/// `DELETE /gateways/{system}/{name}[?force=true]`: refused while the
/// gateway has rules, unless forced (as `gateway delete`).
pub async fn delete_gateway(
    c: Ctx,
    Path((system, gateway)): Path<(String, String)>,
    Query(q): Query<DeleteParams>,
) -> Reply_ {
    let delete = GatewayRequest::Delete {
        gw: gateway_ref(&c.p, &system, &gateway)?,
        force: q.force == Some(true),
    };
    c.change(Request::Gateway(delete)).await
}

pub async fn ports(c: Ctx) -> Reply_ {
    let list = Request::Expose(ExposeRequest::List);
    Ok(axum::Json(scoped_list(&c.web, &c.p, c.peer, list).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPort {
    pub system: String,
    /// DEVICE:PORT.
    pub target: String,
    pub port: u16,
    #[serde(default)]
    pub allow_from: Vec<String>,
}

pub async fn add_port(c: Ctx, Json(b): Json<NewPort>) -> Reply_ {
    let system = own(&c.p, &b.system)?;
    let allow_from = b
        .allow_from
        .iter()
        .map(|a| value("allow_from", a))
        .collect::<ApiResult<Vec<_>>>()?;
    let target = value("target", &b.target)?;
    let add = crate::admin::expose::add_request(system, &target, b.port, allow_from)
        .map_err(|e| ApiError::bad("bad_value", format!("{e:#}")))?;
    c.change(Request::Expose(add)).await
}

pub async fn remove_port(c: Ctx, Path(port): Path<u16>) -> Reply_ {
    let ports = scoped_list(&c.web, &c.p, c.peer, Request::Expose(ExposeRequest::List)).await?;
    if !ports
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["port"].as_u64() == Some(u64::from(port)))
    {
        return Err(ApiError::not_found(format!("no public port {port}")));
    }
    c.change(Request::Expose(ExposeRequest::Remove { port }))
        .await
}
