//! `warren admin --data DIR migrate --to postgres://…`: copies a single
//! relay's SQLite state into the PostgreSQL database of a cluster, checked
//! row by row and idempotent (a second run copies nothing).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use crate::store::{DB_FILE, Store, postgres};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The PostgreSQL database to copy into (postgres://USER@HOST/DB).
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(data: &Path, m: &MigrateArgs) -> Result<ExitCode> {
    if !postgres::is_postgres_url(&m.to) {
        bail!(
            "--to {:?} is not a PostgreSQL address (postgres://USER@HOST/DB)",
            m.to
        );
    }
    if !data.join(DB_FILE).exists() {
        bail!(
            "no Warren database in {} to migrate (give the relay's --data)",
            data.display()
        );
    }
    let src = Store::open(data)?;
    let dst = Store::open_postgres(&m.to)?;
    let Some(pg) = dst.postgres() else {
        bail!("{} is not a PostgreSQL store", postgres::redact(&m.to));
    };
    eprintln!(
        "copying {} into {} …",
        data.join(DB_FILE).display(),
        postgres::redact(&m.to)
    );
    let report = pg.copy_from(&src)?;
    if m.json {
        crate::render::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![vec!["TABLE".into(), "ROWS".into(), "COPIED NOW".into()]];
    for c in &report {
        rows.push(vec![
            c.table.clone(),
            c.rows.to_string(),
            c.inserted.to_string(),
        ]);
    }
    print!("{}", crate::render::table(&rows));
    println!("checked: every row of the SQLite database is in PostgreSQL with the same values");
    Ok(ExitCode::SUCCESS)
}
