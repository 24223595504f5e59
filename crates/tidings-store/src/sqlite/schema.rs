//! Versioned schema migrations for the SQLite store. A migration, once released, is never
//! edited: changes go in a new entry.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Context, StoreError};

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- One row per ID prefix: the last number minted. Numbers are never reused, even after the
-- retention sweep has deleted the newest rows.
CREATE TABLE id_sequences (
    prefix TEXT PRIMARY KEY,
    last   INTEGER NOT NULL
) WITHOUT ROWID;

-- seq is the event number (EVT-YY-<seq>); created_at is unix seconds and never decreases
-- with seq, which lets time bounds become seq bounds.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY,
    org             TEXT NOT NULL,
    workspace       TEXT,
    type            TEXT NOT NULL,
    actor_type      TEXT NOT NULL,
    actor_id        TEXT NOT NULL,
    subject_type    TEXT NOT NULL,
    subject_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    idempotency_key TEXT
);
CREATE INDEX events_org ON events (org, seq);
CREATE INDEX events_org_type ON events (org, type, seq);
CREATE INDEX events_org_subject ON events (org, subject_id, seq);
CREATE INDEX events_org_actor ON events (org, actor_id, seq);
CREATE INDEX events_workspace ON events (workspace, seq) WHERE workspace IS NOT NULL;
CREATE INDEX events_created_at ON events (created_at);
CREATE UNIQUE INDEX events_idempotency ON events (org, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- A workspace belongs to exactly one organization, learnt from the first event naming it.
CREATE TABLE workspaces (
    workspace TEXT PRIMARY KEY,
    org       TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE api_keys (
    seq         INTEGER PRIMARY KEY,
    secret_hash BLOB NOT NULL UNIQUE,
    org         TEXT,
    scopes      TEXT NOT NULL,
    rate_limit  INTEGER,
    description TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
"#,
    ),
    (
        2,
        r#"
-- Webhooks. event_types holds the patterns comma-separated. Fan-out gives a webhook only
-- events numbered above start_after_seq (set when it becomes active).
CREATE TABLE webhooks (
    seq             INTEGER PRIMARY KEY,
    org             TEXT NOT NULL,
    workspace       TEXT,
    url             TEXT NOT NULL,
    event_types     TEXT NOT NULL,
    description     TEXT,
    status          TEXT NOT NULL,
    disabled_reason TEXT,
    start_after_seq INTEGER NOT NULL DEFAULT 0,
    failing_since   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (org, seq);
CREATE INDEX webhooks_active ON webhooks (status) WHERE status = 'active';

-- Live signing secrets; a rotated-out one carries expires_at.
CREATE TABLE webhook_secrets (
    webhook_seq INTEGER NOT NULL REFERENCES webhooks (seq) ON DELETE CASCADE,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    PRIMARY KEY (webhook_seq, secret)
) WITHOUT ROWID;

-- Times in milliseconds where they schedule work (next_attempt_at, lease_until).
CREATE TABLE deliveries (
    seq              INTEGER PRIMARY KEY,
    webhook_seq      INTEGER NOT NULL REFERENCES webhooks (seq) ON DELETE CASCADE,
    event_seq        INTEGER,
    event_year       INTEGER,
    event_type       TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    next_trigger     TEXT NOT NULL,
    final_on_failure INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_webhook ON deliveries (webhook_seq, seq);
CREATE INDEX deliveries_created_at ON deliveries (created_at);

CREATE TABLE attempts (
    delivery_seq  INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    trigger       TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,
    PRIMARY KEY (delivery_seq, number)
) WITHOUT ROWID;

-- How far fan-out has read the event log.
CREATE TABLE fanout_cursor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_seq INTEGER NOT NULL
);
INSERT INTO fanout_cursor (id, last_event_seq) SELECT 1, coalesce(max(seq), 0) FROM events;
"#,
    ),
    (
        3,
        r#"
-- The audit log. chain is the organization, or 'platform' for keys without one; each
-- record's hash covers its predecessor's hash and its own canonical JSON.
CREATE TABLE audit_records (
    seq           INTEGER PRIMARY KEY,
    chain         TEXT NOT NULL,
    org           TEXT,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    request_id    TEXT,
    source_ip     TEXT,
    user_agent    TEXT,
    changes       TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    prev_hash     BLOB NOT NULL,
    hash          BLOB NOT NULL
);
CREATE INDEX audit_chain ON audit_records (chain, seq);
CREATE INDEX audit_created_at ON audit_records (created_at);

-- Where a chain starts after retention removed its oldest records.
CREATE TABLE audit_checkpoints (
    chain      TEXT PRIMARY KEY,
    first_seq  INTEGER NOT NULL,
    prev_hash  BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    ),
    (
        4,
        r#"
-- Due deliveries are found per endpoint, so that one endpoint's backlog (a dead endpoint
-- owing thousands) is never walked while its requests are all in flight.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_pending ON deliveries (webhook_seq, next_attempt_at)
    WHERE status = 'pending';
"#,
    ),
];

/// Applies every migration newer than the database, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .context("creating the migrations table")?;
    let current: i64 = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()
        .context("reading the schema version")?
        .flatten()
        .unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context("starting a migration")?;
        // Another process may have migrated while we waited for the lock.
        let done: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)",
                [version],
                |r| r.get(0),
            )
            .context("checking a migration")?;
        if !done {
            tx.execute_batch(sql).context("applying a migration")?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, unixepoch())",
                [version],
            )
            .context("recording a migration")?;
            tracing::info!(version, "applied schema migration");
        }
        tx.commit().context("committing a migration")?;
    }
    Ok(())
}
