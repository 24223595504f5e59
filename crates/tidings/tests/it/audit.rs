//! SPEC §11: every write through the API and every ingest batch is in the audit log, with
//! who, what, from where, and what changed; chains verify, and tampering is named.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tidings_domain::Scope;

use crate::harness::{Backend, TestApp, TestStore, assert_error, backend, event};
use crate::process::tidings_on;
use crate::receiver::Receiver;
use crate::webhooks::ORG;

const OTHER: &str = "ORG-26-090501";

#[tokio::test]
async fn every_write_is_audited_once_with_its_fields_and_no_secrets() {
    let app = TestApp::spawn_for_webhooks("50ms").await;
    let receiver = Receiver::start().await;
    let key = app
        .org_key(
            ORG,
            &[
                Scope::WebhooksRead,
                Scope::WebhooksWrite,
                Scope::AuditLogsRead,
                Scope::EventsRead,
            ],
        )
        .await;
    let key_id = app
        .store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|k| k.id.number)
        .unwrap()
        .id
        .to_string();

    // Create, capturing the request id.
    let response = app
        .client
        .post(format!("{}/v1/webhooks", app.public))
        .bearer_auth(&key)
        .json(&json!({"url": receiver.url, "event_types": ["*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let create_request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let hook: Value = response.json().await.unwrap();
    let id = hook["id"].as_str().unwrap().to_string();
    let first_secret = hook["secret"].as_str().unwrap().to_string();

    app.ingest(&[
        event(ORG, json!({})),
        event(OTHER, json!({})),
        event(ORG, json!({})),
    ])
    .await;
    receiver.wait_for(2, Duration::from_secs(20)).await;
    let mut delivery = Value::Null;
    for _ in 0..500 {
        let (_, log) = app
            .get(&key, &format!("/v1/webhooks/{id}/deliveries"))
            .await;
        if log["data"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|x| x["status"] == "succeeded"))
        {
            delivery = log["data"][0]["id"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivery = delivery.as_str().expect("deliveries done").to_string();

    let path = format!("/v1/webhooks/{id}");
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::PATCH,
            path.clone(),
            Some(json!({"description": "billing sync"})),
        ),
        (Method::POST, format!("{path}/rotate-secret"), None),
        (Method::POST, format!("{path}/test"), None),
        (
            Method::POST,
            format!("{path}/replay"),
            Some(json!({"from": "2020-01-01"})),
        ),
        (
            Method::POST,
            format!("{path}/deliveries/{delivery}/retry"),
            None,
        ),
    ];
    let mut rotated_secret = String::new();
    for (method, p, body) in calls {
        let (status, b) = app.send(method, &key, &p, body).await;
        assert!(status.is_success(), "{p}: {b}");
        if let Some(s) = b["secret"].as_str() {
            rotated_secret = s.to_string();
        }
    }
    let (status, _) = app.send(Method::DELETE, &key, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    let (new_key, new_secret) = tidings::keys::create(
        app.store.as_ref(),
        Some(ORG.parse().unwrap()),
        vec![Scope::EventsRead],
        None,
        None,
    )
    .await
    .unwrap();
    tidings::keys::revoke(app.store.as_ref(), &new_key.id.to_string())
        .await
        .unwrap();

    let records = app.walk(&key, "/v1/audit-logs?order=asc&limit=100").await;
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "api_key.created", // the test's key
            "webhook.created",
            "events.ingested",
            "webhook.updated",
            "webhook.secret_rotated",
            "webhook.tested",
            "webhook.replayed",
            "webhook.delivery_retried",
            "webhook.deleted",
            "api_key.created",
            "api_key.revoked",
        ]
    );
    let by_action: HashMap<&str, &Value> = records
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r))
        .collect();
    for action in [
        "webhook.created",
        "webhook.updated",
        "webhook.secret_rotated",
        "webhook.tested",
        "webhook.replayed",
        "webhook.delivery_retried",
        "webhook.deleted",
    ] {
        let r = by_action[action];
        assert_eq!(r["organization_id"], ORG);
        assert_eq!(
            r["actor"],
            json!({"type": "api_key", "id": key_id}),
            "{action}"
        );
        assert!(r["request_id"].as_str().unwrap().starts_with("req_"));
        assert_eq!(r["source_ip"], "127.0.0.1");
        assert_eq!(r["user_agent"], "tidings-tests");
        assert!(r["id"].as_str().unwrap().starts_with("AUD-26-"));
        assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let created = by_action["webhook.created"];
    assert_eq!(created["request_id"], create_request_id.as_str());
    assert_eq!(created["resource"], json!({"type": "webhook", "id": id}));
    assert_eq!(created["changes"]["after"]["url"], receiver.url.as_str());
    assert_eq!(created["changes"]["after"]["status"], "active");
    let updated = by_action["webhook.updated"];
    assert!(updated["changes"]["before"]["description"].is_null());
    assert_eq!(updated["changes"]["after"]["description"], "billing sync");
    assert_eq!(
        by_action["webhook.delivery_retried"]["resource"],
        json!({"type": "delivery", "id": delivery})
    );
    assert_eq!(
        by_action["webhook.replayed"]["changes"]["after"]["replayed"],
        2
    );
    let ingested = by_action["events.ingested"];
    assert_eq!(
        ingested["changes"]["after"]["count"], 2,
        "only this organization's events"
    );
    assert_eq!(ingested["actor"]["id"].as_str().unwrap()[..4], *"KEY-");
    assert_eq!(
        by_action["api_key.revoked"]["actor"],
        json!({"type": "operator", "id": "cli"})
    );

    let everything = serde_json::to_string(&records).unwrap();
    for secret in [&first_secret, &rotated_secret, &new_secret] {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret leaked into the audit log"
        );
    }
    assert!(!everything.contains("whsec_") && !everything.contains("tdk_"));

    // Filters.
    let (_, only) = app.get(&key, "/v1/audit-logs?action=webhook.created").await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    let (_, on_hook) = app
        .get(&key, &format!("/v1/audit-logs?resource_id={id}&limit=100"))
        .await;
    assert_eq!(on_hook["data"].as_array().unwrap().len(), 6);
    let (_, by_actor) = app
        .get(
            &key,
            &format!("/v1/audit-logs?actor_id={key_id}&resource_type=webhook"),
        )
        .await;
    assert_eq!(by_actor["data"].as_array().unwrap().len(), 6);

    // The other organization's records are not this key's to read.
    let (status, body) = app
        .get(&key, &format!("/v1/audit-logs?organization_id={OTHER}"))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");
    let events_only = app.org_key(ORG, &[Scope::EventsRead]).await;
    let (status, body) = app.get(&events_only, "/v1/audit-logs").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");

    let reports = tidings::audit::verify(app.store.as_ref(), None)
        .await
        .unwrap();
    assert!(reports.len() >= 2);
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{reports:?}");
}

fn verify_output(store: &TestStore) -> (bool, String) {
    let (ok, out, err) = tidings_on(store, &["audit", "verify"]);
    (ok, format!("{out}{err}"))
}

/// The test's database opened behind Tidings' back, to tamper with it: the SQLite file, or
/// the test's PostgreSQL database. Statements are plain SQL both understand.
enum Backdoor<'a> {
    Sqlite(rusqlite::Connection),
    Postgres(&'a TestStore),
}

impl<'a> Backdoor<'a> {
    fn open(store: &'a TestStore) -> Self {
        match backend() {
            Backend::Embedded => Self::Sqlite(
                rusqlite::Connection::open(store.path().join(tidings_store::sqlite::DATABASE_FILE))
                    .unwrap(),
            ),
            Backend::Postgres => Self::Postgres(store),
        }
    }

    fn execute(&self, sql: &str) {
        match self {
            Self::Sqlite(db) => {
                db.execute(sql, []).unwrap();
            }
            Self::Postgres(store) => store.postgres(|c| c.batch_execute(sql).unwrap()),
        }
    }

    fn audit_seqs(&self, chain: &str) -> Vec<i64> {
        let sql = format!("SELECT seq FROM audit_records WHERE chain = '{chain}' ORDER BY seq");
        match self {
            Self::Sqlite(db) => db
                .prepare(&sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            Self::Postgres(store) => store.postgres(|c| {
                c.query(&sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }),
        }
    }

    /// An SQL expression for 32 random bytes.
    fn random_hash(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "randomblob(32)",
            Self::Postgres(_) => "decode(md5(random()::text) || md5(random()::text), 'hex')",
        }
    }
}

#[tokio::test]
async fn editing_deleting_or_inserting_a_record_is_named_by_audit_verify() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        app.org_key(ORG, &[Scope::EventsRead]).await;
    }
    let (ok, out) = verify_output(&app.data);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{ORG}: intact (5 records)")), "{out}");

    let db = Backdoor::open(&app.data);
    let seqs = db.audit_seqs(ORG);
    let name = |seq: i64| format!("AUD-26-{seq:06}");

    // Edit a record in place.
    db.execute(&format!(
        "UPDATE audit_records SET actor_id = 'KEY-26-999999' WHERE seq = {}",
        seqs[2]
    ));
    let (ok, out) = verify_output(&app.data);
    assert!(!ok);
    assert!(out.contains(&format!("altered {}", name(seqs[2]))), "{out}");
    // Verifying one chain reports that chain alone, read from the whole log.
    let only = tidings::audit::verify(app.store.as_ref(), Some(ORG))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!((only[0].chain.as_str(), only[0].records), (ORG, 5));
    assert_eq!(only[0].problems.len(), 1);
    assert_eq!(only[0].problems[0].kind, "altered");
    let other = tidings::audit::verify(app.store.as_ref(), Some("ORG-26-000001"))
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].records, 0);
    assert!(other[0].problems.is_empty());
    db.execute(&format!(
        "UPDATE audit_records SET actor_id = 'cli' WHERE seq = {}",
        seqs[2]
    ));
    assert!(verify_output(&app.data).0, "restored");

    // Delete one.
    db.execute(&format!(
        "CREATE TABLE saved AS SELECT * FROM audit_records WHERE seq = {}",
        seqs[1]
    ));
    db.execute(&format!(
        "DELETE FROM audit_records WHERE seq = {}",
        seqs[1]
    ));
    let (ok, out) = verify_output(&app.data);
    assert!(!ok);
    assert!(
        out.contains(&format!("removed_before {}", name(seqs[2]))),
        "{out}"
    );
    db.execute("INSERT INTO audit_records SELECT * FROM saved");
    db.execute("DROP TABLE saved");
    assert!(verify_output(&app.data).0, "restored");

    // Insert a forged one at the start of the chain.
    db.execute(&format!(
        "INSERT INTO audit_records (seq, chain, org, actor_type, actor_id, action, resource_type,
             resource_id, changes, created_at, prev_hash, hash)
         SELECT 0, chain, org, actor_type, actor_id, 'api_key.revoked', resource_type, resource_id,
             changes, created_at, prev_hash, {} FROM audit_records WHERE seq = {}",
        db.random_hash(),
        seqs[0]
    ));
    let (ok, out) = verify_output(&app.data);
    assert!(!ok);
    assert!(out.contains("inserted AUD-26-000000"), "{out}");
}
