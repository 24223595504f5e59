//! SPEC §5: single, batch and NDJSON ingest, idempotency, all-or-nothing batches.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;
use tidings_domain::Scope;

use crate::harness::{TestApp, assert_error, event};

const ORG: &str = "ORG-26-090500";
const OTHER: &str = "ORG-26-090501";

#[tokio::test]
async fn single_event_gets_an_id_and_timestamp_and_reads_back_identically() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .ingest_raw(
            app.ingest_key(),
            "application/json",
            event(ORG, json!({"workspace_id": "WS-26-000021"})).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let recorded = &body["data"][0];
    let id = recorded["id"].as_str().unwrap();
    assert!(
        id.starts_with("EVT-26-") && id.len() == "EVT-26-000001".len(),
        "{id}"
    );
    assert_eq!(recorded["created_at"], "2026-04-14T08:00:00Z");
    assert_eq!(recorded["workspace_id"], "WS-26-000021");
    assert_eq!(recorded["payload"]["new_status"], "active");

    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let (status, fetched) = app.get(&key, &format!("/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &fetched, recorded,
        "GET returns the envelope exactly as recorded"
    );
    let keys: Vec<&String> = fetched.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "type",
            "organization_id",
            "workspace_id",
            "actor",
            "subject",
            "payload",
            "created_at"
        ]
    );
}

#[tokio::test]
async fn payload_keys_keep_the_producers_order() {
    let app = TestApp::spawn().await;
    let body = r#"{"type":"invoice.paid","organization_id":"ORG-26-090500","actor":{"type":"system","id":"billing"},"subject":{"type":"invoice","id":"INV-1"},"payload":{"zeta":1,"alpha":{"y":2,"b":3}}}"#;
    let (status, recorded) = app
        .ingest_raw(app.ingest_key(), "application/json", body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let payload = serde_json::to_string(&recorded["data"][0]["payload"]).unwrap();
    assert_eq!(payload, r#"{"zeta":1,"alpha":{"y":2,"b":3}}"#);
}

/// The payload is served as sent, minus whitespace: numbers keep their spelling, and an
/// integer past 64 bits is not rounded into a float.
#[tokio::test]
async fn payload_numbers_and_escapes_are_served_as_sent() {
    let app = TestApp::spawn().await;
    let body = r#"{"type":"invoice.paid","organization_id":"ORG-26-090500","actor":{"type":"system","id":"billing"},"subject":{"type":"invoice","id":"INV-1"},
        "payload": {
            "amount": 12345678901234567890123,
            "rate": 1.50,
            "note": "a  \"quoted\"\tnote \u00e9"
        }}"#;
    let (status, recorded) = app
        .ingest_raw(app.ingest_key(), "application/json", body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    let id = recorded["data"][0]["id"].as_str().unwrap();
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let text = app
        .client
        .get(format!("{}/v1/events/{id}", app.public))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#""payload":{"amount":12345678901234567890123,"rate":1.50,"note":"a  \"quoted\"\tnote \u00e9"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn batches_keep_input_order_and_ids_increase() {
    let app = TestApp::spawn().await;
    let types = [
        "invoice.finalized",
        "invoice.paid",
        "task.created",
        "user.invited",
    ];
    let events: Vec<_> = types
        .iter()
        .map(|t| event(ORG, json!({"type": t})))
        .collect();
    let recorded = app.ingest(&events).await;
    let got: Vec<&str> = recorded
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(got, types);
    let numbers: Vec<u64> = recorded
        .iter()
        .map(|e| e["id"].as_str().unwrap()[7..].parse().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
}

#[tokio::test]
async fn ndjson_bodies_are_accepted() {
    let app = TestApp::spawn().await;
    let body = format!(
        "{}\n{}\n",
        event(ORG, json!({"type": "task.created"})),
        event(ORG, json!({"type": "task.assigned"}))
    );
    let (status, recorded) = app
        .ingest_raw(app.ingest_key(), "application/x-ndjson", body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{recorded}");
    assert_eq!(recorded["data"].as_array().unwrap().len(), 2);
    assert_eq!(recorded["data"][1]["type"], "task.assigned");
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_event() {
    let app = TestApp::spawn().await;
    let e = event(ORG, json!({"idempotency_key": "line-84729-activation"}));
    let first = app.ingest(std::slice::from_ref(&e)).await;
    app.clock.advance(chrono::Duration::seconds(30));
    // Same key, different body: still the first event, never a second copy.
    let mut changed = e.clone();
    changed["payload"] = json!({"something": "else"});
    let again = app.ingest(&[changed.clone(), e.clone()]).await;
    assert_eq!(again[0], first[0]);
    assert_eq!(again[1], first[0]);
    // Within one batch, the second use of a new key returns the first of the batch.
    let fresh = event(ORG, json!({"idempotency_key": "fresh"}));
    let both = app.ingest(&[fresh.clone(), fresh]).await;
    assert_eq!(both[0], both[1]);
    // Keys are per organization.
    let other = app
        .ingest(&[event(
            OTHER,
            json!({"idempotency_key": "line-84729-activation"}),
        )])
        .await;
    assert_ne!(other[0]["id"], first[0]["id"]);

    let key = app.platform_key(&[Scope::EventsRead]).await;
    let all = app
        .walk(&key, &format!("/v1/events?organization_id={ORG}"))
        .await;
    assert_eq!(all.len(), 2, "one event per distinct key");
}

#[tokio::test]
async fn one_bad_event_rejects_the_whole_batch_and_names_it() {
    let app = TestApp::spawn().await;
    let events = vec![
        event(ORG, json!({})),
        event(ORG, json!({"type": "invoice.exploded"})),
        event(ORG, json!({"actor": {"type": "robot", "id": "R2"}})),
    ];
    let (status, body) = app
        .ingest_raw(
            app.ingest_key(),
            "application/json",
            json!({ "events": events }).to_string(),
        )
        .await;
    let error = assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request_error",
    );
    let problems: HashSet<(u64, String)> = error["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        problems,
        HashSet::from([(1, "type".to_string()), (2, "actor.type".to_string())])
    );
    let key = app.platform_key(&[Scope::EventsRead]).await;
    assert!(
        app.walk(&key, &format!("/v1/events?organization_id={ORG}"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_workspace_belongs_to_one_organization() {
    let app = TestApp::spawn().await;
    app.ingest(&[event(ORG, json!({"workspace_id": "WS-26-000021"}))])
        .await;
    let (status, body) = app
        .ingest_raw(
            app.ingest_key(),
            "application/json",
            json!({"events": [
                event(OTHER, json!({})),
                event(OTHER, json!({"workspace_id": "WS-26-000021"})),
            ]})
            .to_string(),
        )
        .await;
    let error = assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request_error",
    );
    assert_eq!(error["errors"][0]["index"], 1);
    assert_eq!(error["errors"][0]["field"], "workspace_id");
    let key = app.platform_key(&[Scope::EventsRead]).await;
    assert!(
        app.walk(&key, &format!("/v1/events?organization_id={OTHER}"))
            .await
            .is_empty(),
        "nothing of the rejected batch was written"
    );
    // The same new workspace for two organizations inside one batch is refused too.
    let (status, _) = app
        .ingest_raw(
            app.ingest_key(),
            "application/json",
            json!({"events": [
                event(ORG, json!({"workspace_id": "WS-26-000099"})),
                event(OTHER, json!({"workspace_id": "WS-26-000099"})),
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // ...and, since nothing was written, the workspace is still free for either.
    app.ingest(&[event(OTHER, json!({"workspace_id": "WS-26-000099"}))])
        .await;
}

#[tokio::test]
async fn ingest_needs_a_platform_key_with_the_ingest_scope() {
    let app = TestApp::spawn().await;
    let body = event(ORG, json!({})).to_string();
    let (status, b) = app
        .ingest_raw("tdk_nope", "application/json", body.clone())
        .await;
    assert_error(status, &b, StatusCode::UNAUTHORIZED, "authentication_error");
    let reader = app.platform_key(&[Scope::EventsRead]).await;
    let (status, b) = app
        .ingest_raw(&reader, "application/json", body.clone())
        .await;
    assert_error(status, &b, StatusCode::FORBIDDEN, "permission_error");
    let org_key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let (status, b) = app.ingest_raw(&org_key, "application/json", body).await;
    assert_error(status, &b, StatusCode::FORBIDDEN, "permission_error");
}

#[tokio::test]
async fn concurrent_single_event_producers_all_commit_with_unique_ids() {
    let app = TestApp::spawn().await;
    let producers = 32;
    let per_producer = 15;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let client = app.client.clone();
        let url = format!("{}/internal/v1/events", app.ingest);
        let key = app.ingest_key().to_string();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_producer {
                let body = event(ORG, json!({"idempotency_key": format!("p{p}-{i}")}));
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let v: serde_json::Value = r.json().await.unwrap();
                ids.push(v["data"][0]["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(all.insert(id), "duplicate id");
        }
    }
    assert_eq!(all.len(), producers * per_producer);
}
