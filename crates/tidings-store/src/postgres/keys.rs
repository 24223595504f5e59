//! API keys on PostgreSQL: created and revoked through the writer, looked up on every request.

use postgres::{GenericClient, Row, Transaction};
use tidings_domain::audit::AuditContext;
use tidings_domain::{ApiKey, KeyId, NewApiKey};

use super::writer::WriterCtx;
use crate::audit_entries;
use crate::error::{Context, StoreError};
use crate::stored::{self, KEY_COLUMNS};

fn key_from_row(row: &Row) -> Result<ApiKey, StoreError> {
    stored::api_key(row)
}

fn key_by_seq(c: &mut impl GenericClient, seq: u64) -> Result<Option<ApiKey>, StoreError> {
    c.query_opt(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE seq = $1"),
        &[&(seq as i64)],
    )
    .context("looking up a key")?
    .map(|r| key_from_row(&r))
    .transpose()
}

pub(crate) fn active_key_by_hash(
    c: &mut impl GenericClient,
    hash: &[u8; 32],
) -> Result<Option<ApiKey>, StoreError> {
    c.query_opt(
        &format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL"
        ),
        &[&&hash[..]],
    )
    .context("authenticating a key")?
    .map(|r| key_from_row(&r))
    .transpose()
}

pub(crate) fn list_keys(c: &mut impl GenericClient) -> Result<Vec<ApiKey>, StoreError> {
    c.query(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY seq DESC"),
        &[],
    )
    .context("listing keys")?
    .iter()
    .map(key_from_row)
    .collect()
}

pub(crate) fn create_key(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    key: NewApiKey,
    secret_hash: [u8; 32],
    audit: &AuditContext,
) -> Result<ApiKey, StoreError> {
    let seq = ctx.next_id(tx, "KEY")?;
    let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    tx.execute(
        "INSERT INTO api_keys (seq, secret_hash, org, scopes, rate_limit, description, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &(seq as i64),
            &&secret_hash[..],
            &key.organization_id.as_ref().map(|o| o.as_str()),
            &scopes.join(","),
            &key.rate_limit.map(i64::from),
            &key.description,
            &ctx.now.timestamp(),
        ],
    )
    .context("inserting a key")?;
    let created = key_by_seq(tx, seq)?
        .ok_or_else(|| StoreError::Corrupt("a key vanished right after insert".into()))?;
    super::audit::append(tx, ctx, audit, audit_entries::key_created(&created))?;
    Ok(created)
}

pub(crate) fn revoke_key(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    id: KeyId,
    audit: &AuditContext,
) -> Result<Option<ApiKey>, StoreError> {
    let Some(existing) = key_by_seq(tx, id.number)?.filter(|k| k.id == id) else {
        return Ok(None);
    };
    if existing.revoked_at.is_some() {
        return Ok(Some(existing));
    }
    tx.execute(
        "UPDATE api_keys SET revoked_at = $2 WHERE seq = $1",
        &[&(id.number as i64), &ctx.now.timestamp()],
    )
    .context("revoking a key")?;
    let revoked = key_by_seq(tx, id.number)?;
    super::audit::append(
        tx,
        ctx,
        audit,
        audit_entries::key_revoked(&existing, &revoked),
    )?;
    Ok(revoked)
}
