//! The embedded store's own ingest rate, with no HTTP in front of it: the writer thread
//! (group commit, checks, index entries, audit records) fed by concurrent tasks, each
//! waiting for its batch to be durable before sending the next, as HTTP producers do.
//! Together with `tidings bench` it splits the gap between Tidings over HTTP and the raw
//! SQLite baseline into what the store adds and what HTTP adds.
//!
//!     cargo run --release -p tidings --example store_ingest -- [events] [batch] [tasks]
//!
//! Defaults: 1,000,000 events in batches of 1,000 from 4 tasks. With `RETRY=1` it then
//! sends every batch again (every idempotency key repeated, as producers that lost the
//! answers would) and reports that rate too. With `RAW=1` it inserts the
//! same events into a bare database of the same schema instead (`RawSqliteBaseline`), one
//! transaction per `batch × tasks` rows: every task's batch in one (the store's write
//! groups stop at 2,000 events, so with batches of 1,000 from 4 tasks the baseline's
//! transactions are twice the store's). Events are generated and parsed before the clock starts; the
//! store is created in a temporary directory under the current one.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};
use tidings::demo::EventGenerator;
use tidings_domain::NewEvent;
use tidings_domain::audit::AuditContext;
use tidings_domain::catalog::Catalog;
use tidings_domain::ingest::{IngestFormat, MAX_BATCH, parse_ingest_body};
use tidings_store::sqlite::RawSqliteBaseline;
use tidings_store::{SqliteStore, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let mut next = |default: usize| args.next().unwrap_or(Ok(default));
    let (events, batch, tasks) = (next(1_000_000)?, next(1_000)?, next(4)?);
    anyhow::ensure!(
        (1..=MAX_BATCH).contains(&batch) && tasks > 0,
        "a batch holds 1 to {MAX_BATCH} events, and at least one task sends them"
    );
    let batches = generate(events, batch)?;
    let dir = tempfile::tempdir_in(".").context("creating the store's directory")?;

    if std::env::var_os("RAW").is_some() {
        let mut raw = RawSqliteBaseline::create(&dir.path().join("raw.db"))?;
        let rows: Vec<NewEvent> = batches.into_iter().flatten().collect();
        let started = Instant::now();
        for transaction in rows.chunks(batch * tasks) {
            raw.insert_transaction(transaction, chrono::Utc::now().timestamp())?;
        }
        report(
            &format!("raw, {} rows per transaction", batch * tasks),
            events,
            started,
        );
        return Ok(());
    }

    let store = Arc::new(SqliteStore::open(dir.path())?);
    let retries = std::env::var_os("RETRY").is_some().then(|| batches.clone());
    send(
        &store,
        batches,
        tasks,
        &format!("store, batches of {batch} from {tasks} tasks"),
    )
    .await?;
    if let Some(retries) = retries {
        // Every event again, as producers that lost the answers would: each repeated key
        // answers with the event first recorded.
        let label = format!("store, the same batches again (every key repeated), {tasks} tasks");
        send(&store, retries, tasks, &label).await?;
    }
    Ok(())
}

/// Sends `batches` to `store` from `tasks` concurrent tasks, each waiting for its batch to
/// be durable before taking the next; reports the rate as `label`.
async fn send(
    store: &Arc<SqliteStore>,
    batches: Vec<Vec<NewEvent>>,
    tasks: usize,
    label: &str,
) -> anyhow::Result<()> {
    let events = batches.iter().map(Vec::len).sum();
    let queue = Arc::new(Mutex::new(batches));
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (store, queue) = (Arc::clone(store), Arc::clone(&queue));
        senders.spawn(async move {
            let audit = AuditContext::system();
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| anyhow::anyhow!("a sender panicked"))?
                    .pop();
                let Some(batch) = next else {
                    return anyhow::Ok(());
                };
                store.ingest(batch, &audit).await?;
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.context("a sender failed")??;
    }
    report(label, events, started);
    Ok(())
}

/// `events` generated events (the bench's generator and seed), parsed as ingest parses them.
fn generate(events: usize, batch: usize) -> anyhow::Result<Vec<Vec<NewEvent>>> {
    let catalog = Catalog::builtin();
    let mut generator = EventGenerator::new(1, 100);
    let mut batches = Vec::new();
    let mut left = events;
    while left > 0 {
        let n = left.min(batch);
        let events: Vec<Value> = (0..n).map(|_| generator.next_event()).collect();
        let body = serde_json::to_vec(&json!({ "events": events }))?;
        let parsed = parse_ingest_body(&body, IngestFormat::Json, &catalog)
            .map_err(|e| anyhow::anyhow!("generated events do not validate: {e}"))?;
        batches.push(parsed);
        left -= n;
    }
    Ok(batches)
}

fn report(what: &str, events: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{what}: {events} events in {seconds:.2} s, {:.0} events/s",
        events as f64 / seconds
    );
}
