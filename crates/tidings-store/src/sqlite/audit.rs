//! The audit log: appended in the same transaction as the action it records, chained per
//! organization (SPEC §11).
//!
//! A chain's records are found through `audit_chain_keys` (chain, seq), which has entries
//! for every record numbered up to `audit_indexed_through` and for none after it: the
//! audit tail. The writer adds the tail's entries in bulk ([`index_tail`]), as it does for
//! events, and reads walk the entries and then the tail's rows (DESIGN.md, "Audit
//! tail"). An append reads the hash it chains to from `audit_heads`.

use std::sync::LazyLock;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tidings_domain::audit::{
    AuditContext, AuditEntry, AuditRecord, ChainedRecord, PLATFORM_CHAIN, chain_hash,
};
use tidings_domain::ids::AuditId;
use tidings_domain::{Order, Tenant};

use super::list_query::{ListQuery, bound_limit, qualified};
use super::writer::WriterCtx;
use crate::audit_types::AuditFilter;
use crate::error::{Context, StoreError};
use crate::rows::{into_page, timestamp, two_digit_year};
use crate::stored::{self, AUDIT_COLUMNS};
use crate::{Page, PageRequest, list_scope};

/// [`AUDIT_COLUMNS`] taken from `audit_records AS r`, built once.
static JOINED_AUDIT_COLUMNS: LazyLock<String> = LazyLock::new(|| qualified("r", AUDIT_COLUMNS));

/// The prefix of audit record IDs, whose sequence numbers the records.
pub(crate) const ID_PREFIX: &str = "AUD";

fn chain_of(entry_org: Option<&str>) -> String {
    entry_org.unwrap_or(PLATFORM_CHAIN).to_string()
}

/// Where a chain starts: the checkpoint left by retention, or zeros.
pub(crate) fn chain_start(conn: &Connection, chain: &str) -> Result<[u8; 32], StoreError> {
    conn.query_row(
        "SELECT prev_hash FROM audit_checkpoints WHERE chain = ?1",
        [chain],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .optional()
    .context("reading an audit checkpoint")?
    .map(stored::hash)
    .transpose()
    .map(|h| h.unwrap_or([0u8; 32]))
}

/// Appends one record to its organization's chain.
pub(crate) fn append(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    audit: &AuditContext,
    entry: AuditEntry,
) -> Result<(), StoreError> {
    let chain = chain_of(entry.organization_id.as_ref().map(|o| o.as_str()));
    let prev: [u8; 32] = match conn
        .prepare_cached("SELECT hash FROM audit_heads WHERE chain = ?1")
        .context("preparing the chain head read")?
        .query_row([&chain], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .context("reading the chain head")?
    {
        Some(h) => stored::hash(h)?,
        None => chain_start(conn, &chain)?,
    };
    let seq = ctx.next_id(conn, ID_PREFIX)?;
    let created_at = ctx.now;
    let record = AuditRecord {
        id: AuditId::new(two_digit_year(created_at), seq),
        organization_id: entry.organization_id,
        actor: audit.actor.clone(),
        action: entry.action.to_string(),
        resource: entry.resource,
        request_id: audit.request_id.clone(),
        source_ip: audit.source_ip.clone(),
        user_agent: audit.user_agent.clone(),
        changes: entry.changes,
        created_at: timestamp(created_at.timestamp())?,
    };
    let hash = chain_hash(&prev, &record);
    conn.prepare_cached(
        "INSERT INTO audit_records (seq, chain, org, actor_type, actor_id, action, resource_type,
                                    resource_id, request_id, source_ip, user_agent, changes,
                                    created_at, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .context("preparing the audit insert")?
    .execute(params![
        seq as i64,
        chain,
        record.organization_id.as_ref().map(|o| o.as_str()),
        record.actor.actor_type,
        record.actor.id,
        record.action,
        record.resource.resource_type,
        record.resource.id,
        record.request_id,
        record.source_ip,
        record.user_agent,
        record.changes.to_string(),
        record.created_at.timestamp(),
        &prev[..],
        &hash[..],
    ])
    .context("recording an audit record")?;
    conn.prepare_cached(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .context("preparing the chain head update")?
    .execute(params![chain, seq as i64, &hash[..]])
    .context("moving the chain head")?;
    Ok(())
}

fn indexed_through(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT seq FROM audit_indexed_through")
        .context("preparing the audit index progress read")?
        .query_row([], |r| r.get::<_, i64>(0))
        .context("reading how far audit records are indexed")
        .map(|s| s.max(0) as u64)
}

/// Writes the chain entries of the records after `audit_indexed_through` once the newest
/// is `limit` numbers past it (any number for 0), sorted, in one statement; returns how
/// far records are indexed now. The entries are read from the rows, so records appended by
/// another process are indexed as well.
pub(crate) fn index_tail(conn: &Connection, limit: u64) -> Result<u64, StoreError> {
    let through = indexed_through(conn)?;
    let newest = conn
        .prepare_cached("SELECT max(seq) FROM audit_records")
        .context("preparing the newest audit record read")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .context("reading the newest audit record")?
        .map_or(0, |s| s.max(0) as u64);
    if newest <= through || newest - through < limit.max(1) {
        return Ok(through);
    }
    conn.prepare_cached(
        "INSERT INTO audit_chain_keys (chain, seq)
         SELECT chain, seq FROM audit_records WHERE seq > ?1 AND seq <= ?2 ORDER BY chain, seq",
    )
    .context("preparing the audit tail's entries")?
    .execute(params![through as i64, newest as i64])
    .context("indexing the audit tail")?;
    conn.prepare_cached("UPDATE audit_indexed_through SET seq = ?1")
        .context("preparing the audit index progress update")?
        .execute([newest as i64])
        .context("recording how far audit records are indexed")?;
    Ok(newest)
}

/// Deletes the records numbered `seqs` of `chain` with their chain entries (retention).
pub(crate) fn delete_records(
    conn: &Connection,
    chain: &str,
    seqs: &[i64],
) -> Result<(), StoreError> {
    let mut entry = conn
        .prepare_cached("DELETE FROM audit_chain_keys WHERE chain = ?1 AND seq = ?2")
        .context("preparing the audit entry delete")?;
    let mut record = conn
        .prepare_cached("DELETE FROM audit_records WHERE seq = ?1")
        .context("preparing the audit delete")?;
    for seq in seqs {
        entry
            .execute(params![chain, seq])
            .context("deleting an audit chain entry")?;
        record.execute([seq]).context("sweeping an audit record")?;
    }
    Ok(())
}

/// Up to `limit` records of `chain` after `after` in `order` that pass `filters`' conditions
/// (written against the records' columns): the chain's entries up to
/// `audit_indexed_through`, then the tail's rows after it, in one statement so that both
/// parts see the same point. `through` only grows and every record up to it has its
/// entry, so the two parts are disjoint and together complete.
fn chain_records(
    conn: &Connection,
    chain: &str,
    mut filters: ListQuery,
    order: Order,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ChainedRecord>, StoreError> {
    let columns = &*JOINED_AUDIT_COLUMNS;
    let (dir, cmp) = match order {
        Order::Desc => ("DESC", "<"),
        Order::Asc => ("ASC", ">"),
    };
    let chain = filters.bind(Value::Text(chain.to_string()));
    let after = match after {
        Some(a) => format!(" {cmp} {}", filters.bind(Value::Integer(a as i64))),
        None => " IS NOT NULL".to_string(),
    };
    let limit = bound_limit(&filters.bind(Value::Integer(limit as i64)));
    let conditions = filters.conditions();
    let through = "(SELECT seq FROM audit_indexed_through)";
    let sql = format!(
        "SELECT * FROM (
             SELECT {columns} FROM audit_chain_keys k CROSS JOIN audit_records r ON r.seq = k.seq
             WHERE k.chain = {chain} AND k.seq <= {through} AND k.seq{after} AND {conditions}
             ORDER BY k.seq {dir} {limit})
         UNION ALL
         SELECT * FROM (
             SELECT {columns} FROM audit_records r
             WHERE r.seq > {through} AND r.chain = {chain} AND r.seq{after} AND {conditions}
             ORDER BY r.seq {dir} {limit})
         ORDER BY 1 {dir} {limit}"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .context("preparing a chain read")?;
    let rows = stmt
        .query_map(params_from_iter(filters.args().iter()), chained_from_row)
        .context("reading a chain")?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.context("reading a chain record")??);
    }
    Ok(out)
}

fn chained_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ChainedRecord, StoreError>> {
    Ok(stored::audit_record(row))
}

pub(crate) fn list(
    conn: &Connection,
    tenant: &Tenant,
    filter: &AuditFilter,
    page: PageRequest,
) -> Result<Page<AuditRecord>, StoreError> {
    let Ok(org) = list_scope(tenant, filter.organization_id.as_ref()) else {
        return Ok(Page::empty());
    };
    // A platform key without an organization reads the platform chain.
    let chain = org.map_or(PLATFORM_CHAIN, |o| o.as_str()).to_string();
    let mut query = ListQuery::default();
    for (column, value) in [
        ("actor_id", &filter.actor_id),
        ("action", &filter.action),
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
    ] {
        if let Some(v) = value {
            query.eq(column, v.clone());
        }
    }
    query.created_within(&filter.range);
    let records = chain_records(
        conn,
        &chain,
        query,
        page.order,
        page.after,
        page.limit as usize + 1,
    )?;
    Ok(into_page(
        records.into_iter().map(|c| c.record).collect(),
        page.limit,
    ))
}

/// Up to `limit` records of every chain after `after` (from the very first row, whatever
/// its number, when `None`), oldest first, each with its chain: read from the table, not
/// through the chain entries, so that a row without an entry is verified too.
pub(crate) fn log_page(
    conn: &Connection,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(String, ChainedRecord)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS}, chain FROM audit_records WHERE seq > ?1 ORDER BY seq LIMIT ?2 + 0"
        ))
        .context("preparing the audit log read")?;
    let chain_column = AUDIT_COLUMNS.split(", ").count();
    let rows = stmt
        .query_map(
            params![after.map_or(i64::MIN, |a| a as i64), limit as i64],
            |row| {
                let chain = row.get::<_, String>(chain_column)?;
                Ok(chained_from_row(row)?.map(|record| (chain, record)))
            },
        )
        .context("reading the audit log")?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.context("reading an audit record")??);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use chrono::{Duration as Hours, TimeZone, Utc};
    use tidings_domain::audit::{AuditContext, ChainedRecord, verify_chain};
    use tidings_domain::{NewApiKey, Order, Scope, TimeRange};

    use super::indexed_through;
    use crate::audit_types::AuditFilter;
    use crate::sqlite::test_support::{ORG, audit_pages, ingest};
    use crate::sqlite::{DATABASE_FILE, IndexTail, SqliteStore, open_connection};
    use crate::{ManualClock, Store, SystemClock};

    const OTHER: &str = "ORG-26-000777";

    fn event(org: &str) -> String {
        format!(
            r#"{{"type":"invoice.paid","organization_id":"{org}","actor":{{"type":"user","id":"USR-1"}},"subject":{{"type":"invoice","id":"INV-1"}},"payload":{{}}}}"#
        )
    }

    /// The numbers of the records `filter` lists, three a page.
    async fn walk(store: &SqliteStore, filter: &AuditFilter, order: Order) -> Vec<u64> {
        let records = audit_pages(store, filter, order, 3).await;
        records.iter().map(|r| r.id.number).collect()
    }

    /// `ORG`'s records as the table holds them, whole.
    async fn in_table_records(store: &SqliteStore) -> Vec<ChainedRecord> {
        let page = store.audit_log_page(None, 1_000).await.unwrap();
        page.into_iter()
            .filter(|(chain, _)| chain == ORG)
            .map(|(_, r)| r)
            .collect()
    }

    /// `ORG`'s records as the table holds them (what `audit verify` reads).
    async fn in_table(store: &SqliteStore) -> Vec<u64> {
        let records = in_table_records(store).await;
        records.iter().map(|r| r.record.id.number).collect()
    }

    fn through(dir: &std::path::Path) -> (u64, u64) {
        let conn = open_connection(&dir.join(DATABASE_FILE)).unwrap();
        let newest: i64 = conn
            .query_row("SELECT max(seq) FROM audit_records", [], |r| r.get(0))
            .unwrap();
        (indexed_through(&conn).unwrap(), newest as u64)
    }

    /// A chain lists the same records, in both orders and with filters, whether they are
    /// all indexed, none are (all in the audit tail), or the pages cross from one part to
    /// the other; another chain's records interleaved with it never show.
    #[tokio::test]
    async fn a_chain_lists_alike_through_its_entries_and_its_tail() {
        // 20 records: with a tail of 7 the last 6 are left unindexed.
        for limit in [0, 7, u64::MAX] {
            let dir = tempfile::tempdir().unwrap();
            let tail = IndexTail {
                events: limit,
                idle: None,
            };
            let start = Utc.with_ymd_and_hms(2026, 4, 14, 9, 0, 0).unwrap();
            let clock = Arc::new(ManualClock::new(start));
            let store = SqliteStore::open_with(dir.path(), clock.clone(), tail).unwrap();
            let mut keys = Vec::new();
            for i in 0..11 {
                // An hour apart, for the time range below.
                clock.advance(Hours::hours(1));
                ingest(&store, &event(ORG)).await;
                if i % 2 == 0 {
                    ingest(&store, &event(OTHER)).await;
                }
                if i % 5 == 0 {
                    let new = NewApiKey {
                        organization_id: Some(ORG.parse().unwrap()),
                        scopes: vec![Scope::EventsRead],
                        rate_limit: None,
                        description: None,
                    };
                    let hash = [i as u8; 32];
                    let key = store
                        .create_key(new, hash, &AuditContext::system())
                        .await
                        .unwrap();
                    keys.push(key.id.to_string());
                }
            }
            let (indexed, newest) = through(dir.path());
            match limit {
                0 => assert_eq!(indexed, newest),
                7 => assert!(indexed > 0 && indexed < newest, "{indexed} of {newest}"),
                _ => assert_eq!(indexed, 0),
            }

            let expected = in_table(&store).await;
            assert_eq!(expected.len(), 14, "limit {limit}");
            let all = AuditFilter {
                organization_id: Some(ORG.parse().unwrap()),
                ..AuditFilter::default()
            };
            assert_eq!(
                walk(&store, &all, Order::Asc).await,
                expected,
                "limit {limit}"
            );
            let mut newest_first = expected.clone();
            newest_first.reverse();
            assert_eq!(
                walk(&store, &all, Order::Desc).await,
                newest_first,
                "limit {limit}"
            );

            let created = AuditFilter {
                action: Some("api_key.created".into()),
                ..all.clone()
            };
            // `from`/`to`: the records created in [start + 4 h, start + 9 h), newest first.
            let range = TimeRange {
                from: Some(start + Hours::hours(4)),
                to: Some(start + Hours::hours(9)),
            };
            let within: Vec<u64> = in_table_records(&store)
                .await
                .iter()
                .rev()
                .filter(|r| {
                    r.record.created_at >= range.from.unwrap()
                        && r.record.created_at < range.to.unwrap()
                })
                .map(|r| r.record.id.number)
                .collect();
            assert!(within.len() >= 5, "{within:?}");
            let ranged = AuditFilter {
                range,
                ..all.clone()
            };
            assert_eq!(
                walk(&store, &ranged, Order::Desc).await,
                within,
                "limit {limit}"
            );

            // Three key records, two a page: the filter holds across pages and parts.
            let found = audit_pages(&store, &created, Order::Asc, 2).await;
            let ids: Vec<String> = found.iter().map(|r| r.resource.id.clone()).collect();
            assert_eq!(ids, keys, "limit {limit}");
        }
    }

    /// With writes paused, the writer indexes the audit tail as it does the events'.
    #[tokio::test]
    async fn a_pause_indexes_the_audit_tail() {
        let dir = tempfile::tempdir().unwrap();
        let tail = IndexTail {
            events: u64::MAX,
            idle: Some(Duration::from_millis(20)),
        };
        let store = SqliteStore::open_with(dir.path(), Arc::new(SystemClock), tail).unwrap();
        for _ in 0..3 {
            ingest(&store, &event(ORG)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut state = through(dir.path());
        while state.0 != state.1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            state = through(dir.path());
        }
        assert_eq!(state, (3, 3));
    }

    /// Two writers on one file (the server and `tidings keys create`) appending to the same
    /// chain in turn keep it one chain: each append links to the head the other left.
    #[tokio::test]
    async fn appends_from_two_writers_on_one_file_stay_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let server = SqliteStore::open(dir.path()).unwrap();
        let cli = SqliteStore::open(dir.path()).unwrap();
        for i in 0..6 {
            let writer = if i % 2 == 0 { &server } else { &cli };
            ingest(writer, &event(ORG)).await;
        }
        let log = server.audit_log_page(None, 100).await.unwrap();
        let records: Vec<_> = log.into_iter().map(|(_, r)| r).collect();
        assert_eq!(records.len(), 6);
        assert!(verify_chain([0; 32], &records).is_empty());
    }

    /// Retention removes an expired record's chain entry with it: what is left of the
    /// entries is exactly the records that remain, and the shortened chain lists and
    /// verifies from its checkpoint.
    #[tokio::test]
    async fn retention_removes_chain_entries_with_their_records() {
        use crate::retention::RetentionPolicy;

        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 4, 14, 9, 0, 0).unwrap(),
        ));
        let tail = IndexTail {
            events: 0,
            idle: None,
        };
        let store = SqliteStore::open_with(dir.path(), clock.clone(), tail).unwrap();
        for _ in 0..4 {
            ingest(&store, &event(ORG)).await;
        }
        clock.advance(Hours::days(2));
        for _ in 0..2 {
            ingest(&store, &event(ORG)).await;
        }
        let policy = RetentionPolicy {
            audit_records: Duration::from_secs(86_400),
            ..RetentionPolicy::default()
        };
        let swept = store.sweep_retention(policy, 100).await.unwrap();
        assert_eq!(swept.audit_records, 4);

        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let entries: Vec<i64> = conn
            .prepare("SELECT seq FROM audit_chain_keys ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(entries, [5, 6]);
        let all = AuditFilter {
            organization_id: Some(ORG.parse().unwrap()),
            ..AuditFilter::default()
        };
        assert_eq!(walk(&store, &all, Order::Asc).await, [5, 6]);
        let start = store.audit_chain_start(ORG).await.unwrap();
        assert!(verify_chain(start, &in_table_records(&store).await).is_empty());
    }
}
