//! SPEC §12: the retention sweep, with the test clock moved by hand.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings::server::sweep_until_done;
use tidings_domain::Scope;
use tidings_store::RetentionPolicy;

use crate::harness::{Options, TestApp, event};
use crate::receiver::{Plan, Receiver};
use crate::webhooks::{create_webhook, wait_for_log};

const ORG: &str = "ORG-26-090500";

async fn count(app: &TestApp, key: &str, path: &str) -> usize {
    app.walk(key, path).await.len()
}

#[tokio::test]
async fn old_rows_go_young_rows_stay_and_the_audit_chain_still_verifies() {
    let app = TestApp::spawn_with(Options {
        allow_private_webhooks: true,
        ..Options::default()
    })
    .await;
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
    let receiver = Receiver::start().await;
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let hook = hook["id"].as_str().unwrap().to_string();
    let old: Vec<_> = (0..30).map(|_| event(ORG, json!({}))).collect();
    app.ingest(&old).await;
    receiver
        .wait_for(30, std::time::Duration::from_secs(20))
        .await;

    let events = format!("/v1/events?organization_id={ORG}&limit=100");
    let deliveries = format!("/v1/webhooks/{hook}/deliveries?limit=100");
    let audit = "/v1/audit-logs?limit=100";
    let policy = RetentionPolicy::default();
    let audit_before = count(&app, &key, audit).await;

    // Day 31: deliveries are past their 30 days, events are not.
    app.clock.advance(Duration::days(31));
    app.ingest(&[event(ORG, json!({}))]).await;
    let swept = sweep_until_done(app.store.as_ref(), policy).await.unwrap();
    assert_eq!(
        (swept.events, swept.deliveries, swept.audit_records),
        (0, 30, 0)
    );
    assert_eq!(count(&app, &key, &events).await, 31);
    assert!(
        count(&app, &key, &deliveries).await <= 1,
        "only the young delivery may remain"
    );

    // Day 91: the first 30 events go, the young one stays.
    app.clock.advance(Duration::days(60));
    let swept = sweep_until_done(app.store.as_ref(), policy).await.unwrap();
    assert_eq!(swept.events, 30);
    assert_eq!(count(&app, &key, &events).await, 1);

    // Day 366: audit records of the first day go; the chains still verify from the checkpoint.
    app.clock.advance(Duration::days(275));
    app.ingest(&[event(ORG, json!({}))]).await;
    let swept = sweep_until_done(app.store.as_ref(), policy).await.unwrap();
    assert!(swept.audit_records >= audit_before, "{swept:?}");
    let remaining = app.walk(&key, audit).await;
    assert!(!remaining.is_empty());
    // Everything of the first day (2026-04-14) is gone; the day-31 record is 335 days old.
    assert!(
        remaining
            .iter()
            .all(|r| r["created_at"].as_str().unwrap() >= "2026-05-15"),
        "{remaining:?}"
    );
    let reports = tidings::audit::verify(app.store.as_ref(), None)
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{reports:?}");
    // The same verification from the command line.
    let (ok, out, _) = crate::process::tidings_on(&app.data, &["audit", "verify"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sweep_runs_in_batches_while_queries_keep_answering() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    for _ in 0..20 {
        let batch: Vec<_> = (0..1_000).map(|_| event(ORG, json!({}))).collect();
        app.ingest(&batch).await;
    }
    app.clock.advance(Duration::days(91));
    let young = app.ingest(&[event(ORG, json!({}))]).await;
    const {
        assert!(
            20_000 > tidings::server::SWEEP_BATCH * 2,
            "the sweep needs several passes"
        )
    };

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (client, url, key, done) = (
            app.client.clone(),
            format!("{}/v1/events?organization_id={ORG}&limit=10", app.public),
            key.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut answered = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && answered < 100_000 {
                let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                answered += 1;
            }
            answered
        })
    };
    let swept = sweep_until_done(app.store.as_ref(), RetentionPolicy::default())
        .await
        .unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = reader.await.unwrap();
    assert_eq!(swept.events, 20_000);
    assert!(answered > 0, "queries were served during the sweep");
    let left = app
        .walk(&key, &format!("/v1/events?organization_id={ORG}"))
        .await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], young[0]["id"]);
    // Time bounds still resolve once the swept seconds are gone.
    let at = young[0]["created_at"].as_str().unwrap().replace('+', "%2B");
    for (bounds, found) in [
        (format!("from={at}"), 1),
        ("from=2020-01-01".to_string(), 1),
        (format!("to={at}"), 0),
        (format!("from=2020-01-01&to={at}"), 0),
    ] {
        let page = app
            .walk(&key, &format!("/v1/events?organization_id={ORG}&{bounds}"))
            .await;
        assert_eq!(page.len(), found, "{bounds}");
    }
}

/// A delivery still owed when retention takes its event has nothing left to send: the next
/// claim closes it as failed, and the receiver never hears of it again.
#[tokio::test]
async fn a_delivery_whose_event_retention_took_is_closed_unsent() {
    let app = TestApp::spawn_with(Options {
        allow_private_webhooks: true,
        retry_schedule: "10s",
        ..Options::default()
    })
    .await;
    let key = app
        .org_key(
            ORG,
            &[Scope::EventsRead, Scope::WebhooksRead, Scope::WebhooksWrite],
        )
        .await;
    let receiver = Receiver::start().await;
    receiver.set_plan(Plan::Status(500, None));
    let (hook, _) = create_webhook(&app, &key, &receiver.url, json!(["*"])).await;
    let id = hook["id"].as_str().unwrap();
    app.ingest(&[event(ORG, json!({})), event(ORG, json!({}))])
        .await;
    // Each first attempt fails and is recorded; the retries are due 10 s later (the test
    // clock only moves when told to).
    let first_attempts = |d: &[Value]| {
        d.len() == 2
            && d.iter()
                .all(|d| d["status"] == "pending" && d["attempts"].as_array().unwrap().len() == 1)
    };
    let log = wait_for_log(&app, &key, id, first_attempts).await;
    assert!(first_attempts(&log), "{log:?}");

    // Events are kept 1 s here: 2 s later they are swept, before their retries are due.
    receiver.set_plan(Plan::Ok);
    app.clock.advance(Duration::seconds(2));
    let policy = RetentionPolicy {
        events: std::time::Duration::from_secs(1),
        ..RetentionPolicy::default()
    };
    let swept = sweep_until_done(app.store.as_ref(), policy).await.unwrap();
    assert_eq!((swept.events, swept.deliveries), (2, 0));

    app.clock.advance(Duration::seconds(20));
    let closed = |d: &[Value]| d.len() == 2 && d.iter().all(|d| d["status"] == "failed");
    let deliveries = wait_for_log(&app, &key, id, closed).await;
    assert!(closed(&deliveries), "{deliveries:?}");
    for d in &deliveries {
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
        assert!(d["next_attempt_at"].is_null(), "{d}");
    }
    // Let a wrongly leased delivery reach the receiver, if one was.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        receiver.deliveries().len(),
        2,
        "only the first attempts were sent"
    );
}
