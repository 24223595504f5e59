//! One module per resource; a route is found by its path.

pub mod audit_logs;
pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod health;
pub mod ingest;
pub mod stream;
pub mod webhooks;
