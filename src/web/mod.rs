//! The relay's HTTP side: the JSON API under `/api/v1/`, the web console,
//! and `/metrics` on a port of its own. Off unless the relay is started with
//! `--http ADDR` / `--metrics ADDR`.
//!
//! Handlers are adapters: they turn a request into a store read or an
//! admin operation and render its reply. Who may call what is decided in
//! [`auth`]: a console session (a cookie from a one-time login link) or a
//! bearer token, each bound to a role and, for controllers, one system.
//!
//! - [`auth`]: login links, sessions, tokens, the CSRF check.
//! - [`audit`]: the audit log with filters, keyset paging and CSV export.
//! - [`error`]: JSON errors with stable codes.

pub mod api;
pub mod audit;
pub mod auth;
pub mod console;
pub mod error;
pub mod input;
pub mod ops;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::relay::Relay;
use error::ApiError;

pub use crate::admin::access::{CONSOLE_URL_SETTING, LOGIN_TTL};

/// Largest request body: the API's bodies are a few names and flags.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a console session lasts: a working day.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct Web {
    pub relay: Arc<Relay>,
    /// Served behind TLS: cookies get `Secure`.
    pub secure: bool,
}

/// The API and console routes.
pub fn router(web: Web) -> Router {
    let api = Router::new()
        .route("/session", get(auth::session))
        .route("/logout", post(auth::logout))
        .route("/audit", get(audit::list))
        .route("/audit.csv", get(audit::csv))
        .route("/systems", get(api::systems).post(api::add_system))
        .route("/devices", get(api::devices))
        .route("/devices/{system}/{name}", get(api::device))
        .route(
            "/devices/{system}/{name}/labels",
            axum::routing::put(api::set_labels),
        )
        .route(
            "/devices/{system}/{name}/{action}",
            post(api::device_action),
        )
        .route("/keys", get(api::keys).post(api::add_key))
        .route("/keys/revoke", post(api::revoke_key))
        .route("/invites", get(api::invites).post(api::create_invite))
        .route("/invites/{id}/revoke", post(api::revoke_invite))
        .route("/gateways", get(api::gateways))
        .route(
            "/gateways/{system}/{name}",
            get(api::gateway).delete(api::delete_gateway),
        )
        .route(
            "/gateways/{system}/{name}/{action}",
            post(api::gateway_action),
        )
        .route("/ports", get(api::ports).post(api::add_port))
        .route("/ports/{port}", axum::routing::delete(api::remove_port));
    Router::new()
        .nest("/api/v1", api)
        .merge(console::routes())
        .route("/login/{token}", get(auth::login))
        .fallback(|| async { ApiError::not_found("no such page or API route") })
        .layer(axum::middleware::from_fn(auth::csrf_guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(web)
}

/// Serves the API and console on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, web: Web, shutdown: CancellationToken) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP API and console listening");
    let app = router(web).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Serves `/metrics` (Prometheus text format 0.0.4, or OpenMetrics 1.0.0
/// when the scraper's `Accept` header asks for it) on `listener` until
/// `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) -> Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(relay): axum::extract::State<Arc<Relay>>,
                 headers: axum::http::HeaderMap| async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let (content_type, text) =
                        crate::metrics::global().render_for(accept, &online_per_system(&relay));
                    ([(header::CONTENT_TYPE, content_type)], text).into_response()
                },
            ),
        )
        .with_state(relay);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Devices online now, per system, from the live registry.
fn online_per_system(relay: &Relay) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (device, _) in relay.registry().online(None) {
        *counts.entry(device.system.to_string()).or_default() += 1;
    }
    counts.into_iter().collect()
}
