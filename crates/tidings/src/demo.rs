//! The simulated platform behind `tidings serve --demo`: a realistic mix of the catalog's
//! events for a few organizations and workspaces, sent through the real ingest port.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The organization of the seed document; the demo prints a read key for it.
pub const SEED_ORG: &str = "ORG-26-090500";
/// The seed's workspace (in [`SEED_ORG`]).
pub const SEED_WORKSPACE: &str = "WS-26-000021";
/// The seed's service line, so `subject_id=LIN-26-084729` finds a history.
pub const SEED_SERVICE_LINE: &str = "LIN-26-084729";

/// Produces plausible platform events. Deterministic for a given seed.
pub struct EventGenerator {
    rng: StdRng,
    orgs: Vec<(String, Vec<String>)>,
    counter: u64,
}

impl EventGenerator {
    /// `orgs` organizations; the first is the seed's. Larger organizations come first and
    /// produce most of the traffic (a skewed, Zipf-like mix).
    pub fn new(seed: u64, orgs: usize) -> Self {
        let orgs = (0..orgs.max(1))
            .map(|i| {
                let org = if i == 0 {
                    SEED_ORG.to_string()
                } else {
                    format!("ORG-26-{:06}", 100_000 + i)
                };
                let workspaces = if i == 0 {
                    vec![SEED_WORKSPACE.to_string(), "WS-26-000022".to_string()]
                } else {
                    (0..=(i % 3))
                        .map(|w| format!("WS-26-{:06}", 100_000 + i * 10 + w))
                        .collect()
                };
                (org, workspaces)
            })
            .collect();
        Self {
            rng: StdRng::seed_from_u64(seed),
            orgs,
            counter: 0,
        }
    }

    fn pick_org(&mut self) -> usize {
        // P(i) ~ 1/(i+1): organization 0 gets the largest share.
        let n = self.orgs.len();
        let total: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
        let mut x = self.rng.random::<f64>() * total;
        for i in 0..n {
            x -= 1.0 / (i + 1) as f64;
            if x <= 0.0 {
                return i;
            }
        }
        n - 1
    }

    fn one_of(&mut self, options: &[&'static str]) -> &'static str {
        options[self.rng.random_range(0..options.len())]
    }

    fn id(&mut self, prefix: &str, max: u32) -> String {
        format!("{prefix}-26-{:06}", self.rng.random_range(1..=max))
    }

    /// One event as a producer would send it.
    pub fn next_event(&mut self) -> Value {
        self.counter += 1;
        let org_index = self.pick_org();
        let (org, workspaces) = self.orgs[org_index].clone();
        let workspace = if self.rng.random_bool(0.85) {
            Value::String(workspaces[self.rng.random_range(0..workspaces.len())].clone())
        } else {
            Value::Null
        };
        let user = self.id("USR", 200);
        let kind = self.rng.random_range(0..100);
        let (event_type, actor, subject, payload) = match kind {
            0..=11 => {
                let line = if org_index == 0 && self.rng.random_bool(0.3) {
                    SEED_SERVICE_LINE.to_string()
                } else {
                    self.id("LIN", 99_999)
                };
                let (t, prev, new) = match self.rng.random_range(0..4) {
                    0 => ("service_line.activated", "draft", "active"),
                    1 => ("service_line.paused", "active", "paused"),
                    2 => ("service_line.closed", "active", "closed"),
                    _ => ("service_line.status_changed", "paused", "active"),
                };
                (
                    t,
                    json!({"type": "user", "id": user}),
                    json!({"type": "service_line", "id": line}),
                    json!({
                        "previous_status": prev,
                        "new_status": new,
                        "execution_model": if self.rng.random_bool(0.5) { "capacity" } else { "outcome" },
                        "product_line": self.one_of(&["talent", "delivery", "advisory"]),
                        "changed_by_name": "Amara Okafor",
                        "reason": "Scheduled transition agreed in the quarterly planning review",
                    }),
                )
            }
            12..=41 => {
                let agent = self.id("AGT", 40);
                let run = self.id("RUN", 999_999);
                let (t, outcome) = match self.rng.random_range(0..10) {
                    0..=3 => ("agent.run.started", "running"),
                    4..=8 => ("agent.run.completed", "success"),
                    _ => ("agent.run.failed", "error"),
                };
                (
                    t,
                    json!({"type": "agent", "id": agent}),
                    json!({"type": "run", "id": run}),
                    json!({
                        "service_line_id": self.id("LIN", 99_999),
                        "duration_ms": self.rng.random_range(200..120_000),
                        "tokens_used": self.rng.random_range(100..40_000),
                        "model": "planner-large-2026-10",
                        "outcome": outcome,
                        "steps": self.rng.random_range(1..40),
                        "tool_calls": self.rng.random_range(0..25),
                        "summary": "Reconciled the sprint backlog against the delivery plan and flagged two risks",
                    }),
                )
            }
            42..=53 => {
                let invoice = self.id("INV", 99_999);
                let t = self.one_of(&[
                    "invoice.finalized",
                    "invoice.paid",
                    "invoice.payment_failed",
                    "invoice.voided",
                ]);
                (
                    t,
                    json!({"type": "system", "id": "billing"}),
                    json!({"type": "invoice", "id": invoice}),
                    json!({
                        "amount_due": self.rng.random_range(10_000..5_000_000),
                        "currency": self.one_of(&["usd", "eur", "zar", "gbp"]),
                        "period_start": "2026-11-01",
                        "period_end": "2026-11-30",
                        "line_items": self.rng.random_range(1..30),
                        "customer_reference": format!("PO-{}", self.rng.random_range(1000..9999)),
                    }),
                )
            }
            54..=73 => {
                let task = self.id("TSK", 999_999);
                let t = self.one_of(&["task.created", "task.status_changed", "task.assigned"]);
                (
                    t,
                    json!({"type": "user", "id": user}),
                    json!({"type": "task", "id": task}),
                    json!({
                        "title": "Migrate the reporting pipeline to the new warehouse",
                        "status": self.one_of(&["todo", "in_progress", "review", "done"]),
                        "assignee_id": self.id("USR", 200),
                        "priority": self.one_of(&["low", "medium", "high"]),
                        "estimate_hours": self.rng.random_range(1..40),
                    }),
                )
            }
            74..=81 => {
                let invitee = self.id("USR", 999);
                let t = self.one_of(&["user.invited", "user.role_changed", "user.deactivated"]);
                (
                    t,
                    json!({"type": "user", "id": user}),
                    json!({"type": "user", "id": invitee}),
                    json!({
                        "email": format!("person{}@example.com", self.rng.random_range(1..9999)),
                        "role": self.one_of(&["viewer", "member", "admin"]),
                        "invited_by": user,
                    }),
                )
            }
            82..=87 => {
                let t = self.one_of(&[
                    "incident.opened",
                    "incident.resolved",
                    "incident.severity_changed",
                ]);
                (
                    t,
                    json!({"type": "integration", "id": "pagerduty"}),
                    json!({"type": "incident", "id": self.id("INC", 9_999)}),
                    json!({
                        "severity": self.one_of(&["sev1", "sev2", "sev3"]),
                        "title": "Elevated error rate on the delivery API",
                        "service": "delivery-api",
                    }),
                )
            }
            88..=92 => {
                let t = self.one_of(&[
                    "integration.connected",
                    "integration.sync_failed",
                    "integration.disconnected",
                ]);
                (
                    t,
                    json!({"type": "user", "id": user}),
                    json!({"type": "integration", "id": self.one_of(&["github", "jira", "slack"])}),
                    json!({"provider": "github", "error": null, "records_synced": self.rng.random_range(0..5000)}),
                )
            }
            93..=96 => {
                let t = self.one_of(&["capacity.utilisation_warning", "capacity.gap_detected"]);
                (
                    t,
                    json!({"type": "system", "id": "capacity-planner"}),
                    json!({"type": "service_line", "id": self.id("LIN", 99_999)}),
                    json!({"utilisation": self.rng.random_range(70..130) as f64 / 100.0, "threshold": 0.9, "window_days": 14}),
                )
            }
            _ => {
                let t = self.one_of(&[
                    "execution.blocked",
                    "execution.resumed",
                    "agent.policy_violated",
                ]);
                (
                    t,
                    json!({"type": "agent", "id": self.id("AGT", 40)}),
                    json!({"type": "execution", "id": self.id("EXE", 99_999)}),
                    json!({"policy": "no-production-writes", "blocked_reason": "approval required"}),
                )
            }
        };
        json!({
            "type": event_type,
            "organization_id": org,
            "workspace_id": workspace,
            "actor": actor,
            "subject": subject,
            "payload": payload,
            "idempotency_key": format!("demo-{:016x}-{}", self.rng.random::<u64>(), self.counter),
        })
    }
}

/// Sends a first burst, then a steady trickle, until the task is dropped.
pub async fn run(ingest_url: String, ingest_key: String) {
    let client = reqwest::Client::new();
    let url = format!("{ingest_url}/internal/v1/events");
    let mut generator = EventGenerator::new(rand::random(), 8);
    let mut send = async |n: usize| {
        let events: Vec<Value> = (0..n).map(|_| generator.next_event()).collect();
        let result = client
            .post(&url)
            .bearer_auth(&ingest_key)
            .json(&json!({"events": events}))
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "demo producer: ingest refused a batch"),
            Err(e) => tracing::warn!(error = %e, "demo producer: ingest unreachable"),
        }
    };
    send(500).await;
    tracing::info!("demo producer: sent a first 500 events; now about 5 a second");
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        send(1).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_pass_ingest_validation() {
        let mut g = EventGenerator::new(1, 20);
        let events: Vec<Value> = (0..2000).map(|_| g.next_event()).collect();
        let body = serde_json::to_vec(&json!({"events": &events[..1000]})).unwrap();
        let parsed = tidings_domain::parse_ingest_body(
            &body,
            tidings_domain::IngestFormat::Json,
            &tidings_domain::Catalog::builtin(),
        )
        .unwrap();
        assert_eq!(parsed.len(), 1000);
        let avg: usize = parsed.iter().map(|e| e.payload.get().len()).sum::<usize>() / parsed.len();
        assert!((150..700).contains(&avg), "average payload {avg} bytes");
        let seed_org = events
            .iter()
            .filter(|e| e["organization_id"] == SEED_ORG)
            .count();
        assert!(
            seed_org > 300,
            "the seed org should dominate, got {seed_org}"
        );
    }
}
