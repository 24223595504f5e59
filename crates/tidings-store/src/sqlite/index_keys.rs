//! The integer keys the embedded store indexes events by.
//!
//! An event is found by organization, by type, subject or actor within its organization, by
//! workspace, and by idempotency key. Indexing those text columns directly made every index
//! entry 30–60 bytes of text, and the subject, actor and idempotency indexes take inserts at
//! random places: each commit rewrote thousands of index pages into the WAL. Each index now
//! holds a 64-bit hash of the values it looks up and the event number: entries of about 16
//! bytes, so a third as many pages to touch. BENCHMARKS.md has the measurement that chose
//! this. Since schema 8 the indexes are tables of their own ([`KEY_TABLES`]), filled by the
//! writer in key order (events.rs, `KeyEntries`); before, they were SQLite indexes over key
//! columns of `events` (`org_key`, `type_key`, …), which rows stored then still carry.
//!
//! A hash says where to look, never what matched: every query compares the text columns
//! too, so two values that share a hash cost one extra row read, never a wrong answer.
//!
//! The function is part of the file format: every stored row carries keys computed by it,
//! so it must never change (a test pins its values). FNV-1a, 64 bits, over each part's
//! UTF-8 bytes followed by `0xFF` (a byte UTF-8 never contains, so `("ab", "c")` and
//! `("a", "bc")` differ).
//!
//! Epochs (schema 6): hashed keys alone still land at random places in the type, subject,
//! actor, workspace and idempotency indexes, so every commit still rewrote about one index
//! page per event per index. Those keys now start with the event's epoch (its number
//! divided by [`EVENTS_PER_EPOCH`]) in the top 24 bits, above 40 bits of the hash: every
//! new entry lands in the newest epoch's slice of its index, at most about 75 pages (since
//! schema 11) that the next commits touch again. Queries walk the epochs in the page's
//! order, the first two alone and then in widening groups (see events.rs); the
//! organization index needs no epochs (its ~100 insertion points are hot already). After
//! 2^24 epochs the prefix wraps; every epoch walk also bounds `seq` to the epoch's own
//! range, so a wrapped prefix costs rows read, never a wrong answer.

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use tidings_domain::NewEvent;

use crate::error::{Context, StoreError};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const PART_END: u8 = 0xFF;

/// The index key of a sequence of text values.
pub(crate) fn index_key(parts: &[&str]) -> i64 {
    // SQLite integers are signed; the bits are what matter.
    parts
        .iter()
        .fold(FNV_OFFSET, |h, part| hash_part_into(h, part)) as i64
}

/// The FNV state `h` carried over `part` and its separator.
fn hash_part_into(mut h: u64, part: &str) -> u64 {
    for &b in part.as_bytes().iter().chain(std::iter::once(&PART_END)) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Bits of an epoch key that hold the hash; the epoch takes the 24 above them.
const HASH_BITS: u32 = 40;
const HASH_MASK: u64 = (1 << HASH_BITS) - 1;

/// Events numbered `e * EVENTS_PER_EPOCH ..< (e + 1) * EVENTS_PER_EPOCH` form epoch `e`.
/// Indexing the tail's 2,048 events touches nearly every page of the newest epoch's slice
/// of the subject and actor indexes, so the slice's size is what each indexing writes:
/// 16,384 events make a slice of at most about 75 pages per index (65,536 made 300, and
/// loading batches of 1,000 ran about a fifth slower; schema 11, BENCHMARKS.md). There are
/// then 610 epochs at 10M events, which a query for a rare subject probes in groups
/// (events.rs, `EpochGroups`): about 0.25 ms more than a busy organization's query, 0.65
/// against 0.40 ms at p50 over HTTP (BENCHMARKS.md). The probes grow with the store.
pub(crate) const EVENTS_PER_EPOCH: u64 = 1 << 14;

/// The epoch of event number `seq`.
pub(crate) fn epoch_of(seq: u64) -> u64 {
    seq / EVENTS_PER_EPOCH
}

/// The event numbers of `epoch`: `[first, end)`.
pub(crate) fn epoch_range(epoch: u64) -> (u64, u64) {
    (
        epoch.saturating_mul(EVENTS_PER_EPOCH),
        epoch.saturating_add(1).saturating_mul(EVENTS_PER_EPOCH),
    )
}

/// `hash` (an [`index_key`]) placed in `epoch`: the epoch's low 24 bits, then the hash's
/// low 40 bits.
pub(crate) fn epoch_key(epoch: u64, hash: i64) -> i64 {
    ((epoch << HASH_BITS) | (hash as u64 & HASH_MASK)) as i64
}

/// The hash part of an [`epoch_key`] (what the idempotency filter remembers).
pub(crate) fn hash_part(key: i64) -> u64 {
    key as u64 & HASH_MASK
}

/// The tables that index events (schema 8), each `(key, seq)`: one per [`EventKeys`]
/// field, in the order of [`EventKeys::entries`].
pub(crate) const KEY_TABLES: [&str; 6] = [
    "event_keys_org",
    "event_keys_type",
    "event_keys_subject",
    "event_keys_actor",
    "event_keys_workspace",
    "event_keys_idempotency",
];

/// The keys of one event, one per index table.
pub(crate) struct EventKeys {
    pub org: i64,
    pub event_type: i64,
    pub subject: i64,
    pub actor: i64,
    pub workspace: Option<i64>,
    pub idempotency: Option<i64>,
}

/// The text an event is indexed by.
pub(crate) struct Indexed<'a> {
    pub org: &'a str,
    pub event_type: &'a str,
    pub subject: &'a str,
    pub actor: &'a str,
    pub workspace: Option<&'a str>,
    pub idempotency: Option<&'a str>,
}

impl EventKeys {
    /// The keys of `e` stored as event number `seq`.
    pub fn of(e: &NewEvent, seq: u64) -> Self {
        Self::of_text(
            &Indexed {
                org: e.organization_id.as_str(),
                event_type: e.event_type.as_str(),
                subject: e.subject.id.as_str(),
                actor: e.actor.id.as_str(),
                workspace: e.workspace_id.as_ref().map(|w| w.as_str()),
                idempotency: e.idempotency_key.as_deref(),
            },
            seq,
        )
    }

    /// The keys of an event with this text, numbered `seq`.
    pub fn of_text(text: &Indexed<'_>, seq: u64) -> Self {
        let epoch = epoch_of(seq);
        // Four keys start with the organization: hash it once (the same as `index_key`).
        let org = hash_part_into(FNV_OFFSET, text.org);
        let in_org = |part: &str| epoch_key(epoch, hash_part_into(org, part) as i64);
        Self {
            org: org as i64,
            event_type: in_org(text.event_type),
            subject: in_org(text.subject),
            actor: in_org(text.actor),
            workspace: text.workspace.map(|w| epoch_key(epoch, index_key(&[w]))),
            idempotency: text.idempotency.map(in_org),
        }
    }

    /// The entries, table by table in the order of [`KEY_TABLES`] (`None`: no entry).
    pub fn entries(&self) -> [Option<i64>; 6] {
        [
            Some(self.org),
            Some(self.event_type),
            Some(self.subject),
            Some(self.actor),
            self.workspace,
            self.idempotency,
        ]
    }
}

/// Name of the SQL function that computes [`index_key`] (used by the migration that added
/// the keys to rows stored before them).
pub(crate) const SQL_FUNCTION: &str = "tidings_index_key";

/// Makes `tidings_index_key(part, …)` and `tidings_epoch_key(seq, hash)` callable on
/// `conn` (used by the migrations that computed keys for rows stored before them): NULL if
/// any argument is NULL.
pub(crate) fn register_sql_functions(conn: &Connection) -> Result<(), StoreError> {
    conn.create_scalar_function(
        "tidings_epoch_key",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let seq = ctx.get::<Option<i64>>(0)?;
            let hash = ctx.get::<Option<i64>>(1)?;
            Ok(seq
                .zip(hash)
                .map(|(seq, hash)| epoch_key(epoch_of(seq as u64), hash)))
        },
    )
    .context("registering the epoch key function")?;
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

    /// The keys of an event are `index_key` of its parts, whichever way they are computed.
    #[test]
    fn event_keys_are_index_keys_of_their_parts() {
        let text = Indexed {
            org: "ORG-26-090500",
            event_type: "invoice.paid",
            subject: "INV-26-000001",
            actor: "USR-26-000001",
            workspace: Some("WS-26-000021"),
            idempotency: Some("k1"),
        };
        let seq = 3 * EVENTS_PER_EPOCH + 5;
        let keys = EventKeys::of_text(&text, seq);
        let keyed = |parts: &[&str]| epoch_key(3, index_key(parts));
        assert_eq!(keys.org, index_key(&[text.org]));
        assert_eq!(keys.event_type, keyed(&[text.org, "invoice.paid"]));
        assert_eq!(keys.subject, keyed(&[text.org, "INV-26-000001"]));
        assert_eq!(keys.actor, keyed(&[text.org, "USR-26-000001"]));
        assert_eq!(keys.workspace, Some(keyed(&["WS-26-000021"])));
        assert_eq!(keys.idempotency, Some(keyed(&[text.org, "k1"])));
    }

    #[test]
    fn parts_are_separated() {
        assert_ne!(index_key(&["ab", "c"]), index_key(&["a", "bc"]));
        assert_ne!(index_key(&["abc"]), index_key(&["abc", ""]));
    }

    #[test]
    fn epoch_keys_put_the_epoch_above_the_hash() {
        let hash = index_key(&["ORG-26-090500", "LIN-26-084729"]);
        let first = epoch_key(epoch_of(1), hash);
        let last = epoch_key(epoch_of(EVENTS_PER_EPOCH - 1), hash);
        let next = epoch_key(epoch_of(EVENTS_PER_EPOCH), hash);
        assert_eq!(first, last, "one epoch, one key");
        assert_ne!(first, next);
        assert_eq!(hash_part(first), hash_part(next));
        assert_eq!(hash_part(first), hash as u64 & ((1 << 40) - 1));
        // Pinned: stored rows carry these.
        assert_eq!(epoch_key(0, -1), (1 << 40) - 1);
        assert_eq!(epoch_key(3, 0x1234_5678_9abc_def0), 0x0000_0378_9abc_def0);
        // The epoch's top bits wrap; the hash bits are untouched.
        assert_eq!(epoch_key(1 << 24, hash), epoch_key(0, hash));
        // Epochs sort in order within the positive range, so a new epoch's entries go to
        // the end of the index.
        assert!(epoch_key(7, -1) < epoch_key(8, 0));
        assert_eq!(epoch_range(2), (2 * EVENTS_PER_EPOCH, 3 * EVENTS_PER_EPOCH));
    }

    #[test]
    fn the_sql_function_agrees_with_rust() {
        let conn = Connection::open_in_memory().unwrap();
        register_sql_functions(&conn).unwrap();
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
        let (keyed, none): (i64, Option<i64>) = conn
            .query_row(
                "SELECT tidings_epoch_key(200000, tidings_index_key('ORG-26-090500')),
                        tidings_epoch_key(200000, NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            keyed,
            epoch_key(epoch_of(200_000), index_key(&["ORG-26-090500"]))
        );
        assert_eq!(none, None);
    }
}
