//! SPEC §4 operations: `/metrics` and `/v1/openapi.json`, checked by independent parsers.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_domain::Scope;

use crate::harness::{TestApp, event};

const ORG: &str = "ORG-26-090500";

fn python() -> String {
    std::env::var("TIDINGS_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("TIDINGS_TEST_PYTHON is not set: run ./scripts/test"))
}

async fn metrics(app: &TestApp) -> String {
    let r = app
        .client
        .get(format!("{}/metrics", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// Parses the exposition with the official Prometheus client library and returns
/// `{"name{labels}": value}` for every sample.
fn parse(text: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            r#"import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))
        out[f'{s.name}{{{labels}}}'] = s.value
print(json.dumps(out))"#,
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "not valid Prometheus text: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(samples: &Value, name: &str) -> f64 {
    samples[name].as_f64().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_real_traffic_and_parse_as_prometheus_text() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let before = parse(&metrics(&app).await);
    let batch: Vec<_> = (0..7).map(|_| event(ORG, json!({}))).collect();
    app.ingest(&batch).await;
    for _ in 0..3 {
        app.get(&key, &format!("/v1/events?organization_id={ORG}"))
            .await;
    }
    let text = metrics(&app).await;
    let after = parse(&text);
    // Metrics are process-wide and other tests run alongside: compare deltas, at least.
    assert!(
        value(&after, "tidings_events_ingested_total{}")
            - value(&before, "tidings_events_ingested_total{}")
            >= 7.0
    );
    let route = "tidings_http_requests_total{method=GET,route=/v1/events,status=200}";
    assert!(
        value(&after, route) - value(&before, route) >= 3.0,
        "{text}"
    );
    assert!(
        value(
            &after,
            "tidings_http_request_duration_seconds_count{method=GET,route=/v1/events}"
        ) >= 3.0
    );
    assert!(value(&after, "tidings_ingest_batch_size_count{}") >= 1.0);
    for gauge in [
        "tidings_store_size_bytes{}",
        "tidings_webhook_backlog{}",
        "tidings_webhook_oldest_pending_seconds{}",
    ] {
        assert!(after.get(gauge).is_some(), "{gauge} is exported");
    }
    assert!(value(&after, "tidings_store_size_bytes{}") > 0.0);
}

/// Fills `{param}` segments with values that parse, so a route answers from its handler.
fn concrete(path: &str) -> String {
    path.replace("{id}", "WHK-26-000001")
        .replace("{delivery_id}", "DLV-26-000001")
        .replace("/v1/events/WHK-26-000001", "/v1/events/EVT-26-000001")
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_lists_exactly_the_routes_served() {
    let app = TestApp::spawn().await;
    let key = app
        .org_key(
            ORG,
            &[
                Scope::EventsRead,
                Scope::WebhooksRead,
                Scope::WebhooksWrite,
                Scope::AuditLogsRead,
            ],
        )
        .await;
    let r = app
        .client
        .get(format!("{}/v1/openapi.json", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "invalid OpenAPI: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every documented operation is served by its own handler (not the 404/405 fallbacks).
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let url = format!("{}{}", app.public, concrete(path));
            let mut request = app
                .client
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(&key)
                .timeout(std::time::Duration::from_secs(5));
            if path.ends_with("/stream") {
                request = request.query(&[("organization_id", ORG)]);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            if path.ends_with("/stream") {
                assert_eq!(status, StatusCode::OK);
                continue;
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(
                !message.starts_with("no such route")
                    && !message.starts_with("this route does not accept"),
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    assert!(operations >= 25, "{operations} operations");
    // Everything is documented: the 405s of events too.
    assert!(doc["paths"]["/v1/events"]["post"].is_object());
    assert!(doc["paths"]["/v1/events/{id}"]["delete"].is_object());
    assert!(doc["paths"]["/v1/events/stream"]["get"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
