//! Numbered schema migrations. Each runs once, in order; the pending ones
//! run in one exclusive transaction, and `PRAGMA user_version` records how
//! far a database has come. Never edit a released migration: add the next one.

use anyhow::{Result, bail};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: systems, keys, device status.
    "CREATE TABLE systems (
        name    TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE keys (
        fingerprint TEXT PRIMARY KEY,
        system      TEXT NOT NULL REFERENCES systems(name),
        role        TEXT NOT NULL CHECK (role IN ('device', 'controller', 'admin')),
        name        TEXT NOT NULL,
        public_key  TEXT NOT NULL,
        created     INTEGER NOT NULL,
        revoked     INTEGER
    );
    -- A device name belongs to one active key.
    CREATE UNIQUE INDEX keys_device_name ON keys (system, name)
        WHERE role = 'device' AND revoked IS NULL;
    CREATE TABLE devices (
        system    TEXT NOT NULL,
        name      TEXT NOT NULL,
        online    INTEGER NOT NULL DEFAULT 0,
        since     INTEGER,
        last_seen INTEGER,
        address   TEXT,
        ports     TEXT,
        PRIMARY KEY (system, name)
    );",
    // 2: gateways (scope as announced by the agent), networks an
    // admin associated with them, and the targets their listen forwards may reach.
    "CREATE TABLE gateways (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        scope    TEXT NOT NULL DEFAULT '[]',
        ports    TEXT NOT NULL DEFAULT '[]',
        permit   TEXT,
        listens  TEXT NOT NULL DEFAULT '[]',
        created  INTEGER NOT NULL,
        updated  INTEGER NOT NULL,
        UNIQUE (system, name)
    );
    CREATE TABLE gateway_associations (
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        network  TEXT NOT NULL,
        created  INTEGER NOT NULL,
        PRIMARY KEY (system, name, network)
    );
    CREATE TABLE gateway_rules (
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        target   TEXT NOT NULL,
        created  INTEGER NOT NULL,
        PRIMARY KEY (system, name, target)
    );",
    // 3: invites, the audit log, richer device status, how a key was enrolled.
    "CREATE TABLE invites (
        id          TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        system      TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('device', 'controller', 'admin')),
        name        TEXT NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        used        INTEGER,
        used_by     TEXT,
        revoked     INTEGER
    );
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms     INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        result      TEXT NOT NULL,
        system      TEXT,
        key         TEXT,
        fingerprint TEXT,
        device      TEXT,
        target      TEXT,
        bytes_up    INTEGER,
        bytes_down  INTEGER,
        duration_ms INTEGER,
        peer        TEXT,
        detail      TEXT
    );
    CREATE INDEX audit_time ON audit (time_ms);
    CREATE INDEX audit_system ON audit (system, id);
    CREATE TABLE relay_settings (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE keys ADD COLUMN enrolled_via TEXT;
    ALTER TABLE devices ADD COLUMN version TEXT;
    ALTER TABLE devices ADD COLUMN labels TEXT;
    ALTER TABLE devices ADD COLUMN streams INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;",
    // 4: public ports: a relay port that carries to one device port.
    "CREATE TABLE exposures (
        port        INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
        system      TEXT NOT NULL,
        device      TEXT NOT NULL,
        device_port INTEGER NOT NULL CHECK (device_port BETWEEN 1 AND 65535),
        allow_from  TEXT NOT NULL DEFAULT '',
        created     INTEGER NOT NULL
    );",
    // 5: the stable code of a refusal, beside its text in `detail`.
    "ALTER TABLE audit ADD COLUMN reason TEXT;",
    // 6: on-demand devices (woken over MQTT) and the state each last reported.
    "CREATE TABLE on_demand (
        system  TEXT NOT NULL,
        name    TEXT NOT NULL,
        state   TEXT,
        reason  TEXT,
        at      TEXT,
        PRIMARY KEY (system, name)
    );",
    // 7: the web console's one-time login links and sessions, and the HTTP
    // API's bearer tokens (secrets stored as SHA-256 only); indexes for the
    // audit API's device and kind filters.
    "CREATE TABLE web_credentials (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('login', 'session', 'token')),
        secret_hash TEXT NOT NULL,
        system      TEXT,
        role        TEXT NOT NULL CHECK (role IN ('controller', 'admin')),
        who         TEXT NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        used        INTEGER,
        revoked     INTEGER
    );
    CREATE INDEX web_credentials_kind ON web_credentials (kind, created);
    CREATE INDEX audit_device ON audit (device, id);
    CREATE INDEX audit_kind ON audit (kind, id);",
    // 8: bandwidth limits per system (`device` empty) and per device.
    "CREATE TABLE rates (
        system           TEXT NOT NULL,
        device           TEXT NOT NULL DEFAULT '',
        bytes_per_second INTEGER NOT NULL CHECK (bytes_per_second > 0),
        burst            INTEGER NOT NULL CHECK (burst > 0),
        updated          INTEGER NOT NULL,
        PRIMARY KEY (system, device)
    );",
    // 9: labels an admin set on a device (`value` NULL: the agent's label
    // of that key is hidden). They override the agent's labels of the same
    // key and survive its re-registration (`store/labels.rs`).
    "CREATE TABLE device_labels (
        system  TEXT NOT NULL,
        name    TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT,
        updated INTEGER NOT NULL,
        PRIMARY KEY (system, name, key)
    );",
];

/// The schema version this build migrates a database to.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

pub fn migrate(conn: &mut Connection) -> Result<()> {
    // The version is read inside the same exclusive transaction that applies
    // the migrations: processes opening a new database at once (a relay and
    // `warren admin` commands) then take turns, and each one after the first
    // finds the schema current instead of creating the same tables again.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = schema_version();
    if current > known {
        bail!(
            "database schema version {current} is newer than this warren knows ({known}); upgrade warren"
        );
    }
    if current == known {
        return Ok(());
    }
    for sql in MIGRATIONS.iter().skip(current as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}
