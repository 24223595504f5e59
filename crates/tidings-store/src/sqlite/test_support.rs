//! Helpers of the embedded store's own tests.

use tidings_domain::audit::{AuditContext, AuditRecord};
use tidings_domain::{
    Catalog, Event, EventFilter, IngestFormat, Order, Tenant, TypePattern, parse_ingest_body,
};

use crate::audit_types::AuditFilter;
use crate::sqlite::SqliteStore;
use crate::{PageRequest, Store};

pub(crate) const ORG: &str = "ORG-26-090500";

pub(crate) fn filter() -> EventFilter {
    EventFilter {
        organization_id: Some(ORG.parse().unwrap()),
        ..EventFilter::default()
    }
}

pub(crate) async fn numbers(store: &SqliteStore, filter: EventFilter) -> Vec<u64> {
    let page = PageRequest {
        limit: 100,
        order: Order::Asc,
        after: None,
    };
    let found = store
        .list_events(&Tenant::Platform, &filter, page)
        .await
        .unwrap();
    found.items.iter().map(|e| e.id.number).collect()
}

/// Every audit record `filter` lists, following its pages of `limit` in `order`.
pub(crate) async fn audit_pages(
    store: &SqliteStore,
    filter: &AuditFilter,
    order: Order,
    limit: u32,
) -> Vec<AuditRecord> {
    let mut found: Vec<AuditRecord> = Vec::new();
    loop {
        let after = found.last().map(|r| r.id.number);
        let page = PageRequest {
            limit,
            order,
            after,
        };
        let page = store
            .list_audit_records(&Tenant::Platform, filter, page)
            .await
            .unwrap();
        found.extend(page.items);
        if !page.has_more {
            return found;
        }
    }
}

pub(crate) async fn ingest(store: &SqliteStore, body: &str) -> Vec<Event> {
    let events =
        parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin()).unwrap();
    store.ingest(events, &AuditContext::system()).await.unwrap()
}

/// What `ORG`'s events found by each filter: the organization alone, then with a type,
/// a subject, an actor; and a workspace alone.
pub(crate) async fn found_by_each(
    store: &SqliteStore,
    event_type: &str,
    subject: &str,
    actor: &str,
    workspace: &str,
) -> Vec<Vec<u64>> {
    let filters = [
        filter(),
        EventFilter {
            types: vec![TypePattern::parse(event_type).unwrap()],
            ..filter()
        },
        EventFilter {
            subject_id: Some(subject.parse().unwrap()),
            ..filter()
        },
        EventFilter {
            actor_id: Some(actor.parse().unwrap()),
            ..filter()
        },
        EventFilter {
            workspace_id: Some(workspace.parse().unwrap()),
            ..EventFilter::default()
        },
    ];
    let mut found = Vec::new();
    for f in filters {
        found.push(numbers(store, f).await);
    }
    found
}
