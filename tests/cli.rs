//! The `warren` binary as people use it: admin commands, keygen, config
//! errors. Bad input gets a clear message, a non-zero exit, and changes nothing.

mod common;

use common::cli::blocking::{fails, ok, warren};
use common::cli::{WARREN, p};
use std::process::Command;

#[test]
fn admin_manages_systems_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = p(&data);
    // Only the relay makes the host key and the database; admin refuses a
    // directory without a database, host-key included.
    fails(&["admin", "--data", d, "host-key"], "no Warren database");
    assert!(!data.exists());
    fails(
        &["admin", "--data", d, "system", "ls"],
        "no Warren database",
    );
    // The relay creates the database on first start; so does opening the store.
    warren::store::Store::open(&data).unwrap();
    fails(&["admin", "--data", d, "host-key"], "no relay host key");
    warren::ssh::keys::load_or_create_host_key(&warren::relay::host_key_path(&data)).unwrap();
    let fp = ok(&["admin", "--data", d, "host-key"]);
    assert!(
        fp.trim().starts_with("SHA256:") && fp.trim().len() == 50,
        "{fp}"
    );
    // Stable: the host key is made once.
    assert_eq!(ok(&["admin", "--data", d, "host-key"]), fp);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "host-key", "--json"])).unwrap();
    assert_eq!(json["fingerprint"], fp.trim());

    ok(&["admin", "--data", d, "system", "add", "tau"]);
    fails(
        &["admin", "--data", d, "system", "add", "tau"],
        "already exists",
    );
    fails(
        &["admin", "--data", d, "system", "add", "Tau!"],
        "character",
    );
    assert_eq!(ok(&["admin", "--data", d, "system", "ls"]), "tau\n");

    let key = dir.path().join("dev1");
    ok(&["keygen", p(&key)]);
    fails(&["keygen", p(&key)], "already exists");
    let public = format!("{}.pub", p(&key));
    let add = |role: &str, name: &str| {
        let mut a = vec![
            "admin", "--data", d, "key", "add", "--system", "tau", "--role", role, "--name", name,
            &public,
        ];
        a.push("--json");
        warren(&a.iter().map(|s| &**s).collect::<Vec<_>>())
    };
    assert!(add("device", "dev1").status.success());
    let again = add("controller", "alice");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered as device dev1"));
    fails(
        &[
            "admin", "--data", d, "key", "add", "--system", "nope", "--role", "device", "--name",
            "x", &public,
        ],
        "no system nope",
    );
    fails(
        &[
            "admin", "--data", d, "key", "add", "--system", "tau", "--role", "root", "--name", "x",
            &public,
        ],
        "invalid value 'root'",
    );
    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "ssh-ed25519 AAAAnotakey").unwrap();
    fails(
        &[
            "admin",
            "--data",
            d,
            "key",
            "add",
            "--system",
            "tau",
            "--role",
            "device",
            "--name",
            "dev2",
            p(&garbage),
        ],
        "not an OpenSSH public key",
    );

    let keys: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "key", "ls", "--json"])).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "refused adds changed nothing");
    assert_eq!(keys[0]["role"], "device");
    assert_eq!(keys[0]["name"], "dev1");
    let fp = keys[0]["fingerprint"].as_str().unwrap().to_string();
    let table = ok(&["admin", "--data", d, "key", "ls"]);
    assert!(table.contains(&fp) && table.contains("active"), "{table}");

    ok(&["admin", "--data", d, "key", "revoke", &fp]);
    fails(
        &["admin", "--data", d, "key", "revoke", &fp],
        "already revoked",
    );
    fails(
        &["admin", "--data", d, "key", "revoke", "SHA256:nope"],
        "no key with fingerprint",
    );
    assert!(ok(&["admin", "--data", d, "key", "ls"]).contains("revoked"));
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "ls", "--json"])).unwrap();
    assert_eq!(ls, serde_json::json!([]));
}

#[test]
fn agent_config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    fails(&["agent", "--config", p(&cfg)], "cannot read");
    std::fs::write(&cfg, "relay = \"r:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"k\"\nrelay_host_key = \"x\"\nport = 3\n").unwrap();
    fails(&["agent", "--config", p(&cfg)], "unknown field `port`");
    std::fs::write(&cfg, "relay = \"r:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"missing\"\nrelay_host_key = \"x\"\n").unwrap();
    fails(&["agent", "--config", p(&cfg)], "missing");
}

#[test]
fn proxy_without_settings_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WARREN)
        .args(["proxy", "dev1", "22"])
        .env("XDG_CONFIG_HOME", dir.path())
        .env_remove("WARREN_RELAY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no relay") && err.contains("WARREN_RELAY"),
        "{err}"
    );
}

#[test]
fn a_cluster_relay_refuses_to_serve_the_console_rather_than_lose_its_logins() {
    // Console sessions and API tokens live in the SQLite store only: a relay
    // on a cluster's PostgreSQL must say so at start, before it dials the
    // database (none is running here).
    let dir = tempfile::tempdir().unwrap();
    fails(
        &[
            "relay",
            "--data",
            p(dir.path()),
            "--listen",
            "127.0.0.1:0",
            "--database",
            "postgres://warren@127.0.0.1:1/warren",
            "--http",
            "127.0.0.1:0",
        ],
        "--http with --database",
    );
}
