//! Request and result types of the webhook part of the [`crate::Store`] trait.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tidings_domain::webhook::{Attempt, AttemptTrigger, DeliveryStatus, SigningSecret};
use tidings_domain::{Event, NewEvent, OrgId, TimeRange, TypePattern, WorkspaceId};

pub use tidings_domain::ids::{DeliveryId, WebhookId};

/// A webhook to create.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub organization_id: OrgId,
    pub workspace_id: Option<WorkspaceId>,
    pub url: String,
    pub event_types: Vec<TypePattern>,
    pub description: Option<String>,
    /// The outcome of the verification challenge, run before the webhook is stored:
    /// `active`, or `unverified` with the reason.
    pub status: (tidings_domain::webhook::WebhookStatus, Option<String>),
}

/// Changes to a webhook; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    pub url: Option<String>,
    pub event_types: Option<Vec<TypePattern>>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    /// New status and the reason (for `disabled`). Becoming `active` starts fan-out from the
    /// newest event: a webhook receives events recorded while it is active.
    pub status: Option<(tidings_domain::webhook::WebhookStatus, Option<String>)>,
}

/// Filters of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<tidings_domain::EventId>,
    pub range: TimeRange,
}

/// What one fan-out pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    pub events_scanned: usize,
    pub deliveries_created: usize,
}

/// Which due deliveries a worker wants.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Identifies the worker holding the lease.
    pub owner: String,
    /// How long the lease lasts; after it, another worker may take the delivery.
    pub lease: Duration,
    pub limit: usize,
    /// At most this many per webhook in one claim.
    pub per_webhook: usize,
    /// Webhooks with attempts already in flight in this worker, and how many: each gets at
    /// most `per_webhook` minus that.
    pub busy: Vec<(WebhookId, usize)>,
}

/// A delivery leased to a worker, with everything needed to attempt it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub organization_id: OrgId,
    pub url: String,
    /// Live secrets, newest first.
    pub secrets: Vec<SigningSecret>,
    /// `None` for a test message.
    pub event: Option<Event>,
    pub event_type: String,
    pub trigger: AttemptTrigger,
    /// The number this attempt will carry (1 for the first).
    pub attempt_number: u32,
    /// A manual retry of a finished delivery: one attempt, no schedule.
    pub final_on_failure: bool,
    /// Since when every attempt to this endpoint has failed.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The result of one attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub delivery_id: DeliveryId,
    pub webhook_id: WebhookId,
    /// The lease holder; a report from a worker that lost its lease records the attempt but
    /// does not change the delivery.
    pub owner: String,
    pub attempt: Attempt,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Disable the webhook with this reason.
    pub disable_webhook: Option<String>,
    /// `webhook.delivery_failed` (or another event) to record with the attempt.
    pub event: Option<NewEvent>,
}
