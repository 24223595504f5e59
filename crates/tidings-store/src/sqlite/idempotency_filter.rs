//! Which idempotency keys the store may hold: a Bloom filter in the writer's memory, and
//! where the newest of them are.
//!
//! Idempotency entries carry their epoch (index_keys.rs), so finding a key means probing
//! the epochs, newest first. Almost every key an ingest brings is new, and the filter says
//! "certainly new" for those without touching the index; "maybe" (a key used before, or a
//! false positive, about 3 in 10,000) probes the epochs.
//!
//! The index tables do not reach the newest events (the index tail, events.rs). For those
//! the filter also keeps each key's event numbers by hash ([`IdempotencyFilter::tail_events`]):
//! a "maybe" reads those rows by number, then walks the index. Before, a "maybe" indexed the
//! tail first; with about one false positive per 1,000 keys that indexed it after every
//! batch of 1,000 instead of every 2,048 events, and index pages written once per 1,000
//! events instead of 2,048 cost a fifth of the store's batch rate (BENCHMARKS.md). The
//! numbers are a hint, never an answer: the lookup compares the row's text, so an entry
//! left by a write that rolled back, or by an event the sweep removed, costs a row read.
//! Entries go once the index reaches their events (read before a group's first ingest job).
//!
//! The filter is built on the first ingest from the idempotency index (a scan of its
//! entries, about a second per 10M keys) and then follows every event the store records:
//! before the first ingest job of each write group the writer adds the keys of events
//! numbered above the last one it has seen, read from their rows (the index tail not yet
//! indexed when the filter was built, events another process recorded; usually none), and
//! it adds each key it records itself. Keys of events removed by retention stay in as false
//! positives until the filter is rebuilt, which happens when it holds more keys than it was
//! sized for. That rebuild reads the index on a thread of its own, from a snapshot (0.6 s
//! at 4M keys); the writer keeps using the old filter meanwhile and then adds what was
//! recorded after the snapshot. Memory: 20 bits per key it has room for (38 MB for 10M
//! keyed events), twice that while a rebuild runs, and about 60 bytes per keyed event of
//! the index tail (a few thousand events).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use rusqlite::Connection;

use super::events::{indexed_through, stored_seq_range};
use super::index_keys::{hash_part, index_key};
use super::open_connection;
use crate::error::{Context, StoreError};

/// Bits per key the filter is sized for, and probes per key: about 0.03 % false positives
/// when full (measured by a test). Each false positive probes every epoch of the index
/// (610 at 10M events): with 16 bits and positions by double hashing (0.17 %), those
/// lookups took a fifth of the writer's time late in loading 10M events (BENCHMARKS.md).
const BITS_PER_KEY: u64 = 20;
const PROBES: u64 = 10;
/// Smallest capacity (keys); 128 KiB.
const MIN_CAPACITY: u64 = 1 << 16;
/// Words per block: a key's probes all fall in one block of 512 bits, one cache line, so
/// an add or a lookup costs one memory access instead of ten scattered over a filter of
/// tens of megabytes (a blocked Bloom filter; it needs about a bit more per key than a
/// plain one for the same false-positive rate).
const BLOCK_WORDS: usize = 8;
const BLOCK_BITS: u64 = 64 * BLOCK_WORDS as u64;
/// Bits that pick one of a block's bits, and how many such picks one 64-bit word holds.
const POSITION_BITS: usize = BLOCK_BITS.trailing_zeros() as usize;
const POSITIONS_PER_WORD: usize = 64 / POSITION_BITS;
const _: () = assert!(PROBES as usize <= 2 * POSITIONS_PER_WORD);

/// splitmix64's finalizer: every input bit spread over all 64.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The Bloom filter itself.
struct KeyBits {
    words: Vec<u64>,
    /// Keys it was sized for; past that a larger one is built.
    capacity: u64,
    /// Keys added.
    len: u64,
}

/// A filter built from a snapshot: its bits, and the event number up to which they hold
/// every stored key.
type Snapshot = Result<(KeyBits, u64), StoreError>;

impl KeyBits {
    fn sized_for(capacity: u64) -> Self {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(BLOCK_BITS).max(1);
        Self {
            words: vec![0; blocks as usize * BLOCK_WORDS],
            capacity,
            len: 0,
        }
    }

    /// The first word of a key's block and its bit positions there (its stored hash bits,
    /// mixed: the high half picks the block; each position is 9 bits of its own from two
    /// further mixes). Positions by double hashing (`h1 + i·h2` in the block) were
    /// correlated enough to double the false positives at the same size.
    fn positions(&self, key: i64) -> (usize, impl Iterator<Item = usize> + use<>) {
        let x = mix(hash_part(key));
        let blocks = (self.words.len() / BLOCK_WORDS) as u64;
        // (high 32 bits × blocks) / 2^32: a block in 0..blocks without a division.
        let block = ((x >> 32) * blocks) >> 32;
        let sources = [
            mix(x ^ 0x9e37_79b9_7f4a_7c15),
            mix(x ^ 0x6a09_e667_f3bc_c909),
        ];
        let bits = (0..PROBES as usize).map(move |i| {
            let source = sources[i / POSITIONS_PER_WORD];
            ((source >> (POSITION_BITS * (i % POSITIONS_PER_WORD))) % BLOCK_BITS) as usize
        });
        (block as usize * BLOCK_WORDS, bits)
    }

    fn add(&mut self, key: i64) {
        let (first, bits) = self.positions(key);
        let block = &mut self.words[first..first + BLOCK_WORDS];
        for p in bits {
            block[p / 64] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    fn may_contain(&self, key: i64) -> bool {
        let (first, mut bits) = self.positions(key);
        let block = &self.words[first..first + BLOCK_WORDS];
        bits.all(|p| block[p / 64] & (1 << (p % 64)) != 0)
    }

    /// A filter of every indexed idempotency key `conn` sees, sized for those of the index
    /// tail too and half as many more, with the number the index reaches (see
    /// [`Self::fill`]). Consistent when `conn` is inside a transaction.
    fn scan(conn: &Connection, min_capacity: u64) -> Snapshot {
        // Indexed keys, and keys of the index tail.
        let stored: u64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM event_keys_idempotency)
                      + (SELECT count(*) FROM events
                         WHERE seq > (SELECT seq FROM indexed_through)
                           AND idempotency_key IS NOT NULL)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .context("counting idempotency keys")? as u64;
        Self::fill(
            conn,
            Self::sized_for((stored + stored / 2).max(min_capacity)),
        )
    }

    /// Adds every indexed idempotency key `conn` sees to `bits` (empty); returns them with
    /// the number the index reaches, after which [`IdempotencyFilter::catch_up`] reads the
    /// rows themselves (the index tail).
    fn fill(conn: &Connection, mut bits: Self) -> Snapshot {
        let started = std::time::Instant::now();
        let through = indexed_through(conn)?;
        let mut read = conn
            .prepare("SELECT key FROM event_keys_idempotency")
            .context("preparing the idempotency key scan")?;
        let keys = read
            .query_map([], |r| r.get::<_, i64>(0))
            .context("scanning idempotency keys")?;
        for key in keys {
            bits.add(key.context("reading an idempotency key")?);
        }
        tracing::info!(
            keys = bits.len,
            capacity = bits.capacity,
            bytes = bits.words.len() * 8,
            ms = started.elapsed().as_millis() as u64,
            "built the idempotency key filter"
        );
        Ok((bits, through))
    }

    /// [`Self::fill`] on a connection of its own, in one read transaction (a snapshot).
    fn fill_from_file(path: PathBuf, bits: Self) -> Snapshot {
        let conn = open_connection(&path)?;
        // One pass in index order reads each page once: a small cache will do.
        conn.execute_batch("PRAGMA cache_size = -1024; BEGIN")
            .context("starting the filter's read")?;
        let filled = Self::fill(&conn, bits)?;
        conn.execute_batch("COMMIT")
            .context("ending the filter's read")?;
        Ok(filled)
    }
}

/// Notes that event `seq` carries key `key` (its hash bits) in `tail`, once.
fn add_to_tail(tail: &mut HashMap<u64, Vec<u64>>, key: i64, seq: u64) {
    let events = tail.entry(hash_part(key)).or_default();
    if !events.contains(&seq) {
        events.push(seq);
    }
}

/// The newest event number stored (0 if none).
fn newest_seq(conn: &Connection) -> Result<u64, StoreError> {
    Ok(stored_seq_range(conn)?.map_or(0, |(_, newest)| newest))
}

pub(crate) struct IdempotencyFilter {
    /// `None` until the first [`Self::catch_up`].
    bits: Option<KeyBits>,
    /// Every stored event numbered up to this has its key in `bits`.
    seen_through: u64,
    /// By [`hash_part`] of the key: the numbers of the events recorded with it after
    /// `tail_from`, which include every keyed event of the index tail up to `seen_through`.
    tail: HashMap<u64, Vec<u64>>,
    /// Where the index reached when `tail` was last trimmed.
    tail_from: u64,
    min_capacity: u64,
    /// A larger filter being built on another thread.
    rebuild: Option<Receiver<Snapshot>>,
}

impl IdempotencyFilter {
    /// A filter not built yet: the first [`Self::catch_up`] builds it.
    pub fn new() -> Self {
        Self::with_min_capacity(MIN_CAPACITY)
    }

    fn with_min_capacity(min_capacity: u64) -> Self {
        Self {
            bits: None,
            seen_through: 0,
            tail: HashMap::new(),
            tail_from: 0,
            min_capacity,
            rebuild: None,
        }
    }

    /// False: no stored event has this idempotency key (`key` as stored, any epoch).
    /// True: one may have.
    pub fn may_contain(&self, key: i64) -> bool {
        self.bits.as_ref().is_none_or(|bits| bits.may_contain(key))
    }

    /// Notes that event `seq` was recorded with idempotency key `key` (its index key, with
    /// or without an epoch: only the hash bits count) on the writer's connection, after
    /// [`Self::catch_up`].
    pub fn record(&mut self, seq: u64, key: Option<i64>) {
        let Some(bits) = &mut self.bits else {
            // Not built: the build will read this event from the database.
            return;
        };
        if let Some(key) = key {
            bits.add(key);
            add_to_tail(&mut self.tail, key, seq);
        }
        self.seen_through = self.seen_through.max(seq);
    }

    /// The numbers of the events of the index tail that may carry key `key` (as stored, any
    /// epoch), and maybe of a few indexed ones, after [`Self::catch_up`]. `None` when the
    /// filter is not built: then it knows nothing of the tail.
    pub fn tail_events(&self, key: i64) -> Option<&[u64]> {
        self.bits.as_ref()?;
        Some(self.tail.get(&hash_part(key)).map_or(&[], Vec::as_slice))
    }

    /// The newest event number whose key is in the filter.
    pub fn seen_through(&self) -> u64 {
        self.seen_through
    }

    /// Puts back what [`Self::seen_through`] said, for writes that were rolled back (their
    /// keys stay in as false positives; the numbers they used may be used again).
    pub fn rewind(&mut self, seen_through: u64) {
        self.seen_through = seen_through;
    }

    /// Whether a rebuild is running.
    #[cfg(test)]
    fn rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Brings the filter up to every event stored (run inside the write transaction, before
    /// an ingest job looks keys up): builds it on first use, takes a finished rebuild, adds
    /// the keys of events recorded since it last looked, and starts a rebuild when full.
    pub fn catch_up(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.bits.is_none() {
            let (bits, newest) = KeyBits::scan(conn, self.min_capacity)?;
            self.bits = Some(bits);
            self.seen_through = newest;
        }
        if let Some(rebuild) = &self.rebuild {
            match rebuild.try_recv() {
                Ok(Ok((bits, newest))) => {
                    // Events after the snapshot are read below.
                    self.bits = Some(bits);
                    self.seen_through = newest;
                    self.rebuild = None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rebuilding the idempotency key filter failed; keeping the old one");
                    self.rebuild = None;
                }
                Err(TryRecvError::Disconnected) => self.rebuild = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        let Some(bits) = &mut self.bits else {
            return Ok(());
        };
        let newest = newest_seq(conn)?;
        if newest > self.seen_through {
            // By event number from the rows (the index table is ordered by key): the
            // filter needs only each key's hash bits, which need no epoch.
            let mut read = conn
                .prepare_cached(
                    "SELECT seq, org, idempotency_key FROM events
                     WHERE seq > ?1 AND idempotency_key IS NOT NULL",
                )
                .context("preparing the idempotency catch-up")?;
            let keys = read
                .query_map([self.seen_through as i64], |r| {
                    let key = index_key(&[r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?]);
                    Ok((r.get::<_, i64>(0)? as u64, key))
                })
                .context("reading idempotency keys recorded since the filter looked")?;
            for row in keys {
                let (seq, key) = row.context("reading an idempotency key")?;
                bits.add(key);
                add_to_tail(&mut self.tail, key, seq);
            }
            self.seen_through = newest;
        }
        let indexed = indexed_through(conn)?;
        if indexed > self.tail_from {
            // Those events are found in the index now.
            self.tail.retain(|_, events| {
                events.retain(|&seq| seq > indexed);
                !events.is_empty()
            });
            self.tail_from = indexed;
        }
        if bits.len > bits.capacity && self.rebuild.is_none() {
            let path = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from);
            match path {
                Some(path) => {
                    let (done, rebuild) = mpsc::channel();
                    // Allocated by the writer, which also frees the old filter: memory that
                    // a short-lived thread allocates and another frees can stay resident.
                    let fresh =
                        KeyBits::sized_for((bits.len + bits.len / 2).max(self.min_capacity));
                    std::thread::Builder::new()
                        .name("tidings-idempotency-filter".into())
                        .spawn(move || {
                            let _ = done.send(KeyBits::fill_from_file(path, fresh));
                        })
                        .map_err(|e| {
                            StoreError::Write(format!(
                                "starting the idempotency filter rebuild: {e}"
                            ))
                        })?;
                    self.rebuild = Some(rebuild);
                }
                // A database without a file: rebuild here.
                None => {
                    let (bits, newest) = KeyBits::scan(conn, self.min_capacity)?;
                    self.bits = Some(bits);
                    self.seen_through = newest;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SystemClock;
    use crate::sqlite::index_keys::{epoch_key, index_key};
    use crate::sqlite::test_support::{ORG, ingest};
    use crate::sqlite::{DATABASE_FILE, SqliteStore};
    use std::sync::Arc;

    #[test]
    fn a_key_added_is_always_found_in_any_epoch() {
        let mut bits = KeyBits::sized_for(1_000);
        for i in 0..1_000u64 {
            bits.add(epoch_key(i % 7, index_key(&["ORG", &i.to_string()])));
        }
        for i in 0..1_000u64 {
            let hash = index_key(&["ORG", &i.to_string()]);
            assert!(bits.may_contain(epoch_key(i % 7 + 3, hash)), "key {i}");
        }
    }

    #[test]
    fn keys_never_added_are_rarely_reported() {
        let mut bits = KeyBits::sized_for(10_000);
        for i in 0..10_000u64 {
            bits.add(index_key(&["ORG", &format!("in-{i}")]));
        }
        let false_positives = (0..100_000u64)
            .filter(|i| bits.may_contain(index_key(&["ORG", &format!("out-{i}")])))
            .count();
        // 26 when this was written (0.026 %; 165 with 16 bits a key and double hashing);
        // allow half as many more.
        assert!(false_positives < 40, "{false_positives} of 100,000");
    }

    #[test]
    fn a_filter_not_built_says_maybe() {
        assert!(IdempotencyFilter::new().may_contain(index_key(&["ORG", "k"])));
    }

    /// An event of `ORG` with idempotency key `k{i}`.
    fn keyed(i: u32) -> String {
        format!(
            r#"{{"type":"invoice.paid","organization_id":"{ORG}","actor":{{"type":"user","id":"USR-1"}},"subject":{{"type":"invoice","id":"INV-1"}},"payload":{{}},"idempotency_key":"k{i}"}}"#
        )
    }

    async fn ingest_keyed(store: &SqliteStore, keys: std::ops::Range<u32>) {
        let events: Vec<String> = keys.map(keyed).collect();
        ingest(store, &format!(r#"{{"events":[{}]}}"#, events.join(","))).await;
    }

    /// A full filter is rebuilt larger on another thread; until then the old one answers,
    /// and events recorded while it ran are added when it is taken.
    #[tokio::test]
    async fn a_full_filter_is_rebuilt_without_losing_keys() {
        let dir = tempfile::tempdir().unwrap();
        // Every group indexes its events: the test reads keys from the index.
        let every_group = crate::sqlite::IndexTail {
            events: 0,
            idle: None,
        };
        let store = SqliteStore::open_with(dir.path(), Arc::new(SystemClock), every_group).unwrap();
        ingest_keyed(&store, 0..300).await;
        let conn = open_connection(&dir.path().join(DATABASE_FILE)).unwrap();
        let mut filter = IdempotencyFilter::with_min_capacity(16);
        filter.catch_up(&conn).unwrap();
        assert_eq!(filter.bits.as_ref().unwrap().capacity, 450);
        assert!(!filter.rebuilding());

        // Past capacity: a rebuild starts; more events arrive while it runs.
        ingest_keyed(&store, 300..500).await;
        filter.catch_up(&conn).unwrap();
        assert!(filter.rebuilding());
        // Let the rebuild finish first, so that its snapshot surely lacks the next events.
        let finished = filter.rebuild.take().unwrap().recv().unwrap();
        ingest_keyed(&store, 500..520).await;
        // The old filter learns of them (as the writer's own events) before the swap.
        let recorded: Vec<(i64, i64)> = conn
            .prepare("SELECT seq, key FROM event_keys_idempotency WHERE seq > 500")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (seq, key) in recorded {
            filter.record(seq as u64, Some(key));
        }
        assert_eq!(filter.seen_through(), 520);
        let (send, receive) = mpsc::channel();
        send.send(finished).unwrap();
        filter.rebuild = Some(receive);
        filter.catch_up(&conn).unwrap();
        assert!(!filter.rebuilding());
        let bits = filter.bits.as_ref().unwrap();
        assert!(bits.capacity >= 750, "capacity {}", bits.capacity);
        assert_eq!(filter.seen_through(), 520);
        for i in 0..520 {
            let key = index_key(&[ORG, &format!("k{i}")]);
            assert!(filter.may_contain(key), "k{i}");
        }
    }

    /// A key recorded by another process on the same file (here a second store) is found
    /// by this writer, whose filter was built before: each write group first reads what
    /// others stored.
    #[tokio::test]
    async fn a_key_another_writer_recorded_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let this = SqliteStore::open(dir.path()).unwrap();
        let other = SqliteStore::open(dir.path()).unwrap();
        ingest_keyed(&this, 0..3).await;
        ingest_keyed(&other, 3..4).await;
        assert_eq!(ingest(&this, &keyed(3)).await[0].id.number, 4);
        assert_eq!(ingest(&this, &keyed(9)).await[0].id.number, 5);
    }
}
