//! SPEC §6: keys, scopes and strict isolation between organizations.

use reqwest::StatusCode;
use serde_json::json;
use tidings_domain::Scope;

use crate::harness::{TestApp, assert_error, event};

const MINE: &str = "ORG-26-090500";
const THEIRS: &str = "ORG-26-090501";

#[tokio::test]
async fn an_org_key_cannot_list_or_get_another_orgs_events() {
    let app = TestApp::spawn().await;
    let theirs = app
        .ingest(&[event(THEIRS, json!({"workspace_id": "WS-26-000031"}))])
        .await;
    let mine = app.ingest(&[event(MINE, json!({}))]).await;
    let key = app.org_key(MINE, &[Scope::EventsRead]).await;

    let (status, body) = app
        .get(&key, &format!("/v1/events?organization_id={THEIRS}"))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");

    let their_id = theirs[0]["id"].as_str().unwrap();
    let (status, body) = app.get(&key, &format!("/v1/events/{their_id}")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "invalid_request_error",
    );
    // Indistinguishable from an ID that does not exist at all.
    let (_, missing) = app.get(&key, "/v1/events/EVT-26-999999").await;
    assert_eq!(missing["error"]["code"], body["error"]["code"]);

    // A workspace of another organization is simply empty for this key.
    let (status, body) = app.get(&key, "/v1/events?workspace_id=WS-26-000031").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"], json!([]));

    // Its own event is visible.
    let (status, _) = app
        .get(
            &key,
            &format!("/v1/events/{}", mine[0]["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_platform_key_reads_any_organization() {
    let app = TestApp::spawn().await;
    let theirs = app
        .ingest(&[event(THEIRS, json!({"workspace_id": "WS-26-000031"}))])
        .await;
    let key = app.platform_key(&[Scope::EventsRead]).await;
    let (status, body) = app.get(&key, "/v1/events?workspace_id=WS-26-000031").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["id"], theirs[0]["id"]);
    let (status, _) = app
        .get(
            &key,
            &format!("/v1/events/{}", theirs[0]["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn missing_bad_revoked_and_underscoped_keys() {
    let app = TestApp::spawn().await;
    let q = format!("/v1/events?organization_id={MINE}");
    let response = app
        .client
        .get(format!("{}{q}", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");

    let (status, body) = app.get("tdk_thisisnotakey", &q).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );

    let webhooks_only = app.org_key(MINE, &[Scope::WebhooksRead]).await;
    let (status, body) = app.get(&webhooks_only, &q).await;
    let error = assert_error(status, &body, StatusCode::FORBIDDEN, "permission_error");
    assert!(error["message"].as_str().unwrap().contains("events:read"));

    let key = app.org_key(MINE, &[Scope::EventsRead]).await;
    assert_eq!(app.get(&key, &q).await.0, StatusCode::OK);
    let keys = app.store.list_keys().await.unwrap();
    let newest = keys.iter().max_by_key(|k| k.id.number).unwrap();
    tidings::keys::revoke(app.store.as_ref(), &newest.id.to_string())
        .await
        .unwrap();
    let (status, body) = app.get(&key, &q).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
    );
}
