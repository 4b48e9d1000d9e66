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
    /// A new id, unique and later than every id made before it in this
    /// process.
    pub fn new() -> Self {
        use std::sync::Mutex;
        static LAST: Mutex<Option<ulid::Ulid>> = Mutex::new(None);
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match *last {
            Some(prev) => ulid::Ulid::new().max(prev.increment().unwrap_or_else(ulid::Ulid::new)),
            None => ulid::Ulid::new(),
        };
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
