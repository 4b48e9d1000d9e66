//! The `finished` index as sled holds it (schema 6): one value per
//! millisecond of end time, holding the ids of the tasks that ended in it.
//!
//! The index itself is a set of keys, each the end time in milliseconds
//! (8 bytes, big-endian) and the task's id (16 bytes), oldest first; that
//! is how the log, the overlay and every reader see it. Only sled holds it
//! grouped: under the 8 bytes of a millisecond, an envelope of the ids of
//! that millisecond, sorted.
//!
//! Why: a checkpoint gave sled one new key per finished task, always at
//! the right edge of the tree, so the same leaf split every few inserts
//! (sled 0.34 splits a leaf past 16 entries, copying it and its parent
//! index node into its log). That cost about as much as writing the task
//! records themselves, 2.3 µs a task of the checkpoint's 5.6 (measured in
//! the performance log). Grouped, a checkpoint reads and writes one value
//! per millisecond that changed, whatever the number of tasks that ended
//! in it.

use std::collections::BTreeSet;
use std::ops::Bound;

use ::sled::IVec;

use super::envelope::{envelope, open_envelope};

/// Bytes of an end time, the key of a group.
pub(super) const AT: usize = 8;
/// Bytes of a task id.
const ID: usize = 16;
/// Bytes of an index entry as the log and the overlay see it.
const ENTRY: usize = AT + ID;

type Id = [u8; ID];

/// Changes to one millisecond's group: ids set (`true`) and removed.
type GroupChanges = ([u8; AT], Vec<(Id, bool)>);

/// An error of sled's kind for what this module finds wrong: a group
/// value that does not check out, or an entry of the wrong length.
fn bad(why: String) -> ::sled::Error {
    ::sled::Error::Unsupported(why)
}

/// The end time and the id of an index entry.
fn split(entry: &[u8]) -> ::sled::Result<([u8; AT], Id)> {
    if entry.len() != ENTRY {
        return Err(bad(format!(
            "an entry of index `finished` has {} bytes, not {ENTRY}: {}",
            entry.len(),
            hex::encode(entry)
        )));
    }
    let mut at = [0; AT];
    let mut id = [0; ID];
    at.copy_from_slice(&entry[..AT]);
    id.copy_from_slice(&entry[AT..]);
    Ok((at, id))
}

/// The ids of the group stored under `at`, checked.
fn ids(at: &[u8], value: &[u8]) -> ::sled::Result<Vec<Id>> {
    let payload = open_envelope("finished", at, value).map_err(|e| bad(e.to_string()))?;
    if at.len() != AT || payload.len() % ID != 0 {
        return Err(bad(format!(
            "group {} of index `finished` is not a millisecond's ids ({} bytes of key, {} of ids)",
            hex::encode(at),
            at.len(),
            payload.len()
        )));
    }
    Ok(payload
        .chunks_exact(ID)
        .map(|id| {
            let mut out = [0; ID];
            out.copy_from_slice(id);
            out
        })
        .collect())
}

/// The ids sled holds in the group of `at` (none if it holds no group).
fn read_group(tree: &::sled::Tree, at: &[u8; AT]) -> ::sled::Result<BTreeSet<Id>> {
    Ok(match tree.get(at)? {
        Some(value) => ids(at, &value)?.into_iter().collect(),
        None => BTreeSet::new(),
    })
}

/// The value of the group of `at`: the envelope of its ids, in order.
fn encode_group(at: &[u8; AT], group: &BTreeSet<Id>) -> Vec<u8> {
    let payload: Vec<u8> = group.iter().flatten().copied().collect();
    envelope(at, &payload)
}

/// Sets (`true`) and removes (`false`) `changes` in the group of `at`,
/// reading it and writing it back once.
fn change_group(
    tree: &::sled::Tree,
    at: [u8; AT],
    changes: impl IntoIterator<Item = (Id, bool)>,
) -> ::sled::Result<()> {
    let mut group = read_group(tree, &at)?;
    for (id, set) in changes {
        if set {
            group.insert(id);
        } else {
            group.remove(&id);
        }
    }
    if group.is_empty() {
        tree.remove(at)?;
    } else {
        tree.insert(at, encode_group(&at, &group))?;
    }
    Ok(())
}

/// Writes index entries to sled: `entries` are `(entry, set)` in key
/// order (as a layer of the overlay holds them), each millisecond's
/// group read and written once.
pub(super) fn write<'a>(
    tree: &::sled::Tree,
    entries: impl IntoIterator<Item = (&'a [u8], bool)>,
) -> ::sled::Result<()> {
    let mut pending: Option<GroupChanges> = None;
    for (entry, set) in entries {
        let (at, id) = split(entry)?;
        match &mut pending {
            Some((group, changes)) if *group == at => changes.push((id, set)),
            _ => {
                if let Some((group, changes)) = pending.take() {
                    change_group(tree, group, changes)?;
                }
                pending = Some((at, vec![(id, set)]));
            }
        }
    }
    if let Some((group, changes)) = pending {
        change_group(tree, group, changes)?;
    }
    Ok(())
}

/// Sets or removes one index entry in sled (a record of the log, replayed).
pub(super) fn write_one(tree: &::sled::Tree, entry: &[u8], set: bool) -> ::sled::Result<()> {
    let (at, id) = split(entry)?;
    change_group(tree, at, [(id, set)])
}

/// sled's groups below `below` as index entries (with empty values), in
/// key order or (`rev`) the reverse: what [`super::overlay::Merged`]
/// merges the overlay's entries into.
pub(super) fn entries<'a>(
    tree: &'a ::sled::Tree,
    below: Bound<&[u8]>,
    rev: bool,
) -> impl Iterator<Item = ::sled::Result<(IVec, IVec)>> + 'a {
    // The group holding the bound's millisecond is read whole, and its
    // entries past the bound left out.
    let below: Bound<Vec<u8>> = match below {
        Bound::Included(key) => Bound::Included(key.to_vec()),
        Bound::Excluded(key) => Bound::Excluded(key.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    };
    let groups = match &below {
        Bound::Included(key) | Bound::Excluded(key) => {
            let at = &key[..key.len().min(AT)];
            tree.range::<&[u8], _>((Bound::Unbounded, Bound::Included(at)))
        }
        Bound::Unbounded => tree.range::<&[u8], _>(..),
    };
    let groups: Box<dyn Iterator<Item = ::sled::Result<(IVec, IVec)>>> = if rev {
        Box::new(groups.rev())
    } else {
        Box::new(groups)
    };
    groups
        .flat_map(move |group| {
            let entries: Vec<::sled::Result<(IVec, IVec)>> = match group {
                Err(e) => vec![Err(e)],
                Ok((at, value)) => match ids(&at, &value) {
                    Err(e) => vec![Err(e)],
                    Ok(ids) => {
                        let mut entries: Vec<_> = ids
                            .iter()
                            .map(|id| {
                                let mut entry = [0; ENTRY];
                                entry[..AT].copy_from_slice(&at);
                                entry[AT..].copy_from_slice(id);
                                Ok((IVec::from(&entry[..]), IVec::default()))
                            })
                            .collect();
                        if rev {
                            entries.reverse();
                        }
                        entries
                    }
                },
            };
            entries
        })
        .filter(move |entry| match (entry, &below) {
            (Err(_), _) | (_, Bound::Unbounded) => true,
            (Ok((key, _)), Bound::Included(limit)) => key.as_ref() <= limit.as_slice(),
            (Ok((key, _)), Bound::Excluded(limit)) => key.as_ref() < limit.as_slice(),
        })
}

/// Turns an index written before schema 6 (one key per entry, empty
/// values) into groups, in passes of `pass` entries, each applied to sled
/// as one batch. Entries already grouped (a conversion cut short by a
/// crash, then begun again) are merged, so it may be run again at any
/// point. Returns how many entries it moved.
pub(super) fn group_entries(tree: &::sled::Tree, pass: usize) -> ::sled::Result<u64> {
    let mut moved = 0;
    loop {
        // The next `pass` ungrouped entries, by millisecond.
        let mut groups: Vec<([u8; AT], Vec<IVec>)> = Vec::new();
        let mut taken = 0;
        for entry in tree.iter() {
            let (key, _) = entry?;
            if key.len() == AT {
                continue;
            }
            let (at, _) = split(&key)?;
            match groups.last_mut() {
                Some((group, keys)) if *group == at => keys.push(key),
                _ => {
                    if taken >= pass {
                        break;
                    }
                    groups.push((at, vec![key]));
                }
            }
            taken += 1;
        }
        if groups.is_empty() {
            return Ok(moved);
        }
        let mut batch = ::sled::Batch::default();
        for (at, keys) in &groups {
            let mut group = read_group(tree, at)?;
            for key in keys {
                group.insert(split(key)?.1);
                batch.remove(key.clone());
            }
            batch.insert(&at[..], encode_group(at, &group));
            moved += keys.len() as u64;
        }
        tree.apply_batch(batch)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: u64, id: u8) -> Vec<u8> {
        let mut entry = at.to_be_bytes().to_vec();
        entry.extend_from_slice(&[id; ID]);
        entry
    }

    fn tree() -> (::sled::Db, ::sled::Tree) {
        let db = ::sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("finished").unwrap();
        (db, tree)
    }

    fn all(tree: &::sled::Tree, below: Bound<&[u8]>, rev: bool) -> Vec<Vec<u8>> {
        entries(tree, below, rev)
            .map(|e| e.unwrap().0.to_vec())
            .collect()
    }

    #[test]
    fn entries_of_a_millisecond_share_one_value_and_read_back_in_order() {
        let (_db, tree) = tree();
        let written = [
            entry(5, 3),
            entry(5, 1),
            entry(7, 2),
            entry(9, 9),
            entry(9, 4),
        ];
        let mut sorted = written.to_vec();
        sorted.sort();
        write(&tree, sorted.iter().map(|e| (&e[..], true))).unwrap();
        assert_eq!(tree.len(), 3, "one value per millisecond");
        assert_eq!(all(&tree, Bound::Unbounded, false), sorted);
        let mut reversed = sorted.clone();
        reversed.reverse();
        assert_eq!(all(&tree, Bound::Unbounded, true), reversed);
        // A bound inside a group keeps that group's entries below it.
        assert_eq!(
            all(&tree, Bound::Excluded(&entry(9, 9)), false),
            sorted[..4].to_vec()
        );
        assert_eq!(
            all(&tree, Bound::Included(&entry(5, 1)), false),
            vec![entry(5, 1)]
        );
    }

    #[test]
    fn removals_shrink_a_group_and_remove_it_when_empty() {
        let (_db, tree) = tree();
        write(&tree, [(&entry(5, 1)[..], true), (&entry(5, 2)[..], true)]).unwrap();
        write_one(&tree, &entry(5, 1), false).unwrap();
        assert_eq!(all(&tree, Bound::Unbounded, false), vec![entry(5, 2)]);
        // Replayed twice, as a crash may make it: nothing changes.
        write_one(&tree, &entry(5, 1), false).unwrap();
        write_one(&tree, &entry(5, 2), true).unwrap();
        assert_eq!(all(&tree, Bound::Unbounded, false), vec![entry(5, 2)]);
        write(&tree, [(&entry(5, 2)[..], false)]).unwrap();
        assert!(tree.is_empty());
    }

    #[test]
    fn a_damaged_group_is_an_error_not_an_empty_index() {
        let (_db, tree) = tree();
        write(&tree, [(&entry(5, 1)[..], true)]).unwrap();
        let mut value = tree.get(5u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let last = value.len() - 1;
        value[last] ^= 1;
        tree.insert(5u64.to_be_bytes(), value).unwrap();
        let read: Vec<_> = entries(&tree, Bound::Unbounded, false).collect();
        assert_eq!(read.len(), 1);
        let e = read[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        assert!(write_one(&tree, &entry(5, 2), true).is_err());
        assert!(write_one(&tree, &[1, 2, 3], true).is_err());
    }

    #[test]
    fn an_old_index_is_grouped_and_grouping_again_changes_nothing() {
        let (_db, tree) = tree();
        let old: Vec<Vec<u8>> = (0..50u8).map(|i| entry(u64::from(i / 4), i)).collect();
        for key in &old {
            tree.insert(&key[..], &[][..]).unwrap();
        }
        // Passes of about 7 entries (whole milliseconds), each its own
        // batch.
        assert_eq!(group_entries(&tree, 7).unwrap(), 50);
        assert_eq!(tree.len(), 13);
        assert_eq!(all(&tree, Bound::Unbounded, false), old);
        // An entry of the old form left beside a group (a crash between
        // passes, then entries written again): merged into it.
        tree.insert(&entry(3, 200)[..], &[][..]).unwrap();
        assert_eq!(group_entries(&tree, 7).unwrap(), 1);
        assert_eq!(group_entries(&tree, 7).unwrap(), 0);
        let mut expected = old.clone();
        expected.push(entry(3, 200));
        expected.sort();
        assert_eq!(all(&tree, Bound::Unbounded, false), expected);
    }
}
