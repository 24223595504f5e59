//! PostgreSQL keeps events and deliveries in daily partitions: the coming days' exist ahead
//! of time, and retention drops whole days (issue 5). Needs the test cluster of
//! `./scripts/test`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use postgres::{Client, NoTls};
use tidings_store::{Clock, ManualClock, PostgresStore, RetentionPolicy, Store};

/// The days (`YYYYMMDD`) that have a partition of `table`.
fn partition_days(url: &str, table: &str) -> BTreeSet<String> {
    let (url, table) = (url.to_string(), table.to_string());
    std::thread::spawn(move || {
        let mut c = Client::connect(&url, NoTls).expect("connect");
        c.query(
            "SELECT child.relname::text FROM pg_inherits
             JOIN pg_class child ON child.oid = pg_inherits.inhrelid
             WHERE pg_inherits.inhparent = $1::text::regclass",
            &[&table],
        )
        .expect("list partitions")
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            name.trim_start_matches(&format!("{table}_")).to_string()
        })
        .collect()
    })
    .join()
    .expect("partition listing")
}

fn days(from: DateTime<Utc>, n: i64) -> BTreeSet<String> {
    (0..n)
        .map(|d| (from + Duration::days(d)).format("%Y%m%d").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_exist_ahead_of_time_and_retention_drops_whole_days() {
    let url = common::fresh_database("tidings_partitions");
    let start: DateTime<Utc> = "2026-04-14T12:00:00Z".parse().expect("time");
    let clock = Arc::new(ManualClock::new(start));
    let store =
        PostgresStore::connect_with_clock(&url, clock.clone() as Arc<dyn Clock>).expect("store");

    // Start-up: today and the next 7 days, for both partitioned tables.
    for table in ["events", "deliveries"] {
        assert_eq!(partition_days(&url, table), days(start, 8), "{table}");
    }

    // 100 days later, one sweep: the days of events older than 90 days are gone (so the
    // whole first week), and the coming week exists.
    clock.advance(Duration::days(100));
    let policy = RetentionPolicy::default();
    store.sweep_retention(policy, 1_000).await.expect("sweep");
    let now = clock.now();
    let events = partition_days(&url, "events");
    assert!(
        days(now, 8).is_subset(&events),
        "the coming week: {events:?}"
    );
    assert!(
        events.iter().all(|d| d.as_str()
            >= (now - Duration::days(91))
                .format("%Y%m%d")
                .to_string()
                .as_str()),
        "only days within 90 days (and the one straddling the cutoff) are kept: {events:?}"
    );
    // Deliveries keep 30 days: every partition of the first week is gone.
    let deliveries = partition_days(&url, "deliveries");
    assert!(deliveries.is_disjoint(&days(start, 8)), "{deliveries:?}");
    assert!(days(now, 8).is_subset(&deliveries), "{deliveries:?}");
}
