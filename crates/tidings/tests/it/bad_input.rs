//! Bad input never crashes the server or gets a 500: it gets the §7 error body with a
//! message a person can act on, and nothing is written.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_domain::Scope;

use crate::harness::{TestApp, assert_error, event};

const ORG: &str = "ORG-26-090500";

async fn event_count(app: &TestApp) -> usize {
    app.walk(
        app.ingest_key(),
        &format!("/v1/events?organization_id={ORG}&limit=100"),
    )
    .await
    .len()
}

#[tokio::test]
async fn invalid_events_get_422_naming_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    app.ingest(&[event(ORG, json!({}))]).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            event(ORG, json!({"payload": {"blob": "x".repeat(65 * 1024)}})),
            "payload",
        ),
        (event(ORG, json!({"payload": "not an object"})), "payload"),
        (event(ORG, json!({"type": "invoice.exploded"})), "type"),
        (event(ORG, json!({"type": 42})), "type"),
        (event(ORG, json!({"type": "Invoice Paid"})), "type"),
        (event("ORG-26-09", json!({})), "organization_id"),
        (event("org-26-090500", json!({})), "organization_id"),
        (event(ORG, json!({"workspace_id": "WS-1"})), "workspace_id"),
        (event(ORG, json!({"workspace_id": 7})), "workspace_id"),
        (event(ORG, json!({"actor": {"type": "user"}})), "actor.id"),
        (
            event(ORG, json!({"actor": {"type": "user", "id": "has space"}})),
            "actor.id",
        ),
        (
            event(
                ORG,
                json!({"actor": {"type": "user", "id": "x".repeat(65)}}),
            ),
            "actor.id",
        ),
        (event(ORG, json!({"actor": "USR-26-000044"})), "actor"),
        (
            event(ORG, json!({"subject": {"type": "invoice", "id": ""}})),
            "subject.id",
        ),
        (
            event(ORG, json!({"created_at": "2026-01-01T00:00:00Z"})),
            "created_at",
        ),
        (
            event(ORG, json!({"organisation_id": ORG})),
            "organisation_id",
        ),
        (
            event(ORG, json!({"idempotency_key": "k".repeat(256)})),
            "idempotency_key",
        ),
        (event(ORG, json!({"idempotency_key": 5})), "idempotency_key"),
    ];
    let mut bodies: Vec<(String, &str)> = cases
        .into_iter()
        .map(|(bad, field)| (bad.to_string(), field))
        .collect();
    // The payload is stored and delivered as sent: an object with a key twice (which JSON
    // parsers read differently) is refused. Raw text, since a JSON map cannot hold it.
    let repeated = event(ORG, json!({"payload": {}})).to_string().replace(
        r#""payload":{}"#,
        r#""payload":{"amount":100,"currency":"usd","amount":1}"#,
    );
    assert!(repeated.contains(r#""amount":1}"#), "{repeated}");
    bodies.push((repeated, "payload"));
    for (bad, field) in bodies {
        let (status, body) = app
            .ingest_raw(app.ingest_key(), "application/json", bad)
            .await;
        let error = assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
        );
        let fields: Vec<&str> = error["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "expected {field} in {body}");
        assert!(error["errors"][0]["reason"].as_str().unwrap().len() > 5);
    }
    assert_eq!(event_count(&app).await, 1, "nothing was written");
}

#[tokio::test]
async fn malformed_bodies_get_400() {
    let app = TestApp::spawn().await;
    for (content_type, body) in [
        ("application/json", "{\"type\": "),
        ("application/json", "[]"),
        ("application/json", "\"event\""),
        ("application/json", "{\"events\": {}}"),
        ("application/json", "{\"events\": []}"),
        ("application/json", ""),
        ("application/json", "\u{0}\u{1}garbage"),
        ("application/x-ndjson", "{\"a\":1}\nnot json\n"),
        ("text/plain", "{}"),
    ] {
        let (status, b) = app.ingest_raw(app.ingest_key(), content_type, body).await;
        assert_error(status, &b, StatusCode::BAD_REQUEST, "invalid_request_error");
    }
    let too_many = json!({"events": vec![event(ORG, json!({})); 1001]}).to_string();
    let (status, b) = app
        .ingest_raw(app.ingest_key(), "application/json", too_many)
        .await;
    let error = assert_error(status, &b, StatusCode::BAD_REQUEST, "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("1000"));
    assert_eq!(event_count(&app).await, 0);
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let app = TestApp::spawn().await;
    let huge = vec![b' '; tidings_http::routes::ingest::MAX_BODY_BYTES + 1];
    let (status, b) = app
        .ingest_raw(app.ingest_key(), "application/json", huge)
        .await;
    assert_error(
        status,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
    );
}

#[tokio::test]
async fn bad_query_parameters_get_400_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let base = format!("/v1/events?organization_id={ORG}");
    for (query, param) in [
        (format!("{base}&limit=0"), "limit"),
        (format!("{base}&limit=101"), "limit"),
        (format!("{base}&limit=abc"), "limit"),
        (format!("{base}&limit=-5"), "limit"),
        (format!("{base}&from=yesterday"), "from"),
        (format!("{base}&from=2026-13-01"), "from"),
        (format!("{base}&to=2026-04-31"), "to"),
        (format!("{base}&from=2026-04-15&to=2026-04-14"), "from"),
        (format!("{base}&order=sideways"), "order"),
        (format!("{base}&type=invoice"), "type"),
        (format!("{base}&type=invoice.exploded"), "type"),
        (format!("{base}&subject_id=a%20b"), "subject_id"),
        (format!("{base}&organisation_id={ORG}"), "organisation_id"),
        (format!("{base}&limit=5&limit=6"), "limit"),
        (
            "/v1/events?organization_id=ORG-1".to_string(),
            "organization_id",
        ),
        (
            "/v1/events?workspace_id=WS-26-1".to_string(),
            "workspace_id",
        ),
        ("/v1/events".to_string(), "organization_id"),
        ("/v1/events?limit=10".to_string(), "organization_id"),
    ] {
        let (status, body) = app.get(&key, &query).await;
        let error = assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        assert_eq!(error["param"], param, "{query}: {body}");
    }
    let (status, body) = app.get(&key, "/v1/events/EVT-bad").await;
    let error = assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    assert_eq!(error["param"], "id");
    let (status, body) = app
        .get(&key, "/v1/events/EVT-26-000001?expand=payload")
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
}

#[tokio::test]
async fn writes_to_events_unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    for (method, path) in [
        (reqwest::Method::POST, "/v1/events"),
        (reqwest::Method::PUT, "/v1/events/EVT-26-000001"),
        (reqwest::Method::PATCH, "/v1/events/EVT-26-000001"),
        (reqwest::Method::DELETE, "/v1/events/EVT-26-000001"),
    ] {
        let r = app
            .client
            .request(method.clone(), format!("{}{path}", app.public))
            .bearer_auth(&key)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["allow"], "GET");
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        let error = assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
        );
        assert!(
            error["message"].as_str().unwrap().contains("platform"),
            "{method} {path}"
        );
    }
    let (status, body) = app.get(&key, "/v1/nothing-here").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
    );
}
