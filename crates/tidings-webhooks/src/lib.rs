//! Webhook delivery (SPEC §10): the [`dispatcher`] that fans events out and works through
//! due deliveries, the signed [`sender`], and the SSRF [`guard`].
//!
//! One attempt is always made the same way, whether the dispatcher claimed the delivery or
//! the API is sending a test message: [`send_attempt`], then [`record_attempt`] (judge and
//! record).

pub mod dispatcher;
pub mod guard;
pub mod sender;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use tidings_domain::webhook::{Attempt, RetrySchedule, SigningSecret, judge_attempt};
use tidings_domain::{Actor, ActorType, EventType, NewEvent, OrgId, Subject, Token};
use tidings_store::{AttemptReport, ClaimedDelivery, Clock, Store, StoreError};

pub use dispatcher::{Dispatcher, DispatcherConfig};
pub use sender::{SendOutcome, WebhookClient};

/// The body of a delivery: the event envelope exactly as the API returns it, or for a test
/// message a small object that says so.
pub fn delivery_body(claimed: &ClaimedDelivery) -> (String, Vec<u8>) {
    match &claimed.event {
        Some(event) => (
            event.id.to_string(),
            serde_json::to_vec(event).unwrap_or_default(),
        ),
        None => (
            claimed.id.to_string(),
            serde_json::to_vec(&json!({
                "type": "webhook.test",
                "id": claimed.id.to_string(),
                "webhook_id": claimed.webhook_id.to_string(),
                "organization_id": claimed.organization_id.as_str(),
                "created_at": tidings_domain::event::format_timestamp(&claimed.created_at),
                "message": "This is a test message from Tidings.",
            }))
            .unwrap_or_default(),
        ),
    }
}

/// An attempt made but not yet recorded.
#[derive(Debug, Clone)]
pub struct SentAttempt {
    pub attempt: Attempt,
    /// `Retry-After` of the answer, if any.
    pub retry_after: Option<std::time::Duration>,
}

/// Makes the HTTP attempt of a claimed delivery.
pub async fn send_attempt(
    client: &WebhookClient,
    clock: &dyn Clock,
    claimed: &ClaimedDelivery,
) -> SentAttempt {
    let (msg_id, body) = delivery_body(claimed);
    let started_at = clock.now();
    let outcome = client
        .send(
            &claimed.url,
            &msg_id,
            started_at.timestamp(),
            body,
            &claimed.secrets,
        )
        .await;
    metrics::histogram!("tidings_webhook_attempt_duration_seconds")
        .record(outcome.duration.as_secs_f64());
    SentAttempt {
        attempt: Attempt {
            attempt: claimed.attempt_number,
            trigger: claimed.trigger,
            started_at,
            duration_ms: outcome.duration.as_millis() as u64,
            status_code: outcome.status_code,
            error: outcome.error,
            response_body: outcome.response_body,
        },
        retry_after: outcome.retry_after,
    }
}

/// Judges a sent attempt (schedule, Retry-After, 410, 5-day disable) and records it with
/// its verdict, and the `webhook.delivery_failed` event when the delivery is spent.
pub async fn record_attempt(
    store: &dyn Store,
    clock: &dyn Clock,
    schedule: &RetrySchedule,
    owner: &str,
    claimed: ClaimedDelivery,
    sent: SentAttempt,
) -> Result<Attempt, StoreError> {
    let SentAttempt {
        attempt,
        retry_after,
    } = sent;
    let now = clock.now();
    let failing_for = claimed
        .failing_since
        .and_then(|since| (now - since).to_std().ok());
    let jitter = rand::rng().random_range(-1.0..=1.0);
    let verdict = judge_attempt(
        &attempt,
        claimed.attempt_number,
        claimed.final_on_failure,
        retry_after,
        schedule,
        failing_for,
        jitter,
    );
    let next_attempt_at = verdict
        .retry_in
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| now + d);
    let event = verdict
        .exhausted
        .then(|| delivery_failed_event(&claimed, &attempt))
        .flatten();
    let outcome_label = if attempt.succeeded() {
        "succeeded"
    } else if verdict.exhausted {
        "exhausted"
    } else {
        "failed"
    };
    tracing::debug!(
        delivery = %claimed.id,
        webhook = %claimed.webhook_id,
        attempt = attempt.attempt,
        status = ?attempt.status_code,
        error = ?attempt.error,
        outcome = outcome_label,
        "delivery attempt"
    );
    metrics::counter!("tidings_webhook_attempts_total", "outcome" => outcome_label).increment(1);
    if let Some(reason) = &verdict.disable {
        tracing::warn!(webhook = %claimed.webhook_id, reason, "disabling webhook");
    }
    store
        .record_attempt(AttemptReport {
            delivery_id: claimed.id,
            webhook_id: claimed.webhook_id,
            owner: owner.to_string(),
            attempt: attempt.clone(),
            status: verdict.status,
            next_attempt_at,
            disable_webhook: verdict.disable,
            event,
        })
        .await?;
    Ok(attempt)
}

/// Makes one attempt of a claimed delivery and records it: [`send_attempt`] then
/// [`record_attempt`].
pub async fn attempt_delivery(
    store: &dyn Store,
    client: &WebhookClient,
    clock: &dyn Clock,
    schedule: &RetrySchedule,
    owner: &str,
    claimed: ClaimedDelivery,
) -> Result<Attempt, StoreError> {
    let sent = send_attempt(client, clock, &claimed).await;
    record_attempt(store, clock, schedule, owner, claimed, sent).await
}

fn system_event(
    event_type: &str,
    org: &OrgId,
    webhook: &str,
    payload: serde_json::Value,
) -> Option<NewEvent> {
    Some(NewEvent {
        event_type: EventType::parse(event_type).ok()?,
        organization_id: org.clone(),
        workspace_id: None,
        actor: Actor {
            actor_type: ActorType::System,
            id: "tidings".parse::<Token>().ok()?,
        },
        subject: Subject {
            subject_type: "webhook".parse::<Token>().ok()?,
            id: webhook.parse::<Token>().ok()?,
        },
        payload: serde_json::value::to_raw_value(&payload).ok()?,
        idempotency_key: None,
    })
}

/// `webhook.delivery_failed`, recorded when a delivery has used its last attempt.
fn delivery_failed_event(claimed: &ClaimedDelivery, last: &Attempt) -> Option<NewEvent> {
    system_event(
        "webhook.delivery_failed",
        &claimed.organization_id,
        &claimed.webhook_id.to_string(),
        json!({
            "webhook_id": claimed.webhook_id.to_string(),
            "delivery_id": claimed.id.to_string(),
            "event_id": claimed.event.as_ref().map(|e| e.id.to_string()),
            "event_type": claimed.event_type,
            "attempts": last.attempt,
            "last_status_code": last.status_code,
            "last_error": last.error,
            "url": claimed.url,
        }),
    )
}

/// `webhook.verification_failed`.
pub fn verification_failed_event(
    org: &OrgId,
    webhook: &str,
    url: &str,
    reason: &str,
) -> Option<NewEvent> {
    system_event(
        "webhook.verification_failed",
        org,
        webhook,
        json!({"webhook_id": webhook, "url": url, "reason": reason}),
    )
}

/// The verification challenge (SPEC §10): a signed POST of
/// `{"type": "webhook.verification", "challenge": "..."}` that must be answered with a 2xx
/// whose body contains the challenge. Returns why it failed, in words for the API client.
pub async fn verify_endpoint(
    client: &WebhookClient,
    url: &str,
    msg_id: &str,
    secret: &SigningSecret,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let challenge: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    let body = json!({"type": "webhook.verification", "challenge": challenge}).to_string();
    let outcome = client
        .send(
            url,
            msg_id,
            now.timestamp(),
            body.into_bytes(),
            std::slice::from_ref(secret),
        )
        .await;
    match (outcome.status_code, outcome.error) {
        (Some(s), _) if (200..300).contains(&s) => {
            if outcome
                .response_body
                .as_deref()
                .is_some_and(|b| b.contains(&challenge))
            {
                Ok(())
            } else {
                Err(format!(
                    "the endpoint answered {s} but its body did not contain the challenge"
                ))
            }
        }
        (Some(s), _) => Err(format!("the endpoint answered {s} to the challenge")),
        (None, Some(e)) => Err(format!(
            "the challenge could not be delivered: {}",
            e.as_str()
        )),
        (None, None) => Err("the challenge could not be delivered".into()),
    }
}

/// Shared handles the API needs to drive webhooks.
#[derive(Clone)]
pub struct WebhookServices {
    pub client: WebhookClient,
    pub schedule: RetrySchedule,
    pub clock: Arc<dyn Clock>,
    /// Wakes the dispatcher (after ingest, retries, replays).
    pub wake: Arc<tokio::sync::Notify>,
}
