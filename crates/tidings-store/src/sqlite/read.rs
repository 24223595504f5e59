//! Read queries: event lists with keyset pagination, single events, keys.
//!
//! Index choice is explicit (`INDEXED BY`): the most selective equality the filter has picks
//! the index whose trailing column is `seq`, so a page is a bounded range scan already in
//! order. Several exact types become one branch each, merged by `UNION ALL`, for the same
//! reason. Time bounds are turned into `seq` bounds first: `created_at` never decreases
//! with `seq`.

use chrono::{DateTime, Datelike, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::value::RawValue;
use tidings_domain::{
    Actor, ApiKey, Event, EventFilter, EventId, EventType, KeyId, Order, Scope, Subject, Tenant,
    TypePattern,
};

use crate::error::{Context, StoreError};
use crate::{Page, PageRequest};

pub(crate) const EVENT_COLUMNS: &str = "seq, org, workspace, type, actor_type, actor_id, subject_type, subject_id, payload, created_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn timestamp(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| corrupt("timestamp", secs))
}

/// Maps a row selected with [`EVENT_COLUMNS`]. The outer error is SQLite's, the inner one
/// a row that does not hold a valid event.
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    let seq: i64 = row.get(0)?;
    let org: String = row.get(1)?;
    let workspace: Option<String> = row.get(2)?;
    let event_type: String = row.get(3)?;
    let actor_type: String = row.get(4)?;
    let actor_id: String = row.get(5)?;
    let subject_type: String = row.get(6)?;
    let subject_id: String = row.get(7)?;
    let payload: String = row.get(8)?;
    let created_at: i64 = row.get(9)?;
    Ok((|| {
        let created_at = timestamp(created_at)?;
        Ok(Event {
            id: EventId::new(created_at.year().rem_euclid(100) as u8, seq as u64),
            event_type: EventType::parse(&event_type).map_err(|e| corrupt("type", e))?,
            organization_id: org.parse().map_err(|e| corrupt("org", e))?,
            workspace_id: workspace
                .map(|w| w.parse())
                .transpose()
                .map_err(|e| corrupt("workspace", e))?,
            actor: Actor {
                actor_type: actor_type.parse().map_err(|e| corrupt("actor", e))?,
                id: actor_id.parse().map_err(|e| corrupt("actor", e))?,
            },
            subject: Subject {
                subject_type: subject_type.parse().map_err(|e| corrupt("subject", e))?,
                id: subject_id.parse().map_err(|e| corrupt("subject", e))?,
            },
            payload: RawValue::from_string(payload).map_err(|e| corrupt("payload", e))?,
            created_at,
        })
    })())
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

pub(crate) fn list_events(
    conn: &Connection,
    tenant: &Tenant,
    filter: &EventFilter,
    page: PageRequest,
) -> Result<Page<Event>, StoreError> {
    let empty = || Page {
        items: Vec::new(),
        has_more: false,
    };
    let org = match (tenant, &filter.organization_id) {
        (Tenant::Org(mine), Some(asked)) if mine != asked => return Ok(empty()),
        (Tenant::Org(mine), _) => Some(mine.as_str()),
        (Tenant::Platform, asked) => asked.as_ref().map(|o| o.as_str()),
    };
    if org.is_none() && filter.workspace_id.is_none() {
        // Platform-wide scans are not an API feature; the query layer requires one of them.
        return Err(StoreError::Corrupt(
            "an event query needs an organization or a workspace".into(),
        ));
    }

    // [lo, hi) in seq space.
    let (from, to) = filter.range.as_unix_seconds();
    let mut lo: u64 = 0;
    let mut hi: Option<u64> = None;
    if let Some(from) = from {
        match first_seq_at_or_after(conn, from)? {
            Some(s) => lo = s,
            None => return Ok(empty()),
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
        return Ok(empty());
    }

    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut bind = |conds: &mut Vec<String>, sql: &str, v: Value| {
        args.push(v);
        conds.push(sql.replace('?', &format!("?{}", args.len())));
    };
    if let Some(org) = org {
        bind(&mut conds, "org = ?", Value::Text(org.into()));
    }
    if let Some(ws) = &filter.workspace_id {
        bind(&mut conds, "workspace = ?", Value::Text(ws.as_str().into()));
    }
    if let Some(t) = &filter.subject_type {
        bind(
            &mut conds,
            "subject_type = ?",
            Value::Text(t.as_str().into()),
        );
    }
    if let Some(t) = &filter.subject_id {
        bind(&mut conds, "subject_id = ?", Value::Text(t.as_str().into()));
    }
    if let Some(t) = &filter.actor_id {
        bind(&mut conds, "actor_id = ?", Value::Text(t.as_str().into()));
    }
    if lo > 0 {
        bind(&mut conds, "seq >= ?", Value::Integer(lo as i64));
    }
    if let Some(hi) = hi {
        bind(&mut conds, "seq < ?", Value::Integer(hi as i64));
    }

    let index = if org.is_some() && filter.subject_id.is_some() {
        "events_org_subject"
    } else if org.is_some() && filter.actor_id.is_some() {
        "events_org_actor"
    } else if org.is_some() && filter.workspace_id.is_none() && !filter.types.is_empty() {
        "events_org_type"
    } else if filter.workspace_id.is_some() {
        "events_workspace"
    } else {
        "events_org"
    };
    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let fetch = page.limit as i64 + 1;

    let type_conds: Vec<String> = filter
        .types
        .iter()
        .map(|p| {
            match p {
                TypePattern::All => None,
                TypePattern::Exact(t) => {
                    args.push(Value::Text(t.as_str().into()));
                    Some(format!("type = ?{}", args.len()))
                }
                TypePattern::Prefix(prefix) => {
                    // `domain.` .. `domain/`: '/' is the byte after '.'.
                    args.push(Value::Text(prefix.clone()));
                    args.push(Value::Text(format!("{}/", &prefix[..prefix.len() - 1])));
                    Some(format!(
                        "(type >= ?{} AND type < ?{})",
                        args.len() - 1,
                        args.len()
                    ))
                }
            }
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();

    let base = if conds.is_empty() {
        "1".to_string()
    } else {
        conds.join(" AND ")
    };
    let sql = if index == "events_org_type" && type_conds.len() > 1 {
        // One in-order range scan per type, merged.
        let branches: Vec<String> = type_conds
            .iter()
            .map(|tc| {
                format!(
                    "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events INDEXED BY {index}
                     WHERE {base} AND {tc} ORDER BY seq {dir} LIMIT {fetch})"
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
        format!(
            "SELECT {EVENT_COLUMNS} FROM events INDEXED BY {index}
             WHERE {all} ORDER BY seq {dir} LIMIT {fetch}"
        )
    };

    let mut stmt = conn
        .prepare_cached(&sql)
        .context("preparing an event query")?;
    let rows = stmt
        .query_map(params_from_iter(args.iter()), event_from_row)
        .context("querying events")?;
    let mut items = Vec::with_capacity(fetch as usize);
    for row in rows {
        items.push(row.context("reading an event row")??);
    }
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(Page { items, has_more })
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

const KEY_COLUMNS: &str = "seq, org, scopes, rate_limit, description, created_at, revoked_at";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ApiKey, StoreError>> {
    let seq: i64 = row.get(0)?;
    let org: Option<String> = row.get(1)?;
    let scopes: String = row.get(2)?;
    let rate_limit: Option<u32> = row.get(3)?;
    let description: Option<String> = row.get(4)?;
    let created_at: i64 = row.get(5)?;
    let revoked_at: Option<i64> = row.get(6)?;
    Ok((|| {
        let created_at = timestamp(created_at)?;
        Ok(ApiKey {
            id: KeyId::new(created_at.year().rem_euclid(100) as u8, seq as u64),
            organization_id: org
                .map(|o| o.parse())
                .transpose()
                .map_err(|e| corrupt("key org", e))?,
            scopes: Scope::parse_list(&scopes).map_err(|e| corrupt("key scopes", e))?,
            rate_limit,
            description,
            created_at,
            revoked_at: revoked_at.map(timestamp).transpose()?,
        })
    })())
}

pub(crate) fn key_by_seq(conn: &Connection, seq: u64) -> Result<Option<ApiKey>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE seq = ?1"
    ))
    .context("preparing a key lookup")?
    .query_row([seq as i64], key_from_row)
    .optional()
    .context("looking up a key")?
    .transpose()
}

pub(crate) fn active_key_by_hash(
    conn: &Connection,
    hash: &[u8; 32],
) -> Result<Option<ApiKey>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?1 AND revoked_at IS NULL"
    ))
    .context("preparing a key lookup")?
    .query_row(params![&hash[..]], key_from_row)
    .optional()
    .context("authenticating a key")?
    .transpose()
}

pub(crate) fn list_keys(conn: &Connection) -> Result<Vec<ApiKey>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY seq DESC"
        ))
        .context("preparing the key list")?;
    let rows = stmt.query_map([], key_from_row).context("listing keys")?;
    let mut keys = Vec::new();
    for row in rows {
        keys.push(row.context("reading a key row")??);
    }
    Ok(keys)
}
