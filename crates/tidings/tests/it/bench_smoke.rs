//! `tidings bench` with tiny sizes, so the harness cannot rot: on the embedded store, and on
//! the PostgreSQL pass with `--database-url` (scratch databases on the test cluster). Speed is
//! not asserted: only that every scenario and query shape ran and produced figures, and that
//! every webhook delivery arrived exactly once.

use std::process::Command;

use serde_json::Value;

use crate::harness::{Backend, admin_url, backend, skip_unless};

/// `--delivery-only` is the same code on either store; once is enough.
const ONCE: &str = "the delivery-only run is checked on the embedded pass";

/// Delivery scenarios small enough for a debug build: 200 events to one endpoint, 100 at
/// 200 events/s, and 20 events to each of 4 endpoints (then 3 healthy and 1 dead that
/// owes 50 events).
const TINY_DELIVERY: [&str; 16] = [
    "--delivery-events",
    "200",
    "--paced-rate",
    "200",
    "--paced-batch",
    "10",
    "--paced-seconds",
    "0.5",
    "--fanout-endpoints",
    "4",
    "--fanout-events",
    "20",
    "--dead-backlog",
    "50",
    "--delivery-deadline",
    "30",
];

/// Checks the delivery section: every scenario ran, and every delivery arrived once.
fn check_delivery(report: &Value) {
    let d = &report["delivery"];
    let expected = [
        ("throughput", 1, 0, 200, 100),
        ("paced", 1, 0, 100, 10),
        ("fanout_healthy", 4, 0, 20, 20),
        ("fanout_one_dead", 3, 1, 20, 20),
    ];
    for (name, endpoints, dead, events, batch) in expected {
        let s = &d[name];
        assert_eq!(s["scenario"], name, "{s}");
        assert_eq!(s["endpoints"], endpoints, "{s}");
        assert_eq!(s["dead_endpoints"], dead, "{s}");
        assert_eq!(s["events"], events, "{s}");
        assert_eq!(s["batch_size"], batch, "{s}");
        assert_eq!(s["expected"], events * endpoints, "{s}");
        assert_eq!(s["delivered"], s["expected"], "{s}");
        for field in ["missing", "duplicates", "unexpected"] {
            assert_eq!(s[field], 0, "{field}: {s}");
        }
        assert_eq!(s["timed_out"], false, "{s}");
        assert!(s["deliveries_per_second"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["ingest_events_per_second"].as_f64().unwrap() > 0.0, "{s}");
        let l = &s["latency_ms"];
        let (p50, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p99 && p99 <= max && max > 0.0, "{s}");
    }
    assert_eq!(d["paced"]["target_events_per_second"], 200.0);
    assert!(d["throughput"]["target_events_per_second"].is_null());
    assert_eq!(d["fanout_healthy"]["dead_backlog"], 0);
    assert_eq!(d["fanout_one_dead"]["dead_backlog"], 50);
    assert!(d["dead_endpoint_cost"].as_f64().unwrap().is_finite());
    if cfg!(target_os = "linux") {
        assert!(d["peak_memory_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn bench_runs_every_scenario_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let on_postgres = backend() == Backend::Postgres;
    let store: Vec<String> = if on_postgres {
        vec!["--database-url".into(), admin_url()]
    } else {
        Vec::new()
    };
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "bench",
            "--events",
            "2500",
            "--single-events",
            "200",
            "--batch-100-events",
            "1000",
            "--query-samples",
            "5",
            "--deep-pages",
            "2",
        ])
        .args(TINY_DELIVERY)
        .args(&store)
        .arg("--json")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run tidings bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    assert!(stderr.contains("events"), "progress is shown: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");

    let ingest = report["ingest"].as_array().expect("ingest results");
    let scenarios: Vec<&str> = ingest
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["batch_1", "batch_100", "batch_1000"]);
    let events: Vec<u64> = ingest
        .iter()
        .map(|s| s["events"].as_u64().unwrap())
        .collect();
    assert_eq!(events, [200, 1000, 2500]);
    for s in ingest {
        assert!(s["events_per_second"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    }
    assert_eq!(ingest[0]["producers"], 64);
    assert_eq!(report["baseline"]["events"], 2500);
    assert!(report["baseline"]["events_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["batch_1000_to_baseline"].as_f64().unwrap() > 0.0);

    let shapes: Vec<&str> = report["query"]
        .as_array()
        .expect("query results")
        .iter()
        .map(|q| {
            assert_eq!(q["samples"], 5, "{q}");
            assert!(q["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{q}");
            q["shape"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        shapes,
        [
            "org",
            "type",
            "subject_id",
            "subject_id_rare",
            "workspace_time_range",
            "deep_page",
            "order_asc"
        ]
    );
    // The seed organization has hundreds of events: its pages are full.
    assert_eq!(report["query"][0]["rows"], 100);
    assert!(
        report["query"][5]["description"]
            .as_str()
            .unwrap()
            .contains("page 3")
    );

    assert!(report["storage"]["bytes_per_event"].as_f64().unwrap() > 0.0);
    // The pages in use are in the database file or the WAL, never more than both.
    let data = report["storage"]["data_bytes"].as_u64().unwrap();
    let files = report["storage"]["bytes"].as_u64().unwrap();
    assert!(data > 0 && data <= files, "{data} of {files}");
    assert!(
        report["storage"]["baseline_bytes_per_event"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    if cfg!(target_os = "linux") {
        let whole = report["peak_memory_bytes"].as_u64().unwrap();
        let querying = report["query_peak_memory_bytes"].as_u64().unwrap();
        assert!(querying > 0 && querying <= whole, "{querying} of {whole}");
    }
    check_delivery(&report);
    assert_eq!(
        report["settings"]["store"],
        if on_postgres { "postgres" } else { "sqlite" }
    );
    // The temporary stores are removed: the directories, and the scratch databases.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    if on_postgres {
        let left = crate::harness::with_postgres(&admin_url(), |c| {
            c.query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'tidings_bench_%'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
        });
        assert_eq!(left, 0, "scratch databases left behind");
    }
}

#[test]
fn bench_delivery_only_skips_the_store_scenarios() {
    if skip_unless(Backend::Embedded, ONCE) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["bench", "--delivery-only"])
        .args(TINY_DELIVERY)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run tidings bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("Webhook delivery"), "{table}");
    assert!(
        table.contains("a dead endpoint (owing 50 deliveries when the run began) costs"),
        "{table}"
    );
    assert!(!table.contains("Ingest over HTTP"), "{table}");

    let output = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["bench", "--delivery-only", "--json"])
        .args(TINY_DELIVERY)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run tidings bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(report["ingest"].as_array().unwrap().len(), 0);
    assert_eq!(report["query"].as_array().unwrap().len(), 0);
    assert!(report["baseline"].is_null());
    assert!(report["storage"].is_null());
    check_delivery(&report);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
