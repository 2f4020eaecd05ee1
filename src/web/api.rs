//! The JSON routes over the admin operations: systems, devices, keys,
//! invites, gateways and public ports. The device list builds a typed
//! request and gets typed devices back ([`ops::request_for`]); the other
//! routes build the admin command line from checked values and run it
//! through [`ops::run`]; reads return the command's own JSON.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Web;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::input::{Json, Query};
use super::ops::{self, Access, value};
use crate::admin::{Reply, Request};
use crate::protocol::device_info::parse_label;
use crate::store::DeviceStatus;

type Peer = ConnectInfo<SocketAddr>;

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// The reply of a change: what the CLI would have printed.
fn done(out: String) -> axum::Json<Value> {
    axum::Json(json!({ "ok": true, "message": out.trim_end() }))
}

/// Refuses a change to `system` by a caller limited to another one.
fn own(p: &Principal, system: &str) -> ApiResult<String> {
    let s = value("system", system)?;
    p.scope(Some(s.clone()))?;
    Ok(s)
}

pub async fn systems(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
) -> ApiResult<axum::Json<Value>> {
    let all = ops::read_json(&web, &p, peer, words(&["system", "ls", "--json"])).await?;
    let list: Vec<Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| p.system().is_none_or(|own| s.as_str() == Some(own)))
        .cloned()
        .collect();
    Ok(axum::Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSystem {
    pub name: String,
}

pub async fn add_system(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Json(b): Json<NewSystem>,
) -> ApiResult<axum::Json<Value>> {
    if p.system().is_some() {
        return Err(ApiError::forbidden(
            "other_system",
            "a login or token limited to one system cannot add systems",
        ));
    }
    let name = value("name", &b.name)?;
    let mut w = words(&["system", "add"]);
    w.push(name);
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}

/// Filters, sort and page of the device list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    pub system: Option<String>,
    /// online, offline or disabled.
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
        Some(s) => Some(value("system", &s)?),
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
        if !matches!(st, "online" | "offline" | "disabled") {
            return Err(ApiError::bad(
                "bad_query",
                format!("status {st:?}: online, offline or disabled"),
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

/// online, offline or disabled.
pub fn status_of(d: &Value) -> &'static str {
    if d["disabled"].as_bool() == Some(true) {
        "disabled"
    } else if d["online"].as_bool() == Some(true) {
        "online"
    } else {
        "offline"
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

pub async fn devices(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Query(q): Query<DeviceParams>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(device_list(&web, &p, peer, q).await?))
}

/// One device: its status, and its recent history from the audit log.
pub async fn device_detail(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    system: &str,
    name: &str,
) -> ApiResult<Value> {
    let system = own(p, system)?;
    let name = value("name", name)?;
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

pub async fn device(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path((system, name)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        device_detail(&web, &p, peer, &system, &name).await?,
    ))
}

/// `POST /devices/{system}/{name}/{disable|enable}`.
pub async fn device_action(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path((system, name, action)): Path<(String, String, String)>,
) -> ApiResult<axum::Json<Value>> {
    if !matches!(action.as_str(), "disable" | "enable") {
        return Err(ApiError::not_found(format!(
            "no device action {action:?}: disable or enable"
        )));
    }
    let system = own(&p, &system)?;
    let w = vec![
        "device".into(),
        action,
        "--system".into(),
        system,
        value("name", &name)?,
    ];
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}

/// Keys, invites, gateways and public ports as their `ls --json` prints
/// them, limited to the caller's system.
async fn scoped_list(web: &Web, p: &Principal, peer: SocketAddr, w: &[&str]) -> ApiResult<Value> {
    let all = ops::read_json(web, p, peer, words(w)).await?;
    let list: Vec<Value> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| {
            p.system()
                .is_none_or(|own| x["system"].as_str() == Some(own))
        })
        .cloned()
        .collect();
    Ok(Value::Array(list))
}

pub async fn keys(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        scoped_list(&web, &p, peer, &["key", "ls", "--json"]).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub fingerprint: String,
}

/// `POST /keys/revoke {"fingerprint": "SHA256:…"}`.
pub async fn revoke_key(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Json(b): Json<Fingerprint>,
) -> ApiResult<axum::Json<Value>> {
    let fp = value("fingerprint", &b.fingerprint)?;
    revoke_listed(&web, &p, peer, "key", "fingerprint", fp).await
}

/// Revokes `id` of `what` (`key`, `invite`) when the caller's own list
/// holds it under `field`; 404 otherwise, so nothing of another system is
/// even confirmed to exist.
async fn revoke_listed(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    what: &str,
    field: &str,
    id: String,
) -> ApiResult<axum::Json<Value>> {
    let list = scoped_list(web, p, peer, &[what, "ls", "--json"]).await?;
    let known = list
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v[field].as_str() == Some(id.as_str()));
    if !known {
        return Err(ApiError::not_found(format!("no {what} {id}")));
    }
    let w = vec![what.to_string(), "revoke".into(), id];
    Ok(done(ops::run(web, p, peer, Access::Change, w).await?))
}

pub async fn invites(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        scoped_list(&web, &p, peer, &["invite", "ls", "--json"]).await?,
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
pub async fn create_invite(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Json(b): Json<NewInvite>,
) -> ApiResult<axum::Json<Value>> {
    let mut w = vec![
        "invite".into(),
        "--system".into(),
        own(&p, &b.system)?,
        "--role".into(),
        value("role", &b.role)?,
        "--name".into(),
        value("name", &b.name)?,
        "--json".into(),
    ];
    if let Some(t) = &b.ttl {
        w.extend(["--ttl".to_string(), value("ttl", t)?]);
    }
    let out = ops::run(&web, &p, peer, Access::Change, w).await?;
    Ok(axum::Json(
        serde_json::from_str(&out).map_err(|e| ApiError::internal(&e.into()))?,
    ))
}

pub async fn revoke_invite(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let id = value("id", &id)?;
    revoke_listed(&web, &p, peer, "invite", "id", id).await
}

pub async fn gateways(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        scoped_list(&web, &p, peer, &["gateway", "ls", "--json"]).await?,
    ))
}

pub async fn gateway_detail(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    system: &str,
    name: &str,
) -> ApiResult<Value> {
    let w = vec![
        "gateway".into(),
        "show".into(),
        "--system".into(),
        own(p, system)?,
        value("name", name)?,
        "--json".into(),
    ];
    ops::read_json(web, p, peer, w).await
}

pub async fn gateway(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path((system, name)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        gateway_detail(&web, &p, peer, &system, &name).await?,
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
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path((system, name, action)): Path<(String, String, String)>,
    Json(b): Json<GatewayChange>,
) -> ApiResult<axum::Json<Value>> {
    let arg = match (action.as_str(), &b.network, &b.target) {
        ("associate" | "dissociate", Some(n), None) => value("network", n)?,
        ("allow" | "deny", None, Some(t)) => value("target", t)?,
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
    let w = vec![
        "gateway".into(),
        action,
        "--system".into(),
        own(&p, &system)?,
        value("name", &name)?,
        arg,
    ];
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub force: Option<bool>,
}

/// `DELETE /gateways/{system}/{name}[?force=true]`: refused while the
/// gateway has rules, unless forced (as `gateway delete`).
pub async fn delete_gateway(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path((system, name)): Path<(String, String)>,
    Query(q): Query<DeleteParams>,
) -> ApiResult<axum::Json<Value>> {
    let mut w = vec![
        "gateway".into(),
        "delete".into(),
        "--system".into(),
        own(&p, &system)?,
        value("name", &name)?,
    ];
    if q.force == Some(true) {
        w.push("--force".into());
    }
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}

pub async fn ports(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        scoped_list(&web, &p, peer, &["expose", "ls", "--json"]).await?,
    ))
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

pub async fn add_port(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Json(b): Json<NewPort>,
) -> ApiResult<axum::Json<Value>> {
    let mut w = vec![
        "expose".into(),
        value("target", &b.target)?,
        "--system".into(),
        own(&p, &b.system)?,
        "--port".into(),
        b.port.to_string(),
    ];
    for a in &b.allow_from {
        w.extend(["--allow-from".to_string(), value("allow_from", a)?]);
    }
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}

pub async fn remove_port(
    State(web): State<Web>,
    p: Principal,
    ConnectInfo(peer): Peer,
    Path(port): Path<u16>,
) -> ApiResult<axum::Json<Value>> {
    let ports = scoped_list(&web, &p, peer, &["expose", "ls", "--json"]).await?;
    if !ports
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["port"].as_u64() == Some(u64::from(port)))
    {
        return Err(ApiError::not_found(format!("no public port {port}")));
    }
    let w = vec!["expose".into(), "rm".into(), port.to_string()];
    Ok(done(ops::run(&web, &p, peer, Access::Change, w).await?))
}
