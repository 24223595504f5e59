//! How writes are ordered and grouped, on both stores. SPEC §8 on PostgreSQL: an
//! oldest-first reader never skips an event whose transaction commits after a higher number
//! is visible. And on both: ingest requests written in one group are still checked and
//! answered one by one. The PostgreSQL tests need a server: `./scripts/test` starts one and
//! sets `TIDINGS_TEST_POSTGRES_URL` (an admin URL); each test makes its own database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use postgres::{Client, NoTls};
use tidings_domain::audit::{AuditActor, AuditContext, ChainedRecord, verify_chain};
use tidings_domain::{
    Catalog, Event, EventFilter, IngestFormat, NewEvent, Order, OrgId, Tenant, WorkspaceId,
    parse_ingest_body,
};
use tidings_store::postgres::WRITE_LOCK;
use tidings_store::{PageRequest, PostgresStore, SqliteStore, Store, StoreError};

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
    let url = common::fresh_database("tidings_order");
    let a = PostgresStore::connect(&url).expect("store a");
    let b = PostgresStore::connect(&url).expect("store b");
    let org: OrgId = "ORG-26-000001".parse().expect("org");
    let first = a
        .ingest(events("ORG-26-000001", 1), &AuditContext::system())
        .await
        .expect("first ingest");
    let n1 = first[0].id.number;

    // The slow writer: takes the write lock and event number n1 + 1, commits later.
    let slow_url = url.to_string();
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
    let url = common::fresh_database("tidings_order");
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

/// One event as an NDJSON line, optionally naming a workspace and an idempotency key.
fn line(org: &str, workspace: Option<&str>, key: Option<&str>, n: usize) -> String {
    let mut extra = String::new();
    if let Some(ws) = workspace {
        extra.push_str(&format!(r#","workspace_id":"{ws}""#));
    }
    if let Some(k) = key {
        extra.push_str(&format!(r#","idempotency_key":"{k}""#));
    }
    format!(
        r#"{{"type":"service_line.activated","organization_id":"{org}"{extra},"actor":{{"type":"user","id":"USR-26-000001"}},"subject":{{"type":"service_line","id":"LIN-26-{n:06}"}},"payload":{{"n":{n}}}}}"#
    )
}

fn batch(lines: &[String]) -> Vec<NewEvent> {
    parse_ingest_body(
        lines.join("\n").as_bytes(),
        IngestFormat::Ndjson,
        &Catalog::builtin(),
    )
    .expect("valid events")
}

/// The audit context of request `i`: its request ID tells its records apart.
fn request(i: usize) -> AuditContext {
    AuditContext {
        actor: AuditActor {
            actor_type: "api_key".into(),
            id: "KEY-26-000001".into(),
        },
        request_id: Some(format!("req-{i}")),
        source_ip: None,
        user_agent: None,
    }
}

/// Every audit chain, verified the way `tidings audit verify` does: one pass over the log.
async fn verified_audit_records(store: &impl Store) -> Vec<ChainedRecord> {
    let mut chains: BTreeMap<String, Vec<ChainedRecord>> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store.audit_log_page(after, 50).await.expect("log page");
        let Some((_, last)) = page.last() else { break };
        after = Some(last.record.id.number);
        for (chain, record) in page {
            chains.entry(chain).or_default().push(record);
        }
    }
    let mut all = Vec::new();
    for (chain, records) in chains {
        let start = store.audit_chain_start(&chain).await.expect("chain start");
        let problems = verify_chain(start, &records);
        assert!(problems.is_empty(), "chain {chain}: {problems:?}");
        all.extend(records);
    }
    all
}

/// Concurrent single-event ingests fused into one write group are still checked and
/// answered one by one: a workspace conflict rejects only its own request, the first request
/// naming a new workspace claims it, repeated idempotency keys (within the group, within a
/// request, or of an earlier group) yield the event first recorded, numbers stay dense, and
/// every request gets its own audit record on intact chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_ingest_requests_are_checked_and_answered_one_by_one() {
    let url = common::fresh_database("tidings_order");
    let store = Arc::new(PostgresStore::connect(&url).expect("store"));
    // Hold the write lock so the requests pile up and the writer fuses them.
    let lock_url = url.to_string();
    let hold = move || {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut c = Client::connect(&lock_url, NoTls).expect("connect");
            let mut tx = c.transaction().expect("begin");
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .expect("lock");
            locked_tx.send(()).expect("report");
            release_rx.recv().expect("wait for the go");
            tx.commit().expect("commit");
        });
        locked_rx.recv().expect("lock taken");
        (release_tx, holder)
    };
    one_group_of_ingest_requests(store, hold).await;
}

/// The same on the embedded store, where ingest requests run without a savepoint each: a
/// rejected one must have written nothing, and the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ingest_requests_of_one_group_are_checked_one_by_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
    let file = store.path().to_path_buf();
    // Hold SQLite's write lock from another connection so the requests pile up.
    let hold = move || {
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&file).expect("open");
            c.execute_batch("BEGIN IMMEDIATE").expect("lock");
            locked_tx.send(()).expect("report");
            release_rx.recv().expect("wait for the go");
            c.execute_batch("COMMIT").expect("commit");
        });
        locked_rx.recv().expect("lock taken");
        (release_tx, holder)
    };
    one_group_of_ingest_requests(store, hold).await;
}

/// 64 ingest requests sent while `hold` keeps the store from writing, then let go.
async fn one_group_of_ingest_requests<S: Store>(
    store: Arc<S>,
    hold: impl FnOnce() -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
) {
    const A: &str = "ORG-26-000011";
    const B: &str = "ORG-26-000012";
    const OWNED: &str = "WS-26-000001";
    const CLAIMED: &str = "WS-26-000002";
    // Stored before: OWNED belongs to A, and A's key "old" names event 1.
    let before = store
        .ingest(
            batch(&[line(A, Some(OWNED), Some("old"), 0)]),
            &request(1000),
        )
        .await
        .expect("first ingest");
    assert_eq!(before[0].id.number, 1);

    let mut requests: Vec<Vec<NewEvent>> = Vec::new();
    // 0: B names A's workspace.
    requests.push(batch(&[line(B, Some(OWNED), None, 1)]));
    // 1..=8: one key, eight times.
    for i in 1..=8 {
        requests.push(batch(&[line(A, Some(OWNED), Some("dup"), 100 + i)]));
    }
    // 9..=11: the key of event 1.
    for i in 9..=11 {
        requests.push(batch(&[line(A, None, Some("old"), 100 + i)]));
    }
    // 12, 13: A and B race for a new workspace.
    requests.push(batch(&[line(A, Some(CLAIMED), None, 112)]));
    requests.push(batch(&[line(B, Some(CLAIMED), None, 113)]));
    // 14: several events, two organizations, a key repeated inside the request and later.
    requests.push(batch(&[
        line(A, None, Some("dup2"), 114),
        line(A, None, Some("dup2"), 115),
        line(B, None, None, 116),
    ]));
    requests.push(batch(&[line(A, None, Some("dup2"), 117)]));
    // The rest: plain single events.
    for i in requests.len()..64 {
        let org = if i % 2 == 0 { A } else { B };
        requests.push(batch(&[line(org, None, None, 100 + i)]));
    }

    let (release_tx, holder) = hold();
    let tasks: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, events)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.ingest(events, &request(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release_tx.send(()).expect("go");
    holder.join().expect("lock holder");
    let mut results: Vec<Result<Vec<Event>, StoreError>> = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join"));
    }

    // The conflict is rejected alone, with its own index.
    match &results[0] {
        Err(StoreError::Rejected(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].index, 0);
            assert_eq!(problems[0].field, "workspace_id");
        }
        other => panic!("request 0 should be rejected: {other:?}"),
    }
    // One of the two claims wins; the workspace is the winner's.
    let claims = [&results[12], &results[13]];
    let winners: Vec<usize> = (0..2).filter(|i| claims[*i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let loser = 1 - winners[0];
    assert!(
        matches!(claims[loser], Err(StoreError::Rejected(p)) if p.len() == 1 && p[0].index == 0),
        "{:?}",
        claims[loser]
    );
    let owner = store
        .workspace_org(&CLAIMED.parse::<WorkspaceId>().expect("ws"))
        .await
        .expect("owner")
        .expect("claimed");
    assert_eq!(owner.as_str(), if winners[0] == 0 { A } else { B });
    let rejected: BTreeSet<usize> = [0, 12 + loser].into();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), rejected.contains(&i), "request {i}: {r:?}");
    }
    let ok = |i: usize| results[i].as_ref().expect("accepted");

    // Repeats within the group: one event, the same for all.
    let dup = &ok(1)[0];
    for i in 1..=8 {
        let e = &ok(i)[0];
        assert_eq!((e.id, e.payload.get()), (dup.id, dup.payload.get()));
    }
    // Repeats of an earlier group: the stored event.
    for i in 9..=11 {
        let e = &ok(i)[0];
        assert_eq!(e.id, before[0].id);
        assert_eq!(e.payload.get(), before[0].payload.get());
    }
    // Within one request and after it.
    let multi = ok(14);
    assert_eq!(multi.len(), 3);
    assert_eq!(multi[0].id, multi[1].id);
    assert_ne!(multi[0].id, multi[2].id);
    assert_eq!(ok(15)[0].id, multi[0].id);

    // Numbers: dense from 1, each stored once.
    let mut numbers: BTreeSet<u64> = BTreeSet::from([1]);
    for e in results.iter().flatten().flatten() {
        numbers.insert(e.id.number);
    }
    let n = numbers.len() as u64;
    assert_eq!(numbers, (1..=n).collect::<BTreeSet<u64>>());
    assert_eq!(store.high_water_mark().await.expect("hwm"), n);
    // 64 requests less 2 rejected, less 7 + 3 repeats, plus two extra events in request 14,
    // less its repeat and request 15, plus the first event.
    assert_eq!(n, 64 - 2 - 7 - 3 + 2 - 1 - 1 + 1);
    let mut stored = 0;
    for org in [A, B] {
        let org: OrgId = org.parse().expect("org");
        let page = store
            .list_events(
                &Tenant::Platform,
                &EventFilter {
                    organization_id: Some(org),
                    ..EventFilter::default()
                },
                PageRequest {
                    limit: 200,
                    order: Order::Asc,
                    after: None,
                },
            )
            .await
            .expect("list events");
        stored += page.items.len() as u64;
    }
    assert_eq!(stored, n);

    // Audit: intact chains, dense numbers, one record per organization of each accepted
    // request, under that request's own context; none for the rejected ones.
    let records = verified_audit_records(store.as_ref()).await;
    let audit_numbers: BTreeSet<u64> = records.iter().map(|r| r.record.id.number).collect();
    assert_eq!(
        audit_numbers,
        (1..=records.len() as u64).collect::<BTreeSet<u64>>()
    );
    for (i, r) in results.iter().enumerate() {
        let id = format!("req-{i}");
        let mine: Vec<&ChainedRecord> = records
            .iter()
            .filter(|c| c.record.request_id.as_deref() == Some(id.as_str()))
            .collect();
        match r {
            Err(_) => assert!(mine.is_empty(), "request {i}: {mine:?}"),
            Ok(events) => {
                let orgs: BTreeSet<&str> =
                    events.iter().map(|e| e.organization_id.as_str()).collect();
                assert_eq!(mine.len(), orgs.len(), "request {i}");
                for c in mine {
                    assert_eq!(c.record.action, "events.ingested");
                    let org = c.record.organization_id.as_ref().expect("org");
                    let first = events
                        .iter()
                        .filter(|e| e.organization_id == *org)
                        .map(|e| e.id)
                        .min_by_key(|id| id.number)
                        .expect("an event of that organization");
                    assert_eq!(c.record.resource.id, first.to_string(), "request {i}");
                }
            }
        }
    }
}
