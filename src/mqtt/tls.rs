//! `mqtts://`: TLS with rustls on aws-lc-rs, in this crate.
//!
//! The MQTT client's own TLS feature brings a second crypto provider in
//! (its certificate checker defaults to ring), so the client speaks plain
//! MQTT to a [`Bridge`]: a unix socket in a private temporary directory
//! whose every connection this process carries over TLS to the broker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::BrokerSettings;

/// How long dialing the broker and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The rustls client config for a broker: its CA (or the system's roots),
/// and a client certificate if it has one.
pub fn client_config(b: &BrokerSettings) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &b.ca {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading CA {}", ca.display()))?
            {
                let cert = cert.with_context(|| format!("CA {}", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("CA {}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        bail!("broker {}: no CA certificate to check it with", b.url);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots);
    Ok(match &b.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading certificate {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate")?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A unix socket that carries each connection over TLS to the broker;
/// stops and removes itself when dropped.
pub struct Bridge {
    path: PathBuf,
    _dir: tempfile::TempDir,
    _stop: DropGuard,
}

impl Bridge {
    pub fn start(b: &BrokerSettings) -> Result<Bridge> {
        let config = Arc::new(client_config(b)?);
        let name = ServerName::try_from(b.url.host.clone())
            .with_context(|| format!("broker {}: not a host name for TLS", b.url))?;
        let dir = tempfile::Builder::new()
            .prefix("warren-mqtt-")
            .tempdir()
            .context("making the TLS bridge's directory")?;
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        let stop = CancellationToken::new();
        let to = (b.url.host.clone(), b.url.port);
        tokio::spawn(serve(
            listener,
            TlsConnector::from(config),
            name,
            to,
            stop.clone(),
        ));
        Ok(Bridge {
            path,
            _dir: dir,
            _stop: stop.drop_guard(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn serve(
    listener: UnixListener,
    tls: TlsConnector,
    name: ServerName<'static>,
    to: (String, u16),
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((local, _)) => {
                let (tls, name, to, stop) = (tls.clone(), name.clone(), to.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = carry(local, tls, name, to) => if let Err(e) = r {
                            tracing::warn!("MQTT over TLS: {e:#}");
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!("TLS bridge accept: {e}");
                return;
            }
        }
    }
}

/// One connection: dial, handshake, then copy both ways until either ends.
async fn carry(
    mut local: UnixStream,
    tls: TlsConnector,
    name: ServerName<'static>,
    to: (String, u16),
) -> Result<()> {
    let broker = format!("{}:{}", to.0, to.1);
    let connect = async {
        let tcp = TcpStream::connect((to.0.as_str(), to.1))
            .await
            .with_context(|| format!("connecting to {broker}"))?;
        let _ = tcp.set_nodelay(true);
        tls.connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {broker}"))
    };
    let mut remote = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .with_context(|| format!("{broker} did not answer within {CONNECT_TIMEOUT:?}"))??;
    let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
    Ok(())
}
