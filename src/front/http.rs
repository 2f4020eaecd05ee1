//! HTTP on the TLS port: HTTP/1.1 or h2 (hyper-util's automatic server)
//! over the TLS stream, the console and API router when `--http` is on,
//! and `GET /ssh`: a WebSocket whose binary messages carry SSH to the same
//! server as the SSH port.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::relay::Relay;

/// The path of the SSH WebSocket.
pub const SSH_PATH: &str = "/ssh";

/// The web router (or none) with `/ssh` added.
pub fn router(relay: &Arc<Relay>, web: Option<crate::web::Web>) -> axum::Router {
    let base = match web {
        Some(w) => crate::web::router(w),
        None => axum::Router::new().fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "this relay serves SSH here (ALPN warren-ssh, or a WebSocket on /ssh); its console is off\n",
            )
        }),
    };
    let relay = relay.clone();
    base.route(
        SSH_PATH,
        get(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
                upgrade(relay.clone(), peer, req)
            },
        ),
    )
}

/// Serves HTTP on one TLS connection until it ends or the relay shuts down.
pub async fn serve_connection<S>(relay: &Relay, tls: S, peer: SocketAddr, router: axum::Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // What the handlers read as the peer (`ConnectInfo`), as on --http.
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, req).await }
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // With a timer, hyper drops a client that takes more than 30 s to send
    // its request headers (slowloris).
    builder.http1().timer(hyper_util::rt::TokioTimer::new());
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "HTTPS connection ended");
        },
        _ = relay.shutting_down().cancelled() => {}
    }
}

/// Why a request to `/ssh` is not a WebSocket upgrade we take, if it is not.
pub fn check_upgrade(h: &HeaderMap) -> Result<&HeaderValue, (StatusCode, &'static str)> {
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "/ssh carries SSH in a WebSocket: send a WebSocket upgrade\n",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err((StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n"));
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .ok_or((StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n"))
}

/// `GET /ssh`: answers the upgrade, then serves SSH on the WebSocket.
async fn upgrade(relay: Arc<Relay>, peer: SocketAddr, mut req: Request) -> Response {
    let key = match check_upgrade(req.headers()) {
        Ok(k) => derive_accept_key(k.as_bytes()),
        Err(refusal) => return refusal.into_response(),
    };
    let Some(admitted) = relay.admit(peer) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let r = relay.clone();
    relay.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(crate::transport::ws::config()),
        )
        .await;
        match crate::transport::ws::bridge(ws) {
            Ok(socket) => r.serve_connection(socket, peer, admitted).await,
            Err(e) => tracing::warn!(%peer, error = %e, "no socket pair for a WebSocket"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("Upgrade")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_websocket_upgrades_reach_ssh() {
        let good = headers(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(
            derive_accept_key(check_upgrade(&good).unwrap().as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455's example"
        );
        let plain = headers(&[("connection", "keep-alive")]);
        assert_eq!(
            check_upgrade(&plain).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        let old = headers(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "8"),
        ]);
        assert_eq!(
            check_upgrade(&old).unwrap_err().0,
            StatusCode::UPGRADE_REQUIRED
        );
    }
}
