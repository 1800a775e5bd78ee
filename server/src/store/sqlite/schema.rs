//! The SQLite schema: the versioned migrations (`PRAGMA user_version`
//! counts those applied) and the SQL that keeps a license's first seats in
//! its row.

use rusqlite::Connection;

use super::{Result, StoreError};

/// The SQL value of the license `$seq`'s `seats` column: its seats as a
/// JSON array of `"d:<domain>"` and `"m:<fingerprint>"` (in no order), or
/// NULL past 16 seats or 1,024 characters, where the seat tables are read
/// instead.
macro_rules! kept_seats {
    ($seq:literal) => {
        concat!(
            "(SELECT CASE WHEN COUNT(*) <= 16 AND COALESCE(SUM(length(v)), 0) <= 1024 \
             THEN json_group_array(v) END FROM \
             (SELECT 'd:' || domain AS v FROM license_domains WHERE license_seq = ",
            $seq,
            " UNION ALL SELECT 'm:' || fingerprint FROM license_machines WHERE license_seq = ",
            $seq,
            "))"
        )
    };
}

/// A trigger that sets `seats` again when a seat row of the license
/// `$seq` is inserted or deleted.
/// `kept_seats!` reading at most one row past the limit: the count only
/// has to tell "more than 16", and counting every seat made each new seat
/// of a license with tens of thousands (an unlimited plan) cost a scan.
macro_rules! kept_seats_bounded {
    ($seq:literal) => {
        concat!(
            "(SELECT CASE WHEN COUNT(*) <= 16 AND COALESCE(SUM(length(v)), 0) <= 1024 \
             THEN json_group_array(v) END FROM \
             (SELECT 'd:' || domain AS v FROM license_domains WHERE license_seq = ",
            $seq,
            " UNION ALL SELECT 'm:' || fingerprint FROM license_machines WHERE license_seq = ",
            $seq,
            " LIMIT 17))"
        )
    };
}

macro_rules! bounded_seats_trigger {
    ($name:literal, $event:literal, $table:literal, $seq:literal) => {
        concat!(
            "DROP TRIGGER ",
            $name,
            ";\nCREATE TRIGGER ",
            $name,
            " AFTER ",
            $event,
            " ON ",
            $table,
            " BEGIN UPDATE licenses SET seats = ",
            kept_seats_bounded!($seq),
            " WHERE seq = ",
            $seq,
            "; END;\n"
        )
    };
}

macro_rules! seats_trigger {
    ($name:literal, $event:literal, $table:literal, $seq:literal) => {
        concat!(
            "CREATE TRIGGER ",
            $name,
            " AFTER ",
            $event,
            " ON ",
            $table,
            " BEGIN UPDATE licenses SET seats = ",
            kept_seats!($seq),
            " WHERE seq = ",
            $seq,
            "; END;\n"
        )
    };
}

/// Versioned migrations; `PRAGMA user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    features TEXT NOT NULL,
    max_domains INTEGER,
    max_machines INTEGER,
    duration_days INTEGER,
    offline_grace_days INTEGER NOT NULL
);
CREATE TABLE licenses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    plan TEXT NOT NULL REFERENCES plans(name),
    customer_email TEXT NOT NULL,
    max_domains INTEGER,
    max_machines INTEGER,
    metadata TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_validated_at INTEGER,
    validation_count INTEGER NOT NULL DEFAULT 0,
    activated_at INTEGER
);
CREATE INDEX licenses_by_status ON licenses(status, seq);
CREATE INDEX licenses_by_plan ON licenses(plan, seq);
CREATE INDEX licenses_by_email ON licenses(customer_email COLLATE NOCASE, seq);
CREATE INDEX licenses_due ON licenses(expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;
CREATE TABLE license_domains (
    license_seq INTEGER NOT NULL REFERENCES licenses(seq),
    domain TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (license_seq, domain)
) WITHOUT ROWID;
CREATE TABLE license_machines (
    license_seq INTEGER NOT NULL REFERENCES licenses(seq),
    fingerprint TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (license_seq, fingerprint)
) WITHOUT ROWID;
CREATE TABLE usage (
    seq INTEGER PRIMARY KEY,
    license_seq INTEGER NOT NULL REFERENCES licenses(seq),
    at INTEGER NOT NULL,
    code TEXT NOT NULL,
    domain TEXT,
    fingerprint TEXT,
    ip TEXT,
    user_agent TEXT,
    country TEXT
);
CREATE INDEX usage_by_license ON usage(license_seq, seq);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    license_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    data TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE webhooks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq INTEGER NOT NULL REFERENCES events(seq),
    webhook_seq INTEGER NOT NULL REFERENCES webhooks(seq) ON DELETE CASCADE,
    license_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_ms INTEGER,
    next_attempt_ms INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (event_seq, webhook_seq)
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_ms) WHERE state = 'pending';
CREATE INDEX deliveries_in_order ON deliveries(webhook_seq, license_id, seq) WHERE state = 'pending';
CREATE TABLE delivery_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_seq INTEGER NOT NULL REFERENCES deliveries(seq) ON DELETE CASCADE,
    webhook_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX attempts_by_webhook ON delivery_attempts(webhook_seq, seq);
"#,
    // Validation counters leave the (wide) license row: a validation only
    // appends its usage row, and the writer folds the rows past
    // `usage_folded` into the narrow `license_counters` every
    // `FOLD_EVERY`. A read adds the rows not folded yet. (Replaced by a
    // count kept as the journal is copied in, in a later step.)
    // The watermark relies on usage rows never being deleted: a new row's
    // `seq` (rowid) is then always above every earlier one.
    r#"
CREATE TABLE license_counters (
    license_seq INTEGER PRIMARY KEY REFERENCES licenses(seq),
    validations INTEGER NOT NULL,
    last_validated_at INTEGER
);
INSERT INTO license_counters
    SELECT seq, validation_count, last_validated_at FROM licenses
    WHERE validation_count > 0 OR last_validated_at IS NOT NULL;
CREATE TABLE usage_folded (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    through_seq INTEGER NOT NULL
);
INSERT INTO usage_folded VALUES (1, COALESCE((SELECT MAX(seq) FROM usage), 0));
ALTER TABLE licenses DROP COLUMN validation_count;
ALTER TABLE licenses DROP COLUMN last_validated_at;
"#,
    // How far the usage journal (`journal`) has been copied into `usage`.
    r#"
CREATE TABLE usage_journal (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    ingested_through INTEGER NOT NULL
);
INSERT INTO usage_journal VALUES (1, 0);
"#,
    // Everything a validation reads of its license, by key: one B-tree
    // descent instead of the key index's and then the table's.
    r#"
CREATE INDEX licenses_validate ON licenses
    (key, seq, id, status, plan, max_domains, max_machines, expires_at, activated_at);
"#,
    // The seats a license holds, kept in its row and in the covering index
    // (`seats`, see `KEPT_SEATS`), so that a validation reads one index
    // entry and not also the seat tables. Triggers keep the column in step
    // with the tables in every transaction that changes them.
    concat!(
        r#"
DROP INDEX licenses_validate;
ALTER TABLE licenses ADD COLUMN seats TEXT DEFAULT '[]';
UPDATE licenses SET seats = "#,
        kept_seats!("licenses.seq"),
        r#"
WHERE seq IN (SELECT license_seq FROM license_domains UNION SELECT license_seq FROM license_machines);
CREATE INDEX licenses_validate ON licenses
    (key, seq, id, status, plan, max_domains, max_machines, expires_at, activated_at, seats);
"#,
        seats_trigger!(
            "seats_domain_taken",
            "INSERT",
            "license_domains",
            "NEW.license_seq"
        ),
        seats_trigger!(
            "seats_domain_freed",
            "DELETE",
            "license_domains",
            "OLD.license_seq"
        ),
        seats_trigger!(
            "seats_machine_taken",
            "INSERT",
            "license_machines",
            "NEW.license_seq"
        ),
        seats_trigger!(
            "seats_machine_freed",
            "DELETE",
            "license_machines",
            "OLD.license_seq"
        ),
    ),
    // Webhook retention (`prune_events`) finds old events by time, and
    // deleting a delivery deletes its attempts (ON DELETE CASCADE) by
    // `delivery_seq`: both read an index rather than the whole table.
    r#"
CREATE INDEX events_by_time ON events(created_at);
CREATE INDEX attempts_by_delivery ON delivery_attempts(delivery_seq);
"#,
    // No change to the tables: the usage journal's files now start with a
    // header and `ingested_through` counts offsets that never go back
    // (`journal`). A server from before would misread both, so this step
    // makes it refuse the database instead.
    "UPDATE usage_journal SET ingested_through = ingested_through;",
    // A license's usage rows are chained newest to oldest (`prev_seq`),
    // from its counters row (`last_seq`), instead of indexed by license:
    // at 1M licenses the index took about one random page write per
    // validation (docs/performance.md). The writer now updates the
    // counters as it copies the journal in (`UsageCopy`), so the rows not
    // folded yet, and their watermark, are gone; the fold of those left
    // comes first.
    r#"
ALTER TABLE usage ADD COLUMN prev_seq INTEGER;
ALTER TABLE license_counters ADD COLUMN last_seq INTEGER;
INSERT INTO license_counters (license_seq, validations, last_validated_at)
    SELECT license_seq, n, at FROM
        (SELECT license_seq, COUNT(*) AS n, at, MAX(seq) FROM usage
         WHERE seq > (SELECT through_seq FROM usage_folded) GROUP BY license_seq)
    WHERE true
    ON CONFLICT (license_seq) DO UPDATE SET
        validations = validations + excluded.validations,
        last_validated_at = excluded.last_validated_at;
UPDATE usage SET prev_seq = chained.prev FROM
    (SELECT seq, LAG(seq) OVER (PARTITION BY license_seq ORDER BY seq) AS prev FROM usage) AS chained
    WHERE usage.seq = chained.seq AND chained.prev IS NOT NULL;
UPDATE license_counters SET last_seq =
    (SELECT MAX(seq) FROM usage WHERE usage.license_seq = license_counters.license_seq);
DROP INDEX IF EXISTS usage_by_license;
DROP TABLE usage_folded;
"#,
    concat!(
        bounded_seats_trigger!(
            "seats_domain_taken",
            "INSERT",
            "license_domains",
            "NEW.license_seq"
        ),
        bounded_seats_trigger!(
            "seats_domain_freed",
            "DELETE",
            "license_domains",
            "OLD.license_seq"
        ),
        bounded_seats_trigger!(
            "seats_machine_taken",
            "INSERT",
            "license_machines",
            "NEW.license_seq"
        ),
        bounded_seats_trigger!(
            "seats_machine_freed",
            "DELETE",
            "license_machines",
            "OLD.license_seq"
        ),
    ),
];

/// At most this many seats of a license are kept in its row (`seats`);
/// past that, the column is NULL and a validation reads the seat tables.
/// `kept_seats!` has the number (and the byte limit) in its SQL.
#[cfg(test)]
pub(super) const KEPT_SEATS: usize = 16;

/// Applies the migrations this database has not had yet, one transaction
/// each; refuses a database newer than this server.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Storage(format!(
            "the database is at schema version {applied}, newer than this server knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        // Some rewrite every license: seconds at 1M licenses, so say so.
        if applied > 0 {
            tracing::info!(
                version = i + 1,
                "migrating the database (once; may take a while)"
            );
        }
        let started = std::time::Instant::now();
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        if applied > 0 {
            let ms = started.elapsed().as_millis() as u64;
            tracing::info!(version = i + 1, ms, "database migrated");
        }
    }
    Ok(())
}
