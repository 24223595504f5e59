//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread fed by a channel; it folds every ingest request
//! waiting at that moment into one transaction (group commit), so concurrent producers share
//! one fsync. `synchronous=FULL` makes a commit survive a power cut, and the 201 is sent only
//! after it. Reads run on a small pool of their own connections, off the async runtime.

mod baseline;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rand::RngCore;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tidings_domain::{
    ApiKey, CursorKey, Event, EventFilter, EventId, KeyId, NewApiKey, NewEvent, Tenant,
};
use tokio::sync::oneshot;

use crate::clock::{Clock, SystemClock};
use crate::error::{Context, StoreError};
use crate::{Page, PageRequest, Store};
use writer::WriteOp;

pub use baseline::RawSqliteBaseline;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "tidings.db";

/// The embedded SQLite store.
pub struct SqliteStore {
    writes: mpsc::Sender<WriteOp>,
    readers: Arc<ReadPool>,
    cursor_key: CursorKey,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(data_dir, Arc::new(SystemClock))
    }

    /// Like [`SqliteStore::open`], with the clock that stamps `created_at`.
    pub fn open_with_clock(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let mut conn = open_connection(&path)?;
        schema::migrate(&mut conn)?;
        let cursor_key = load_or_create_cursor_key(&conn)?;
        let (writes, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tidings-sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, clock))
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
            cursor_key,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(op(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .context("opening the database file")?;
    // FULL: a commit is on disk before we acknowledge it, even across a power cut.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;",
    )
    .context("configuring the connection")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .context("setting the busy timeout")?;
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
    async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteOp::Ingest { events, reply }).await
    }

    async fn list_events(
        &self,
        tenant: &Tenant,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<Event>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |conn| read::list_events(conn, &tenant, &filter, page))
            .await
    }

    async fn get_event(&self, tenant: &Tenant, id: EventId) -> Result<Option<Event>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| read::get_event(conn, &tenant, id))
            .await
    }

    async fn create_key(
        &self,
        key: NewApiKey,
        secret_hash: [u8; 32],
    ) -> Result<ApiKey, StoreError> {
        self.write(|reply| WriteOp::CreateKey {
            key,
            secret_hash,
            reply,
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(read::list_keys).await
    }

    async fn revoke_key(&self, id: KeyId) -> Result<Option<ApiKey>, StoreError> {
        self.write(|reply| WriteOp::RevokeKey { id, reply }).await
    }

    async fn authenticate(&self, secret_hash: [u8; 32]) -> Result<Option<ApiKey>, StoreError> {
        self.read(move |conn| read::active_key_by_hash(conn, &secret_hash))
            .await
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
