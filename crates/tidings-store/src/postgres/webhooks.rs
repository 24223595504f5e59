//! Webhooks and their signing secrets, on PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Row, Transaction};
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

fn webhook_from_row(row: &Row) -> Result<Webhook, StoreError> {
    stored::webhook(row)
}

/// The newest event number as the writer sees it: events minted earlier in this write group
/// are counted by `ctx` and not yet in `id_sequences`. Every event up to it is committed or
/// in this very transaction (numbers are minted and committed under the write lock).
pub(super) fn newest_event_seq(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
) -> Result<i64, StoreError> {
    let next = ctx.next_id(tx, "EVT")?;
    ctx.unmint("EVT");
    Ok(next as i64 - 1)
}

/// The webhook `id`, if it exists within `tenant`. Every webhook query starts here, so a
/// webhook of another organization is indistinguishable from one that does not exist.
pub(crate) fn find(
    c: &mut impl GenericClient,
    tenant: &Tenant,
    id: WebhookId,
) -> Result<Option<Webhook>, StoreError> {
    let found = c
        .query_opt(
            &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE seq = $1"),
            &[&(id.number as i64)],
        )
        .context("looking up a webhook")?
        .map(|r| webhook_from_row(&r))
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
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    new: NewWebhook,
    secret: SigningSecret,
    audit: &AuditContext,
) -> Result<Webhook, StoreError> {
    let seq = ctx.next_id(tx, "WHK")?;
    let now = ctx.now.timestamp();
    // Deliver what is recorded from now on, not the backlog.
    let start_after_seq = newest_event_seq(tx, ctx)?;
    tx.execute(
        "INSERT INTO webhooks (seq, org, workspace, url, event_types, description, status,
                               disabled_reason, start_after_seq, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        &[
            &(seq as i64),
            &new.organization_id.as_str(),
            &new.workspace_id.as_ref().map(|w| w.as_str()),
            &new.url,
            &join_patterns(&new.event_types),
            &new.description,
            &new.status.0.as_str(),
            &new.status.1,
            &start_after_seq,
            &now,
        ],
    )
    .context("inserting a webhook")?;
    tx.execute(
        "INSERT INTO webhook_secrets (webhook_seq, secret, created_at) VALUES ($1, $2, $3)",
        &[&(seq as i64), &secret.as_str(), &now],
    )
    .context("inserting a webhook secret")?;
    let created = find(tx, &Tenant::Platform, webhook_id(seq as i64, ctx.now))?
        .ok_or_else(|| StoreError::Corrupt("a webhook vanished right after insert".into()))?;
    record(
        tx,
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
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    audit: &AuditContext,
    action: &'static str,
    webhook: &Webhook,
    changes: serde_json::Value,
) -> Result<(), StoreError> {
    super::audit::append(
        tx,
        ctx,
        audit,
        crate::audit_entries::webhook_changed(action, webhook, changes),
    )
}

pub(crate) fn list(
    c: &mut impl GenericClient,
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
    query.page(c, WEBHOOK_COLUMNS, "webhooks", page, webhook_from_row)
}

pub(crate) fn update(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    update: WebhookUpdate,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(before) = find(tx, tenant, id)? else {
        return Ok(None);
    };
    let seq = id.number as i64;
    let now = ctx.now.timestamp();
    if let Some(url) = &update.url {
        tx.execute("UPDATE webhooks SET url = $2 WHERE seq = $1", &[&seq, url])
            .context("updating a webhook url")?;
    }
    if let Some(types) = &update.event_types {
        tx.execute(
            "UPDATE webhooks SET event_types = $2 WHERE seq = $1",
            &[&seq, &join_patterns(types)],
        )
        .context("updating webhook event types")?;
    }
    if let Some(description) = &update.description {
        tx.execute(
            "UPDATE webhooks SET description = $2 WHERE seq = $1",
            &[&seq, description],
        )
        .context("updating a webhook description")?;
    }
    if let Some((status, reason)) = &update.status {
        // Becoming active: deliver what is recorded from now on, not the backlog.
        let newest = newest_event_seq(tx, ctx)?;
        tx.execute(
            "UPDATE webhooks SET status = $2, disabled_reason = $3, failing_since = NULL,
                 start_after_seq = CASE WHEN $2 = 'active' AND status <> 'active'
                     THEN $4 ELSE start_after_seq END
             WHERE seq = $1",
            &[&seq, &status.as_str(), reason, &newest],
        )
        .context("updating a webhook status")?;
    }
    tx.execute(
        "UPDATE webhooks SET updated_at = $2 WHERE seq = $1",
        &[&seq, &now],
    )
    .context("touching a webhook")?;
    let after = find(tx, tenant, id)?;
    if let Some(after) = &after {
        record(
            tx,
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
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(found) = find(tx, tenant, id)? else {
        return Ok(None);
    };
    tx.execute(
        "DELETE FROM webhooks WHERE seq = $1",
        &[&(id.number as i64)],
    )
    .context("deleting a webhook")?;
    record(
        tx,
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
    c: &mut impl GenericClient,
    seq: u64,
    now: DateTime<Utc>,
) -> Result<Vec<SigningSecret>, StoreError> {
    let rows = c
        .query(
            "SELECT secret FROM webhook_secrets
             WHERE webhook_seq = $1 AND (expires_at IS NULL OR expires_at > $2)
             ORDER BY expires_at IS NULL DESC, created_at DESC",
            &[&(seq as i64), &now.timestamp()],
        )
        .context("reading webhook secrets")?;
    rows.iter()
        .map(|r| {
            SigningSecret::parse(r.get::<_, &str>(0)).map_err(|e| corrupt("webhook secret", e))
        })
        .collect()
}

pub(crate) fn rotate_secret(
    tx: &mut Transaction<'_>,
    ctx: &mut WriterCtx<'_>,
    tenant: &Tenant,
    id: WebhookId,
    secret: SigningSecret,
    overlap: Duration,
    audit: &AuditContext,
) -> Result<Option<Webhook>, StoreError> {
    let Some(found) = find(tx, tenant, id)? else {
        return Ok(None);
    };
    let seq = id.number as i64;
    let now = ctx.now.timestamp();
    let expires = now + overlap.as_secs() as i64;
    // The current secret signs on for `overlap`; older ones keep their earlier expiry.
    tx.execute(
        "UPDATE webhook_secrets SET expires_at = $2
         WHERE webhook_seq = $1 AND (expires_at IS NULL OR expires_at > $2)",
        &[&seq, &expires],
    )
    .context("expiring the old secret")?;
    tx.execute(
        "DELETE FROM webhook_secrets WHERE webhook_seq = $1 AND expires_at <= $2",
        &[&seq, &now],
    )
    .context("dropping expired secrets")?;
    tx.execute(
        "INSERT INTO webhook_secrets (webhook_seq, secret, created_at) VALUES ($1, $2, $3)",
        &[&seq, &secret.as_str(), &now],
    )
    .context("inserting the new secret")?;
    tx.execute(
        "UPDATE webhooks SET updated_at = $2 WHERE seq = $1",
        &[&seq, &now],
    )
    .context("touching a webhook")?;
    record(
        tx,
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
