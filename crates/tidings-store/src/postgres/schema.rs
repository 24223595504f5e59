//! Versioned schema migrations for the PostgreSQL store. A migration, once released, is
//! never edited: changes go in a new entry. The schema follows the SQLite one (same columns,
//! same index intent), with `events` and `deliveries` range-partitioned by day.

use postgres::Client;

use super::writer::WRITE_LOCK;
use crate::error::{Context, StoreError};

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

-- One row per ID prefix: the last number minted. Numbers are minted under the write lock,
-- so they are dense and commit in order.
CREATE TABLE id_sequences (
    prefix text PRIMARY KEY,
    last   bigint NOT NULL
);

-- created_at of the newest event: event times never decrease with the event number, even
-- when the clocks of several processes disagree.
CREATE TABLE event_clock (
    id              integer PRIMARY KEY CHECK (id = 1),
    last_created_at bigint NOT NULL
);
INSERT INTO event_clock VALUES (1, 0);

-- seq is the event number (EVT-YY-<seq>); created_at is unix seconds. One partition per day.
CREATE TABLE events (
    seq          bigint NOT NULL,
    org          text NOT NULL,
    workspace    text,
    type         text COLLATE "C" NOT NULL,
    actor_type   text NOT NULL,
    actor_id     text NOT NULL,
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    payload      text NOT NULL,
    created_at   bigint NOT NULL,
    PRIMARY KEY (seq, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX events_org ON events (org, seq);
CREATE INDEX events_org_type ON events (org, type, seq);
CREATE INDEX events_org_subject ON events (org, subject_id, seq);
CREATE INDEX events_org_actor ON events (org, actor_id, seq);
CREATE INDEX events_workspace ON events (workspace, seq) WHERE workspace IS NOT NULL;

-- Idempotency keys live beside the partitioned log: a unique index on a partitioned table
-- must include the partition key, and a key must be unique across all days.
CREATE TABLE event_idempotency (
    org        text NOT NULL,
    key        text NOT NULL,
    seq        bigint NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (org, key)
);
CREATE INDEX event_idempotency_created_at ON event_idempotency (created_at);

CREATE TABLE workspaces (
    workspace text PRIMARY KEY,
    org       text NOT NULL
);

CREATE TABLE api_keys (
    seq         bigint PRIMARY KEY,
    secret_hash bytea NOT NULL UNIQUE,
    org         text,
    scopes      text NOT NULL,
    rate_limit  bigint,
    description text,
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

CREATE TABLE webhooks (
    seq             bigint PRIMARY KEY,
    org             text NOT NULL,
    workspace       text,
    url             text NOT NULL,
    event_types     text NOT NULL,
    description     text,
    status          text NOT NULL,
    disabled_reason text,
    start_after_seq bigint NOT NULL DEFAULT 0,
    failing_since   bigint,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (org, seq);
CREATE INDEX webhooks_active ON webhooks (status) WHERE status = 'active';

CREATE TABLE webhook_secrets (
    webhook_seq bigint NOT NULL REFERENCES webhooks (seq) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint,
    PRIMARY KEY (webhook_seq, secret)
);

-- Times in milliseconds where they schedule work (next_attempt_at, lease_until). Attempts
-- are kept in the delivery row (a JSON array), so dropping a day's partition drops them too.
CREATE TABLE deliveries (
    seq              bigint NOT NULL,
    webhook_seq      bigint NOT NULL REFERENCES webhooks (seq) ON DELETE CASCADE,
    event_seq        bigint,
    event_year       integer,
    event_type       text NOT NULL,
    status           text NOT NULL,
    attempt_count    integer NOT NULL DEFAULT 0,
    next_attempt_at  bigint,
    next_trigger     text NOT NULL,
    final_on_failure boolean NOT NULL DEFAULT false,
    lease_owner      text,
    lease_until      bigint,
    attempts         jsonb NOT NULL DEFAULT '[]',
    created_at       bigint NOT NULL,
    PRIMARY KEY (seq, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_webhook ON deliveries (webhook_seq, seq);

CREATE TABLE fanout_cursor (
    id             integer PRIMARY KEY CHECK (id = 1),
    last_event_seq bigint NOT NULL
);
INSERT INTO fanout_cursor VALUES (1, 0);

CREATE TABLE audit_records (
    seq           bigint PRIMARY KEY,
    chain         text NOT NULL,
    org           text,
    actor_type    text NOT NULL,
    actor_id      text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    request_id    text,
    source_ip     text,
    user_agent    text,
    changes       text NOT NULL,
    created_at    bigint NOT NULL,
    prev_hash     bytea NOT NULL,
    hash          bytea NOT NULL
);
CREATE INDEX audit_chain ON audit_records (chain, seq);
CREATE INDEX audit_created_at ON audit_records (created_at);

CREATE TABLE audit_checkpoints (
    chain      text PRIMARY KEY,
    first_seq  bigint NOT NULL,
    prev_hash  bytea NOT NULL,
    created_at bigint NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Due deliveries are found per endpoint, so that one endpoint's backlog (a dead endpoint
-- owing thousands) is never walked while its requests are all in flight.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_pending ON deliveries (webhook_seq, next_attempt_at)
    WHERE status = 'pending';
"#,
    ),
    (
        3,
        r#"
-- Time bounds become event-number bounds, as on SQLite: one probe finds the first event at
-- or after a time. Rows arrive in created_at order, so this index only grows at its end.
CREATE INDEX events_created_at ON events (created_at, seq);
"#,
    ),
];

/// Applies every migration newer than the database, each in its own transaction under the
/// write lock, so processes starting together apply each one once.
pub(crate) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    // Under the write lock: concurrent `CREATE TABLE IF NOT EXISTS` can still fail with
    // "already exists" when several processes start at once.
    let mut tx = client
        .transaction()
        .context("starting the migrations table")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .context("taking the write lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    bigint PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .context("creating the migrations table")?;
    tx.commit().context("committing the migrations table")?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for (version, sql) in MIGRATIONS {
        let mut tx = client.transaction().context("starting a migration")?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .context("taking the write lock")?;
        let current: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .context("reading the schema version")?
            .get(0);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        if *version > current {
            tx.batch_execute(sql).context("applying a migration")?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .context("recording a migration")?;
            tracing::info!(version, "applied schema migration");
        }
        tx.commit().context("committing a migration")?;
    }
    Ok(())
}
