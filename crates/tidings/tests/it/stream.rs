//! SPEC §4 stream: `GET /v1/events/stream`, `tidings listen`, in-order delivery, exact
//! resumption, filters, isolation, and a slow reader that lags with a bound.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings::client::{ApiClient, StreamMessage};
use tidings_domain::Scope;

use crate::harness::{TestApp, assert_error, event};
use crate::process::BIN;
use crate::receiver::Receiver;

const ORG: &str = "ORG-26-090500";
const OTHER: &str = "ORG-26-090501";

/// Follows a stream in the background from after event `start_after` (deterministic, unlike
/// "from whatever is newest when the connection lands"), collecting messages; stops after `n`.
fn follow(
    app: &TestApp,
    key: &str,
    query: &str,
    start_after: Option<String>,
    n: usize,
) -> (Arc<Mutex<Vec<StreamMessage>>>, tokio::task::JoinHandle<()>) {
    let got: Arc<Mutex<Vec<StreamMessage>>> = Arc::default();
    let client = ApiClient::new(&app.public, key);
    let path = format!("/v1/events/stream?{query}");
    let sink = Arc::clone(&got);
    let task = tokio::spawn(async move {
        let _ = client
            .follow(
                &path,
                start_after,
                |m| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let mut all = sink.lock().unwrap();
                        all.push(m);
                        all.len() < n
                    }
                },
                3,
            )
            .await;
    });
    (got, task)
}

async fn wait_len(got: &Arc<Mutex<Vec<StreamMessage>>>, n: usize) -> Vec<StreamMessage> {
    for _ in 0..2_000 {
        if got.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    got.lock().unwrap().clone()
}

/// Gives a stream that starts "at the newest event" time to connect, where a test only
/// checks that nothing arrives.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn new_matching_events_arrive_in_order_and_others_do_not() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    // Recorded before the start position: not streamed.
    let before = app
        .ingest(&[event(ORG, json!({"type": "invoice.paid"}))])
        .await;
    let (got, task) = follow(
        &app,
        &key,
        &format!("organization_id={ORG}&type=invoice.*"),
        before[0]["id"].as_str().map(str::to_string),
        20,
    );
    let mut expected = Vec::new();
    for i in 0..10 {
        let recorded = app
            .ingest(&[
                event(ORG, json!({"type": "invoice.paid", "payload": {"i": i}})),
                event(ORG, json!({"type": "task.created"})),
                event(OTHER, json!({"type": "invoice.paid"})),
                event(ORG, json!({"type": "invoice.voided"})),
            ])
            .await;
        expected.push(recorded[0]["id"].clone());
        expected.push(recorded[3]["id"].clone());
    }
    let got = wait_len(&got, 20).await;
    task.abort();
    let ids: Vec<Value> = got.iter().map(|m| json!(m.id.clone().unwrap())).collect();
    assert_eq!(
        ids, expected,
        "every matching event, in order, nothing else"
    );
    let first: Value = serde_json::from_str(&got[0].data).unwrap();
    let (_, fetched) = app
        .get(
            &key,
            &format!("/v1/events/{}", expected[0].as_str().unwrap()),
        )
        .await;
    assert_eq!(first, fetched, "the data is the envelope");
}

#[tokio::test]
async fn reconnecting_with_last_event_id_resumes_exactly() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let first: Vec<Value> = app
        .ingest(&(0..5).map(|_| event(ORG, json!({}))).collect::<Vec<_>>())
        .await;
    let resume_after = first[2]["id"].as_str().unwrap().to_string();
    let more = app
        .ingest(&(0..5).map(|_| event(ORG, json!({}))).collect::<Vec<_>>())
        .await;
    let response = app
        .client
        .get(format!(
            "{}/v1/events/stream?organization_id={ORG}",
            app.public
        ))
        .bearer_auth(&key)
        .header("last-event-id", &resume_after)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(response.headers().contains_key("ratelimit-limit"));
    let mut response = response;
    let mut text = String::new();
    let want: Vec<String> = first[3..]
        .iter()
        .chain(more.iter())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for _ in 0..200 {
        let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), response.chunk()).await
        else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.matches("\nid:").count() + usize::from(text.starts_with("id:")) >= want.len() {
            break;
        }
    }
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(
        ids, want,
        "exactly the events after the last one seen: {text}"
    );

    let (status, body) = {
        let r = app
            .client
            .get(format!(
                "{}/v1/events/stream?organization_id={ORG}",
                app.public
            ))
            .bearer_auth(&key)
            .header("last-event-id", "not-an-id")
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json::<Value>().await.unwrap())
    };
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
    );
}

#[tokio::test]
async fn streams_are_isolated_by_organization_and_validate_their_filters() {
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    for (query, status) in [
        (format!("organization_id={OTHER}"), StatusCode::FORBIDDEN),
        (
            format!("organization_id={ORG}&limit=5"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("organization_id={ORG}&cursor=x"),
            StatusCode::BAD_REQUEST,
        ),
        ("type=invoice.paid".to_string(), StatusCode::BAD_REQUEST),
    ] {
        let (s, _) = app.get(&key, &format!("/v1/events/stream?{query}")).await;
        assert_eq!(s, status, "{query}");
    }
    // A workspace of another organization yields nothing for this key.
    let (got, task) = follow(&app, &key, "workspace_id=WS-26-000031", None, 1);
    settle().await;
    app.ingest(&[event(OTHER, json!({"workspace_id": "WS-26-000031"}))])
        .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    task.abort();
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_stream_counts_as_one_request_and_a_slow_reader_catches_up() {
    let app = TestApp::spawn().await;
    // 1 request/s (burst 2): far fewer than the events that will flow.
    let key = app.limited_key(ORG, &[Scope::EventsRead], 1).await;
    let response = app
        .client
        .get(format!(
            "{}/v1/events/stream?organization_id={ORG}",
            app.public
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Nobody reads while 3,000 events are recorded: the server holds at most a page for
    // this stream and waits for the client; then the client reads every one, in order.
    let mut expected = Vec::new();
    for _ in 0..3 {
        let batch: Vec<_> = (0..1_000).map(|_| event(ORG, json!({}))).collect();
        expected.extend(
            app.ingest(&batch)
                .await
                .into_iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
    }
    let mut response = response;
    let mut text = String::new();
    let mut seen = 0;
    while seen < expected.len() {
        let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(10), response.chunk()).await
        else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        seen = text.matches("id:").count();
    }
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|s| s.trim().to_string())
        .collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn listen_forwards_signed_events_to_a_local_endpoint() {
    let python = std::env::var("TIDINGS_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("TIDINGS_TEST_PYTHON is not set: run ./scripts/test"));
    let app = TestApp::spawn().await;
    let key = app.org_key(ORG, &[Scope::EventsRead]).await;
    let receiver = Receiver::start().await;
    let mut child = Command::new(BIN)
        .args([
            "listen",
            "--forward-to",
            &receiver.url,
            "--url",
            &app.public,
            "--key",
            &key,
        ])
        .args(["--org", ORG, "--types", "invoice.*"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let banner = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let secret = banner
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .expect("the secret is printed")
        .to_string();
    // The listener starts at the newest event once connected: probe until it forwards.
    let mut probes = 0;
    while receiver.deliveries().is_empty() {
        assert!(probes < 100, "the listener never forwarded anything");
        app.ingest(&[event(ORG, json!({"type": "invoice.finalized"}))])
            .await;
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forwarded_probes = receiver.deliveries().len();
    while rx.try_recv().is_ok() {}
    let recorded = app
        .ingest(&[
            event(ORG, json!({"type": "invoice.paid"})),
            event(ORG, json!({"type": "task.created"})),
        ])
        .await;
    let got = receiver
        .wait_for(forwarded_probes + 1, Duration::from_secs(20))
        .await;
    let status_line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = receiver.deliveries();
    let _ = child.kill();
    let _ = child.wait();
    let got = &got[forwarded_probes..];
    assert_eq!(got.len(), 1);
    assert!(
        got_all
            .iter()
            .all(|r| r.json()["type"].as_str().unwrap().starts_with("invoice.")),
        "only the filtered types are forwarded"
    );
    assert_eq!(
        got[0].header("webhook-id"),
        recorded[0]["id"].as_str().unwrap()
    );
    assert!(status_line.contains("-> 200"), "{status_line}");
    assert!(crate::webhooks::signed_by(&got[0], &secret));
    // And the official library agrees.
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, json; from standardwebhooks.webhooks import Webhook; \
             Webhook(sys.argv[1]).verify(sys.argv[2].encode(), json.loads(sys.argv[3])); print('ok')",
            &secret,
            &String::from_utf8_lossy(&got[0].body),
            &json!({
                "webhook-id": got[0].header("webhook-id"),
                "webhook-timestamp": got[0].header("webhook-timestamp"),
                "webhook-signature": got[0].header("webhook-signature"),
            })
            .to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
