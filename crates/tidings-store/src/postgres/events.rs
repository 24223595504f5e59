//! Events on PostgreSQL: the ingest write (a writer job, one `INSERT … SELECT unnest(…)`
//! per batch) and the read queries with keyset pagination.
//!
//! Reads mirror the SQLite store: the most selective equality picks an index whose trailing
//! column is `seq`, and several exact types become one branch each, merged by `UNION ALL`,
//! so every branch is an in-order range scan with a limit. Time bounds apply to `created_at`
//! directly, which also prunes the daily partitions.

use std::collections::HashMap;

use postgres::{GenericClient, Row, ToStatement, Transaction};
use tidings_domain::audit::AuditContext;
use tidings_domain::{
    Event, EventFilter, EventId, FieldProblem, NewEvent, Order, Tenant, TypePattern,
};

use super::list_query::ListQuery;
use super::writer::WriterCtx;
use crate::audit_entries::batch_audit_entries;
use crate::error::{Context, StoreError};
use crate::rows::{into_page, two_digit_year};
use crate::stored;
pub(crate) use crate::stored::EVENT_COLUMNS;
use crate::{Page, PageRequest, event_equalities, list_scope};

/// Maps a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    stored::event(row)
}

pub(crate) fn list_events(
    c: &mut impl GenericClient,
    tenant: &Tenant,
    filter: &EventFilter,
    page: PageRequest,
) -> Result<Page<Event>, StoreError> {
    let Ok(org) = list_scope(tenant, filter.organization_id.as_ref()) else {
        return Ok(Page::empty());
    };
    let org = org.map(|o| o.as_str());
    if org.is_none() && filter.workspace_id.is_none() {
        // Platform-wide scans are not an API feature; the query layer requires one of them.
        return Err(StoreError::Corrupt(
            "an event query needs an organization or a workspace".into(),
        ));
    }

    let mut query = ListQuery::default();
    for (column, value) in event_equalities(org, filter) {
        query.eq(column, value.to_string());
    }
    // The time bounds prune partitions; turned into event-number bounds (created_at never
    // decreases with seq), they also make the scan of an index ending in `seq` exact rather
    // than a walk past the rows outside the range.
    query.created_within(&filter.range);
    let (from, to) = filter.range.as_unix_seconds();
    if let Some(from) = from {
        match first_seq_at_or_after(c, from)? {
            Some(lo) => {
                query.cond("seq >= ?", lo);
            }
            None => return Ok(Page::empty()),
        }
    }
    if let Some(hi) = to
        .map(|to| first_seq_at_or_after(c, to))
        .transpose()?
        .flatten()
    {
        query.cond("seq < ?", hi);
    }
    match (page.order, page.after) {
        (Order::Desc, Some(after)) => {
            query.cond("seq < ?", after as i64);
        }
        (Order::Asc, Some(after)) => {
            query.cond("seq > ?", after as i64);
        }
        _ => {}
    }

    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let fetch = page.limit as i64 + 1;
    let type_conds: Vec<String> = filter
        .types
        .iter()
        .filter_map(|p| match p {
            TypePattern::All => None,
            TypePattern::Exact(t) => Some(format!("type = {}", query.bind(t.as_str().to_string()))),
            // `domain.` .. `domain/`: '/' is the byte after '.' (the column collates as "C").
            TypePattern::Prefix(prefix) => Some(format!(
                "(type >= {} AND type < {})",
                query.bind(prefix.clone()),
                query.bind(format!("{}/", &prefix[..prefix.len() - 1]))
            )),
        })
        .collect();
    let base = query.conditions();
    let by_type_index = org.is_some()
        && filter.subject_id.is_none()
        && filter.actor_id.is_none()
        && filter.workspace_id.is_none();
    let sql = if by_type_index && type_conds.len() > 1 {
        // One in-order range scan per type, merged.
        let branches: Vec<String> = type_conds
            .iter()
            .map(|tc| {
                format!(
                    "(SELECT {EVENT_COLUMNS} FROM events WHERE {base} AND {tc}
                      ORDER BY seq {dir} LIMIT {fetch})"
                )
            })
            .collect();
        format!(
            "{} ORDER BY seq {dir} LIMIT {fetch}",
            branches.join(" UNION ALL ")
        )
    } else {
        let mut all = base;
        if !type_conds.is_empty() {
            all = format!("{all} AND ({})", type_conds.join(" OR "));
        }
        format!("SELECT {EVENT_COLUMNS} FROM events WHERE {all} ORDER BY seq {dir} LIMIT {fetch}")
    };
    let rows = c.query(&sql, &query.params()).context("querying events")?;
    let items = rows
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(into_page(items, page.limit))
}

/// The first event number at or after `secs`, if any (one probe of `events_created_at`).
fn first_seq_at_or_after(c: &mut impl GenericClient, secs: i64) -> Result<Option<i64>, StoreError> {
    Ok(c.query_opt(
        "SELECT seq FROM events WHERE created_at >= $1 ORDER BY created_at, seq LIMIT 1",
        &[&secs],
    )
    .context("resolving a time bound")?
    .map(|r| r.get(0)))
}

/// Unix seconds where the year an ID carries starts and ends (IDs carry two digits: 20YY).
fn year_bounds(year: u8) -> (i64, i64) {
    let start = |y: i32| {
        chrono::NaiveDate::from_ymd_opt(y, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(0, |t| t.and_utc().timestamp())
    };
    let y = 2000 + i32::from(year);
    (start(y), start(y + 1))
}

pub(crate) fn get_event(
    c: &mut impl GenericClient,
    tenant: &Tenant,
    id: EventId,
) -> Result<Option<Event>, StoreError> {
    // The year in the ID limits the lookup to that year's partitions.
    let (from, to) = year_bounds(id.year);
    let found = c
        .query_opt(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE seq = $1 AND created_at >= $2 AND created_at < $3"
            ),
            &[&(id.number as i64), &from, &to],
        )
        .context("looking up an event")?
        .map(|r| event_from_row(&r))
        .transpose()?;
    Ok(found.filter(|e| {
        e.id == id
            && match tenant {
                Tenant::Org(org) => e.organization_id == *org,
                Tenant::Platform => true,
            }
    }))
}

/// Reads events by number (any order); `None` for numbers that are gone.
fn events_by_seq(
    tx: &mut Transaction<'_>,
    seqs: &[i64],
) -> Result<HashMap<i64, Event>, StoreError> {
    if seqs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1)"),
            &[&seqs],
        )
        .context("reading events by number")?;
    rows.iter()
        .map(|r| event_from_row(r).map(|e| (e.id.number as i64, e)))
        .collect()
}

/// Records one batch of events (a writer job, or part of one): all of it, or — on a conflict
/// with stored data — none of it. A repeated idempotency key yields the event first
/// recorded.
pub(crate) fn insert_events(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    events: &[NewEvent],
) -> Result<Vec<Event>, StoreError> {
    record_batches(tx, ctx, &[events])?
        .into_iter()
        .next()
        .unwrap_or_else(|| Ok(Vec::new()))
}

/// The ingest requests of one write group, each with its audit records (one
/// `events.ingested` per organization in it, under that request's context). The outer error
/// is a database error, which fails them all; the inner results are each request's own.
pub(crate) fn ingest_all(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    requests: &[(&[NewEvent], &AuditContext)],
) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
    let batches: Vec<&[NewEvent]> = requests.iter().map(|(events, _)| *events).collect();
    let results = record_batches(tx, ctx, &batches)?;
    let mut entries = Vec::new();
    for (result, (_, audit)) in results.iter().zip(requests) {
        if let Ok(recorded) = result {
            entries.extend(
                batch_audit_entries(recorded)
                    .into_iter()
                    .map(|entry| (*audit, entry)),
            );
        }
    }
    super::audit::append_each(tx, ctx, entries)?;
    Ok(results)
}

/// An input event's idempotency key, scoped to its organization (borrowed from the event).
fn key_of(e: &NewEvent) -> Option<(&str, &str)> {
    e.idempotency_key
        .as_deref()
        .map(|k| (e.organization_id.as_str(), k))
}

/// Where an input event's answer comes from.
enum Slot {
    /// The new event `fresh[i]`.
    New(usize),
    /// The event with this number: recorded earlier, or earlier in this group.
    Repeat(i64),
}

/// Checks one batch against stored data and the batches accepted before it in the group:
/// the workspaces it names must belong to its events' organizations (the first event naming
/// a new workspace claims it), and the events its repeated keys name must still exist.
/// Returns the workspaces it claims.
fn check_batch<'e>(
    ctx: &WriterCtx<'_>,
    events: &'e [NewEvent],
    used_keys: &HashMap<(&str, &str), i64>,
    stored: &HashMap<i64, Event>,
) -> Result<Vec<(&'e str, &'e str)>, StoreError> {
    let mut claims: Vec<(&str, &str)> = Vec::new();
    let mut problems = Vec::new();
    for (index, e) in events.iter().enumerate() {
        let Some(ws) = &e.workspace_id else { continue };
        let (ws, org) = (ws.as_str(), e.organization_id.as_str());
        let owner = ctx.workspace_owner(ws).map(String::as_str).or_else(|| {
            claims
                .iter()
                .find(|(claimed, _)| *claimed == ws)
                .map(|(_, o)| *o)
        });
        match owner {
            Some(owner) if owner != org => problems.push(FieldProblem {
                index,
                field: "workspace_id".into(),
                reason: format!(
                    "workspace {ws} belongs to another organization; a workspace belongs to exactly one"
                ),
            }),
            Some(_) => {}
            None => claims.push((ws, org)),
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::Rejected(problems));
    }
    for key in events.iter().filter_map(key_of) {
        if let Some(seq) = used_keys.get(&key)
            && !stored.contains_key(seq)
        {
            return Err(StoreError::Corrupt(format!(
                "idempotency key names event {seq}, which is gone"
            )));
        }
    }
    Ok(claims)
}

/// Records the batches of one group as one: every batch is checked on its own, in order
/// (see [`check_batch`]) and, on a conflict, rejected whole with its own problems; the new
/// events of all accepted batches go in with one statement. A key repeated anywhere in the
/// group, or recorded before, yields the event first recorded under it. The outer error is a
/// database error (the caller rolls everything back); the inner results are per batch.
fn record_batches(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    batches: &[&[NewEvent]],
) -> Result<Vec<Result<Vec<Event>, StoreError>>, StoreError> {
    let all = || batches.iter().flat_map(|b| b.iter());

    // What the checks need, for all batches at once. Owners of workspaces not cached yet:
    let mut unknown: Vec<String> = all()
        .filter_map(|e| e.workspace_id.as_ref().map(|w| w.as_str()))
        .filter(|w| ctx.workspace_owner(w).is_none())
        .map(str::to_string)
        .collect();
    unknown.sort();
    unknown.dedup();
    if !unknown.is_empty() {
        let lookup = ctx.prepared(
            tx,
            "SELECT workspace, org FROM workspaces WHERE workspace = ANY($1)",
        )?;
        for row in tx
            .query(&lookup, &[&unknown])
            .context("looking up workspaces")?
        {
            let (ws, org): (String, String) = (row.get(0), row.get(1));
            ctx.learn_workspace(&ws, &org);
        }
    }
    // Idempotency keys used by earlier groups, and the events they name:
    let mut keyed: Vec<(&str, &str)> = all().filter_map(key_of).collect();
    keyed.sort();
    keyed.dedup();
    let mut used_keys: HashMap<(&str, &str), i64> = HashMap::new();
    if !keyed.is_empty() {
        let (orgs, keys): (Vec<&str>, Vec<&str>) = keyed.iter().copied().unzip();
        let lookup = ctx.prepared(
            tx,
            "SELECT i.org, i.key, i.seq FROM event_idempotency i
             JOIN unnest($1::text[], $2::text[]) AS k(org, key)
               ON i.org = k.org AND i.key = k.key",
        )?;
        for row in tx
            .query(&lookup, &[&orgs, &keys])
            .context("looking up idempotency keys")?
        {
            // Keyed by the input's own strings (the row names one of them).
            let found: (&str, &str) = (row.get(0), row.get(1));
            if let Ok(i) = keyed.binary_search(&found) {
                used_keys.insert(keyed[i], row.get(2));
            }
        }
    }
    let mut earlier: Vec<i64> = used_keys.values().copied().collect();
    earlier.sort_unstable();
    earlier.dedup();
    let stored = events_by_seq(tx, &earlier)?;

    // Check each batch in arrival order; an accepted batch's workspace claims bind the ones
    // after it.
    let mut new_workspaces: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut verdicts: Vec<Result<(), StoreError>> = Vec::with_capacity(batches.len());
    for events in batches {
        match check_batch(ctx, events, &used_keys, &stored) {
            Ok(claims) => {
                for (ws, org) in claims {
                    ctx.learn_workspace(ws, org);
                    new_workspaces.0.push(ws.to_string());
                    new_workspaces.1.push(org.to_string());
                }
                verdicts.push(Ok(()));
            }
            Err(e) => verdicts.push(Err(e)),
        }
    }
    if !new_workspaces.0.is_empty() {
        let insert = ctx.prepared(
            tx,
            "INSERT INTO workspaces (workspace, org) SELECT * FROM unnest($1::text[], $2::text[])",
        )?;
        tx.execute(&insert, &[&new_workspaces.0, &new_workspaces.1])
            .context("recording workspaces")?;
    }

    // Number the new events of the accepted batches, in order; remember which input is a
    // repeat of which number.
    let mut seen = used_keys;
    let mut fresh: Vec<(i64, &NewEvent)> = Vec::new();
    let mut slots: Vec<Result<Vec<Slot>, StoreError>> = Vec::with_capacity(batches.len());
    for (events, verdict) in batches.iter().zip(verdicts) {
        if let Err(e) = verdict {
            slots.push(Err(e));
            continue;
        }
        let mut batch_slots = Vec::with_capacity(events.len());
        for e in *events {
            let key = key_of(e);
            if let Some(seq) = key.as_ref().and_then(|k| seen.get(k)) {
                batch_slots.push(Slot::Repeat(*seq));
                continue;
            }
            let seq = ctx.next_id(tx, "EVT")? as i64;
            if let Some(k) = key {
                seen.insert(k, seq);
            }
            batch_slots.push(Slot::New(fresh.len()));
            fresh.push((seq, e));
        }
        slots.push(Ok(batch_slots));
    }

    let created_at = if fresh.is_empty() {
        ctx.now
    } else {
        let created_at = ctx.event_time(tx)?;
        insert_fresh(tx, ctx, &fresh, created_at.timestamp())?;
        created_at
    };

    // Each batch's answer: new events as recorded; repeats of this group are copies of the
    // first, repeats of earlier groups are read back.
    let by_seq: HashMap<i64, usize> = fresh
        .iter()
        .enumerate()
        .map(|(i, (seq, _))| (*seq, i))
        .collect();
    let year = two_digit_year(created_at);
    let new_event = |i: usize| {
        let (seq, e) = fresh[i];
        e.clone()
            .recorded(EventId::new(year, seq as u64), created_at)
    };
    Ok(slots
        .into_iter()
        .map(|batch| {
            batch?
                .iter()
                .map(|slot| match slot {
                    Slot::New(i) => Ok(new_event(*i)),
                    Slot::Repeat(seq) => match by_seq.get(seq) {
                        Some(i) => Ok(new_event(*i)),
                        None => stored.get(seq).cloned().ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "idempotency key names event {seq}, which is gone"
                            ))
                        }),
                    },
                })
                .collect()
        })
        .collect())
}

/// Inserts numbered events, all stamped `secs` (unix seconds), with one statement whatever
/// their number. The store and the raw baseline both write rows through it, so the
/// baseline's rows cannot drift from the store's.
pub(crate) const INSERT_EVENTS: &str =
    "INSERT INTO events (seq, org, workspace, type, actor_type, actor_id, subject_type,
                         subject_id, payload, created_at)
     SELECT seq, org, workspace, type, actor_type, actor_id, subject_type, subject_id,
            payload, $10
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[], $9::text[])
          AS e(seq, org, workspace, type, actor_type, actor_id, subject_type,
               subject_id, payload)";

/// Runs [`INSERT_EVENTS`] (its text or its prepared statement) for `rows`: the columns are
/// borrowed from the events, not copied.
pub(crate) fn insert_rows<T: ?Sized + ToStatement>(
    tx: &mut Transaction<'_>,
    statement: &T,
    rows: &[(i64, &NewEvent)],
    secs: i64,
) -> Result<(), StoreError> {
    let col = |f: fn(&NewEvent) -> &str| -> Vec<&str> { rows.iter().map(|(_, e)| f(e)).collect() };
    let seqs: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
    let workspaces: Vec<Option<&str>> = rows
        .iter()
        .map(|(_, e)| e.workspace_id.as_ref().map(|w| w.as_str()))
        .collect();
    tx.execute(
        statement,
        &[
            &seqs,
            &col(|e| e.organization_id.as_str()),
            &workspaces,
            &col(|e| e.event_type.as_str()),
            &col(|e| e.actor.actor_type.as_str()),
            &col(|e| e.actor.id.as_str()),
            &col(|e| e.subject.subject_type.as_str()),
            &col(|e| e.subject.id.as_str()),
            &col(|e| e.payload.get()),
            &secs,
        ],
    )
    .context("inserting events")?;
    Ok(())
}

/// Inserts new events (numbered, all stamped `secs`) and their idempotency keys: one
/// statement each, whatever their number.
fn insert_fresh(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    fresh: &[(i64, &NewEvent)],
    secs: i64,
) -> Result<(), StoreError> {
    ctx.ensure_partition(tx, "events", secs)?;
    let insert = ctx.prepared(tx, INSERT_EVENTS)?;
    insert_rows(tx, &insert, fresh, secs)?;
    let (mut key_orgs, mut key_names, mut key_seqs) = (Vec::new(), Vec::new(), Vec::new());
    for (seq, e) in fresh {
        if let Some(k) = &e.idempotency_key {
            key_orgs.push(e.organization_id.as_str());
            key_names.push(k.as_str());
            key_seqs.push(*seq);
        }
    }
    if !key_seqs.is_empty() {
        let insert = ctx.prepared(
            tx,
            "INSERT INTO event_idempotency (org, key, seq, created_at)
             SELECT org, key, seq, $4 FROM unnest($1::text[], $2::text[], $3::bigint[])
                  AS k(org, key, seq)",
        )?;
        tx.execute(&insert, &[&key_orgs, &key_names, &key_seqs, &secs])
            .context("recording idempotency keys")?;
    }
    Ok(())
}
