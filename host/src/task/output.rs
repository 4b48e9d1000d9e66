//! Where a run's output is kept: in its task's record, or, when large, in a
//! file of the store's, so that the database (and its cache) only ever
//! holds small records.

use serde::{Deserialize, Serialize};

/// Outputs up to this size stay in the task's record; larger ones are kept
/// by stores that can keep them apart ([`Output::File`]). Results shown as
/// JSON carry the output only up to this size too; a larger one is read as
/// a stream (`GET /v1/tasks/{id}/output`).
pub const INLINE_OUTPUT: usize = 64 << 10;

/// How much of the output an `output_too_large` failure keeps: its last
/// bytes, enough to see what the task was writing when it was stopped.
pub const TOO_LARGE_TAIL: usize = 4 << 10;

/// A run's output, as its task's record holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// Kept outside the record, in a file of the store's named by the task
    /// and the lease the run held (`token`); `len` bytes. Read it with
    /// [`Backend::read_output`](crate::backend::Backend::read_output) or
    /// [`Pool::result`](crate::Pool::result).
    File {
        /// The lease token of the run that wrote it.
        token: u64,
        /// Its size in bytes.
        len: u64,
    },
}

impl Default for Output {
    fn default() -> Self {
        Output::Inline(Vec::new())
    }
}

impl Output {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Output::Inline(bytes) => bytes.len() as u64,
            Output::File { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when the record holds them.
    pub fn inline(&self) -> Option<&[u8]> {
        match self {
            Output::Inline(bytes) => Some(bytes),
            Output::File { .. } => None,
        }
    }
}

impl From<Vec<u8>> for Output {
    fn from(bytes: Vec<u8>) -> Self {
        Output::Inline(bytes)
    }
}
