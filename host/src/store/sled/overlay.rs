//! The changes sled does not hold yet: every change is logged (see
//! [`wal`](super::wal)) and kept here, in memory, until a checkpoint
//! writes them to sled in one pass and flushes it. A task's submission,
//! claim and result then cost sled one write of its final record at the
//! next checkpoint, not three transactions on the path that acknowledges
//! them, and nothing waits for sled on that path.
//!
//! Two layers: `active` takes every change; a checkpoint freezes it into
//! `frozen` (under the store's write lock, so no change is half in each),
//! writes `frozen` to sled, flushes sled, then drops it. For every key the
//! newest value is in `active` if it is there, else in `frozen`, else in
//! sled: sled only ever receives values from `frozen` while `frozen` is
//! still read first. A removed key is a tombstone (`None`) until then.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ::sled::IVec;

use super::wal::{Change, TreeId};
use crate::task::IdHashing;

/// One layer: per tree, keys set (`Some`) and removed (`None`).
pub(super) type Layer = [BTreeMap<Key, Option<IVec>>; TreeId::ALL.len()];

/// A key in a layer: its bytes, and their first 16 as one big-endian
/// number (zero-padded), which orders keys as their bytes do.
///
/// Every change inserts its keys into the active layer's B-trees, under
/// the store's write lock, and every read looks them up: with a
/// checkpoint's worth of tasks in a layer that is some thirty
/// comparisons a key. Comparing `IVec`s (a match on how each holds its
/// bytes, then `memcmp`) was two thirds of those inserts' cost; task ids,
/// sequence numbers and end times differ within their first 16 bytes,
/// so one integer comparison decides almost every pair.
#[derive(Clone, Debug)]
pub(super) struct Key {
    head: u128,
    bytes: IVec,
}

impl Key {
    fn new(bytes: IVec) -> Self {
        let mut head = [0u8; 16];
        let n = bytes.len().min(16);
        head[..n].copy_from_slice(&bytes[..n]);
        Key {
            head: u128::from_be_bytes(head),
            bytes,
        }
    }

    /// A key to look `bytes` up with (no allocation for keys of up to 22
    /// bytes, which `IVec` holds inline: task ids, sequence numbers).
    fn of(bytes: &[u8]) -> Self {
        Key::new(IVec::from(bytes))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Equal heads: the first 16 bytes agree (or one key is a prefix of
        // the other, padded with zeros): the bytes decide, as they would
        // have alone.
        self.head
            .cmp(&other.head)
            .then_with(|| self.bytes.as_ref().cmp(other.bytes.as_ref()))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

#[derive(Debug, Default)]
pub(super) struct Overlay {
    layers: RwLock<Layers>,
}

#[derive(Debug, Default)]
struct Layers {
    active: Layer,
    /// Keys of `active` set by [`Change::set_new`](super::wal::Change):
    /// nothing below `active` holds them, so removing one removes its
    /// entry rather than leaving a tombstone for sled.
    ///
    /// Hashed as task ids are ([`IdHashing`]), not by SipHash: every
    /// submission inserts here and every end removes, under the store's
    /// write lock (about 500 instructions a task with SipHash). Only the
    /// queue's index keys (a sequence number and a task id, both made by
    /// the host) are ever inserted; a client's key (an idempotency key)
    /// is at most looked up in a set that holds none, so it cannot crowd
    /// a bucket.
    new_in_active: [HashSet<Key, IdHashing>; TreeId::ALL.len()],
    frozen: Option<Arc<Layer>>,
}

impl Overlay {
    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `change` in (the caller holds the store's write lock).
    pub(super) fn apply(&self, change: Change) {
        let mut layers = self.write();
        let layers = &mut *layers;
        for op in change.into_ops() {
            let t = op.tree as usize;
            let key = Key::new(IVec::from(op.key));
            match op.value {
                None if layers.new_in_active[t].remove(&key) => {
                    layers.active[t].remove(&key);
                }
                value if op.new => {
                    // A tombstone it replaces hides a value below: then
                    // the key is not new to what lies under `active`.
                    if layers.active[t]
                        .insert(key.clone(), value.map(IVec::from))
                        .is_none()
                    {
                        layers.new_in_active[t].insert(key);
                    }
                }
                value => {
                    layers.active[t].insert(key, value.map(IVec::from));
                }
            }
        }
    }

    /// The newest value of `key`, if the overlay knows it: `Some(None)`
    /// for a key removed since the last checkpoint; `None` to ask sled.
    pub(super) fn get(&self, tree: TreeId, key: &[u8]) -> Option<Option<IVec>> {
        let layers = self.read();
        let t = tree as usize;
        let key = Key::of(key);
        if let Some(value) = layers.active[t].get(&key) {
            return Some(value.clone());
        }
        layers.frozen.as_ref()?[t].get(&key).cloned()
    }

    /// The overlay's entries of `tree` between `from` and `to`, newest
    /// layer winning, in key order.
    pub(super) fn range(
        &self,
        tree: TreeId,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> BTreeMap<IVec, Option<IVec>> {
        let layers = self.read();
        let t = tree as usize;
        let mut out = BTreeMap::new();
        let range = (from.map(Key::of), to.map(Key::of));
        if let Some(frozen) = &layers.frozen {
            for (k, v) in frozen[t].range(range.clone()) {
                out.insert(k.bytes.clone(), v.clone());
            }
        }
        for (k, v) in layers.active[t].range(range) {
            out.insert(k.bytes.clone(), v.clone());
        }
        out
    }

    /// Freezes the active layer for a checkpoint, unless one is frozen
    /// already; the frozen layer. The caller holds the store's write lock.
    pub(super) fn freeze(&self) -> Arc<Layer> {
        let mut layers = self.write();
        if let Some(frozen) = &layers.frozen {
            return frozen.clone();
        }
        let frozen = Arc::new(std::mem::take(&mut layers.active));
        // Frozen, they are bound for sled: a removal now needs a tombstone.
        layers.new_in_active.iter_mut().for_each(HashSet::clear);
        layers.frozen = Some(frozen.clone());
        frozen
    }

    /// Drops the frozen layer, once sled holds it.
    pub(super) fn thaw(&self) {
        self.write().frozen = None;
    }

    /// Both layers, oldest first, for the last write to sled on close.
    pub(super) fn drain(&self) -> Vec<Arc<Layer>> {
        let mut layers = self.write();
        let frozen = layers.frozen.take();
        let active = Arc::new(std::mem::take(&mut layers.active));
        layers.new_in_active.iter_mut().for_each(HashSet::clear);
        frozen.into_iter().chain([active]).collect()
    }
}

/// Writes a layer to sled's trees with plain inserts and removals.
pub(super) fn write_layer<'a>(
    layer: &Layer,
    tree: impl Fn(TreeId) -> &'a ::sled::Tree,
) -> std::result::Result<(), ::sled::Error> {
    for id in TreeId::ALL {
        let tree = tree(id);
        if id == TreeId::Finished {
            super::finished::write(
                tree,
                layer[id as usize]
                    .iter()
                    .map(|(key, value)| (&key.bytes[..], value.is_some())),
            )?;
            continue;
        }
        for (key, value) in &layer[id as usize] {
            match value {
                Some(value) => {
                    tree.insert(key.bytes.clone(), value.clone())?;
                }
                None => {
                    tree.remove(&key.bytes)?;
                }
            }
        }
    }
    Ok(())
}

/// Merges the overlay's entries of a range (`overlay`, from
/// [`Overlay::range`]) into sled's iterator over the same range: the
/// overlay's value wins, its tombstones hide sled's entries. Forward, or
/// backward with `rev`.
pub(super) struct Merged<I: Iterator> {
    overlay: std::iter::Peekable<std::collections::btree_map::IntoIter<IVec, Option<IVec>>>,
    overlay_rev: Vec<(IVec, Option<IVec>)>,
    sled: std::iter::Peekable<I>,
    rev: bool,
}

impl<I> Merged<I>
where
    I: Iterator<Item = ::sled::Result<(IVec, IVec)>>,
{
    pub(super) fn new(overlay: BTreeMap<IVec, Option<IVec>>, sled: I, rev: bool) -> Self {
        let (overlay, overlay_rev) = if rev {
            // Popped from the end: the largest key first.
            (
                BTreeMap::new().into_iter().peekable(),
                overlay.into_iter().collect(),
            )
        } else {
            (overlay.into_iter().peekable(), Vec::new())
        };
        Merged {
            overlay,
            overlay_rev,
            sled: sled.peekable(),
            rev,
        }
    }

    fn peek_overlay(&mut self) -> Option<&IVec> {
        if self.rev {
            self.overlay_rev.last().map(|(k, _)| k)
        } else {
            self.overlay.peek().map(|(k, _)| k)
        }
    }

    fn next_overlay(&mut self) -> Option<(IVec, Option<IVec>)> {
        if self.rev {
            self.overlay_rev.pop()
        } else {
            self.overlay.next()
        }
    }
}

impl<I> Iterator for Merged<I>
where
    I: Iterator<Item = ::sled::Result<(IVec, IVec)>>,
{
    type Item = ::sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let sled_key = match self.sled.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return self.sled.next(),
                None => None,
            };
            let overlay_key = self.peek_overlay().cloned();
            // Which comes first in this direction: sled's entry, the
            // overlay's, or both (the same key: the overlay's wins).
            let take_sled = match (&sled_key, &overlay_key) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(s), Some(o)) => {
                    if s == o {
                        self.sled.next();
                        false
                    } else {
                        (s < o) != self.rev
                    }
                }
            };
            if take_sled {
                return self.sled.next();
            }
            match self.next_overlay() {
                Some((k, Some(v))) => return Some(Ok((k, v))),
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sled_entries(keys: &[u8]) -> Vec<::sled::Result<(IVec, IVec)>> {
        keys.iter()
            .map(|k| Ok((IVec::from(&[*k][..]), IVec::from(&b"sled"[..]))))
            .collect()
    }

    fn merged(rev: bool) -> Vec<(u8, String)> {
        let mut overlay = BTreeMap::new();
        overlay.insert(IVec::from(&[2][..]), Some(IVec::from(&b"new"[..])));
        overlay.insert(IVec::from(&[3][..]), None);
        overlay.insert(IVec::from(&[6][..]), Some(IVec::from(&b"added"[..])));
        overlay.insert(IVec::from(&[9][..]), None);
        let mut sled = sled_entries(&[1, 2, 3, 5, 7]);
        if rev {
            sled.reverse();
        }
        Merged::new(overlay, sled.into_iter(), rev)
            .map(|e| {
                let (k, v) = e.unwrap();
                (k[0], String::from_utf8(v.to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn keys_order_as_their_bytes_do() {
        // Lengths around the head's 16 bytes, zeros that padding could
        // confuse with a shorter key, and prefixes of one another.
        let mut bytes: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![1], vec![1, 0]];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in [1, 8, 15, 16, 17, 24, 40] {
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Few distinct byte values: many shared prefixes and zeros.
                let key: Vec<u8> = (0..len).map(|i| ((x >> (i % 60)) & 3) as u8).collect();
                bytes.push(key);
            }
        }
        let base = bytes[bytes.len() - 1].clone();
        for cut in [15, 16, 17] {
            bytes.push(base[..cut].to_vec());
            let mut longer = base[..cut].to_vec();
            longer.push(0);
            bytes.push(longer);
        }
        let mut by_bytes = bytes.clone();
        by_bytes.sort();
        let mut by_key: Vec<Key> = bytes.iter().map(|b| Key::of(b)).collect();
        by_key.sort();
        let by_key: Vec<Vec<u8>> = by_key.iter().map(|k| k.bytes.to_vec()).collect();
        assert_eq!(by_key, by_bytes);
        for a in &bytes {
            for b in &bytes {
                assert_eq!(Key::of(a) == Key::of(b), a == b, "{a:?} {b:?}");
                assert_eq!(Key::of(a).cmp(&Key::of(b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn the_overlay_wins_and_hides_what_it_removed_in_either_direction() {
        let forward = vec![
            (1, "sled".to_string()),
            (2, "new".into()),
            (5, "sled".into()),
            (6, "added".into()),
            (7, "sled".into()),
        ];
        assert_eq!(merged(false), forward);
        let mut backward = forward;
        backward.reverse();
        assert_eq!(merged(true), backward);
    }

    #[test]
    fn layers_answer_newest_first_until_thawed() {
        let overlay = Overlay::default();
        let mut change = Change::default();
        change.set(TreeId::Tasks, b"k".to_vec(), b"1".to_vec());
        overlay.apply(change);
        let frozen = overlay.freeze();
        assert_eq!(frozen[TreeId::Tasks as usize].len(), 1);
        let mut change = Change::default();
        change.remove(TreeId::Tasks, b"k".to_vec());
        overlay.apply(change);
        assert_eq!(overlay.get(TreeId::Tasks, b"k"), Some(None));
        assert_eq!(overlay.get(TreeId::Keys, b"k"), None);
        // A second freeze while one is frozen returns that one.
        assert!(Arc::ptr_eq(&overlay.freeze(), &frozen));
        overlay.thaw();
        assert_eq!(overlay.get(TreeId::Tasks, b"k"), Some(None));
        let drained = overlay.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(overlay.get(TreeId::Tasks, b"k"), None);
    }

    fn apply(overlay: &Overlay, new: bool, key: &[u8], value: Option<&[u8]>) {
        let mut change = Change::default();
        match (value, new) {
            (Some(v), true) => change.set_new(TreeId::Unfinished, key.to_vec(), v.to_vec()),
            (Some(v), false) => change.set(TreeId::Unfinished, key.to_vec(), v.to_vec()),
            (None, _) => change.remove(TreeId::Unfinished, key.to_vec()),
        }
        overlay.apply(change);
    }

    #[test]
    fn a_new_key_removed_before_a_checkpoint_leaves_nothing_and_other_removals_a_tombstone() {
        let overlay = Overlay::default();
        let t = TreeId::Unfinished;
        // New, removed in the same layer: no entry at all.
        apply(&overlay, true, b"a", Some(b"1"));
        apply(&overlay, false, b"a", Some(b"2"));
        apply(&overlay, false, b"a", None);
        assert_eq!(overlay.get(t, b"a"), None);
        // New, but frozen before its removal: sled will receive it, so
        // the removal is a tombstone.
        apply(&overlay, true, b"b", Some(b"1"));
        let frozen = overlay.freeze();
        apply(&overlay, false, b"b", None);
        assert_eq!(overlay.get(t, b"b"), Some(None));
        // Set "new" over a tombstone of the active layer (a key removed,
        // then made again): the tombstone hid a value below, so removing
        // it again must hide it still.
        apply(&overlay, false, b"c", None);
        apply(&overlay, true, b"c", Some(b"1"));
        apply(&overlay, false, b"c", None);
        assert_eq!(overlay.get(t, b"c"), Some(None));
        assert_eq!(frozen[t as usize].len(), 1);
        overlay.thaw();
        let layer = overlay.freeze();
        let keys: Vec<_> = layer[t as usize].keys().map(|k| k.bytes.to_vec()).collect();
        assert_eq!(keys, [b"b".to_vec(), b"c".to_vec()]);
    }
}
