//! SPEC §10: a pending retry survives SIGKILL of the server and is attempted after restart.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestStore, event};
use crate::process::{ServerProcess, create_key};
use crate::receiver::{Plan, Receiver};

const ORG: &str = "ORG-26-090500";

async fn log(client: &reqwest::Client, public: &str, key: &str, hook: &str) -> Vec<Value> {
    let r = client
        .get(format!("{public}/v1/webhooks/{hook}/deliveries"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_survive_sigkill() {
    let store = TestStore::new();
    let args = [
        "--allow-private-webhooks",
        "--webhook-retry-schedule",
        "1s,1s",
    ];
    let server = ServerProcess::start_with(&store, &args);
    let key = create_key(
        &store,
        &["--org", ORG, "--scopes", "webhooks:read,webhooks:write"],
    );
    let ingest = create_key(&store, &["--platform", "--scopes", "events:ingest"]);
    let receiver = Receiver::start().await;
    receiver.set_plan(Plan::Sequence([500].into()));
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/v1/webhooks", server.public))
        .bearer_auth(&key)
        .json(&json!({"url": receiver.url, "event_types": ["*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["status"], "active", "{created}");
    let hook = created["id"].as_str().unwrap().to_string();
    let r = client
        .post(format!("{}/internal/v1/events", server.ingest))
        .bearer_auth(&ingest)
        .json(&event(ORG, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Wait until the failed first attempt is recorded and the retry is pending, then kill.
    let mut pending = false;
    for _ in 0..400 {
        let l = log(&client, &server.public, &key, &hook).await;
        if l.first().is_some_and(|d| {
            d["status"] == "pending" && d["attempts"].as_array().is_some_and(|a| a.len() == 1)
        }) {
            pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        pending,
        "the first attempt failed and a retry was scheduled"
    );
    server.kill();

    let server = ServerProcess::start_with(&store, &args);
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "the retry was made after the restart");
    let mut done = Vec::new();
    for _ in 0..400 {
        done = log(&client, &server.public, &key, &hook).await;
        if done.first().is_some_and(|d| d["status"] == "succeeded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(done[0]["status"], "succeeded", "{done:?}");
    assert_eq!(done[0]["attempts"].as_array().unwrap().len(), 2);
    server.kill();
}
