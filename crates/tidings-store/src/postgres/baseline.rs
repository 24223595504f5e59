//! Raw PostgreSQL with the store's own schema and nothing else: the baseline `tidings bench
//! --database-url` measures ingest against.
//!
//! It exists so that the baseline cannot drift from the real store: the database is set up
//! by the same migrations, today's daily partitions are created the same way, and rows land
//! in the same partitioned `events` table with all its indexes, through the same kind of
//! statement the store uses (one `INSERT … SELECT FROM unnest(…)`). What it leaves out is
//! everything the store adds on top: HTTP, validation, the writer thread and its advisory
//! lock, the event clock and ID sequence, workspace and idempotency lookups, the idempotency
//! table, audit records, savepoints. Not for production use.
//!
//! The helpers [`create_database`] and [`drop_database`] make and remove the scratch
//! databases of the bench. Everything here is blocking: call it off the async runtime, and
//! do not drop a [`RawPostgresBaseline`] on an async worker either.

use chrono::Utc;
use postgres::Client;
use tidings_domain::NewEvent;

use super::events::{INSERT_EVENTS, insert_rows};
use super::{connect, partitions, schema};
use crate::error::{Context, StoreError};

/// A fresh database with the store's schema, written one plain transaction at a time.
pub struct RawPostgresBaseline {
    client: Client,
    last_seq: u64,
}

impl RawPostgresBaseline {
    /// Connects to the (empty) database at `url`, applies the store's migrations and creates
    /// the daily partitions from today on.
    pub fn create(url: &str) -> Result<Self, StoreError> {
        let mut client = connect(url)?;
        schema::migrate(&mut client)?;
        partitions::create_ahead(&mut client, Utc::now().timestamp())?;
        let last_seq: i64 = client
            .query_one("SELECT coalesce(max(seq), 0) FROM events", &[])
            .context("reading the last event number")?
            .get(0);
        Ok(Self {
            client,
            last_seq: last_seq as u64,
        })
    }

    /// Inserts `events` in one transaction with one multi-row statement, numbering them
    /// after the last row and stamping them `created_at` (unix seconds; its day's partition
    /// must exist). No checks of any kind.
    pub fn insert_transaction(
        &mut self,
        events: &[NewEvent],
        created_at: i64,
    ) -> Result<(), StoreError> {
        let first = self.last_seq as i64 + 1;
        let rows: Vec<(i64, &NewEvent)> = (first..).zip(events).collect();
        let mut tx = self
            .client
            .transaction()
            .context("starting a baseline transaction")?;
        insert_rows(&mut tx, INSERT_EVENTS, &rows, created_at)?;
        tx.commit().context("committing a baseline transaction")?;
        self.last_seq += events.len() as u64;
        Ok(())
    }

    /// `pg_database_size` of the baseline's database.
    pub fn size_bytes(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .context("reading the database size")?
            .get(0);
        Ok(n.max(0) as u64)
    }
}

/// Creates the database `name` through the server at `admin_url`. `name` must be a plain
/// identifier (lowercase letters, digits, `_`): it is not quoted.
pub fn create_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    check_name(name)?;
    let mut client = connect(admin_url)?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .context("creating a database")
}

/// Drops the database `name` (if it exists), ending its sessions first.
pub fn drop_database(admin_url: &str, name: &str) -> Result<(), StoreError> {
    check_name(name)?;
    let mut client = connect(admin_url)?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .context("dropping a database")
}

/// Updates the planner's statistics of the database at `url` (what autovacuum does within
/// a minute or so of a bulk load), so that a benchmark right after loading measures the
/// plans a running database uses.
pub fn analyze(url: &str) -> Result<(), StoreError> {
    connect(url)?
        .batch_execute("ANALYZE")
        .context("analyzing a database")
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let plain = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(StoreError::Write(format!(
            "{name:?} is not a plain database name"
        )))
    }
}
