//! What the audit log records for each action of the store: one definition, used by both
//! backends, so the two can never record an action differently.

use std::collections::HashMap;

use serde_json::{Value, json};
use tidings_domain::audit::{AuditEntry, AuditResource};
use tidings_domain::ids::{DeliveryId, WebhookId};
use tidings_domain::webhook::{DeliveryStatus, Webhook};
use tidings_domain::{ApiKey, Event, OrgId, TimeRange};

fn key_resource(key: &ApiKey) -> AuditResource {
    AuditResource {
        resource_type: "api_key".into(),
        id: key.id.to_string(),
    }
}

fn webhook_resource(id: WebhookId) -> AuditResource {
    AuditResource {
        resource_type: "webhook".into(),
        id: id.to_string(),
    }
}

pub(crate) fn key_created(created: &ApiKey) -> AuditEntry {
    AuditEntry {
        organization_id: created.organization_id.clone(),
        action: "api_key.created",
        resource: key_resource(created),
        // Never the secret, nor its hash.
        changes: json!({"after": created}),
    }
}

pub(crate) fn key_revoked(before: &ApiKey, after: &Option<ApiKey>) -> AuditEntry {
    AuditEntry {
        organization_id: before.organization_id.clone(),
        action: "api_key.revoked",
        resource: key_resource(before),
        changes: json!({"before": before, "after": after}),
    }
}

/// An action on `webhook` (`webhook.created`, `.updated`, `.deleted`, `.secret_rotated`).
pub(crate) fn webhook_changed(
    action: &'static str,
    webhook: &Webhook,
    changes: Value,
) -> AuditEntry {
    AuditEntry {
        organization_id: Some(webhook.organization_id.clone()),
        action,
        resource: webhook_resource(webhook.id),
        changes,
    }
}

pub(crate) fn delivery_retried(
    org: OrgId,
    webhook: WebhookId,
    delivery: DeliveryId,
    before: DeliveryStatus,
) -> AuditEntry {
    AuditEntry {
        organization_id: Some(org),
        action: "webhook.delivery_retried",
        resource: AuditResource {
            resource_type: "delivery".into(),
            id: delivery.to_string(),
        },
        changes: json!({
            "before": {"status": before},
            "after": {"status": "pending", "trigger": "manual", "webhook_id": webhook.to_string()},
        }),
    }
}

pub(crate) fn webhook_replayed(
    org: OrgId,
    webhook: WebhookId,
    range: &TimeRange,
    replayed: usize,
) -> AuditEntry {
    AuditEntry {
        organization_id: Some(org),
        action: "webhook.replayed",
        resource: webhook_resource(webhook),
        changes: json!({"after": {
            "from": range.from.map(|t| tidings_domain::event::format_timestamp(&t)),
            "to": range.to.map(|t| tidings_domain::event::format_timestamp(&t)),
            "replayed": replayed,
        }}),
    }
}

pub(crate) fn webhook_tested(
    org: OrgId,
    webhook: WebhookId,
    delivery: Option<DeliveryId>,
) -> AuditEntry {
    AuditEntry {
        organization_id: Some(org),
        action: "webhook.tested",
        resource: webhook_resource(webhook),
        changes: json!({"after": {"delivery_id": delivery.map(|d| d.to_string())}}),
    }
}

/// The audit records of an ingest batch: one `events.ingested` per organization, in order of
/// first appearance, naming its first and last event and the count.
pub(crate) fn batch_audit_entries(recorded: &[Event]) -> Vec<AuditEntry> {
    let mut per_org: Vec<(&OrgId, &Event, &Event, usize)> = Vec::new();
    // Where each organization is in `per_org` (a batch of 1,000 spans dozens).
    let mut place: HashMap<&OrgId, usize> = HashMap::new();
    for e in recorded {
        let index = *place.entry(&e.organization_id).or_insert(per_org.len());
        match per_org.get_mut(index) {
            Some(entry) => {
                if e.id.number < entry.1.id.number {
                    entry.1 = e;
                }
                if e.id.number > entry.2.id.number {
                    entry.2 = e;
                }
                entry.3 += 1;
            }
            None => per_org.push((&e.organization_id, e, e, 1)),
        }
    }
    per_org
        .into_iter()
        .map(|(org, first, last, count)| AuditEntry {
            organization_id: Some(org.clone()),
            action: "events.ingested",
            resource: AuditResource {
                resource_type: "event_batch".into(),
                id: first.id.to_string(),
            },
            changes: json!({"after": {
                "count": count,
                "first_event_id": first.id.to_string(),
                "last_event_id": last.id.to_string(),
            }}),
        })
        .collect()
}
