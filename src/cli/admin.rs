//! `warren admin --data DIR …`: the local adapter over [`crate::admin`]:
//! parse → into_request → run → commit → render, against the relay's
//! database.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

pub use crate::admin::AdminArgs;
use crate::admin::{self, AdminCommand, Caller, Text};
use crate::render::print_json;
use crate::ssh::keys::{self, Fingerprint};
use crate::store::Store;

pub async fn run(a: AdminArgs) -> Result<ExitCode> {
    let data = a.data.clone().unwrap_or_default();
    if let AdminCommand::Migrate(m) = &a.command {
        return admin::migrate::run(&data, m);
    }
    if a.database.is_none() && !data.join(crate::store::DB_FILE).exists() {
        anyhow::bail!(
            "no Warren database in {} (start `warren relay --data {}` once, or check --data)",
            data.display(),
            data.display()
        );
    }
    if let AdminCommand::HostKey { json } = a.command {
        return host_key(&data, json);
    }
    let (request, format) = a.command.into_request()?;
    let store = Store::open_any(&data, a.database.as_deref())?;
    let caller = Caller::Local { data: &data };
    let outcome = admin::run(&store, &caller, request).await?;
    admin::commit(&store, &caller, &outcome).await?;
    let Text { out, err } = admin::render(&outcome.reply, format)?;
    print!("{out}");
    eprint!("{err}");
    Ok(ExitCode::SUCCESS)
}

/// `host-key`: locally, `--json` adds the public key itself.
fn host_key(data: &Path, json: bool) -> Result<ExitCode> {
    let key = admin::local_host_key(data)?;
    let fp = keys::fingerprint(key.public_key());
    if json {
        #[derive(Serialize)]
        struct HostKey {
            fingerprint: Fingerprint,
            public_key: String,
        }
        let public_key = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        print_json(&HostKey {
            fingerprint: fp,
            public_key,
        })?;
    } else {
        println!("{fp}");
    }
    Ok(ExitCode::SUCCESS)
}
