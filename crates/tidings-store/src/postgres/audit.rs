//! The audit log on PostgreSQL: appended in the same transaction as the action it records,
//! chained per organization (SPEC §11). Appends run under the write lock, so a chain's head
//! cannot move between reading it and appending to it.

use postgres::{GenericClient, Row, Transaction};
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

/// Where a chain starts: the checkpoint left by retention, or zeros.
pub(crate) fn chain_start(c: &mut impl GenericClient, chain: &str) -> Result<[u8; 32], StoreError> {
    c.query_opt(
        "SELECT prev_hash FROM audit_checkpoints WHERE chain = $1",
        &[&chain],
    )
    .context("reading an audit checkpoint")?
    .map(|r| stored::hash(r.get(0)))
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
    append_all(tx, ctx, audit, vec![entry])
}

/// Appends records to their organizations' chains, in order, with one read of the chain
/// heads this group has not touched yet and one insert.
pub(crate) fn append_all(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    audit: &AuditContext,
    entries: Vec<AuditEntry>,
) -> Result<(), StoreError> {
    append_each(
        tx,
        ctx,
        entries.into_iter().map(|entry| (audit, entry)).collect(),
    )
}

/// Like [`append_all`], each record with its own context (the fused ingest requests of a
/// group): still one read of the chain heads and one insert.
pub(crate) fn append_each(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    entries: Vec<(&AuditContext, AuditEntry)>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let chain_of = |e: &AuditEntry| {
        e.organization_id
            .as_ref()
            .map_or(PLATFORM_CHAIN, |o| o.as_str())
            .to_string()
    };
    let mut unread: Vec<String> = entries
        .iter()
        .map(|(_, e)| chain_of(e))
        .filter(|c| ctx.chain_head(c).is_none())
        .collect();
    unread.sort();
    unread.dedup();
    if !unread.is_empty() {
        let heads = ctx.prepared(
            tx,
            "SELECT c.chain, coalesce(
                 (SELECT hash FROM audit_records WHERE chain = c.chain ORDER BY seq DESC LIMIT 1),
                 (SELECT prev_hash FROM audit_checkpoints WHERE chain = c.chain))
             FROM unnest($1::text[]) AS c(chain)",
        )?;
        for row in tx
            .query(&heads, &[&unread])
            .context("reading the chain heads")?
        {
            let chain: String = row.get(0);
            let head = match row.get::<_, Option<Vec<u8>>>(1) {
                Some(h) => stored::hash(h)?,
                None => [0u8; 32],
            };
            ctx.set_chain_head(&chain, head);
        }
    }

    let created_at = timestamp(ctx.now.timestamp())?;
    let mut rows = AuditRows::default();
    for (audit, entry) in entries {
        let chain = chain_of(&entry);
        let prev = ctx.chain_head(&chain).unwrap_or([0u8; 32]);
        let seq = ctx.next_id(tx, "AUD")?;
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
        ctx.set_chain_head(&chain, hash);
        rows.push(seq, chain, &record, prev, hash);
    }
    let insert = ctx.prepared(
        tx,
        "INSERT INTO audit_records (seq, chain, org, actor_type, actor_id, action, resource_type,
                                    resource_id, request_id, source_ip, user_agent, changes,
                                    created_at, prev_hash, hash)
         SELECT seq, chain, org, actor_type, actor_id, action, resource_type, resource_id,
                request_id, source_ip, user_agent, changes, $13, prev_hash, hash
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $14::bytea[], $15::bytea[])
              AS r(seq, chain, org, actor_type, actor_id, action, resource_type, resource_id,
                   request_id, source_ip, user_agent, changes, prev_hash, hash)",
    )?;
    tx.execute(
        &insert,
        &[
            &rows.seq,
            &rows.chain,
            &rows.org,
            &rows.actor_type,
            &rows.actor_id,
            &rows.action,
            &rows.resource_type,
            &rows.resource_id,
            &rows.request_id,
            &rows.source_ip,
            &rows.user_agent,
            &rows.changes,
            &created_at.timestamp(),
            &rows.prev_hash,
            &rows.hash,
        ],
    )
    .context("recording audit records")?;
    Ok(())
}

/// Audit records as columns, for one `unnest` insert.
#[derive(Default)]
struct AuditRows {
    seq: Vec<i64>,
    chain: Vec<String>,
    org: Vec<Option<String>>,
    actor_type: Vec<String>,
    actor_id: Vec<String>,
    action: Vec<String>,
    resource_type: Vec<String>,
    resource_id: Vec<String>,
    request_id: Vec<Option<String>>,
    source_ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    changes: Vec<String>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl AuditRows {
    fn push(&mut self, seq: u64, chain: String, r: &AuditRecord, prev: [u8; 32], hash: [u8; 32]) {
        self.seq.push(seq as i64);
        self.chain.push(chain);
        self.org
            .push(r.organization_id.as_ref().map(|o| o.as_str().to_string()));
        self.actor_type.push(r.actor.actor_type.clone());
        self.actor_id.push(r.actor.id.clone());
        self.action.push(r.action.clone());
        self.resource_type.push(r.resource.resource_type.clone());
        self.resource_id.push(r.resource.id.clone());
        self.request_id.push(r.request_id.clone());
        self.source_ip.push(r.source_ip.clone());
        self.user_agent.push(r.user_agent.clone());
        self.changes.push(r.changes.to_string());
        self.prev_hash.push(prev.to_vec());
        self.hash.push(hash.to_vec());
    }
}

fn chained_from_row(row: &Row) -> Result<ChainedRecord, StoreError> {
    stored::audit_record(row)
}

pub(crate) fn list(
    c: &mut impl GenericClient,
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
    query.page(c, AUDIT_COLUMNS, "audit_records", page, |row| {
        chained_from_row(row).map(|c| c.record)
    })
}

/// Up to `limit` records of every chain after `after` (from the very first row, whatever
/// its number, when `None`), oldest first, each with its chain.
pub(crate) fn log_page(
    c: &mut impl GenericClient,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(String, ChainedRecord)>, StoreError> {
    c.query(
        &format!(
            "SELECT {AUDIT_COLUMNS}, chain FROM audit_records
             WHERE seq > $1 ORDER BY seq LIMIT $2"
        ),
        &[&after.map_or(i64::MIN, |a| a as i64), &(limit as i64)],
    )
    .context("reading the audit log")?
    .iter()
    .map(|row| {
        Ok((
            row.try_get("chain").context("reading a record's chain")?,
            chained_from_row(row)?,
        ))
    })
    .collect()
}
