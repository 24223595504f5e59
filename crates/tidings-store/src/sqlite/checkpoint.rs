//! WAL checkpoints, copied mostly by a thread of their own instead of the writer.
//!
//! A commit appends pages to the WAL; a checkpoint copies them into the database file, and
//! once it has copied every frame the next write starts the WAL over. SQLite's automatic
//! checkpoint runs on the connection that committed, once the WAL holds
//! `wal_autocheckpoint` pages: here the writer thread, whose commits every producer waits
//! for. Copying 128 MiB of WAL stopped it for 43-77 ms every 2.5 s or so with
//! single-event requests, and took 6.5-7.8 % of its time loading 10M events in batches
//! (BENCHMARKS.md).
//!
//! So the writer's connection has no automatic checkpoint. After each commit it looks at
//! the WAL's length ([`CheckpointPolicy::step`]): past [`CheckpointPolicy::start`] frames
//! it wakes the checkpointer thread, whose PASSIVE checkpoints (on a connection of its own)
//! copy what is committed without blocking the writer or any reader. The writer keeps
//! appending meanwhile, so the checkpointer alone never catches the WAL complete; once it
//! is within [`CheckpointPolicy::finish_within`] frames, the writer copies those few
//! itself, between two groups, and its next transaction starts the WAL over. If the WAL
//! reaches [`CheckpointPolicy::limit`] anyway (the checkpointer cannot keep up, or a long
//! read holds frames back), the writer checkpoints whatever it can, as SQLite would.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::open_connection;
use crate::error::{Context, StoreError};

/// When checkpoints run, in WAL frames (a frame is one 4 KiB page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointPolicy {
    /// The checkpointer starts copying once the WAL holds this many frames. As with
    /// SQLite's `wal_autocheckpoint`, larger means a page that many commits rewrite (an
    /// index page) is copied fewer times.
    pub start: u32,
    /// The writer copies the rest itself once at most this many frames are left.
    pub finish_within: u32,
    /// The writer checkpoints itself at this length, however far the checkpointer got.
    pub limit: u32,
}

impl Default for CheckpointPolicy {
    /// Start at 32,768 frames (128 MiB), the threshold the writer's automatic checkpoint
    /// had (chosen for ingest by measurement); the writer finishes the last 512 frames
    /// (2 MiB, a few milliseconds); the limit is twice the start.
    fn default() -> Self {
        Self {
            start: 32_768,
            finish_within: 512,
            limit: 65_536,
        }
    }
}

/// What the writer does after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Nothing,
    /// Have the checkpointer copy what is committed.
    WakeCheckpointer,
    /// Copy what is left on the writer's connection, now.
    CheckpointOnWriter,
}

impl CheckpointPolicy {
    /// The step after a commit that left `frames` frames in the WAL, of which the
    /// checkpointer has copied `copied`.
    pub fn step(&self, frames: u32, copied: u32) -> Step {
        if frames < self.start {
            Step::Nothing
        } else if frames.saturating_sub(copied) <= self.finish_within || frames >= self.limit {
            Step::CheckpointOnWriter
        } else {
            Step::WakeCheckpointer
        }
    }
}

thread_local! {
    /// The WAL's length after the writer's last commit, as SQLite's WAL hook reports it
    /// (the hook runs on the committing thread; only the writer commits).
    static WAL_FRAMES: Cell<Option<u32>> = const { Cell::new(None) };
}

fn note_wal_frames(_: &Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(Some(frames.max(0) as u32));
    Ok(())
}

/// What the checkpoints did: counted in every store, read only by tests.
#[derive(Debug, Default)]
pub(crate) struct CheckpointCounts {
    /// Checkpoints the checkpointer thread ran.
    pub background: AtomicU64,
    /// Checkpoints the writer ran.
    pub on_writer: AtomicU64,
    /// Times the WAL started over.
    pub restarts: AtomicU64,
}

/// The writer's side: the policy, the checkpointer thread and what it reported.
pub(crate) struct Checkpoints {
    policy: CheckpointPolicy,
    /// Wakes the checkpointer with the WAL's generation (`None` once it has stopped).
    wake: Option<mpsc::SyncSender<u32>>,
    /// The checkpointer's last report: the generation it ran in (high 32 bits) and how many
    /// frames of that generation's WAL were copied then (low 32 bits).
    copied: Arc<AtomicU64>,
    counts: Arc<CheckpointCounts>,
    /// The WAL's generation: one more each time it starts over.
    generation: u32,
    last_frames: u32,
    thread: Option<JoinHandle<()>>,
}

impl Checkpoints {
    /// Turns off the automatic checkpoint of `writer` (the writer's connection) and starts
    /// the checkpointer thread on a connection of its own to `path`.
    pub fn start(
        writer: &Connection,
        path: &Path,
        policy: CheckpointPolicy,
        counts: Arc<CheckpointCounts>,
    ) -> Result<Self, StoreError> {
        // Replaces the automatic checkpoint, which is SQLite's own WAL hook.
        writer.wal_hook(Some(note_wal_frames));
        let conn = open_connection(path)?;
        let copied = Arc::new(AtomicU64::new(0));
        let (wake, woken) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tidings-sqlite-checkpointer".into())
            .spawn({
                let (copied, counts) = (Arc::clone(&copied), Arc::clone(&counts));
                move || run_checkpointer(conn, woken, &copied, &counts)
            })
            .map_err(|source| StoreError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            policy,
            wake: Some(wake),
            copied,
            counts,
            generation: 0,
            last_frames: 0,
            thread: Some(thread),
        })
    }

    /// After each commit of the writer: takes the next step of the policy.
    pub fn after_commit(&mut self, writer: &Connection) {
        let Some(frames) = WAL_FRAMES.take() else {
            return; // the commit wrote nothing
        };
        if frames < self.last_frames {
            self.generation = self.generation.wrapping_add(1);
            self.counts.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.last_frames = frames;
        let report = self.copied.load(Ordering::Acquire);
        let copied = if (report >> 32) as u32 == self.generation {
            report as u32
        } else {
            0
        };
        match self.policy.step(frames, copied) {
            Step::Nothing => {}
            Step::WakeCheckpointer => {
                let woken = self.wake.as_ref().map(|w| w.try_send(self.generation));
                match woken {
                    // Sent, or a wake is already waiting (the checkpointer is busy).
                    Some(Ok(())) | Some(Err(TrySendError::Full(_))) => {}
                    Some(Err(TrySendError::Disconnected(_))) | None => {
                        // No checkpointer: the writer copies, as SQLite's own would.
                        self.wake = None;
                        self.checkpoint_on_writer(writer, frames, copied);
                    }
                }
            }
            Step::CheckpointOnWriter => self.checkpoint_on_writer(writer, frames, copied),
        }
    }

    fn checkpoint_on_writer(&self, writer: &Connection, frames: u32, copied: u32) {
        let started = Instant::now();
        match passive_checkpoint(writer) {
            // The checkpointer is still copying; the next commit tries again.
            Ok(None) => {}
            Ok(Some(_)) => {
                self.counts.on_writer.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    frames,
                    left = frames.saturating_sub(copied),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "the writer finished a WAL checkpoint"
                );
            }
            // Nothing is lost: the frames stay in the WAL, and the next commit tries again.
            Err(e) => tracing::warn!(error = %e, "a WAL checkpoint on the writer failed"),
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.wake = None; // the checkpointer stops after its current checkpoint
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_checkpointer(
    conn: Connection,
    woken: mpsc::Receiver<u32>,
    copied: &AtomicU64,
    counts: &CheckpointCounts,
) {
    while let Ok(generation) = woken.recv() {
        let started = Instant::now();
        match passive_checkpoint(&conn) {
            Ok(Some((frames, done))) => {
                counts.background.fetch_add(1, Ordering::Relaxed);
                copied.store(
                    (u64::from(generation) << 32) | u64::from(done),
                    Ordering::Release,
                );
                tracing::debug!(
                    frames,
                    copied = done,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "WAL checkpoint"
                );
            }
            Ok(None) => {} // another checkpoint was running; the writer wakes us again
            Err(e) => tracing::warn!(error = %e, "a WAL checkpoint failed"),
        }
    }
    tracing::debug!("sqlite checkpointer stopped");
}

/// A PASSIVE checkpoint: copies what no reader still needs, waiting for nobody. Returns
/// the WAL's frames and how many of them are copied, or `None` if another connection was
/// checkpointing.
fn passive_checkpoint(conn: &Connection) -> Result<Option<(u32, u32)>, StoreError> {
    let (busy, frames, copied): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .context("checkpointing the WAL")?;
    Ok((busy == 0).then(|| (frames.max(0) as u32, copied.max(0) as u32)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    use super::{CheckpointCounts, CheckpointPolicy, Checkpoints, Step};
    use crate::SystemClock;
    use crate::sqlite::test_support::{ORG, ingest};
    use crate::sqlite::{DATABASE_FILE, IndexTail, SqliteStore, open_connection};

    #[test]
    fn the_writer_copies_only_the_last_frames_or_at_the_limit() {
        let policy = CheckpointPolicy {
            start: 1_000,
            finish_within: 50,
            limit: 2_000,
        };
        // Below the start: nothing, whatever was copied.
        assert_eq!(policy.step(999, 0), Step::Nothing);
        // From the start on, the checkpointer copies until 50 frames or fewer are left.
        assert_eq!(policy.step(1_000, 0), Step::WakeCheckpointer);
        assert_eq!(policy.step(1_500, 1_449), Step::WakeCheckpointer);
        assert_eq!(policy.step(1_500, 1_450), Step::CheckpointOnWriter);
        assert_eq!(policy.step(1_500, 1_500), Step::CheckpointOnWriter);
        // At the limit the writer checkpoints however little was copied.
        assert_eq!(policy.step(1_999, 0), Step::WakeCheckpointer);
        assert_eq!(policy.step(2_000, 0), Step::CheckpointOnWriter);
    }

    /// Commits made while the checkpointer copies are left for the writer, which copies
    /// them once they are few; its next write then starts the WAL over. (A reader holding
    /// an older snapshot stands in for the commits: it keeps the checkpointer from copying
    /// past it, as frames committed after its copy began would.)
    #[test]
    fn the_writer_copies_what_the_checkpointer_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.db");
        let writer = open_connection(&path).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let policy = CheckpointPolicy {
            start: 30,
            finish_within: 20,
            limit: 1_000,
        };
        let counts = Arc::new(CheckpointCounts::default());
        let mut checkpoints =
            Checkpoints::start(&writer, &path, policy, Arc::clone(&counts)).unwrap();
        // Rows of 3,000 bytes: a page each, so `rows` rows append about `rows` frames.
        let mut commit = |rows: u32| {
            writer
                .execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                     INSERT INTO t SELECT randomblob(3000) FROM n",
                    [rows],
                )
                .unwrap();
            checkpoints.after_commit(&writer);
        };
        let background = || counts.background.load(Relaxed);

        commit(20); // about 22 frames: below the start
        let reader = open_connection(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: u32 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 20);
        commit(10); // about 33 frames: the checkpointer copies what the reader allows
        for _ in 0..500 {
            if background() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(background(), 1);
        assert_eq!(counts.on_writer.load(Relaxed), 0);
        reader.execute_batch("COMMIT").unwrap();

        // Twenty or fewer frames left: the writer copies them after its next commit...
        commit(1);
        assert_eq!(counts.on_writer.load(Relaxed), 1);
        assert_eq!(counts.restarts.load(Relaxed), 0);
        // ...and the commit after that starts the WAL over.
        commit(1);
        assert_eq!(counts.restarts.load(Relaxed), 1);
        assert_eq!((background(), counts.on_writer.load(Relaxed)), (1, 1));
        drop(checkpoints);
        let rows: u32 = writer
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 32);
    }

    /// While events keep coming, the WAL starts over again and again: the checkpointer
    /// copies the bulk, the writer the last few frames. Every event is there afterwards.
    #[tokio::test]
    async fn the_wal_starts_over_while_the_checkpointer_copies_it() {
        let dir = tempfile::tempdir().unwrap();
        let policy = CheckpointPolicy {
            start: 64,
            finish_within: 8,
            limit: 1_000_000, // never reached: the writer does not copy on its own
        };
        let counts = Arc::new(CheckpointCounts::default());
        let store = SqliteStore::open_tuned(
            dir.path(),
            Arc::new(SystemClock),
            IndexTail::default(),
            policy,
            Arc::clone(&counts),
        )
        .unwrap();
        let mut sent = 0;
        // Bounded: a few hundred commits start the WAL over three times when it works.
        while counts.restarts.load(Relaxed) < 3 && sent < 5_000 {
            let body = format!(
                r#"{{"type":"invoice.paid","organization_id":"{ORG}","workspace_id":"WS-26-000021","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"invoice","id":"INV-26-{sent:06}"}},"payload":{{}}}}"#
            );
            ingest(&store, &body).await;
            sent += 1;
        }
        assert_eq!(counts.restarts.load(Relaxed), 3, "after {sent} events");
        assert!(counts.background.load(Relaxed) >= 3, "{counts:?}");
        // The WAL never grew far past the start (64 frames of 4 KiB and a header each).
        let wal = std::fs::metadata(dir.path().join(format!("{DATABASE_FILE}-wal")))
            .unwrap()
            .len();
        assert!(wal < 16 * 64 * 4_120, "the WAL grew to {wal} bytes");
        drop(store);

        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let stored: u64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, sent);
    }
}
