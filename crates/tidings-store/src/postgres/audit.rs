//! The audit log on PostgreSQL: appended in the same transaction as the action it records,
//! chained per organization (SPEC §11). Appends run under the write lock, so a chain's head
//! cannot move between reading it and appending to it.

use postgres::{GenericClient, Row, Transaction};
use tidings_domain::Tenant;
use tidings_domain::audit::{
    AuditActor, AuditContext, AuditEntry, AuditRecord, AuditResource, ChainedRecord,
    PLATFORM_CHAIN, chain_hash,
};
use tidings_domain::ids::AuditId;

use super::list_query::ListQuery;
use super::writer::WriterCtx;
use crate::audit_types::AuditFilter;
use crate::error::{Context, StoreError};
use crate::rows::{corrupt, timestamp, two_digit_year};
use crate::{Page, PageRequest};

fn to_hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("an audit hash has the wrong length".into()))
}

/// Where a chain starts: the checkpoint left by retention, or zeros.
pub(crate) fn chain_start(c: &mut impl GenericClient, chain: &str) -> Result<[u8; 32], StoreError> {
    c.query_opt(
        "SELECT prev_hash FROM audit_checkpoints WHERE chain = $1",
        &[&chain],
    )
    .context("reading an audit checkpoint")?
    .map(|r| to_hash(r.get(0)))
    .transpose()
    .map(|h| h.unwrap_or([0u8; 32]))
}

/// Appends one record to its organization's chain.
pub(crate) fn append(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    audit: &AuditContext,
    entry: AuditEntry,
) -> Result<(), StoreError> {
    let chain = entry
        .organization_id
        .as_ref()
        .map_or(PLATFORM_CHAIN, |o| o.as_str())
        .to_string();
    let prev: [u8; 32] = match tx
        .query_opt(
            "SELECT hash FROM audit_records WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            &[&chain],
        )
        .context("reading the chain head")?
    {
        Some(r) => to_hash(r.get(0))?,
        None => chain_start(tx, &chain)?,
    };
    let seq = ctx.next_id(tx, "AUD")?;
    let created_at = timestamp(ctx.now.timestamp())?;
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
        created_at,
    };
    let hash = chain_hash(&prev, &record);
    tx.execute(
        "INSERT INTO audit_records (seq, chain, org, actor_type, actor_id, action, resource_type,
                                    resource_id, request_id, source_ip, user_agent, changes,
                                    created_at, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &(seq as i64),
            &chain,
            &record.organization_id.as_ref().map(|o| o.as_str()),
            &record.actor.actor_type,
            &record.actor.id,
            &record.action,
            &record.resource.resource_type,
            &record.resource.id,
            &record.request_id,
            &record.source_ip,
            &record.user_agent,
            &record.changes.to_string(),
            &record.created_at.timestamp(),
            &&prev[..],
            &&hash[..],
        ],
    )
    .context("recording an audit record")?;
    Ok(())
}

const AUDIT_COLUMNS: &str = "seq, org, actor_type, actor_id, action, resource_type, resource_id, request_id, source_ip, user_agent, changes, created_at, prev_hash, hash";

fn chained_from_row(row: &Row) -> Result<ChainedRecord, StoreError> {
    let seq: i64 = row.get(0);
    let org: Option<String> = row.get(1);
    let changes: String = row.get(10);
    let created_at = timestamp(row.get(11))?;
    Ok(ChainedRecord {
        record: AuditRecord {
            id: AuditId::new(two_digit_year(created_at), seq as u64),
            organization_id: org
                .map(|o| o.parse())
                .transpose()
                .map_err(|e| corrupt("audit org", e))?,
            actor: AuditActor {
                actor_type: row.get(2),
                id: row.get(3),
            },
            action: row.get(4),
            resource: AuditResource {
                resource_type: row.get(5),
                id: row.get(6),
            },
            request_id: row.get(7),
            source_ip: row.get(8),
            user_agent: row.get(9),
            changes: serde_json::from_str(&changes).map_err(|e| corrupt("audit changes", e))?,
            created_at,
        },
        prev_hash: to_hash(row.get(12))?,
        hash: to_hash(row.get(13))?,
    })
}

pub(crate) fn list(
    c: &mut impl GenericClient,
    tenant: &Tenant,
    filter: &AuditFilter,
    page: PageRequest,
) -> Result<Page<AuditRecord>, StoreError> {
    let chain = match (tenant, &filter.organization_id) {
        (Tenant::Org(mine), Some(asked)) if mine != asked => {
            return Ok(Page {
                items: Vec::new(),
                has_more: false,
            });
        }
        (Tenant::Org(mine), _) => mine.as_str().to_string(),
        (Tenant::Platform, Some(asked)) => asked.as_str().to_string(),
        (Tenant::Platform, None) => PLATFORM_CHAIN.to_string(),
    };
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
    query.page(c, AUDIT_COLUMNS, "audit_records", page, |row| {
        chained_from_row(row).map(|c| c.record)
    })
}

pub(crate) fn chains(c: &mut impl GenericClient) -> Result<Vec<String>, StoreError> {
    Ok(c.query(
        "SELECT DISTINCT chain FROM audit_records ORDER BY chain",
        &[],
    )
    .context("listing audit chains")?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

/// Up to `limit` records of a chain after `after` (from the very first row, whatever its
/// number, when `None`), oldest first.
pub(crate) fn chain_page(
    c: &mut impl GenericClient,
    chain: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<ChainedRecord>, StoreError> {
    c.query(
        &format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_records
             WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ),
        &[
            &chain,
            &after.map_or(i64::MIN, |a| a as i64),
            &(limit as i64),
        ],
    )
    .context("reading a chain")?
    .iter()
    .map(chained_from_row)
    .collect()
}
