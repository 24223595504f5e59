//! Webhooks and their signing secrets.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};
use tidings_domain::ids::WebhookId;
use tidings_domain::webhook::{SigningSecret, Webhook};
use tidings_domain::{OrgId, Tenant};

use serde_json::json;
use tidings_domain::audit::AuditContext;

use super::list_query::ListQuery;
use super::writer::WriterCtx;
use crate::delivery_types::{NewWebhook, WebhookUpdate};
use crate::error::{Context, StoreError};
use crate::rows::{corrupt, join_patterns, webhook_id};
use crate::stored;
pub(crate) use crate::stored::WEBHOOK_COLUMNS;
use crate::{Page, PageRequest, list_scope};

fn webhook_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Webhook, StoreError>> {
    Ok(stored::webhook(row))
}

/// The webhook `id`, if it exists within `tenant`. Every webhook query starts here, so a
/// webhook of another organization is indistinguishable from one that does not exist.
pub(crate) fn find(
    conn: &Connection,
    tenant: &Tenant,
    id: WebhookId,
) -> Result<Option<Webhook>, StoreError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE seq = ?1"
        ))
        .context("preparing a webhook lookup")?
        .query_row([id.number as i64], webhook_from_row)
        .optional()
        .context("looking up a webhook")?
        .transpose()?;
    Ok(found.filter(|w| {
        w.id == id
            && match tenant {
                Tenant::Org(org) => w.organization_id == *org,
                Tenant::Platform => true,
            }
    }))
}

pub(crate) fn create(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    new: NewWebhook,
    secret: SigningSecret,
    audit: &AuditContext,
) -> Result<Webhook, StoreError> {
    let seq = ctx.next_id(conn, "WHK")?;
    let now = ctx.now.timestamp();
    conn.execute(
        "INSERT INTO webhooks (seq, org, workspace, url, event_types, description, status,
                               disabled_reason, start_after_seq, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                 (SELECT coalesce(max(seq), 0) FROM events), ?9, ?9)",
        params![
            seq as i64,
            new.organization_id.as_str(),
            new.workspace_id.as_ref().map(|w| w.as_str()),
            new.url,
            join_patterns(&new.event_types),
            new.description,
            new.status.0.as_str(),
            new.status.1,
            now,
        ],
    )
    .context("inserting a webhook")?;
    conn.execute(
        "INSERT INTO webhook_secrets (webhook_seq, secret, created_at) VALUES (?1, ?2, ?3)",
        params![seq as i64, secret.as_str(), now],
    )
    .context("inserting a webhook secret")?;
    let created = find(conn, &Tenant::Platform, webhook_id(seq as i64, ctx.now))?
        .ok_or_else(|| StoreError::Corrupt("a webhook vanished right after insert".into()))?;
    record(
        conn,
        ctx,
        audit,
        "webhook.created",
        &created,
        json!({"after": created}),
    )?;
    Ok(created)
}

/// Appends the audit record of an action on `webhook`.
fn record(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    audit: &AuditContext,
    action: &'static str,
    webhook: &Webhook,
    changes: serde_json::Value,
) -> Result<(), StoreError> {
    super::audit::append(
        conn,
        ctx,
        audit,
        crate::audit_entries::webhook_changed(action, webhook, changes),
    )
}

pub(crate) fn list(
    conn: &Connection,
    tenant: &Tenant,
    organization_id: Option<&OrgId>,
    page: PageRequest,
) -> Result<Page<Webhook>, StoreError> {
    let Ok(org) = list_scope(tenant, organization_id) else {
        return Ok(Page::empty());
    };
    let mut query = ListQuery::default();
    if let Some(org) = org {
        query.eq("org", org.as_str().to_string());
    }
    query.page(conn, WEBHOOK_COLUMNS, "webhooks", page, webhook_from_row)
}

pub(crate) fn update(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    update: WebhookUpdate,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(before) = find(conn, tenant, id)? else {
        return Ok(None);
    };
    let seq = id.number as i64;
    let now = ctx.now.timestamp();
    if let Some(url) = &update.url {
        conn.execute(
            "UPDATE webhooks SET url = ?2 WHERE seq = ?1",
            params![seq, url],
        )
        .context("updating a webhook url")?;
    }
    if let Some(types) = &update.event_types {
        conn.execute(
            "UPDATE webhooks SET event_types = ?2 WHERE seq = ?1",
            params![seq, join_patterns(types)],
        )
        .context("updating webhook event types")?;
    }
    if let Some(description) = &update.description {
        conn.execute(
            "UPDATE webhooks SET description = ?2 WHERE seq = ?1",
            params![seq, description],
        )
        .context("updating a webhook description")?;
    }
    if let Some((status, reason)) = &update.status {
        // Becoming active: deliver what is recorded from now on, not the backlog.
        conn.execute(
            "UPDATE webhooks SET status = ?2, disabled_reason = ?3, failing_since = NULL,
                 start_after_seq = CASE WHEN ?2 = 'active' AND status != 'active'
                     THEN (SELECT coalesce(max(seq), 0) FROM events) ELSE start_after_seq END
             WHERE seq = ?1",
            params![seq, status.as_str(), reason],
        )
        .context("updating a webhook status")?;
    }
    conn.execute(
        "UPDATE webhooks SET updated_at = ?2 WHERE seq = ?1",
        params![seq, now],
    )
    .context("touching a webhook")?;
    let after = find(conn, tenant, id)?;
    if let Some(after) = &after {
        record(
            conn,
            ctx,
            audit,
            "webhook.updated",
            after,
            json!({"before": before, "after": after}),
        )?;
    }
    Ok(after)
}

pub(crate) fn delete(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(found) = find(conn, tenant, id)? else {
        return Ok(None);
    };
    conn.execute("DELETE FROM webhooks WHERE seq = ?1", [id.number as i64])
        .context("deleting a webhook")?;
    record(
        conn,
        ctx,
        audit,
        "webhook.deleted",
        &found,
        json!({"before": found}),
    )?;
    Ok(Some(found))
}

/// Live secrets of webhook `seq`, newest first.
pub(crate) fn live_secrets(
    conn: &Connection,
    seq: u64,
    now: DateTime<Utc>,
) -> Result<Vec<SigningSecret>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT secret FROM webhook_secrets
             WHERE webhook_seq = ?1 AND (expires_at IS NULL OR expires_at > ?2)
             ORDER BY expires_at IS NULL DESC, created_at DESC",
        )
        .context("preparing the secret lookup")?;
    let rows = stmt
        .query_map(params![seq as i64, now.timestamp()], |r| {
            r.get::<_, String>(0)
        })
        .context("reading webhook secrets")?;
    let mut out = Vec::new();
    for row in rows {
        let s = row.context("reading a secret")?;
        out.push(SigningSecret::parse(&s).map_err(|e| corrupt("webhook secret", e))?);
    }
    Ok(out)
}

pub(crate) fn rotate_secret(
    conn: &Connection,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    secret: SigningSecret,
    overlap: Duration,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(found) = find(conn, tenant, id)? else {
        return Ok(None);
    };
    let now = ctx.now.timestamp();
    let expires = now + overlap.as_secs() as i64;
    // The current secret signs on for `overlap`; older ones keep their earlier expiry.
    conn.execute(
        "UPDATE webhook_secrets SET expires_at = ?2
         WHERE webhook_seq = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        params![id.number as i64, expires],
    )
    .context("expiring the old secret")?;
    conn.execute(
        "DELETE FROM webhook_secrets WHERE webhook_seq = ?1 AND expires_at <= ?2",
        params![id.number as i64, now],
    )
    .context("dropping expired secrets")?;
    conn.execute(
        "INSERT INTO webhook_secrets (webhook_seq, secret, created_at) VALUES (?1, ?2, ?3)",
        params![id.number as i64, secret.as_str(), now],
    )
    .context("inserting the new secret")?;
    conn.execute(
        "UPDATE webhooks SET updated_at = ?2 WHERE seq = ?1",
        params![id.number as i64, now],
    )
    .context("touching a webhook")?;
    record(
        conn,
        ctx,
        audit,
        "webhook.secret_rotated",
        &found,
        json!({
            "before": {"secret": "[redacted]"},
            "after": {"secret": "[redacted]", "previous_secret_expires_in_seconds": overlap.as_secs()},
        }),
    )?;
    Ok(Some(found))
}
