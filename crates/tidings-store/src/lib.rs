//! The Tidings store: one [`Store`] trait that every backend implements, and the embedded
//! SQLite backend. Every query that touches tenant data takes a [`Tenant`] as a required
//! argument, so the organization scope is enforced here and not only in handlers.

mod audit_entries;
mod audit_types;
pub mod clock;
mod delivery_types;
mod error;
pub mod postgres;
pub mod retention;
mod routing;
mod rows;
pub mod sqlite;
mod stored;

use async_trait::async_trait;
use rand::Rng;
use std::time::Duration;
use tidings_domain::keys::KEY_SECRET_PREFIX;

use chrono::{DateTime, Utc};
use tidings_domain::audit::{AuditContext, AuditRecord, ChainedRecord};
use tidings_domain::ids::{DeliveryId, WebhookId};
use tidings_domain::webhook::{Delivery, SigningSecret, Webhook};
use tidings_domain::{
    ApiKey, CursorKey, Event, EventFilter, EventId, KeyId, NewApiKey, NewEvent, Order, OrgId,
    Tenant, TimeRange, WorkspaceId,
};

pub use audit_types::AuditFilter;
pub use clock::{Clock, ManualClock, SystemClock};
pub use delivery_types::{
    AttemptReport, ClaimRequest, ClaimedDelivery, DeliveryFilter, FanoutReport, NewWebhook,
    WebhookUpdate,
};
pub use error::StoreError;
pub use postgres::PostgresStore;
pub use retention::{RetentionPolicy, SweepReport};
pub use sqlite::SqliteStore;

/// Where a list page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items to return (the store fetches one more to learn `has_more`).
    pub limit: u32,
    pub order: Order,
    /// Sequence number of the last item of the previous page.
    pub after: Option<u64>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            has_more: false,
        }
    }
}

/// The organization a list within `tenant` covers, when it asks for `asked`: the key's own
/// organization for an organization key, whatever was asked for a platform key (`None`: no
/// organization). `Err(())` when an organization key asks for another organization: the
/// list is empty, as if that organization had nothing (never an error that would tell the
/// caller it exists). Every list of both stores scopes itself here.
pub(crate) fn list_scope<'a>(
    tenant: &'a Tenant,
    asked: Option<&'a OrgId>,
) -> Result<Option<&'a OrgId>, ()> {
    match (tenant, asked) {
        (Tenant::Org(mine), Some(asked)) if mine != asked => Err(()),
        (Tenant::Org(mine), _) => Ok(Some(mine)),
        (Tenant::Platform, asked) => Ok(asked),
    }
}

/// The text columns an event list compares for equality, each with its value: the
/// organization (as scoped by [`list_scope`]), workspace, subject type, subject and actor
/// the filter names. Both stores' event queries start from these.
pub(crate) fn event_equalities<'a>(
    org: Option<&'a str>,
    filter: &'a EventFilter,
) -> Vec<(&'static str, &'a str)> {
    [
        ("org", org),
        (
            "workspace",
            filter.workspace_id.as_ref().map(|w| w.as_str()),
        ),
        (
            "subject_type",
            filter.subject_type.as_ref().map(|t| t.as_str()),
        ),
        ("subject_id", filter.subject_id.as_ref().map(|s| s.as_str())),
        ("actor_id", filter.actor_id.as_ref().map(|a| a.as_str())),
    ]
    .into_iter()
    .filter_map(|(column, value)| value.map(|v| (column, v)))
    .collect()
}

/// Everything Tidings keeps. Implementations: [`SqliteStore`] (embedded) and [`PostgresStore`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a validated batch atomically and returns it in input order, with IDs and
    /// timestamps. Returns only once the batch is durable. For an idempotency key already
    /// used in the organization the event first recorded is returned instead of a copy.
    async fn ingest(
        &self,
        events: Vec<NewEvent>,
        audit: &AuditContext,
    ) -> Result<Vec<Event>, StoreError>;

    /// One page of events matching `filter`, within `tenant`.
    async fn list_events(
        &self,
        tenant: &Tenant,
        filter: &EventFilter,
        page: PageRequest,
    ) -> Result<Page<Event>, StoreError>;

    /// One event, if it exists within `tenant`.
    async fn get_event(&self, tenant: &Tenant, id: EventId) -> Result<Option<Event>, StoreError>;

    /// Stores a key whose secret hashes to `secret_hash`.
    async fn create_key(
        &self,
        key: NewApiKey,
        secret_hash: [u8; 32],
        audit: &AuditContext,
    ) -> Result<ApiKey, StoreError>;

    /// Every key, newest first (operators only: there is no API route for this).
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key; `None` if there is no such key. Revoking twice is harmless.
    async fn revoke_key(
        &self,
        id: KeyId,
        audit: &AuditContext,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// The active (not revoked) key whose secret hashes to `secret_hash`.
    async fn authenticate(&self, secret_hash: [u8; 32]) -> Result<Option<ApiKey>, StoreError>;

    /// The organization a workspace belongs to, if any event named it.
    async fn workspace_org(&self, workspace: &WorkspaceId) -> Result<Option<OrgId>, StoreError>;

    // --- Webhooks -------------------------------------------------------------------

    /// Stores a new webhook with its first signing secret.
    async fn create_webhook(
        &self,
        webhook: NewWebhook,
        secret: SigningSecret,
        audit: &AuditContext,
    ) -> Result<Webhook, StoreError>;

    /// Webhooks within `tenant`, optionally of one organization, newest first.
    async fn list_webhooks(
        &self,
        tenant: &Tenant,
        organization_id: Option<&OrgId>,
        page: PageRequest,
    ) -> Result<Page<Webhook>, StoreError>;

    async fn get_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> Result<Option<Webhook>, StoreError>;

    async fn update_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        update: WebhookUpdate,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError>;

    /// Deletes a webhook with its secrets, deliveries and attempts.
    async fn delete_webhook(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError>;

    /// The live signing secrets, newest first.
    async fn webhook_secrets(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> Result<Option<Vec<SigningSecret>>, StoreError>;

    /// Makes `secret` the signing secret; the previous ones keep signing for `overlap`.
    async fn rotate_webhook_secret(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        secret: SigningSecret,
        overlap: Duration,
        audit: &AuditContext,
    ) -> Result<Option<Webhook>, StoreError>;

    // --- Deliveries -----------------------------------------------------------------

    /// Reads events not yet fanned out (up to `max_events`) and creates a delivery for every
    /// active webhook that wants each of them.
    async fn fan_out(&self, max_events: usize) -> Result<FanoutReport, StoreError>;

    /// Leases due deliveries to a worker.
    async fn claim_deliveries(
        &self,
        claim: ClaimRequest,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;

    /// Records an attempt and applies its verdict.
    async fn record_attempt(&self, report: AttemptReport) -> Result<(), StoreError>;

    /// When the earliest pending delivery is due, if any.
    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A webhook's deliveries with their attempts, newest first; `None` if no such webhook.
    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        filter: &DeliveryFilter,
        page: PageRequest,
    ) -> Result<Option<Page<Delivery>>, StoreError>;

    /// Schedules an immediate manual attempt.
    async fn retry_delivery(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        delivery: DeliveryId,
        audit: &AuditContext,
    ) -> Result<Option<Delivery>, StoreError>;

    /// Creates a delivery (trigger `replay`) for every event in `range` the webhook wants.
    /// Refuses with `TooMany` beyond `limit` events.
    async fn replay(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        range: TimeRange,
        limit: usize,
        audit: &AuditContext,
    ) -> Result<Option<usize>, StoreError>;

    /// Creates a test delivery leased to `owner`, for an attempt made right away.
    async fn create_test_delivery(
        &self,
        tenant: &Tenant,
        webhook: WebhookId,
        owner: &str,
        audit: &AuditContext,
    ) -> Result<Option<ClaimedDelivery>, StoreError>;

    // --- Retention ------------------------------------------------------------------

    /// One bounded pass of the retention sweep: deletes at most `batch` rows of each kind
    /// older than the policy allows. Call again until it reports nothing.
    async fn sweep_retention(
        &self,
        policy: RetentionPolicy,
        batch: usize,
    ) -> Result<SweepReport, StoreError>;

    // --- Audit log ----------------------------------------------------------------

    /// Audit records of one chain (an organization, or the platform's), newest first.
    async fn list_audit_records(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditRecord>, StoreError>;

    /// The hash a chain starts from (zeros, or the retention checkpoint's).
    async fn audit_chain_start(&self, chain: &str) -> Result<[u8; 32], StoreError>;

    /// Up to `limit` audit records of every chain after sequence number `after` (from the
    /// first row when `None`), oldest first, each with its chain: what `tidings audit
    /// verify` reads, every row of the log whatever any index says.
    async fn audit_log_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, ChainedRecord)>, StoreError>;

    // --- Operations -----------------------------------------------------------------

    /// The newest event number below which every event is committed (readers that walk
    /// oldest-first stop here).
    async fn high_water_mark(&self) -> Result<u64, StoreError>;

    /// Pending deliveries, and when the oldest of them was created.
    async fn delivery_backlog(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError>;

    /// Bytes the store takes on disk (or in the database), if known.
    async fn size_bytes(&self) -> Result<u64, StoreError>;

    /// The deployment's cursor-sealing key.
    fn cursor_key(&self) -> &CursorKey;

    /// Whether the store can answer queries now (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A fresh API key secret: `tdk_` and 32 random base62 characters (~190 bits).
pub fn generate_key_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{KEY_SECRET_PREFIX}{body}")
}
