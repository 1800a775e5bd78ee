//! The commands besides `serve`: `rotate-admin-token`, `backup` and
//! `restore`. Each says what it did on stdout; a failure is one line on
//! stderr and exit code 1.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::{BackupArgs, RestoreArgs, StorageArgs};
use crate::{auth, backup, store};

/// The exit code of a command's result, its error printed.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keysmith-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `keysmith-server rotate-admin-token`: stores a new admin token's hash in
/// place of the old one and prints the token once.
pub fn rotate_admin_token(storage: StorageArgs) -> anyhow::Result<()> {
    let url = storage.database_url();
    let sqlite = store::sqlite_path(&url);
    if let Some(path) = sqlite.filter(|p| !p.exists()) {
        bail!(
            "no database at {}: the first start of a server on it generates a token",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let token = runtime.block_on(async {
        let store = store::open(&url, store::sqlite::Synchronous::default())
            .await
            .with_context(|| match sqlite {
                Some(_) => "opening the database (on SQLite, stop the server first)",
                None => "opening the database",
            })?;
        auth::AdminAuth::rotate(store.as_ref()).await
    })?;
    println!("New admin token (shown once; only its hash is stored): {token}");
    if sqlite.is_none() {
        println!("Restart every server on this database: each reads the token at start-up.");
    }
    Ok(())
}

/// `keysmith-server backup --to FILE`.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let url = args.storage.database_url();
    let Some(db) = store::sqlite_path(&url) else {
        bail!(
            "backup copies a SQLite database; for PostgreSQL use pg_dump \
             (e.g. pg_dump --format=custom --file=FILE DATABASE_URL)"
        );
    };
    eprintln!("backing up {} to {} …", db.display(), args.to.display());
    let done = backup::backup(db, &args.to)?;
    println!(
        "backed up {} licenses ({:.1} MB) to {} in {:.1} s",
        done.licenses,
        done.bytes as f64 / 1e6,
        args.to.display(),
        done.seconds
    );
    Ok(())
}

/// `keysmith-server restore --from FILE`.
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let url = args.storage.database_url();
    let Some(db) = store::sqlite_path(&url) else {
        bail!("restore replaces a SQLite database; for PostgreSQL use pg_restore");
    };
    let done = backup::restore(&args.from, db)?;
    if let Some(aside) = &done.moved_aside {
        println!("moved the replaced files to {}", aside.display());
    }
    println!(
        "restored {} licenses from {} into {}",
        done.licenses,
        args.from.display(),
        db.display()
    );
    Ok(())
}
