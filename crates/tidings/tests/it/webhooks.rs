//! SPEC §4 Webhooks and §10: subscriptions, signed deliveries to real local receivers,
//! retries, exhaustion, 410, verification, rotation, isolation of slow endpoints, SSRF.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tidings_domain::Scope;
use tidings_domain::webhook::SigningSecret;

use crate::harness::{TestApp, assert_error, event};
use crate::receiver::{Plan, Received, Receiver};

pub const ORG: &str = "ORG-26-090500";
const OTHER: &str = "ORG-26-090501";
const WAIT: Duration = Duration::from_secs(20);

pub async fn writer_key(app: &TestApp, org: &str) -> String {
    app.org_key(
        org,
        &[Scope::WebhooksRead, Scope::WebhooksWrite, Scope::EventsRead],
    )
    .await
}

/// Creates a webhook; returns (webhook JSON, secret).
pub async fn create_webhook(app: &TestApp, key: &str, url: &str, types: Value) -> (Value, String) {
    let (status, body) = app
        .send(
            Method::POST,
            key,
            "/v1/webhooks",
            Some(json!({"url": url, "event_types": types, "description": "test hook"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    (body, secret)
}

/// Checks one Standard Webhooks signature header against `secret`.
pub fn signed_by(r: &Received, secret: &str) -> bool {
    let s = SigningSecret::parse(secret).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let expected = s.sign(&r.header("webhook-id"), ts, &r.body);
    r.header("webhook-signature")
        .split(' ')
        .any(|sig| sig == expected)
}

async fn deliveries(app: &TestApp, key: &str, webhook: &str, query: &str) -> Vec<Value> {
    app.walk(
        key,
        &format!("/v1/webhooks/{webhook}/deliveries?limit=100{query}"),
    )
    .await
}

/// Polls (bounded) until the webhook is disabled; returns it as last read.
async fn wait_until_disabled(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let current = app.get(key, &format!("/v1/webhooks/{id}")).await.1;
        if current["status"] == "disabled" || std::time::Instant::now() > deadline {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls (bounded) until the delivery log satisfies `done`.
/// `PATCH`es the webhook's `enabled`; returns the answer.
async fn set_enabled(app: &TestApp, key: &str, id: &str, enabled: bool) -> (StatusCode, Value) {
    app.send(
        Method::PATCH,
        key,
        &format!("/v1/webhooks/{id}"),
        Some(json!({ "enabled": enabled })),
    )
    .await
}

pub async fn wait_for_log(
    app: &TestApp,
    key: &str,
    webhook: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let log = deliveries(app, key, webhook, "").await;
        if done(&log) || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn matching_events_are_delivered_signed_with_the_exact_envelope() {
    let app = TestApp::spawn_for_webhooks("100ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, secret) = create_webhook(&app, &key, &receiver.url, json!(["invoice.*"])).await;
    assert_eq!(hook["status"], "active", "{hook}");
    assert!(secret.starts_with("whsec_"));
    let id = hook["id"].as_str().unwrap();

    let recorded = app
        .ingest(&[
            event(ORG, json!({"type": "invoice.paid"})),
            event(ORG, json!({"type": "task.created"})),
            event(OTHER, json!({"type": "invoice.paid"})),
            event(ORG, json!({"type": "invoice.finalized"})),
        ])
        .await;
    let got = receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.deliveries().len(),
        2,
        "only the org's invoice events"
    );
    let ids: HashSet<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(
        ids,
        HashSet::from([
            recorded[0]["id"].as_str().unwrap().to_string(),
            recorded[3]["id"].as_str().unwrap().to_string()
        ])
    );
    for r in &got {
        assert!(signed_by(r, &secret), "signature verifies");
        let (_, fetched) = app
            .get(&key, &format!("/v1/events/{}", r.header("webhook-id")))
            .await;
        assert_eq!(
            r.json(),
            fetched,
            "the body is the envelope as GET returns it"
        );
        assert_eq!(r.header("content-type"), "application/json");
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    }

    let log = wait_for_log(&app, &key, id, |l| {
        l.len() == 2 && l.iter().all(|d| d["status"] == "succeeded")
    })
    .await;
    assert_eq!(log.len(), 2, "{log:?}");
    for d in &log {
        assert_eq!(d["status"], "succeeded");
        assert_eq!(d["webhook_id"], id);
        assert!(d["next_attempt_at"].is_null());
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["attempt"], 1);
        assert_eq!(attempts[0]["trigger"], "scheduled");
        assert_eq!(attempts[0]["status_code"], 200);
        assert_eq!(attempts[0]["response_body"], "thanks");
    }
    // Filters on the log.
    let one = deliveries(
        &app,
        &key,
        id,
        &format!("&event_id={}", recorded[0]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(one.len(), 1);
    assert!(
        deliveries(&app, &key, id, "&status=failed")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_failure_is_retried_on_schedule_and_then_succeeds() {
    let app = TestApp::spawn_for_webhooks("200ms,200ms").await;
    let receiver = Receiver::start().await;
    receiver.set_plan(Plan::Sequence([500, 503].into()));
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    app.ingest(&[event(ORG, json!({}))]).await;
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id")),
        "same id on every retry"
    );
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(150),
        "the schedule's delay (±10 %) was kept: {gap:?}"
    );
    let log = wait_for_log(&app, &key, id, |l| {
        l.first().is_some_and(|d| d["status"] == "succeeded")
    })
    .await;
    let attempts = log[0]["attempts"].as_array().unwrap();
    let statuses: Vec<i64> = attempts
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 503, 200]);
    assert_eq!(attempts[2]["attempt"], 3);
}

#[tokio::test]
async fn exhausted_deliveries_fail_and_record_a_delivery_failed_event_never_sent_to_the_same_hook()
{
    let app = TestApp::spawn_for_webhooks("50ms,50ms").await;
    let failing = Receiver::start().await;
    failing.set_plan(Plan::Status(500, None));
    let watcher = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &failing.url, json!(["*"])).await;
    let (watch_hook, _) = create_webhook(&app, &key, &watcher.url, json!(["webhook.*"])).await;
    let id = hook["id"].as_str().unwrap();
    let recorded = app
        .ingest(&[event(ORG, json!({"type": "user.invited"}))])
        .await;

    let log = wait_for_log(&app, &key, id, |l| {
        l.iter().any(|d| d["status"] == "failed")
    })
    .await;
    let failed = log
        .iter()
        .find(|d| d["event_id"] == recorded[0]["id"])
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        3,
        "1 + one per delay"
    );
    assert!(failed["next_attempt_at"].is_null());

    // The event is in the stream, and the other hook got it, but not the failing one.
    let got = watcher.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let notice = got[0].json();
    assert_eq!(notice["type"], "webhook.delivery_failed");
    assert_eq!(notice["subject"], json!({"type": "webhook", "id": id}));
    assert_eq!(notice["payload"]["delivery_id"], failed["id"]);
    assert_eq!(notice["payload"]["event_id"], recorded[0]["id"]);
    let (_, events) = app
        .get(
            &key,
            &format!("/v1/events?organization_id={ORG}&type=webhook.delivery_failed"),
        )
        .await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        failing
            .deliveries()
            .iter()
            .all(|r| r.json()["type"] != "webhook.delivery_failed"),
        "a webhook never receives webhook.* events about itself"
    );
    let watch_id = watch_hook["id"].as_str().unwrap();
    assert_eq!(deliveries(&app, &key, watch_id, "").await.len(), 1);
}

#[tokio::test]
async fn gone_disables_the_webhook_at_once() {
    let app = TestApp::spawn_for_webhooks("50ms,50ms,50ms").await;
    let receiver = Receiver::start().await;
    receiver.set_plan(Plan::Status(410, None));
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    app.ingest(&[event(ORG, json!({}))]).await;
    receiver.wait_for(1, WAIT).await;
    let current = wait_until_disabled(&app, &key, id).await;
    assert_eq!(current["status"], "disabled", "{current}");
    assert!(current["disabled_reason"].as_str().unwrap().contains("410"));
    app.ingest(&[event(ORG, json!({}))]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "no retries and nothing new after a 410"
    );
}

/// A disabled webhook is sent nothing, its pending retries included: they wait, and go out
/// once it is active again.
#[tokio::test]
async fn a_disabled_webhook_keeps_its_pending_deliveries_until_enabled() {
    let app = TestApp::spawn_for_webhooks(format!("200ms{}", ",200ms".repeat(19)).leak()).await;
    let receiver = Receiver::start().await;
    receiver.set_plan(Plan::Status(500, None));
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    let recorded = app.ingest(&[event(ORG, json!({}))]).await;
    receiver.wait_for(2, WAIT).await;
    let (_, disabled) = set_enabled(&app, &key, id, false).await;
    assert_eq!(disabled["status"], "disabled", "{disabled}");
    // An attempt already under way may still land; after that, silence.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = receiver.deliveries().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.deliveries().len(),
        before,
        "retries every 200 ms would have gone on"
    );
    let log = deliveries(&app, &key, id, "").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "pending", "{log:?}");

    receiver.set_plan(Plan::Ok);
    let (_, enabled) = set_enabled(&app, &key, id, true).await;
    assert_eq!(enabled["status"], "active", "{enabled}");
    let log = wait_for_log(&app, &key, id, |l| l[0]["status"] == "succeeded").await;
    assert_eq!(log[0]["status"], "succeeded", "{log:?}");
    assert_eq!(log[0]["event_id"], recorded[0]["id"]);
}

#[tokio::test]
async fn verification_failure_leaves_the_webhook_unverified_and_silent_until_fixed() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    receiver.fail_verification(true);
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    assert_eq!(hook["status"], "unverified");
    assert!(
        hook["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("challenge"),
        "{hook}"
    );
    let (_, events) = app
        .get(
            &key,
            &format!("/v1/events?organization_id={ORG}&type=webhook.verification_failed"),
        )
        .await;
    assert_eq!(events["data"][0]["subject"]["id"], id);

    app.ingest(&[event(ORG, json!({}))]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.deliveries().is_empty(),
        "an unverified webhook is sent nothing"
    );

    receiver.fail_verification(false);
    let (status, fixed) = set_enabled(&app, &key, id, true).await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert_eq!(fixed["status"], "active");
    assert!(fixed["disabled_reason"].is_null());
    let recorded = app.ingest(&[event(ORG, json!({}))]).await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].header("webhook-id"),
        recorded[0]["id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_for_the_overlap() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, old) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    let (status, rotated) = app
        .send(
            Method::POST,
            &key,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let (_, current) = app.get(&key, &format!("/v1/webhooks/{id}/secret")).await;
    assert_eq!(current["secret"], new.as_str());

    app.ingest(&[event(ORG, json!({}))]).await;
    let got = receiver.wait_for(1, WAIT).await;
    let header = got[0].header("webhook-signature");
    assert_eq!(header.split(' ').count(), 2, "{header}");
    assert!(signed_by(&got[0], &old) && signed_by(&got[0], &new));
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_a_healthy_one() {
    let app = TestApp::spawn_for_webhooks("5s").await;
    let slow = Receiver::start().await;
    let healthy = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    create_webhook(&app, &key, &slow.url, json!(["*"])).await;
    slow.set_plan(Plan::Hang);
    create_webhook(&app, &key, &healthy.url, json!(["*"])).await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let batch: Vec<_> = (0..10).map(|_| event(ORG, json!({}))).collect();
        app.ingest(&batch).await;
    }
    let got = healthy.wait_for(100, WAIT).await;
    assert_eq!(got.len(), 100, "every event reached the healthy endpoint");
    // The slow one is still holding its connections (it never answers within 15 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let slow_in_flight = slow.deliveries().len();
    assert!(
        (1..=tidings_webhooks::DispatcherConfig::default().per_endpoint).contains(&slow_in_flight),
        "the hanging endpoint holds at most its own slots: {slow_in_flight}"
    );
}

#[tokio::test]
async fn retry_replay_and_test_send() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, secret) = create_webhook(&app, &key, &receiver.url, json!(["task.*"])).await;
    let id = hook["id"].as_str().unwrap();
    // Another organization's event of a matching type is never replayed to this webhook.
    let recorded = app
        .ingest(&[
            event(ORG, json!({"type": "task.created"})),
            event(ORG, json!({"type": "user.invited"})),
            event(OTHER, json!({"type": "task.created"})),
        ])
        .await;
    receiver.wait_for(1, WAIT).await;
    let log = wait_for_log(&app, &key, id, |l| {
        l.first().is_some_and(|d| d["status"] == "succeeded")
    })
    .await;
    let delivery = log[0]["id"].as_str().unwrap();

    let (status, retried) = app
        .send(
            Method::POST,
            &key,
            &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].header("webhook-id"),
        recorded[0]["id"].as_str().unwrap()
    );
    let log = wait_for_log(&app, &key, id, |l| {
        l[0]["attempts"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(log[0]["attempts"][1]["trigger"], "manual");

    let (status, replay) = app
        .send(
            Method::POST,
            &key,
            &format!("/v1/webhooks/{id}/replay"),
            Some(json!({"from": "2020-01-01"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(replay["replayed"], 1, "only the matching event");
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(
        got[2].header("webhook-id"),
        recorded[0]["id"].as_str().unwrap()
    );
    let log = wait_for_log(&app, &key, id, |l| {
        l.len() == 2 && l[0]["status"] == "succeeded"
    })
    .await;
    assert_eq!(log[0]["attempts"][0]["trigger"], "replay");

    let (status, test) = app
        .send(Method::POST, &key, &format!("/v1/webhooks/{id}/test"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{test}");
    assert_eq!(test["status"], "succeeded");
    assert_eq!(test["attempts"][0]["trigger"], "test");
    let got = receiver.wait_for(4, WAIT).await;
    assert_eq!(got[3].json()["type"], "webhook.test");
    assert!(signed_by(&got[3], &secret));
}

#[tokio::test]
async fn webhook_crud_and_validation() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(
        &app,
        &key,
        &receiver.url,
        json!(["invoice.*", "task.created"]),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    assert!(id.starts_with("WHK-26-"));
    assert_eq!(hook["organization_id"], ORG);
    assert_eq!(hook["event_types"], json!(["invoice.*", "task.created"]));

    let (_, list) = app.get(&key, "/v1/webhooks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        list["data"][0].get("secret").is_none(),
        "secrets only where the spec says"
    );
    let (_, one) = app.get(&key, &format!("/v1/webhooks/{id}")).await;
    assert!(one.get("secret").is_none());

    let (status, patched) = app
        .send(
            Method::PATCH,
            &key,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"event_types": ["*"], "description": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["event_types"], json!(["*"]));
    assert!(patched["description"].is_null());
    let (_, disabled) = set_enabled(&app, &key, id, false).await;
    assert_eq!(disabled["status"], "disabled");

    for (body, param) in [
        (
            json!({"url": receiver.url, "event_types": []}),
            "event_types",
        ),
        (
            json!({"url": receiver.url, "event_types": ["invoice.exploded"]}),
            "event_types",
        ),
        (
            json!({"url": receiver.url, "event_types": ["invoice"]}),
            "event_types",
        ),
        (json!({"url": "not a url", "event_types": ["*"]}), "url"),
        (
            json!({"url": "ftp://example.com/x", "event_types": ["*"]}),
            "url",
        ),
        (
            json!({"url": receiver.url, "event_types": ["*"], "workspace_id": "WS-1"}),
            "workspace_id",
        ),
        (
            json!({"url": receiver.url, "event_types": ["*"], "description": "d".repeat(1025)}),
            "description",
        ),
    ] {
        let (status, err) = app
            .send(Method::POST, &key, "/v1/webhooks", Some(body))
            .await;
        let error = assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        assert_eq!(error["param"], param, "{err}");
    }
    let (status, err) = app
        .send(
            Method::POST,
            &key,
            "/v1/webhooks",
            Some(json!({"url": receiver.url, "event_types": ["*"], "colour": "red"})),
        )
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );

    let (status, deleted) = app
        .send(Method::DELETE, &key, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!({"id": id, "deleted": true}));
    let (status, _) = app.get(&key, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_organization_cannot_see_or_touch_webhooks_or_deliveries() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let mine = writer_key(&app, ORG).await;
    let theirs = writer_key(&app, OTHER).await;
    let (hook, _) = create_webhook(&app, &mine, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    app.ingest(&[event(ORG, json!({}))]).await;
    receiver.wait_for(1, WAIT).await;
    let delivery = wait_for_log(&app, &mine, id, |l| !l.is_empty()).await[0]["id"].clone();
    let delivery = delivery.as_str().unwrap();

    for (method, path, body) in [
        (Method::GET, format!("/v1/webhooks/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": false})),
        ),
        (Method::DELETE, format!("/v1/webhooks/{id}"), None),
        (Method::GET, format!("/v1/webhooks/{id}/secret"), None),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        ),
        (Method::GET, format!("/v1/webhooks/{id}/deliveries"), None),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/webhooks/{id}/replay"),
            Some(json!({"from": "2020-01-01"})),
        ),
        (Method::POST, format!("/v1/webhooks/{id}/test"), None),
    ] {
        let (status, body) = app.send(method.clone(), &theirs, &path, body).await;
        assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "invalid_request_error",
        );
    }
    let (status, body) = app
        .get(&theirs, &format!("/v1/webhooks?organization_id={ORG}"))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");
    let (_, list) = app.get(&theirs, "/v1/webhooks").await;
    assert_eq!(list["data"], json!([]));
    let (status, body) = app
        .send(
            Method::POST,
            &theirs,
            "/v1/webhooks",
            Some(json!({"organization_id": ORG, "url": receiver.url, "event_types": ["*"]})),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");
    // Still intact for its owner.
    let (status, still) = app.get(&mine, &format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        (status, still["status"].as_str()),
        (StatusCode::OK, Some("active"))
    );
    // Read-only keys cannot write.
    let reader = app.org_key(ORG, &[Scope::WebhooksRead]).await;
    let (status, body) = app
        .send(Method::DELETE, &reader, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");
}

#[tokio::test]
async fn private_and_metadata_targets_are_refused_without_the_flag() {
    let app = TestApp::spawn().await;
    let key = writer_key(&app, ORG).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://10.0.0.5/hook",
        "https://172.16.3.4/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/hook",
        "https://100.64.0.1/hook",
    ] {
        let (status, body) = app
            .send(
                Method::POST,
                &key,
                "/v1/webhooks",
                Some(json!({"url": url, "event_types": ["*"]})),
            )
            .await;
        let error = assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        );
        assert_eq!(error["param"], "url", "{url}: {body}");
    }
    let (_, list) = app.get(&key, "/v1/webhooks").await;
    assert_eq!(list["data"], json!([]), "nothing was created");
}

#[tokio::test]
async fn the_official_standard_webhooks_library_verifies_deliveries() {
    let python = std::env::var("TIDINGS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TIDINGS_TEST_PYTHON is not set: run ./scripts/test, which installs the standardwebhooks library")
    });
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, old) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    app.ingest(&[event(ORG, json!({}))]).await;
    receiver.wait_for(1, WAIT).await;
    let (_, rotated) = app
        .send(
            Method::POST,
            &key,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_string();
    app.ingest(&[event(
        ORG,
        json!({"payload": {"note": "ünïcödé ✓", "n": 1.5}}),
    )])
    .await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
secret, body_path, headers_json, expect = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
body = open(body_path, "rb").read()
headers = json.loads(headers_json)
try:
    Webhook(secret).verify(body, headers)
    result = "verified"
except WebhookVerificationError:
    result = "rejected"
print(result)
sys.exit(0 if result == expect else 1)
"#;
    let check = |r: &Received, secret: &str, tamper: bool, expect: &str| {
        let body_path = dir.path().join("body");
        let mut body = r.body.clone();
        if tamper {
            body.push(b' ');
        }
        std::fs::write(&body_path, &body).unwrap();
        let headers = json!({
            "webhook-id": r.header("webhook-id"),
            "webhook-timestamp": r.header("webhook-timestamp"),
            "webhook-signature": r.header("webhook-signature"),
        });
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                script,
                secret,
                body_path.to_str().unwrap(),
                &headers.to_string(),
                expect,
            ])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "standardwebhooks said {} (expected {expect}): {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check(&got[0], &old, false, "verified");
    check(&got[0], &new, false, "rejected");
    check(&got[0], &old, true, "rejected");
    // After rotation, both secrets verify the same delivery.
    check(&got[1], &old, false, "verified");
    check(&got[1], &new, false, "verified");
    check(&got[1], &new, true, "rejected");
}

#[tokio::test]
async fn an_endpoint_failing_for_five_days_is_disabled() {
    // The manual clock drives the store and the dispatcher: five days pass in an instant.
    let app = TestApp::spawn_with(crate::harness::Options {
        allow_private_webhooks: true,
        retry_schedule: "1h",
        ..crate::harness::Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    receiver.set_plan(Plan::Status(500, None));
    app.ingest(&[event(ORG, json!({}))]).await;
    receiver.wait_for(1, WAIT).await;
    // Let the failed attempt be recorded before the clock jumps.
    wait_for_log(&app, &key, id, |l| {
        l.first()
            .is_some_and(|d| d["attempts"].as_array().is_some_and(|a| a.len() == 1))
    })
    .await;
    app.clock
        .advance(chrono::Duration::days(5) + chrono::Duration::hours(2));
    app.ingest(&[event(ORG, json!({}))]).await; // wakes the dispatcher
    let current = wait_until_disabled(&app, &key, id).await;
    assert_eq!(current["status"], "disabled", "{current}");
    assert!(
        current["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("5 days"),
        "{current}"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_only_4_kib_of_a_response_is_kept() {
    let app = TestApp::spawn_for_webhooks("1h").await;
    let key = writer_key(&app, ORG).await;
    let elsewhere = Receiver::start().await;
    let redirecting = Receiver::start().await;
    redirecting.set_plan(Plan::Redirect(elsewhere.url.clone()));
    let chatty = Receiver::start().await;
    chatty.set_plan(Plan::Body("x".repeat(10_000)));
    let (redirect_hook, _) = create_webhook(&app, &key, &redirecting.url, json!(["*"])).await;
    let (chatty_hook, _) = create_webhook(&app, &key, &chatty.url, json!(["*"])).await;
    app.ingest(&[event(ORG, json!({}))]).await;

    let redirect_id = redirect_hook["id"].as_str().unwrap();
    let log = wait_for_log(&app, &key, redirect_id, |l| {
        l.first()
            .is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    let attempt = &log[0]["attempts"][0];
    assert_eq!(
        attempt["status_code"], 307,
        "a 3xx is the answer, not a hop"
    );
    assert_eq!(
        log[0]["status"], "pending",
        "and it counts as a failure to retry"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        elsewhere.deliveries().is_empty(),
        "the redirect was not followed"
    );

    let chatty_id = chatty_hook["id"].as_str().unwrap();
    let log = wait_for_log(&app, &key, chatty_id, |l| {
        l.first().is_some_and(|d| d["status"] == "succeeded")
    })
    .await;
    let kept = log[0]["attempts"][0]["response_body"].as_str().unwrap();
    assert_eq!(kept.len(), 4 * 1024);
}

/// A replay takes at most 10,000 matching events at once (DESIGN.md): one more is refused
/// with nothing scheduled, and events the webhook does not want do not count.
#[tokio::test]
async fn replay_is_capped_at_ten_thousand_matching_events() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = writer_key(&app, ORG).await;
    // Unwanted events first, so the matching ones are past the first pages the store reads.
    for (kind, batches) in [("user.invited", 6), ("task.created", 10)] {
        for _ in 0..batches {
            let batch: Vec<_> = (0..1_000)
                .map(|_| event(ORG, json!({"type": kind})))
                .collect();
            app.ingest(&batch).await;
        }
    }
    let one_more = app
        .ingest(&[event(ORG, json!({"type": "task.assigned"}))])
        .await;
    assert!(one_more[0]["id"].is_string());
    // Created after the events, the webhooks were sent none of them.
    let (all_tasks, _) = create_webhook(&app, &key, &receiver.url, json!(["task.*"])).await;
    let (created_only, _) =
        create_webhook(&app, &key, &receiver.url, json!(["task.created"])).await;
    let replay = |id: String| {
        let (app, key) = (&app, &key);
        async move {
            app.send(
                Method::POST,
                key,
                &format!("/v1/webhooks/{id}/replay"),
                Some(json!({"from": "2020-01-01"})),
            )
            .await
        }
    };

    // task.* matches 10,001 events: refused, and nothing is scheduled.
    let id = all_tasks["id"].as_str().unwrap().to_string();
    let (status, body) = replay(id.clone()).await;
    let error = assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
    assert_eq!(error["code"], "replay_too_large");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("more than 10000"),
        "{error}"
    );
    let (_, log) = app
        .get(&key, &format!("/v1/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(log["data"], json!([]));

    // task.created matches exactly 10,000: accepted.
    let id = created_only["id"].as_str().unwrap().to_string();
    let (status, body) = replay(id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["replayed"], 10_000);
}
