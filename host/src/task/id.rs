//! Task ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Identifies a task: a ULID, so ids sort by submission time and print as
/// 26 characters (`01JD8X…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(ulid::Ulid);

impl TaskId {
    /// The length of an id in text.
    pub(crate) const TEXT_LEN: usize = ulid::ULID_LEN;

    /// The id in text (as `Display` writes it), written into `buf`:
    /// without the allocation of `to_string`.
    pub(crate) fn write_text<'b>(&self, buf: &'b mut [u8; Self::TEXT_LEN]) -> &'b str {
        self.0.array_to_str(buf)
    }

    /// A new id, unique and later than every id made before it in this
    /// process.
    pub fn new() -> Self {
        Self::at(crate::now_millis())
    }

    /// [`TaskId::new`] for a task made at `now` (milliseconds since the
    /// epoch, as [`now_millis`](crate::now_millis) reads them). Within the
    /// millisecond of the last id made (or before it: a clock set back),
    /// that id plus one, as ULIDs are made monotonic: no clock read and no
    /// random number, which a busy submitter would otherwise pay for each
    /// task. Else the clock's time with random bits, as
    /// [`ulid::Ulid::new`] makes them.
    pub(crate) fn at(now: u64) -> Self {
        use std::sync::Mutex;
        static LAST: Mutex<Option<ulid::Ulid>> = Mutex::new(None);
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = next_after(*last, now);
        *last = Some(next);
        TaskId(next)
    }

    /// The id's 16 bytes, big-endian (they sort as the ids do).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TaskId(ulid::Ulid::from_bytes(bytes))
    }
}

/// The id after `last` for a task made at `now` ([`TaskId::at`]).
fn next_after(last: Option<ulid::Ulid>, now: u64) -> ulid::Ulid {
    match last {
        Some(prev) if prev.timestamp_ms() >= now => {
            prev.increment().unwrap_or_else(ulid::Ulid::new)
        }
        Some(prev) => ulid::Ulid::new().max(prev.increment().unwrap_or_else(ulid::Ulid::new)),
        None => ulid::Ulid::new(),
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl FromStr for TaskId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ulid::Ulid::from_string(s).map(TaskId).map_err(|_| {
            Error::InvalidTask(format!(
                "`{s}` is not a task id: expected 26 characters of Crockford base32"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids made one after another (nearly sequential) get distinct
    /// hashes, and the top 7 bits (which the table's probes compare) take
    /// nearly every value.
    #[test]
    fn sequential_ids_get_distinct_hashes_and_tags() {
        use std::hash::BuildHasher;
        let hashing = IdHashing::default();
        let hashes: Vec<u64> = (0..10_000)
            .map(|_| hashing.hash_one(TaskId::new()))
            .collect();
        let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tops.len() >= 120, "{} of 128 top-7-bit values", tops.len());
        // A map keyed by them finds each.
        let mut map = IdMap::default();
        let ids: Vec<TaskId> = (0..1_000).map(|_| TaskId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(id), Some(&i));
        }
    }

    /// The ids of one block hash side by side: the same middle bits, the
    /// id's own low bits, and top 7 bits (what a probe compares) that
    /// differ between neighbours. Blocks spread over the table.
    #[test]
    fn consecutive_ids_hash_side_by_side_in_blocks_that_spread() {
        use std::hash::BuildHasher;
        let hashing = IdHashing::default();
        let block = ID_BLOCK as u128;
        let middle = |h: u64| h & !(ID_LOW | ID_TAG);
        let base = TaskId::new().0.0 & !(block - 1);
        let mut middles = std::collections::HashSet::new();
        let mut regions = std::collections::HashSet::new();
        for b in 0..1_000 {
            let first = base + b * block;
            let hashes: Vec<u64> = (0..block)
                .map(|i| hashing.hash_one(TaskId(ulid::Ulid(first + i))))
                .collect();
            for (i, h) in hashes.iter().enumerate() {
                assert_eq!(h & ID_LOW, i as u64);
                assert_eq!(middle(*h), middle(hashes[0]));
            }
            let tops: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert_eq!(tops.len(), ID_BLOCK, "{hashes:x?}");
            middles.insert(middle(hashes[0]));
            // The block's place in a table of 2^14 slots (1,024 blocks).
            regions.insert((hashes[0] >> ID_BLOCK.trailing_zeros()) & 1023);
        }
        assert_eq!(middles.len(), 1_000);
        // 1,000 blocks thrown at random into 1,024 places take about 640.
        assert!(regions.len() >= 560, "{} places of 1,024", regions.len());
    }

    /// Within a millisecond, or at one already past (a clock set back),
    /// an id is the last one plus one; at a later one, that time with
    /// random bits. Always later than the last.
    #[test]
    fn ids_made_at_a_time_follow_the_last() {
        let now = crate::now_millis();
        let first = next_after(None, now);
        assert!(first.timestamp_ms() >= now);
        let same = next_after(Some(first), first.timestamp_ms());
        assert_eq!(same.0, first.0 + 1, "the last one plus one");
        let back = next_after(Some(same), now - 5_000);
        assert_eq!(back.0, same.0 + 1, "a clock set back still goes forward");
        let old = ulid::Ulid::from_parts(now - 5_000, 7);
        let later = next_after(Some(old), now);
        assert!(later.timestamp_ms() >= now, "the clock's time: {later}");
        // Made in turn (from any thread), ids only grow.
        let ids: Vec<TaskId> = (0..100).map(|_| TaskId::at(now)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ids_sort_by_creation_and_round_trip() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<TaskId>().unwrap(), ids[0]);
        assert_eq!(TaskId::from_bytes(ids[5].to_bytes()), ids[5]);
        assert!("nope".parse::<TaskId>().is_err());
    }
}

/// A map keyed by task ids, hashed by [`IdHasher`].
pub(crate) type IdMap<V> = std::collections::HashMap<TaskId, V, IdHashing>;

/// A map keyed by module hashes, hashed by [`IdHasher`]: a module hash is
/// a SHA-256, whose bits a client cannot choose.
pub(crate) type ModuleMap<V> = std::collections::HashMap<crate::ModuleHash, V, IdHashing>;

/// Builds [`IdHasher`]s.
pub(crate) type IdHashing = std::hash::BuildHasherDefault<IdHasher>;

/// Hashes task ids for the maps on the hot path (the pool's running set
/// and waiters, the queue's index, the memory store), and module hashes
/// (the compiled modules and their settings): one folded multiply per 8
/// bytes, instead of SipHash's rounds. Ids are made by this process (or
/// by another host sharing the queue), never chosen by clients.
///
/// A task id is hashed in blocks of [`ID_BLOCK`] consecutive ids (see
/// [`IdHasher::write_u128`]): the ids a process makes within a
/// millisecond are consecutive, and a queue is worked through in about
/// the order its ids were made, so a block's tasks are looked up one
/// after the other (claimed, ended, waited for) and find their entries
/// in the same few cache lines. Where the block goes is the seeded mix
/// of the rest of the id, as for any other key.
#[derive(Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        IdHasher(*SEED.get_or_init(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0u64)
        }))
    }
}

/// How many consecutive task ids [`IdHasher`] places side by side: a
/// power of two, and a hash table's probe group (16 control bytes).
const ID_BLOCK: usize = 16;

/// The bits of a task id's hash that say its place within its block:
/// the id's own low bits.
const ID_LOW: u64 = ID_BLOCK as u64 - 1;

/// The bits of a hash that a table's probe compares (its top 7).
const ID_TAG: u64 = 0x7F << 57;

/// The odd constant of [`IdHasher`]'s multiplies (2^64 / φ).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl IdHasher {
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(MIX);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    /// A task id: its block (the id without its low 4 bits, for blocks
    /// of [`ID_BLOCK`]) mixed with the seed gives the hash's middle
    /// bits, which place the block in the table; the id's low bits are
    /// the hash's low bits, so the block's ids take neighbouring slots,
    /// whose control bytes share one cache line and whose entries are
    /// contiguous; the top 7 bits, which a probe compares before it
    /// reads an entry, come from a multiply of the whole low word, so
    /// they differ between neighbours.
    ///
    /// Measured (a queue of 300,000 trivial tasks through a `Pool`):
    /// each claim's look-ups in the index and the store missed the cache
    /// about twice each, and 8% more tasks a second ran with one worker,
    /// 5% more with two, than with every id mixed whole (2% and none
    /// with 50,000 tasks, whose tables nearly fit in the cache).
    ///
    /// Blocks, not one run: with the id's low 32 bits as the hash's,
    /// the ids of one millisecond filled a run of slots, and a run that
    /// began inside another's pushed its keys down the probes after it (a
    /// FIFO of 1,000,000 ids all made in one millisecond, each step an
    /// insert and a removal: 2 to 6 times slower than with ids mixed
    /// whole; with blocks of 16, 1.0 to 1.4 times). Where ids are not
    /// looked up in the order they were made, blocks cost a little: in
    /// the same test, a cold look-up of an id taken at random was 15–40%
    /// slower than with ids mixed whole. (The performance log has the
    /// test.)
    fn write_u128(&mut self, n: u128) {
        let low = n as u64;
        self.mix((n >> ID_BLOCK.trailing_zeros()) as u64);
        self.mix((n >> 64) as u64);
        self.0 = (self.0 & !(ID_LOW | ID_TAG)) | (low & ID_LOW) | (low.wrapping_mul(MIX) & ID_TAG);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
