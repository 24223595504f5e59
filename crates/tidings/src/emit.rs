//! `tidings emit`: send events to the ingest port, for producers and for testing.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where the events come from.
#[derive(Debug, Clone)]
pub enum EmitSource {
    /// One event described by flags.
    Flags(Box<Value>),
    /// A JSON file (one event or `{"events": [...]}`); `-` reads stdin.
    Json(PathBuf),
    /// NDJSON, one event a line; `-` reads stdin. Sent in batches of up to 1,000.
    Ndjson(PathBuf),
}

/// Builds the event object for `emit --type ... --org ...`.
pub fn event_from_flags(
    event_type: &str,
    org: &str,
    workspace: Option<&str>,
    actor: &str,
    subject: &str,
    payload: Option<&str>,
    idempotency_key: Option<&str>,
) -> anyhow::Result<Value> {
    let pair = |flag: &str, v: &str| -> anyhow::Result<Value> {
        let (t, id) = v
            .split_once(':')
            .with_context(|| format!("{flag} takes TYPE:ID, e.g. user:USR-26-000044"))?;
        Ok(json!({"type": t, "id": id}))
    };
    let payload: Value = match payload {
        Some(p) => serde_json::from_str(p).context("--payload must be a JSON object")?,
        None => json!({}),
    };
    let mut event = json!({
        "type": event_type,
        "organization_id": org,
        "workspace_id": workspace,
        "actor": pair("--actor", actor)?,
        "subject": pair("--subject", subject)?,
        "payload": payload,
    });
    if let Some(k) = idempotency_key {
        event["idempotency_key"] = json!(k);
    }
    Ok(event)
}

fn read_source(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
    } else {
        buf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(buf)
}

/// Sends the events; returns the recorded events (`data` of each 201).
pub async fn emit(ingest_url: &str, key: &str, source: EmitSource) -> anyhow::Result<Vec<Value>> {
    let client = reqwest::Client::new();
    let url = format!("{}/internal/v1/events", ingest_url.trim_end_matches('/'));
    let send = |body: Vec<u8>, content_type: &'static str| {
        let url = url.clone();
        let request = client
            .post(&url)
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request
                .send()
                .await
                .with_context(|| format!("sending to {url}"))?;
            let status = response.status();
            let body: Value = response
                .json()
                .await
                .context("reading the ingest response")?;
            if !status.is_success() {
                bail!(
                    "ingest answered {status}:\n{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            }
            Ok(body["data"].as_array().cloned().unwrap_or_default())
        }
    };
    match source {
        EmitSource::Flags(event) => send(serde_json::to_vec(&event)?, "application/json").await,
        EmitSource::Json(path) => send(read_source(&path)?, "application/json").await,
        EmitSource::Ndjson(path) => {
            let body = read_source(&path)?;
            let lines: Vec<&[u8]> = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .collect();
            let total = lines.len();
            let mut recorded = Vec::with_capacity(total);
            for chunk in lines.chunks(tidings_domain::ingest::MAX_BATCH) {
                let mut batch = chunk.join(&b'\n');
                batch.push(b'\n');
                recorded.extend(send(batch, "application/x-ndjson").await?);
                if total > tidings_domain::ingest::MAX_BATCH {
                    eprintln!("emitted {}/{total} events", recorded.len());
                }
            }
            Ok(recorded)
        }
    }
}
