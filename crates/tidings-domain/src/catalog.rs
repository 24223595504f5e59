//! The event-type catalog (SPEC §3) and type patterns used by filters and subscriptions.
//!
//! Types are namespaced `domain.action`; the action may itself contain dots
//! (`agent.run.completed`). The built-in catalog is the seed's table; operators extend it in
//! configuration. Ingesting a type that is not in the catalog is rejected.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::truncate_for_message;

/// A syntactically valid event type name: lower-case `domain.action[.more]`, each segment
/// `[a-z0-9_]+`, at most 128 characters. Whether it is in the catalog is a separate question.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "event type must be 1–{} characters, got {}",
                Self::MAX_LEN,
                s.len()
            ));
        }
        let segments: Vec<&str> = s.split('.').collect();
        let well_formed = segments.len() >= 2
            && segments.iter().all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if !well_formed {
            return Err(format!(
                "`{}` is not an event type: expected lower-case `domain.action`, e.g. `invoice.paid`",
                truncate_for_message(s)
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first dot.
    pub fn domain(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of the catalog, as `GET /v1/event-types` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypeInfo {
    /// The type name, e.g. `invoice.finalized`.
    pub name: String,
    pub description: String,
    /// `true` for the seed's types, `false` for operator-added ones.
    #[serde(default)]
    pub builtin: bool,
}

const BUILTIN: &[(&str, &str)] = &[
    ("service_line.activated", "A service line became active."),
    ("service_line.paused", "A service line was paused."),
    ("service_line.closed", "A service line was closed."),
    (
        "service_line.status_changed",
        "A service line moved from one status to another.",
    ),
    ("invoice.finalized", "An invoice was finalized and issued."),
    ("invoice.paid", "An invoice was paid in full."),
    (
        "invoice.payment_failed",
        "A payment attempt for an invoice failed.",
    ),
    ("invoice.voided", "An invoice was voided."),
    ("incident.opened", "An incident was opened."),
    ("incident.resolved", "An incident was resolved."),
    (
        "incident.severity_changed",
        "An incident's severity changed.",
    ),
    ("agent.run.started", "An agent started a run."),
    ("agent.run.completed", "An agent run completed."),
    ("agent.run.failed", "An agent run failed."),
    ("agent.policy_violated", "An agent violated a policy."),
    ("user.invited", "A user was invited."),
    ("user.role_changed", "A user's role changed."),
    ("user.deactivated", "A user was deactivated."),
    ("integration.connected", "An integration was connected."),
    ("integration.sync_failed", "An integration failed to sync."),
    (
        "integration.disconnected",
        "An integration was disconnected.",
    ),
    ("execution.blocked", "An execution was blocked."),
    ("execution.resumed", "A blocked execution resumed."),
    (
        "capacity.utilisation_warning",
        "Capacity utilisation crossed a warning threshold.",
    ),
    ("capacity.gap_detected", "A capacity gap was detected."),
    ("task.created", "A task was created."),
    ("task.status_changed", "A task's status changed."),
    ("task.assigned", "A task was assigned."),
    (
        "webhook.delivery_failed",
        "A webhook delivery exhausted its retries.",
    ),
    (
        "webhook.verification_failed",
        "A webhook endpoint failed its verification challenge.",
    ),
];

/// The catalog of event types an installation accepts.
#[derive(Debug, Clone)]
pub struct Catalog {
    types: BTreeMap<String, EventTypeInfo>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The seed's table.
    pub fn builtin() -> Self {
        let types = BUILTIN
            .iter()
            .map(|(name, description)| {
                (
                    name.to_string(),
                    EventTypeInfo {
                        name: name.to_string(),
                        description: description.to_string(),
                        builtin: true,
                    },
                )
            })
            .collect();
        Self { types }
    }

    /// Adds operator-defined types. A name must be a well-formed type and must not shadow a
    /// built-in one.
    pub fn extend(&mut self, extra: Vec<EventTypeInfo>) -> Result<(), String> {
        for mut info in extra {
            EventType::parse(&info.name)?;
            if self.types.get(&info.name).is_some_and(|t| t.builtin) {
                return Err(format!("`{}` is a built-in event type", info.name));
            }
            info.builtin = false;
            self.types.insert(info.name.clone(), info);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&EventTypeInfo> {
        self.types.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }

    /// Every type, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &EventTypeInfo> {
        self.types.values()
    }

    /// Whether any catalog type matches the pattern (so a typo in a filter can be reported).
    pub fn matches_any(&self, pattern: &TypePattern) -> bool {
        self.types.keys().any(|t| pattern.matches(t))
    }
}

/// A type selector: an exact type, `domain.*` (every type whose name starts with `domain.`),
/// or `*` (everything).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum TypePattern {
    All,
    /// Holds the prefix including the trailing dot, e.g. `invoice.`.
    Prefix(String),
    Exact(EventType),
}

impl TypePattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(TypePattern::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            // Validate the prefix segments by pretending it is a type.
            EventType::parse(&format!("{prefix}.x")).map_err(|_| {
                format!(
                    "`{}` is not a type pattern: expected `domain.*` or an exact type",
                    truncate_for_message(s)
                )
            })?;
            return Ok(TypePattern::Prefix(format!("{prefix}.")));
        }
        EventType::parse(s).map(TypePattern::Exact)
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            TypePattern::All => true,
            TypePattern::Prefix(p) => event_type.starts_with(p.as_str()),
            TypePattern::Exact(t) => t.as_str() == event_type,
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypePattern::All => f.write_str("*"),
            TypePattern::Prefix(p) => write!(f, "{p}*"),
            TypePattern::Exact(t) => f.write_str(t.as_str()),
        }
    }
}

impl From<TypePattern> for String {
    fn from(p: TypePattern) -> String {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_the_seed_table() {
        let c = Catalog::builtin();
        assert_eq!(c.iter().count(), 30);
        assert!(c.contains("agent.run.completed"));
        assert!(c.contains("capacity.utilisation_warning"));
        assert!(!c.contains("agent.run"));
    }

    #[test]
    fn event_types_are_namespaced() {
        assert!(EventType::parse("invoice.paid").is_ok());
        assert!(EventType::parse("agent.run.completed").is_ok());
        assert_eq!(
            EventType::parse("agent.run.completed").unwrap().domain(),
            "agent"
        );
        for bad in [
            "invoice",
            "Invoice.paid",
            "invoice..paid",
            ".paid",
            "invoice.",
            "a b.c",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let p = TypePattern::parse("invoice.*").unwrap();
        assert!(p.matches("invoice.paid"));
        assert!(!p.matches("invoices.paid"));
        assert!(!p.matches("incident.opened"));
        let deep = TypePattern::parse("agent.run.*").unwrap();
        assert!(deep.matches("agent.run.failed"));
        assert!(!deep.matches("agent.policy_violated"));
        assert!(TypePattern::parse("*").unwrap().matches("task.created"));
        assert!(
            TypePattern::parse("task.created")
                .unwrap()
                .matches("task.created")
        );
        assert!(TypePattern::parse("task*").is_err());
        assert!(TypePattern::parse("*.created").is_err());
        assert_eq!(
            TypePattern::parse("invoice.*").unwrap().to_string(),
            "invoice.*"
        );
    }

    #[test]
    fn extension_cannot_shadow_builtins() {
        let mut c = Catalog::builtin();
        let info = |name: &str| EventTypeInfo {
            name: name.into(),
            description: "d".into(),
            builtin: true,
        };
        assert!(c.extend(vec![info("invoice.paid")]).is_err());
        c.extend(vec![info("billing.credit_applied")]).unwrap();
        assert!(!c.get("billing.credit_applied").unwrap().builtin);
    }
}
