//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread fed by a channel; it folds every ingest request
//! waiting at that moment into one transaction (group commit), so concurrent producers share
//! one fsync. `synchronous=FULL` makes a commit survive a power cut, and the 201 is sent only
//! after it. Reads run on a small pool of their own connections, off the async runtime;
//! the key lookup every request makes runs inline, on connections of its own
//! ([`SqliteStore::read_inline`]). A checkpointer thread copies the WAL into the database
//! file, so that the writer rarely has to ([`checkpoint`]).

mod audit;
mod baseline;
mod checkpoint;
mod deliveries;
mod events;
mod idempotency_filter;
mod index_keys;
mod keys;
mod list_query;
mod retention;
mod schema;
#[cfg(test)]
mod test_support;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rand::RngCore;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tidings_domain::audit::{AuditContext, AuditRecord, ChainedRecord};
use tidings_domain::ids::{DeliveryId, WebhookId};
use tidings_domain::webhook::{Delivery, SigningSecret, Webhook};
use tidings_domain::{
    ApiKey, CursorKey, Event, EventFilter, EventId, KeyId, NewApiKey, NewEvent, OrgId, Tenant,
    TimeRange, WorkspaceId,
};
use tokio::sync::oneshot;

use crate::audit_types::AuditFilter;
use crate::clock::{Clock, SystemClock};
use crate::delivery_types::{
    AttemptReport, ClaimRequest, ClaimedDelivery, DeliveryFilter, FanoutReport, NewWebhook,
    WebhookUpdate,
};
use crate::error::{Context, StoreError};
use crate::retention::{RetentionPolicy, SweepReport};
use crate::{Page, PageRequest, Store};
use checkpoint::{CheckpointCounts, CheckpointPolicy, Checkpoints};
use writer::{Job, WriterCtx, WriterSettings};

pub use baseline::RawSqliteBaseline;
pub use events::IndexTail;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "tidings.db";

/// The embedded SQLite store.
pub struct SqliteStore {
    writes: mpsc::Sender<Job>,
    readers: Arc<ReadPool>,
    /// The connections of [`SqliteStore::read_inline`], one per CPU (as many as async
    /// workers may look keys up at once) and at least two; each opened on first use, so
    /// one never needed costs nothing.
    inline_readers: Vec<Mutex<Option<Connection>>>,
    cursor_key: CursorKey,
    clock: Arc<dyn Clock>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(data_dir, Arc::new(SystemClock))
    }

    /// Like [`SqliteStore::open`], with the clock that stamps `created_at`.
    pub fn open_with_clock(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        Self::open_with(data_dir, clock, IndexTail::default())
    }

    /// Like [`SqliteStore::open_with_clock`], with the newest events left unindexed (read
    /// row by row) until `index_tail` says the writer indexes them together.
    pub fn open_with(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        index_tail: IndexTail,
    ) -> Result<Self, StoreError> {
        Self::open_tuned(
            data_dir,
            clock,
            index_tail,
            CheckpointPolicy::default(),
            Arc::default(),
        )
    }

    /// Like [`SqliteStore::open_with`], with the WAL checkpoints' thresholds, and counters
    /// of what they did.
    fn open_tuned(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        index_tail: IndexTail,
        checkpoint_policy: CheckpointPolicy,
        checkpoint_counts: Arc<CheckpointCounts>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let mut conn = open_connection(&path)?;
        schema::migrate(&mut conn)?;
        let cursor_key = load_or_create_cursor_key(&conn)?;
        let checkpoints = Checkpoints::start(&conn, &path, checkpoint_policy, checkpoint_counts)?;
        let (writes, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tidings-sqlite-writer".into())
            .spawn({
                let settings = WriterSettings {
                    clock: Arc::clone(&clock),
                    index_tail,
                    checkpoints,
                };
                move || writer::run(conn, rx, settings)
            })
            .map_err(|source| StoreError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            writes,
            readers: Arc::new(ReadPool {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
            }),
            inline_readers: (0..std::thread::available_parallelism().map_or(2, |n| n.get().max(2)))
                .map(|_| Mutex::new(None))
                .collect(),
            cursor_key,
            clock,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the writer thread, inside the next group commit, in its own
    /// savepoint; returns after the commit. `weight` bounds the group (events for ingest, 1
    /// otherwise).
    async fn write<T: Send + 'static>(
        &self,
        weight: usize,
        work: impl FnOnce(&Connection, &mut WriterCtx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(|reply| Job::new(weight, work, reply)).await
    }

    /// Like [`SqliteStore::write`], without a savepoint: for jobs that refuse (with
    /// `Rejected`) only before they write anything (see [`Job::checked`]).
    async fn write_checked<T: Send + 'static>(
        &self,
        weight: usize,
        work: impl FnOnce(&Connection, &mut WriterCtx<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(|reply| Job::checked(weight, work, reply)).await
    }

    /// Queues the job made by `job` and waits for its answer, sent after the commit.
    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(job(tx)).map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Write("the write group failed before this job ran".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs `f`, a point read of a few microseconds, on the calling thread (an async
    /// worker) with the first of the connections kept for this that is free at once. Every
    /// request looks its key up: handing that read to the blocking pool (a task, a thread
    /// woken and parked again) cost several times the read itself, about a fifth of the
    /// CPU of single-event ingest (BENCHMARKS.md); with one such connection shared by the
    /// workers, lookups still went there often enough to show in a profile (53 samples
    /// against 73 inline; 3 with one per CPU). `None`: not done here (every
    /// connection is in use, or the read failed — these connections never wait for a
    /// lock); the caller reads through [`SqliteStore::read`] instead, which reports any
    /// error.
    fn read_inline<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Option<T> {
        let mut slot = self
            .inline_readers
            .iter()
            .find_map(|slot| slot.try_lock().ok())?;
        if slot.is_none() {
            let conn = open_connection(&self.path).ok()?;
            conn.busy_timeout(Duration::ZERO).ok()?;
            *slot = Some(conn);
        }
        match f(slot.as_ref()?) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::debug!(error = %e, "an inline read failed; reading through the pool");
                None
            }
        }
    }
}

/// The bytes of the database file at `path`'s pages in use (`page_count` times the page
/// size), wherever the newest of them are: in the file, or still only in the WAL. Unlike the
/// file's size it does not depend on how much of the WAL was copied back yet.
pub fn data_size(path: &Path) -> Result<u64, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .context("opening the database file to read its size")?;
    let bytes: i64 = conn
        .query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )
        .context("reading the database's page count")?;
    Ok(bytes.max(0) as u64)
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .context("opening the database file")?;
    // `rarray(?)`: a list bound as one parameter (event queries probing several epochs).
    rusqlite::vtab::array::load_module(&conn).context("loading the rarray module")?;
    // FULL: a commit is on disk before we acknowledge it, even across a power cut.
    // Checkpoints at 32,768 WAL pages (128 MiB) instead of SQLite's 1,000: a page that
    // several commits rewrite (an index page) is copied into the database once per
    // checkpoint, not once per commit. Ingest ran 1.4x faster in the raw measurement
    // (BENCHMARKS.md); the WAL file is truncated back to 128 MiB after each checkpoint.
    // The writer's connection replaces this automatic checkpoint with [`Checkpoints`]
    // (same threshold, copied mostly by a thread of its own).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;
         PRAGMA wal_autocheckpoint = 32768;
         PRAGMA journal_size_limit = 134217728;",
    )
    .context("configuring the connection")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .context("setting the busy timeout")?;
    // The writer alone runs ~50 distinct statements (24 of them index entry inserts, see
    // `KeyEntries`); rusqlite's default cache holds 16, and a statement evicted is parsed
    // again on its next use.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

fn load_or_create_cursor_key(conn: &Connection) -> Result<CursorKey, StoreError> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    // INSERT OR IGNORE keeps the first key if several processes race at first start.
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_key', ?1)",
        [&fresh[..]],
    )
    .context("storing the cursor key")?;
    let stored: Vec<u8> = conn
        .query_row("SELECT value FROM meta WHERE key = 'cursor_key'", [], |r| {
            r.get(0)
        })
        .context("reading the cursor key")?;
    let bytes: [u8; 32] = stored
        .try_into()
        .map_err(|_| StoreError::Corrupt("cursor key has the wrong length".into()))?;
    Ok(CursorKey::new(bytes))
}

/// Reader connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    const MAX_IDLE: usize = 16;

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => open_connection(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::MAX_IDLE
        {
            idle.push(conn);
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        events: Vec<NewEvent>,
        audit: &AuditContext,
    ) -> Result<Vec<Event>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let audit = audit.clone();
        self.write_checked(events.len(), move |conn, ctx| {
            events::ingest(conn, ctx, events, &audit)
        })
        .await
    }

    async fn list_events(
        &self,
        tenant: &Tenant,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<Event>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |conn| events::list_events(conn, &tenant, &filter, page))
            .await
    }

    async fn get_event(&self, tenant: &Tenant, id: EventId) -> Result<Option<Event>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| events::get_event(conn, &tenant, id))
            .await
    }

    async fn create_key(
        &self,
        key: NewApiKey,
        secret_hash: [u8; 32],
        audit: &AuditContext,
    ) -> Result<ApiKey, StoreError> {
        let audit = audit.clone();
        self.write(1, move |conn, ctx| {
            keys::create_key(conn, ctx, key, secret_hash, &audit)
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(keys::list_keys).await
    }

    async fn revoke_key(
        &self,
        id: KeyId,
        audit: &AuditContext,
    ) -> Result<Option<ApiKey>, StoreError> {
        let audit = audit.clone();
        self.write(1, move |conn, ctx| keys::revoke_key(conn, ctx, id, &audit))
            .await
    }

    async fn authenticate(&self, secret_hash: [u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        if let Some(found) = self.read_inline(|conn| keys::active_key_by_hash(conn, &secret_hash)) {
            return Ok(found);
        }
        self.read(move |conn| keys::active_key_by_hash(conn, &secret_hash))
            .await
    }

    async fn workspace_org(&self, workspace: &WorkspaceId) -> Result<Option<OrgId>, StoreError> {
        let ws = workspace.as_str().to_string();
        self.read(move |conn| {
            conn.query_row(
                "SELECT org FROM workspaces WHERE workspace = ?1",
                [ws],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .context("looking up a workspace")?
            .map(|o| {
                o.parse()
                    .map_err(|e| StoreError::Corrupt(format!("workspace org: {e}")))
            })
            .transpose()
        })
        .await
    }

    async fn create_webhook(
        &self,
        webhook: NewWebhook,
        secret: SigningSecret,
        audit: &AuditContext,
    ) -> Result<Webhook, StoreError> {
        let audit = audit.clone();
        self.write(1, move |conn, ctx| {
            webhooks::create(conn, ctx, webhook, secret, &audit)
        })
        .await
    }

    async fn list_webhooks(
        &self,
        tenant: &Tenant,
        organization_id: Option<&OrgId>,
        page: PageRequest,
    ) -> Result<Page<Webhook>, StoreError> {
        let (tenant, org) = (tenant.clone(), organization_id.cloned());
        self.read(move |conn| webhooks::list(conn, &tenant, org.as_ref(), page))
            .await
    }

    async fn get_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> Result<Option<Webhook>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| webhooks::find(conn, &tenant, id))
            .await
    }

    async fn update_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        update: WebhookUpdate,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(1, move |conn, ctx| {
            webhooks::update(conn, ctx, &tenant, id, update, &audit)
        })
        .await
    }

    async fn delete_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(1, move |conn, ctx| {
            webhooks::delete(conn, ctx, &tenant, id, &audit)
        })
        .await
    }

    async fn webhook_secrets(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> Result<Option<Vec<SigningSecret>>, StoreError> {
        let tenant = tenant.clone();
        let now = self.clock.now();
        self.read(move |conn| match webhooks::find(conn, &tenant, id)? {
            Some(_) => webhooks::live_secrets(conn, id.number, now).map(Some),
            None => Ok(None),
        })
        .await
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        secret: SigningSecret,
        overlap: Duration,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(1, move |conn, ctx| {
            webhooks::rotate_secret(conn, ctx, &tenant, id, secret, overlap, &audit)
        })
        .await
    }

    async fn fan_out(&self, max_events: usize) -> Result<FanoutReport, StoreError> {
        self.write(max_events, move |conn, ctx| {
            deliveries::fan_out(conn, ctx, max_events)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        claim: ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.write(claim.limit, move |conn, ctx| {
            deliveries::claim(conn, ctx, claim)
        })
        .await
    }

    async fn record_attempt(&self, report: AttemptReport) -> Result<(), StoreError> {
        self.write(1, move |conn, ctx| {
            deliveries::record_attempt(conn, ctx, report)
        })
        .await
    }

    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        self.read(move |conn| deliveries::next_due(conn, now)).await
    }

    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        filter: &DeliveryFilter,
        page: PageRequest,
    ) -> Result<Option<Page<Delivery>>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |conn| deliveries::list(conn, &tenant, webhook, &filter, page))
            .await
    }

    async fn retry_delivery(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        delivery: DeliveryId,
        audit: &AuditContext,
    ) -> Result<Option<Delivery>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(1, move |conn, ctx| {
            deliveries::retry(conn, ctx, &tenant, webhook, delivery, &audit)
        })
        .await
    }

    async fn replay(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        range: TimeRange,
        limit: usize,
        audit: &AuditContext,
    ) -> Result<Option<usize>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(limit, move |conn, ctx| {
            deliveries::replay(conn, ctx, &tenant, webhook, range, limit, &audit)
        })
        .await
    }

    async fn create_test_delivery(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        owner: &str,
        audit: &AuditContext,
    ) -> Result<Option<ClaimedDelivery>, StoreError> {
        let (tenant, owner, audit) = (tenant.clone(), owner.to_string(), audit.clone());
        self.write(1, move |conn, ctx| {
            deliveries::create_test(conn, ctx, &tenant, webhook, &owner, &audit)
        })
        .await
    }

    async fn sweep_retention(
        &self,
        policy: RetentionPolicy,
        batch: usize,
    ) -> Result<SweepReport, StoreError> {
        self.write(batch, move |conn, ctx| {
            retention::sweep(conn, ctx, policy, batch)
        })
        .await
    }

    async fn list_audit_records(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |conn| audit::list(conn, &tenant, &filter, page))
            .await
    }

    async fn audit_chain_start(&self, chain: &str) -> Result<[u8; 32], StoreError> {
        let chain = chain.to_string();
        self.read(move |conn| audit::chain_start(conn, &chain))
            .await
    }

    async fn audit_log_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, ChainedRecord)>, StoreError> {
        self.read(move |conn| audit::log_page(conn, after, limit))
            .await
    }

    async fn high_water_mark(&self) -> Result<u64, StoreError> {
        // One writer commits in event-number order: the newest visible event is the mark.
        self.read(|conn| {
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .context("reading the newest event number")
            .map(|n| n.max(0) as u64)
        })
        .await
    }

    async fn delivery_backlog(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        self.read(|conn| {
            let (n, oldest): (i64, Option<i64>) = conn
                .query_row(
                    "SELECT count(*), min(created_at) FROM deliveries INDEXED BY deliveries_pending
                     WHERE status = 'pending' AND next_attempt_at IS NOT NULL",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .context("reading the delivery backlog")?;
            Ok((
                n.max(0) as u64,
                oldest.and_then(|t| DateTime::from_timestamp(t, 0)),
            ))
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            if let Ok(meta) = std::fs::metadata(PathBuf::from(name)) {
                total += meta.len();
            }
        }
        Ok(total)
    }

    fn cursor_key(&self) -> &CursorKey {
        &self.cursor_key
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .optional()
                .context("pinging the database")
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use tidings_domain::audit::AuditContext;
    use tidings_domain::{NewApiKey, Scope};

    use super::{SqliteStore, keys};
    use crate::Store;

    /// A key is found on the request's thread when the inline connection is free, and
    /// through the pool when that connection is taken or its read fails; a revoked key is
    /// refused at once.
    #[tokio::test]
    async fn keys_are_looked_up_inline_or_through_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let hash = [7u8; 32];
        let new = NewApiKey {
            organization_id: None,
            scopes: vec![Scope::EventsIngest],
            rate_limit: None,
            description: None,
        };
        let audit = AuditContext::system();
        let key = store.create_key(new, hash, &audit).await.unwrap();
        let found = |k: Option<tidings_domain::ApiKey>| k.map(|k| k.id);

        assert_eq!(found(store.authenticate(hash).await.unwrap()), Some(key.id));
        // The inline path itself answers (not only the pool behind it).
        let inline = store.read_inline(|conn| keys::active_key_by_hash(conn, &hash));
        assert_eq!(inline.map(found), Some(Some(key.id)));
        {
            // One connection taken: another answers. All taken: none does.
            let mut taken = vec![store.inline_readers[0].lock().unwrap()];
            let inline = store.read_inline(|conn| keys::active_key_by_hash(conn, &hash));
            assert_eq!(inline.map(found), Some(Some(key.id)));
            taken.extend(store.inline_readers[1..].iter().map(|s| s.lock().unwrap()));
            assert!(store.read_inline(|_| Ok(())).is_none());
        }
        // Connections whose reads fail (no such table): the pool answers.
        for slot in &store.inline_readers {
            *slot.lock().unwrap() = Some(Connection::open_in_memory().unwrap());
        }
        assert_eq!(found(store.authenticate(hash).await.unwrap()), Some(key.id));

        store.revoke_key(key.id, &audit).await.unwrap();
        assert_eq!(found(store.authenticate(hash).await.unwrap()), None);
        for slot in &store.inline_readers {
            *slot.lock().unwrap() = None;
        }
        assert_eq!(found(store.authenticate(hash).await.unwrap()), None);
    }

    /// `.cargo/config.toml` builds SQLite without the process-wide page cache and memory
    /// statistics (about 10 % of ingest; DESIGN.md). This fails if that configuration stops
    /// reaching libsqlite3-sys's build.
    #[test]
    fn sqlite_is_built_with_the_workspace_options() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }
}
