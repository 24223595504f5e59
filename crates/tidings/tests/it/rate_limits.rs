//! SPEC §9: per-key token buckets with RateLimit-* headers and 429s.

use std::time::Duration;

use reqwest::StatusCode;
use tidings_domain::Scope;

use crate::harness::{Options, TestApp, assert_error};

const ORG: &str = "ORG-26-090500";

async fn hit(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .get(format!(
            "{}/v1/events?organization_id={ORG}&limit=1",
            app.public
        ))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn a_burst_then_429_with_headers_keys_independent_and_recovery() {
    let app = TestApp::spawn().await;
    // 5 requests/s, burst 10.
    let key = app.limited_key(ORG, &[Scope::EventsRead], 5).await;
    let other = app.limited_key(ORG, &[Scope::EventsRead], 5).await;

    let first = hit(&app, &key).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "ratelimit-limit"), Some(5));
    assert_eq!(header(&first, "ratelimit-remaining"), Some(9));
    assert!(header(&first, "ratelimit-reset").is_some());
    // The burst of 10 passes; soon after, a 429 (a token comes back every 200 ms, so on a
    // slow machine one or two more may pass first).
    let started = std::time::Instant::now();
    let mut ok = 1;
    let refused = loop {
        let r = hit(&app, &key).await;
        if r.status() != StatusCode::OK {
            break r;
        }
        ok += 1;
        assert!(ok < 50, "never refused");
    };
    let refilled = (started.elapsed().as_millis() / 200) as usize + 1;
    assert!(
        (10..=10 + refilled).contains(&ok),
        "{ok} passed before the 429"
    );
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "ratelimit-remaining"), Some(0));
    let retry_after = header(&refused, "retry-after").expect("Retry-After on a 429");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let status = refused.status();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
    );

    // Another key has its own bucket.
    assert_eq!(hit(&app, &other).await.status(), StatusCode::OK);

    // One token comes back every 200 ms.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(hit(&app, &key).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_server_default_applies_to_keys_without_their_own_limit() {
    let app = TestApp::spawn_with(Options {
        rate_limit: 2,
        ..Options::default()
    })
    .await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    // Default 2/s with a burst of 4.
    let mut ok = 0;
    loop {
        let r = hit(&app, &key).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(header(&r, "ratelimit-limit"), Some(2));
        ok += 1;
        assert!(ok < 20, "never refused");
    }
    assert!(ok >= 4, "the burst passes: {ok}");
    // The ingest port is for the platform's producers and is not throttled per key.
    for _ in 0..10 {
        let (status, _) = app
            .ingest_raw(
                app.ingest_key(),
                "application/json",
                crate::harness::event(ORG, serde_json::json!({})).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
}
