//! Fan-out's matching of events to webhooks, shared by both backends: what of an event and
//! of a webhook the match needs, and the match itself.

use std::collections::HashMap;

use tidings_domain::TypePattern;
use tidings_domain::webhook::{EventRouting, webhook_wants};

use crate::error::StoreError;
use crate::rows::{parse_patterns, timestamp, two_digit_year, webhook_id};

/// The columns a [`RoutedEvent`] is read from, in this order.
pub(crate) const ROUTING_COLUMNS: &str =
    "seq, org, workspace, type, subject_type, subject_id, created_at";

/// What fan-out and replay need of an event to route it.
pub(crate) struct RoutedEvent {
    pub seq: i64,
    pub org: String,
    pub workspace: Option<String>,
    pub event_type: String,
    pub subject_type: String,
    pub subject_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl RoutedEvent {
    pub fn routing(&self) -> EventRouting<'_> {
        EventRouting {
            organization_id: &self.org,
            workspace_id: self.workspace.as_deref(),
            event_type: &self.event_type,
            subject_type: &self.subject_type,
            subject_id: &self.subject_id,
        }
    }

    /// The year in the event's ID.
    pub fn year(&self) -> Result<u8, StoreError> {
        Ok(two_digit_year(timestamp(self.created_at)?))
    }
}

/// An active webhook as fan-out sees it.
pub(crate) struct ActiveWebhook {
    pub seq: i64,
    id: String,
    workspace: Option<String>,
    patterns: Vec<TypePattern>,
    /// It receives only events numbered above this (set when it became active).
    start_after_seq: i64,
}

impl ActiveWebhook {
    /// From its stored columns (`event_types` comma-separated, `created_at` unix seconds).
    pub fn new(
        seq: i64,
        workspace: Option<String>,
        event_types: &str,
        start_after_seq: i64,
        created_at: i64,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            seq,
            id: webhook_id(seq, timestamp(created_at)?).to_string(),
            workspace,
            patterns: parse_patterns(event_types)?,
            start_after_seq,
        })
    }
}

/// Every (webhook, event) pair of `events` that an active webhook of the event's
/// organization wants, in event order.
pub(crate) fn wanted<'e>(
    events: &'e [RoutedEvent],
    by_org: &HashMap<String, Vec<ActiveWebhook>>,
) -> Vec<(i64, &'e RoutedEvent)> {
    let mut pairs = Vec::new();
    for event in events {
        let Some(hooks) = by_org.get(&event.org) else {
            continue;
        };
        for hook in hooks {
            if event.seq > hook.start_after_seq
                && webhook_wants(
                    &hook.id,
                    &event.org,
                    hook.workspace.as_deref(),
                    &hook.patterns,
                    &event.routing(),
                )
            {
                pairs.push((hook.seq, event));
            }
        }
    }
    pairs
}

/// Events read per page while selecting a replay.
pub(crate) const REPLAY_PAGE: i64 = 5_000;

/// The events `webhook` wants among those `page` returns, oldest first, reading page after
/// page (`page(after)`: up to [`REPLAY_PAGE`] events numbered above `after`) and stopping as
/// soon as more than `limit` are wanted: a refused replay reads `limit` wanted events and a
/// page at most, never the whole range.
pub(crate) fn replay_selection(
    webhook: &tidings_domain::webhook::Webhook,
    limit: usize,
    mut page: impl FnMut(i64) -> Result<Vec<RoutedEvent>, StoreError>,
) -> Result<Vec<RoutedEvent>, StoreError> {
    let id = webhook.id.to_string();
    let org = webhook.organization_id.as_str();
    let workspace = webhook.workspace_id.as_ref().map(|w| w.as_str());
    let mut wanted = Vec::new();
    let mut after = i64::MIN;
    loop {
        let events = page(after)?;
        let full = events.len() as i64 >= REPLAY_PAGE;
        after = events.last().map_or(after, |e| e.seq);
        wanted.extend(
            events
                .into_iter()
                .filter(|e| webhook_wants(&id, org, workspace, &webhook.event_types, &e.routing())),
        );
        if wanted.len() > limit {
            return Err(StoreError::TooMany { limit });
        }
        if !full {
            return Ok(wanted);
        }
    }
}
