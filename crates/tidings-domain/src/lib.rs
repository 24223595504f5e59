//! The Tidings domain: identifiers, the event envelope, the catalog, query filters, cursors,
//! ingest validation and keys. Pure functions and types; no I/O, no clock, no randomness.
//! Every other crate speaks these types.

pub mod audit;
pub mod catalog;
pub mod cursor;
pub mod event;
pub mod ids;
pub mod ingest;
pub mod keys;
pub mod query;

pub use catalog::{Catalog, EventType, EventTypeInfo, TypePattern};
pub use cursor::{CursorError, CursorKey};
pub use event::{Actor, ActorType, Event, NewEvent, Subject};
pub use ids::{EventId, IdError, KeyId, OrgId, Token, WorkspaceId};
pub use ingest::{FieldProblem, IngestError, IngestFormat, parse_ingest_body};
pub use keys::{ApiKey, NewApiKey, Scope};
pub use query::{
    EventFilter, EventQuery, Order, PageParams, ParamError, Params, Tenant, TimeRange,
};
pub mod webhook;
pub use webhook::parse_duration;
