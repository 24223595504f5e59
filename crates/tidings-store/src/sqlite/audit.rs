//! The audit log: appended in the same transaction as the action it records, chained per
//! organization (SPEC §11).

use rusqlite::{Connection, OptionalExtension, Row, params};
use tidings_domain::Tenant;
use tidings_domain::audit::{
    AuditContext, AuditEntry, AuditRecord, ChainedRecord, PLATFORM_CHAIN, chain_hash,
};
use tidings_domain::ids::AuditId;

use super::list_query::ListQuery;
use super::writer::WriterCtx;
use crate::audit_types::AuditFilter;
use crate::error::{Context, StoreError};
use crate::rows::{timestamp, two_digit_year};
use crate::stored::{self, AUDIT_COLUMNS};
use crate::{Page, PageRequest, list_scope};

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
        .prepare_cached("SELECT hash FROM audit_records WHERE chain = ?1 ORDER BY seq DESC LIMIT 1")
        .context("preparing the chain head read")?
        .query_row([&chain], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .context("reading the chain head")?
    {
        Some(h) => stored::hash(h)?,
        None => chain_start(conn, &chain)?,
    };
    let seq = ctx.next_id(conn, "AUD")?;
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
    Ok(())
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
    query.eq("chain", chain);
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
    query.page(
        conn,
        AUDIT_COLUMNS,
        "audit_records INDEXED BY audit_chain",
        page,
        |row| Ok(chained_from_row(row)?.map(|c| c.record)),
    )
}

pub(crate) fn chains(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT DISTINCT chain FROM audit_records ORDER BY chain")
        .context("preparing the chain list")?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .context("listing audit chains")?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.context("reading a chain name")?);
    }
    Ok(out)
}

/// Up to `limit` records of a chain after `after` (from the very first row, whatever its
/// number, when `None`), oldest first.
pub(crate) fn chain_page(
    conn: &Connection,
    chain: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ChainedRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_records INDEXED BY audit_chain
             WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ))
        .context("preparing the chain read")?;
    let rows = stmt
        .query_map(
            params![chain, after.map_or(i64::MIN, |a| a as i64), limit as i64],
            chained_from_row,
        )
        .context("reading a chain")?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.context("reading a chain record")??);
    }
    Ok(out)
}
