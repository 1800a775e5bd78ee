//! The commands besides `serve`: `rotate-admin-token`, `backup`,
//! `restore`, `public-key` and `new-signing-key`. Each says what it did on
//! stdout; a failure is one line on stderr and exit code 1.

use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config::{
    BackupArgs, CopyToPostgresArgs, NewSigningKeyArgs, PublicKeyArgs, RestoreArgs, StorageArgs,
};
use crate::{auth, backup, signing, store};

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
/// place of the old one and prints the token once. Running servers take it
/// at their next look (`auth::ROTATION_CHECK_EVERY`).
pub fn rotate_admin_token(storage: StorageArgs) -> anyhow::Result<()> {
    if std::env::var_os(auth::ADMIN_TOKEN_ENV).is_some() {
        bail!(
            "{0} is set in this environment. A server started with it uses it, not a \
             stored token: change it there. If it only holds the stored token for the \
             `keysmith` CLI, run `env -u {0} keysmith-server rotate-admin-token …`",
            auth::ADMIN_TOKEN_ENV
        );
    }
    let url = storage.database_url()?;
    let (token, hash) = auth::new_token_and_hash();
    match store::sqlite_path(&url) {
        Some(path) if !path.exists() => bail!(
            "no database at {}: the first start of a server on it generates a token",
            path.display()
        ),
        Some(path) => store::sqlite::replace_admin_token_hash_at(path, &hash)
            .with_context(|| format!("storing the new token's hash in {}", path.display()))?,
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?;
            runtime.block_on(async {
                let store = store::postgres::PostgresStore::connect_existing(&url).await?;
                store::Store::replace_admin_token_hash(&store, hash).await?;
                anyhow::Ok(())
            })?;
        }
    }
    println!("New admin token (shown once; only its hash is stored): {token}");
    println!(
        "Servers running on this database take it within {} s; the old token stops working then.",
        auth::ROTATION_CHECK_EVERY.as_secs()
    );
    Ok(())
}

/// `keysmith-server backup --to FILE`.
pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let url = args.storage.database_url()?;
    let Some(db) = store::sqlite_path(&url) else {
        bail!(
            "backup copies a SQLite database; for PostgreSQL use pg_dump \
             (e.g. pg_dump --format=custom --file=FILE DATABASE_URL, the URL without \
             Keysmith's pool_size, which pg_dump does not know)"
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
    let url = args.storage.database_url()?;
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
    eprintln!(
        "note: a generated admin token is the one stored in the backup; if one was \
         rotated after the backup was taken, the older token works again: run \
         `keysmith-server rotate-admin-token` before starting the server if it must not"
    );
    Ok(())
}

/// `keysmith-server copy-to-postgres --to URL`.
pub fn copy_to_postgres(args: CopyToPostgresArgs) -> anyhow::Result<()> {
    let db = args
        .from
        .clone()
        .unwrap_or_else(|| args.data_dir.join("keysmith.db"));
    let db = db.as_path();
    let to = &args.to.0;
    if store::sqlite_path(to).is_some() {
        bail!("--to: give a postgres://user:password@host:port/db URL");
    }
    eprintln!(
        "copying {} into the {} …",
        db.display(),
        store::postgres::describe(to)
    );
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let copied = runtime.block_on(store::copy::sqlite_to_postgres(db, to))?;
    let count = |name| {
        copied
            .tables
            .iter()
            .find(|(table, _)| *table == name)
            .map_or(0, |(_, rows)| *rows)
    };
    println!(
        "copied {} licenses, {} plans, {} usage records and {} webhooks in {:.1} s",
        count("licenses"),
        count("plans"),
        count("usage"),
        count("webhooks"),
        started.elapsed().as_secs_f64()
    );
    println!(
        "next: start the servers with --database set to that URL and the signing key {} \
         (--signing-key); keep {} as a backup, out of the data dir",
        args.data_dir.join("signing.key").display(),
        db.display()
    );
    if copied.admin_token {
        println!("the generated admin token came along: it works on PostgreSQL as before");
    }
    Ok(())
}

/// `keysmith-server public-key`: the public key of the key file a server
/// would sign with.
pub fn public_key(args: PublicKeyArgs) -> anyhow::Result<()> {
    let path = args.signing_key_path();
    let key = signing::load(&path)?;
    print_public_key(&key.verifying_key(), args.json);
    Ok(())
}

/// `keysmith-server new-signing-key --to FILE`: the next key of a rotation.
pub fn new_signing_key(args: NewSigningKeyArgs) -> anyhow::Result<()> {
    let key = signing::create_new(&args.to)?;
    if !args.json {
        println!(
            "Created a new signing key in {} (mode 0600).",
            args.to.display()
        );
    }
    print_public_key(&key.verifying_key(), args.json);
    eprintln!(
        "Next: ship this public key in your app beside the current one (the SDK's \
         public_key takes a comma-separated list); once that release is out, restart \
         the servers with --signing-key {} (KEYSMITH_SIGNING_KEY).",
        args.to.display()
    );
    Ok(())
}

fn print_public_key(key: &ed25519_dalek::VerifyingKey, json: bool) {
    let shown = signing::public_key_json(key);
    if json {
        println!("{shown}");
    } else {
        println!("public key: {}", shown["public_key"].as_str().unwrap_or(""));
        println!("key id:     {}", shown["key_id"].as_str().unwrap_or(""));
    }
}
