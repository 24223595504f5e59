//! SPEC §8: keyset pagination; cursors are opaque, sealed and bound to their query.

use std::collections::HashSet;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::json;
use tidings_domain::Scope;

use crate::harness::{TestApp, assert_error, event};

const ORG: &str = "ORG-26-090500";

fn number(id: &serde_json::Value) -> u64 {
    id.as_str().unwrap()[7..].parse().unwrap()
}

#[test]
fn walking_all_pages_returns_each_existing_event_once_even_during_ingest() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, key) = rt.block_on(async {
        let app = TestApp::spawn().await;
        for chunk in 0..6 {
            let batch: Vec<_> = (0..50)
                .map(|i| {
                    let t = ["invoice.paid", "task.created", "user.invited"][(chunk + i) % 3];
                    event(ORG, json!({"type": t}))
                })
                .collect();
            app.ingest(&batch).await;
            app.clock.advance(chrono::Duration::minutes(7));
        }
        let key = app.org_key(ORG, &[Scope::EventsRead]).await;
        (app, key)
    });
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        1u32..=100,
        any::<bool>(),
        prop::sample::select(vec![
            "",
            "&type=invoice.paid",
            "&type=invoice.*,user.invited",
        ]),
    );
    let result = runner.run(&strategy, |(limit, asc, types)| {
        rt.block_on(async {
            let order = if asc { "&order=asc" } else { "" };
            let base = format!("/v1/events?organization_id={ORG}{types}{order}&limit=500");
            // The set that exists when the walk begins, read in one go with a platform key.
            let before: Vec<u64> = app
                .walk(app.ingest_key(), &base.replace("limit=500", "limit=100"))
                .await
                .iter()
                .map(|e| number(&e["id"]))
                .collect();
            // Keep ingesting while walking.
            let producer = {
                let client = app.client.clone();
                let url = format!("{}/internal/v1/events", app.ingest);
                let ingest_key = app.ingest_key().to_string();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let body = json!({"events": [event(ORG, json!({"type": "invoice.paid"})), event(ORG, json!({"type": "user.invited"}))]});
                        let r = client.post(&url).bearer_auth(&ingest_key).json(&body).send().await.unwrap();
                        assert_eq!(r.status(), StatusCode::CREATED);
                    }
                })
            };
            let walked: Vec<u64> = app
                .walk(&key, &base.replace("limit=500", &format!("limit={limit}")))
                .await
                .iter()
                .map(|e| number(&e["id"]))
                .collect();
            producer.await.unwrap();

            let unique: HashSet<u64> = walked.iter().copied().collect();
            prop_assert_eq!(unique.len(), walked.len(), "no duplicates");
            let mut sorted = walked.clone();
            sorted.sort_unstable();
            if !asc {
                sorted.reverse();
            }
            prop_assert_eq!(&sorted, &walked, "strict order");
            for id in &before {
                prop_assert!(unique.contains(id), "event {} existed when the walk began", id);
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test]
async fn tampered_foreign_and_malformed_cursors_are_400s() {
    let app = TestApp::spawn().await;
    let events: Vec<_> = (0..5).map(|_| event(ORG, json!({}))).collect();
    app.ingest(&events).await;
    app.ingest(&[event("ORG-26-090501", json!({}))]).await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let (_, page) = app
        .get(&key, &format!("/v1/events?organization_id={ORG}&limit=2"))
        .await;
    let cursor = page["meta"]["cursor"].as_str().unwrap().to_string();

    let mut tampered: Vec<char> = cursor.chars().collect();
    tampered[4] = if tampered[4] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for (what, query) in [
        (
            "tampered",
            format!("organization_id={ORG}&limit=2&cursor={tampered}"),
        ),
        (
            "garbage",
            format!("organization_id={ORG}&limit=2&cursor=not-a-cursor"),
        ),
        (
            "other filters",
            format!("organization_id={ORG}&limit=2&type=invoice.paid&cursor={cursor}"),
        ),
        (
            "other order",
            format!("organization_id={ORG}&limit=2&order=asc&cursor={cursor}"),
        ),
    ] {
        let (status, body) = app.get(&key, &format!("/v1/events?{query}")).await;
        let error = assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        assert_eq!(error["param"], "cursor", "{what}");
    }
    // Another tenant's key cannot reuse the cursor either.
    let platform = app.platform_key(&[Scope::EventsRead]).await;
    let (status, _) = app
        .get(
            &platform,
            &format!("/v1/events?organization_id={ORG}&limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A different limit is fine: the cursor is a position, not a page number.
    let (status, body) = app
        .get(
            &key,
            &format!("/v1/events?organization_id={ORG}&limit=3&cursor={cursor}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert_eq!(body["meta"]["has_more"], false);
}

#[tokio::test]
async fn default_page_is_25_newest_first() {
    let app = TestApp::spawn().await;
    let events: Vec<_> = (0..30).map(|_| event(ORG, json!({}))).collect();
    let recorded = app.ingest(&events).await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let (_, body) = app
        .get(&key, &format!("/v1/events?organization_id={ORG}"))
        .await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 25);
    assert_eq!(data[0]["id"], recorded[29]["id"]);
    assert_eq!(body["meta"]["has_more"], true);
}
