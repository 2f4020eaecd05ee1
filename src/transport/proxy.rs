//! HTTP proxies: `HTTPS_PROXY` and `NO_PROXY` as curl reads them, and the
//! `CONNECT` request that opens a tunnel through the proxy (RFC 9110
//! §9.3.6), with Basic proxy authentication from `user:pass@` in the URL.

use std::fmt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DialError;

/// Longest proxy answer to `CONNECT` we read (status line and headers).
const MAX_PROXY_RESPONSE: usize = 16 * 1024;
/// Headers we parse in that answer.
const MAX_PROXY_HEADERS: usize = 64;

/// An HTTP proxy: `http://[USER:PASSWORD@]HOST[:PORT]` (port 80 if
/// omitted; 1080 or 3128 must be written).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    host: String,
    port: u16,
    /// `user:password`, percent-decoded; never printed.
    credentials: Option<String>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The credentials stay out of every message.
        write!(f, "http://{}", self.host_port())
    }
}

impl ProxyUrl {
    pub fn parse(s: &str) -> Result<ProxyUrl, String> {
        let s = s.trim();
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported (write http://HOST:PORT)"
                ));
            }
            None => s,
        };
        let rest = rest.split('/').next().unwrap_or_default();
        let (credentials, authority) = match rest.rsplit_once('@') {
            Some((c, a)) => (Some(percent_decode(c)?), a),
            None => (None, rest),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| "proxy URL: bad port".to_string())?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_matches(['[', ']']);
        if host.is_empty() {
            return Err("proxy URL has no host".into());
        }
        Ok(ProxyUrl {
            host: host.to_string(),
            port,
            credentials,
        })
    }

    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `%XX` escapes in the user and password of a URL.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "proxy URL: bad %-escape in the credentials".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy URL: credentials are not UTF-8".into())
}

/// The proxy for `host` from `HTTPS_PROXY`/`https_proxy`, unless
/// `NO_PROXY`/`no_proxy` names it.
pub fn from_environment(host: &str) -> Result<Option<ProxyUrl>, String> {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let Some(url) = var(["HTTPS_PROXY", "https_proxy"]) else {
        return Ok(None);
    };
    if let Some(no) = var(["NO_PROXY", "no_proxy"])
        && bypass(&no, host)
    {
        return Ok(None);
    }
    ProxyUrl::parse(&url).map(Some)
}

/// Whether `NO_PROXY` (comma-separated: `*`, host names, `.domain` or
/// `domain` suffixes, IP addresses) names `host`.
pub fn bypass(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let entry = entry.trim_start_matches("*.").trim_start_matches('.');
        !entry.is_empty()
            && (entry == "*"
                || host == entry
                || host
                    .strip_suffix(entry)
                    .is_some_and(|rest| rest.ends_with('.')))
    })
}

/// The `CONNECT` request for `target` (`HOST:PORT`).
pub fn connect_request(target: &str, credentials: Option<&str>) -> String {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(c) = credentials {
        let token = data_encoding::BASE64.encode(c.as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// The proxy's answer to `CONNECT`: `Ok` for a 2xx, else the status line
/// (`407 Proxy Authentication Required`). `None`: not complete yet.
pub fn parse_response(head: &[u8]) -> Result<Option<Result<(), String>>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PROXY_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let code = r.code.unwrap_or(0);
            if (200..300).contains(&code) {
                Ok(Some(Ok(())))
            } else {
                Ok(Some(Err(format!("{code} {}", r.reason.unwrap_or(""))
                    .trim_end()
                    .to_string())))
            }
        }
        Err(e) => Err(format!("not an HTTP answer to CONNECT: {e}")),
    }
}

/// Asks the proxy on `s` for a tunnel to `target`. Reads exactly the
/// answer's head, so the tunnel's first bytes stay in the socket.
pub async fn connect(s: &mut TcpStream, p: &ProxyUrl, target: &str) -> Result<(), DialError> {
    let fail = |why: String| DialError::Proxy {
        proxy: p.to_string(),
        why,
    };
    let req = connect_request(target, p.credentials.as_deref());
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| fail(format!("sending CONNECT: {e}")))?;
    let mut head = Vec::with_capacity(256);
    loop {
        // Byte by byte up to the blank line: nothing past it is ours.
        let b = s.read_u8().await.map_err(|e| {
            fail(format!(
                "closed the connection before answering CONNECT ({e})"
            ))
        })?;
        head.push(b);
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() >= MAX_PROXY_RESPONSE {
            return Err(fail("answer to CONNECT too long".into()));
        }
    }
    match parse_response(&head).map_err(fail)? {
        Some(Ok(())) => Ok(()),
        Some(Err(status)) => Err(DialError::ProxyRefused {
            proxy: p.to_string(),
            target: target.to_string(),
            status,
        }),
        None => Err(fail("incomplete answer to CONNECT".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_and_without_credentials() {
        let p = ProxyUrl::parse("http://alice:p%40ss@proxy.lan:3128/").unwrap();
        assert_eq!(p.host_port(), "proxy.lan:3128");
        assert_eq!(p.credentials.as_deref(), Some("alice:p@ss"));
        assert_eq!(p.to_string(), "http://proxy.lan:3128", "no password shown");
        assert!(!format!("{p:?}").contains("p@ss"));
        let p = ProxyUrl::parse("10.0.0.1:8080").unwrap();
        assert_eq!(
            (p.host_port(), p.credentials),
            ("10.0.0.1:8080".into(), None)
        );
        assert_eq!(ProxyUrl::parse("http://proxy").unwrap().port, 80);
        assert!(
            ProxyUrl::parse("socks5://proxy:1080")
                .unwrap_err()
                .contains("socks5")
        );
        assert!(ProxyUrl::parse("http://proxy:0").is_err());
        assert!(ProxyUrl::parse("http://:8080").is_err());
    }

    #[test]
    fn no_proxy_matches_hosts_and_domains() {
        assert!(bypass("localhost,.corp.example", "relay.corp.example"));
        assert!(bypass("corp.example", "relay.corp.example"));
        assert!(bypass("*", "anything"));
        assert!(bypass(" 10.0.0.5 ", "10.0.0.5"));
        assert!(!bypass("corp.example", "relaycorp.example"));
        assert!(!bypass("", "relay"));
        assert!(!bypass("other", "relay"));
    }

    #[test]
    fn connect_requests_carry_basic_auth() {
        assert_eq!(
            connect_request("relay:443", None),
            "CONNECT relay:443 HTTP/1.1\r\nHost: relay:443\r\n\r\n"
        );
        let r = connect_request("relay:443", Some("Aladdin:open sesame"));
        assert!(
            r.contains("Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"),
            "{r}"
        );
    }

    #[test]
    fn proxy_answers_parse_to_ok_or_the_status() {
        let ok = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11\r\n\r\n";
        assert_eq!(parse_response(ok), Ok(Some(Ok(()))));
        let refused = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n";
        assert_eq!(
            parse_response(refused),
            Ok(Some(Err("407 Proxy Authentication Required".into())))
        );
        assert_eq!(parse_response(b"HTTP/1.1 403 Forbi"), Ok(None));
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_refusing_proxy_is_named_with_its_status() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                .await
                .unwrap();
        });
        let p = ProxyUrl::parse(&format!("http://{addr}")).unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let e = connect(&mut s, &p, "relay:2222").await.unwrap_err();
        assert!(matches!(e, DialError::ProxyRefused { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("HTTP proxy http://{addr}: refused CONNECT to relay:2222: 403 Forbidden")
        );
    }
}
