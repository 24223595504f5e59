//! Webhooks, deliveries and attempts (SPEC §4 Webhooks, §10), with the pure parts of
//! delivery: Standard Webhooks signatures, the retry schedule, and what an attempt's
//! outcome means for the delivery and the endpoint.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::catalog::TypePattern;
use crate::event::serialize_opt_timestamp;
use crate::event::serialize_timestamp;
use crate::ids::{DeliveryId, EventId, OrgId, WebhookId, WorkspaceId};

/// Prefix of every signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";
/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// An endpoint failing every attempt for this long is disabled.
pub const DISABLE_AFTER_FAILING: Duration = Duration::from_secs(5 * 24 * 3600);
/// Bytes of a response body kept with an attempt.
pub const RESPONSE_BODY_LIMIT: usize = 4 * 1024;
/// Per-attempt timeout: success is a 2xx within this.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Created, but the endpoint has not answered the verification challenge; sent nothing.
    Unverified,
    Active,
    /// Disabled by its owner, by a `410 Gone`, or after failing for 5 days.
    Disabled,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Unverified => "unverified",
            WebhookStatus::Active => "active",
            WebhookStatus::Disabled => "disabled",
        }
    }
}

impl FromStr for WebhookStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unverified" => Ok(Self::Unverified),
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!("unknown webhook status `{other}`")),
        }
    }
}

/// A subscription: where to send which events of one organization (or one workspace).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    #[schema(value_type = String, example = "WHK-26-000004")]
    pub id: WebhookId,
    #[schema(value_type = String)]
    pub organization_id: OrgId,
    #[schema(value_type = Option<String>)]
    pub workspace_id: Option<WorkspaceId>,
    pub url: String,
    /// Exact types, `domain.*` patterns, or `["*"]`.
    #[schema(value_type = Vec<String>)]
    pub event_types: Vec<TypePattern>,
    pub description: Option<String>,
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    #[serde(serialize_with = "serialize_timestamp")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "serialize_timestamp")]
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
}

/// What an event needs to show for webhook matching.
pub struct EventRouting<'a> {
    pub organization_id: &'a str,
    pub workspace_id: Option<&'a str>,
    pub event_type: &'a str,
    pub subject_type: &'a str,
    pub subject_id: &'a str,
}

/// Whether a webhook subscribed to `patterns`, scoped to `org` (and maybe one workspace),
/// wants an event. `webhook.*` events about a webhook never go to that same webhook.
pub fn webhook_wants(
    webhook_id: &str,
    org: &str,
    workspace: Option<&str>,
    patterns: &[TypePattern],
    event: &EventRouting<'_>,
) -> bool {
    event.organization_id == org
        && workspace.is_none_or(|w| event.workspace_id == Some(w))
        && patterns.iter().any(|p| p.matches(event.event_type))
        && !(event.event_type.starts_with("webhook.")
            && event.subject_type == "webhook"
            && event.subject_id == webhook_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(Self::Pending),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            other => Err(format!(
                "`{other}` is not a delivery status: expected pending, succeeded or failed"
            )),
        }
    }
}

/// Why an attempt was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptTrigger {
    Scheduled,
    Manual,
    Replay,
    Test,
}

impl AttemptTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptTrigger::Scheduled => "scheduled",
            AttemptTrigger::Manual => "manual",
            AttemptTrigger::Replay => "replay",
            AttemptTrigger::Test => "test",
        }
    }
}

impl FromStr for AttemptTrigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scheduled" => Ok(Self::Scheduled),
            "manual" => Ok(Self::Manual),
            "replay" => Ok(Self::Replay),
            "test" => Ok(Self::Test),
            other => Err(format!("unknown attempt trigger `{other}`")),
        }
    }
}

/// Why an attempt got no HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptError {
    Timeout,
    Connect,
    Dns,
    Tls,
    BlockedAddress,
}

impl AttemptError {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::Dns => "dns",
            AttemptError::Tls => "tls",
            AttemptError::BlockedAddress => "blocked_address",
        }
    }
}

impl FromStr for AttemptError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "timeout" => Ok(Self::Timeout),
            "connect" => Ok(Self::Connect),
            "dns" => Ok(Self::Dns),
            "tls" => Ok(Self::Tls),
            "blocked_address" => Ok(Self::BlockedAddress),
            other => Err(format!("unknown attempt error `{other}`")),
        }
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt of the delivery.
    pub attempt: u32,
    pub trigger: AttemptTrigger,
    #[serde(serialize_with = "serialize_timestamp")]
    #[schema(value_type = String)]
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The HTTP status, when the endpoint answered.
    pub status_code: Option<u16>,
    /// Why there is no status.
    pub error: Option<AttemptError>,
    /// The first 4 KiB of the response body.
    pub response_body: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|s| (200..300).contains(&s))
    }

    /// The endpoint answered `410 Gone`: the webhook is disabled at once (SPEC §10).
    pub fn endpoint_gone(&self) -> bool {
        self.status_code == Some(410)
    }
}

/// One event (or test message) on its way to one webhook.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    #[schema(value_type = String, example = "DLV-26-000001")]
    pub id: DeliveryId,
    #[schema(value_type = String)]
    pub webhook_id: WebhookId,
    /// `null` for a test message.
    #[schema(value_type = Option<String>)]
    pub event_id: Option<EventId>,
    pub event_type: String,
    pub status: DeliveryStatus,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
    #[serde(serialize_with = "serialize_opt_timestamp")]
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_timestamp")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
}

/// The delays between attempts after a failure: attempt n+1 waits `delays[n-1]` (±10 %).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about 28 hours.
    fn default() -> Self {
        Self(
            [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self(delays)
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// `5s,5m,30m,2h,5h,10h,10h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let delays = s
            .split(',')
            .map(|d| parse_duration(d.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 20 {
            return Err("a retry schedule has 1 to 20 delays".into());
        }
        Ok(Self(delays))
    }

    /// The total number of attempts a delivery gets: the first plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// Delay before attempt `failed_attempts + 1`, or `None` when the schedule is spent.
    /// `jitter` in [-1, 1] scales ±10 %.
    pub fn delay_after(&self, failed_attempts: u32, jitter: f64) -> Option<Duration> {
        let base = *self.0.get(failed_attempts.checked_sub(1)? as usize)?;
        Some(base.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0)))
    }

    pub fn longest(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

/// `90d`, `5m`, `250ms`, `10s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: use e.g. 250ms, 5s, 5m, 2h, 90d"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{s}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3_600),
        "d" => secs(86_400),
        _ => Err(format!("`{s}` has no unit: use ms, s, m, h or d (e.g. 5m)")),
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptVerdict {
    pub status: DeliveryStatus,
    /// When to try again, for a pending delivery.
    pub retry_in: Option<Duration>,
    /// The delivery is spent: record `webhook.delivery_failed`.
    pub exhausted: bool,
    /// Disable the endpoint, with this reason.
    pub disable: Option<String>,
}

/// Decides what an attempt means, from the attempt, how many attempts the delivery has had
/// (this one included), the schedule, and how long the endpoint has been failing.
pub fn judge_attempt(
    attempt: &Attempt,
    attempts_so_far: u32,
    final_on_failure: bool,
    retry_after: Option<Duration>,
    schedule: &RetrySchedule,
    failing_for: Option<Duration>,
    jitter: f64,
) -> AttemptVerdict {
    if attempt.succeeded() {
        return AttemptVerdict {
            status: DeliveryStatus::Succeeded,
            retry_in: None,
            exhausted: false,
            disable: None,
        };
    }
    if attempt.endpoint_gone() {
        return AttemptVerdict {
            status: DeliveryStatus::Failed,
            retry_in: None,
            exhausted: false,
            disable: Some("the endpoint answered 410 Gone".into()),
        };
    }
    let disable = failing_for
        .filter(|d| *d >= DISABLE_AFTER_FAILING)
        .map(|_| "the endpoint failed every attempt for 5 days".to_string());
    if final_on_failure || attempt.trigger == AttemptTrigger::Test || disable.is_some() {
        return AttemptVerdict {
            status: DeliveryStatus::Failed,
            retry_in: None,
            exhausted: false,
            disable,
        };
    }
    match schedule.delay_after(attempts_so_far, jitter) {
        Some(delay) => {
            // Retry-After is honoured within the schedule's bounds: never sooner than the
            // schedule says, never later than its longest step.
            let delay = match retry_after {
                Some(ra) if matches!(attempt.status_code, Some(429 | 503)) => {
                    ra.clamp(delay, schedule.longest().max(delay))
                }
                _ => delay,
            };
            AttemptVerdict {
                status: DeliveryStatus::Pending,
                retry_in: Some(delay),
                exhausted: false,
                disable: None,
            }
        }
        None => AttemptVerdict {
            status: DeliveryStatus::Failed,
            retry_in: None,
            exhausted: true,
            disable: None,
        },
    }
}

/// A signing secret, `whsec_<base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

impl SigningSecret {
    /// From 24 random bytes (the caller supplies randomness; this crate has none).
    pub fn from_random(bytes: [u8; 24]) -> Self {
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let body = s
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| "a signing secret starts with whsec_".to_string())?;
        STANDARD
            .decode(body)
            .map_err(|_| "a signing secret is whsec_ and base64".to_string())?;
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        // Validated at construction; an undecodable secret signs with no key bytes.
        STANDARD
            .decode(&self.0[SECRET_PREFIX.len()..])
            .unwrap_or_default()
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one signature per live secret, space-separated.
pub fn signature_header(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vectors() {
        let s = SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            s.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let s = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn schedule_parses_and_spends() {
        let s = RetrySchedule::parse("5s,5m,30m,2h,5h,10h,10h").unwrap();
        assert_eq!(s, RetrySchedule::default());
        assert_eq!(s.max_attempts(), 8);
        assert_eq!(s.delay_after(1, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(s.delay_after(7, 0.0), Some(Duration::from_secs(36_000)));
        assert_eq!(s.delay_after(8, 0.0), None);
        assert_eq!(s.delay_after(2, 1.0), Some(Duration::from_secs(330)));
        assert!(RetrySchedule::parse("5").is_err());
        assert!(RetrySchedule::parse("5x").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
    }

    fn attempt(status: Option<u16>) -> Attempt {
        Attempt {
            attempt: 1,
            trigger: AttemptTrigger::Scheduled,
            started_at: DateTime::from_timestamp(0, 0).unwrap(),
            duration_ms: 3,
            status_code: status,
            error: status.is_none().then_some(AttemptError::Connect),
            response_body: None,
        }
    }

    #[test]
    fn verdicts() {
        let s = RetrySchedule::default();
        let v = judge_attempt(&attempt(Some(204)), 1, false, None, &s, None, 0.0);
        assert_eq!(v.status, DeliveryStatus::Succeeded);
        let v = judge_attempt(&attempt(Some(500)), 1, false, None, &s, None, 0.0);
        assert_eq!(
            (v.status, v.retry_in),
            (DeliveryStatus::Pending, Some(Duration::from_secs(5)))
        );
        let v = judge_attempt(&attempt(None), 8, false, None, &s, None, 0.0);
        assert!(v.exhausted && v.status == DeliveryStatus::Failed);
        let v = judge_attempt(&attempt(Some(410)), 1, false, None, &s, None, 0.0);
        assert!(v.disable.is_some() && !v.exhausted);
        // Retry-After within bounds: a large one is capped at the longest step...
        let v = judge_attempt(
            &attempt(Some(429)),
            1,
            false,
            Some(Duration::from_secs(999_999)),
            &s,
            None,
            0.0,
        );
        assert_eq!(v.retry_in, Some(Duration::from_secs(36_000)));
        // ...a small one never shortens the schedule, a middling one is used as is.
        let v = judge_attempt(
            &attempt(Some(503)),
            2,
            false,
            Some(Duration::from_secs(1)),
            &s,
            None,
            0.0,
        );
        assert_eq!(v.retry_in, Some(Duration::from_secs(300)));
        let v = judge_attempt(
            &attempt(Some(503)),
            1,
            false,
            Some(Duration::from_secs(60)),
            &s,
            None,
            0.0,
        );
        assert_eq!(v.retry_in, Some(Duration::from_secs(60)));
        // Five days of failures disable the endpoint.
        let v = judge_attempt(
            &attempt(Some(500)),
            3,
            false,
            None,
            &s,
            Some(DISABLE_AFTER_FAILING),
            0.0,
        );
        assert!(v.disable.is_some());
        // A manual retry of a failed delivery is one attempt.
        let v = judge_attempt(&attempt(Some(500)), 9, true, None, &s, None, 0.0);
        assert!(v.status == DeliveryStatus::Failed && !v.exhausted);
    }

    #[test]
    fn loop_prevention() {
        let patterns = vec![TypePattern::All];
        let about_self = EventRouting {
            organization_id: "ORG-26-000001",
            workspace_id: None,
            event_type: "webhook.delivery_failed",
            subject_type: "webhook",
            subject_id: "WHK-26-000001",
        };
        assert!(!webhook_wants(
            "WHK-26-000001",
            "ORG-26-000001",
            None,
            &patterns,
            &about_self
        ));
        assert!(webhook_wants(
            "WHK-26-000002",
            "ORG-26-000001",
            None,
            &patterns,
            &about_self
        ));
        assert!(!webhook_wants(
            "WHK-26-000002",
            "ORG-26-000009",
            None,
            &patterns,
            &about_self
        ));
        assert!(!webhook_wants(
            "WHK-26-000002",
            "ORG-26-000001",
            Some("WS-26-000001"),
            &patterns,
            &about_self
        ));
    }
}
