//! Tenancy in the store layer itself, on both stores: an organization's lists never show
//! another organization's events, webhooks or audit records, whatever filter is asked for,
//! and a single lookup of another organization's webhook finds nothing. (The HTTP layer
//! refuses most of these requests before the store; this is the boundary behind it.) The
//! PostgreSQL half needs the test cluster of `./scripts/test`.

mod common;

use tidings_domain::audit::AuditContext;
use tidings_domain::webhook::{SigningSecret, WebhookStatus};
use tidings_domain::{
    Catalog, EventFilter, IngestFormat, Order, OrgId, Tenant, TypePattern, parse_ingest_body,
};
use tidings_store::{AuditFilter, NewWebhook, PageRequest, PostgresStore, SqliteStore, Store};

const MINE: &str = "ORG-26-000101";
const THEIRS: &str = "ORG-26-000102";

fn page() -> PageRequest {
    PageRequest {
        limit: 100,
        order: Order::Desc,
        after: None,
    }
}

async fn lists_stay_within_the_organization(store: &impl Store) {
    let (mine, theirs): (OrgId, OrgId) = (MINE.parse().unwrap(), THEIRS.parse().unwrap());
    for org in [MINE, THEIRS] {
        let body = format!(
            r#"{{"type":"service_line.activated","organization_id":"{org}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"service_line","id":"LIN-26-000001"}},"payload":{{}}}}"#
        );
        let events = parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin())
            .expect("valid event");
        store
            .ingest(events, &AuditContext::system())
            .await
            .expect("ingest");
    }
    let their_hook = store
        .create_webhook(
            NewWebhook {
                organization_id: theirs.clone(),
                workspace_id: None,
                url: "https://example.com/hook".into(),
                event_types: vec![TypePattern::All],
                description: None,
                status: (WebhookStatus::Active, None),
            },
            SigningSecret::from_random([7; 24]),
            &AuditContext::system(),
        )
        .await
        .expect("webhook");
    let me = Tenant::Org(mine.clone());

    for asked in [Some(theirs.clone()), None] {
        let events = store
            .list_events(
                &me,
                &EventFilter {
                    organization_id: asked.clone(),
                    ..EventFilter::default()
                },
                page(),
            )
            .await
            .expect("events");
        assert!(
            events.items.iter().all(|e| e.organization_id == mine),
            "events asked for {asked:?}"
        );
        assert_eq!(events.items.len(), usize::from(asked.is_none()));

        let hooks = store
            .list_webhooks(&me, asked.as_ref(), page())
            .await
            .expect("webhooks");
        assert!(hooks.items.is_empty(), "webhooks asked for {asked:?}");

        let audit = store
            .list_audit_records(
                &me,
                &AuditFilter {
                    organization_id: asked.clone(),
                    ..AuditFilter::default()
                },
                page(),
            )
            .await
            .expect("audit");
        assert!(
            audit
                .items
                .iter()
                .all(|r| r.organization_id.as_ref() == Some(&mine)),
            "audit asked for {asked:?}"
        );
        assert_eq!(audit.items.is_empty(), asked.is_some());
    }
    assert!(
        store
            .get_webhook(&me, their_hook.id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_webhook(&Tenant::Org(theirs), their_hook.id)
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn sqlite_lists_stay_within_the_organization() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("store");
    lists_stay_within_the_organization(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lists_stay_within_the_organization() {
    let url = common::fresh_database("tidings_tenancy");
    let store = PostgresStore::connect(&url).expect("store");
    lists_stay_within_the_organization(&store).await;
}
