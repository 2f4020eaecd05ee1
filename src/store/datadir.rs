//! The relay's data directory: which file is which.

use std::path::{Path, PathBuf};

/// The relay's host key, in the data directory.
pub const HOST_KEY_FILE: &str = "host_key";

/// Relay setting: the address written into invite tokens.
pub const ADVERTISE_SETTING: &str = "advertise";

pub fn host_key_path(data: &Path) -> PathBuf {
    data.join(HOST_KEY_FILE)
}
