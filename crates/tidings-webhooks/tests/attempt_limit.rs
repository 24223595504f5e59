//! The process-wide attempt limit holds an attempt until its outcome is recorded, so a
//! writer that cannot keep up slows the claims down instead of letting attempt reports
//! pile up in memory (and outlive their leases). On PostgreSQL, claims run outside the
//! write lock while reports go through it, so holding that lock from another connection
//! stalls the reports and nothing else. Needs the test cluster of `./scripts/test`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use postgres::{Client, NoTls};
use tidings_domain::audit::AuditContext;
use tidings_domain::webhook::{SigningSecret, WebhookStatus};
use tidings_domain::{Catalog, IngestFormat, TypePattern, parse_ingest_body};
use tidings_store::postgres::{WRITE_LOCK, create_database, drop_database};
use tidings_store::{Clock, NewWebhook, PostgresStore, Store, SystemClock};
use tidings_webhooks::{Dispatcher, DispatcherConfig, WebhookClient};
use tokio::sync::{Notify, watch};

const ORG: &str = "ORG-26-000101";
const EVENTS: usize = 24;
const LIMIT: usize = 4;

/// The `webhook-id` of every request received, in order.
type Received = Arc<Mutex<Vec<String>>>;

async fn start_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| async move {
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            log.lock().expect("receiver log").push(id);
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn count(received: &Received) -> usize {
    received.lock().expect("receiver log").len()
}

/// Waits (at most `limit`) until `received` holds `n` requests; returns how many it holds.
async fn wait_for(received: &Received, n: usize, limit: Duration) -> usize {
    let start = Instant::now();
    while count(received) < n && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    count(received)
}

/// Takes the write lock on another connection until `release` is sent.
fn hold_write_lock(url: String) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut c = Client::connect(&url, NoTls).expect("connect");
        let mut tx = c.transaction().expect("begin");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .expect("lock");
        locked_tx.send(()).expect("report");
        let _ = release_rx.recv();
        tx.commit().expect("commit");
    });
    locked_rx.recv().expect("lock taken");
    (release_tx, holder)
}

/// Drops the test's database when the test ends, also when it fails.
struct DropDatabase {
    admin: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        // On a thread of its own: the synchronous driver must not run on the runtime's.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || drop_database(&admin, &name)).join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_waiting_to_be_recorded_count_against_the_limit() {
    let admin = std::env::var("TIDINGS_TEST_POSTGRES_URL").expect(
        "TIDINGS_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL",
    );
    let name = format!("tidings_attempts_{}", rand::random::<u32>());
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TIDINGS_TEST_POSTGRES_URL must end in /<database>"),
    };
    // The synchronous driver runs off the async threads.
    let (a, n) = (admin.clone(), name.clone());
    tokio::task::spawn_blocking(move || create_database(&a, &n))
        .await
        .expect("join")
        .expect("create the database");
    let _cleanup = DropDatabase {
        admin: admin.clone(),
        name: name.clone(),
    };

    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).expect("store"));
    let (hook_url, received) = start_receiver().await;
    store
        .create_webhook(
            NewWebhook {
                organization_id: ORG.parse().expect("org"),
                workspace_id: None,
                url: hook_url,
                event_types: vec![TypePattern::All],
                description: None,
                status: (WebhookStatus::Active, None),
            },
            SigningSecret::from_random([7; 24]),
            &AuditContext::system(),
        )
        .await
        .expect("webhook");
    let body: Vec<String> = (0..EVENTS)
        .map(|i| {
            format!(
                r#"{{"type":"service_line.activated","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"service_line","id":"LIN-26-{i:06}"}},"payload":{{}}}}"#
            )
        })
        .collect();
    let body = format!(r#"{{"events": [{}]}}"#, body.join(","));
    let events = parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin())
        .expect("valid events");
    store
        .ingest(events, &AuditContext::system())
        .await
        .expect("ingest");
    // Deliveries exist before the writer is stalled.
    let fanned = store.fan_out(1_000).await.expect("fan-out");
    assert_eq!(fanned.deliveries_created, EVENTS);

    let lock_url = url.clone();
    let (release, holder) = tokio::task::spawn_blocking(move || hold_write_lock(lock_url))
        .await
        .expect("join");
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = Dispatcher::new(
        Arc::clone(&store),
        WebhookClient::new(true).expect("client"),
        Arc::new(SystemClock) as Arc<dyn Clock>,
        DispatcherConfig {
            per_endpoint: 16,
            max_in_flight: LIMIT,
            poll: Duration::from_millis(50),
            ..DispatcherConfig::default()
        },
        Arc::new(Notify::new()),
    );
    let running = tokio::spawn(dispatcher.run(stop_rx));

    // The endpoint answers at once and has 16 slots; only the limit holds the claims back.
    assert_eq!(
        wait_for(&received, LIMIT, Duration::from_secs(10)).await,
        LIMIT
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&received),
        LIMIT,
        "attempts were started while {LIMIT} outcomes were still unrecorded"
    );

    release.send(()).expect("release the lock");
    tokio::task::spawn_blocking(move || holder.join())
        .await
        .expect("join")
        .expect("lock holder");
    assert_eq!(
        wait_for(&received, EVENTS, Duration::from_secs(20)).await,
        EVENTS
    );
    let distinct: HashSet<String> = received.lock().expect("log").iter().cloned().collect();
    assert_eq!(distinct.len(), EVENTS, "each delivery sent once");

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
}
