//! Which idempotency keys the store may hold: a Bloom filter in the writer's memory.
//!
//! Idempotency entries carry their epoch (index_keys.rs), so finding a key means probing
//! the epochs, newest first. Almost every key an ingest brings is new, and the filter says
//! "certainly new" for those without touching the index; "maybe" (a key used before, or a
//! false positive, under 1 in 1,000) probes the epochs.
//!
//! The filter is built on the first ingest from the idempotency index (a scan of its
//! entries, about a second per 10M keys) and then follows every event the store records:
//! before each ingest job the writer adds the keys of events numbered above the last one it
//! has seen (events another process recorded, usually none), and it adds each key it
//! records itself. Keys of events removed by retention stay in as false positives until the
//! filter is rebuilt, which happens when it holds more keys than it was sized for. Memory:
//! about 15 bits per stored key (28 MB for 10M keyed events).

use rusqlite::{Connection, OptionalExtension};

use super::index_keys::hash_part;
use crate::error::{Context, StoreError};

/// Bits per key the filter is sized for, and probes per key: a false-positive rate of
/// 0.08 % when full.
const BITS_PER_KEY: u64 = 15;
const PROBES: u64 = 10;
/// Smallest capacity (keys); 120 KiB.
const MIN_CAPACITY: u64 = 1 << 16;

pub(crate) struct IdempotencyFilter {
    bits: Vec<u64>,
    /// Keys it was sized for; past that it is rebuilt larger.
    capacity: u64,
    /// Keys added since it was built.
    len: u64,
    /// Every stored event numbered up to this has its key in the filter; `None` until built.
    seen_through: Option<u64>,
}

impl IdempotencyFilter {
    /// A filter not built yet: the first [`Self::catch_up`] builds it.
    pub fn new() -> Self {
        Self {
            bits: Vec::new(),
            capacity: 0,
            len: 0,
            seen_through: None,
        }
    }

    fn sized_for(capacity: u64) -> Self {
        let words = (capacity * BITS_PER_KEY).div_ceil(64).max(1);
        Self {
            bits: vec![0; words as usize],
            capacity,
            len: 0,
            seen_through: None,
        }
    }

    /// The bit positions of a key (its stored hash bits, mixed; double hashing).
    fn positions(&self, key: i64) -> impl Iterator<Item = usize> + use<> {
        let mut x = hash_part(key);
        // splitmix64's finalizer: the 40 stored bits spread over all 64.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let (h1, h2) = (x & 0xffff_ffff, (x >> 32) | 1);
        let m = self.bits.len() as u64 * 64;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    fn add(&mut self, key: i64) {
        for p in self.positions(key) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    /// False: no stored event has this idempotency key (`key` as stored, any epoch).
    /// True: one may have.
    pub fn may_contain(&self, key: i64) -> bool {
        if self.seen_through.is_none() {
            return true;
        }
        self.positions(key)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    /// Notes that event `seq` was recorded with idempotency key `key` (stored form) on the
    /// writer's connection.
    pub fn record(&mut self, seq: u64, key: Option<i64>) {
        if self.seen_through.is_none() {
            // Not built: the build will read this event from the database.
            return;
        }
        if let Some(key) = key {
            self.add(key);
        }
        self.seen_through = Some(self.seen_through.map_or(seq, |s| s.max(seq)));
    }

    /// The newest event number whose key is in the filter (`None`: not built).
    pub fn seen_through(&self) -> Option<u64> {
        self.seen_through
    }

    /// Puts back what [`Self::seen_through`] said, for writes that were rolled back (their
    /// keys stay in as false positives; the numbers they used may be used again).
    pub fn rewind(&mut self, seen_through: Option<u64>) {
        self.seen_through = seen_through;
    }

    /// Brings the filter up to every event stored (run inside the write transaction, before
    /// an ingest job looks keys up): builds it if it is not built or full, else adds the
    /// keys of events recorded since it last looked.
    pub fn catch_up(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let newest: u64 = conn
            .prepare_cached("SELECT max(seq) FROM events")
            .context("preparing the newest event read")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .context("reading the newest event number")?
            .flatten()
            .map_or(0, |n| n as u64);
        match self.seen_through {
            Some(seen) if self.len <= self.capacity => {
                if newest > seen {
                    let mut read = conn
                        .prepare_cached(
                            "SELECT idempotency_hash FROM events
                             WHERE seq > ?1 AND idempotency_hash IS NOT NULL",
                        )
                        .context("preparing the idempotency catch-up")?;
                    let keys = read
                        .query_map([seen as i64], |r| r.get::<_, i64>(0))
                        .context("reading idempotency keys recorded elsewhere")?;
                    for key in keys {
                        self.add(key.context("reading an idempotency key")?);
                    }
                }
            }
            _ => *self = Self::build(conn)?,
        }
        self.seen_through = Some(newest.max(self.seen_through.unwrap_or(0)));
        Ok(())
    }

    /// A filter of every idempotency key stored, with room for half as many more.
    fn build(conn: &Connection) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let stored: u64 = conn
            .query_row(
                "SELECT count(*) FROM events INDEXED BY events_by_idempotency
                 WHERE idempotency_hash IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .context("counting idempotency keys")? as u64;
        let mut filter = Self::sized_for((stored + stored / 2).max(MIN_CAPACITY));
        let mut read = conn
            .prepare(
                "SELECT idempotency_hash FROM events INDEXED BY events_by_idempotency
                 WHERE idempotency_hash IS NOT NULL",
            )
            .context("preparing the idempotency key scan")?;
        let keys = read
            .query_map([], |r| r.get::<_, i64>(0))
            .context("scanning idempotency keys")?;
        for key in keys {
            filter.add(key.context("reading an idempotency key")?);
        }
        filter.len = stored;
        tracing::debug!(
            keys = stored,
            capacity = filter.capacity,
            bytes = filter.bits.len() * 8,
            ms = started.elapsed().as_millis() as u64,
            "built the idempotency key filter"
        );
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::index_keys::{epoch_key, index_key};

    #[test]
    fn a_key_added_is_always_found_in_any_epoch() {
        let mut filter = IdempotencyFilter::sized_for(1_000);
        filter.seen_through = Some(0);
        for i in 0..1_000u64 {
            filter.record(
                i + 1,
                Some(epoch_key(i % 7, index_key(&["ORG", &i.to_string()]))),
            );
        }
        for i in 0..1_000u64 {
            let hash = index_key(&["ORG", &i.to_string()]);
            assert!(filter.may_contain(epoch_key(i % 7 + 3, hash)), "key {i}");
        }
        assert_eq!(filter.seen_through(), Some(1_000));
    }

    #[test]
    fn keys_never_added_are_rarely_reported() {
        let mut filter = IdempotencyFilter::sized_for(10_000);
        filter.seen_through = Some(0);
        for i in 0..10_000u64 {
            filter.record(i + 1, Some(index_key(&["ORG", &format!("in-{i}")])));
        }
        let false_positives = (0..100_000u64)
            .filter(|i| filter.may_contain(index_key(&["ORG", &format!("out-{i}")])))
            .count();
        // Sized for 0.08 % when full; allow twice that.
        assert!(false_positives < 160, "{false_positives} of 100,000");
    }

    #[test]
    fn a_filter_not_built_says_maybe() {
        assert!(IdempotencyFilter::new().may_contain(index_key(&["ORG", "k"])));
    }
}
