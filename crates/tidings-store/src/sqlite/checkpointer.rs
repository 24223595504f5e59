//! Copies committed WAL pages into the database file on a thread of its own.
//!
//! Left to SQLite, the connection that commits runs the checkpoint when the WAL passes
//! `wal_autocheckpoint` pages: our writer, which then holds every producer waiting while it
//! copies up to 128 MiB of pages and syncs the database file. Here a thread with its own
//! connection runs a passive checkpoint every [`INTERVAL`]. A passive checkpoint never
//! blocks the writer (which goes on appending to the WAL meanwhile) nor waits for readers;
//! it copies what it can and syncs the database file. The writer keeps its own automatic
//! checkpoint as the bound: when the WAL reaches it, the writer's checkpoint only has the
//! pages committed since the last pass left to copy, and the WAL then starts over from its
//! beginning, so it cannot grow without bound even if this thread falls behind.
//!
//! Batches of 1,000 went 3 % faster with this than with the flags change alone
//! (BENCHMARKS.md, "SQLite built for one process").

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use super::open_connection;
use crate::error::StoreError;

/// Time between passive checkpoints.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);

/// Stops the checkpoint thread when dropped (with the store).
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the thread, on a connection of its own to the database at `path`.
    pub(crate) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = open_connection(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("tidings-checkpt".into())
            .spawn(move || {
                // Nothing is ever sent: the channel closes when the store is dropped.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    if let Err(e) = checkpoint(&conn) {
                        tracing::warn!(error = %e, "a background WAL checkpoint failed");
                    }
                }
            })
            .map_err(|source| StoreError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { _stop: stop })
    }
}

/// One passive checkpoint. SQLite answers (busy, pages in the WAL, pages copied); busy
/// means another connection was checkpointing, which is not an error.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::DATABASE_FILE;

    /// Pages committed by a connection that never checkpoints reach the database file.
    #[test]
    fn copies_committed_pages_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        let writer = open_connection(&path).unwrap();
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB)")
            .unwrap();
        let _checkpointer = Checkpointer::start(&path).unwrap();
        for _ in 0..50 {
            writer
                .execute("INSERT INTO t VALUES (randomblob(4000))", [])
                .unwrap();
        }
        // Until a checkpoint copies them, the pages are only in the WAL.
        let mut size = 0;
        for _ in 0..100 {
            size = std::fs::metadata(&path).unwrap().len();
            if size >= 50 * 4000 {
                break;
            }
            std::thread::sleep(INTERVAL / 5);
        }
        assert!(
            size >= 50 * 4000,
            "the database file has {size} bytes: the committed pages were never copied"
        );
    }
}
