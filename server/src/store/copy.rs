//! `keysmith-server copy-to-postgres`: a SQLite database, whole, into an
//! empty PostgreSQL one — the move from one machine to several.
//!
//! Every table keeps its rows and their sequence numbers (so seats, usage,
//! events and deliveries keep pointing at their licenses and webhooks), in
//! one PostgreSQL transaction: a failed copy leaves the target empty. The
//! SQLite database is opened as a server would (refused while one runs),
//! which folds what the usage journal still holds into `usage` first.

use std::path::Path;

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};
use tokio_postgres::types::ToSql;

use super::postgres::PostgresStore;
use super::sqlite::{SqliteStore, Synchronous};
use super::{LicenseFilter, PageRequest, Store};

/// Rows sent to PostgreSQL in one statement.
const BATCH: usize = 5_000;

/// How a column is carried: SQLite's integer or text, as PostgreSQL wants it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    /// Text in SQLite, `jsonb` in PostgreSQL.
    Json,
    /// 0/1 in SQLite, `boolean` in PostgreSQL.
    Bool,
}

/// One table: what to read from SQLite, column by column in PostgreSQL's
/// names, and whether its `seq` is a PostgreSQL sequence to move on.
struct Table {
    name: &'static str,
    select: &'static str,
    columns: &'static [(&'static str, Kind)],
    serial: bool,
}

/// In the order foreign keys need.
const TABLES: &[Table] = &[
    Table {
        name: "plans",
        select: "SELECT name, features, max_domains, max_machines, duration_days, \
                 offline_grace_days FROM plans",
        columns: &[
            ("name", Kind::Text),
            ("features", Kind::Json),
            ("max_domains", Kind::Int),
            ("max_machines", Kind::Int),
            ("duration_days", Kind::Int),
            ("offline_grace_days", Kind::Int),
        ],
        serial: false,
    },
    Table {
        name: "licenses",
        select: "SELECT l.seq, l.id, l.key, l.status, l.plan, l.customer_email, l.max_domains, \
                 l.max_machines, l.metadata, l.created_at, l.updated_at, l.expires_at, \
                 c.last_validated_at, COALESCE(c.validations, 0), l.activated_at \
                 FROM licenses l LEFT JOIN license_counters c ON c.license_seq = l.seq \
                 ORDER BY l.seq",
        columns: &[
            ("seq", Kind::Int),
            ("id", Kind::Text),
            ("key", Kind::Text),
            ("status", Kind::Text),
            ("plan", Kind::Text),
            ("customer_email", Kind::Text),
            ("max_domains", Kind::Int),
            ("max_machines", Kind::Int),
            ("metadata", Kind::Json),
            ("created_at", Kind::Int),
            ("updated_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("last_validated_at", Kind::Int),
            ("validation_count", Kind::Int),
            ("activated_at", Kind::Int),
        ],
        serial: true,
    },
    Table {
        name: "license_domains",
        select: "SELECT license_seq, domain, added_at FROM license_domains",
        columns: &[
            ("license_seq", Kind::Int),
            ("domain", Kind::Text),
            ("added_at", Kind::Int),
        ],
        serial: false,
    },
    Table {
        name: "license_machines",
        select: "SELECT license_seq, fingerprint, added_at FROM license_machines",
        columns: &[
            ("license_seq", Kind::Int),
            ("fingerprint", Kind::Text),
            ("added_at", Kind::Int),
        ],
        serial: false,
    },
    Table {
        name: "usage",
        select: "SELECT seq, license_seq, at, code, domain, fingerprint, ip, user_agent, country \
                 FROM usage ORDER BY seq",
        columns: &[
            ("seq", Kind::Int),
            ("license_seq", Kind::Int),
            ("at", Kind::Int),
            ("code", Kind::Text),
            ("domain", Kind::Text),
            ("fingerprint", Kind::Text),
            ("ip", Kind::Text),
            ("user_agent", Kind::Text),
            ("country", Kind::Text),
        ],
        serial: true,
    },
    Table {
        name: "webhooks",
        select: "SELECT seq, id, url, events, secret, enabled, created_at FROM webhooks \
                 ORDER BY seq",
        columns: &[
            ("seq", Kind::Int),
            ("id", Kind::Text),
            ("url", Kind::Text),
            ("events", Kind::Json),
            ("secret", Kind::Text),
            ("enabled", Kind::Bool),
            ("created_at", Kind::Int),
        ],
        serial: true,
    },
    Table {
        name: "events",
        select: "SELECT seq, id, type, license_id, created_at, data FROM events ORDER BY seq",
        columns: &[
            ("seq", Kind::Int),
            ("id", Kind::Text),
            ("type", Kind::Text),
            ("license_id", Kind::Text),
            ("created_at", Kind::Int),
            ("data", Kind::Json),
        ],
        serial: true,
    },
    Table {
        name: "deliveries",
        // No lease carries over: the server that held one is stopped.
        select: "SELECT seq, event_seq, webhook_seq, license_id, state, attempts, \
                 first_attempt_ms, next_attempt_ms, 0 FROM deliveries ORDER BY seq",
        columns: &[
            ("seq", Kind::Int),
            ("event_seq", Kind::Int),
            ("webhook_seq", Kind::Int),
            ("license_id", Kind::Text),
            ("state", Kind::Text),
            ("attempts", Kind::Int),
            ("first_attempt_ms", Kind::Int),
            ("next_attempt_ms", Kind::Int),
            ("locked_until_ms", Kind::Int),
        ],
        serial: true,
    },
    Table {
        name: "delivery_attempts",
        select: "SELECT seq, delivery_seq, webhook_seq, attempt, at, status_code, error, \
                 duration_ms FROM delivery_attempts ORDER BY seq",
        columns: &[
            ("seq", Kind::Int),
            ("delivery_seq", Kind::Int),
            ("webhook_seq", Kind::Int),
            ("attempt", Kind::Int),
            ("at", Kind::Int),
            ("status_code", Kind::Int),
            ("error", Kind::Text),
            ("duration_ms", Kind::Int),
        ],
        serial: true,
    },
];

/// A column's values of one batch.
enum Values {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl Values {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Values::Int(v) => v,
            Values::Text(v) => v,
        }
    }
}

/// What was copied: rows per table, in [`TABLES`]' order.
pub struct Copied {
    pub tables: Vec<(&'static str, u64)>,
    pub admin_token: bool,
}

/// Copies the SQLite database at `db` into the empty PostgreSQL database
/// `to` (its schema created if missing), printing progress to stderr.
pub async fn sqlite_to_postgres(db: &Path, to: &str) -> anyhow::Result<Copied> {
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    // Held to the end: no server starts on the database while it is copied.
    let _held = settle(db).await?;
    let from = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    // Every table and count from one snapshot.
    from.execute_batch("BEGIN")?;
    let target = PostgresStore::connect(to).await?;
    let mut client = target.client().await?;
    let tx = client.transaction().await?;
    let used: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM plans) + (SELECT count(*) FROM licenses) \
             + (SELECT count(*) FROM webhooks)",
            &[],
        )
        .await?
        .get(0);
    if used > 0 {
        bail!(
            "the PostgreSQL database already has plans, licenses or webhooks: \
             copy into an empty one"
        );
    }
    let mut tables = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let rows = copy_table(&from, &tx, table).await?;
        let in_sqlite: i64 =
            from.query_row(&format!("SELECT count(*) FROM {}", table.name), [], |r| {
                r.get(0)
            })?;
        anyhow::ensure!(
            in_sqlite == rows as i64,
            "{}: read {rows} rows of {in_sqlite}; nothing was copied",
            table.name
        );
        if table.serial {
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'seq'), \
                     COALESCE((SELECT max(seq) FROM {0}), 0) + 1, false)",
                    table.name
                ),
                &[],
            )
            .await?;
        }
        eprintln!("  {}: {rows} rows", table.name);
        tables.push((table.name, rows));
    }
    let token: Option<String> = from
        .query_row(
            "SELECT v FROM meta WHERE k = 'admin_token_sha256'",
            [],
            |r| r.get(0),
        )
        .ok();
    if let Some(hash) = &token {
        tx.execute(
            "INSERT INTO meta (k, v) VALUES ('admin_token_sha256', $1) \
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[hash],
        )
        .await?;
    }
    tx.commit().await.context("committing the copy")?;
    Ok(Copied {
        tables,
        admin_token: token.is_some(),
    })
}

/// Opens the database as a server would — refused while one runs; the
/// schema brought up to date — and reads through it, which waits for the
/// usage journal's records to be copied into `usage`. The store is
/// returned open: while it is, no server can open the database.
async fn settle(db: &Path) -> anyhow::Result<SqliteStore> {
    let store = SqliteStore::open_with(db, Synchronous::Full)
        .with_context(|| format!("opening {} (is a server running on it?)", db.display()))?;
    let first = PageRequest {
        before: None,
        limit: 1,
    };
    store.list_licenses(LicenseFilter::default(), first).await?;
    Ok(store)
}

/// Copies one table in batches; the number of rows.
async fn copy_table(
    from: &Connection,
    tx: &tokio_postgres::Transaction<'_>,
    table: &Table,
) -> anyhow::Result<u64> {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    let params: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| match kind {
            Kind::Int | Kind::Bool => format!("${}::bigint[]", i + 1),
            Kind::Text | Kind::Json => format!("${}::text[]", i + 1),
        })
        .collect();
    let values: Vec<String> = table
        .columns
        .iter()
        .map(|(name, kind)| match kind {
            Kind::Json => format!("u.{name}::jsonb"),
            Kind::Bool => format!("u.{name} <> 0"),
            Kind::Int | Kind::Text => format!("u.{name}"),
        })
        .collect();
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}) AS u({})",
            table.name,
            names.join(", "),
            values.join(", "),
            params.join(", "),
            names.join(", ")
        ))
        .await
        .with_context(|| format!("preparing the copy of {}", table.name))?;
    let mut statement = from.prepare(table.select)?;
    let mut rows = statement.query([])?;
    let mut batch = empty_batch(table);
    let (mut copied, mut in_batch) = (0u64, 0usize);
    loop {
        let done = match rows.next()? {
            Some(row) => {
                for (i, column) in batch.iter_mut().enumerate() {
                    match column {
                        Values::Int(v) => v.push(row.get(i)?),
                        Values::Text(v) => v.push(row.get(i)?),
                    }
                }
                in_batch += 1;
                false
            }
            None => true,
        };
        if in_batch == BATCH || (done && in_batch > 0) {
            let params: Vec<&(dyn ToSql + Sync)> = batch.iter().map(Values::param).collect();
            tx.execute(&insert, &params)
                .await
                .with_context(|| format!("copying {}", table.name))?;
            copied += in_batch as u64;
            if copied % 100_000 < BATCH as u64 && copied >= 100_000 {
                eprintln!("  {}: {copied} rows …", table.name);
            }
            batch = empty_batch(table);
            in_batch = 0;
        }
        if done {
            return Ok(copied);
        }
    }
}

fn empty_batch(table: &Table) -> Vec<Values> {
    table
        .columns
        .iter()
        .map(|(_, kind)| match kind {
            Kind::Int | Kind::Bool => Values::Int(Vec::with_capacity(BATCH)),
            Kind::Text | Kind::Json => Values::Text(Vec::with_capacity(BATCH)),
        })
        .collect()
}
