//! The event envelope (SPEC §2) and the validated input a producer sends (SPEC §5).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::catalog::EventType;
use crate::ids::{EventId, IdError, OrgId, Token, WorkspaceId};

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    Agent,
    ApiKey,
    System,
    Integration,
}

impl ActorType {
    pub const ALL: [ActorType; 5] = [
        ActorType::User,
        ActorType::Agent,
        ActorType::ApiKey,
        ActorType::System,
        ActorType::Integration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Agent => "agent",
            ActorType::ApiKey => "api_key",
            ActorType::System => "system",
            ActorType::Integration => "integration",
        }
    }
}

impl fmt::Display for ActorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActorType {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        ActorType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                IdError(format!(
                    "`{}` is not an actor type: expected one of user, agent, api_key, system, integration",
                    crate::ids::truncate_for_message(s)
                ))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Actor {
    #[serde(rename = "type")]
    pub actor_type: ActorType,
    #[schema(value_type = String, example = "USR-26-000044")]
    pub id: Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Subject {
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "service_line")]
    pub subject_type: Token,
    #[schema(value_type = String, example = "LIN-26-084729")]
    pub id: Token,
}

/// An event as the API returns it and as webhooks deliver it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    #[schema(value_type = String, example = "EVT-26-044912")]
    pub id: EventId,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "service_line.activated")]
    pub event_type: EventType,
    #[schema(value_type = String, example = "ORG-26-090500")]
    pub organization_id: OrgId,
    /// `null` for organization-level events.
    #[schema(value_type = Option<String>, example = "WS-26-000021")]
    pub workspace_id: Option<WorkspaceId>,
    pub actor: Actor,
    pub subject: Subject,
    /// Event-type-specific data, exactly as the producer sent it.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// When the event was durably recorded (RFC 3339, UTC, whole seconds).
    #[serde(serialize_with = "serialize_timestamp")]
    #[schema(value_type = String, example = "2026-01-15T09:00:00Z")]
    pub created_at: DateTime<Utc>,
}

/// Renders a timestamp the way the seed does: `2026-01-15T09:00:00Z`.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn serialize_timestamp<S: serde::Serializer>(
    t: &DateTime<Utc>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(t))
}

pub fn serialize_opt_timestamp<S: serde::Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_timestamp(t)),
        None => s.serialize_none(),
    }
}

/// A validated event a producer asked to record; the store assigns `id` and `created_at`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: EventType,
    pub organization_id: OrgId,
    pub workspace_id: Option<WorkspaceId>,
    pub actor: Actor,
    pub subject: Subject,
    /// The payload as compact JSON (always an object).
    pub payload: Box<RawValue>,
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// The event as recorded, numbered `id` at `created_at` (the idempotency key is not
    /// part of an event's public form).
    pub fn recorded(self, id: EventId, created_at: DateTime<Utc>) -> Event {
        Event {
            id,
            event_type: self.event_type,
            organization_id: self.organization_id,
            workspace_id: self.workspace_id,
            actor: self.actor,
            subject: self.subject,
            payload: self.payload,
            created_at,
        }
    }
}
