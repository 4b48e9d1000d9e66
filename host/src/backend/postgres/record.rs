//! How a [`TaskRecord`] is kept in the `tasks` table: the one place that
//! writes a task's row ([`insert`], [`update`]) and reads it back
//! ([`decode`]).
//!
//! The columns hold what queries select and order by; the rest of the
//! record is JSON in `record`. Input and output bytes have columns of their
//! own (`bytea`): the JSON holds them empty.

use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{Tx, db_error, from_db, to_db};
use crate::task::{Payload, TaskId, TaskRecord, TaskState};
use crate::{Error, Result};

/// The bytes of a payload: this backend keeps them in the row (`bytea`,
/// which PostgreSQL moves out of the table's pages when large), never in
/// files of its own.
fn inline(payload: &Payload) -> Result<&[u8]> {
    payload.inline().ok_or_else(|| {
        Error::Store(
            "a task names a payload file, which the PostgreSQL backend does not keep".into(),
        )
    })
}

/// The columns a task is read with, in the order [`decode`] takes them.
pub(super) const COLUMNS: &str = "record, input, output, lease_expires_at";

/// The record's JSON, without its input and output bytes.
fn to_json(record: &mut TaskRecord) -> Result<serde_json::Value> {
    let input = std::mem::take(&mut record.input);
    let output = std::mem::take(&mut record.output);
    let json = serde_json::to_value(&*record);
    record.input = input;
    record.output = output;
    json.map_err(|e| Error::Store(format!("cannot encode task {}: {e}", record.id)))
}

/// A task read with [`COLUMNS`].
pub(super) fn decode(row: &Row) -> Result<TaskRecord> {
    let Json(mut record): Json<TaskRecord> = row
        .try_get(0)
        .map_err(|e| db_error("reading a task record", &e))?;
    record.input = Payload::Inline(
        row.try_get(1)
            .map_err(|e| db_error("reading a task's input", &e))?,
    );
    record.output = Payload::Inline(
        row.try_get(2)
            .map_err(|e| db_error("reading a task's output", &e))?,
    );
    // Renewals move only the column.
    let lease_expires_at: Option<i64> = row
        .try_get(3)
        .map_err(|e| db_error("reading a task's lease", &e))?;
    if let (Some(lease), Some(at)) = (record.lease.as_mut(), lease_expires_at) {
        lease.expires_at = from_db(at);
    }
    Ok(record)
}

/// A task id read from a text column.
pub(super) fn task_id(row: &Row, index: usize) -> Result<TaskId> {
    let text: String = row
        .try_get(index)
        .map_err(|e| db_error("reading a task id", &e))?;
    text.parse()
        .map_err(|e| Error::Store(format!("a task id in the database is malformed: {e}")))
}

/// A state read from a text column.
pub(super) fn state(row: &Row, index: usize) -> Result<TaskState> {
    let text: String = row
        .try_get(index)
        .map_err(|e| db_error("reading a task state", &e))?;
    text.parse()
        .map_err(|e| Error::Store(format!("a task state in the database is malformed: {e}")))
}

fn finished_at(record: &TaskRecord) -> Option<i64> {
    record
        .state
        .is_final()
        .then(|| to_db(record.finished_at.unwrap_or(record.updated_at)))
}

/// Stores new tasks in one statement; for each, whether it was stored
/// (`false`: its idempotency key was taken, by an earlier task or an
/// earlier one of `records`, and nothing was written for it).
///
/// Rows go in ordered by key, then by their place in `records`: the first
/// task of a batch to name a key takes it, and two batches naming the same
/// keys wait for each other in one order, never in a deadlock.
pub(super) async fn insert_all(tx: &Tx<'_>, records: &mut [TaskRecord]) -> Result<Vec<bool>> {
    let json = records
        .iter_mut()
        .map(to_json)
        .collect::<Result<Vec<_>>>()?;
    let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
    let seqs: Vec<i64> = records.iter().map(|r| to_db(r.seq)).collect();
    let states: Vec<&str> = records.iter().map(|r| r.state.as_str()).collect();
    let priorities: Vec<i32> = records.iter().map(|r| r.priority).collect();
    let run_at: Vec<i64> = records.iter().map(|r| to_db(r.run_at)).collect();
    let expires_at: Vec<Option<i64>> = records.iter().map(|r| r.expires_at.map(to_db)).collect();
    let keys: Vec<Option<&str>> = records
        .iter()
        .map(|r| r.idempotency_key.as_deref())
        .collect();
    let tokens: Vec<Option<i64>> = records
        .iter()
        .map(|r| r.lease.map(|l| to_db(l.token)))
        .collect();
    let lease_expiries: Vec<Option<i64>> = records
        .iter()
        .map(|r| r.lease.map(|l| to_db(l.expires_at)))
        .collect();
    let cancels: Vec<bool> = records.iter().map(|r| r.cancel_requested).collect();
    let modules: Vec<String> = records.iter().map(|r| r.module.to_string()).collect();
    let labels: Vec<Json<_>> = records.iter().map(|r| Json(&r.labels)).collect();
    let finished: Vec<Option<i64>> = records.iter().map(finished_at).collect();
    let json: Vec<Json<&serde_json::Value>> = json.iter().map(Json).collect();
    let inputs: Vec<&[u8]> = records
        .iter()
        .map(|r| inline(&r.input))
        .collect::<Result<_>>()?;
    let outputs: Vec<&[u8]> = records
        .iter()
        .map(|r| inline(&r.output))
        .collect::<Result<_>>()?;
    let rows = tx
        .query(
            "INSERT INTO tasks (id, seq, state, priority, run_at, expires_at, idempotency_key, \
             lease_token, lease_expires_at, cancel_requested, module, labels, finished_at, \
             record, input, output) \
             SELECT id, seq, state, priority, run_at, expires_at, idempotency_key, \
             lease_token, lease_expires_at, cancel_requested, module, labels, finished_at, \
             record, input, output \
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::bigint[], \
             $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::boolean[], $11::text[], \
             $12::jsonb[], $13::bigint[], $14::jsonb[], $15::bytea[], $16::bytea[]) \
             WITH ORDINALITY AS t(id, seq, state, priority, run_at, expires_at, \
             idempotency_key, lease_token, lease_expires_at, cancel_requested, module, labels, \
             finished_at, record, input, output, place) \
             ORDER BY idempotency_key NULLS LAST, place \
             ON CONFLICT (idempotency_key) DO NOTHING \
             RETURNING id",
            &[
                &ids,
                &seqs,
                &states,
                &priorities,
                &run_at,
                &expires_at,
                &keys,
                &tokens,
                &lease_expiries,
                &cancels,
                &modules,
                &labels,
                &finished,
                &json,
                &inputs,
                &outputs,
            ],
        )
        .await
        .map_err(|e| db_error("storing tasks", &e))?;
    let stored = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<std::result::Result<std::collections::HashSet<_>, _>>()
        .map_err(|e| db_error("storing tasks", &e))?;
    Ok(ids.iter().map(|id| stored.contains(id)).collect())
}

/// Writes a task's new state over its row, which the transaction holds
/// locked (the row's id, module, priority, labels, key and input never
/// change).
pub(super) async fn update(tx: &Tx<'_>, record: &mut TaskRecord) -> Result<()> {
    let json = to_json(record)?;
    let statement = tx
        .prepare_cached(
            "UPDATE tasks SET state = $2, run_at = $3, expires_at = $4, lease_token = $5, \
             lease_expires_at = $6, cancel_requested = $7, finished_at = $8, record = $9, \
             output = $10 WHERE id = $1",
        )
        .await
        .map_err(|e| db_error("preparing to update tasks", &e))?;
    let updated = tx
        .execute(
            &statement,
            &[
                &record.id.to_string(),
                &record.state.as_str(),
                &to_db(record.run_at),
                &record.expires_at.map(to_db),
                &record.lease.map(|l| to_db(l.token)),
                &record.lease.map(|l| to_db(l.expires_at)),
                &record.cancel_requested,
                &finished_at(record),
                &Json(&json),
                &inline(&record.output)?,
            ],
        )
        .await
        .map_err(|e| db_error(&format!("updating task {}", record.id), &e))?;
    if updated != 1 {
        return Err(Error::Store(format!(
            "task {} vanished from the database while it was being updated",
            record.id
        )));
    }
    Ok(())
}
