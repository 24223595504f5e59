//! The integer keys the embedded store indexes events by.
//!
//! An event is found by organization, by type, subject or actor within its organization, by
//! workspace, and by idempotency key. Indexing those text columns directly made every index
//! entry 30–60 bytes of text, and the subject, actor and idempotency indexes take inserts at
//! random places: each commit rewrote thousands of index pages into the WAL. Each index now
//! holds a 64-bit hash of the values it looks up (`org_key`, `type_key`, …) and the event
//! number: entries of about 16 bytes, so a third as many pages to touch. BENCHMARKS.md has
//! the measurement that chose this.
//!
//! A hash says where to look, never what matched: every query compares the text columns
//! too, so two values that share a hash cost one extra row read, never a wrong answer.
//!
//! The function is part of the file format: every stored row carries keys computed by it,
//! so it must never change (a test pins its values). FNV-1a, 64 bits, over each part's
//! UTF-8 bytes followed by `0xFF` (a byte UTF-8 never contains, so `("ab", "c")` and
//! `("a", "bc")` differ).

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use tidings_domain::NewEvent;

use crate::error::{Context, StoreError};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const PART_END: u8 = 0xFF;

/// The index key of a sequence of text values.
pub(crate) fn index_key(parts: &[&str]) -> i64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for &b in part.as_bytes().iter().chain(std::iter::once(&PART_END)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    // SQLite integers are signed; the bits are what matter.
    h as i64
}

/// The keys of one event's row, one per index.
pub(crate) struct EventKeys {
    pub org: i64,
    pub event_type: i64,
    pub subject: i64,
    pub actor: i64,
    pub workspace: Option<i64>,
    pub idempotency: Option<i64>,
}

impl EventKeys {
    pub fn of(e: &NewEvent) -> Self {
        let org = e.organization_id.as_str();
        Self {
            org: index_key(&[org]),
            event_type: index_key(&[org, e.event_type.as_str()]),
            subject: index_key(&[org, e.subject.id.as_str()]),
            actor: index_key(&[org, e.actor.id.as_str()]),
            workspace: e.workspace_id.as_ref().map(|w| index_key(&[w.as_str()])),
            idempotency: e.idempotency_key.as_deref().map(|k| index_key(&[org, k])),
        }
    }
}

/// Name of the SQL function that computes [`index_key`] (used by the migration that added
/// the keys to rows stored before them).
pub(crate) const SQL_FUNCTION: &str = "tidings_index_key";

/// Makes `tidings_index_key(part, …)` callable on `conn`: NULL if any part is NULL.
pub(crate) fn register_sql_function(conn: &Connection) -> Result<(), StoreError> {
    conn.create_scalar_function(
        SQL_FUNCTION,
        -1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let mut parts = Vec::with_capacity(ctx.len());
            for i in 0..ctx.len() {
                match ctx.get::<Option<String>>(i)? {
                    Some(p) => parts.push(p),
                    None => return Ok(None),
                }
            }
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            Ok(Some(index_key(&parts)))
        },
    )
    .context("registering the index key function")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored rows carry these values: changing the function would hide every event
    /// recorded before the change from the queries.
    #[test]
    fn keys_never_change() {
        // Computed independently (a few lines of Python over the same definition).
        assert_eq!(index_key(&[]), -3_750_763_034_362_895_579);
        assert_eq!(index_key(&["ORG-26-090500"]), 6_620_872_308_540_894_544);
        assert_eq!(
            index_key(&["ORG-26-090500", "service_line.activated"]),
            -5_286_497_624_272_955_624
        );
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(index_key(&["ab", "c"]), index_key(&["a", "bc"]));
        assert_ne!(index_key(&["abc"]), index_key(&["abc", ""]));
    }

    #[test]
    fn the_sql_function_agrees_with_rust() {
        let conn = Connection::open_in_memory().unwrap();
        register_sql_function(&conn).unwrap();
        let (one, two, null): (i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT tidings_index_key('ORG-26-090500'),
                        tidings_index_key('ORG-26-090500', 'LIN-26-084729'),
                        tidings_index_key('ORG-26-090500', NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(one, index_key(&["ORG-26-090500"]));
        assert_eq!(two, index_key(&["ORG-26-090500", "LIN-26-084729"]));
        assert_eq!(null, None);
    }
}
