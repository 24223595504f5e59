//! The single writer thread and its group commit.
//!
//! Every ingest request waiting in the channel when the writer wakes up joins one
//! transaction. Each request runs inside its own savepoint, so one request that conflicts
//! with stored data is rolled back alone while the others commit: batches stay
//! all-or-nothing, and producers share the fsync.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use chrono::{DateTime, Datelike, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tidings_domain::{ApiKey, Event, EventId, FieldProblem, KeyId, NewApiKey, NewEvent};
use tokio::sync::oneshot;

use super::read;
use crate::clock::Clock;
use crate::error::{Context, StoreError};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum WriteOp {
    Ingest {
        events: Vec<NewEvent>,
        reply: Reply<Vec<Event>>,
    },
    CreateKey {
        key: NewApiKey,
        secret_hash: [u8; 32],
        reply: Reply<ApiKey>,
    },
    RevokeKey {
        id: KeyId,
        reply: Reply<Option<ApiKey>>,
    },
}

/// Upper bound on events folded into one transaction; keeps latency of a group bounded.
const MAX_GROUP_EVENTS: usize = 20_000;

pub(crate) fn run(mut conn: Connection, rx: mpsc::Receiver<WriteOp>, clock: Arc<dyn Clock>) {
    // workspace -> organization; immutable once learnt, so caching is always safe.
    let mut workspaces: HashMap<String, String> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut group: Vec<(Vec<NewEvent>, Reply<Vec<Event>>)> = Vec::new();
        let mut others = Vec::new();
        let mut pending = Some(first);
        let mut group_events = 0;
        while let Some(op) = pending.take() {
            match op {
                WriteOp::Ingest { events, reply } => {
                    group_events += events.len();
                    group.push((events, reply));
                }
                other => others.push(other),
            }
            if group_events < MAX_GROUP_EVENTS {
                pending = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            ingest_group(&mut conn, clock.now(), &mut workspaces, group);
        }
        for op in others {
            match op {
                WriteOp::CreateKey {
                    key,
                    secret_hash,
                    reply,
                } => {
                    let _ = reply.send(create_key(&mut conn, clock.now(), key, secret_hash));
                }
                WriteOp::RevokeKey { id, reply } => {
                    let _ = reply.send(revoke_key(&mut conn, clock.now(), id));
                }
                WriteOp::Ingest { .. } => unreachable!("ingest ops are grouped above"),
            }
        }
    }
    tracing::debug!("sqlite writer stopped");
}

fn two_digit_year(t: DateTime<Utc>) -> u8 {
    t.year().rem_euclid(100) as u8
}

fn last_id(tx: &Transaction<'_>, prefix: &str) -> Result<u64, StoreError> {
    tx.query_row(
        "SELECT last FROM id_sequences WHERE prefix = ?1",
        [prefix],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .context("reading an ID sequence")
    .map(|v| v.unwrap_or(0) as u64)
}

fn set_last_id(tx: &Transaction<'_>, prefix: &str, last: u64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO id_sequences (prefix, last) VALUES (?1, ?2)
         ON CONFLICT (prefix) DO UPDATE SET last = excluded.last",
        params![prefix, last as i64],
    )
    .context("advancing an ID sequence")
    .map(|_| ())
}

fn ingest_group(
    conn: &mut Connection,
    now: DateTime<Utc>,
    workspaces: &mut HashMap<String, String>,
    group: Vec<(Vec<NewEvent>, Reply<Vec<Event>>)>,
) {
    let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    match write_group(conn, now, workspaces, &batches) {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, requests = replies.len(), "group commit failed");
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Write(message.clone())));
            }
        }
    }
}

/// One transaction for the whole group; per-request outcomes inside it.
fn write_group(
    conn: &mut Connection,
    now: DateTime<Utc>,
    workspaces: &mut HashMap<String, String>,
    batches: &[Vec<NewEvent>],
) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting an ingest transaction")?;
    let mut last_seq = last_id(&tx, "EVT")?;
    let last_created: Option<i64> = tx
        .query_row(
            "SELECT created_at FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .context("reading the newest event time")?;
    // created_at never decreases with seq, even if the wall clock steps back.
    let now_secs = now.timestamp().max(last_created.unwrap_or(i64::MIN));
    let created_at = DateTime::from_timestamp(now_secs, 0)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {now_secs} out of range")))?;

    let mut outcomes = Vec::with_capacity(batches.len());
    let mut learnt_in_group = HashMap::new();
    for events in batches {
        let sp = tx.savepoint().context("opening a request savepoint")?;
        let mut learnt = HashMap::new();
        let mut seq = last_seq;
        let outcome = insert_batch(&sp, events, &mut seq, created_at, workspaces, &mut learnt);
        match outcome {
            Ok(recorded) => {
                sp.commit().context("releasing a request savepoint")?;
                last_seq = seq;
                learnt_in_group.extend(learnt);
                outcomes.push(Ok(recorded));
            }
            Err(e) => {
                // Dropping the savepoint rolls this request back; the others are untouched.
                drop(sp);
                outcomes.push(Err(e));
            }
        }
    }
    set_last_id(&tx, "EVT", last_seq)?;
    tx.commit().context("committing an ingest group")?;
    workspaces.extend(learnt_in_group);
    Ok(outcomes)
}

fn insert_batch(
    tx: &rusqlite::Savepoint<'_>,
    events: &[NewEvent],
    seq: &mut u64,
    created_at: DateTime<Utc>,
    known_workspaces: &HashMap<String, String>,
    learnt: &mut HashMap<String, String>,
) -> Result<Vec<Event>, StoreError> {
    let mut find_key = tx
        .prepare_cached(&format!(
            "SELECT {} FROM events WHERE org = ?1 AND idempotency_key = ?2",
            read::EVENT_COLUMNS
        ))
        .context("preparing the idempotency lookup")?;
    let mut find_ws = tx
        .prepare_cached("SELECT org FROM workspaces WHERE workspace = ?1")
        .context("preparing the workspace lookup")?;
    let mut add_ws = tx
        .prepare_cached("INSERT INTO workspaces (workspace, org) VALUES (?1, ?2)")
        .context("preparing the workspace insert")?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (seq, org, workspace, type, actor_type, actor_id, subject_type,
                                 subject_id, payload, created_at, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .context("preparing the event insert")?;

    let year = two_digit_year(created_at);
    let mut recorded = Vec::with_capacity(events.len());
    let mut problems = Vec::new();
    for (index, e) in events.iter().enumerate() {
        let org = e.organization_id.as_str();
        if let Some(key) = &e.idempotency_key {
            // Also finds an event recorded earlier in this same transaction.
            let existing = find_key
                .query_row(params![org, key], read::event_from_row)
                .optional()
                .context("looking up an idempotency key")?;
            if let Some(existing) = existing {
                recorded.push(existing?);
                continue;
            }
        }
        if let Some(ws) = &e.workspace_id {
            let ws = ws.as_str();
            let owner = match known_workspaces.get(ws).or_else(|| learnt.get(ws)) {
                Some(o) => Some(o.clone()),
                None => find_ws
                    .query_row([ws], |r| r.get::<_, String>(0))
                    .optional()
                    .context("looking up a workspace")?,
            };
            match owner {
                Some(owner) if owner != org => problems.push(FieldProblem {
                    index,
                    field: "workspace_id".into(),
                    reason: format!(
                        "workspace {ws} belongs to another organization; a workspace belongs to exactly one"
                    ),
                }),
                Some(_) => {}
                None => {
                    add_ws
                        .execute([ws, org])
                        .context("recording a workspace")?;
                    learnt.insert(ws.to_string(), org.to_string());
                }
            }
        }
        *seq += 1;
        insert
            .execute(params![
                *seq as i64,
                org,
                e.workspace_id.as_ref().map(|w| w.as_str()),
                e.event_type.as_str(),
                e.actor.actor_type.as_str(),
                e.actor.id.as_str(),
                e.subject.subject_type.as_str(),
                e.subject.id.as_str(),
                e.payload,
                created_at.timestamp(),
                e.idempotency_key,
            ])
            .context("inserting an event")?;
        let payload = serde_json::value::RawValue::from_string(e.payload.clone())
            .map_err(|err| StoreError::Corrupt(format!("payload is not JSON: {err}")))?;
        recorded.push(Event {
            id: EventId::new(year, *seq),
            event_type: e.event_type.clone(),
            organization_id: e.organization_id.clone(),
            workspace_id: e.workspace_id.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            payload,
            created_at,
        });
    }
    if problems.is_empty() {
        Ok(recorded)
    } else {
        Err(StoreError::Rejected(problems))
    }
}

fn create_key(
    conn: &mut Connection,
    now: DateTime<Utc>,
    key: NewApiKey,
    secret_hash: [u8; 32],
) -> Result<ApiKey, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting a key transaction")?;
    let seq = last_id(&tx, "KEY")? + 1;
    let created_at = now;
    let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    tx.execute(
        "INSERT INTO api_keys (seq, secret_hash, org, scopes, rate_limit, description, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            seq as i64,
            &secret_hash[..],
            key.organization_id.as_ref().map(|o| o.as_str()),
            scopes.join(","),
            key.rate_limit,
            key.description,
            created_at.timestamp(),
        ],
    )
    .context("inserting a key")?;
    set_last_id(&tx, "KEY", seq)?;
    let stored = read::key_by_seq(&tx, seq)?
        .ok_or_else(|| StoreError::Corrupt("a key vanished right after insert".into()))?;
    tx.commit().context("committing a key")?;
    Ok(stored)
}

fn revoke_key(
    conn: &mut Connection,
    now: DateTime<Utc>,
    id: KeyId,
) -> Result<Option<ApiKey>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context("starting a key transaction")?;
    let Some(existing) = read::key_by_seq(&tx, id.number)?.filter(|k| k.id == id) else {
        return Ok(None);
    };
    if existing.revoked_at.is_none() {
        tx.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE seq = ?1",
            params![id.number as i64, now.timestamp()],
        )
        .context("revoking a key")?;
    }
    let updated = read::key_by_seq(&tx, id.number)?;
    tx.commit().context("committing a key revocation")?;
    Ok(updated)
}
