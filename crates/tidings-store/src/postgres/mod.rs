//! The PostgreSQL store: the same API on a shared database, for several `tidings serve`
//! processes at once.
//!
//! It keeps the shape of the SQLite store. Each process has one writer thread that folds the
//! writes waiting at that moment into one transaction (group commit, a savepoint per job);
//! each group holds a transaction-level advisory lock, so groups of all processes commit one
//! at a time and event numbers become visible in order (see [`writer`]). Reads run on a pool
//! of connections. Claiming deliveries is the exception: it is its own short transaction
//! that takes due rows with `FOR UPDATE SKIP LOCKED`, outside the write lock, so processes
//! claim concurrently and never the same delivery.
//!
//! The driver is the synchronous `postgres` crate (tokio-postgres underneath), used from the
//! writer thread and from `spawn_blocking`, which keeps every job a plain closure over a
//! transaction, as on SQLite. Connections are plain TCP or a Unix socket (no TLS yet).

mod audit;
mod baseline;
mod deliveries;
mod events;
mod keys;
mod list_query;
pub(crate) mod partitions;
mod retention;
mod schema;
mod statements;
mod webhooks;
pub(crate) mod writer;

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use postgres::{Client, NoTls, Transaction};
use rand::RngCore;
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
pub use baseline::{RawPostgresBaseline, analyze, create_database, drop_database};
use statements::Statements;
pub use writer::WRITE_LOCK;
use writer::{Job, WriterCtx};

/// The PostgreSQL store.
pub struct PostgresStore {
    writes: mpsc::Sender<Job>,
    readers: Arc<ReadPool>,
    cursor_key: CursorKey,
    clock: Arc<dyn Clock>,
}

/// Opens one connection. `url` is a libpq-style URL or key=value string.
pub(crate) fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls).context("connecting")?;
    // A statement that hangs on a lock for a minute is a bug worth an error rather than a
    // stuck request; notices ("partition already exists, skipping") are not worth a log line.
    client
        .batch_execute(
            "SET statement_timeout = '60s'; SET lock_timeout = '30s';
             SET client_min_messages = warning",
        )
        .context("configuring the connection")?;
    Ok(client)
}

impl PostgresStore {
    /// Connects to the database at `url`, applies migrations and makes the partitions of
    /// the coming days. Blocking; safe to call from async code (the work runs on its own
    /// thread).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_clock(url, Arc::new(SystemClock))
    }

    /// Like [`PostgresStore::connect`], with the clock that stamps `created_at`.
    pub fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let url = url.to_string();
        let now = clock.now();
        let setup = {
            let url = url.clone();
            std::thread::spawn(move || -> Result<(Client, CursorKey), StoreError> {
                let mut client = connect(&url)?;
                schema::migrate(&mut client)?;
                let mut tx = client
                    .transaction()
                    .context("starting the start-up write")?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&writer::WRITE_LOCK])
                    .context("taking the write lock")?;
                partitions::create_ahead(&mut tx, now.timestamp())?;
                let cursor_key = load_or_create_cursor_key(&mut tx)?;
                tx.commit().context("committing the start-up write")?;
                Ok((client, cursor_key))
            })
            .join()
            .map_err(|_| StoreError::Write("the PostgreSQL start-up thread panicked".into()))??
        };
        let (client, cursor_key) = setup;
        let (writes, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tidings-postgres-writer".into())
            .spawn({
                let clock = Arc::clone(&clock);
                let url = url.clone();
                move || writer::run(url, client, rx, clock)
            })
            .map_err(|e| StoreError::Write(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            writes,
            readers: Arc::new(ReadPool {
                url,
                idle: Mutex::new(Vec::new()),
            }),
            cursor_key,
            clock,
        })
    }

    /// Runs `work` on the writer thread, inside the next group commit; returns after the
    /// commit. `weight` bounds the group (events for ingest, 1 otherwise).
    async fn write<T: Send + 'static>(
        &self,
        weight: usize,
        work: impl FnOnce(&mut Transaction<'_>, &mut WriterCtx<'_>) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        self.submit(|reply| Job::new(weight, work, reply)).await
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

    /// Runs `f` on a pooled connection, off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.read_prepared(move |c, _| f(c)).await
    }

    /// Like [`PostgresStore::read`], with the statements prepared on that connection, for
    /// hot paths where the extra round trip of preparing each time would show.
    async fn read_prepared<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &mut Statements) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = f(&mut conn.client, &mut conn.statements);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

fn load_or_create_cursor_key(tx: &mut Transaction<'_>) -> Result<CursorKey, StoreError> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('cursor_key', $1) ON CONFLICT (key) DO NOTHING",
        &[&&fresh[..]],
    )
    .context("storing the cursor key")?;
    let stored: Vec<u8> = tx
        .query_one("SELECT value FROM meta WHERE key = 'cursor_key'", &[])
        .context("reading the cursor key")?
        .get(0);
    let bytes: [u8; 32] = stored
        .try_into()
        .map_err(|_| StoreError::Corrupt("cursor key has the wrong length".into()))?;
    Ok(CursorKey::new(bytes))
}

/// Reader connections, opened on demand and kept for reuse.
struct ReadPool {
    url: String,
    idle: Mutex<Vec<PooledClient>>,
}

/// A pooled connection and the statements prepared on it.
struct PooledClient {
    client: Client,
    statements: Statements,
}

impl ReadPool {
    const MAX_IDLE: usize = 16;

    fn take(&self) -> Result<PooledClient, StoreError> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            match idle {
                Some(c) if c.client.is_closed() => continue,
                Some(c) => return Ok(c),
                None => {
                    return Ok(PooledClient {
                        client: connect(&self.url)?,
                        statements: Statements::default(),
                    });
                }
            }
        }
    }

    fn give_back(&self, conn: PooledClient) {
        if conn.client.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::MAX_IDLE
        {
            idle.push(conn);
        }
    }
}

impl Drop for ReadPool {
    /// Closing a connection blocks on its own small runtime, which must not happen on an
    /// async worker (where the last store handle is usually dropped): close them elsewhere.
    fn drop(&mut self) {
        let idle = match self.idle.get_mut() {
            Ok(idle) => std::mem::take(idle),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("tidings-postgres-close".into())
                .spawn(move || drop(idle));
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(
        &self,
        events: Vec<NewEvent>,
        audit: &AuditContext,
    ) -> Result<Vec<Event>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Not a plain job: the writer fuses the ingest requests of a group into one batch.
        let audit = audit.clone();
        self.submit(|reply| Job::ingest(events, audit, reply)).await
    }

    async fn list_events(
        &self,
        tenant: &Tenant,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<Event>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |c| events::list_events(c, &tenant, &filter, page))
            .await
    }

    async fn get_event(&self, tenant: &Tenant, id: EventId) -> Result<Option<Event>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |c| events::get_event(c, &tenant, id)).await
    }

    async fn create_key(
        &self,
        key: NewApiKey,
        secret_hash: [u8; 32],
        audit: &AuditContext,
    ) -> Result<ApiKey, StoreError> {
        let audit = audit.clone();
        self.write(1, move |tx, ctx| {
            keys::create_key(tx, ctx, key, secret_hash, &audit)
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
        self.write(1, move |tx, ctx| keys::revoke_key(tx, ctx, id, &audit))
            .await
    }

    async fn authenticate(&self, secret_hash: [u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        self.read(move |c| keys::active_key_by_hash(c, &secret_hash))
            .await
    }

    async fn workspace_org(&self, workspace: &WorkspaceId) -> Result<Option<OrgId>, StoreError> {
        let ws = workspace.as_str().to_string();
        self.read(move |c| {
            c.query_opt("SELECT org FROM workspaces WHERE workspace = $1", &[&ws])
                .context("looking up a workspace")?
                .map(|r| {
                    r.get::<_, String>(0)
                        .parse()
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
        self.write(1, move |tx, ctx| {
            webhooks::create(tx, ctx, webhook, secret, &audit)
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
        self.read(move |c| webhooks::list(c, &tenant, org.as_ref(), page))
            .await
    }

    async fn get_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> Result<Option<Webhook>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |c| webhooks::find(c, &tenant, id)).await
    }

    async fn update_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        update: WebhookUpdate,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError> {
        let (tenant, audit) = (tenant.clone(), audit.clone());
        self.write(1, move |tx, ctx| {
            webhooks::update(tx, ctx, &tenant, id, update, &audit)
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
        self.write(1, move |tx, ctx| {
            webhooks::delete(tx, ctx, &tenant, id, &audit)
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
        self.read(move |c| match webhooks::find(c, &tenant, id)? {
            Some(_) => webhooks::live_secrets(c, id.number, now).map(Some),
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
        self.write(1, move |tx, ctx| {
            webhooks::rotate_secret(tx, ctx, &tenant, id, secret, overlap, &audit)
        })
        .await
    }

    async fn fan_out(&self, max_events: usize) -> Result<FanoutReport, StoreError> {
        self.write(max_events, move |tx, ctx| {
            deliveries::fan_out(tx, ctx, max_events)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        claim: ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Its own transaction, outside the write lock: SKIP LOCKED keeps processes apart.
        let now = self.clock.now();
        self.read_prepared(move |c, statements| deliveries::claim(c, statements, now, claim))
            .await
    }

    async fn record_attempt(&self, report: AttemptReport) -> Result<(), StoreError> {
        // Not a plain job either: the attempts of a group are recorded together.
        self.submit(|reply| Job::attempt(report, reply)).await
    }

    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        self.read(move |c| deliveries::next_due(c, now)).await
    }

    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        filter: &DeliveryFilter,
        page: PageRequest,
    ) -> Result<Option<Page<Delivery>>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |c| deliveries::list(c, &tenant, webhook, &filter, page))
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
        self.write(1, move |tx, ctx| {
            deliveries::retry(tx, ctx, &tenant, webhook, delivery, &audit)
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
        self.write(limit, move |tx, ctx| {
            deliveries::replay(tx, ctx, &tenant, webhook, range, limit, &audit)
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
        self.write(1, move |tx, ctx| {
            deliveries::create_test(tx, ctx, &tenant, webhook, &owner, &audit)
        })
        .await
    }

    async fn sweep_retention(
        &self,
        policy: RetentionPolicy,
        batch: usize,
    ) -> Result<SweepReport, StoreError> {
        self.write(batch, move |tx, ctx| {
            retention::sweep(tx, ctx, policy, batch)
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
        self.read(move |c| audit::list(c, &tenant, &filter, page))
            .await
    }

    async fn audit_chain_start(&self, chain: &str) -> Result<[u8; 32], StoreError> {
        let chain = chain.to_string();
        self.read(move |c| audit::chain_start(c, &chain)).await
    }

    async fn audit_log_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, ChainedRecord)>, StoreError> {
        self.read(move |c| audit::log_page(c, after, limit)).await
    }

    async fn high_water_mark(&self) -> Result<u64, StoreError> {
        // Event numbers are minted and committed under the write lock, in order: the last
        // number minted by a committed group is the mark, and every number below it is
        // settled (committed, or swept by retention).
        self.read(|c| {
            Ok(
                c.query_opt("SELECT last FROM id_sequences WHERE prefix = 'EVT'", &[])
                    .context("reading the newest event number")?
                    .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64),
            )
        })
        .await
    }

    async fn delivery_backlog(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        self.read(|c| {
            let row = c
                .query_one(
                    "SELECT count(*), min(created_at) FROM deliveries
                     WHERE status = 'pending' AND next_attempt_at IS NOT NULL",
                    &[],
                )
                .context("reading the delivery backlog")?;
            let (n, oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
            Ok((
                n.max(0) as u64,
                oldest.and_then(|t| DateTime::from_timestamp(t, 0)),
            ))
        })
        .await
    }

    async fn size_bytes(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c
                .query_one("SELECT pg_database_size(current_database())", &[])
                .context("reading the database size")?
                .get(0);
            Ok(n.max(0) as u64)
        })
        .await
    }

    fn cursor_key(&self) -> &CursorKey {
        &self.cursor_key
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_one("SELECT 1", &[])
                .context("pinging the database")
                .map(|_| ())
        })
        .await
    }
}
