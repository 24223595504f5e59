//! Events: the ingest write (a writer job) and the read queries with keyset pagination.
//!
//! Indexes are tables of `(key, seq)` (schema 8, `KEY_TABLES`) that the writer fills itself
//! ([`KeyEntries`]). A query names the one it walks and joins `events` to it by `seq`
//! (`CROSS JOIN` fixes that order): the most selective equality the filter has picks it,
//! so a page is a bounded range scan already in order. Several exact types become one
//! branch each, merged by `UNION ALL`, for the same reason. Time bounds are turned into
//! `seq` bounds first (`event_seconds`): `created_at` never decreases with `seq`.
//!
//! The newest events are not indexed yet (the index tail, schema 9): the writer indexes
//! them together once there are enough ([`index_tail`]), and until then a query reads
//! their rows in order besides its index walk.
//!
//! The type, subject, actor and workspace keys carry their event's epoch (index_keys.rs):
//! such a walk probes the epochs in the page's order, each bounded to its own events, the
//! first alone and then in widening groups (`EpochGroups`), until the page is full. A walk
//! of the organization index is one probe.

use std::rc::Rc;
use std::sync::LazyLock;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::vtab::array::Array;
use rusqlite::{Connection, OptionalExtension, Row, Statement, ToSql, params, params_from_iter};
use tidings_domain::{
    Event, EventFilter, EventId, FieldProblem, NewEvent, Order, Tenant, TypePattern,
};

use tidings_domain::audit::AuditContext;

use super::index_keys::{
    EventKeys, Indexed, KEY_TABLES, epoch_key, epoch_of, epoch_range, index_key,
};
use super::list_query::{ListQuery, bound_limit, qualified};
use super::writer::WriterCtx;
use crate::audit_entries::batch_audit_entries;
use crate::error::{Context, StoreError};
use crate::rows::{into_page, two_digit_year};
use crate::stored;
pub(crate) use crate::stored::EVENT_COLUMNS;
use crate::{Page, PageRequest, event_equalities, list_scope};

/// [`EVENT_COLUMNS`] taken from `events AS e`, built once (list queries and every ingest
/// job use it).
static JOINED_EVENT_COLUMNS: LazyLock<String> = LazyLock::new(|| qualified("e", EVENT_COLUMNS));

/// An idempotency key's first event: `?1` its keys in the epochs probed, `?2` the
/// organization, `?3` the key.
static FIND_IDEMPOTENCY_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM event_keys_idempotency AS k CROSS JOIN events AS e ON e.seq = k.seq
         WHERE k.key IN rarray(?1) AND e.org = ?2 AND e.idempotency_key = ?3
         LIMIT 1",
        *JOINED_EVENT_COLUMNS
    )
});

/// The event numbered `?1` if it was recorded in organization `?2` with idempotency key
/// `?3`.
static FIND_IDEMPOTENCY_KEY_IN_TAIL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1 AND org = ?2 AND idempotency_key = ?3"
    )
});

/// Maps a row selected with [`EVENT_COLUMNS`]. The outer error is SQLite's, the inner one
/// a row that does not hold a valid event.
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    Ok(stored::event(row))
}

/// An event number no greater than that of the first event recorded at or after `secs`
/// (unix seconds), and greater than that of every event recorded before it; `None` if no
/// event was recorded at or after `secs`. Read from `event_seconds` (schema 7): events
/// are numbered in time order, so the first event of the first recorded second at or
/// after `secs` is the one asked for. That row's `first_seq` may name an event the
/// retention sweep has removed since; as a lower bound it is still exact.
pub(crate) fn first_seq_at_or_after(
    conn: &Connection,
    secs: i64,
) -> Result<Option<u64>, StoreError> {
    conn.prepare_cached(
        "SELECT first_seq FROM event_seconds WHERE second >= ?1 ORDER BY second LIMIT 1",
    )
    .context("preparing a time lookup")?
    .query_row([secs], |r| r.get::<_, i64>(0))
    .optional()
    .context("resolving a time bound")
    .map(|v| v.map(|s| s as u64))
}

/// Records that the events of a write group, stamped `second`, start at event number
/// `first_seq` (a second already recorded keeps its earlier, smaller number).
pub(crate) fn record_event_second(
    conn: &Connection,
    second: i64,
    first_seq: u64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO event_seconds (second, first_seq) VALUES (?1, ?2)
         ON CONFLICT (second) DO NOTHING",
    )
    .context("preparing the event second insert")?
    .execute(params![second, first_seq as i64])
    .context("recording an event second")?;
    Ok(())
}

/// Which index table a list query walks.
enum Walk<'a> {
    /// One index table, at the entries with this key (an epoch key's hash if `epochs`).
    Index {
        table: &'static str,
        key: i64,
        epochs: bool,
    },
    /// `event_keys_type`, once per type of the organization, epoch by epoch.
    Types { org: &'a str, types: Vec<&'a str> },
}

/// The oldest and newest event numbers stored, if any.
pub(crate) fn stored_seq_range(conn: &Connection) -> Result<Option<(u64, u64)>, StoreError> {
    let (first, last) = conn
        .prepare_cached("SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)")
        .context("preparing the event number range read")?
        .query_row([], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .context("reading the event number range")?;
    Ok(first.zip(last).map(|(f, l)| (f as u64, l as u64)))
}

/// Part of a walk: the event numbers `[lo, hi)` of one epoch (all of them, in epoch 0, for
/// an index without epochs).
#[derive(Debug, Clone, Copy)]
struct Piece {
    lo: u64,
    hi: u64,
    epoch: u64,
}

/// Most epochs a grouped probe covers.
const MAX_EPOCH_GROUP: usize = 256;

/// A walk's pieces in groups of 1, 1, 2, 4, … epochs, in order. A key with many events
/// fills the page from the first epochs, read in index order; a rare one would cost a
/// statement per epoch (610 at 10M events), so the walk widens: a group is one statement
/// probing each of its epochs, whose few rows are sorted. A group reads at most about as
/// many rows as the groups before it found too few of. The first two epochs are read
/// alone because the newest is usually partly filled: a page of recent events for a busy
/// key then needs the one before it, read in index order rather than sorted.
struct EpochGroups {
    pieces: std::vec::IntoIter<Piece>,
    /// Groups yielded so far.
    yielded: u32,
}

impl EpochGroups {
    fn new(pieces: Vec<Piece>) -> Self {
        Self {
            pieces: pieces.into_iter(),
            yielded: 0,
        }
    }
}

impl Iterator for EpochGroups {
    type Item = Vec<Piece>;

    fn next(&mut self) -> Option<Self::Item> {
        let doublings = self
            .yielded
            .saturating_sub(1)
            .min(MAX_EPOCH_GROUP.trailing_zeros());
        let group: Vec<_> = self.pieces.by_ref().take(1 << doublings).collect();
        self.yielded += 1;
        (!group.is_empty()).then_some(group)
    }
}

/// The pieces of a walk over `[lo, hi)`, in the page's order: one, or one per epoch.
fn pieces(
    conn: &Connection,
    lo: u64,
    hi: Option<u64>,
    epochs: bool,
    order: Order,
) -> Result<Vec<Piece>, StoreError> {
    if !epochs {
        return Ok(vec![Piece {
            lo,
            hi: hi.unwrap_or(i64::MAX as u64),
            epoch: 0,
        }]);
    }
    let Some((first, last)) = stored_seq_range(conn)? else {
        return Ok(Vec::new());
    };
    let lo = lo.max(first);
    let hi = hi.unwrap_or(u64::MAX).min(last.saturating_add(1));
    if hi <= lo {
        return Ok(Vec::new());
    }
    let mut pieces: Vec<Piece> = (epoch_of(lo)..=epoch_of(hi - 1))
        .map(|epoch| {
            let (start, end) = epoch_range(epoch);
            Piece {
                lo: start.max(lo),
                hi: end.min(hi),
                epoch,
            }
        })
        .collect();
    if order == Order::Desc {
        pieces.reverse();
    }
    Ok(pieces)
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

/// Adds the filter's equality conditions on text columns to `query`.
fn text_conditions(query: &mut ListQuery, org: Option<&str>, filter: &EventFilter) {
    for (column, value) in event_equalities(org, filter) {
        query.eq(column, value.to_string());
    }
}

/// Adds the condition that the type matches one of `types` (if any) to `query`.
fn type_condition(query: &mut ListQuery, types: &[TypePattern]) {
    let conds: Vec<String> = types
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
    if !conds.is_empty() {
        query.raw(format!("({})", conds.join(" OR ")));
    }
}

/// Runs an event query and appends its rows to `items`.
fn read_events(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    items: &mut Vec<Event>,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(sql)
        .context("preparing an event query")?;
    let rows = stmt
        .query_map(params, event_from_row)
        .context("querying events")?;
    for row in rows {
        items.push(row.context("reading an event row")??);
    }
    Ok(())
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
    let hi = hi.unwrap_or(i64::MAX as u64).min(i64::MAX as u64);
    if hi <= lo {
        return Ok(Page::empty());
    }
    let dir = match page.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    let fetch = page.limit as usize + 1;

    // Events numbered up to `through` are found through an index table; later ones (the
    // index tail, at most a few thousand) by reading their rows in order. The number
    // only grows, and entries exist for every event up to it, so the two parts are
    // disjoint and together complete even if the writer indexes the tail meanwhile.
    let through = indexed_through(conn)?;
    let (index_lo, index_hi) = (lo, hi.min(through + 1));
    let (tail_lo, tail_hi) = (lo.max(through + 1), hi);

    let mut items = Vec::with_capacity(fetch);
    let read_tail = |items: &mut Vec<Event>| -> Result<(), StoreError> {
        if tail_hi <= tail_lo || items.len() >= fetch {
            return Ok(());
        }
        let mut query = ListQuery::default();
        text_conditions(&mut query, org, filter);
        type_condition(&mut query, &filter.types);
        let from = query.bind(Value::Integer(tail_lo as i64));
        let to = query.bind(Value::Integer(tail_hi as i64));
        let limit = bound_limit(&query.bind(Value::Integer((fetch - items.len()) as i64)));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE seq >= {from} AND seq < {to} AND {} ORDER BY seq {dir} {limit}",
            query.conditions()
        );
        let params: Vec<&dyn ToSql> = query.args().iter().map(|v| v as &dyn ToSql).collect();
        read_events(conn, &sql, &params, items)
    };
    if page.order == Order::Desc {
        read_tail(&mut items)?;
    }
    if index_lo < index_hi && items.len() < fetch {
        walk_index(
            conn,
            org,
            filter,
            page.order,
            (index_lo, index_hi),
            fetch,
            &mut items,
        )?;
    }
    if page.order == Order::Asc {
        read_tail(&mut items)?;
    }
    Ok(into_page(items, page.limit))
}

/// The part of a list query that walks an index table: appends to `items`, in the page's
/// order, the matching events numbered in `[lo, hi)` (all indexed), until it holds
/// `fetch`.
fn walk_index(
    conn: &Connection,
    org: Option<&str>,
    filter: &EventFilter,
    order: Order,
    (lo, hi): (u64, u64),
    fetch: usize,
    items: &mut Vec<Event>,
) -> Result<(), StoreError> {
    // Text comparisons decide what matches; the hashed key of the one index the query
    // walks (see index_keys.rs) only says where to look.
    let mut query = ListQuery::default();
    text_conditions(&mut query, org, filter);

    let within_org = match (&filter.subject_id, &filter.actor_id) {
        (Some(subject), _) => Some(("event_keys_subject", subject.as_str())),
        (None, Some(actor)) => Some(("event_keys_actor", actor.as_str())),
        (None, None) => None,
    };
    let walk = match (org, within_org) {
        (Some(org), Some((table, value))) => Walk::Index {
            table,
            key: index_key(&[org, value]),
            epochs: true,
        },
        (Some(org), None) if filter.workspace_id.is_none() && !filter.types.is_empty() => {
            match exact_types(&filter.types) {
                Some(types) => Walk::Types { org, types },
                None => Walk::Index {
                    table: "event_keys_org",
                    key: index_key(&[org]),
                    epochs: false,
                },
            }
        }
        _ => match (&filter.workspace_id, org) {
            (Some(ws), _) => Walk::Index {
                table: "event_keys_workspace",
                key: index_key(&[ws.as_str()]),
                epochs: true,
            },
            (None, Some(org)) => Walk::Index {
                table: "event_keys_org",
                key: index_key(&[org]),
                epochs: false,
            },
            // Platform-wide scans are not an API feature; the query layer requires one of them.
            (None, None) => {
                return Err(StoreError::Corrupt(
                    "an event query needs an organization or a workspace".into(),
                ));
            }
        },
    };
    let dir = match order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };

    // Each probe binds its own key(s), seq bounds and row budget into these slots. A probe
    // covers one epoch (`key = ?`, rows come in index order) or a group of epochs (`key IN
    // rarray(?)`, rows sorted; see `EpochGroups`).
    let mut keys: Vec<(usize, i64)> = Vec::new();
    let (lo_param, lo_slot) = query.slot();
    let (hi_param, hi_slot) = query.slot();
    let (limit, limit_slot) = query.slot();
    let limit = bound_limit(&limit);
    let bounds = format!("k.seq >= {lo_param} AND k.seq < {hi_param}");
    let key_match = |param: &str, grouped: bool| {
        if grouped {
            format!("k.key IN rarray({param})")
        } else {
            format!("k.key = {param}")
        }
    };
    let columns = &*JOINED_EVENT_COLUMNS;
    let (one, grouped, epochs) = match walk {
        // One in-order range of events_by_type per type, merged by UNION ALL.
        Walk::Types { org, types } => {
            let base = query.conditions();
            let branches: Vec<(String, String)> = types
                .iter()
                .map(|t| {
                    let (key, key_slot) = query.slot();
                    keys.push((key_slot, index_key(&[org, t])));
                    let text = query.bind(Value::Text((*t).to_string()));
                    (key, text)
                })
                .collect();
            let render = |grouped: bool| {
                let selects: Vec<String> = branches
                    .iter()
                    .map(|(key, text)| {
                        format!(
                            "SELECT * FROM (SELECT {columns}
                             FROM event_keys_type AS k CROSS JOIN events AS e ON e.seq = k.seq
                             WHERE {} AND e.type = {text} AND {base} AND {bounds}
                             ORDER BY k.seq {dir} {limit})",
                            key_match(key, grouped)
                        )
                    })
                    .collect();
                format!("{} ORDER BY seq {dir} {limit}", selects.join(" UNION ALL "))
            };
            (render(false), render(true), true)
        }
        Walk::Index { table, key, epochs } => {
            let (param, key_slot) = query.slot();
            keys.push((key_slot, key));
            type_condition(&mut query, &filter.types);
            query.raw(bounds);
            let conds = query.conditions();
            let render = |grouped: bool| {
                format!(
                    "SELECT {columns} FROM {table} AS k CROSS JOIN events AS e ON e.seq = k.seq
                     WHERE {} AND {conds} ORDER BY k.seq {dir} {limit}",
                    key_match(&param, grouped)
                )
            };
            (render(false), render(true), epochs)
        }
    };

    let mut args = query.args().to_vec();
    for group in EpochGroups::new(pieces(conn, lo, Some(hi), epochs, order)?) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        // Pieces are consecutive: the group spans from the lower start to the higher end.
        let (lo, hi) = (first.lo.min(last.lo), first.hi.max(last.hi));
        args[lo_slot] = Value::Integer(lo as i64);
        args[hi_slot] = Value::Integer(hi.min(i64::MAX as u64) as i64);
        args[limit_slot] = Value::Integer((fetch - items.len()) as i64);
        let mut arrays: Vec<(usize, Array)> = Vec::new();
        for &(key_slot, hash) in &keys {
            if group.len() == 1 {
                let key = if epochs {
                    epoch_key(first.epoch, hash)
                } else {
                    hash
                };
                args[key_slot] = Value::Integer(key);
            } else {
                let keys = group
                    .iter()
                    .map(|piece| Value::Integer(epoch_key(piece.epoch, hash)))
                    .collect();
                arrays.push((key_slot, Rc::new(keys)));
            }
        }
        let params: Vec<&dyn ToSql> = args
            .iter()
            .enumerate()
            .map(
                |(i, value)| match arrays.iter().find(|(slot, _)| *slot == i) {
                    Some((_, array)) => array as &dyn ToSql,
                    None => value as &dyn ToSql,
                },
            )
            .collect();
        let sql = if group.len() == 1 { &one } else { &grouped };
        read_events(conn, sql, &params, items)?;
        if items.len() >= fetch {
            break;
        }
    }
    Ok(())
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

/// Inserts one row of `events`; bound by [`insert_row`]. Its index entries go in
/// separately, through [`KeyEntries`].
pub(crate) const INSERT_EVENT: &str =
    "INSERT INTO events (seq, org, workspace, type, actor_type, actor_id, subject_type,
                         subject_id, payload, created_at, idempotency_key)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Runs [`INSERT_EVENT`] for event number `seq`.
pub(crate) fn insert_row(
    insert: &mut Statement<'_>,
    seq: u64,
    e: &NewEvent,
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
        ])
        .context("inserting an event")?;
    Ok(())
}

/// Index entries to write, each table's in key order, many rows per statement: entries
/// that share a page go in one after another, while the page is in the CPU's cache
/// (BENCHMARKS.md has the measurements).
#[derive(Default)]
pub(crate) struct KeyEntries {
    tables: [Vec<(i64, i64)>; 6],
}

/// Rows per multi-row insert, largest first; any count is a sum of these.
const ENTRY_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// The statements of one index table.
struct KeyTableStatements {
    /// `INSERT INTO table (key, seq) VALUES (?, ?), …`, one per size of [`ENTRY_CHUNKS`].
    inserts: Vec<String>,
    /// Deletes the entry `(?1, ?2)`.
    delete: String,
}

/// The statements of each of [`KEY_TABLES`], in its order.
static KEY_TABLE_STATEMENTS: LazyLock<Vec<KeyTableStatements>> = LazyLock::new(|| {
    KEY_TABLES
        .iter()
        .map(|table| KeyTableStatements {
            inserts: ENTRY_CHUNKS
                .iter()
                .map(|&rows| {
                    let values: Vec<String> = (0..rows)
                        .map(|i| format!("(?{}, ?{})", 2 * i + 1, 2 * i + 2))
                        .collect();
                    format!(
                        "INSERT INTO {table} (key, seq) VALUES {}",
                        values.join(", ")
                    )
                })
                .collect(),
            delete: format!("DELETE FROM {table} WHERE key = ?1 AND seq = ?2"),
        })
        .collect()
});

impl KeyEntries {
    pub fn add(&mut self, seq: u64, keys: &EventKeys) {
        for (table, key) in self.tables.iter_mut().zip(keys.entries()) {
            if let Some(key) = key {
                table.push((key, seq as i64));
            }
        }
    }

    /// Writes every entry.
    pub fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for (statements, entries) in KEY_TABLE_STATEMENTS.iter().zip(self.tables.iter_mut()) {
            entries.sort_unstable();
            let mut rest = &entries[..];
            for (c, &rows) in ENTRY_CHUNKS.iter().enumerate() {
                if rest.len() < rows {
                    continue;
                }
                let mut insert = conn
                    .prepare_cached(&statements.inserts[c])
                    .context("preparing an index entry insert")?;
                while rest.len() >= rows {
                    let (chunk, after) = rest.split_at(rows);
                    insert
                        .execute(params_from_iter(chunk.iter().flat_map(|&(k, s)| [k, s])))
                        .context("inserting index entries")?;
                    rest = after;
                }
            }
            entries.clear();
        }
        Ok(())
    }
}

/// The columns an event's index keys are computed from, in the order [`keys_of_row`]
/// reads them.
const KEYED_COLUMNS: &str = "seq, org, type, subject_id, actor_id, workspace, idempotency_key";

/// The number and index keys of a row selected with [`KEYED_COLUMNS`], computed from its
/// text as they were when it was recorded.
fn keys_of_row(r: &Row<'_>) -> rusqlite::Result<(u64, EventKeys)> {
    let seq = r.get::<_, i64>(0)? as u64;
    let text = |i: usize| -> rusqlite::Result<&str> { Ok(r.get_ref(i)?.as_str()?) };
    let maybe =
        |i: usize| -> rusqlite::Result<Option<&str>> { Ok(r.get_ref(i)?.as_str_or_null()?) };
    let keys = EventKeys::of_text(
        &Indexed {
            org: text(1)?,
            event_type: text(2)?,
            subject: text(3)?,
            actor: text(4)?,
            workspace: maybe(5)?,
            idempotency: maybe(6)?,
        },
        seq,
    );
    Ok((seq, keys))
}

/// How far the index tables reach (schema 9): they hold entries for every event numbered
/// up to this and for none after it. Later events are the index tail, read from their rows.
pub(crate) fn indexed_through(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT seq FROM indexed_through")
        .context("preparing the read of how far events are indexed")?
        .query_row([], |r| r.get::<_, i64>(0))
        .context("reading how far events are indexed")
        .map(|s| s as u64)
}

/// When the writer indexes the newest events ([`index_tail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexTail {
    /// Index them at the end of a group once the newest is this many numbers past the
    /// last indexed (0: every group indexes its own).
    pub events: u64,
    /// Also index whatever waits once no write has come for this long (`None`: never).
    pub idle: Option<Duration>,
}

impl Default for IndexTail {
    /// 2,048 events, or 50 ms without writes. Writing entries for 2,048 events at once
    /// instead of a commit's few dozen touches each index page a commit would have
    /// touched for one entry dozens of times over: the store took single-event requests
    /// about twice as fast (BENCHMARKS.md). A query reads at most that many rows besides
    /// its index walk while events keep coming; once they stop for 50 ms the tail is
    /// indexed, so a store written now and then has none.
    fn default() -> Self {
        Self {
            events: 2_048,
            idle: Some(Duration::from_millis(50)),
        }
    }
}

/// Writes the index entries of the events after [`indexed_through`] once the newest is
/// `limit` numbers or more past it (any, if `limit` is 0; numbers a rolled-back write left
/// unused count too), and moves it to the newest. Returns how far events are indexed then.
/// Runs inside a write transaction; everything it indexes is read from the rows, so it
/// does not matter which process or which earlier transaction stored them.
pub(crate) fn index_tail(conn: &Connection, limit: u64) -> Result<u64, StoreError> {
    let through = indexed_through(conn)?;
    let Some((_, newest)) = stored_seq_range(conn)? else {
        return Ok(through);
    };
    if newest <= through || newest - through < limit.max(1) {
        return Ok(through);
    }
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {KEYED_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq"
        ))
        .context("preparing the read of the index tail")?;
    let mut entries = KeyEntries::default();
    let rows = read
        .query_map([through as i64], keys_of_row)
        .context("reading the index tail")?;
    for row in rows {
        let (seq, keys) = row.context("reading an event of the index tail")?;
        entries.add(seq, &keys);
    }
    entries.flush(conn)?;
    conn.prepare_cached("UPDATE indexed_through SET seq = ?1")
        .context("preparing the index progress update")?
        .execute([newest as i64])
        .context("recording how far events are indexed")?;
    Ok(newest)
}

/// Deletes the oldest events numbered below `below`, at most `limit` of them, with their
/// index entries (a pass of the retention sweep). The entries are found from each row's
/// text, as they were computed when it was recorded. Returns how many events went.
pub(crate) fn delete_events_below(
    conn: &Connection,
    below: i64,
    limit: usize,
) -> Result<usize, StoreError> {
    let through = indexed_through(conn)?;
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {KEYED_COLUMNS} FROM events WHERE seq < ?1 ORDER BY seq LIMIT ?2 + 0"
        ))
        .context("preparing the read of events to sweep")?;
    let rows = read
        .query_map(params![below, limit as i64], keys_of_row)
        .context("reading events to sweep")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading an event to sweep")?;
    // Events of the index tail have no entries yet.
    for (seq, keys) in rows.iter().filter(|(seq, _)| *seq <= through) {
        for (statements, key) in KEY_TABLE_STATEMENTS.iter().zip(keys.entries()) {
            if let Some(key) = key {
                conn.prepare_cached(&statements.delete)
                    .context("preparing an index entry delete")?
                    .execute(params![key, *seq as i64])
                    .context("deleting an index entry")?;
            }
        }
    }
    // The rows read are every event up to the last of them: one range goes.
    if let Some((last, _)) = rows.last() {
        conn.prepare_cached("DELETE FROM events WHERE seq <= ?1")
            .context("preparing the event delete")?
            .execute([*last as i64])
            .context("deleting events")?;
    }
    Ok(rows.len())
}

/// The event first recorded with idempotency key `key` (whose [`index_key`] is `hash`) in
/// `org`, if any. A retry usually follows its first attempt closely, so the newest events
/// are looked at first: those of the index tail that the filter says may carry the key
/// (`tail`, read by number), then the index, epoch by epoch, newest first. With `tail`
/// unknown (`None`) the tail is indexed first.
fn find_idempotency_key(
    conn: &Connection,
    tail: Option<&[u64]>,
    org: &str,
    key: &str,
    hash: i64,
) -> Result<Option<Event>, StoreError> {
    let through = match tail {
        Some(events) => {
            let mut read = conn
                .prepare_cached(&FIND_IDEMPOTENCY_KEY_IN_TAIL)
                .context("preparing the idempotency lookup in the index tail")?;
            for &seq in events {
                let found = read
                    .query_row(params![seq as i64, org, key], event_from_row)
                    .optional()
                    .context("looking up an idempotency key in the index tail")?;
                if let Some(found) = found {
                    return found.map(Some);
                }
            }
            indexed_through(conn)?
        }
        None => index_tail(conn, 0)?,
    };
    let mut find = conn
        .prepare_cached(&FIND_IDEMPOTENCY_KEY)
        .context("preparing the idempotency lookup")?;
    for group in EpochGroups::new(pieces(conn, 0, Some(through + 1), true, Order::Desc)?) {
        let keys: Array = Rc::new(
            group
                .iter()
                .map(|piece| Value::Integer(epoch_key(piece.epoch, hash)))
                .collect(),
        );
        let found = find
            .query_row(params![keys, org, key], event_from_row)
            .optional()
            .context("looking up an idempotency key")?;
        if let Some(found) = found {
            return found.map(Some);
        }
    }
    Ok(None)
}

/// Records one ingest batch (a writer job): all of it, or — on a conflict with stored data —
/// none of it. A repeated idempotency key yields the event first recorded.
///
/// It takes the batch by value: each recorded event's fields move into the returned
/// [`Event`] instead of being copied, and the batch is freed by whoever drops the answer,
/// not by the writer (copying and freeing the payloads took about a tenth of the writer's
/// time with batches of 1,000; BENCHMARKS.md).
pub(crate) fn insert_events(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    events: Vec<NewEvent>,
) -> Result<Vec<Event>, StoreError> {
    if !ctx.idempotency_caught_up {
        ctx.idempotency.catch_up(conn)?;
        ctx.idempotency_caught_up = true;
    }

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
        let hash = e
            .idempotency_key
            .as_deref()
            .map(|key| index_key(&[org, key]));
        if let (Some(key), Some(hash)) = (&e.idempotency_key, hash) {
            // The key may have been used before in this organization, maybe earlier in
            // this transaction: answer with the event first recorded. The filter rules
            // out almost every new key.
            if ctx.idempotency.may_contain(hash)
                && let Some(existing) =
                    find_idempotency_key(conn, ctx.idempotency.tail_events(hash), org, key, hash)?
            {
                recorded.push(existing);
                continue;
            }
        }
        let seq = ctx.next_id(conn, "EVT")?;
        ctx.first_event.get_or_insert(seq);
        insert_row(&mut insert, seq, &e, created_at.timestamp())?;
        ctx.idempotency.record(seq, hash);
        recorded.push(e.recorded(EventId::new(year, seq), created_at));
    }
    Ok(recorded)
}

/// An ingest batch with its audit records: one `events.ingested` per organization in it.
pub(crate) fn ingest(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    events: Vec<NewEvent>,
    audit: &AuditContext,
) -> Result<Vec<Event>, StoreError> {
    let recorded = insert_events(conn, ctx, events)?;
    for entry in batch_audit_entries(&recorded) {
        super::audit::append(conn, ctx, audit, entry)?;
    }
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use tidings_domain::audit::AuditContext;
    use tidings_domain::{
        Catalog, EventFilter, IngestFormat, Order, Tenant, TypePattern, parse_ingest_body,
    };

    use super::{IndexTail, delete_events_below, indexed_through, insert_events};
    use crate::error::StoreError;
    use crate::sqlite::index_keys::{EVENTS_PER_EPOCH, KEY_TABLES};
    use crate::sqlite::test_support::{ORG, filter, ingest, numbers};
    use crate::sqlite::{DATABASE_FILE, SqliteStore, open_connection};
    use crate::{PageRequest, Store, SystemClock};

    const WS: &str = "WS-26-000021";

    fn body(event_type: &str, subject: &str, actor: &str, key: &str) -> String {
        format!(
            r#"{{"type":"{event_type}","organization_id":"{ORG}","workspace_id":"{WS}","actor":{{"type":"user","id":"{actor}"}},"subject":{{"type":"invoice","id":"{subject}"}},"payload":{{}},"idempotency_key":"{key}"}}"#
        )
    }

    /// A walk reads the first two epochs alone, then doubles its groups up to 256 epochs,
    /// keeping the pieces' order.
    #[test]
    fn epoch_groups_read_two_epochs_alone_then_double() {
        let pieces = (0..800)
            .map(|epoch| super::Piece {
                lo: 0,
                hi: 0,
                epoch,
            })
            .collect();
        let groups: Vec<Vec<super::Piece>> = super::EpochGroups::new(pieces).collect();
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 256, 32]);
        let order: Vec<u64> = groups.iter().flatten().map(|p| p.epoch).collect();
        assert_eq!(order, (0..800).collect::<Vec<u64>>());
    }

    /// The next event recorded in `dir` gets number `next` (as after a long run of others).
    fn number_next(dir: &std::path::Path, next: u64) {
        let conn = open_connection(&dir.join(DATABASE_FILE)).unwrap();
        conn.execute(
            "UPDATE id_sequences SET last = ?1 WHERE prefix = 'EVT'",
            [next as i64 - 1],
        )
        .unwrap();
    }

    /// Every event `filter` finds, `limit` at a time in `order`, following the pages.
    async fn every_page(store: &SqliteStore, filter: &EventFilter, order: Order) -> Vec<u64> {
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = PageRequest {
                limit: 2,
                order,
                after,
            };
            let got = store
                .list_events(&Tenant::Platform, filter, page)
                .await
                .unwrap();
            found.extend(got.items.iter().map(|e| e.id.number));
            after = got.items.last().map(|e| e.id.number);
            if !got.has_more {
                return found;
            }
        }
    }

    /// A store that leaves up to `events` events unindexed, however long it waits.
    fn store_with_tail(dir: &std::path::Path, events: u64) -> SqliteStore {
        let tail = IndexTail { events, idle: None };
        SqliteStore::open_with(dir, std::sync::Arc::new(SystemClock), tail).unwrap()
    }

    /// Index tails to test with: none (every group indexes its events), a few events (most
    /// of a test's events indexed, the newest not), and endless (nothing indexed).
    const TAILS: [u64; 3] = [0, 4, u64::MAX];

    /// Events in epochs 0, 1, 2 and 5 (3 and 4 hold none): every epoch-keyed filter finds
    /// them all, in order both ways, across page and epoch boundaries, and across the
    /// boundary between indexed events and the index tail.
    #[tokio::test]
    async fn walks_cross_epochs_in_order_both_ways() {
        for tail in TAILS {
            walks_cross_epochs(tail).await;
        }
    }

    async fn walks_cross_epochs(tail: u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_tail(dir.path(), tail);
        let e = EVENTS_PER_EPOCH;
        let mut expected = Vec::new();
        for (next, count) in [(1, 3), (2 * e - 2, 4), (5 * e + 10, 2)] {
            number_next(dir.path(), next);
            for i in 0..count {
                let recorded = ingest(
                    &store,
                    &body(
                        "invoice.paid",
                        "INV-26-000001",
                        "USR-26-000001",
                        &format!("k-{next}-{i}"),
                    ),
                )
                .await;
                // Noise between them: another subject, actor and type.
                ingest(
                    &store,
                    &body(
                        "invoice.finalized",
                        "INV-26-000002",
                        "USR-26-000002",
                        &format!("n-{next}-{i}"),
                    ),
                )
                .await;
                expected.push(recorded[0].id.number);
            }
        }
        assert_eq!(
            expected,
            [
                1,
                3,
                5,
                2 * e - 2,
                2 * e,
                2 * e + 2,
                2 * e + 4,
                5 * e + 10,
                5 * e + 12
            ]
        );
        let filters = [
            EventFilter {
                types: vec![TypePattern::parse("invoice.paid").unwrap()],
                ..filter()
            },
            EventFilter {
                subject_id: Some("INV-26-000001".parse().unwrap()),
                ..filter()
            },
            EventFilter {
                actor_id: Some("USR-26-000001".parse().unwrap()),
                ..filter()
            },
            EventFilter {
                workspace_id: Some(WS.parse().unwrap()),
                subject_type: Some("invoice".parse().unwrap()),
                types: vec![TypePattern::parse("invoice.paid").unwrap()],
                ..EventFilter::default()
            },
        ];
        for f in &filters {
            assert_eq!(
                every_page(&store, f, Order::Asc).await,
                expected,
                "tail {tail}, {f:?}"
            );
            let mut newest_first = expected.clone();
            newest_first.reverse();
            assert_eq!(
                every_page(&store, f, Order::Desc).await,
                newest_first,
                "tail {tail}, {f:?}"
            );
        }
        // A bound inside an epoch cuts it: only events numbered below 2e + 3, newest first.
        let page = PageRequest {
            limit: 3,
            order: Order::Desc,
            after: Some(2 * e + 3),
        };
        let got = store
            .list_events(&Tenant::Platform, &filters[1], page)
            .await
            .unwrap();
        let numbers: Vec<u64> = got.items.iter().map(|e| e.id.number).collect();
        assert_eq!(numbers, [2 * e + 2, 2 * e, 2 * e - 2], "tail {tail}");
        assert!(got.has_more);
        // How far the index reached: the test covered what it says.
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let through = indexed_through(&conn).unwrap();
        match tail {
            0 => assert_eq!(through, 5 * e + 13),
            // The jump to 5e + 10 was a tail of 4 numbers and more; the three after it wait.
            4 => assert_eq!(through, 5 * e + 10),
            _ => assert_eq!(through, 0),
        }
    }

    /// A key first used in epoch 0 still answers from epoch 5, from the same process, from a
    /// new one (the filter rebuilt from disk), and from a batch that repeats it itself;
    /// whether its first event is indexed or still in the index tail.
    #[tokio::test]
    async fn idempotency_keys_hold_across_epochs_and_restarts() {
        for tail in TAILS {
            idempotency_keys_hold(tail).await;
        }
    }

    async fn idempotency_keys_hold(tail: u64) {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = store_with_tail(dir.path(), tail);
            let first = ingest(&store, &body("invoice.paid", "INV-1", "USR-1", "k")).await;
            number_next(dir.path(), 5 * EVENTS_PER_EPOCH + 1);
            let again = ingest(&store, &body("invoice.paid", "INV-2", "USR-2", "k")).await;
            assert_eq!(again[0].id, first[0].id);
            first[0].id
        };
        let store = store_with_tail(dir.path(), tail);
        let again = ingest(&store, &body("invoice.paid", "INV-3", "USR-3", "k")).await;
        assert_eq!(again[0].id, first);
        let batch = format!(
            r#"{{"events":[{},{},{}]}}"#,
            body("invoice.paid", "INV-4", "USR-4", "fresh"),
            body("invoice.paid", "INV-5", "USR-5", "fresh"),
            body("invoice.paid", "INV-6", "USR-6", "k"),
        );
        let recorded = ingest(&store, &batch).await;
        assert_eq!(recorded[0].id.number, 5 * EVENTS_PER_EPOCH + 1);
        assert_eq!(recorded[1].id, recorded[0].id);
        assert_eq!(recorded[2].id, first);
    }

    /// Two stores on one file (two processes): keys the other one recorded after this one
    /// built its filter are still found, because each ingest first reads what is new;
    /// whether the other one indexed them or not. With a tail of 4 the other's key lands
    /// just past the events it indexed, the first event this one must not forget when it
    /// learns how far the index reaches.
    #[tokio::test]
    async fn idempotency_keys_recorded_by_another_process_hold() {
        for tail in TAILS {
            let dir = tempfile::tempdir().unwrap();
            let one = store_with_tail(dir.path(), tail);
            let other = store_with_tail(dir.path(), tail);
            // Both build their filters now, before the key exists.
            ingest(&one, &body("invoice.paid", "INV-1", "USR-1", "a")).await;
            for key in ["b", "c", "d"] {
                ingest(&other, &body("invoice.paid", "INV-2", "USR-2", key)).await;
            }
            let recorded = ingest(&other, &body("invoice.paid", "INV-3", "USR-3", "shared")).await;
            assert_eq!(recorded[0].id.number, 5);
            let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
            let indexed = match tail {
                0 => 5,
                4 => 4,
                _ => 0,
            };
            assert_eq!(indexed_through(&conn).unwrap(), indexed);
            let again = ingest(&one, &body("invoice.paid", "INV-4", "USR-4", "shared")).await;
            assert_eq!(again[0].id, recorded[0].id, "tail {tail}");
        }
    }

    /// Index entries whose event row does not exist, over every index table.
    fn orphan_entries(dir: &std::path::Path) -> i64 {
        let conn = open_connection(&dir.join(DATABASE_FILE)).unwrap();
        KEY_TABLES
            .iter()
            .map(|t| {
                conn.query_row(
                    &format!(
                        "SELECT count(*) FROM {} AS k
                         WHERE NOT EXISTS (SELECT 1 FROM events WHERE seq = k.seq)",
                        t
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
            })
            .sum()
    }

    /// Thirty pairs of jobs sent at once: one records events with subject and idempotency
    /// key `BAD-i` and then fails (rolled back in its savepoint), the other ingests `INV-i`
    /// (both the same). Returns what the kept ones recorded.
    async fn kept_and_rolled_back(
        store: &std::sync::Arc<SqliteStore>,
    ) -> Vec<tidings_domain::Event> {
        let events = |subject: &str| {
            parse_ingest_body(
                body("invoice.paid", subject, "USR-26-000001", subject).as_bytes(),
                IngestFormat::Json,
                &Catalog::builtin(),
            )
            .unwrap()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..30 {
            let store = store.clone();
            let (kept, dropped) = (events(&format!("INV-{i}")), events(&format!("BAD-{i}")));
            tasks.spawn(async move {
                let failed = store.write(1, move |conn, ctx| {
                    insert_events(conn, ctx, dropped)?;
                    Err::<(), _>(StoreError::Write("this job fails after writing".into()))
                });
                let audit = AuditContext::system();
                let kept = store.ingest(kept, &audit);
                let (failed, kept) = tokio::join!(failed, kept);
                assert!(failed.is_err());
                kept.unwrap()
            });
        }
        let mut kept = Vec::new();
        while let Some(done) = tasks.join_next().await {
            kept.extend(done.unwrap());
        }
        kept
    }

    /// Entries are written from the rows at the end of a group: a job that rolls back (in
    /// its savepoint) leaves no rows and so no entries, and takes none of the others',
    /// whether or not the writer put the jobs in one group. Every group indexes its events
    /// here (tail 0), so every entry is checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_rolled_back_leaves_no_index_entries_and_takes_none_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store_with_tail(dir.path(), 0));
        let kept = kept_and_rolled_back(&store).await;
        assert_eq!(orphan_entries(dir.path()), 0);
        for e in kept {
            let found = crate::sqlite::test_support::found_by_each(
                &store,
                "invoice.paid",
                e.subject.id.as_str(),
                "USR-26-000001",
                WS,
            )
            .await;
            // The subject (and its idempotency key) is this event's alone.
            assert_eq!(found[2], [e.id.number], "{e:?}");
            assert!(found.iter().all(|f| f.contains(&e.id.number)), "{found:?}");
        }
    }

    /// A job that rolled back never used its idempotency keys, though the filter noted
    /// them with event numbers that other events then took: sent again, each key records a
    /// new event, and the kept events' keys still answer with those events. Nothing is
    /// indexed here, so every lookup goes through the index tail's numbers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_of_a_rolled_back_job_were_never_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store_with_tail(dir.path(), u64::MAX));
        let kept = kept_and_rolled_back(&store).await;
        for e in &kept {
            let i = e.subject.id.as_str().trim_start_matches("INV-");
            let bad = format!("BAD-{i}");
            let again = ingest(&store, &body("invoice.paid", &bad, "USR-26-000001", &bad)).await;
            assert_eq!(again[0].subject.id.as_str(), bad);
            assert!(kept.iter().all(|k| k.id != again[0].id), "{again:?}");
            let subject = e.subject.id.as_str();
            let repeat = ingest(
                &store,
                &body("invoice.paid", subject, "USR-26-000001", subject),
            )
            .await;
            assert_eq!(repeat[0].id, e.id);
        }
        assert_eq!(numbers(&store, filter()).await.len(), 60);
    }

    /// The retention sweep removes an event's index entries with it.
    #[tokio::test]
    async fn the_sweep_removes_index_entries_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_tail(dir.path(), 0);
        for i in 0..10 {
            let key = format!("k{i}");
            ingest(
                &store,
                &body("invoice.paid", &format!("INV-{i}"), "USR-1", &key),
            )
            .await;
        }
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let entries = |conn: &Connection| -> Vec<i64> {
            KEY_TABLES
                .iter()
                .map(|t| {
                    conn.query_row(&format!("SELECT count(*) FROM {}", t), [], |r| r.get(0))
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(entries(&conn), [10; 6]);
        // A pass takes at most its limit, oldest first, then the next pass the rest.
        assert_eq!(delete_events_below(&conn, 8, 3).unwrap(), 3);
        assert_eq!(entries(&conn), [7; 6]);
        drop(conn);
        assert_eq!(numbers(&store, filter()).await, [4, 5, 6, 7, 8, 9, 10]);
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        assert_eq!(delete_events_below(&conn, 8, 100).unwrap(), 4);
        assert_eq!(entries(&conn), [3; 6]);
        assert_eq!(orphan_entries(dir.path()), 0);
        drop(conn);
        assert_eq!(numbers(&store, filter()).await, [8, 9, 10]);
    }

    /// The sweep takes events of the index tail too (they have no entries yet), and the
    /// events recorded after it are indexed as usual: nothing is found twice or lost.
    #[tokio::test]
    async fn the_sweep_takes_events_of_the_index_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_tail(dir.path(), 4);
        // Event i + 1 has subject INV-i and key ki, one request each.
        let record = |range: std::ops::Range<u32>| {
            let store = &store;
            async move {
                for i in range {
                    let (subject, key) = (format!("INV-{i}"), format!("k{i}"));
                    ingest(store, &body("invoice.paid", &subject, "USR-1", &key)).await;
                }
            }
        };
        record(0..10).await;
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        // Indexed in fours: 1–8; 9 and 10 wait in the tail.
        assert_eq!(indexed_through(&conn).unwrap(), 8);
        assert_eq!(delete_events_below(&conn, 10, 100).unwrap(), 9);
        assert_eq!(orphan_entries(dir.path()), 0);
        drop(conn);
        assert_eq!(numbers(&store, filter()).await, [10]);
        record(10..14).await;
        // 12 − 8 ≥ 4: the group of 12 indexed 10, 11 and 12 (read from their rows).
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        assert_eq!(indexed_through(&conn).unwrap(), 12);
        let count = |t: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert!(
            KEY_TABLES.iter().all(|t| count(t) == 3),
            "entries of 10, 11, 12"
        );
        assert_eq!(orphan_entries(dir.path()), 0);
        assert_eq!(numbers(&store, filter()).await, [10, 11, 12, 13, 14]);
        // A swept key is free again; kept ones answer with their events, indexed or not.
        for (key, number) in [("k3", 15), ("k10", 11), ("k13", 14), ("k9", 10)] {
            let again = ingest(&store, &body("invoice.paid", "INV-x", "USR-1", key)).await;
            assert_eq!(again[0].id.number, number, "{key}");
        }
    }

    /// A pause in writes indexes the tail, however short it is.
    #[tokio::test]
    async fn a_pause_in_writes_indexes_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let tail = IndexTail {
            events: u64::MAX,
            idle: Some(std::time::Duration::from_millis(20)),
        };
        let store =
            SqliteStore::open_with(dir.path(), std::sync::Arc::new(SystemClock), tail).unwrap();
        let batch = format!(
            r#"{{"events":[{},{},{}]}}"#,
            body("invoice.paid", "INV-1", "USR-1", "a"),
            body("invoice.paid", "INV-2", "USR-1", "b"),
            body("invoice.paid", "INV-3", "USR-1", "c"),
        );
        ingest(&store, &batch).await;
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let mut through = 0;
        for _ in 0..500 {
            through = indexed_through(&conn).unwrap();
            if through == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(through, 3, "indexed within 5 s of the last write");
        assert_eq!(orphan_entries(dir.path()), 0);
        assert_eq!(numbers(&store, filter()).await, [1, 2, 3]);
        assert_eq!(
            ingest(&store, &body("invoice.paid", "INV-4", "USR-1", "b")).await[0]
                .id
                .number,
            2
        );
    }

    /// Queries racing the writer as it indexes the tail (every 3 events here) see each
    /// event once: the newest page is always an unbroken run of numbers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_racing_the_indexing_of_the_tail_see_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(store_with_tail(dir.path(), 3));
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let key = format!("k{i}");
                    ingest(&store, &body("invoice.paid", "INV-1", "USR-1", &key)).await;
                }
            })
        };
        let filters = [
            filter(),
            EventFilter {
                types: vec![TypePattern::parse("invoice.paid").unwrap()],
                ..filter()
            },
            EventFilter {
                subject_id: Some("INV-1".parse().unwrap()),
                ..filter()
            },
        ];
        let mut checked = 0;
        while !writer.is_finished() {
            for f in &filters {
                for order in [Order::Desc, Order::Asc] {
                    let page = PageRequest {
                        limit: 20,
                        order,
                        after: None,
                    };
                    let got = store.list_events(&Tenant::Platform, f, page).await.unwrap();
                    let numbers: Vec<u64> = got.items.iter().map(|e| e.id.number).collect();
                    let unbroken = numbers.windows(2).all(|w| match order {
                        Order::Desc => w[0] == w[1] + 1,
                        Order::Asc => w[1] == w[0] + 1,
                    });
                    assert!(unbroken, "{order:?} {f:?}: {numbers:?}");
                    if order == Order::Asc && !numbers.is_empty() {
                        assert_eq!(numbers[0], 1, "{numbers:?}");
                    }
                    checked += 1;
                }
            }
        }
        writer.await.unwrap();
        // Ten rounds of the six pages at least, so the reads did race the writes (about
        // 500–700 here in a debug build).
        assert!(
            checked >= 60,
            "only {checked} pages read while the writer ran"
        );
        assert_eq!(
            every_page(&store, &filter(), Order::Asc).await,
            (1..=300).collect::<Vec<_>>()
        );
    }
}
