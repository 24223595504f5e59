//! Versioned schema migrations for the SQLite store. A migration, once released, is never
//! edited: changes go in a new entry.

use rusqlite::{Connection, OptionalExtension};

use super::index_keys;
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
    (
        5,
        r#"
-- Events are indexed by 64-bit hashes of what queries look up (see index_keys.rs), not by
-- the text: entries a third the size, so each commit rewrites far fewer index pages.
-- Queries compare the text columns as well, so a shared hash never mixes results.
DROP INDEX events_org;
DROP INDEX events_org_type;
DROP INDEX events_org_subject;
DROP INDEX events_org_actor;
DROP INDEX events_workspace;
DROP INDEX events_idempotency;
ALTER TABLE events ADD COLUMN org_key INTEGER;
ALTER TABLE events ADD COLUMN type_key INTEGER;
ALTER TABLE events ADD COLUMN subject_key INTEGER;
ALTER TABLE events ADD COLUMN actor_key INTEGER;
ALTER TABLE events ADD COLUMN workspace_key INTEGER;
ALTER TABLE events ADD COLUMN idempotency_hash INTEGER;
UPDATE events SET
    org_key          = tidings_index_key(org),
    type_key         = tidings_index_key(org, type),
    subject_key      = tidings_index_key(org, subject_id),
    actor_key        = tidings_index_key(org, actor_id),
    workspace_key    = tidings_index_key(workspace),
    idempotency_hash = tidings_index_key(org, idempotency_key);
CREATE INDEX events_by_org ON events (org_key, seq);
CREATE INDEX events_by_type ON events (type_key, seq);
CREATE INDEX events_by_subject ON events (subject_key, seq);
CREATE INDEX events_by_actor ON events (actor_key, seq);
CREATE INDEX events_by_workspace ON events (workspace_key, seq) WHERE workspace_key IS NOT NULL;
-- Not UNIQUE: two keys may share a hash. The writer looks a key up before it inserts.
CREATE INDEX events_by_idempotency ON events (idempotency_hash)
    WHERE idempotency_hash IS NOT NULL;
"#,
    ),
    (
        6,
        r#"
-- Type, subject, actor, workspace and idempotency keys start with the event's epoch
-- (see index_keys.rs), so new entries land in the newest slice of each index instead of
-- anywhere in it. The hashes themselves do not change: the key keeps their low 40 bits.
DROP INDEX events_by_type;
DROP INDEX events_by_subject;
DROP INDEX events_by_actor;
DROP INDEX events_by_workspace;
DROP INDEX events_by_idempotency;
UPDATE events SET
    type_key         = tidings_epoch_key(seq, type_key),
    subject_key      = tidings_epoch_key(seq, subject_key),
    actor_key        = tidings_epoch_key(seq, actor_key),
    workspace_key    = tidings_epoch_key(seq, workspace_key),
    idempotency_hash = tidings_epoch_key(seq, idempotency_hash);
CREATE INDEX events_by_type ON events (type_key, seq);
CREATE INDEX events_by_subject ON events (subject_key, seq);
CREATE INDEX events_by_actor ON events (actor_key, seq);
CREATE INDEX events_by_workspace ON events (workspace_key, seq) WHERE workspace_key IS NOT NULL;
CREATE INDEX events_by_idempotency ON events (idempotency_hash)
    WHERE idempotency_hash IS NOT NULL;
"#,
    ),
    (
        7,
        r#"
-- Time bounds become event numbers through this table instead of an index on
-- events.created_at: one row per second in which events were recorded, with the first
-- event numbered in it (created_at never decreases with seq). The writer adds a row per
-- write group, not an index entry per event. BENCHMARKS.md has the measurement.
CREATE TABLE event_seconds (
    second    INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL
);
INSERT INTO event_seconds (second, first_seq)
    SELECT created_at, min(seq) FROM events GROUP BY created_at;
DROP INDEX events_created_at;
"#,
    ),
    (
        8,
        r#"
-- The event indexes become tables of (key, seq) that the writer fills itself, after each
-- batch's rows and in key order: consecutive entries land on the same pages, which an
-- index SQLite maintains row by row, at random places, cannot do. Keys are unchanged
-- (index_keys.rs); queries join these tables to events by seq. The key columns of events
-- stay in rows stored before this migration and are no longer read or written.
CREATE TABLE event_keys_org (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
CREATE TABLE event_keys_type (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
CREATE TABLE event_keys_subject (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
CREATE TABLE event_keys_actor (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
CREATE TABLE event_keys_workspace (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
CREATE TABLE event_keys_idempotency (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_org (key, seq)
    SELECT org_key, seq FROM events INDEXED BY events_by_org
    WHERE org_key IS NOT NULL ORDER BY org_key, seq;
INSERT INTO event_keys_type (key, seq)
    SELECT type_key, seq FROM events INDEXED BY events_by_type
    WHERE type_key IS NOT NULL ORDER BY type_key, seq;
INSERT INTO event_keys_subject (key, seq)
    SELECT subject_key, seq FROM events INDEXED BY events_by_subject
    WHERE subject_key IS NOT NULL ORDER BY subject_key, seq;
INSERT INTO event_keys_actor (key, seq)
    SELECT actor_key, seq FROM events INDEXED BY events_by_actor
    WHERE actor_key IS NOT NULL ORDER BY actor_key, seq;
INSERT INTO event_keys_workspace (key, seq)
    SELECT workspace_key, seq FROM events INDEXED BY events_by_workspace
    WHERE workspace_key IS NOT NULL ORDER BY workspace_key, seq;
INSERT INTO event_keys_idempotency (key, seq)
    SELECT idempotency_hash, seq FROM events INDEXED BY events_by_idempotency
    WHERE idempotency_hash IS NOT NULL ORDER BY idempotency_hash, seq;
DROP INDEX events_by_org;
DROP INDEX events_by_type;
DROP INDEX events_by_subject;
DROP INDEX events_by_actor;
DROP INDEX events_by_workspace;
DROP INDEX events_by_idempotency;
"#,
    ),
    (
        9,
        r#"
-- The index tables hold entries for every event numbered up to `seq` and for none after
-- it. The writer indexes the newest events in bulk, once enough of them wait (the index
-- tail, events.rs); until then, queries read those rows from `events` directly. Every
-- stored event is indexed already.
CREATE TABLE indexed_through (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    seq  INTEGER NOT NULL
);
INSERT INTO indexed_through (only, seq) VALUES (1, coalesce((SELECT max(seq) FROM events), 0));
"#,
    ),
    (
        10,
        r#"
-- The audit log's own index tail (audit.rs). `audit_chain_keys` replaces the index on
-- (chain, seq): it holds an entry for every record numbered up to
-- `audit_indexed_through.seq` and for none after it; the writer adds the newest records'
-- entries in bulk. `audit_heads` is each chain's newest record, where an append reads the
-- hash it chains to.
CREATE TABLE audit_chain_keys (
    chain TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (chain, seq)
) WITHOUT ROWID;
INSERT INTO audit_chain_keys (chain, seq)
    SELECT chain, seq FROM audit_records INDEXED BY audit_chain ORDER BY chain, seq;
DROP INDEX audit_chain;
CREATE TABLE audit_indexed_through (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    seq  INTEGER NOT NULL
);
INSERT INTO audit_indexed_through (only, seq)
    VALUES (1, coalesce((SELECT max(seq) FROM audit_records), 0));
CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
) WITHOUT ROWID;
INSERT INTO audit_heads (chain, seq, hash)
    SELECT r.chain, r.seq, r.hash FROM audit_records r
    JOIN (SELECT chain, max(seq) AS seq FROM audit_chain_keys GROUP BY chain) h
        ON r.seq = h.seq;
"#,
    ),
    (
        11,
        r#"
-- Epochs of 16,384 events instead of 65,536 (index_keys.rs): the newest slice of each
-- index, which every indexing of the tail rewrites, is a quarter the size. Every entry of
-- the epoch-keyed tables is keyed again: the hash keeps its low 40 bits, the epoch above
-- them is computed anew from the event number.
CREATE TABLE event_keys_type_rekeyed (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_type_rekeyed (key, seq)
    SELECT tidings_epoch_key(seq, key) AS k, seq FROM event_keys_type ORDER BY k, seq;
DROP TABLE event_keys_type;
ALTER TABLE event_keys_type_rekeyed RENAME TO event_keys_type;
CREATE TABLE event_keys_subject_rekeyed (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_subject_rekeyed (key, seq)
    SELECT tidings_epoch_key(seq, key) AS k, seq FROM event_keys_subject ORDER BY k, seq;
DROP TABLE event_keys_subject;
ALTER TABLE event_keys_subject_rekeyed RENAME TO event_keys_subject;
CREATE TABLE event_keys_actor_rekeyed (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_actor_rekeyed (key, seq)
    SELECT tidings_epoch_key(seq, key) AS k, seq FROM event_keys_actor ORDER BY k, seq;
DROP TABLE event_keys_actor;
ALTER TABLE event_keys_actor_rekeyed RENAME TO event_keys_actor;
CREATE TABLE event_keys_workspace_rekeyed (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_workspace_rekeyed (key, seq)
    SELECT tidings_epoch_key(seq, key) AS k, seq FROM event_keys_workspace ORDER BY k, seq;
DROP TABLE event_keys_workspace;
ALTER TABLE event_keys_workspace_rekeyed RENAME TO event_keys_workspace;
CREATE TABLE event_keys_idempotency_rekeyed (key INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)) WITHOUT ROWID;
INSERT INTO event_keys_idempotency_rekeyed (key, seq)
    SELECT tidings_epoch_key(seq, key) AS k, seq FROM event_keys_idempotency ORDER BY k, seq;
DROP TABLE event_keys_idempotency;
ALTER TABLE event_keys_idempotency_rekeyed RENAME TO event_keys_idempotency;
"#,
    ),
];

/// Applies every migration newer than the database, each in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, i64::MAX)
}

/// Applies the migrations newer than the database, up to `target` (tests build old stores).
fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
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
    // Migrations 5, 6 and 11 compute index keys for the rows stored before them.
    index_keys::register_sql_functions(conn)?;
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current && *v <= target)
    {
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
            // They rewrite or read every event's index entries: seconds per million
            // events. A new store has none to say that about.
            if matches!(version, 5..=8 | 11)
                && tx
                    .query_row("SELECT EXISTS(SELECT 1 FROM events)", [], |r| r.get(0))
                    .context("checking for stored events")?
            {
                tracing::info!(
                    version,
                    "rebuilding the event indexes; this takes a while on a large store"
                );
            }
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

#[cfg(test)]
mod tests {
    use rusqlite::params;
    use tidings_domain::{EventFilter, TypePattern};

    use super::*;
    use crate::SystemClock;
    use crate::sqlite::test_support::{ORG, filter, found_by_each, ingest, numbers};
    use crate::sqlite::{DATABASE_FILE, IndexTail, SqliteStore, open_connection};
    use std::sync::Arc;

    /// Events stored before migration 5 (no index keys) are found by every filter after
    /// migrations 5 and 6, in whichever epoch their numbers put them, and their idempotency
    /// keys still hold.
    #[tokio::test]
    async fn events_stored_before_the_index_keys_are_found_after_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            migrate_to(&mut conn, 4).unwrap();
            let old_row = "INSERT INTO events (seq, org, workspace, type, actor_type, actor_id,
                               subject_type, subject_id, payload, created_at, idempotency_key)
                           VALUES (?1, ?2, ?3, ?4, 'user', ?5, 'invoice', ?6, '{}', 1776153600, ?7)";
            for row in [
                (
                    1,
                    ORG,
                    Some("WS-26-000021"),
                    "invoice.paid",
                    "USR-26-000001",
                    "INV-26-000001",
                    Some("k1"),
                ),
                (
                    70_000,
                    ORG,
                    None,
                    "invoice.finalized",
                    "USR-26-000002",
                    "INV-26-000001",
                    None,
                ),
                (
                    200_000,
                    "ORG-26-000101",
                    None,
                    "invoice.paid",
                    "USR-26-000001",
                    "INV-26-000001",
                    Some("k1"),
                ),
            ] {
                conn.execute(
                    old_row,
                    params![row.0, row.1, row.2, row.3, row.4, row.5, row.6],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO id_sequences (prefix, last) VALUES ('EVT', 200000)",
                [],
            )
            .unwrap();
        }

        let store = SqliteStore::open(dir.path()).unwrap();
        let found = found_by_each(
            &store,
            "invoice.paid",
            "INV-26-000001",
            "USR-26-000002",
            "WS-26-000021",
        );
        assert_eq!(
            found.await,
            [
                vec![1, 70_000],
                vec![1],
                vec![1, 70_000],
                vec![70_000],
                vec![1]
            ]
        );

        // k1 was used in this organization before the migration: the first event answers.
        let again = format!(
            r#"{{"type":"invoice.paid","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"invoice","id":"INV-26-000009"}},"payload":{{}},"idempotency_key":"k1"}}"#
        );
        let recorded = ingest(&store, &again).await;
        assert_eq!(recorded[0].id.number, 1);
        assert_eq!(numbers(&store, filter()).await, [1, 70_000]);
    }

    /// Events stored before `event_seconds` (schema 7) are found by time bounds after it:
    /// the migration records each stored second with its first event.
    #[tokio::test]
    async fn time_bounds_find_events_stored_before_event_seconds() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            migrate_to(&mut conn, 6).unwrap();
            // Seconds 100 (events 1, 2), 105 (3) and 200 (4, 6: 5 was never stored).
            for (seq, second) in [(1, 100), (2, 100), (3, 105), (4, 200), (6, 200)] {
                conn.execute(
                    "INSERT INTO events (seq, org, type, actor_type, actor_id, subject_type,
                                         subject_id, payload, created_at, org_key)
                     VALUES (?1, ?2, 'invoice.paid', 'user', 'USR-26-000001', 'invoice',
                             'INV-26-000001', '{}', ?3, ?4)",
                    params![seq, ORG, second, index_keys::index_key(&[ORG])],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO id_sequences (prefix, last) VALUES ('EVT', 6)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let within = |from: Option<i64>, to: Option<i64>| {
            let at = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
            EventFilter {
                range: tidings_domain::TimeRange {
                    from: from.map(at),
                    to: to.map(at),
                },
                ..filter()
            }
        };
        assert_eq!(numbers(&store, within(None, None)).await, [1, 2, 3, 4, 6]);
        assert_eq!(
            numbers(&store, within(Some(100), None)).await,
            [1, 2, 3, 4, 6]
        );
        assert_eq!(numbers(&store, within(Some(101), None)).await, [3, 4, 6]);
        assert_eq!(numbers(&store, within(Some(105), Some(200))).await, [3]);
        assert_eq!(numbers(&store, within(Some(106), None)).await, [4, 6]);
        assert_eq!(numbers(&store, within(None, Some(106))).await, [1, 2, 3]);
        assert!(numbers(&store, within(Some(201), None)).await.is_empty());
        // And the writer keeps recording seconds after the migration: a new event is
        // stamped no earlier than the newest stored one, here the test's wall clock.
        let body = format!(
            r#"{{"type":"invoice.paid","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"invoice","id":"INV-26-000002"}},"payload":{{}}}}"#
        );
        let recorded = ingest(&store, &body).await;
        let second = recorded[0].created_at.timestamp();
        assert_eq!(recorded[0].id.number, 7);
        assert_eq!(numbers(&store, within(Some(201), None)).await, [7]);
        assert_eq!(numbers(&store, within(Some(second), None)).await, [7]);
        assert_eq!(
            numbers(&store, within(None, Some(second))).await,
            [1, 2, 3, 4, 6]
        );
    }

    /// The API resolves `domain.*` against the catalog before it asks the store; a pattern
    /// that reaches the store anyway has no index range of its own and is matched on the
    /// rows of the organization's index, alone or next to exact types.
    #[tokio::test]
    async fn type_patterns_given_to_the_store_are_matched_on_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        for t in [
            "invoice.paid",
            "agent.run.completed",
            "invoice.finalized",
            "user.invited",
        ] {
            ingest(
                &store,
                &format!(
                    r#"{{"type":"{t}","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"invoice","id":"INV-26-000001"}},"payload":{{}}}}"#
                ),
            )
            .await;
        }
        let by = |patterns: &[&str]| EventFilter {
            types: patterns
                .iter()
                .map(|p| TypePattern::parse(p).unwrap())
                .collect(),
            ..filter()
        };
        assert_eq!(numbers(&store, by(&["invoice.*"])).await, [1, 3]);
        assert_eq!(
            numbers(&store, by(&["agent.*", "user.invited"])).await,
            [2, 4]
        );
        assert_eq!(numbers(&store, by(&["agent.run.*"])).await, [2]);
    }

    /// A hash only says where to look: rows whose keys collide are told apart by their
    /// text. Forces collisions by giving other rows the keys of the rows asked for.
    #[tokio::test]
    async fn rows_sharing_an_index_key_are_told_apart_by_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let body = |org: &str, t: &str, actor: &str, subject: &str, ws: &str, key: &str| {
            format!(
                r#"{{"type":"{t}","organization_id":"{org}","workspace_id":"{ws}","actor":{{"type":"user","id":"{actor}"}},"subject":{{"type":"invoice","id":"{subject}"}},"payload":{{}},"idempotency_key":"{key}"}}"#
            )
        };
        for b in [
            body(
                ORG,
                "invoice.paid",
                "USR-26-000001",
                "INV-26-000001",
                "WS-26-000021",
                "a",
            ),
            body(
                ORG,
                "invoice.finalized",
                "USR-26-000002",
                "INV-26-000002",
                "WS-26-000022",
                "b",
            ),
            body(
                "ORG-26-000101",
                "invoice.paid",
                "USR-26-000001",
                "INV-26-000001",
                "WS-26-000031",
                "a",
            ),
        ] {
            ingest(&store, &b).await;
        }
        {
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            // Every entry gets event 2's key, as if every value hashed alike; rows 1 and 3
            // come first under it.
            for table in index_keys::KEY_TABLES {
                conn.execute_batch(&format!(
                    "UPDATE {table} SET key = (SELECT key FROM {table} WHERE seq = 2)"
                ))
                .unwrap();
            }
        }
        let found = found_by_each(
            &store,
            "invoice.finalized",
            "INV-26-000002",
            "USR-26-000002",
            "WS-26-000022",
        );
        assert_eq!(
            found.await,
            [vec![1, 2], vec![2], vec![2], vec![2], vec![2]]
        );

        // Key "b" again: the index finds rows 1, 2 and 3 under its hash; the text picks 2.
        let again = body(
            ORG,
            "invoice.paid",
            "USR-26-000009",
            "INV-26-000009",
            "WS-26-000021",
            "b",
        );
        let recorded = ingest(&store, &again).await;
        assert_eq!(recorded[0].id.number, 2);
    }

    /// Back to schema 9: the audit log indexed by SQLite again. Migration 11 is forgotten
    /// too, so that 10 runs again; 11 then keys the entries again as they already are.
    const UNDO_MIGRATION_10: &str = "
        DROP TABLE audit_chain_keys; DROP TABLE audit_indexed_through; DROP TABLE audit_heads;
        CREATE INDEX audit_chain ON audit_records (chain, seq);
        DELETE FROM schema_migrations WHERE version >= 10;";

    /// Events indexed before schema 9 are its indexed events: the migration starts the
    /// index tail after the newest, so the next group that indexes does not index them
    /// again (a second entry would be refused, and the group with it).
    #[tokio::test]
    async fn events_indexed_before_the_index_tail_are_not_indexed_again() {
        let dir = tempfile::tempdir().unwrap();
        let event = |key: &str| {
            format!(
                r#"{{"type":"invoice.paid","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-1"}},"subject":{{"type":"invoice","id":"INV-1"}},"payload":{{}},"idempotency_key":"{key}"}}"#
            )
        };
        let every_group = IndexTail {
            events: 0,
            idle: None,
        };
        let open =
            || SqliteStore::open_with(dir.path(), Arc::new(SystemClock), every_group).unwrap();
        {
            let store = open();
            for key in ["a", "b", "c"] {
                ingest(&store, &event(key)).await;
            }
        }
        {
            // Back to schema 8, whose writer indexed every event as it went.
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(&format!(
                "{UNDO_MIGRATION_10}
                 DROP TABLE indexed_through; DELETE FROM schema_migrations WHERE version = 9"
            ))
            .unwrap();
        }
        let store = open();
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let through: i64 = conn
            .query_row("SELECT seq FROM indexed_through", [], |r| r.get(0))
            .unwrap();
        assert_eq!(through, 3);
        ingest(&store, &event("d")).await;
        assert_eq!(numbers(&store, filter()).await, [1, 2, 3, 4]);
        assert_eq!(ingest(&store, &event("b")).await[0].id.number, 2);
    }

    /// Entries keyed by epochs of 65,536 events (schema 10) are keyed again by migration 11:
    /// events in three epochs of 16,384 but two of 65,536 are found by every filter, and
    /// an idempotency key stored before it still answers with its event.
    #[tokio::test]
    async fn entries_keyed_by_the_old_epochs_are_found_after_migration_11() {
        const E: u64 = index_keys::EVENTS_PER_EPOCH;
        let dir = tempfile::tempdir().unwrap();
        let event = |key: &str| {
            format!(
                r#"{{"type":"invoice.paid","organization_id":"{ORG}","workspace_id":"WS-26-000021","actor":{{"type":"user","id":"USR-1"}},"subject":{{"type":"invoice","id":"INV-1"}},"payload":{{}},"idempotency_key":"{key}"}}"#
            )
        };
        let every_group = IndexTail {
            events: 0,
            idle: None,
        };
        let open =
            || SqliteStore::open_with(dir.path(), Arc::new(SystemClock), every_group).unwrap();
        let numbered = [1, 3 * E + 1, 5 * E + 1];
        {
            let store = open();
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            for (seq, key) in numbered.iter().zip(["a", "b", "c"]) {
                conn.execute(
                    "INSERT INTO id_sequences (prefix, last) VALUES ('EVT', ?1)
                     ON CONFLICT (prefix) DO UPDATE SET last = excluded.last",
                    [*seq as i64 - 1],
                )
                .unwrap();
                assert_eq!(ingest(&store, &event(key)).await[0].id.number, *seq);
            }
        }
        {
            // Back to schema 10, with the entries keyed as it keyed them.
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            for table in ["type", "subject", "actor", "workspace", "idempotency"] {
                let rekeyed = conn
                    .execute(
                        &format!(
                            "UPDATE event_keys_{table}
                             SET key = ((seq >> 16) << 40) | (key & ((1 << 40) - 1))"
                        ),
                        [],
                    )
                    .unwrap();
                assert_eq!(rekeyed, 3, "{table}");
            }
            conn.execute("DELETE FROM schema_migrations WHERE version = 11", [])
                .unwrap();
        }
        let store = open();
        let found = found_by_each(&store, "invoice.paid", "INV-1", "USR-1", "WS-26-000021");
        assert_eq!(found.await, vec![numbered.to_vec(); 5]);
        assert_eq!(ingest(&store, &event("b")).await[0].id.number, numbered[1]);
    }

    /// Migration 10 indexes the audit records stored before it (their chain entries and
    /// each chain's head), so that lists find them and the next record links to the newest.
    #[tokio::test]
    async fn audit_records_stored_before_schema_10_are_listed_and_chained_to() {
        use crate::Store;
        use crate::audit_types::AuditFilter;
        use crate::sqlite::test_support::audit_pages;
        use tidings_domain::Order;
        use tidings_domain::audit::verify_chain;

        const OTHER: &str = "ORG-26-000777";
        let dir = tempfile::tempdir().unwrap();
        let event = |org: &str| {
            format!(
                r#"{{"type":"invoice.paid","organization_id":"{org}","actor":{{"type":"user","id":"USR-1"}},"subject":{{"type":"invoice","id":"INV-1"}},"payload":{{}}}}"#
            )
        };
        let open = || SqliteStore::open(dir.path()).unwrap();
        {
            let store = open();
            for org in [ORG, OTHER, ORG, ORG, OTHER] {
                ingest(&store, &event(org)).await;
            }
        }
        {
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(UNDO_MIGRATION_10).unwrap();
        }
        let store = open();
        ingest(&store, &event(ORG)).await;

        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM audit_heads"), 2);
        assert_eq!(
            count("SELECT seq FROM audit_heads WHERE chain = 'ORG-26-090500'"),
            6
        );
        assert!(count("SELECT seq FROM audit_indexed_through") >= 5);

        let filter = AuditFilter {
            organization_id: Some(ORG.parse().unwrap()),
            ..AuditFilter::default()
        };
        let listed = audit_pages(&store, &filter, Order::Asc, 2).await;
        let numbers: Vec<u64> = listed.iter().map(|r| r.id.number).collect();
        assert_eq!(numbers, [1, 3, 4, 6]);
        let log = store.audit_log_page(None, 100).await.unwrap();
        for chain in [ORG, OTHER] {
            let records: Vec<_> = log
                .iter()
                .filter(|(c, _)| c == chain)
                .map(|(_, r)| r.clone())
                .collect();
            assert!(verify_chain([0; 32], &records).is_empty(), "{chain}");
        }
    }
}
