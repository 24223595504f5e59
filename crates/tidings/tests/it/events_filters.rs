//! `GET /v1/events` filters, alone and combined, checked against an independent in-test
//! model of the expected result; `from`/`to` boundaries.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_domain::Scope;

use crate::harness::{TestApp, event, start_time};

const ORGS: [&str; 3] = ["ORG-26-090500", "ORG-26-090501", "ORG-26-090502"];
const TYPES: [&str; 8] = [
    "service_line.activated",
    "invoice.finalized",
    "invoice.paid",
    "agent.run.started",
    "agent.run.completed",
    "agent.policy_violated",
    "task.created",
    "user.invited",
];
const SUBJECTS: [(&str, &str); 6] = [
    ("service_line", "LIN-26-000001"),
    ("service_line", "LIN-26-000002"),
    ("invoice", "INV-26-000001"),
    ("run", "RUN-26-000001"),
    ("task", "TSK-26-000001"),
    ("invoice", "LIN-26-000001"),
];
const ACTORS: [&str; 4] = ["USR-26-000001", "USR-26-000002", "AGT-26-000001", "billing"];

fn workspaces(org: &str) -> &'static [&'static str] {
    match org {
        "ORG-26-090500" => &["WS-26-000021", "WS-26-000022"],
        "ORG-26-090501" => &["WS-26-000031"],
        _ => &[],
    }
}

/// 40 batches of 10 events, the clock moving 0–3 hours between batches (so several events
/// share a second, and the data crosses day boundaries).
async fn dataset(app: &TestApp) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut recorded = Vec::new();
    for _ in 0..40 {
        let batch: Vec<Value> = (0..10)
            .map(|_| {
                let org = ORGS[rng.random_range(0..ORGS.len())];
                let ws = workspaces(org);
                let workspace = if ws.is_empty() || rng.random_bool(0.2) {
                    Value::Null
                } else {
                    json!(ws[rng.random_range(0..ws.len())])
                };
                let (st, sid) = SUBJECTS[rng.random_range(0..SUBJECTS.len())];
                let actor = ACTORS[rng.random_range(0..ACTORS.len())];
                event(
                    org,
                    json!({
                        "type": TYPES[rng.random_range(0..TYPES.len())],
                        "workspace_id": workspace,
                        "actor": {"type": if actor == "billing" { "system" } else { "user" }, "id": actor},
                        "subject": {"type": st, "id": sid},
                    }),
                )
            })
            .collect();
        recorded.extend(app.ingest(&batch).await);
        app.clock
            .advance(Duration::minutes(rng.random_range(0..180)));
    }
    recorded
}

#[derive(Debug, Clone)]
struct Query {
    platform: bool,
    org: Option<&'static str>,
    workspace: Option<&'static str>,
    types: Vec<&'static str>,
    subject_type: Option<&'static str>,
    subject_id: Option<&'static str>,
    actor_id: Option<&'static str>,
    from: Option<String>,
    to: Option<String>,
    asc: bool,
    limit: u32,
}

fn time_bound() -> impl Strategy<Value = String> {
    // Within the dataset's ~60 hours, as a plain date, a UTC time, or an offset time.
    (0i64..72 * 60, 0..3).prop_map(|(minutes, style)| {
        let t = start_time() - Duration::hours(8) + Duration::minutes(minutes);
        match style {
            0 => t.format("%Y-%m-%d").to_string(),
            1 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            _ => (t + Duration::hours(2))
                .format("%Y-%m-%dT%H:%M:%S+02:00")
                .to_string(),
        }
    })
}

fn query() -> impl Strategy<Value = Query> {
    let all_ws = ["WS-26-000021", "WS-26-000022", "WS-26-000031"];
    let patterns = prop::sample::select(vec![
        "service_line.activated",
        "invoice.paid",
        "invoice.*",
        "agent.*",
        "agent.run.*",
        "task.created",
        "user.invited",
        "incident.opened",
    ]);
    (
        any::<bool>(),
        prop::option::of(prop::sample::select(ORGS.to_vec())),
        prop::option::weighted(0.3, prop::sample::select(all_ws.to_vec())),
        prop::collection::vec(patterns, 0..3),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["service_line", "invoice", "run"]),
        ),
        prop::option::weighted(
            0.3,
            prop::sample::select(SUBJECTS.iter().map(|s| s.1).collect::<Vec<_>>()),
        ),
        prop::option::weighted(0.3, prop::sample::select(ACTORS.to_vec())),
        prop::option::weighted(0.4, time_bound()),
        prop::option::weighted(0.4, time_bound()),
        any::<bool>(),
        prop_oneof![1u32..8, 8u32..=100],
    )
        .prop_map(
            |(
                platform,
                org,
                workspace,
                types,
                subject_type,
                subject_id,
                actor_id,
                from,
                to,
                asc,
                limit,
            )| {
                Query {
                    platform,
                    org,
                    workspace,
                    types,
                    subject_type,
                    subject_id,
                    actor_id,
                    from,
                    to,
                    asc,
                    limit,
                }
            },
        )
        .prop_filter("org or workspace is required", |q| {
            q.org.is_some() || q.workspace.is_some()
        })
}

fn parse_bound(s: &str) -> DateTime<Utc> {
    tidings_domain::query::parse_time_bound(s).expect("valid bound")
}

/// The independent model: which events a query must return, in order.
fn expected(all: &[Value], q: &Query, key_org: Option<&str>) -> Vec<String> {
    let matches_type = |t: &str| {
        q.types.is_empty()
            || q.types.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => t.starts_with(prefix),
                None => t == *p,
            })
    };
    let mut out: Vec<&Value> = all
        .iter()
        .filter(|e| key_org.is_none_or(|o| e["organization_id"] == o))
        .filter(|e| q.org.is_none_or(|o| e["organization_id"] == o))
        .filter(|e| q.workspace.is_none_or(|w| e["workspace_id"] == w))
        .filter(|e| matches_type(e["type"].as_str().unwrap()))
        .filter(|e| q.subject_type.is_none_or(|s| e["subject"]["type"] == s))
        .filter(|e| q.subject_id.is_none_or(|s| e["subject"]["id"] == s))
        .filter(|e| q.actor_id.is_none_or(|s| e["actor"]["id"] == s))
        .filter(|e| {
            let t: DateTime<Utc> = e["created_at"].as_str().unwrap().parse().unwrap();
            q.from.as_deref().is_none_or(|f| t >= parse_bound(f))
                && q.to.as_deref().is_none_or(|to| t < parse_bound(to))
        })
        .collect();
    out.sort_by_key(|e| e["id"].as_str().unwrap()[7..].parse::<u64>().unwrap());
    if !q.asc {
        out.reverse();
    }
    out.iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn url(q: &Query) -> String {
    let mut parts = Vec::new();
    if let Some(o) = q.org {
        parts.push(format!("organization_id={o}"));
    }
    if let Some(w) = q.workspace {
        parts.push(format!("workspace_id={w}"));
    }
    if !q.types.is_empty() {
        parts.push(format!("type={}", q.types.join(",")));
    }
    for (name, v) in [
        ("subject_type", q.subject_type),
        ("subject_id", q.subject_id),
        ("actor_id", q.actor_id),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    for (name, v) in [("from", &q.from), ("to", &q.to)] {
        if let Some(v) = v {
            parts.push(format!("{name}={}", v.replace('+', "%2B")));
        }
    }
    if q.asc {
        parts.push("order=asc".into());
    }
    parts.push(format!("limit={}", q.limit));
    format!("/v1/events?{}", parts.join("&"))
}

#[test]
fn every_filter_combination_matches_the_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (app, all, platform_key, org_key) = rt.block_on(async {
        let app = TestApp::spawn().await;
        let all = dataset(&app).await;
        let platform_key = app.platform_key(&[Scope::EventsRead]).await;
        let org_key = app.org_key(ORGS[0], &[Scope::EventsRead]).await;
        (app, all, platform_key, org_key)
    });
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&query(), |q| {
        let (key, key_org) = if q.platform {
            (&platform_key, None)
        } else {
            (&org_key, Some(ORGS[0]))
        };
        let path = url(&q);
        let from_after_to = match (&q.from, &q.to) {
            (Some(f), Some(t)) => parse_bound(f) > parse_bound(t),
            _ => false,
        };
        let forbidden = key_org.is_some() && q.org.is_some_and(|o| Some(o) != key_org);
        rt.block_on(async {
            // Parameters are validated before tenancy: from > to is a 400 for anyone.
            if from_after_to || forbidden {
                let (status, _) = app.get(key, &path).await;
                let want = if from_after_to {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::FORBIDDEN
                };
                prop_assert_eq!(status, want, "{}", path);
                return Ok(());
            }
            let got: Vec<String> = app
                .walk(key, &path)
                .await
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect();
            prop_assert_eq!(got, expected(&all, &q, key_org), "{}", path);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test]
async fn from_is_inclusive_and_to_is_exclusive() {
    let app = TestApp::spawn().await;
    let org = ORGS[0];
    // Events at 23:59:59, 00:00:00 and 00:00:01 around midnight of 2026-04-15.
    let midnight: DateTime<Utc> = "2026-04-15T00:00:00Z".parse().unwrap();
    let mut ids = Vec::new();
    for offset in [-1i64, 0, 1] {
        app.clock.set(midnight + Duration::seconds(offset));
        ids.push(app.ingest(&[event(org, json!({}))]).await[0]["id"].clone());
    }
    let key = app.org_key(org, &[Scope::EventsRead]).await;
    let list = |q: String| {
        let app = &app;
        let key = &key;
        async move {
            app.walk(
                key,
                &format!("/v1/events?organization_id={org}&order=asc&{q}"),
            )
            .await
            .into_iter()
            .map(|e| e["id"].clone())
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("from=2026-04-15".into()).await, ids[1..]);
    assert_eq!(list("to=2026-04-15".into()).await, ids[..1]);
    assert_eq!(
        list("from=2026-04-15T00:00:00Z&to=2026-04-15T00:00:01Z".into()).await,
        ids[1..2]
    );
    assert_eq!(
        list("from=2026-04-15T02:00:00%2B02:00".into()).await,
        ids[1..]
    );
    assert_eq!(list("from=2026-04-14T23:59:59.5Z".into()).await, ids[1..]);
    assert_eq!(
        list("from=2026-04-15&to=2026-04-15".into()).await,
        Vec::<Value>::new()
    );
    assert_eq!(list("from=2026-04-16".into()).await, Vec::<Value>::new());
}

#[tokio::test]
async fn seed_document_queries_work_as_written() {
    let app = TestApp::spawn().await;
    let org = "ORG-26-090500";
    app.clock.set("2026-04-15T09:00:00Z".parse().unwrap());
    app.ingest(&[
        event(org, json!({"workspace_id": "WS-26-000021"})),
        event(org, json!({"type": "invoice.finalized", "subject": {"type": "invoice", "id": "INV-26-000001"}})),
        event(org, json!({"type": "agent.run.completed", "workspace_id": "WS-26-000021",
            "actor": {"type": "agent", "id": "AGT-26-000012"}, "subject": {"type": "run", "id": "RUN-26-001812"}})),
    ])
    .await;
    let key = app.org_key(org, &[Scope::EventsRead]).await;
    for (q, n) in [
        (
            "/v1/events?organization_id=ORG-26-090500&type=service_line.activated&from=2026-04-01",
            1,
        ),
        (
            "/v1/events?organization_id=ORG-26-090500&type=service_line.activated&subject_id=LIN-26-084729",
            1,
        ),
        (
            "/v1/events?organization_id=ORG-26-090500&type=invoice.finalized&from=2026-04-01",
            1,
        ),
        (
            "/v1/events?workspace_id=WS-26-000021&from=2026-04-14T00:00:00Z&to=2026-04-16T00:00:00Z",
            2,
        ),
        (
            "/v1/events?workspace_id=WS-26-000021&from=2026-04-14T00:00:00Z&to=2026-04-15T00:00:00Z",
            0,
        ),
    ] {
        let (status, body) = app.get(&key, q).await;
        assert_eq!(status, StatusCode::OK, "{q}: {body}");
        assert_eq!(body["data"].as_array().unwrap().len(), n, "{q}");
        assert_eq!(body["meta"]["has_more"], false);
        assert!(body["meta"]["cursor"].is_null());
    }
}
