//! SPEC §6 and §14: `tidings keys` and `tidings emit` against a running server.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::TestStore;
use crate::process::{ServerProcess, create_key, tidings, tidings_on};

#[tokio::test]
async fn keys_created_and_revoked_while_the_server_runs_take_effect_at_once() {
    let store = TestStore::new();
    let server = ServerProcess::start(&store);
    let client = reqwest::Client::new();
    let key = create_key(
        &store,
        &["--org", "ORG-26-090500", "--scopes", "events:read"],
    );
    let url = format!("{}/v1/events?organization_id=ORG-26-090500", server.public);
    let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let (ok, listing, _) = tidings_on(&store, &["keys", "list"]);
    assert!(ok);
    assert!(!listing.contains(&key), "secrets are never listed");
    let line = listing
        .lines()
        .find(|l| l.contains("ORG-26-090500"))
        .expect("the key is listed");
    let id = line.split_whitespace().next().unwrap();
    assert!(id.starts_with("KEY-"), "{line}");

    let (ok, _, stderr) = tidings_on(&store, &["keys", "revoke", id]);
    assert!(ok, "{stderr}");
    let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let (ok, _, stderr) = tidings_on(&store, &["keys", "revoke", "KEY-26-999999"]);
    assert!(!ok);
    assert!(stderr.contains("no key"), "{stderr}");
    // Org keys cannot ingest; unknown scopes are refused.
    for (scopes, expected) in [
        ("events:ingest", "--platform"),
        ("events:write", "unknown scope"),
    ] {
        let (ok, _, stderr) = tidings_on(
            &store,
            &[
                "keys",
                "create",
                "--org",
                "ORG-26-090500",
                "--scopes",
                scopes,
            ],
        );
        assert!(!ok, "{scopes}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn emit_sends_events_from_flags_files_and_ndjson() {
    let store = TestStore::new();
    let server = ServerProcess::start(&store);
    let key = create_key(
        &store,
        &["--platform", "--scopes", "events:ingest,events:read"],
    );

    let (ok, out, err) = tidings(&[
        "emit",
        "--ingest-url",
        &server.ingest,
        "--key",
        &key,
        "--type",
        "invoice.paid",
        "--org",
        "ORG-26-090500",
        "--workspace",
        "WS-26-000021",
        "--actor",
        "system:billing",
        "--subject",
        "invoice:INV-26-000001",
        "--payload",
        r#"{"amount_paid": 1200}"#,
        "--idempotency-key",
        "inv-1-paid",
    ]);
    assert!(ok, "{err}");
    let recorded: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(recorded["payload"]["amount_paid"], 1200);

    let ndjson = store.path().join("events.ndjson");
    let line = r#"{"type":"task.created","organization_id":"ORG-26-090500","actor":{"type":"user","id":"u1"},"subject":{"type":"task","id":"t1"},"payload":{}}"#;
    std::fs::write(&ndjson, format!("{line}\n").repeat(1_500)).unwrap();
    let (ok, out, err) = tidings(&[
        "emit",
        "--ingest-url",
        &server.ingest,
        "--key",
        &key,
        "--ndjson",
        ndjson.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1_500);
    assert!(err.contains("1500/1500"), "progress is shown: {err}");

    let bad = store.path().join("bad.json");
    std::fs::write(&bad, r#"{"type":"invoice.nope"}"#).unwrap();
    let (ok, _, err) = tidings(&[
        "emit",
        "--ingest-url",
        &server.ingest,
        "--key",
        &key,
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("422") && err.contains("invoice.nope"), "{err}");
}

#[tokio::test]
async fn events_list_and_get_read_a_running_server() {
    let store = TestStore::new();
    let server = ServerProcess::start(&store);
    let ingest = create_key(&store, &["--platform", "--scopes", "events:ingest"]);
    let key = create_key(
        &store,
        &["--org", "ORG-26-090500", "--scopes", "events:read"],
    );
    let (ok, out, err) = tidings(&[
        "emit",
        "--ingest-url",
        &server.ingest,
        "--key",
        &ingest,
        "--type",
        "invoice.paid",
        "--org",
        "ORG-26-090500",
        "--actor",
        "system:billing",
        "--subject",
        "invoice:INV-26-000009",
    ]);
    assert!(ok, "{err}");
    let recorded: Value = serde_json::from_str(out.trim()).unwrap();
    let id = recorded["id"].as_str().unwrap();

    let (ok, table, err) = tidings(&[
        "events",
        "list",
        "--url",
        &server.public,
        "--key",
        &key,
        "--org",
        "ORG-26-090500",
        "--type",
        "invoice.*",
    ]);
    assert!(ok, "{err}");
    assert!(
        table.contains(id) && table.contains("invoice:INV-26-000009"),
        "{table}"
    );
    let (ok, json, _) = tidings(&[
        "events",
        "list",
        "--url",
        &server.public,
        "--key",
        &key,
        "--org",
        "ORG-26-090500",
        "--json",
    ]);
    assert!(ok);
    let page: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["data"][0]["id"], id);

    let (ok, one, _) = tidings(&["events", "get", id, "--url", &server.public, "--key", &key]);
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), recorded);
    // Errors carry the API's message and a failing exit code.
    let (ok, _, err) = tidings(&[
        "events",
        "list",
        "--url",
        &server.public,
        "--key",
        &key,
        "--org",
        "ORG-26-090501",
    ]);
    assert!(!ok);
    assert!(
        err.contains("403") && err.contains("another organization"),
        "{err}"
    );
}
