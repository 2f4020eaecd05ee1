//! TLS for the relay's `--tls` port, on rustls with the aws-lc-rs provider:
//! the client's config (system roots or a given CA, a verifier that keeps
//! the refused certificate's subject and issuer for the error), and the
//! server's certificate, reloaded from its files on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::DialError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate the roots did not vouch for, as the verifier saw it.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct Untrusted {
    reason: String,
    subject: String,
    issuer: String,
}

/// The web PKI check, keeping the refused certificate's names.
#[derive(Debug)]
struct Verifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(why) => {
                    let (subject, issuer) = names(end_entity);
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(Untrusted {
                            reason: reason(&why),
                            subject,
                            issuer,
                        }),
                    )))
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn reason(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "signed by an unknown issuer".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "issued for another name".into()
        }
        CertificateError::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

/// The subject and issuer of a DER certificate, as `CN=…, O=…`.
fn names(der: &CertificateDer<'_>) -> (String, String) {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => (cert.subject().to_string(), cert.issuer().to_string()),
        Err(_) => ("(unreadable)".into(), "(unreadable)".into()),
    }
}

/// The client config: `ca` (PEM) or the system's roots, offering `alpn`.
pub fn client_config(
    ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let bad = DialError::Roots;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| bad(format!("reading CA {}: {e}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("CA {}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err(bad(
            "no CA certificate to check the relay with (no system roots; give --ca)".into(),
        ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier(webpki)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS handshake with `host` on `tcp`; failures name what failed.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, DialError> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| DialError::Tls {
        host: host.to_string(),
        why: format!("not a host name for TLS: {e}"),
    })?;
    let wanted = config
        .alpn_protocols
        .first()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(host, &wanted, e))
}

fn handshake_error(host: &str, wanted: &str, e: std::io::Error) -> DialError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o)))) => {
            if let Some(u) = o.downcast_ref::<Untrusted>() {
                return DialError::CertUntrusted {
                    host: host.to_string(),
                    reason: u.reason.clone(),
                    subject: u.subject.clone(),
                    issuer: u.issuer.clone(),
                };
            }
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            return DialError::AlpnNotOffered {
                host: host.to_string(),
                wanted: wanted.to_string(),
            };
        }
        _ => {}
    }
    DialError::Tls {
        host: host.to_string(),
        why: e.to_string(),
    }
}

/// The relay's certificate and key files, loaded now and again on
/// [`CertFiles::reload`] (SIGHUP). Handshakes take the one in force.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertFiles {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertFiles>> {
        let current = load_pair(cert, key)?;
        Ok(Arc::new(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again; on error the running certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let new = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The server config: this certificate, offering `alpn` in order.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS setup")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("certificate {}: no CERTIFICATE in it", cert.display());
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("key {}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .with_context(|| format!("{} is not the key of {}", key.display(), cert.display()))?;
    Ok(Arc::new(certified))
}
