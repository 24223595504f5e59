//! `POST /internal/v1/events` on the ingest port: the platform's only way in (SPEC §5).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use tidings_domain::{Event, IngestError, IngestFormat, Scope, parse_ingest_body};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};

/// The 201 body: the recorded events in input order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    pub data: Vec<Event>,
}

/// Largest accepted request body: a full batch of maximal payloads, plus envelopes.
pub const MAX_BODY_BYTES: usize =
    tidings_domain::ingest::MAX_BATCH * (tidings_domain::ingest::MAX_PAYLOAD_BYTES + 1024);

/// Record one event, a batch (`{"events": [...]}`, up to 1,000) or NDJSON. Answers 201
/// only once the events are durable.
#[utoipa::path(post, path = "/internal/v1/events", tag = "ingest",
    security(("bearer" = [])),
    request_body(content = Object, description = "An event, {\"events\": [...]}, or NDJSON (application/x-ndjson)"),
    responses(
        (status = 201, description = "Recorded (for a repeated idempotency key: the event first recorded)", body = IngestResponse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid events; nothing was recorded", body = ErrorBody)))]
pub async fn ingest_events(
    State(state): State<AppState>,
    key: Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    key.require(Scope::EventsIngest)?;
    if !key.is_platform() {
        return Err(ApiError::forbidden(
            "platform_key_required",
            "ingest needs a platform key (tidings keys create --platform --scopes events:ingest)",
        ));
    }
    let format = ingest_format(&headers)?;
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::payload_too_large(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes; send at most 1,000 events of at most 64 KiB each"
        )),
        other => ApiError::bad_request("body_unreadable", other.body_text()),
    })?;
    let events = parse_ingest_body(&body, format, &state.catalog).map_err(|e| match e {
        IngestError::Malformed(m) => ApiError::bad_request("body_invalid", m),
        IngestError::Invalid(problems) => ApiError::unprocessable(
            format!(
                "{} problem(s) in the batch; nothing was recorded (see `errors`)",
                problems.len()
            ),
            problems,
        ),
    })?;
    let count = events.len();
    let recorded = state.store.ingest(events, key.audit()).await?;
    metrics::counter!("tidings_events_ingested_total").increment(count as u64);
    metrics::histogram!("tidings_ingest_batch_size").record(count as f64);
    tracing::debug!(count, "ingested");
    // Durable now: let the dispatcher fan the events out, and live streams read them.
    state.webhooks.wake.notify_one();
    if let Some(newest) = recorded.iter().map(|e| e.id.number).max() {
        state.committed.send_if_modified(|n| {
            let newer = newest > *n;
            if newer {
                *n = newest;
            }
            newer
        });
    }
    Ok((StatusCode::CREATED, Json(IngestResponse { data: recorded })))
}

fn ingest_format(headers: &HeaderMap) -> Result<IngestFormat, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(IngestFormat::Json);
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "" => Ok(IngestFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Ok(IngestFormat::Ndjson)
        }
        other => Err(ApiError::bad_request(
            "content_type_unsupported",
            format!(
                "Content-Type `{other}` is not accepted: use application/json or application/x-ndjson"
            ),
        )),
    }
}
