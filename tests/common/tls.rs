//! A private PKI for the TLS port's tests (issue 20), made by rcgen.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, and a relay certificate (CN `relay.test`) signed by it.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA named `cn`, its certificate written to `dir/file`.
pub fn make_ca(dir: &Path, cn: &str, file: &str) -> (PathBuf, CertifiedIssuer<'static, KeyPair>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, cn);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    (super::write_file(dir, file, &ca.pem()), ca)
}

/// The CA "warren test CA" and a certificate for `names` (host names or
/// IP addresses) in `dir`.
pub fn make_pki(dir: &Path, names: &[&str]) -> Pki {
    let (ca, issuer) = make_ca(dir, "warren test CA", "ca.pem");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(names).unwrap();
    p.distinguished_name.push(DnType::CommonName, "relay.test");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    Pki {
        ca,
        cert: super::write_file(dir, "relay.pem", &cert.pem()),
        key: super::write_file(dir, "relay.key", &key.serialize_pem()),
    }
}
