//! Config files: where they live when no path is given, and reading one
//! with a size bound.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::protocol::limits::MAX_CONFIG_FILE;

/// The agent's config file name.
pub const AGENT_CONFIG: &str = "agent.toml";
/// The controller's config file name.
pub const CLIENT_CONFIG: &str = "client.toml";

/// `$XDG_CONFIG_HOME/warren/{file}`, else `~/.config/warren/{file}`: where
/// `agent.toml` and `client.toml` live when no path is given.
pub fn config_path(file: &str) -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("warren").join(file));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/warren").join(file))
}

/// Reads a config file with a size bound (a hostile file cannot make us
/// allocate much).
pub fn read_config(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_CONFIG_FILE {
        bail!(
            "{} is {} bytes; a config is at most {MAX_CONFIG_FILE}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
