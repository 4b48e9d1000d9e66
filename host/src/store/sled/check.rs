//! The consistency check of a sled store.

use std::collections::HashSet;
use std::ops::Bound;

use super::SledStore;
use super::envelope::{decode_task, open_envelope};
use super::tasks::{Index, index_key};
use super::wal::TreeId;
use crate::Result;
use crate::store::Tally;

/// What [`SledStore::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Records in `tasks`.
    pub tasks: u64,
    /// Entries in the `unfinished` index.
    pub unfinished: u64,
    /// Entries in the `finished` index.
    pub finished: u64,
    /// Idempotency keys.
    pub keys: u64,
    /// Stored modules.
    pub modules: u64,
    /// Every inconsistency and corrupted record found; empty when the
    /// store is sound.
    pub problems: Vec<String>,
}

impl SledStore {
    /// Reads every record and index entry and reports what does not add
    /// up: corrupted records, a task in no index or in two, index entries
    /// naming missing tasks, keys naming missing tasks, counts that differ
    /// from the records. It reads the whole store: for tests and repair
    /// tools, not for the hot path.
    pub fn check(&self) -> Result<CheckReport> {
        let writes = self.lock_writes();
        let mut report = CheckReport::default();
        let mut counts = Tally::default();
        let mut expected_unfinished = HashSet::new();
        let mut expected_finished = HashSet::new();
        // Ids of unreadable records: their index entries cannot be checked.
        let mut unreadable = HashSet::new();
        for entry in self.scan(TreeId::Tasks, Bound::Unbounded, false) {
            let (key, value) = entry.map_err(|e| self.storage("scanning tasks", e))?;
            report.tasks += 1;
            match decode_task(&key, &value) {
                Ok(task) => {
                    if key.as_ref() != task.id.to_bytes() {
                        report
                            .problems
                            .push(format!("task {} is stored under another id's key", task.id));
                    }
                    counts.moved(None, Some(task.state));
                    match index_key(&task) {
                        Index::Unfinished(k) => expected_unfinished.insert(k),
                        Index::Finished(k) => expected_finished.insert(k),
                    };
                    if let Some(k) = &task.idempotency_key {
                        match self.read(TreeId::Keys, k.as_bytes())? {
                            Some(id) if id.as_ref() == task.id.to_bytes() => {}
                            _ => report.problems.push(format!(
                                "task {} has idempotency key `{k}`, which does not name it",
                                task.id
                            )),
                        }
                    }
                }
                Err(e) => {
                    unreadable.insert(key.to_vec());
                    report.problems.push(e.to_string());
                }
            }
        }
        for (name, tree, expected, count) in [
            (
                "unfinished",
                TreeId::Unfinished,
                &mut expected_unfinished,
                &mut report.unfinished,
            ),
            (
                "finished",
                TreeId::Finished,
                &mut expected_finished,
                &mut report.finished,
            ),
        ] {
            for entry in self.scan(tree, Bound::Unbounded, false) {
                let (key, _) = entry.map_err(|e| self.storage(&format!("scanning {name}"), e))?;
                *count += 1;
                let id = key.get(8..).unwrap_or_default();
                if !expected.remove(key.as_ref()) && !unreadable.contains(id) {
                    report.problems.push(format!(
                        "index `{name}` has entry {} that no task in that state matches",
                        hex::encode(&key)
                    ));
                }
            }
            for missing in expected.iter() {
                report.problems.push(format!(
                    "a task is missing from index `{name}` (entry {})",
                    hex::encode(missing)
                ));
            }
        }
        for entry in self.scan(TreeId::Keys, Bound::Unbounded, false) {
            let (key, id) = entry.map_err(|e| self.storage("scanning keys", e))?;
            report.keys += 1;
            let present = self.contains(TreeId::Tasks, &id)?;
            if !present {
                report.problems.push(format!(
                    "idempotency key `{}` names a task that is not stored",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
        for entry in self.scan(TreeId::Modules, Bound::Unbounded, false) {
            let (key, value) = entry.map_err(|e| self.storage("scanning modules", e))?;
            report.modules += 1;
            if let Err(e) = open_envelope("modules", &key, &value) {
                report.problems.push(e.to_string());
            }
        }
        if unreadable.is_empty() && writes.counts != counts {
            report.problems.push(format!(
                "the counts say {:?} but the records say {:?}",
                writes.counts.counts().0,
                counts.counts().0
            ));
        }
        Ok(report)
    }
}
