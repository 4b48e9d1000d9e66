//! The envelope around every stored value (a record version byte and a
//! CRC32 of key and payload), and the encoding of records inside it.

use std::fmt;

use super::{META_COUNTS, schema};
use crate::store::Tally;
use crate::task::{ModuleHash, TaskId, TaskRecord};
use crate::{Error, Result};

/// The version byte of the envelope of modules and meta records.
pub(super) const RECORD_VERSION: u8 = 1;
/// The version byte of task records this build writes (see
/// [`schema`](super::schema) for what each version holds).
pub(super) const TASK_RECORD_VERSION: u8 = 3;
/// Envelope header: version byte + CRC32.
pub(super) const HEADER: usize = 5;

pub(super) fn module_hash(key: &[u8]) -> Result<ModuleHash> {
    let bytes: [u8; 32] = key.try_into().map_err(|_| {
        Error::Store(format!(
            "corrupted key {} in tree `modules`: not a 32-byte hash",
            hex::encode(key)
        ))
    })?;
    Ok(ModuleHash::from_bytes(bytes))
}

pub(super) fn task_id(tree: &str, bytes: &[u8]) -> Result<TaskId> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        Error::Store(format!(
            "corrupted entry in tree `{tree}`: {} is not a 16-byte task id",
            hex::encode(bytes)
        ))
    })?;
    Ok(TaskId::from_bytes(bytes))
}

pub(super) fn checksum(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

pub(super) fn envelope(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = open_buffer(RECORD_VERSION, payload.len());
    out.extend_from_slice(payload);
    seal(out, key)
}

/// A buffer for an envelope of `version` with room for `size` bytes of
/// payload: its header, the checksum left blank for [`seal`].
fn open_buffer(version: u8, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + size);
    out.extend_from_slice(&[version, 0, 0, 0, 0]);
    out
}

/// Writes the checksum of `key` and the payload behind the header of
/// `out` (from [`open_buffer`]) into the header.
fn seal(mut out: Vec<u8>, key: &[u8]) -> Vec<u8> {
    let crc = checksum(key, &out[HEADER..]);
    out[1..HEADER].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(super) fn describe_key(tree: &str, key: &[u8]) -> String {
    match (tree, key.len()) {
        ("tasks", 16) => task_id(tree, key).map_or_else(|_| hex::encode(key), |id| id.to_string()),
        _ if key.iter().all(|b| b.is_ascii_graphic()) => String::from_utf8_lossy(key).into_owned(),
        _ => hex::encode(key),
    }
}

pub(super) fn corrupted(tree: &str, key: &[u8], why: impl fmt::Display) -> Error {
    Error::Store(format!(
        "corrupted record {} in tree `{tree}`: {why}",
        describe_key(tree, key)
    ))
}

/// The payload of a checked envelope.
pub(super) fn open_envelope<'a>(tree: &str, key: &[u8], bytes: &'a [u8]) -> Result<&'a [u8]> {
    open_versioned(tree, key, bytes, RECORD_VERSION).map(|(_, payload)| payload)
}

/// The version and payload of a checked envelope whose version is at most
/// `newest`.
fn open_versioned<'a>(
    tree: &str,
    key: &[u8],
    bytes: &'a [u8],
    newest: u8,
) -> Result<(u8, &'a [u8])> {
    if bytes.len() < HEADER {
        return Err(corrupted(
            tree,
            key,
            format_args!("{} bytes, shorter than its header", bytes.len()),
        ));
    }
    if bytes[0] == 0 || bytes[0] > newest {
        return Err(corrupted(
            tree,
            key,
            format_args!(
                "record version {}, this wpool reads versions 1 to {newest}",
                bytes[0]
            ),
        ));
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let payload = &bytes[HEADER..];
    let computed = checksum(key, payload);
    if stored != computed {
        return Err(corrupted(
            tree,
            key,
            format_args!("checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    Ok((bytes[0], payload))
}

pub(super) fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub(super) fn encode<T: serde::Serialize>(tree: &str, key: &[u8], value: &T) -> Result<Vec<u8>> {
    encode_versioned(RECORD_VERSION, tree, key, value, 64)
}

/// Encodes `value` into its envelope in one buffer of `size` bytes (a
/// guess: the buffer grows past it if it must): the header's checksum is
/// written in place after the payload, so the payload is neither copied nor grown
/// from empty (bincode's own `encode_to_vec` starts from an empty vector,
/// and its growth was a quarter of a task record's encoding).
fn encode_versioned<T: serde::Serialize>(
    version: u8,
    tree: &str,
    key: &[u8],
    value: &T,
    size: usize,
) -> Result<Vec<u8>> {
    let mut out = open_buffer(version, size);
    bincode::serde::encode_into_writer(value, Appender(&mut out), bincode_config()).map_err(
        |e| {
            Error::Store(format!(
                "cannot encode record {} for tree `{tree}`: {e}",
                describe_key(tree, key)
            ))
        },
    )?;
    Ok(seal(out, key))
}

/// bincode's writer onto the end of a vector.
struct Appender<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Room for a task record's encoding: its variable parts' lengths, plus
/// room for its fixed fields and a few attempts (more grow the buffer).
pub(super) fn task_size(task: &TaskRecord) -> usize {
    let inline = |payload: &crate::task::Payload| payload.inline().map_or(0, <[u8]>::len);
    let labels: usize = task.labels.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    192 + inline(&task.input)
        + inline(&task.output)
        + task.log.len()
        + task.idempotency_key.as_ref().map_or(0, String::len)
        + labels
        + 48 * task.attempts.len()
}

pub(super) fn encode_task(task: &TaskRecord) -> Result<Vec<u8>> {
    encode_versioned(
        TASK_RECORD_VERSION,
        "tasks",
        &task.id.to_bytes(),
        &schema::StoredTask::from(task),
        task_size(task),
    )
}

/// Where the input is in an encoded task record, of any version (each
/// begins with the version 1 fields: the id, the module hash, then the
/// input as a length and its bytes). `None` if `bytes` is too short to
/// hold it, which a record written by [`encode_task`] never is.
pub(super) fn input_range(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    // The envelope's header, then the id (16 bytes) and the hash (32).
    const AT: usize = HEADER + 16 + 32;
    // bincode's variable-length integer: a byte below 251 is the value;
    // 251, 252 and 253 announce a u16, u32 or u64, little-endian.
    let (len, width) = match *bytes.get(AT)? {
        n @ 0..=250 => (u64::from(n), 1),
        251 => (
            u64::from(u16::from_le_bytes(
                bytes.get(AT + 1..AT + 3)?.try_into().ok()?,
            )),
            3,
        ),
        252 => (
            u64::from(u32::from_le_bytes(
                bytes.get(AT + 1..AT + 5)?.try_into().ok()?,
            )),
            5,
        ),
        253 => (
            u64::from_le_bytes(bytes.get(AT + 1..AT + 9)?.try_into().ok()?),
            9,
        ),
        _ => return None,
    };
    let start = AT + width;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= bytes.len()).then_some(start..end)
}

pub(super) fn decode_task(key: &[u8], bytes: &[u8]) -> Result<TaskRecord> {
    let (version, payload) = open_versioned("tasks", key, bytes, TASK_RECORD_VERSION)?;
    let task = match version {
        1 => TaskRecord::try_from(decode_payload::<schema::StoredTaskV1>(
            "tasks", key, payload,
        )?),
        2 => TaskRecord::try_from(decode_payload::<schema::StoredTaskV2>(
            "tasks", key, payload,
        )?),
        _ => TaskRecord::try_from(decode_payload::<schema::StoredTask>("tasks", key, payload)?),
    };
    task.map_err(|e| corrupted("tasks", key, e))
}

pub(super) fn encode_counts(counts: &Tally) -> Result<Vec<u8>> {
    encode("meta", META_COUNTS, &schema::StoredCounts(counts))
}

pub(super) fn decode_counts(bytes: &[u8]) -> Result<Tally> {
    schema::counts_from(decode("meta", META_COUNTS, bytes)?)
        .map_err(|e| corrupted("meta", META_COUNTS, e))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T> {
    decode_payload(tree, key, open_envelope(tree, key, bytes)?)
}

fn decode_payload<T: serde::de::DeserializeOwned>(
    tree: &str,
    key: &[u8],
    payload: &[u8],
) -> Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| corrupted(tree, key, format_args!("undecodable: {e}")))?;
    if used != payload.len() {
        return Err(corrupted(
            tree,
            key,
            format_args!("{} trailing bytes", payload.len() - used),
        ));
    }
    Ok(value)
}
