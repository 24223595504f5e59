//! API keys: created and revoked through the writer, looked up on every request.

use rusqlite::{Connection, OptionalExtension, Row, params};
use tidings_domain::audit::AuditContext;
use tidings_domain::{ApiKey, KeyId, NewApiKey};

use super::writer::WriterCtx;
use crate::audit_entries;
use crate::error::{Context, StoreError};
use crate::stored::{self, KEY_COLUMNS};

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ApiKey, StoreError>> {
    Ok(stored::api_key(row))
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

pub(crate) fn create_key(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    key: NewApiKey,
    secret_hash: [u8; 32],
    audit: &AuditContext,
) -> Result<ApiKey, StoreError> {
    let seq = ctx.next_id(conn, "KEY")?;
    let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    conn.execute(
        "INSERT INTO api_keys (seq, secret_hash, org, scopes, rate_limit, description, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            seq as i64,
            &secret_hash[..],
            key.organization_id.as_ref().map(|o| o.as_str()),
            scopes.join(","),
            key.rate_limit,
            key.description,
            ctx.now.timestamp(),
        ],
    )
    .context("inserting a key")?;
    let created = key_by_seq(conn, seq)?
        .ok_or_else(|| StoreError::Corrupt("a key vanished right after insert".into()))?;
    super::audit::append(conn, ctx, audit, audit_entries::key_created(&created))?;
    Ok(created)
}

pub(crate) fn revoke_key(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    id: KeyId,
    audit: &AuditContext,
) -> Result<Option<ApiKey>, StoreError> {
    let Some(existing) = key_by_seq(conn, id.number)?.filter(|k| k.id == id) else {
        return Ok(None);
    };
    if existing.revoked_at.is_some() {
        return Ok(Some(existing));
    }
    conn.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE seq = ?1",
        params![id.number as i64, ctx.now.timestamp()],
    )
    .context("revoking a key")?;
    let revoked = key_by_seq(conn, id.number)?;
    super::audit::append(
        conn,
        ctx,
        audit,
        audit_entries::key_revoked(&existing, &revoked),
    )?;
    Ok(revoked)
}
