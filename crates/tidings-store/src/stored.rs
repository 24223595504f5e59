//! Stored rows as domain values, once for both backends: each backend reads its rows through
//! [`Columns`], and the conversions here decide what a valid row is. A column of the wrong
//! type or an unparsable value is a [`StoreError`], never a panic.

use serde_json::value::RawValue;
use tidings_domain::audit::{AuditActor, AuditRecord, AuditResource, ChainedRecord};
use tidings_domain::ids::AuditId;
use tidings_domain::webhook::Webhook;
use tidings_domain::{Actor, ApiKey, Event, EventId, EventType, KeyId, Scope, Subject};

use crate::error::{Context, StoreError};
use crate::rows::{corrupt, parse_patterns, timestamp, two_digit_year, webhook_id};

/// One result row, read by column position.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError>;
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.get(i).context("reading a text column")
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.get(i).context("reading a text column")
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.get(i).context("reading an integer column")
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.get(i).context("reading an integer column")
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.get(i).context("reading a blob column")
    }
}

impl Columns for postgres::Row {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.try_get(i).context("reading a text column")
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.try_get(i).context("reading a text column")
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.try_get(i).context("reading an integer column")
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(i).context("reading an integer column")
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.try_get(i).context("reading a bytea column")
    }
}

/// The columns [`event`] reads, in this order.
pub(crate) const EVENT_COLUMNS: &str = "seq, org, workspace, type, actor_type, actor_id, subject_type, subject_id, payload, created_at";

pub(crate) fn event(row: &impl Columns) -> Result<Event, StoreError> {
    let created_at = timestamp(row.int(9)?)?;
    Ok(Event {
        id: EventId::new(two_digit_year(created_at), row.int(0)? as u64),
        event_type: EventType::parse(&row.text(3)?).map_err(|e| corrupt("type", e))?,
        organization_id: row.text(1)?.parse().map_err(|e| corrupt("org", e))?,
        workspace_id: row
            .opt_text(2)?
            .map(|w| w.parse())
            .transpose()
            .map_err(|e| corrupt("workspace", e))?,
        actor: Actor {
            actor_type: row.text(4)?.parse().map_err(|e| corrupt("actor", e))?,
            id: row.text(5)?.parse().map_err(|e| corrupt("actor", e))?,
        },
        subject: Subject {
            subject_type: row.text(6)?.parse().map_err(|e| corrupt("subject", e))?,
            id: row.text(7)?.parse().map_err(|e| corrupt("subject", e))?,
        },
        payload: RawValue::from_string(row.text(8)?).map_err(|e| corrupt("payload", e))?,
        created_at,
    })
}

/// The columns [`api_key`] reads, in this order.
pub(crate) const KEY_COLUMNS: &str =
    "seq, org, scopes, rate_limit, description, created_at, revoked_at";

pub(crate) fn api_key(row: &impl Columns) -> Result<ApiKey, StoreError> {
    let created_at = timestamp(row.int(5)?)?;
    Ok(ApiKey {
        id: KeyId::new(two_digit_year(created_at), row.int(0)? as u64),
        organization_id: row
            .opt_text(1)?
            .map(|o| o.parse())
            .transpose()
            .map_err(|e| corrupt("key org", e))?,
        scopes: Scope::parse_list(&row.text(2)?).map_err(|e| corrupt("key scopes", e))?,
        rate_limit: row
            .opt_int(3)?
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("key rate limit", e))?,
        description: row.opt_text(4)?,
        created_at,
        revoked_at: row.opt_int(6)?.map(timestamp).transpose()?,
    })
}

/// The columns [`webhook`] reads, in this order.
pub(crate) const WEBHOOK_COLUMNS: &str = "seq, org, workspace, url, event_types, description, status, disabled_reason, created_at, updated_at";

pub(crate) fn webhook(row: &impl Columns) -> Result<Webhook, StoreError> {
    let created_at = timestamp(row.int(8)?)?;
    Ok(Webhook {
        id: webhook_id(row.int(0)?, created_at),
        organization_id: row
            .text(1)?
            .parse()
            .map_err(|e| corrupt("webhook org", e))?,
        workspace_id: row
            .opt_text(2)?
            .map(|w| w.parse())
            .transpose()
            .map_err(|e| corrupt("webhook workspace", e))?,
        url: row.text(3)?,
        event_types: parse_patterns(&row.text(4)?)?,
        description: row.opt_text(5)?,
        status: row
            .text(6)?
            .parse()
            .map_err(|e| corrupt("webhook status", e))?,
        disabled_reason: row.opt_text(7)?,
        created_at,
        updated_at: timestamp(row.int(9)?)?,
    })
}

/// A stored audit hash.
pub(crate) fn hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("an audit hash has the wrong length".into()))
}

/// The columns [`audit_record`] reads, in this order.
pub(crate) const AUDIT_COLUMNS: &str = "seq, org, actor_type, actor_id, action, resource_type, resource_id, request_id, source_ip, user_agent, changes, created_at, prev_hash, hash";

pub(crate) fn audit_record(row: &impl Columns) -> Result<ChainedRecord, StoreError> {
    let created_at = timestamp(row.int(11)?)?;
    Ok(ChainedRecord {
        record: AuditRecord {
            id: AuditId::new(two_digit_year(created_at), row.int(0)? as u64),
            organization_id: row
                .opt_text(1)?
                .map(|o| o.parse())
                .transpose()
                .map_err(|e| corrupt("audit org", e))?,
            actor: AuditActor {
                actor_type: row.text(2)?,
                id: row.text(3)?,
            },
            action: row.text(4)?,
            resource: AuditResource {
                resource_type: row.text(5)?,
                id: row.text(6)?,
            },
            request_id: row.opt_text(7)?,
            source_ip: row.opt_text(8)?,
            user_agent: row.opt_text(9)?,
            changes: serde_json::from_str(&row.text(10)?)
                .map_err(|e| corrupt("audit changes", e))?,
            created_at,
        },
        prev_hash: hash(row.bytes(12)?)?,
        hash: hash(row.bytes(13)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sql` (one row) on an in-memory SQLite database and converts the row.
    fn convert<T>(
        sql: &str,
        f: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.query_row(sql, [], |r| Ok(f(r))).unwrap()
    }

    #[test]
    fn a_valid_event_row_converts_and_a_damaged_one_is_an_error_not_a_panic() {
        let good = "SELECT 7, 'ORG-26-000001', NULL, 'service_line.activated', 'user', \
                    'USR-26-000001', 'service_line', 'LIN-26-000001', '{\"a\":1}', 1790000000";
        let e = convert(good, |r| event(r)).unwrap();
        assert_eq!(e.id.to_string(), "EVT-26-000007");
        assert_eq!(e.payload.get(), r#"{"a":1}"#);
        for (damage, what) in [
            ("NULL", "a NULL organization"),
            ("42", "a number for a text column"),
            ("'not an org'", "an unparsable organization"),
        ] {
            let sql = good.replace("'ORG-26-000001'", damage);
            assert!(convert(&sql, |r| event(r)).is_err(), "{what}");
        }
        let bad_payload = good.replace("'{\"a\":1}'", "'{not json'");
        assert!(matches!(
            convert(&bad_payload, |r| event(r)),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn an_audit_hash_of_the_wrong_length_is_an_error() {
        assert!(hash(vec![0; 31]).is_err());
        assert_eq!(hash(vec![9; 32]).unwrap(), [9; 32]);
    }
}
