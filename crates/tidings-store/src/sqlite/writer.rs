//! The single writer thread and its group commit.
//!
//! Every write is a [`Job`]: a closure run on the writer's connection. Every job waiting in
//! the channel when the writer wakes up joins one transaction, each inside its own
//! savepoint, so one job that fails is rolled back alone while the others commit, and all
//! of them share one fsync. Replies are sent only after the commit: a caller that hears
//! "done" can rely on it surviving a crash.
//!
//! Ingest jobs skip the savepoint ([`Job::checked`]): they check everything that can
//! reject them before they write anything, so a rejected one has nothing to undo. A
//! savepoint is not free: SQLite copies every page a job touches first into a
//! sub-journal, 13 % of the writer's instructions with single-event requests. If such a job
//! fails any other way (an I/O error midway), the whole group is rolled back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::checkpoint::Checkpoints;
use super::events::IndexTail;
use super::idempotency_filter::IdempotencyFilter;
use crate::clock::Clock;
use crate::error::{Context, StoreError};

/// What to do once the transaction's fate is known (`None` = committed, `Some(reason)` =
/// not).
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
type JobFn = Box<dyn FnOnce(&Connection, &mut WriterCtx<'_>) -> (Verdict, Completion) + Send>;

/// What became of a job's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Undo the job alone (its savepoint), or nothing to undo (a checked job that refused
    /// before writing).
    Discard,
    /// A checked job failed after it may have written: the group cannot commit.
    Poison,
}

pub(crate) struct Job {
    /// Rough size, to bound a group (events for ingest, 1 otherwise).
    weight: usize,
    /// Whether the job runs in its own savepoint.
    savepoint: bool,
    run: JobFn,
}

impl Job {
    /// A job computing `T`, in its own savepoint; its reply is sent after the commit.
    pub(crate) fn new<T: Send + 'static>(
        weight: usize,
        work: impl FnOnce(&Connection, &mut WriterCtx<'_>) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self::build(weight, true, work, reply)
    }

    /// A job without a savepoint. Its contract: it fails with [`StoreError::Rejected`] only
    /// before writing anything; any other error poisons the group.
    pub(crate) fn checked<T: Send + 'static>(
        weight: usize,
        work: impl FnOnce(&Connection, &mut WriterCtx<'_>) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self::build(weight, false, work, reply)
    }

    fn build<T: Send + 'static>(
        weight: usize,
        savepoint: bool,
        work: impl FnOnce(&Connection, &mut WriterCtx<'_>) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self {
            weight,
            savepoint,
            run: Box::new(move |conn, ctx| {
                let result = work(conn, ctx);
                let verdict = match &result {
                    Ok(_) => Verdict::Keep,
                    Err(_) if savepoint => Verdict::Discard,
                    Err(StoreError::Rejected(_)) => Verdict::Discard,
                    Err(_) => Verdict::Poison,
                };
                let completion: Completion = Box::new(move |commit_error| {
                    let outcome = match commit_error {
                        None => result,
                        Some(reason) => Err(StoreError::Write(reason.to_string())),
                    };
                    let _ = reply.send(outcome);
                });
                (verdict, completion)
            }),
        }
    }
}

/// A group takes no more jobs once it holds this much weight (events, for ingest). With
/// the index tail the fixed cost of a commit is mostly its fsync (0.6-2 ms here), so groups of
/// 2,000 events lose little to it; larger groups made every producer wait for the same
/// commit, and the writer then sat idle while they all sent their next batches. Four
/// producers of 1,000-event batches over HTTP: 88.3k/88.9k events/s with groups of up to
/// 20,000, 95.0k/94.7k with 2,000, 91.8k/89.7k with 1,000 (alternating runs; BENCHMARKS.md).
const MAX_GROUP_WEIGHT: usize = 2_000;

/// State shared by the jobs of one group: the clock reading, ID sequences, caches.
pub(crate) struct WriterCtx<'a> {
    pub now: DateTime<Utc>,
    /// Last number minted per prefix in this group (read from the database on first use).
    ids: HashMap<&'static str, u64>,
    /// `created_at` for events of this group: never before the newest stored event.
    event_time: Option<DateTime<Utc>>,
    /// workspace -> organization, committed (immutable once learnt, so always safe).
    known_workspaces: &'a HashMap<String, String>,
    /// Learnt in this group; merged into the cache after commit.
    learnt_workspaces: HashMap<String, String>,
    /// The idempotency keys stored (rewound with the group or job that rolls back).
    pub idempotency: &'a mut IdempotencyFilter,
    /// Whether `idempotency` has read the events other processes stored: once a group is
    /// enough, since nobody else can write while the group's transaction is open.
    pub idempotency_caught_up: bool,
    /// The first event numbered in this group, if any: with `event_time`, the group's row
    /// of `event_seconds`, written at the end of the group.
    pub first_event: Option<u64>,
}

/// What a job that rolls back must put back in the context.
struct Snapshot {
    ids: HashMap<&'static str, u64>,
    learnt_workspaces: HashMap<String, String>,
    idempotency_seen: u64,
    idempotency_caught_up: bool,
    first_event: Option<u64>,
}

impl WriterCtx<'_> {
    /// The next number for `prefix` (`EVT`, `KEY`, `WHK`, `DLV`, `AUD`). One path mints every ID.
    pub fn next_id(&mut self, conn: &Connection, prefix: &'static str) -> Result<u64, StoreError> {
        let last = match self.ids.get(prefix) {
            Some(n) => *n,
            None => conn
                .prepare_cached("SELECT last FROM id_sequences WHERE prefix = ?1")
                .context("preparing an ID sequence read")?
                .query_row([prefix], |r| r.get::<_, i64>(0))
                .optional()
                .context("reading an ID sequence")?
                .unwrap_or(0) as u64,
        };
        self.ids.insert(prefix, last + 1);
        Ok(last + 1)
    }

    /// `created_at` for events recorded in this group.
    pub fn event_time(&mut self, conn: &Connection) -> Result<DateTime<Utc>, StoreError> {
        if let Some(t) = self.event_time {
            return Ok(t);
        }
        let newest: Option<i64> = conn
            .prepare_cached("SELECT created_at FROM events ORDER BY seq DESC LIMIT 1")
            .context("preparing the newest event time read")?
            .query_row([], |r| r.get(0))
            .optional()
            .context("reading the newest event time")?;
        // created_at never decreases with seq, even if the wall clock steps back.
        let secs = self.now.timestamp().max(newest.unwrap_or(i64::MIN));
        let t = DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs} out of range")))?;
        self.event_time = Some(t);
        Ok(t)
    }

    pub fn workspace_owner(&self, workspace: &str) -> Option<&String> {
        self.known_workspaces
            .get(workspace)
            .or_else(|| self.learnt_workspaces.get(workspace))
    }

    pub fn learn_workspace(&mut self, workspace: &str, org: &str) {
        self.learnt_workspaces
            .insert(workspace.to_string(), org.to_string());
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            ids: self.ids.clone(),
            learnt_workspaces: self.learnt_workspaces.clone(),
            idempotency_seen: self.idempotency.seen_through(),
            idempotency_caught_up: self.idempotency_caught_up,
            first_event: self.first_event,
        }
    }

    fn restore(&mut self, snapshot: Snapshot) {
        self.ids = snapshot.ids;
        self.learnt_workspaces = snapshot.learnt_workspaces;
        self.idempotency.rewind(snapshot.idempotency_seen);
        self.idempotency_caught_up = snapshot.idempotency_caught_up;
        self.first_event = snapshot.first_event;
    }
}

/// What the writer is set up with.
pub(crate) struct WriterSettings {
    pub clock: Arc<dyn Clock>,
    /// When the newest events are indexed.
    pub index_tail: IndexTail,
    /// Who copies the WAL into the database file, and when.
    pub checkpoints: Checkpoints,
}

pub(crate) fn run(mut conn: Connection, rx: mpsc::Receiver<Job>, mut settings: WriterSettings) {
    let mut workspaces: HashMap<String, String> = HashMap::new();
    let mut idempotency = IdempotencyFilter::new();
    // Whether events may wait in the index tail (so that a pause should index them).
    let mut tail_waits = true;
    loop {
        let idle = settings.index_tail.idle.filter(|_| tail_waits);
        let first = match idle.map(|idle| rx.recv_timeout(idle)) {
            Some(Ok(job)) => job,
            Some(Err(RecvTimeoutError::Timeout)) => {
                // No writes for a while: index the tail now, so that queries need not
                // read it until writes come again. Nobody waits for the answer.
                let (reply, _) = oneshot::channel();
                let job = Job::new(
                    1,
                    |conn, _| {
                        let indexed = super::events::index_tail(conn, 0)
                            .and_then(|_| super::audit::index_tail(conn, 0));
                        if let Err(e) = &indexed {
                            // Nothing is lost: the tails stay readable, and the writer
                            // tries again after the next write.
                            tracing::warn!(error = %e, "indexing the index tails while idle failed");
                        }
                        indexed
                    },
                    reply,
                );
                run_group(
                    &mut conn,
                    &mut settings,
                    &mut workspaces,
                    &mut idempotency,
                    vec![job],
                );
                tail_waits = false;
                continue;
            }
            Some(Err(RecvTimeoutError::Disconnected)) => break,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        let mut weight = first.weight;
        let mut group = vec![first];
        while weight < MAX_GROUP_WEIGHT {
            match rx.try_recv() {
                Ok(job) => {
                    weight += job.weight;
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        tail_waits |= run_group(
            &mut conn,
            &mut settings,
            &mut workspaces,
            &mut idempotency,
            group,
        );
    }
    tracing::debug!("sqlite writer stopped");
}

/// Runs one group of jobs in one transaction; returns whether it left rows unindexed (it
/// recorded events or audit records).
fn run_group(
    conn: &mut Connection,
    settings: &mut WriterSettings,
    workspaces: &mut HashMap<String, String>,
    idempotency: &mut IdempotencyFilter,
    group: Vec<Job>,
) -> bool {
    let mut completions = Vec::with_capacity(group.len());
    let idempotency_seen = idempotency.seen_through();
    let outcome = (|| -> Result<(HashMap<String, String>, bool), StoreError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("starting a write transaction")?;
        let mut ctx = WriterCtx {
            now: settings.clock.now(),
            ids: HashMap::new(),
            event_time: None,
            known_workspaces: workspaces,
            learnt_workspaces: HashMap::new(),
            idempotency: &mut *idempotency,
            idempotency_caught_up: false,
            first_event: None,
        };
        // Savepoint statements prepared once (rusqlite's `savepoint()` parses them anew on
        // every call, a tenth of the writer's time with single-event requests).
        let mut open = tx
            .prepare_cached("SAVEPOINT job")
            .context("preparing a job savepoint")?;
        let mut release = tx
            .prepare_cached("RELEASE job")
            .context("preparing a savepoint release")?;
        let mut undo = tx
            .prepare_cached("ROLLBACK TO job")
            .context("preparing a savepoint rollback")?;
        for job in group {
            // If this fails, the remaining jobs are dropped and their callers get an error.
            if job.savepoint {
                open.execute([]).context("opening a job savepoint")?;
            }
            let snapshot = ctx.snapshot();
            let (verdict, completion) = (job.run)(&tx, &mut ctx);
            completions.push(completion);
            match verdict {
                Verdict::Keep => {}
                Verdict::Discard => {
                    if job.savepoint {
                        // Undo this job alone; the others are untouched.
                        undo.execute([]).context("rolling a job back")?;
                    }
                    ctx.restore(snapshot);
                }
                Verdict::Poison => {
                    return Err(StoreError::Write(
                        "a write failed partway, so its whole group was rolled back".into(),
                    ));
                }
            }
            if job.savepoint {
                release.execute([]).context("releasing a job savepoint")?;
            }
        }
        drop((open, release, undo));
        if ctx.first_event.is_some() {
            super::events::index_tail(&tx, settings.index_tail.events)?;
        }
        let appended_audit = ctx.ids.contains_key(super::audit::ID_PREFIX);
        if appended_audit {
            super::audit::index_tail(&tx, settings.index_tail.events)?;
        }
        let mut advance = tx
            .prepare_cached(
                "INSERT INTO id_sequences (prefix, last) VALUES (?1, ?2)
                 ON CONFLICT (prefix) DO UPDATE SET last = excluded.last",
            )
            .context("preparing an ID sequence update")?;
        for (prefix, last) in &ctx.ids {
            advance
                .execute(params![prefix, *last as i64])
                .context("advancing an ID sequence")?;
        }
        drop(advance);
        if let (Some(first), Some(time)) = (ctx.first_event, ctx.event_time) {
            super::events::record_event_second(&tx, time.timestamp(), first)?;
        }
        let learnt = std::mem::take(&mut ctx.learnt_workspaces);
        let left_a_tail = ctx.first_event.is_some() || appended_audit;
        tx.commit().context("committing a write group")?;
        Ok((learnt, left_a_tail))
    })();
    match outcome {
        Ok((learnt, left_a_tail)) => {
            workspaces.extend(learnt);
            for completion in completions {
                completion(None);
            }
            // After the replies: nobody waits for this group any more.
            settings.checkpoints.after_commit(conn);
            left_a_tail
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = completions.len(), "group commit failed");
            idempotency.rewind(idempotency_seen);
            let reason = e.to_string();
            for completion in completions {
                completion(Some(&reason));
            }
            false
        }
    }
}
