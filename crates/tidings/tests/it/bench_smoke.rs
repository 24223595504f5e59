//! `tidings bench` with tiny sizes, so the harness cannot rot. Speed is not asserted: only
//! that every scenario and query shape ran and produced figures.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_runs_every_scenario_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
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
            "--json",
        ])
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
            "workspace_time_range",
            "deep_page",
            "order_asc"
        ]
    );
    // The seed organization has hundreds of events: its pages are full.
    assert_eq!(report["query"][0]["rows"], 100);
    assert!(
        report["query"][4]["description"]
            .as_str()
            .unwrap()
            .contains("page 3")
    );

    assert!(report["storage"]["bytes_per_event"].as_f64().unwrap() > 0.0);
    assert!(
        report["storage"]["baseline_bytes_per_event"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    if cfg!(target_os = "linux") {
        assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
    }
    // The temporary stores are removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
