//! A small client of the public API for the command line: `tidings events` and
//! `tidings listen`.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Where the API is and which key to use.
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// One message of a Server-Sent Events stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    pub id: Option<String>,
    pub data: String,
}

impl ApiClient {
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// GET a path; an error response becomes an error carrying the API's message.
    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path_and_query}", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        let status = response.status();
        let body: Value = response.json().await.context("reading the response")?;
        if !status.is_success() {
            bail!(
                "{status}: {}",
                body["error"]["message"].as_str().unwrap_or("no message")
            );
        }
        Ok(body)
    }

    /// Follows `path_and_query` as an SSE stream, calling `on_message` for each message
    /// (until it returns false). Starts after `start_after` (an event id) if given, else
    /// at the newest event. Reconnects with `Last-Event-ID` after a dropped connection, so
    /// nothing is missed; gives up after `max_reconnects` failures in a row.
    pub async fn follow<F, Fut>(
        &self,
        path_and_query: &str,
        start_after: Option<String>,
        mut on_message: F,
        max_reconnects: u32,
    ) -> anyhow::Result<()>
    where
        F: FnMut(StreamMessage) -> Fut + Send,
        Fut: Future<Output = bool> + Send,
    {
        let url = format!("{}{path_and_query}", self.base);
        let mut last_id: Option<String> = start_after;
        let mut failures = 0;
        loop {
            let mut request = self
                .http
                .get(&url)
                .bearer_auth(&self.key)
                .header("accept", "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id);
            }
            let mut response = match request.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    bail!(
                        "{status}: {}",
                        body["error"]["message"].as_str().unwrap_or("no message")
                    );
                }
                Err(e) => {
                    failures += 1;
                    if failures > max_reconnects {
                        return Err(e).with_context(|| format!("connecting to {url}"));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            failures = 0;
            let mut pending = String::new();
            let mut message = StreamMessage {
                id: None,
                data: String::new(),
            };
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = pending.find('\n') {
                    let line: String = pending.drain(..=end).collect();
                    let line = line.trim_end_matches(['\r', '\n']);
                    if line.is_empty() {
                        if !message.data.is_empty() {
                            if message.id.is_some() {
                                last_id.clone_from(&message.id);
                            }
                            let done = std::mem::replace(
                                &mut message,
                                StreamMessage {
                                    id: None,
                                    data: String::new(),
                                },
                            );
                            if !on_message(done).await {
                                return Ok(());
                            }
                        }
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !message.data.is_empty() {
                            message.data.push('\n');
                        }
                        message.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        message.id = Some(v.trim().to_string());
                    }
                    // Comments (keep-alives) and other fields are ignored.
                }
            }
            failures += 1;
            if failures > max_reconnects {
                bail!("the stream closed and could not be resumed");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A plain-text table of events: time, id, type, subject, actor.
pub fn render_events(events: &[Value]) -> String {
    let mut out = format!(
        "{:<21} {:<16} {:<30} {:<34} {}\n",
        "CREATED", "ID", "TYPE", "SUBJECT", "ACTOR"
    );
    for e in events {
        out.push_str(&event_line(e));
        out.push('\n');
    }
    out
}

pub fn event_line(e: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let subject = format!("{}:{}", s(&e["subject"]["type"]), s(&e["subject"]["id"]));
    let actor = format!("{}:{}", s(&e["actor"]["type"]), s(&e["actor"]["id"]));
    format!(
        "{:<21} {:<16} {:<30} {:<34} {actor}",
        s(&e["created_at"]),
        s(&e["id"]),
        s(&e["type"]),
        subject,
    )
}
