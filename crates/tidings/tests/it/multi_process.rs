//! Two real `tidings serve` processes on one PostgreSQL database: both take ingest and
//! answer queries with the same results; while both live, each event reaches the webhook
//! exactly once; when one is killed with SIGKILL mid-delivery, the other attempts what the
//! dead one held once its leases run out, so every event still arrives (at least once).
//!
//! Only on the PostgreSQL backend: two processes cannot share one embedded (SQLite) store.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestStore, event, skip_unless};
use crate::process::{ServerProcess, create_key};
use crate::receiver::{Plan, Receiver};

const ORG: &str = "ORG-26-090500";
/// Events per phase, sent in batches of `BATCH`, alternately through the two processes.
const EVENTS: usize = 300;
const BATCH: usize = 20;
/// Short, so that the killed process's leases run out within the test; well above what
/// one attempt to the local receiver takes, so that no lease runs out in the happy path.
const LEASE: &str = "5s";
const WAIT: Duration = Duration::from_secs(60);

/// GET on a public API; the body of a 200.
async fn get(client: &reqwest::Client, base: &str, key: &str, path: &str) -> Value {
    let r = client
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET");
    let status = r.status();
    let body: Value = r.json().await.expect("JSON body");
    assert_eq!(status, StatusCode::OK, "{base}{path}: {body}");
    body
}

/// Every page of `path` (which has a query string), each page asked of the next of `bases`
/// in turn: with several, a cursor from one process must work on the other.
async fn walk(client: &reqwest::Client, bases: &[&str], key: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    for page in 0..1_000 {
        let base = bases[page % bases.len()];
        let body = get(client, base, key, &format!("{path}{cursor}")).await;
        items.extend(body["data"].as_array().expect("data").iter().cloned());
        match body["meta"]["cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return items,
        }
    }
    panic!("pagination did not end");
}

/// Ingests `EVENTS` events for `phase`, the batches alternately through each ingest port,
/// all at once; returns the recorded event IDs.
async fn ingest_alternately(
    client: &reqwest::Client,
    ingest: [&str; 2],
    key: &str,
    phase: usize,
) -> HashSet<String> {
    let mut sends = Vec::new();
    for b in 0..EVENTS / BATCH {
        let events: Vec<Value> = (0..BATCH)
            .map(|i| {
                event(
                    ORG,
                    json!({"payload": {"phase": phase, "n": b * BATCH + i}}),
                )
            })
            .collect();
        let request = client
            .post(format!("{}/internal/v1/events", ingest[b % 2]))
            .bearer_auth(key)
            .json(&json!({ "events": events }));
        sends.push(tokio::spawn(async move {
            let r = request.send().await.expect("ingest request");
            let status = r.status();
            let body: Value = r.json().await.expect("JSON body");
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>()
        }));
    }
    let mut ids = HashSet::new();
    for send in sends {
        ids.extend(send.await.expect("ingest task"));
    }
    assert_eq!(ids.len(), EVENTS, "one ID per event");
    ids
}

/// The webhook's delivery log through `base`: event ID -> (status, number of attempts).
async fn delivery_log(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    hook: &str,
) -> HashMap<String, (String, usize)> {
    let log = walk(
        client,
        &[base],
        key,
        &format!("/v1/webhooks/{hook}/deliveries?limit=100"),
    )
    .await;
    let mut by_event = HashMap::new();
    for d in log {
        let id = d["event_id"].as_str().expect("event_id").to_string();
        let entry = (
            d["status"].as_str().expect("status").to_string(),
            d["attempts"].as_array().expect("attempts").len(),
        );
        assert!(
            by_event.insert(id.clone(), entry).is_none(),
            "one delivery per event and webhook: {id}"
        );
    }
    by_event
}

/// Waits (bounded) until the delivery of each of `ids` has succeeded; returns the log.
async fn wait_until_delivered(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    hook: &str,
    ids: &HashSet<String>,
) -> HashMap<String, (String, usize)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = delivery_log(client, base, key, hook).await;
        let done = ids
            .iter()
            .filter(|id| log.get(*id).is_some_and(|(s, _)| s == "succeeded"))
            .count();
        if done == ids.len() {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}, {done} of {} deliveries succeeded",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Requests the receiver got per event ID (`webhook-id` is the event's ID).
fn received_counts(receiver: &Receiver, after: Option<Instant>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in receiver.deliveries() {
        if after.is_none_or(|t| r.at > t) {
            *counts.entry(r.header("webhook-id")).or_default() += 1;
        }
    }
    counts
}

/// Event numbers of the deliveries `pid`'s dispatcher holds a lease on. Reads the store's
/// tables: the dispatcher names its leases `<pid>-<random>`.
fn leased_by(store: &TestStore, pid: u32) -> Vec<u64> {
    let owner = format!("{pid}-%");
    store.postgres(|c| {
        c.query(
            "SELECT event_seq FROM deliveries
             WHERE lease_owner LIKE $1 AND status = 'pending' AND event_seq IS NOT NULL",
            &[&owner],
        )
        .expect("reading leases")
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
    })
}

/// The number in an event ID (`EVT-26-000042` -> 42).
fn event_number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an event ID: {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_ingest_queries_and_delivery_and_survive_one_being_killed() {
    if skip_unless(
        Backend::Postgres,
        "two processes cannot share one embedded (SQLite) store",
    ) {
        return;
    }
    let store = TestStore::new();
    let args = [
        "--allow-private-webhooks",
        "--webhook-lease",
        LEASE,
        "--rate-limit",
        "1000000",
        "--rate-limit-burst",
        "1000000",
    ];
    // Started together: both migrate the fresh database at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ServerProcess::start_with(&store, &args));
        let b = s.spawn(|| ServerProcess::start_with(&store, &args));
        (a.join().expect("start A"), b.join().expect("start B"))
    });
    let key = create_key(
        &store,
        &[
            "--org",
            ORG,
            "--scopes",
            "events:read,webhooks:read,webhooks:write",
        ],
    );
    let ingest_key = create_key(&store, &["--platform", "--scopes", "events:ingest"]);
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let created = client
        .post(format!("{}/v1/webhooks", a.public))
        .bearer_auth(&key)
        .json(&json!({"url": receiver.url, "event_types": ["*"]}))
        .send()
        .await
        .expect("create webhook");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("JSON body");
    assert_eq!(created["status"], "active", "{created}");
    let hook = created["id"].as_str().expect("id").to_string();

    // Phase 1: both processes ingest, answer queries and deliver.
    let phase1 = ingest_alternately(&client, [&a.ingest, &b.ingest], &ingest_key, 1).await;
    let events = format!("/v1/events?organization_id={ORG}&order=asc&limit=100");
    let via_a = walk(&client, &[&a.public], &key, &events).await;
    let via_b = walk(&client, &[&b.public], &key, &events).await;
    let via_both = walk(&client, &[&a.public, &b.public], &key, &events).await;
    assert_eq!(via_a.len(), EVENTS);
    assert!(via_a == via_b, "both processes serve the same events");
    assert!(
        via_a == via_both,
        "a cursor of one process works on the other"
    );
    let listed: HashSet<String> = via_a
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(listed, phase1, "exactly the ingested events");
    let numbers: Vec<u64> = via_a
        .iter()
        .map(|e| event_number(e["id"].as_str().expect("id")))
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "ascending order by event number"
    );

    // Once every delivery is recorded as succeeded no attempt is left to make: then each
    // event must have reached the endpoint exactly once, in one recorded attempt.
    let log = wait_until_delivered(&client, &b.public, &key, &hook, &phase1).await;
    let counts = received_counts(&receiver, None);
    for id in &phase1 {
        assert_eq!(counts.get(id), Some(&1), "{id} delivered exactly once");
        assert_eq!(log[id].1, 1, "{id}: one attempt");
    }
    assert_eq!(counts.len(), EVENTS, "nothing else was delivered");

    // Phase 2: a slow endpoint keeps attempts in flight; kill A while it holds leases.
    receiver.set_plan(Plan::Delay(Duration::from_millis(200)));
    let phase2 = ingest_alternately(&client, [&a.ingest, &b.ingest], &ingest_key, 2).await;
    let pid_a = a.child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leased_by(&store, pid_a).is_empty() {
        assert!(
            Instant::now() < deadline,
            "process A never held a delivery lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill();
    let killed_at = Instant::now();
    // Read at once: the leases run for LEASE and nothing else may take them before that.
    let stranded = leased_by(&store, pid_a);
    assert!(!stranded.is_empty(), "A held leases when it was killed");
    let by_number: HashMap<u64, &String> = phase2.iter().map(|id| (event_number(id), id)).collect();
    let stranded: HashSet<String> = stranded
        .iter()
        .map(|n| (*by_number.get(n).expect("a phase 2 event")).clone())
        .collect();

    // B delivers the rest and, once A's leases run out, what A held.
    let log = wait_until_delivered(&client, &b.public, &key, &hook, &phase2).await;
    let counts = received_counts(&receiver, None);
    for id in &phase2 {
        assert!(
            counts.get(id).is_some_and(|n| *n >= 1),
            "{id} delivered at least once"
        );
        assert_eq!(log[id].0, "succeeded");
    }
    let after_kill = received_counts(&receiver, Some(killed_at));
    for id in &stranded {
        assert!(
            after_kill.contains_key(id),
            "{id}, leased by the killed process, was delivered again by the other"
        );
    }
    let duplicates = phase2.iter().filter(|id| counts[*id] > 1).count();
    eprintln!(
        "multi-process: A held {} leases when killed; {duplicates} of {EVENTS} phase 2 events \
         arrived more than once",
        stranded.len()
    );
    let after = walk(&client, &[&b.public], &key, &events).await;
    assert_eq!(
        after.len(),
        2 * EVENTS,
        "every event of both phases is kept"
    );
}
