//! `GET /v1/events/stream`: a Server-Sent Events tail of the event stream.
//!
//! The stream reads the store oldest-first after a position (the newest event when it
//! connects, or `Last-Event-ID`), so a client that reconnects with the last id it saw misses
//! nothing and sees nothing twice. It is woken when this process commits events and polls
//! once a second for the rest. It holds at most one page (100 events) in memory and only
//! reads more when the client has taken what it has, so a slow reader costs a bounded
//! amount of memory however far it lags.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tidings_domain::{Event, EventFilter, EventId, Order, Params, Scope, Tenant};
use tidings_store::PageRequest;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::pagination::query_pairs;

/// Decrements the open-streams gauge when the stream is dropped (client gone).
struct Connected;

impl Connected {
    fn new() -> Self {
        metrics::gauge!("tidings_stream_connections").increment(1.0);
        Self
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!("tidings_stream_connections").decrement(1.0);
    }
}

struct Tail {
    state: AppState,
    tenant: Tenant,
    filter: EventFilter,
    position: u64,
    buffer: VecDeque<Event>,
    committed: tokio::sync::watch::Receiver<u64>,
    _connected: Connected,
}

impl Tail {
    async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.position = event.id.number;
                let data = serde_json::to_string(&event).unwrap_or_default();
                return SseEvent::default().id(event.id.to_string()).data(data);
            }
            let page = PageRequest {
                limit: 100,
                order: Order::Asc,
                after: Some(self.position),
            };
            match self
                .state
                .store
                .list_events(&self.tenant, &self.filter, page)
                .await
            {
                Ok(found) if !found.items.is_empty() => self.buffer.extend(found.items),
                Ok(_) => {
                    tokio::select! {
                        _ = self.committed.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Follow new events as Server-Sent Events (`id:` is the event id; reconnect with
/// `Last-Event-ID` to resume). Takes the list's filters, without cursor, limit or order.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    security(("bearer" = [])),
    params(
        ("organization_id" = Option<String>, Query), ("workspace_id" = Option<String>, Query),
        ("type" = Option<String>, Query), ("subject_type" = Option<String>, Query),
        ("subject_id" = Option<String>, Query), ("actor_id" = Option<String>, Query),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "text/event-stream of events", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn stream_events(
    State(state): State<AppState>,
    key: Authenticated,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    key.require(Scope::EventsRead)?;
    let mut params = Params::new(query_pairs(query.as_deref()))?;
    let mut filter = EventFilter::take_from(&mut params)?;
    params.finish()?;
    let tenant = key.tenant_for_list(filter.organization_id.as_ref())?;
    filter.resolve_types(&state.catalog)?;
    let position = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            let id: EventId = text.parse().map_err(|e: tidings_domain::IdError| {
                ApiError::bad_request("parameter_invalid", format!("Last-Event-ID: {}", e.0))
                    .with_param("Last-Event-ID")
            })?;
            id.number
        }
        None => state.store.high_water_mark().await?,
    };
    let tail = Tail {
        committed: state.committed.subscribe(),
        state,
        tenant,
        filter,
        position,
        buffer: VecDeque::new(),
        _connected: Connected::new(),
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next_event().await;
        Some((Ok(event), tail))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
