//! Pure conversions between stored columns and domain values, shared by both backends.

use chrono::{DateTime, Datelike, Utc};
use tidings_domain::TypePattern;
use tidings_domain::ids::WebhookId;

use crate::Page;
use crate::error::StoreError;

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Unix seconds as a time.
pub(crate) fn timestamp(secs: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| corrupt("timestamp", secs))
}

pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt("timestamp", ms))
}

/// The year part of an ID minted at `t`.
pub(crate) fn two_digit_year(t: DateTime<Utc>) -> u8 {
    t.year().rem_euclid(100) as u8
}

/// A webhook's event types, stored comma-separated.
pub(crate) fn parse_patterns(s: &str) -> Result<Vec<TypePattern>, StoreError> {
    s.split(',')
        .map(|p| TypePattern::parse(p).map_err(|e| corrupt("webhook event types", e)))
        .collect()
}

pub(crate) fn join_patterns(p: &[TypePattern]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn webhook_id(seq: i64, created_at: DateTime<Utc>) -> WebhookId {
    WebhookId::new(two_digit_year(created_at), seq as u64)
}

/// Cuts the extra row fetched to learn `has_more`.
pub(crate) fn into_page<T>(mut items: Vec<T>, limit: u32) -> Page<T> {
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Page { items, has_more }
}
