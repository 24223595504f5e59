//! Parsing and validating what a producer sends to the ingest port (SPEC §5).
//!
//! A batch is all-or-nothing: every event is checked, and every problem is reported with the
//! event's index, the field and the reason, so that a producer can fix the whole batch at once.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::catalog::{Catalog, EventType};
use crate::event::{Actor, NewEvent, Subject};
use crate::ids::{OrgId, Token, WorkspaceId};

/// Most events in one request.
pub const MAX_BATCH: usize = 1_000;
/// Largest serialized payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// One thing wrong with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// Position of the event in the batch (0 for a single event).
    pub index: usize,
    /// The field, dotted for nested ones (`actor.type`).
    pub field: String,
    pub reason: String,
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON / NDJSON of the expected shape. Nothing about single events.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, but one or more events are invalid.
    #[error("{} event(s) in the batch are invalid", .0.len())]
    Invalid(Vec<FieldProblem>),
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestFormat {
    /// One event object, or `{"events": [...]}`.
    Json,
    /// One event object per line.
    Ndjson,
}

/// Parses and validates a whole ingest body.
///
/// Each event is split into its fields as JSON text first; the small fields are then read
/// as values, and the payload is kept as the text the producer sent, without insignificant
/// whitespace. Reading the payload into a map and writing it out again was most of the
/// parse time (4.7 µs of a 400-byte event's parse; BENCHMARKS.md).
pub fn parse_ingest_body(
    body: &[u8],
    format: IngestFormat,
    catalog: &Catalog,
) -> Result<Vec<NewEvent>, IngestError> {
    let raw = match format {
        IngestFormat::Json => split_json(body)?,
        IngestFormat::Ndjson => split_ndjson(body)?,
    };
    if raw.is_empty() {
        return Err(IngestError::Malformed(
            "the request contains no events".into(),
        ));
    }
    if raw.len() > MAX_BATCH {
        return Err(IngestError::Malformed(format!(
            "a batch holds at most {MAX_BATCH} events, got {}",
            raw.len()
        )));
    }
    let mut events = Vec::with_capacity(raw.len());
    let mut problems = Vec::new();
    for (index, text) in raw.into_iter().enumerate() {
        match validate_event(index, text, catalog) {
            Ok(e) => events.push(e),
            Err(mut p) => problems.append(&mut p),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(IngestError::Invalid(problems))
    }
}

fn json_error(e: serde_json::Error, line: Option<usize>) -> IngestError {
    let place = match line {
        Some(l) => format!("line {l} of the NDJSON body"),
        None => format!("line {} column {}", e.line(), e.column()),
    };
    IngestError::Malformed(format!("the body is not valid JSON ({place}): {e}"))
}

/// One event as sent: its fields in order, each value still JSON text; or, if it is not an
/// object, what it is instead.
enum RawEvent<'a> {
    Fields(Vec<(String, &'a RawValue)>),
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Event;
        impl<'de> Visitor<'de> for Event {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(field) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(field);
                }
                Ok(RawEvent::Fields(fields))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawEvent::NotObject("an array"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawEvent::NotObject("a string"))
            }
        }
        deserializer.deserialize_any(Event)
    }
}

/// The first byte of `body` that is not whitespace.
fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// A JSON body as sent, read in one pass: a batch (its `events` value, and the names of any
/// other top-level fields) or a single event.
enum RawBody<'a> {
    Batch {
        events: RawEventList<'a>,
        other: Vec<String>,
    },
    Event(RawEvent<'a>),
}

/// The value of a batch's `events` field.
enum RawEventList<'a> {
    List(Vec<RawEvent<'a>>),
    NotList,
}

impl<'de> Deserialize<'de> for RawBody<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = RawBody<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event object or {\"events\": [...]}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                let mut events = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "events" {
                        // A later duplicate wins, as in a map.
                        events = Some(map.next_value::<RawEventList>()?);
                    } else {
                        fields.push((key, map.next_value::<&'de RawValue>()?));
                    }
                }
                Ok(match events {
                    Some(events) => RawBody::Batch {
                        events,
                        other: fields.into_iter().map(|(k, _)| k).collect(),
                    },
                    None => RawBody::Event(RawEvent::Fields(fields)),
                })
            }
        }
        deserializer.deserialize_map(Body)
    }
}

impl<'de> Deserialize<'de> for RawEventList<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = RawEventList<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(event) = seq.next_element()? {
                    events.push(event);
                }
                Ok(RawEventList::List(events))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawEventList::NotList)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawEventList::NotList)
            }
        }
        deserializer.deserialize_any(List)
    }
}

fn split_json(body: &[u8]) -> Result<Vec<RawEvent<'_>>, IngestError> {
    match first_byte(body) {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(IngestError::Malformed(
                "send a batch as {\"events\": [...]}, not as a bare array".into(),
            ));
        }
        _ => {
            // Not an object: say why, as precisely as the JSON parser can.
            serde_json::from_slice::<IgnoredAny>(body).map_err(|e| json_error(e, None))?;
            return Err(IngestError::Malformed(
                "the body must be an event object or {\"events\": [...]}".into(),
            ));
        }
    }
    // The events of a batch are split out in the same pass that reads the body.
    match serde_json::from_slice::<RawBody>(body).map_err(|e| json_error(e, None))? {
        RawBody::Event(event) => Ok(vec![event]),
        RawBody::Batch { other, .. } if !other.is_empty() => Err(IngestError::Malformed(format!(
            "a batch body has only an `events` array; unexpected field(s): {}",
            other.join(", ")
        ))),
        RawBody::Batch {
            events: RawEventList::List(events),
            ..
        } => Ok(events),
        RawBody::Batch {
            events: RawEventList::NotList,
            ..
        } => Err(IngestError::Malformed(
            "`events` must be an array of event objects".into(),
        )),
    }
}

fn split_ndjson(body: &[u8]) -> Result<Vec<RawEvent<'_>>, IngestError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() == MAX_BATCH {
            return Err(IngestError::Malformed(format!(
                "a batch holds at most {MAX_BATCH} events"
            )));
        }
        out.push(serde_json::from_slice(line).map_err(|e| json_error(e, Some(i + 1)))?);
    }
    Ok(out)
}

/// `text` (valid JSON) without whitespace outside strings; borrowed when it has none.
fn compact(text: &str) -> Cow<'_, str> {
    let insignificant = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Option<Vec<u8>> = None;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if insignificant(b) {
            out.get_or_insert_with(|| text.as_bytes()[..i].to_vec());
            continue;
        }
        if let Some(out) = &mut out {
            out.push(b);
        }
    }
    match out {
        // Only ASCII whitespace was dropped, so the bytes are still UTF-8.
        Some(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        None => Cow::Borrowed(text),
    }
}

/// A JSON value read only to check that no object in it has a key twice; nothing is kept.
///
/// The payload is stored and served as the producer sent it, so a repeated key would reach
/// readers and webhook receivers as is, and JSON parsers disagree on which of the two
/// values such an object holds (the first, the last, or an error). Refused at ingest.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Check;
        impl<'de> Visitor<'de> for Check {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    keys.push(key);
                    map.next_value::<UniqueKeys>()?;
                }
                // Sorted, a repeated key sits next to itself.
                keys.sort_unstable();
                match keys.windows(2).find(|pair| pair[0] == pair[1]) {
                    Some(pair) => Err(serde::de::Error::custom(format_args!(
                        "has the key \"{}\" twice in one object",
                        pair[0]
                    ))),
                    None => Ok(UniqueKeys),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<UniqueKeys>()?.is_some() {}
                Ok(UniqueKeys)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(UniqueKeys)
            }
        }
        deserializer.deserialize_any(Check)
    }
}

/// An object key, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

const ALLOWED_FIELDS: &[&str] = &[
    "type",
    "organization_id",
    "workspace_id",
    "actor",
    "subject",
    "payload",
    "idempotency_key",
];

/// Validates one event, collecting every problem rather than stopping at the first.
fn validate_event(
    index: usize,
    event: RawEvent<'_>,
    catalog: &Catalog,
) -> Result<NewEvent, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, reason: String| {
        problems.push(FieldProblem {
            index,
            field: field.to_string(),
            reason,
        })
    };
    let fields = match event {
        RawEvent::Fields(fields) => fields,
        RawEvent::NotObject(kind) => {
            problem("", format!("each event must be a JSON object, got {kind}"));
            return Err(problems);
        }
    };
    // Every field but the payload is read as a value (a later duplicate wins, as in a map).
    let mut obj = Map::new();
    let mut payload_text = None;
    for (key, value) in fields {
        if key == "payload" {
            payload_text = Some(value);
            continue;
        }
        match serde_json::from_str::<Value>(value.get()) {
            Ok(v) => {
                obj.insert(key, v);
            }
            Err(e) => problem(&key, format!("cannot be read: {e}")),
        }
    }

    for key in obj.keys() {
        if !ALLOWED_FIELDS.contains(&key.as_str()) {
            let reason = match key.as_str() {
                "id" | "created_at" => "assigned by Tidings; do not send it".to_string(),
                _ => format!("unknown field; allowed: {}", ALLOWED_FIELDS.join(", ")),
            };
            problem(key, reason);
        }
    }

    let event_type = match take_string(&mut obj, "type") {
        Ok(s) => match EventType::parse(&s) {
            Ok(t) if catalog.contains(t.as_str()) => Some(t),
            Ok(t) => {
                problem(
                    "type",
                    format!("`{t}` is not in the event catalog (GET /v1/event-types)"),
                );
                None
            }
            Err(e) => {
                problem("type", e);
                None
            }
        },
        Err(e) => {
            problem("type", e);
            None
        }
    };

    let organization_id = match take_string(&mut obj, "organization_id") {
        Ok(s) => s
            .parse::<OrgId>()
            .map_err(|e| problem("organization_id", e.0))
            .ok(),
        Err(e) => {
            problem("organization_id", e);
            None
        }
    };

    let workspace_id = match obj.remove("workspace_id") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => s
            .parse::<WorkspaceId>()
            .map(Some)
            .map_err(|e| problem("workspace_id", e.0))
            .ok(),
        Some(other) => {
            problem(
                "workspace_id",
                format!("must be a string or null, got {}", kind(&other)),
            );
            None
        }
    };

    let actor = match take_object(&mut obj, "actor") {
        Ok(mut a) => {
            let t = take_string(&mut a, "type")
                .and_then(|s| s.parse().map_err(|e: crate::ids::IdError| e.0))
                .map_err(|e| problem("actor.type", e))
                .ok();
            let id = take_token(&mut a, "id")
                .map_err(|e| problem("actor.id", e))
                .ok();
            for k in a.keys() {
                problem(
                    &format!("actor.{k}"),
                    "unknown field; allowed: type, id".into(),
                );
            }
            t.zip(id).map(|(actor_type, id)| Actor { actor_type, id })
        }
        Err(e) => {
            problem("actor", e);
            None
        }
    };

    let subject = match take_object(&mut obj, "subject") {
        Ok(mut s) => {
            let t = take_token(&mut s, "type")
                .map_err(|e| problem("subject.type", e))
                .ok();
            let id = take_token(&mut s, "id")
                .map_err(|e| problem("subject.id", e))
                .ok();
            for k in s.keys() {
                problem(
                    &format!("subject.{k}"),
                    "unknown field; allowed: type, id".into(),
                );
            }
            t.zip(id)
                .map(|(subject_type, id)| Subject { subject_type, id })
        }
        Err(e) => {
            problem("subject", e);
            None
        }
    };

    let payload = match payload_text {
        Some(text) if text.get().starts_with('{') => {
            // Stored and served as sent, minus whitespace outside strings.
            let compacted = compact(text.get());
            if compacted.len() > MAX_PAYLOAD_BYTES {
                problem(
                    "payload",
                    format!(
                        "is {} bytes serialized; the limit is {MAX_PAYLOAD_BYTES}",
                        compacted.len()
                    ),
                );
                None
            } else if let Err(e) = serde_json::from_str::<UniqueKeys>(&compacted) {
                problem(
                    "payload",
                    format!(
                        "{e} of the payload without whitespace; each key of an object must be unique"
                    ),
                );
                None
            } else {
                match compacted {
                    // Already validated with the body: copied as it is.
                    Cow::Borrowed(_) => Some(text.to_owned()),
                    Cow::Owned(compacted) => match RawValue::from_string(compacted) {
                        Ok(raw) => Some(raw),
                        Err(e) => {
                            problem("payload", format!("cannot be read: {e}"));
                            None
                        }
                    },
                }
            }
        }
        None => {
            problem("payload", "is required (send {} for no data)".into());
            None
        }
        Some(other) => {
            let kind = serde_json::from_str::<Value>(other.get()).map_or("not JSON", |v| kind(&v));
            problem("payload", format!("must be a JSON object, got {kind}"));
            None
        }
    };

    let idempotency_key = match obj.remove("idempotency_key") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(k)) => {
            let n = k.chars().count();
            if n == 0 || n > MAX_IDEMPOTENCY_KEY {
                problem(
                    "idempotency_key",
                    format!("must be 1–{MAX_IDEMPOTENCY_KEY} characters, got {n}"),
                );
                None
            } else if k.chars().any(char::is_control) {
                problem(
                    "idempotency_key",
                    "must not contain control characters".into(),
                );
                None
            } else {
                Some(Some(k))
            }
        }
        Some(other) => {
            problem(
                "idempotency_key",
                format!("must be a string, got {}", kind(&other)),
            );
            None
        }
    };

    match (
        event_type,
        organization_id,
        workspace_id,
        actor,
        subject,
        payload,
        idempotency_key,
    ) {
        (
            Some(event_type),
            Some(organization_id),
            Some(workspace_id),
            Some(actor),
            Some(subject),
            Some(payload),
            Some(idempotency_key),
        ) if problems.is_empty() => Ok(NewEvent {
            event_type,
            organization_id,
            workspace_id,
            actor,
            subject,
            payload,
            idempotency_key,
        }),
        _ => Err(problems),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take_string(obj: &mut Map<String, Value>, field: &str) -> Result<String, String> {
    match obj.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err("is required".into()),
        Some(other) => Err(format!("must be a string, got {}", kind(&other))),
    }
}

fn take_token(obj: &mut Map<String, Value>, field: &str) -> Result<Token, String> {
    take_string(obj, field).and_then(|s| s.parse::<Token>().map_err(|e| e.0))
}

fn take_object(obj: &mut Map<String, Value>, field: &str) -> Result<Map<String, Value>, String> {
    match obj.remove(field) {
        Some(Value::Object(m)) => Ok(m),
        None | Some(Value::Null) => Err("is required".into()),
        Some(other) => Err(format!("must be an object, got {}", kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "type": "service_line.activated",
            "organization_id": "ORG-26-090500",
            "workspace_id": "WS-26-000021",
            "actor": {"type": "user", "id": "USR-26-000044"},
            "subject": {"type": "service_line", "id": "LIN-26-084729"},
            "payload": {"previous_status": "draft", "new_status": "active"}
        })
    }

    fn parse(v: &Value) -> Result<Vec<NewEvent>, IngestError> {
        parse_ingest_body(
            v.to_string().as_bytes(),
            IngestFormat::Json,
            &Catalog::builtin(),
        )
    }

    #[test]
    fn accepts_single_batch_and_ndjson() {
        assert_eq!(parse(&good()).unwrap().len(), 1);
        assert_eq!(
            parse(&json!({"events": [good(), good()]})).unwrap().len(),
            2
        );
        let nd = format!("{}\n\n{}\r\n", good(), good());
        let events =
            parse_ingest_body(nd.as_bytes(), IngestFormat::Ndjson, &Catalog::builtin()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].workspace_id.as_ref().unwrap().as_str(),
            "WS-26-000021"
        );
    }

    #[test]
    fn reports_every_problem_with_index_and_field() {
        let mut bad = good();
        bad["type"] = json!("invoice.exploded");
        bad["actor"]["type"] = json!("robot");
        bad["payload"] = json!([1]);
        bad["id"] = json!("EVT-26-000001");
        let Err(IngestError::Invalid(p)) = parse(&json!({"events": [good(), bad]})) else {
            panic!("expected invalid")
        };
        let fields: Vec<(usize, &str)> = p.iter().map(|p| (p.index, p.field.as_str())).collect();
        assert!(fields.contains(&(1, "type")));
        assert!(fields.contains(&(1, "actor.type")));
        assert!(fields.contains(&(1, "payload")));
        assert!(fields.contains(&(1, "id")));
        assert!(p.iter().all(|p| p.index == 1));
    }

    #[test]
    fn workspace_may_be_null_or_absent() {
        let mut e = good();
        e["workspace_id"] = Value::Null;
        assert_eq!(parse(&e).unwrap()[0].workspace_id, None);
        e.as_object_mut().unwrap().remove("workspace_id");
        assert_eq!(parse(&e).unwrap()[0].workspace_id, None);
    }

    #[test]
    fn payload_limit_is_64_kib() {
        let mut e = good();
        e["payload"] = json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES)});
        assert!(matches!(parse(&e), Err(IngestError::Invalid(_))));
        e["payload"] = json!({"blob": "x".repeat(MAX_PAYLOAD_BYTES - 20)});
        assert!(parse(&e).is_ok());
    }

    #[test]
    fn malformed_bodies_are_refused_as_a_whole() {
        let c = Catalog::builtin();
        for body in [
            &b"{"[..],
            b"[]",
            b"42",
            b"{\"events\": 3}",
            b"{\"events\": []}",
        ] {
            assert!(
                matches!(
                    parse_ingest_body(body, IngestFormat::Json, &c),
                    Err(IngestError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let too_many = json!({"events": vec![good(); MAX_BATCH + 1]});
        assert!(matches!(parse(&too_many), Err(IngestError::Malformed(_))));
    }

    /// The batch's shape is read in the same pass as its events; each way of getting it
    /// wrong gets its own message.
    #[test]
    fn batch_shapes_are_named_in_their_errors() {
        let message = |body: String| match parse_ingest_body(
            body.as_bytes(),
            IngestFormat::Json,
            &Catalog::builtin(),
        ) {
            Err(IngestError::Malformed(m)) => m,
            other => panic!("{body}: {other:?}"),
        };
        assert!(message(r#"{"events": {"a": [1]}}"#.into()).contains("`events` must be an array"));
        let extra = message(format!(
            r#"{{"events": [{}], "extra": 1, "more": {{}}}}"#,
            good()
        ));
        assert!(
            extra.ends_with("unexpected field(s): extra, more"),
            "{extra}"
        );
        let Err(IngestError::Invalid(p)) = parse(&json!({"events": [1, good()]})) else {
            panic!("a number among the events must be refused")
        };
        assert_eq!((p.len(), p[0].index, p[0].field.as_str()), (1, 0, ""));
        assert!(p[0].reason.ends_with("got a number"), "{}", p[0].reason);
        // A later `events` wins, as a later duplicate of any field does.
        let twice = format!(r#"{{"events": 3, "events": [{}, {}]}}"#, good(), good());
        let events =
            parse_ingest_body(twice.as_bytes(), IngestFormat::Json, &Catalog::builtin()).unwrap();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn compacting_drops_only_whitespace_outside_strings() {
        assert!(matches!(compact(r#"{"a":1}"#), Cow::Borrowed(_)));
        assert_eq!(
            compact("{ \"a b\" :\n [1, \"x \\\" y\"],\t\"c\": {} }\r\n"),
            r#"{"a b":[1,"x \" y"],"c":{}}"#
        );
        assert_eq!(compact(r#"{"é ü": " \\"}"#), r#"{"é ü":" \\"}"#);
    }

    #[test]
    fn the_payload_is_kept_as_sent_without_whitespace() {
        let body = r#"{"type": "service_line.activated", "organization_id": "ORG-26-090500",
            "actor": {"type": "user", "id": "USR-26-000044"},
            "subject": {"type": "service_line", "id": "LIN-26-084729"},
            "payload": {
                "z_first": 1.50,
                "amount": 12345678901234567890123,
                "note": "two  spaces\tand \"quotes\"",
                "nested": {"b": [true, null]}
            }}"#;
        let events =
            parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin()).unwrap();
        assert_eq!(
            events[0].payload.get(),
            r#"{"z_first":1.50,"amount":12345678901234567890123,"note":"two  spaces\tand \"quotes\"","nested":{"b":[true,null]}}"#
        );
    }

    #[test]
    fn a_later_duplicate_field_wins() {
        let mut body = good().to_string();
        body.insert_str(1, r#""type":"user.invited","#);
        body.pop();
        body.push_str(r#","payload":{"second":true}}"#);
        let events =
            parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin()).unwrap();
        assert_eq!(events[0].event_type.as_str(), "service_line.activated");
        assert_eq!(events[0].payload.get(), r#"{"second":true}"#);
    }

    /// The payload is stored as sent, so an object with a key twice (which JSON parsers
    /// read differently) is refused, at any depth and however the key is spelt.
    #[test]
    fn a_payload_with_a_repeated_key_is_refused() {
        let with = |payload: &str| {
            let e = good().to_string();
            let body = format!(r#"{},"payload":{payload}}}"#, &e[..e.len() - 1]);
            parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin())
        };
        for repeated in [
            r#"{"a": 1, "b": 2, "a": 3}"#,
            r#"{"x": {"n": [1, {"k": true, "k": false}]}}"#,
            r#"{"a": 1, "\u0061": 2}"#,
        ] {
            let Err(IngestError::Invalid(p)) = with(repeated) else {
                panic!("{repeated} was accepted")
            };
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].field, "payload");
            assert!(
                p[0].reason.contains("twice in one object"),
                "{}",
                p[0].reason
            );
        }
        let Err(IngestError::Invalid(p)) = with(r#"{"a": 1, "a": 3}"#) else {
            unreachable!()
        };
        // The position is in the payload as stored, and the message says so.
        assert_eq!(
            p[0].reason,
            r#"has the key "a" twice in one object at line 1 column 13 of the payload without whitespace; each key of an object must be unique"#
        );
        // The same key in different objects is fine.
        let events = with(r#"{"a": {"a": 1}, "l": [{"a": 1}, {"a": 2}]}"#).unwrap();
        assert_eq!(
            events[0].payload.get(),
            r#"{"a":{"a":1},"l":[{"a":1},{"a":2}]}"#
        );
    }

    /// SPEC §4: "at most 64 KiB serialized". The payload is stored without whitespace
    /// outside strings, so that is what the limit counts.
    #[test]
    fn the_payload_limit_counts_the_payload_as_stored() {
        let blob = "x".repeat(MAX_PAYLOAD_BYTES - 20);
        let padded = format!("{{{}\"blob\": \"{blob}\"}}", " ".repeat(100));
        let with = |payload: &str| {
            let e = good().to_string();
            let body = format!(r#"{},"payload":{payload}}}"#, &e[..e.len() - 1]);
            parse_ingest_body(body.as_bytes(), IngestFormat::Json, &Catalog::builtin())
        };
        assert!(padded.len() > MAX_PAYLOAD_BYTES);
        let stored = with(&padded).unwrap();
        assert_eq!(stored[0].payload.get(), format!(r#"{{"blob":"{blob}"}}"#));
        let over = format!(r#"{{"blob": "{blob}{}"}}"#, "y".repeat(40));
        let Err(IngestError::Invalid(p)) = with(&over) else {
            panic!("a payload over the limit once compacted must be refused")
        };
        assert_eq!(p[0].field, "payload");
    }

    #[test]
    fn idempotency_key_is_bounded() {
        let mut e = good();
        e["idempotency_key"] = json!("k".repeat(256));
        assert!(parse(&e).is_err());
        e["idempotency_key"] = json!("k".repeat(255));
        assert_eq!(
            parse(&e).unwrap()[0]
                .idempotency_key
                .as_deref()
                .map(str::len),
            Some(255)
        );
    }
}
