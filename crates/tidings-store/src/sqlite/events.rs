//! Events: the ingest write (a writer job) and the read queries with keyset pagination.
//!
//! Index choice is explicit (`INDEXED BY`): the most selective equality the filter has picks
//! the index whose trailing column is `seq`, so a page is a bounded range scan already in
//! order. Several exact types become one branch each, merged by `UNION ALL`, for the same
//! reason. Time bounds are turned into `seq` bounds first: `created_at` never decreases
//! with `seq`.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Statement, params, params_from_iter};
use tidings_domain::{
    Event, EventFilter, EventId, FieldProblem, NewEvent, Order, Tenant, TypePattern,
};

use tidings_domain::audit::AuditContext;

use super::index_keys::{EventKeys, index_key};
use super::list_query::ListQuery;
use super::writer::WriterCtx;
use crate::audit_entries::batch_audit_entries;
use crate::error::{Context, StoreError};
use crate::rows::{into_page, two_digit_year};
use crate::stored;
pub(crate) use crate::stored::EVENT_COLUMNS;
use crate::{Page, PageRequest, list_scope};

/// Maps a row selected with [`EVENT_COLUMNS`]. The outer error is SQLite's, the inner one
/// a row that does not hold a valid event.
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    Ok(stored::event(row))
}

/// The first event number at or after `secs`, if any.
fn first_seq_at_or_after(conn: &Connection, secs: i64) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached(
        "SELECT seq FROM events INDEXED BY events_created_at
         WHERE created_at >= ?1 ORDER BY created_at, seq LIMIT 1",
    )
    .context("preparing a time lookup")?
    .query_row([secs], |r| r.get::<_, i64>(0))
    .optional()
    .context("resolving a time bound")
    .map(|v| v.map(|s| s as u64))
}

/// Which index a list query walks.
enum Walk<'a> {
    /// One index, at the entries with this key.
    Index {
        index: &'static str,
        column: &'static str,
        key: i64,
    },
    /// `events_by_type`, once per type of the organization.
    Types { org: &'a str, types: Vec<&'a str> },
}

/// The filter's types, if they are all exact (the API resolves patterns before the store).
fn exact_types(patterns: &[TypePattern]) -> Option<Vec<&str>> {
    patterns
        .iter()
        .map(|p| match p {
            TypePattern::Exact(t) => Some(t.as_str()),
            TypePattern::All | TypePattern::Prefix(_) => None,
        })
        .collect()
}

pub(crate) fn list_events(
    conn: &Connection,
    tenant: &Tenant,
    filter: &EventFilter,
    page: PageRequest,
) -> Result<Page<Event>, StoreError> {
    let Ok(org) = list_scope(tenant, filter.organization_id.as_ref()) else {
        return Ok(Page::empty());
    };
    let org = org.map(|o| o.as_str());

    // [lo, hi) in seq space.
    let (from, to) = filter.range.as_unix_seconds();
    let mut lo: u64 = 0;
    let mut hi: Option<u64> = None;
    if let Some(from) = from {
        match first_seq_at_or_after(conn, from)? {
            Some(s) => lo = s,
            None => return Ok(Page::empty()),
        }
    }
    if let Some(to) = to {
        hi = first_seq_at_or_after(conn, to)?;
    }
    match (page.order, page.after) {
        (Order::Desc, Some(after)) => hi = Some(hi.map_or(after, |h| h.min(after))),
        (Order::Asc, Some(after)) => lo = lo.max(after.saturating_add(1)),
        _ => {}
    }
    if hi.is_some_and(|h| h <= lo) {
        return Ok(Page::empty());
    }

    // Text comparisons decide what matches; the hashed key of the one index the query
    // walks (see index_keys.rs) only says where to look.
    let mut query = ListQuery::default();
    if let Some(org) = org {
        query.eq("org", org.to_string());
    }
    if let Some(ws) = &filter.workspace_id {
        query.eq("workspace", ws.as_str().to_string());
    }
    if let Some(t) = &filter.subject_type {
        query.eq("subject_type", t.as_str().to_string());
    }
    if let Some(t) = &filter.subject_id {
        query.eq("subject_id", t.as_str().to_string());
    }
    if let Some(t) = &filter.actor_id {
        query.eq("actor_id", t.as_str().to_string());
    }
    if lo > 0 {
        query.cond("seq >= ?", Value::Integer(lo as i64));
    }
    if let Some(hi) = hi {
        query.cond("seq < ?", Value::Integer(hi as i64));
    }

    let within_org = match (&filter.subject_id, &filter.actor_id) {
        (Some(subject), _) => Some(("events_by_subject", "subject_key", subject.as_str())),
        (None, Some(actor)) => Some(("events_by_actor", "actor_key", actor.as_str())),
        (None, None) => None,
    };
    let walk = match (org, within_org) {
        (Some(org), Some((index, column, value))) => Walk::Index {
            index,
            column,
            key: index_key(&[org, value]),
        },
        (Some(org), None) if filter.workspace_id.is_none() && !filter.types.is_empty() => {
            match exact_types(&filter.types) {
                Some(types) => Walk::Types { org, types },
                None => Walk::Index {
                    index: "events_by_org",
                    column: "org_key",
                    key: index_key(&[org]),
                },
            }
        }
        _ => match (&filter.workspace_id, org) {
            (Some(ws), _) => Walk::Index {
                index: "events_by_workspace",
                column: "workspace_key",
                key: index_key(&[ws.as_str()]),
            },
            (None, Some(org)) => Walk::Index {
                index: "events_by_org",
                column: "org_key",
                key: index_key(&[org]),
            },
            // Platform-wide scans are not an API feature; the query layer requires one of them.
            (None, None) => {
                return Err(StoreError::Corrupt(
                    "an event query needs an organization or a workspace".into(),
                ));
            }
        },
    };
    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let fetch = page.limit as i64 + 1;

    let sql = match walk {
        // One in-order range of events_by_type per type, merged by UNION ALL.
        Walk::Types { org, types } => {
            let base = query.conditions();
            let branches: Vec<String> = types
                .iter()
                .map(|t| {
                    let key = query.bind(Value::Integer(index_key(&[org, t])));
                    let text = query.bind(Value::Text((*t).to_string()));
                    format!(
                        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_by_type
                         WHERE type_key = {key} AND type = {text} AND {base}
                         ORDER BY seq {dir} LIMIT {fetch})"
                    )
                })
                .collect();
            format!(
                "{} ORDER BY seq {dir} LIMIT {fetch}",
                branches.join(" UNION ALL ")
            )
        }
        Walk::Index { index, column, key } => {
            query.eq(column, key);
            let type_conds: Vec<String> = filter
                .types
                .iter()
                .map(|p| match p {
                    TypePattern::All => "1".to_string(),
                    TypePattern::Exact(t) => {
                        format!("type = {}", query.bind(Value::Text(t.as_str().into())))
                    }
                    // `domain.` .. `domain/`: '/' is the byte after '.'.
                    TypePattern::Prefix(prefix) => format!(
                        "(type >= {} AND type < {})",
                        query.bind(Value::Text(prefix.clone())),
                        query.bind(Value::Text(format!("{}/", &prefix[..prefix.len() - 1])))
                    ),
                })
                .collect();
            if !type_conds.is_empty() {
                query.raw(format!("({})", type_conds.join(" OR ")));
            }
            format!(
                "SELECT {EVENT_COLUMNS} FROM events INDEXED BY {index}
                 WHERE {} ORDER BY seq {dir} LIMIT {fetch}",
                query.conditions()
            )
        }
    };

    let mut stmt = conn
        .prepare_cached(&sql)
        .context("preparing an event query")?;
    let rows = stmt
        .query_map(params_from_iter(query.args().iter()), event_from_row)
        .context("querying events")?;
    let mut items = Vec::with_capacity(fetch as usize);
    for row in rows {
        items.push(row.context("reading an event row")??);
    }
    Ok(into_page(items, page.limit))
}

pub(crate) fn get_event(
    conn: &Connection,
    tenant: &Tenant,
    id: EventId,
) -> Result<Option<Event>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
        ))
        .context("preparing an event lookup")?
        .query_row([id.number as i64], event_from_row)
        .optional()
        .context("looking up an event")?
        .transpose()?;
    Ok(found.filter(|e| {
        // The year is part of the ID: EVT-25-000001 is not EVT-26-000001.
        e.id == id
            && match tenant {
                Tenant::Org(org) => e.organization_id == *org,
                Tenant::Platform => true,
            }
    }))
}

/// Inserts one row of `events`; bound by [`insert_row`].
pub(crate) const INSERT_EVENT: &str =
    "INSERT INTO events (seq, org, workspace, type, actor_type, actor_id, subject_type,
                         subject_id, payload, created_at, idempotency_key,
                         org_key, type_key, subject_key, actor_key, workspace_key,
                         idempotency_hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

/// Runs [`INSERT_EVENT`] for event number `seq`, with its index keys.
pub(crate) fn insert_row(
    insert: &mut Statement<'_>,
    seq: u64,
    e: &NewEvent,
    keys: &EventKeys,
    created_at: i64,
) -> Result<(), StoreError> {
    insert
        .execute(params![
            seq as i64,
            e.organization_id.as_str(),
            e.workspace_id.as_ref().map(|w| w.as_str()),
            e.event_type.as_str(),
            e.actor.actor_type.as_str(),
            e.actor.id.as_str(),
            e.subject.subject_type.as_str(),
            e.subject.id.as_str(),
            e.payload.get(),
            created_at,
            e.idempotency_key,
            keys.org,
            keys.event_type,
            keys.subject,
            keys.actor,
            keys.workspace,
            keys.idempotency,
        ])
        .context("inserting an event")?;
    Ok(())
}

/// Records one ingest batch (a writer job): all of it, or — on a conflict with stored data —
/// none of it. A repeated idempotency key yields the event first recorded.
pub(crate) fn insert_events(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    events: &[NewEvent],
) -> Result<Vec<Event>, StoreError> {
    let mut find_key = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_by_idempotency
             WHERE idempotency_hash = ?1 AND org = ?2 AND idempotency_key = ?3"
        ))
        .context("preparing the idempotency lookup")?;

    let mut find_ws = conn
        .prepare_cached("SELECT org FROM workspaces WHERE workspace = ?1")
        .context("preparing the workspace lookup")?;
    let mut add_ws = conn
        .prepare_cached("INSERT INTO workspaces (workspace, org) VALUES (?1, ?2)")
        .context("preparing the workspace insert")?;
    let mut insert = conn
        .prepare_cached(INSERT_EVENT)
        .context("preparing the event insert")?;

    let created_at = ctx.event_time(conn)?;
    let year = two_digit_year(created_at);
    let mut recorded = Vec::with_capacity(events.len());

    // Checks first: a batch rejected here has written nothing (the writer runs ingest
    // without a savepoint, see `Job::checked`). The first event naming a new workspace
    // claims it for its organization.
    let mut problems = Vec::new();
    let mut new_workspaces: Vec<(&str, &str)> = Vec::new();
    for (index, e) in events.iter().enumerate() {
        let Some(ws) = &e.workspace_id else { continue };
        let (ws, org) = (ws.as_str(), e.organization_id.as_str());
        let owner = match ctx.workspace_owner(ws) {
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
                ctx.learn_workspace(ws, org);
                new_workspaces.push((ws, org));
            }
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::Rejected(problems));
    }
    for (ws, org) in new_workspaces {
        add_ws.execute([ws, org]).context("recording a workspace")?;
    }

    for e in events {
        let org = e.organization_id.as_str();
        let keys = EventKeys::of(e);
        if let Some(hash) = keys.idempotency {
            // The key may have been used before in this organization, maybe earlier in
            // this transaction: answer with the event first recorded.
            let existing = find_key
                .query_row(params![hash, org, e.idempotency_key], event_from_row)
                .optional()
                .context("looking up an idempotency key")?;
            if let Some(existing) = existing {
                recorded.push(existing?);
                continue;
            }
        }
        let seq = ctx.next_id(conn, "EVT")?;
        insert_row(&mut insert, seq, e, &keys, created_at.timestamp())?;
        recorded.push(Event {
            id: EventId::new(year, seq),
            event_type: e.event_type.clone(),
            organization_id: e.organization_id.clone(),
            workspace_id: e.workspace_id.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            payload: e.payload.clone(),
            created_at,
        });
    }
    Ok(recorded)
}

/// An ingest batch with its audit records: one `events.ingested` per organization in it.
pub(crate) fn ingest(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    events: &[NewEvent],
    audit: &AuditContext,
) -> Result<Vec<Event>, StoreError> {
    let recorded = insert_events(conn, ctx, events)?;
    for entry in batch_audit_entries(&recorded) {
        super::audit::append(conn, ctx, audit, entry)?;
    }
    Ok(recorded)
}
