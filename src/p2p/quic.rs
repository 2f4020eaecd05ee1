//! The QUIC side of a direct path: a certificate made per session, rustls
//! verifiers that accept exactly one certificate (the one whose SHA-256
//! fingerprint the relay passed over SSH), and quinn endpoints on the
//! socket that punching opened. Mutual TLS: the controller checks the
//! device's certificate and the device the controller's.
//!
//! Both rustls and quinn run on the aws-lc-rs provider, as the SSH layer does.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error as TlsError, SignatureScheme};

use super::{
    DIRECT_CONN_WINDOW, DIRECT_IDLE_TIMEOUT, DIRECT_KEEPALIVE, DIRECT_MAX_UDP_PAYLOAD,
    DIRECT_SEND_WINDOW, DIRECT_STREAM_WINDOW,
};

/// ALPN of a direct path, so nothing else speaking QUIC is taken for one.
const ALPN: &[u8] = b"warren-p2p/1";
/// The name in the certificate; never checked (the fingerprint is).
const SERVER_NAME: &str = "warren-p2p";

/// A certificate and its key, made for one session; never written anywhere.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    pub fn generate() -> Result<Identity> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .context("making the session certificate")?;
        let cert = made.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        Ok(Identity {
            fingerprint: fingerprint(&cert),
            cert,
            key,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// `SHA256:` and the base64 of the certificate's SHA-256 (as OpenSSH
/// writes key fingerprints).
pub fn fingerprint(cert: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert);
    format!("SHA256:{}", data_encoding::BASE64_NOPAD.encode(d.as_ref()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts one certificate, by fingerprint; its handshake signature is
/// checked with the provider's algorithms (TLS 1.3 only).
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(fingerprint: &str) -> Arc<Pinned> {
        Arc::new(Pinned {
            fingerprint: fingerprint.to_string(),
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
        if fingerprint(cert) == self.fingerprint {
            Ok(())
        } else {
            Err(TlsError::General(format!(
                "peer certificate {} is not the one the relay vouched for ({})",
                fingerprint(cert),
                self.fingerprint
            )))
        }
    }
}

/// Both ends speak TLS 1.3 only (QUIC requires it).
fn no_tls12() -> TlsError {
    TlsError::General("TLS 1.2 is not used on direct paths".into())
}

impl Pinned {
    /// The handshake signature, checked with the provider's algorithms
    /// (the certificate itself is checked by fingerprint in `check`).
    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The transport of a direct path, the same at both ends: keep-alive and
/// idle timeout, packets that grow to [`DIRECT_MAX_UDP_PAYLOAD`], flow
/// control windows sized for a fast path but bounded (memory per stream and
/// per path).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(DIRECT_KEEPALIVE));
    // Infallible: the timeout is a few seconds, far below QUIC's limit.
    if let Ok(idle) = quinn::IdleTimeout::try_from(DIRECT_IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(DIRECT_MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t.stream_receive_window(DIRECT_STREAM_WINDOW.into());
    t.receive_window(DIRECT_CONN_WINDOW.into());
    t.send_window(DIRECT_SEND_WINDOW);
    Arc::new(t)
}

/// The controller's side: presents `me`, accepts only `peer_fingerprint`.
pub fn client_config(me: &Identity, peer_fingerprint: &str) -> Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Pinned::new(peer_fingerprint))
        .with_client_auth_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow!("QUIC client config: {e}"))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport());
    Ok(c)
}

/// The device's side: presents `me`, requires `peer_fingerprint`.
pub fn server_config(me: &Identity, peer_fingerprint: &str) -> Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Pinned::new(peer_fingerprint))
        .with_single_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow!("QUIC server config: {e}"))?;
    let mut s = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    s.transport_config(transport());
    Ok(s)
}

/// A quinn endpoint on the punched socket (`server` for the device).
pub fn endpoint(
    sock: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    // In quinn's bounds (1,200 to 65,527): a constant.
    config
        .max_udp_payload_size(DIRECT_MAX_UDP_PAYLOAD)
        .map_err(|e| anyhow!("QUIC endpoint config: {e}"))?;
    quinn::Endpoint::new(config, server, sock, Arc::new(quinn::TokioRuntime))
        .context("starting QUIC on the punched socket")
}

/// Connects to the device at `peer` with the pinned configuration.
pub async fn connect(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    peer: SocketAddr,
) -> Result<quinn::Connection> {
    let connecting = ep
        .connect_with(config, peer, SERVER_NAME)
        .map_err(|e| anyhow!("QUIC connect to {peer}: {e}"))?;
    connecting
        .await
        .map_err(|e| anyhow!("QUIC handshake with {peer}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        ctl: &Identity,
        ctl_pin: &str,
        dev: &Identity,
        dev_pin: &str,
    ) -> (
        Result<quinn::Connection>,
        Option<Result<quinn::Connection, String>>,
    ) {
        let dev_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dev_addr = dev_sock.local_addr().unwrap();
        let server = endpoint(dev_sock, Some(server_config(dev, dev_pin).unwrap())).unwrap();
        let accept = tokio::spawn(async move {
            let inc = server.accept().await?;
            Some(inc.await.map_err(|e| e.to_string()))
        });
        let client_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = endpoint(client_sock, None).unwrap();
        let c = connect(&client, client_config(ctl, ctl_pin).unwrap(), dev_addr).await;
        let s = tokio::time::timeout(std::time::Duration::from_secs(5), accept)
            .await
            .ok()
            .and_then(|j| j.ok())
            .flatten();
        (c, s)
    }

    #[tokio::test]
    async fn only_the_vouched_certificates_connect() {
        let (ctl, dev, stranger) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        assert!(ctl.fingerprint.starts_with("SHA256:"));
        assert_ne!(ctl.fingerprint, dev.fingerprint);

        let (c, s) = pair(&ctl, &dev.fingerprint, &dev, &ctl.fingerprint).await;
        let c = c.expect("vouched pair connects");
        assert!(s.unwrap().is_ok());
        let (mut tx, mut rx) = c.open_bi().await.unwrap();
        tx.write_all(b"x").await.unwrap();
        let _ = (&mut rx, tx.finish());

        // The device refuses a controller the relay did not vouch for.
        let (c, s) = pair(&stranger, &dev.fingerprint, &dev, &ctl.fingerprint).await;
        let failed = match (c, s) {
            (Err(_), _) | (_, Some(Err(_))) => true,
            (Ok(conn), _) => {
                // The client may finish its side first; the device's
                // refusal then closes the connection at once.
                tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed())
                    .await
                    .is_ok()
            }
        };
        assert!(failed, "an unvouched controller was accepted");

        // The controller refuses a device that is not the vouched one.
        let (c, _) = pair(&ctl, &dev.fingerprint, &stranger, &ctl.fingerprint).await;
        let err = format!("{:#}", c.unwrap_err());
        assert!(err.contains("QUIC handshake"), "{err}");
    }

    /// A connected pair on loopback: (controller's connection, device's).
    async fn connected() -> (quinn::Connection, quinn::Connection) {
        let (ctl, dev) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (c, s) = pair(&ctl, &dev.fingerprint, &dev, &ctl.fingerprint).await;
        (c.unwrap(), s.unwrap().unwrap())
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    #[tokio::test]
    async fn a_stream_holds_its_receive_window_unread_and_no_more() {
        let (c, s) = connected().await;
        let (mut tx, _rx) = c.open_bi().await.unwrap();
        // The device does not read: the controller may still write exactly
        // the stream window, and no byte more.
        let window = vec![7u8; DIRECT_STREAM_WINDOW as usize];
        tokio::time::timeout(WAIT, tx.write_all(&window))
            .await
            .expect("a whole window written without the peer reading")
            .unwrap();
        let (_stx, mut srx) = tokio::time::timeout(WAIT, s.accept_bi())
            .await
            .unwrap()
            .unwrap();
        let more = [1u8; 1];
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(300), tx.write(&more)).await;
        assert!(
            blocked.is_err(),
            "wrote past the stream window: {blocked:?}"
        );
        // Reading frees the window; everything arrives, in order.
        let writer = tokio::spawn(async move {
            tx.write_all(&more).await.unwrap();
            tx.finish().unwrap();
            tx.stopped().await.ok();
        });
        let got = tokio::time::timeout(WAIT, srx.read_to_end(usize::MAX))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), window.len() + 1);
        assert!(got[..window.len()].iter().all(|&b| b == 7));
        assert_eq!(got[window.len()], 1);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn packets_grow_to_the_ceiling_where_the_path_allows() {
        let (c, s) = connected().await;
        // It starts at QUIC's minimum (1,200); a probe may already have
        // raised it by now, so only the climb is checked.
        let (mut tx, _rx) = c.open_bi().await.unwrap();
        tx.write_all(b"x").await.unwrap();
        let (_stx, mut srx) = s.accept_bi().await.unwrap();
        let drain = tokio::spawn(async move { srx.read_to_end(usize::MAX).await.map(|v| v.len()) });
        // Loopback carries 64 KiB datagrams: MTU discovery climbs to the
        // ceiling (probes go with the data; wait while sending).
        let climbed = tokio::time::timeout(WAIT, async {
            let block = vec![0u8; 64 * 1024];
            while c.stats().path.current_mtu < DIRECT_MAX_UDP_PAYLOAD {
                tx.write_all(&block).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            climbed.is_ok(),
            "MTU stayed at {} (ceiling {DIRECT_MAX_UDP_PAYLOAD})",
            c.stats().path.current_mtu
        );
        assert_eq!(c.stats().path.current_mtu, DIRECT_MAX_UDP_PAYLOAD);
        tx.finish().unwrap();
        assert!(
            tokio::time::timeout(WAIT, drain)
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                > 0
        );
    }
}
