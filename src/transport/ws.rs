//! SSH inside a WebSocket: binary messages carry the SSH bytes, in order,
//! nothing else. [`bridge`] turns a WebSocket (either end) into a
//! [`Socket`] the SSH layer runs on; [`client`] is the client's upgrade.

use std::io;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::DialError;
use crate::ssh::socket::Socket;

/// Largest message we send: what one read of the SSH side gives, at most.
const MAX_MESSAGE: usize = 64 * 1024;
/// Largest message or frame we take: the peer's messages are SSH bytes in
/// pieces of its choosing; this bounds what one connection may make us
/// hold (tungstenite's default is 64 MiB).
const MAX_INCOMING: usize = 1024 * 1024;

/// The WebSocket settings of both ends.
pub fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_INCOMING))
        .max_frame_size(Some(MAX_INCOMING))
}

/// The client's upgrade on `stream` (TLS to the relay) at `url`.
pub async fn client<S>(url: &str, stream: S) -> Result<WebSocketStream<S>, DialError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio_tungstenite::client_async_with_config(url, stream, Some(config())).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => Err(DialError::WebSocketRefused {
            url: url.to_string(),
            status: status_line(r.status()),
        }),
        Err(e) => Err(DialError::WebSocket {
            url: url.to_string(),
            why: e.to_string(),
        }),
    }
}

fn status_line(s: tungstenite::http::StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_string()
}

/// A socket whose bytes a spawned task carries as binary messages on `ws`.
pub fn bridge<S>(ws: WebSocketStream<S>) -> io::Result<Socket>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = UnixStream::pair()?;
    tokio::spawn(carry(ws, ours));
    Ok(Socket::Pair(theirs))
}

/// Until either direction ends (see [`crate::ssh::socket`]).
async fn carry<S>(ws: WebSocketStream<S>, pair: UnixStream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (mut pr, mut pw) = pair.into_split();
    let inbound = async {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Binary(b)) => {
                    if pw.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                // Pings are answered by tungstenite; text is not ours.
                Ok(_) => {}
            }
        }
        let _ = pw.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            match pr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let m = Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}
