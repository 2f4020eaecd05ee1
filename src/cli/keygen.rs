use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::ssh::keys;

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to PATH.pub.
    pub path: PathBuf,
    /// Comment stored in the key.
    #[arg(long, default_value = "warren")]
    pub comment: String,
}

pub fn run(a: KeygenArgs) -> Result<ExitCode> {
    let key = keys::generate_ed25519()?;
    keys::write_pair(&key, &a.path, &a.comment)?;
    println!(
        "wrote {} and {}.pub ({})",
        a.path.display(),
        a.path.display(),
        keys::fingerprint(key.public_key())
    );
    Ok(ExitCode::SUCCESS)
}
