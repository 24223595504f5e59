//! Raw SQLite with the store's own schema and connection settings, and nothing else: the
//! baseline `tidings bench` measures ingest against.
//!
//! It exists so that the baseline cannot drift from the real store: the file is created by
//! the same migrations and opened with the same pragmas (WAL, `synchronous=FULL`), and rows
//! land in the same `events` table with all its indexes. What it leaves out is everything
//! the store adds on top: HTTP, validation, the writer thread, idempotency and workspace
//! lookups, savepoints. Rows carry the same index keys as the store's (computing them is
//! part of writing a row of this schema). Not for production use.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};
use tidings_domain::NewEvent;

use super::events::{INSERT_EVENT, KeyEntries, insert_row, record_event_second};
use super::index_keys::EventKeys;
use super::{open_connection, schema};
use crate::error::{Context, StoreError};

/// A bare database file with the store's schema, written one plain transaction at a time.
pub struct RawSqliteBaseline {
    conn: Connection,
    last_seq: u64,
}

impl RawSqliteBaseline {
    /// Creates (or opens) the database file at `path` and applies the store's migrations.
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let mut conn = open_connection(path)?;
        schema::migrate(&mut conn)?;
        let last_seq: i64 = conn
            .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
            .context("reading the last event number")?;
        Ok(Self {
            conn,
            last_seq: last_seq as u64,
        })
    }

    /// Inserts `events` in one transaction (one fsync at commit), numbering them after the
    /// last row and stamping them `created_at` (unix seconds). No checks of any kind.
    pub fn insert_transaction(
        &mut self,
        events: &[NewEvent],
        created_at: i64,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a baseline transaction")?;
        {
            let mut insert = tx
                .prepare_cached(INSERT_EVENT)
                .context("preparing the baseline insert")?;
            let mut entries = KeyEntries::default();
            for (i, e) in events.iter().enumerate() {
                let seq = self.last_seq + 1 + i as u64;
                insert_row(&mut insert, seq, e, created_at)?;
                entries.add(seq, &EventKeys::of(e, seq));
            }
            entries.flush(&tx)?;
            // Indexed as they go in: the index tail stays empty.
            tx.execute(
                "UPDATE indexed_through SET seq = ?1",
                [(self.last_seq + events.len() as u64) as i64],
            )
            .context("recording how far the baseline is indexed")?;
        }
        if !events.is_empty() {
            // As the store's writer does once per group: time bounds find these rows.
            record_event_second(&tx, created_at, self.last_seq + 1)?;
        }
        tx.commit().context("committing a baseline transaction")?;
        self.last_seq += events.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tidings_domain::{Catalog, EventFilter, IngestFormat, Order, Tenant, parse_ingest_body};

    use super::*;
    use crate::sqlite::{DATABASE_FILE, SqliteStore};
    use crate::{PageRequest, Store};

    /// The baseline writes rows the real store reads back: same schema, same columns.
    #[tokio::test]
    async fn baseline_rows_are_readable_by_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let body = br#"{"events": [
            {"type": "invoice.paid", "organization_id": "ORG-26-090500",
             "workspace_id": "WS-26-000021", "actor": {"type": "system", "id": "billing"},
             "subject": {"type": "invoice", "id": "INV-26-000001"}, "payload": {"amount": 1}},
            {"type": "task.created", "organization_id": "ORG-26-090500",
             "actor": {"type": "user", "id": "USR-26-000001"},
             "subject": {"type": "task", "id": "TSK-26-000001"}, "payload": {},
             "idempotency_key": "k1"}]}"#;
        let events = parse_ingest_body(body, IngestFormat::Json, &Catalog::builtin()).unwrap();
        let mut baseline = RawSqliteBaseline::create(&dir.path().join(DATABASE_FILE)).unwrap();
        baseline.insert_transaction(&events, 1_776_153_600).unwrap();
        baseline
            .insert_transaction(&events[..1], 1_776_153_601)
            .unwrap();
        drop(baseline);

        let store = SqliteStore::open(dir.path()).unwrap();
        let filter = EventFilter {
            organization_id: Some("ORG-26-090500".parse().unwrap()),
            ..EventFilter::default()
        };
        let page = store
            .list_events(
                &Tenant::Platform,
                &filter,
                PageRequest {
                    limit: 10,
                    order: Order::Asc,
                    after: None,
                },
            )
            .await
            .unwrap();
        let ids: Vec<String> = page.items.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["EVT-26-000001", "EVT-26-000002", "EVT-26-000003"]);
        assert_eq!(page.items[1].event_type.as_str(), "task.created");
    }
}
