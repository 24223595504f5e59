//! SPEC §8 on PostgreSQL: an oldest-first reader never skips an event whose transaction
//! commits after a higher number is visible. Needs a PostgreSQL server: `./scripts/test`
//! starts one and sets `TIDINGS_TEST_POSTGRES_URL` (an admin URL); each test makes its own
//! database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::{Client, NoTls};
use rand::Rng;
use tidings_domain::audit::AuditContext;
use tidings_domain::{
    Catalog, EventFilter, IngestFormat, NewEvent, Order, OrgId, Tenant, parse_ingest_body,
};
use tidings_store::postgres::WRITE_LOCK;
use tidings_store::{PageRequest, PostgresStore, Store};

/// A fresh database on the test cluster; returns its URL.
fn fresh_database() -> String {
    let admin = std::env::var("TIDINGS_TEST_POSTGRES_URL").expect(
        "TIDINGS_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL",
    );
    let name = format!("tidings_order_{}", rand::rng().random::<u32>());
    std::thread::spawn({
        let (admin, name) = (admin.clone(), name.clone());
        move || {
            let mut c = Client::connect(&admin, NoTls).expect("connect to the test cluster");
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create a test database");
        }
    })
    .join()
    .expect("database setup");
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TIDINGS_TEST_POSTGRES_URL must end in /<database>"),
    }
}

fn events(org: &str, n: usize) -> Vec<NewEvent> {
    let body: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"type":"service_line.activated","organization_id":"{org}","actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"service_line","id":"LIN-26-{i:06}"}},"payload":{{"n":{i}}}}}"#
            )
        })
        .collect();
    parse_ingest_body(
        body.join("\n").as_bytes(),
        IngestFormat::Ndjson,
        &Catalog::builtin(),
    )
    .expect("valid events")
}

async fn read_after(store: &PostgresStore, org: &OrgId, after: Option<u64>) -> Vec<u64> {
    let filter = EventFilter {
        organization_id: Some(org.clone()),
        ..EventFilter::default()
    };
    let page = store
        .list_events(
            &Tenant::Org(org.clone()),
            &filter,
            PageRequest {
                limit: 100,
                order: Order::Asc,
                after,
            },
        )
        .await
        .expect("list events");
    page.items.iter().map(|e| e.id.number).collect()
}

/// A writer of another process that has taken the next number but not committed holds back
/// every higher number: the events of a later write become visible only after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_never_skipped() {
    let url = fresh_database();
    let a = PostgresStore::connect(&url).expect("store a");
    let b = PostgresStore::connect(&url).expect("store b");
    let org: OrgId = "ORG-26-000001".parse().expect("org");
    let first = a
        .ingest(events("ORG-26-000001", 1), &AuditContext::system())
        .await
        .expect("first ingest");
    let n1 = first[0].id.number;

    // The slow writer: takes the write lock and event number n1 + 1, commits later.
    let slow_url = url.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<()>();
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(&slow_url, NoTls).expect("connect");
        let mut tx = c.transaction().expect("begin");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .expect("lock");
        let seq: i64 = tx
            .query_one(
                "UPDATE id_sequences SET last = last + 1 WHERE prefix = 'EVT' RETURNING last",
                &[],
            )
            .expect("mint")
            .get(0);
        tx.execute(
            "INSERT INTO events (seq, org, type, actor_type, actor_id, subject_type, subject_id,
                                 payload, created_at)
             VALUES ($1, 'ORG-26-000001', 'service_line.activated', 'user', 'USR-26-000001',
                     'service_line', 'LIN-26-999999', '{}',
                     (SELECT last_created_at FROM event_clock))",
            &[&seq],
        )
        .expect("insert");
        locked_tx.send(seq as u64).expect("report");
        commit_rx.recv().expect("wait for the go");
        tx.commit().expect("commit");
    });
    let slow_seq = locked_rx.recv().expect("slow writer started");
    assert_eq!(slow_seq, n1 + 1);

    // A write through store B, meanwhile: it must wait for the slow writer.
    let b = Arc::new(b);
    let later = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            b.ingest(events("ORG-26-000001", 1), &AuditContext::system())
                .await
                .expect("later ingest")
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !later.is_finished(),
        "a later write committed while a lower number was still open"
    );
    assert_eq!(read_after(&a, &org, Some(n1)).await, Vec::<u64>::new());
    assert_eq!(a.high_water_mark().await.expect("hwm"), n1);

    commit_tx.send(()).expect("go");
    slow.join().expect("slow writer");
    let later = later.await.expect("join");
    assert_eq!(later[0].id.number, n1 + 2);
    assert_eq!(read_after(&a, &org, Some(n1)).await, vec![n1 + 1, n1 + 2]);
}

/// Two stores (two processes) ingest concurrently while a reader walks oldest-first from
/// where it stopped: what it reads, concatenated, is every number exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oldest_first_walk_during_concurrent_ingest_sees_every_event_once() {
    let url = fresh_database();
    let stores = [
        Arc::new(PostgresStore::connect(&url).expect("store a")),
        Arc::new(PostgresStore::connect(&url).expect("store b")),
    ];
    let org: OrgId = "ORG-26-000002".parse().expect("org");
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = Arc::clone(&stores[w % 2]);
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            for i in 0..25 {
                let batch = events("ORG-26-000002", 1 + (i + w) % 4);
                n += store
                    .ingest(batch, &AuditContext::system())
                    .await
                    .expect("ingest")
                    .len();
            }
            n
        }));
    }
    let reader = tokio::spawn({
        let store = Arc::clone(&stores[1]);
        let org = org.clone();
        let done = Arc::clone(&done);
        async move {
            let mut seen = Vec::new();
            // Bounded: stops once the writers are done and a last read finds nothing new.
            for _ in 0..100_000 {
                let finished = done.load(Ordering::SeqCst);
                let page = read_after(&store, &org, seen.last().copied()).await;
                if page.is_empty() && finished {
                    break;
                }
                seen.extend(page);
            }
            seen
        }
    });
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seen, expected, "the walk skipped or repeated an event");
}
