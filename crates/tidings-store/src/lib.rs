//! The Tidings store: one [`Store`] trait that every backend implements, and the embedded
//! SQLite backend. Every query that touches tenant data takes a [`Tenant`] as a required
//! argument, so the organization scope is enforced here and not only in handlers.

pub mod clock;
mod error;
pub mod sqlite;

use async_trait::async_trait;
use rand::Rng;
use tidings_domain::keys::KEY_SECRET_PREFIX;
use tidings_domain::{
    ApiKey, CursorKey, Event, EventFilter, EventId, KeyId, NewApiKey, NewEvent, Order, Tenant,
};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
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

/// Everything Tidings keeps. Implementations: [`SqliteStore`] (embedded), PostgreSQL (later).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a validated batch atomically and returns it in input order, with IDs and
    /// timestamps. Returns only once the batch is durable. For an idempotency key already
    /// used in the organization the event first recorded is returned instead of a copy.
    async fn ingest(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, StoreError>;

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
    async fn create_key(&self, key: NewApiKey, secret_hash: [u8; 32])
    -> Result<ApiKey, StoreError>;

    /// Every key, newest first (operators only: there is no API route for this).
    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Revokes a key; `None` if there is no such key. Revoking twice is harmless.
    async fn revoke_key(&self, id: KeyId) -> Result<Option<ApiKey>, StoreError>;

    /// The active (not revoked) key whose secret hashes to `secret_hash`.
    async fn authenticate(&self, secret_hash: [u8; 32]) -> Result<Option<ApiKey>, StoreError>;

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
