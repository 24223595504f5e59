//! SPEC §5: a 201 means durable. Kill the real binary with SIGKILL mid-ingest, restart it
//! on the same store (data directory or database), and find every acknowledged event;
//! producers retrying with the same idempotency keys get the same events back, never copies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestStore, event};
use crate::process::{ServerProcess, create_key};

const ORG: &str = "ORG-26-090500";
const PRODUCERS: usize = 6;
const BATCH: usize = 40;

fn batch(producer: usize, n: usize) -> Value {
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            event(
                ORG,
                json!({"idempotency_key": format!("p{producer}-b{n}-{i}")}),
            )
        })
        .collect();
    json!({ "events": events })
}

async fn walk_all(client: &reqwest::Client, public: &str, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10_000 {
        let r = client
            .get(format!(
                "{public}/v1/events?organization_id={ORG}&limit=100{cursor}"
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        out.extend(body["data"].as_array().unwrap().iter().cloned());
        match body["meta"]["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_and_retries_do_not_duplicate() {
    let store = TestStore::new();
    let server = ServerProcess::start(&store);
    // Created while the server runs, and usable at once.
    let key = create_key(
        &store,
        &["--platform", "--scopes", "events:ingest,events:read"],
    );
    let client = reqwest::Client::new();

    // key -> id of every event whose batch got a 201; batches each producer attempted.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (client, key, url) = (
            client.clone(),
            key.clone(),
            format!("{}/internal/v1/events", server.ingest),
        );
        let (acked, attempted) = (Arc::clone(&acked), Arc::clone(&attempted));
        producers.push(tokio::spawn(async move {
            for n in 0..1_000 {
                attempted.lock().unwrap().push((p, n));
                let sent = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&batch(p, n))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                let mut acked = acked.lock().unwrap();
                for (i, e) in body["data"].as_array().unwrap().iter().enumerate() {
                    acked.insert(
                        format!("p{p}-b{n}-{i}"),
                        e["id"].as_str().unwrap().to_string(),
                    );
                }
            }
        }));
    }
    // Let a good number of batches through, then pull the plug mid-stream.
    for _ in 0..3_000 {
        if acked.lock().unwrap().len() >= 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 2_000,
        "producers got {} acks before the kill",
        acked.len()
    );

    let server = ServerProcess::start(&store);
    let stored = walk_all(&client, &server.public, &key).await;
    let stored_ids: HashSet<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(stored_ids.len(), stored.len(), "no duplicate rows");
    for (k, id) in &acked {
        assert!(
            stored_ids.contains(id.as_str()),
            "acknowledged event {id} ({k}) was lost"
        );
    }

    // Producers retry everything they attempted, with the same keys.
    let attempted = attempted.lock().unwrap().clone();
    let url = format!("{}/internal/v1/events", server.ingest);
    for (p, n) in &attempted {
        let r = client
            .post(&url)
            .bearer_auth(&key)
            .json(&batch(*p, *n))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        for (i, e) in body["data"].as_array().unwrap().iter().enumerate() {
            if let Some(first) = acked.get(&format!("p{p}-b{n}-{i}")) {
                assert_eq!(
                    e["id"].as_str().unwrap(),
                    first,
                    "a retry returns the first event"
                );
            }
        }
    }
    let after = walk_all(&client, &server.public, &key).await;
    assert_eq!(
        after.len(),
        attempted.len() * BATCH,
        "exactly one event per idempotency key"
    );
    server.kill();
}
