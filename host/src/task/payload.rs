//! Where a task's input and a run's output are kept: in the task's record,
//! or, when large, in a file of the store's, so that the database (its
//! cache) and the queue's in-memory index only ever hold small records.

use serde::{Deserialize, Serialize};

/// Inputs and outputs up to this size stay in the task's record; larger
/// ones are kept by stores that can keep them apart ([`Payload::File`]).
/// Results shown as JSON carry the output only up to this size too; a
/// larger one is read as a stream (`GET /v1/tasks/{id}/output`).
pub const INLINE_PAYLOAD: usize = 64 << 10;

/// How much of the output an `output_too_large` failure keeps: its last
/// bytes, enough to see what the task was writing when it was stopped.
pub const TOO_LARGE_TAIL: usize = 4 << 10;

/// A task's input, or a run's output, as its task's record holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// Kept outside the record, in a file of the store's named by the task,
    /// the [`Slot`] and, for an output, the lease the run held (`token`;
    /// 0 for an input); `len` bytes. Read it with
    /// [`Backend::read_payload`](crate::backend::Backend::read_payload) or
    /// [`Pool::result`](crate::Pool::result).
    File {
        /// The lease token of the run that wrote it (0 for an input).
        token: u64,
        /// Its size in bytes.
        len: u64,
    },
}

/// Which payload of a task: what names its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The task's input.
    Input,
    /// The output of a run.
    Output,
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Inline(Vec::new())
    }
}

impl Payload {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(bytes) => bytes.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when the record holds them.
    pub fn inline(&self) -> Option<&[u8]> {
        match self {
            Payload::Inline(bytes) => Some(bytes),
            Payload::File { .. } => None,
        }
    }

    /// Whether it is kept in a file.
    pub fn is_file(&self) -> bool {
        matches!(self, Payload::File { .. })
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Inline(bytes)
    }
}
