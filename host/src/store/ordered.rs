//! A set of keys in order, for keys that mostly come in order.
//!
//! The memory store keeps its task ids in order (for [`Store::list`]'s
//! pages) and its finished tasks by the time they ended (for
//! [`Store::purge_finished`]). Both mostly grow at their end: ids are made
//! in order, and tasks end in the order of time. A B-tree finds the place
//! of every key by comparing it down its levels (some 350 instructions a
//! key with a few thousand tasks, on the thread that submits and on the
//! one that ends a run). Here a key above every key so far goes to the
//! back of a deque, with one comparison; one that comes out of order (a
//! submission that lost a race with another, two workers' ends within
//! the same millisecond, a clock set back) goes to a B-tree beside it.
//! Reading in order merges the two.
//!
//! [`Store::list`]: super::Store::list
//! [`Store::purge_finished`]: super::Store::purge_finished

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::Hash;
use std::iter::Peekable;

/// See the module docs. No key is in both parts.
#[derive(Debug)]
pub(super) struct Ordered<K> {
    /// Keys that came in order: increasing.
    tail: VecDeque<K>,
    /// The others.
    rest: BTreeSet<K>,
}

impl<K> Default for Ordered<K> {
    fn default() -> Self {
        Ordered {
            tail: VecDeque::new(),
            rest: BTreeSet::new(),
        }
    }
}

/// How many keys [`Ordered::remove_all`] removes one by one; more are
/// removed in one pass over the deque.
const ONE_BY_ONE: usize = 8;

impl<K: Ord + Copy + Hash> Ordered<K> {
    pub(super) fn len(&self) -> usize {
        self.tail.len() + self.rest.len()
    }

    /// Adds `key`; `false` if it was there already.
    pub(super) fn insert(&mut self, key: K) -> bool {
        match self.tail.back() {
            Some(last) if *last >= key => {
                if self.tail.binary_search(&key).is_ok() {
                    return false;
                }
                self.rest.insert(key)
            }
            _ => {
                if self.rest.contains(&key) {
                    return false;
                }
                self.tail.push_back(key);
                true
            }
        }
    }

    /// Removes `key`; `false` if it was not there.
    pub(super) fn remove(&mut self, key: &K) -> bool {
        match self.tail.binary_search(key) {
            // The deque moves the shorter side: cheap near either end.
            Ok(at) => self.tail.remove(at).is_some(),
            Err(_) => self.rest.remove(key),
        }
    }

    /// Removes every key of `keys` (those it holds).
    pub(super) fn remove_all(&mut self, keys: &[K]) {
        if keys.len() <= ONE_BY_ONE {
            for key in keys {
                self.remove(key);
            }
            return;
        }
        // One pass, rather than a shift of the deque for each key.
        let doomed: HashSet<K> = keys.iter().copied().collect();
        self.tail.retain(|key| !doomed.contains(key));
        self.rest.retain(|key| !doomed.contains(key));
    }

    /// Every key, in increasing order.
    pub(super) fn iter(&self) -> impl Iterator<Item = K> + '_ {
        Merge {
            a: self.tail.iter().copied().peekable(),
            b: self.rest.iter().copied().peekable(),
            next: |a: &K, b: &K| a <= b,
        }
    }

    /// The keys below `upper` (all of them if `None`), in decreasing
    /// order.
    pub(super) fn before(&self, upper: Option<K>) -> impl Iterator<Item = K> + '_ {
        let (tail, rest) = match upper {
            Some(upper) => {
                let end = self.tail.partition_point(|key| *key < upper);
                (self.tail.range(..end), self.rest.range(..upper))
            }
            None => (self.tail.range(..), self.rest.range(..)),
        };
        Merge {
            a: tail.rev().copied().peekable(),
            b: rest.rev().copied().peekable(),
            next: |a: &K, b: &K| a >= b,
        }
    }
}

/// Two ordered sequences merged: `next(a, b)` says whether `a`'s head
/// comes first.
struct Merge<A: Iterator, B: Iterator, F> {
    a: Peekable<A>,
    b: Peekable<B>,
    next: F,
}

impl<K, A, B, F> Iterator for Merge<A, B, F>
where
    A: Iterator<Item = K>,
    B: Iterator<Item = K>,
    F: Fn(&K, &K) -> bool,
{
    type Item = K;

    fn next(&mut self) -> Option<K> {
        let first_a = match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) => (self.next)(a, b),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if first_a {
            self.a.next()
        } else {
            self.b.next()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `ordered` against `model` by every way of reading it.
    fn agree(ordered: &Ordered<u32>, model: &BTreeSet<u32>) {
        assert_eq!(ordered.len(), model.len());
        assert_eq!(
            ordered.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        for upper in [None, Some(0), Some(5), Some(17), Some(50), Some(1000)] {
            let want: Vec<u32> = match upper {
                Some(upper) => model.range(..upper).rev().copied().collect(),
                None => model.iter().rev().copied().collect(),
            };
            assert_eq!(ordered.before(upper).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn keys_in_order_out_of_order_and_twice_read_back_as_a_set_in_order() {
        let mut ordered = Ordered::default();
        let mut model = BTreeSet::new();
        // In order, then out of order (below the back), then a key that
        // is there already, in either part, then in order again.
        for key in [1, 2, 3, 10, 20, 5, 15, 0, 3, 15, 20, 21, 30, 25, 40] {
            assert_eq!(ordered.insert(key), model.insert(key), "insert {key}");
            agree(&ordered, &model);
        }
        assert!(!ordered.rest.is_empty() && !ordered.tail.is_empty());
        // One by one, from either part, and a key not there.
        for key in [5, 30, 99, 1] {
            assert_eq!(ordered.remove(&key), model.remove(&key), "remove {key}");
            agree(&ordered, &model);
        }
        // A few at once, then many at once (one pass).
        let few = [0, 21, 77];
        ordered.remove_all(&few);
        for key in few {
            model.remove(&key);
        }
        agree(&ordered, &model);
        let many: Vec<u32> = (0..40).filter(|k| k % 3 != 0).collect();
        ordered.remove_all(&many);
        for key in &many {
            model.remove(key);
        }
        agree(&ordered, &model);
        // Keys above all again go to the back.
        for key in [41, 42, 35] {
            assert_eq!(ordered.insert(key), model.insert(key));
        }
        agree(&ordered, &model);
    }

    #[test]
    fn a_clock_set_back_sends_keys_to_the_tree_without_losing_order() {
        let mut ordered = Ordered::default();
        let mut model = BTreeSet::new();
        // Times go up to 1,000, back to 500, and on past 1,000.
        for key in (0..1000).step_by(10).chain((500..1500).step_by(7)) {
            ordered.insert(key);
            model.insert(key);
        }
        agree(&ordered, &model);
        // The keys from 500 to 1,000 came below the back: in the tree.
        assert!(ordered.rest.iter().all(|k| (500..=1000).contains(k)));
        assert!(!ordered.rest.is_empty());
    }
}
