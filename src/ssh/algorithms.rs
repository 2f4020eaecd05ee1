//! The ciphers and key exchanges a server offers, as an operator lists them
//! (sshd's `Ciphers` and `KexAlgorithms`): a comma-separated list of names
//! in the order of preference, or `-NAME,…` to drop names from the default
//! list. An unknown name is refused with the list of known ones.

use std::fmt;
use std::str::FromStr;

use super::proto::kex::{self, KexAlg};
use super::proto::packet::CipherAlg;

/// Ciphers to offer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphers(pub(crate) Vec<CipherAlg>);

/// Key exchanges to offer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexAlgorithms(pub(crate) Vec<KexAlg>);

impl Default for Ciphers {
    /// AES-GCM first on CPUs with AES instructions, chacha20 first otherwise.
    fn default() -> Self {
        Ciphers(CipherAlg::preferred())
    }
}

impl Default for KexAlgorithms {
    /// mlkem768x25519-sha256, then curve25519-sha256 (and its libssh name).
    fn default() -> Self {
        KexAlgorithms(KexAlg::ALL.to_vec())
    }
}

/// The names in `list`, or the default without the names after a leading
/// `-`; at least one must remain.
fn parse<T: Copy + PartialEq>(
    what: &str,
    list: &str,
    default: Vec<T>,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>, String> {
    let list = list.trim();
    let out = match list.strip_prefix('-') {
        Some(drop) => {
            let drop = kex::parse_names(what, drop, all, name)?;
            default.into_iter().filter(|a| !drop.contains(a)).collect()
        }
        None => kex::parse_names(what, list, all, name)?,
    };
    if out.is_empty() {
        return Err(format!("no {what} left to offer in {list:?}"));
    }
    Ok(out)
}

impl FromStr for Ciphers {
    type Err = String;
    fn from_str(list: &str) -> Result<Ciphers, String> {
        parse(
            "cipher",
            list,
            CipherAlg::preferred(),
            &CipherAlg::ALL,
            CipherAlg::name,
        )
        .map(Ciphers)
    }
}

impl FromStr for KexAlgorithms {
    type Err = String;
    fn from_str(list: &str) -> Result<KexAlgorithms, String> {
        parse(
            "key exchange",
            list,
            KexAlg::ALL.to_vec(),
            &KexAlg::ALL,
            KexAlg::name,
        )
        .map(KexAlgorithms)
    }
}

impl fmt::Display for Ciphers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|c| c.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Display for KexAlgorithms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_keep_order_drop_names_and_refuse_unknown_ones() {
        let c: Ciphers = "aes256-gcm@openssh.com, aes128-gcm@openssh.com"
            .parse()
            .unwrap();
        assert_eq!(
            c.to_string(),
            "aes256-gcm@openssh.com,aes128-gcm@openssh.com"
        );
        let c: Ciphers = "-chacha20-poly1305@openssh.com".parse().unwrap();
        assert!(!c.0.contains(&CipherAlg::Chacha20Poly1305) && c.0.len() == 2);
        let k: KexAlgorithms = "curve25519-sha256".parse().unwrap();
        assert_eq!(k.0, [KexAlg::Curve25519]);
        let err = "aes128-cbc".parse::<Ciphers>().unwrap_err();
        assert!(
            err.contains("unknown cipher \"aes128-cbc\"")
                && err.contains("chacha20-poly1305@openssh.com,aes128-gcm@openssh.com"),
            "{err}"
        );
        let err = "sntrup761x25519-sha512"
            .parse::<KexAlgorithms>()
            .unwrap_err();
        assert!(err.contains("mlkem768x25519-sha256"), "{err}");
        let all = "-mlkem768x25519-sha256,curve25519-sha256,curve25519-sha256@libssh.org";
        assert!(all.parse::<KexAlgorithms>().is_err());
        assert!("".parse::<Ciphers>().is_err());
    }
}
