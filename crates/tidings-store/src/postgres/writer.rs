//! The writer of one process and its group commit, on PostgreSQL.
//!
//! As on SQLite, every write is a [`Job`] run on the writer's connection, and every job
//! waiting when the writer wakes up joins one transaction. Across processes, each group
//! first takes one transaction-level advisory lock, so write groups of all processes commit
//! one at a time. That is what makes event numbers commit in order (the newest visible
//! number is the high-water mark below which every number is settled), keeps ID numbers
//! dense and the audit chains linear. Group commit amortises the lock: every request a
//! process has waiting shares one round of it and one WAL flush.
//!
//! Ingest requests are fused: the ingest requests of a group run first, together, as one
//! batch in one savepoint (each request checked on its own and rejected on its own, then the
//! events of all accepted requests inserted with one statement and their audit records with
//! another), so a request of one event costs a share of a few statements rather than its
//! own five round trips. Every other job runs after them, each in its own savepoint.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, mpsc};

use chrono::{DateTime, Utc};
use postgres::{Client, Statement, Transaction};
use tidings_domain::audit::AuditContext;
use tidings_domain::{Event, NewEvent};
use tokio::sync::oneshot;

use super::statements::Statements;
use super::{deliveries, events, partitions};
use crate::clock::Clock;
use crate::delivery_types::AttemptReport;
use crate::error::{Context, StoreError};

/// What a job leaves behind: whether to keep its savepoint, and what to do once the
/// transaction's fate is known (`None` = committed, `Some(reason)` = not).
type Completion = Box<dyn FnOnce(Option<&str>) + Send>;
type JobFn = Box<dyn FnOnce(&mut Transaction<'_>, &mut WriterCtx<'_>) -> (bool, Completion) + Send>;

/// The advisory lock every write group holds until it commits.
pub const WRITE_LOCK: i64 = 0x7469_6469_6e67; // "tiding"

/// One write waiting for the writer.
pub(crate) enum Job {
    /// An ingest request: fused with the other ingest requests of its group.
    Ingest(IngestJob),
    /// A webhook attempt to record: fused with the other attempts of its group.
    Attempt(AttemptJob),
    /// Any other write: runs in its own savepoint.
    Other { weight: usize, run: JobFn },
}

/// An ingest request and where its answer goes (after the commit).
/// An attempt report and where its answer goes (after the commit).
pub(crate) struct AttemptJob {
    report: AttemptReport,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(crate) struct IngestJob {
    events: Vec<NewEvent>,
    audit: AuditContext,
    reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
}

/// Sends `result` once the transaction's fate is known; a failed commit replaces it.
fn completion<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) -> Completion {
    Box::new(move |commit_error| {
        let outcome = match commit_error {
            None => result,
            Some(reason) => Err(StoreError::Write(reason.to_string())),
        };
        let _ = reply.send(outcome);
    })
}

impl Job {
    /// A job computing `T`; its reply is sent after the commit.
    pub(crate) fn new<T: Send + 'static>(
        weight: usize,
        work: impl FnOnce(&mut Transaction<'_>, &mut WriterCtx<'_>) -> Result<T, StoreError>
        + Send
        + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self::Other {
            weight,
            run: Box::new(move |tx, ctx| {
                let result = work(tx, ctx);
                let keep = result.is_ok();
                (keep, completion(result, reply))
            }),
        }
    }

    /// An ingest request (one batch of events); its reply is sent after the commit.
    pub(crate) fn ingest(
        events: Vec<NewEvent>,
        audit: AuditContext,
        reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
    ) -> Self {
        Self::Ingest(IngestJob {
            events,
            audit,
            reply,
        })
    }

    /// An attempt report to record; its reply is sent after the commit.
    pub(crate) fn attempt(
        report: AttemptReport,
        reply: oneshot::Sender<Result<(), StoreError>>,
    ) -> Self {
        Self::Attempt(AttemptJob { report, reply })
    }

    /// What the job counts for against [`MAX_GROUP_WEIGHT`].
    fn weight(&self) -> usize {
        match self {
            Self::Ingest(job) => job.events.len(),
            Self::Attempt(_) => 1,
            Self::Other { weight, .. } => *weight,
        }
    }
}

/// Upper bound on the weight folded into one transaction; keeps a group's latency bounded.
const MAX_GROUP_WEIGHT: usize = 20_000;

/// Caches that outlive a group: facts that never change once committed.
#[derive(Default)]
pub(crate) struct Known {
    /// workspace -> organization.
    workspaces: HashMap<String, String>,
    /// (table, day) partitions known to exist.
    partitions: HashSet<(&'static str, i64)>,
    /// Statements prepared on the writer's connection (cleared when it is replaced).
    statements: Statements,
}

/// State shared by the jobs of one group: the clock reading, ID sequences, caches.
pub(crate) struct WriterCtx<'a> {
    pub now: DateTime<Utc>,
    ids: HashMap<&'static str, u64>,
    event_time: Option<DateTime<Utc>>,
    known: &'a mut Known,
    /// The newest hash of each audit chain written or read in this group.
    chain_heads: HashMap<String, [u8; 32]>,
    learnt_workspaces: HashMap<String, String>,
    learnt_partitions: HashSet<(&'static str, i64)>,
}

/// What a committed group learnt, merged into [`Known`].
type Learnt = (HashMap<String, String>, HashSet<(&'static str, i64)>);

type Snapshot = (
    HashMap<&'static str, u64>,
    Option<DateTime<Utc>>,
    HashMap<String, [u8; 32]>,
    HashMap<String, String>,
    HashSet<(&'static str, i64)>,
);

impl WriterCtx<'_> {
    /// The next number for `prefix` (`EVT`, `KEY`, `WHK`, `DLV`, `AUD`). One path mints every ID.
    pub fn next_id(
        &mut self,
        tx: &mut Transaction<'_>,
        prefix: &'static str,
    ) -> Result<u64, StoreError> {
        let last = match self.ids.get(prefix) {
            Some(n) => *n,
            None => {
                let read = self.prepared(tx, "SELECT last FROM id_sequences WHERE prefix = $1")?;
                tx.query_opt(&read, &[&prefix])
                    .context("reading an ID sequence")?
                    .map_or(0, |r| r.get::<_, i64>(0)) as u64
            }
        };
        self.ids.insert(prefix, last + 1);
        Ok(last + 1)
    }

    /// Gives back the number `next_id` just returned for `prefix`, when nothing was stored
    /// under it, so numbers stay dense. Only valid right after that `next_id`.
    pub fn unmint(&mut self, prefix: &'static str) {
        if let Some(n) = self.ids.get_mut(prefix) {
            *n -= 1;
        }
    }

    /// `created_at` for events recorded in this group: never before the newest stored event,
    /// even if this machine's clock is behind another's.
    pub fn event_time(&mut self, tx: &mut Transaction<'_>) -> Result<DateTime<Utc>, StoreError> {
        if let Some(t) = self.event_time {
            return Ok(t);
        }
        let read = self.prepared(tx, "SELECT last_created_at FROM event_clock WHERE id = 1")?;
        let newest: i64 = tx
            .query_one(&read, &[])
            .context("reading the newest event time")?
            .get(0);
        let secs = self.now.timestamp().max(newest);
        let t = DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs} out of range")))?;
        if secs != newest {
            let advance = self.prepared(
                tx,
                "UPDATE event_clock SET last_created_at = $1 WHERE id = 1",
            )?;
            tx.execute(&advance, &[&secs])
                .context("advancing the event clock")?;
        }
        self.event_time = Some(t);
        Ok(t)
    }

    pub fn workspace_owner(&self, workspace: &str) -> Option<&String> {
        self.known
            .workspaces
            .get(workspace)
            .or_else(|| self.learnt_workspaces.get(workspace))
    }

    pub fn learn_workspace(&mut self, workspace: &str, org: &str) {
        self.learnt_workspaces
            .insert(workspace.to_string(), org.to_string());
    }

    /// Makes sure `table` has the daily partition that holds `created_at` (unix seconds).
    pub fn ensure_partition(
        &mut self,
        tx: &mut Transaction<'_>,
        table: &'static str,
        created_at: i64,
    ) -> Result<(), StoreError> {
        let day = partitions::day_of(created_at);
        if self.known.partitions.contains(&(table, day))
            || self.learnt_partitions.contains(&(table, day))
        {
            return Ok(());
        }
        partitions::create(tx, table, day)?;
        self.learnt_partitions.insert((table, day));
        Ok(())
    }

    /// `sql` prepared once per connection (see [`Statements`]).
    pub fn prepared(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        self.known.statements.get(tx, sql)
    }

    /// The writer connection's prepared statements, for helpers shared with other
    /// connections.
    pub fn statements(&mut self) -> &mut Statements {
        &mut self.known.statements
    }

    /// The newest hash of `chain` as this group left it, if it touched the chain.
    pub fn chain_head(&self, chain: &str) -> Option<[u8; 32]> {
        self.chain_heads.get(chain).copied()
    }

    pub fn set_chain_head(&mut self, chain: &str, hash: [u8; 32]) {
        self.chain_heads.insert(chain.to_string(), hash);
    }

    fn snapshot(&self) -> Snapshot {
        (
            self.ids.clone(),
            self.event_time,
            self.chain_heads.clone(),
            self.learnt_workspaces.clone(),
            self.learnt_partitions.clone(),
        )
    }

    fn restore(&mut self, snapshot: Snapshot) {
        (
            self.ids,
            self.event_time,
            self.chain_heads,
            self.learnt_workspaces,
            self.learnt_partitions,
        ) = snapshot;
    }
}

/// Runs write groups until every sender is gone. `client` is the connection opened at
/// start-up; after a lost connection the next group connects again to `url`.
pub(crate) fn run(url: String, client: Client, rx: mpsc::Receiver<Job>, clock: Arc<dyn Clock>) {
    let mut known = Known::default();
    let mut client = Some(client);
    while let Ok(first) = rx.recv() {
        let mut weight = first.weight();
        let mut group = vec![first];
        while weight < MAX_GROUP_WEIGHT {
            match rx.try_recv() {
                Ok(job) => {
                    weight += job.weight();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let conn = match client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                // Statements belong to the connection that prepared them.
                known.statements.clear();
                super::connect(&url)
            }
        };
        match conn {
            Ok(mut c) => {
                run_group(&mut c, clock.now(), &mut known, group);
                client = Some(c);
            }
            Err(e) => {
                tracing::error!(error = %e, "the PostgreSQL writer cannot connect");
                // Dropping the jobs closes their reply channels: each caller sees its write
                // fail, and nothing was written.
                drop(group);
            }
        }
    }
    tracing::debug!("postgres writer stopped");
}

fn run_group(client: &mut Client, now: DateTime<Utc>, known: &mut Known, group: Vec<Job>) {
    let mut completions = Vec::with_capacity(group.len());
    let mut ingests = Vec::new();
    let mut attempts = Vec::new();
    let mut others = Vec::new();
    for job in group {
        match job {
            Job::Ingest(job) => ingests.push(job),
            Job::Attempt(job) => attempts.push(job),
            Job::Other { run, .. } => others.push(run),
        }
    }
    let outcome = (|| -> Result<Learnt, StoreError> {
        let mut tx = client
            .transaction()
            .context("starting a write transaction")?;
        let mut ctx = WriterCtx {
            now,
            ids: HashMap::new(),
            event_time: None,
            known: &mut *known,
            chain_heads: HashMap::new(),
            learnt_workspaces: HashMap::new(),
            learnt_partitions: HashSet::new(),
        };
        let lock = ctx.prepared(&mut tx, "SELECT pg_advisory_xact_lock($1)")?;
        tx.execute(&lock, &[&WRITE_LOCK])
            .context("taking the write lock")?;
        if !ingests.is_empty() {
            run_ingests(&mut tx, &mut ctx, ingests, &mut completions)?;
        }
        if !attempts.is_empty() {
            run_attempts(&mut tx, &mut ctx, attempts, &mut completions)?;
        }
        for run in others {
            let mut sp = tx.savepoint("job").context("opening a job savepoint")?;
            let snapshot = ctx.snapshot();
            let (keep, completion) = run(&mut sp, &mut ctx);
            completions.push(completion);
            if keep {
                sp.commit().context("releasing a job savepoint")?;
            } else {
                sp.rollback().context("rolling a job back")?;
                ctx.restore(snapshot);
            }
        }
        if !ctx.ids.is_empty() {
            // Every sequence the group used, in one statement.
            let advance = ctx.prepared(
                &mut tx,
                "INSERT INTO id_sequences (prefix, last)
                 SELECT * FROM unnest($1::text[], $2::bigint[])
                 ON CONFLICT (prefix) DO UPDATE SET last = excluded.last",
            )?;
            let (prefixes, lasts): (Vec<&str>, Vec<i64>) =
                ctx.ids.iter().map(|(p, l)| (*p, *l as i64)).unzip();
            tx.execute(&advance, &[&prefixes, &lasts])
                .context("advancing the ID sequences")?;
        }
        let learnt = (
            std::mem::take(&mut ctx.learnt_workspaces),
            std::mem::take(&mut ctx.learnt_partitions),
        );
        tx.commit().context("committing a write group")?;
        Ok(learnt)
    })();
    match outcome {
        Ok((workspaces, partitions)) => {
            known.workspaces.extend(workspaces);
            known.partitions.extend(partitions);
            for completion in completions {
                completion(None);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = completions.len(), "group commit failed");
            let reason = e.to_string();
            for completion in completions {
                completion(Some(&reason));
            }
        }
    }
}

/// Runs the ingest requests of a group as one batch, in arrival order: a request that
/// conflicts with stored data (or with an earlier request of the group) is rejected on its
/// own; the others are recorded together (see [`run_fused`]).
fn run_ingests(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    jobs: Vec<IngestJob>,
    completions: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let (requests, replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|job| ((job.events, job.audit), job.reply))
        .unzip();
    run_fused(tx, ctx, "ingest", replies, completions, |sp, ctx| {
        let batches: Vec<(&[NewEvent], &AuditContext)> = requests
            .iter()
            .map(|(events, audit)| (events.as_slice(), audit))
            .collect();
        events::ingest_all(sp, ctx, &batches)
    })
}

/// Records the attempts reported to a group together (see [`run_fused`]): a failure leaves
/// their leases to run out, as after a crash.
fn run_attempts(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    jobs: Vec<AttemptJob>,
    completions: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let (reports, replies): (Vec<AttemptReport>, Vec<_>) =
        jobs.into_iter().map(|j| (j.report, j.reply)).unzip();
    let n = reports.len();
    run_fused(tx, ctx, "attempts", replies, completions, |sp, ctx| {
        deliveries::record_attempts(sp, ctx, reports)?;
        Ok((0..n).map(|_| Ok(())).collect())
    })
}

/// Runs the fused work of several jobs inside one savepoint. `work` answers each job (in
/// order); a database error from it fails them all, is rolled back to the savepoint, and
/// leaves the rest of the group to go on. Replies wait in `completions` for the commit.
fn run_fused<T: Send + 'static>(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    what: &'static str,
    replies: Vec<oneshot::Sender<Result<T, StoreError>>>,
    completions: &mut Vec<Completion>,
    work: impl FnOnce(
        &mut Transaction<'_>,
        &mut WriterCtx<'_>,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError>,
) -> Result<(), StoreError> {
    let mut sp = tx
        .savepoint(what)
        .context("opening a savepoint for fused jobs")?;
    let snapshot = ctx.snapshot();
    match work(&mut sp, ctx) {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                completions.push(completion(result, reply));
            }
            sp.commit()
                .context("releasing a savepoint for fused jobs")?;
        }
        Err(e) => {
            tracing::error!(error = %e, what, jobs = replies.len(), "fused jobs failed");
            let reason = e.to_string();
            for reply in replies {
                completions.push(completion(Err(StoreError::Write(reason.clone())), reply));
            }
            sp.rollback().context("rolling fused jobs back")?;
            ctx.restore(snapshot);
        }
    }
    Ok(())
}
