//! The backend's calls, each one transaction (or one statement) on a
//! pooled connection. Task transitions lock the row, apply the
//! [`TaskRecord`] method that makes them, and write the row back
//! ([`record::update`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Json;

use super::listen::CHANNEL;
use super::record::{self, COLUMNS};
use super::{Shared, Tx, db_error, from_db, to_db};
use crate::backend::{Cancelled, Claim, Completed, Enqueued, LeaseState, Tick};
use crate::store::{StateCounts, StoredModule, TaskFilter};
use crate::task::{Completion, Lease, Millis, ModuleHash, TaskId, TaskRecord, TaskState};
use crate::{Error, ModuleSettings, Result};

/// Taken shared by every submission and exclusively by module deletion
/// (per transaction): a module is never deleted between a submission's
/// check that it exists and the submission's commit.
const MODULES_LOCK: i64 = 0x7770_6f6f_6c00_0002;

/// The database's clock, in milliseconds since the epoch.
const NOW: &str = "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint";

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn db_now(tx: &Tx<'_>) -> Result<Millis> {
    let row = tx
        .query_one(NOW, &[])
        .await
        .map_err(|e| db_error("reading the clock", &e))?;
    let now: i64 = row
        .try_get(0)
        .map_err(|e| db_error("reading the clock", &e))?;
    Ok(from_db(now))
}

/// Tells listening hosts that tasks became ready (sent at commit).
async fn notify_ready(tx: &Tx<'_>) -> Result<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map_err(|e| db_error("notifying other hosts", &e))?;
    Ok(())
}

async fn commit(tx: Tx<'_>, what: &str) -> Result<()> {
    tx.commit()
        .await
        .map_err(|e| db_error(&format!("committing {what}"), &e))
}

/// `n` new lease tokens.
async fn tokens(tx: &Tx<'_>, n: usize) -> Result<Vec<u64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = tx
        .query(
            "SELECT nextval('lease_tokens') FROM generate_series(1, $1::bigint)",
            &[&count(n)],
        )
        .await
        .map_err(|e| db_error("taking lease tokens", &e))?;
    rows.iter()
        .map(|row| {
            row.try_get::<_, i64>(0)
                .map(from_db)
                .map_err(|e| db_error("taking lease tokens", &e))
        })
        .collect()
}

/// Locks and reads the tasks `sql` selects (with [`COLUMNS`]).
async fn locked(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<Vec<TaskRecord>> {
    let rows = tx
        .query(sql, params)
        .await
        .map_err(|e| db_error(what, &e))?;
    rows.iter().map(record::decode).collect()
}

impl Shared {
    pub(super) async fn put_module(&self, hash: ModuleHash, bytes: Vec<u8>) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO modules (hash, bytes, size) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO NOTHING",
                &[&hash.to_string(), &bytes, &count(bytes.len())],
            )
            .await
            .map_err(|e| db_error(&format!("storing module {hash}"), &e))?;
        Ok(())
    }

    pub(super) async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT bytes FROM modules WHERE hash = $1",
                &[&hash.to_string()],
            )
            .await
            .map_err(|e| db_error(&format!("reading module {hash}"), &e))?;
        row.map(|row| row.try_get(0))
            .transpose()
            .map_err(|e| db_error(&format!("reading module {hash}"), &e))
    }

    pub(super) async fn modules(&self) -> Result<Vec<StoredModule>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT hash, size FROM modules ORDER BY hash", &[])
            .await
            .map_err(|e| db_error("listing modules", &e))?;
        rows.iter()
            .map(|row| {
                let hash: String = row
                    .try_get(0)
                    .map_err(|e| db_error("listing modules", &e))?;
                let size: i64 = row
                    .try_get(1)
                    .map_err(|e| db_error("listing modules", &e))?;
                Ok(StoredModule {
                    hash: hash.parse()?,
                    size: from_db(size),
                })
            })
            .collect()
    }

    pub(super) async fn delete_module(&self, hash: ModuleHash) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("deleting a module", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MODULES_LOCK])
            .await
            .map_err(|e| db_error("deleting a module", &e))?;
        let in_use = tx
            .query_opt(
                "SELECT 1 FROM tasks WHERE module = $1 \
                 AND state IN ('queued', 'scheduled', 'running') LIMIT 1",
                &[&hash.to_string()],
            )
            .await
            .map_err(|e| db_error("deleting a module", &e))?;
        if in_use.is_some() {
            return Err(Error::ModuleInUse(hash));
        }
        let deleted = tx
            .execute("DELETE FROM modules WHERE hash = $1", &[&hash.to_string()])
            .await
            .map_err(|e| db_error(&format!("deleting module {hash}"), &e))?;
        commit(tx, "a module's deletion").await?;
        Ok(deleted > 0)
    }

    pub(super) async fn gc_modules(&self) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("collecting modules", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MODULES_LOCK])
            .await
            .map_err(|e| db_error("collecting modules", &e))?;
        let removed = tx
            .execute(
                "DELETE FROM modules m WHERE NOT EXISTS \
                 (SELECT 1 FROM tasks t WHERE t.module = m.hash)",
                &[],
            )
            .await
            .map_err(|e| db_error("collecting modules", &e))?;
        commit(tx, "the module collection").await?;
        Ok(removed)
    }

    pub(super) async fn put_module_settings(
        &self,
        hash: ModuleHash,
        settings: ModuleSettings,
    ) -> Result<()> {
        let client = self.client().await?;
        let result = if settings.is_default() {
            client
                .execute(
                    "DELETE FROM module_settings WHERE hash = $1",
                    &[&hash.to_string()],
                )
                .await
        } else {
            client
                .execute(
                    "INSERT INTO module_settings (hash, settings) VALUES ($1, $2) \
                     ON CONFLICT (hash) DO UPDATE SET settings = excluded.settings",
                    &[&hash.to_string(), &Json(&settings)],
                )
                .await
        };
        result.map_err(|e| db_error(&format!("storing the settings of module {hash}"), &e))?;
        Ok(())
    }

    pub(super) async fn module_settings(&self, hash: ModuleHash) -> Result<Option<ModuleSettings>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT settings FROM module_settings WHERE hash = $1",
                &[&hash.to_string()],
            )
            .await
            .map_err(|e| db_error(&format!("reading the settings of module {hash}"), &e))?;
        let settings = row
            .map(|row| row.try_get::<_, Json<ModuleSettings>>(0))
            .transpose()
            .map_err(|e| db_error(&format!("reading the settings of module {hash}"), &e))?;
        Ok(settings.map(|Json(s)| s))
    }

    pub(super) async fn enqueue(&self, mut tasks: Vec<TaskRecord>) -> Result<Vec<Enqueued>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        if tasks.len() > 1 {
            let mut named = HashSet::with_capacity(tasks.len());
            if let Some(task) = tasks.iter().find(|t| !named.insert(t.id)) {
                return Err(crate::store::named_twice(&task.id));
            }
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("storing tasks", &e))?;
        tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&MODULES_LOCK])
            .await
            .map_err(|e| db_error("storing tasks", &e))?;
        let named: Vec<String> = tasks
            .iter()
            .map(|t| t.module)
            .collect::<HashSet<_>>()
            .iter()
            .map(ToString::to_string)
            .collect();
        let known: HashSet<String> = tx
            .query("SELECT hash FROM modules WHERE hash = ANY($1)", &[&named])
            .await
            .map_err(|e| db_error("checking the tasks' modules", &e))?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| db_error("checking the tasks' modules", &e))?;
        if let Some(task) = tasks
            .iter()
            .find(|t| !known.contains(&t.module.to_string()))
        {
            return Err(Error::UnknownModule(task.module));
        }
        let mut seqs = tx
            .query(
                "SELECT nextval('task_seq') FROM generate_series(1, $1::bigint)",
                &[&count(tasks.len())],
            )
            .await
            .map_err(|e| db_error("numbering tasks", &e))?
            .iter()
            .map(|row| row.try_get::<_, i64>(0).map(from_db))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| db_error("numbering tasks", &e))?;
        seqs.sort_unstable();
        for (task, seq) in tasks.iter_mut().zip(seqs) {
            task.seq = seq;
        }
        let stored = record::insert_all(&tx, &mut tasks).await?;
        // The holders of the keys that were taken.
        let taken: Vec<&str> = tasks
            .iter()
            .zip(&stored)
            .filter(|(_, stored)| !**stored)
            .filter_map(|(task, _)| task.idempotency_key.as_deref())
            .collect();
        let mut holders: HashMap<String, TaskId> = HashMap::new();
        if !taken.is_empty() {
            let rows = tx
                .query(
                    "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1)",
                    &[&taken],
                )
                .await
                .map_err(|e| db_error("finding the tasks holding idempotency keys", &e))?;
            for row in &rows {
                let key: String = row
                    .try_get(0)
                    .map_err(|e| db_error("finding the tasks holding idempotency keys", &e))?;
                holders.insert(key, record::task_id(row, 1)?);
            }
        }
        let ready = tasks
            .iter()
            .zip(&stored)
            .any(|(task, stored)| *stored && task.state == TaskState::Queued);
        if ready {
            notify_ready(&tx).await?;
        }
        commit(tx, "new tasks").await?;
        tasks
            .into_iter()
            .zip(stored)
            .map(|(task, stored)| {
                if stored {
                    return Ok(Enqueued::New(Box::new(task)));
                }
                let key = task.idempotency_key.unwrap_or_default();
                holders
                    .get(&key)
                    .map(|id| Enqueued::Existing(*id))
                    .ok_or_else(|| {
                        Error::Store(format!(
                            "the idempotency key `{key}` is taken, but no task holds it"
                        ))
                    })
            })
            .collect()
    }

    /// Claims up to `max` tasks for free workers, then up to `ahead` more
    /// ahead of one ([`Backend::claim_ahead`](crate::backend::Backend::claim_ahead)).
    pub(super) async fn claim(&self, firm: usize, ahead: usize, ttl: Duration) -> Result<Claim> {
        let mut claim = Claim::default();
        let max = firm.saturating_add(ahead);
        if max == 0 {
            return Ok(claim);
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("claiming tasks", &e))?;
        let now = db_now(&tx).await?;
        let select = format!(
            "SELECT {COLUMNS} FROM tasks WHERE state = 'queued' \
             ORDER BY priority DESC, seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        // Tasks found past their expiry do not count: look again until
        // `max` are claimed or none is left.
        while claim.claimed.len() < max {
            let want = max - claim.claimed.len();
            let found = locked(&tx, &select, &[&count(want)], "claiming tasks").await?;
            let live = found
                .iter()
                .filter(|r| r.expires_at.is_none_or(|at| at > now))
                .count();
            let mut tokens = tokens(&tx, live).await?.into_iter();
            let exhausted = found.len() < want;
            for mut record in found {
                if record.expires_at.is_some_and(|at| at <= now) {
                    record.expire(now);
                    record::update(&tx, &mut record).await?;
                    claim.expired.push(record);
                    continue;
                }
                let token = tokens
                    .next()
                    .ok_or_else(|| Error::Store("too few lease tokens were taken".into()))?;
                let lease = Lease {
                    task: record.id,
                    token,
                    expires_at: now.saturating_add(millis(ttl)),
                };
                if claim.claimed.len() >= firm {
                    record.claim_ahead(lease, now);
                } else {
                    record.start(lease, now);
                }
                record::update(&tx, &mut record).await?;
                claim.claimed.push((Arc::new(record), lease));
            }
            if exhausted {
                break;
            }
        }
        if !claim.claimed.is_empty() || !claim.expired.is_empty() {
            commit(tx, "the claim").await?;
        }
        Ok(claim)
    }

    pub(super) async fn renew(&self, leases: Vec<Lease>, ttl: Duration) -> Result<Vec<LeaseState>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let ids: Vec<String> = leases.iter().map(|l| l.task.to_string()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| to_db(l.token)).collect();
        let rows = client
            .query(
                "UPDATE tasks t SET lease_expires_at = \
                 (extract(epoch from clock_timestamp()) * 1000)::bigint + $3 \
                 FROM unnest($1::text[], $2::bigint[]) AS l(id, token) \
                 WHERE t.id = l.id AND t.lease_token = l.token AND t.state = 'running' \
                 RETURNING t.id, t.cancel_requested",
                &[&ids, &tokens, &to_db(millis(ttl))],
            )
            .await
            .map_err(|e| db_error("renewing leases", &e))?;
        let mut held = HashMap::new();
        for row in &rows {
            let cancel: bool = row
                .try_get(1)
                .map_err(|e| db_error("renewing leases", &e))?;
            held.insert(record::task_id(row, 0)?, cancel);
        }
        Ok(leases
            .iter()
            .map(|lease| match held.get(&lease.task) {
                Some(true) => LeaseState::CancelRequested,
                Some(false) => LeaseState::Held,
                None => LeaseState::Lost,
            })
            .collect())
    }

    /// The running task held by `lease`, locked; `None` if the lease was
    /// lost.
    async fn held(tx: &Tx<'_>, lease: &Lease) -> Result<Option<TaskRecord>> {
        let found = locked(
            tx,
            &format!(
                "SELECT {COLUMNS} FROM tasks \
                 WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR UPDATE"
            ),
            &[&lease.task.to_string(), &to_db(lease.token)],
            "reading a leased task",
        )
        .await?;
        Ok(found.into_iter().next())
    }

    pub(super) async fn complete(&self, lease: Lease, run: Completion) -> Result<Completed> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("recording a run", &e))?;
        let Some(mut record) = Self::held(&tx, &lease).await? else {
            return Ok(Completed::LeaseLost);
        };
        record.complete(run);
        record::update(&tx, &mut record).await?;
        commit(tx, "a run's end").await?;
        Ok(Completed::Recorded(Arc::new(record)))
    }

    pub(super) async fn release(&self, lease: Lease) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("releasing a task", &e))?;
        let Some(mut record) = Self::held(&tx, &lease).await? else {
            return Ok(false);
        };
        let now = db_now(&tx).await?;
        record.release(now);
        record::update(&tx, &mut record).await?;
        if record.state == TaskState::Queued {
            notify_ready(&tx).await?;
        }
        commit(tx, "a release").await?;
        Ok(true)
    }

    pub(super) async fn expire_leases(&self) -> Result<Vec<TaskRecord>> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("expiring leases", &e))?;
        let now = db_now(&tx).await?;
        let lost = locked(
            &tx,
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE state = 'running' AND lease_expires_at <= $1 \
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&to_db(now)],
            "finding expired leases",
        )
        .await?;
        if lost.is_empty() {
            return Ok(lost);
        }
        let mut changed = Vec::with_capacity(lost.len());
        let mut ready = false;
        for mut record in lost {
            record.interrupt(now);
            record::update(&tx, &mut record).await?;
            ready |= record.state == TaskState::Queued;
            changed.push(record);
        }
        if ready {
            notify_ready(&tx).await?;
        }
        commit(tx, "expired leases").await?;
        Ok(changed)
    }

    pub(super) async fn tick(&self) -> Result<Tick> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("moving due tasks", &e))?;
        let now = db_now(&tx).await?;
        let mut tick = Tick::default();
        let overdue = locked(
            &tx,
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE state IN ('queued', 'scheduled') \
                 AND expires_at <= $1 FOR UPDATE SKIP LOCKED"
            ),
            &[&to_db(now)],
            "finding expired tasks",
        )
        .await?;
        for mut record in overdue {
            record.expire(now);
            record::update(&tx, &mut record).await?;
            tick.expired.push(record);
        }
        let due = locked(
            &tx,
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE state = 'scheduled' AND run_at <= $1 \
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&to_db(now)],
            "finding due tasks",
        )
        .await?;
        for mut record in due {
            record.promote(now);
            record::update(&tx, &mut record).await?;
            tick.promoted += 1;
        }
        if tick.promoted > 0 {
            notify_ready(&tx).await?;
        }
        let next: Option<i64> = tx
            .query_one(
                "SELECT least( \
                   (SELECT min(run_at) FROM tasks WHERE state = 'scheduled'), \
                   (SELECT min(expires_at) FROM tasks \
                    WHERE state IN ('queued', 'scheduled') AND expires_at IS NOT NULL))",
                &[],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| db_error("finding the next due time", &e))?;
        tick.next = next.map(from_db);
        commit(tx, "due tasks").await?;
        Ok(tick)
    }

    pub(super) async fn cancel(&self, id: TaskId) -> Result<Cancelled> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| db_error("cancelling a task", &e))?;
        let found = locked(
            &tx,
            &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE"),
            &[&id.to_string()],
            "reading the task to cancel",
        )
        .await?;
        let Some(mut record) = found.into_iter().next() else {
            return Ok(Cancelled::NotFound);
        };
        if record.state.is_final() {
            return Ok(Cancelled::AlreadyFinished(record.state));
        }
        if record.state == TaskState::Running {
            if !record.cancel_requested {
                record.cancel_requested = true;
                record::update(&tx, &mut record).await?;
                commit(tx, "a cancel request").await?;
            }
            return Ok(Cancelled::Requested);
        }
        let now = db_now(&tx).await?;
        record.cancel_waiting(now);
        record::update(&tx, &mut record).await?;
        commit(tx, "a cancel").await?;
        Ok(Cancelled::Cancelled(Box::new(record)))
    }

    pub(super) async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&id.to_string()],
            )
            .await
            .map_err(|e| db_error(&format!("reading task {id}"), &e))?;
        row.as_ref().map(record::decode).transpose()
    }

    pub(super) async fn by_key(&self, key: String) -> Result<Option<TaskId>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT id FROM tasks WHERE idempotency_key = $1", &[&key])
            .await
            .map_err(|e| db_error("finding an idempotency key's task", &e))?;
        row.map(|row| record::task_id(&row, 0)).transpose()
    }

    pub(super) async fn list(&self, filter: TaskFilter) -> Result<Vec<TaskRecord>> {
        let client = self.client().await?;
        let labels: &BTreeMap<String, String> = &filter.labels;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks \
                     WHERE ($1::text IS NULL OR state = $1) \
                     AND labels @> $2 \
                     AND ($3::text IS NULL OR id < $3) \
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &filter.state.map(TaskState::as_str),
                    &Json(labels),
                    &filter.before.map(|id| id.to_string()),
                    &count(filter.page_size()),
                ],
            )
            .await
            .map_err(|e| db_error("listing tasks", &e))?;
        rows.iter().map(record::decode).collect()
    }

    pub(super) async fn counts(&self) -> Result<StateCounts> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT state, count(*) FROM tasks GROUP BY state", &[])
            .await
            .map_err(|e| db_error("counting tasks", &e))?;
        let mut counts = StateCounts::default();
        for row in &rows {
            let n: i64 = row.try_get(1).map_err(|e| db_error("counting tasks", &e))?;
            counts.0.insert(record::state(row, 0)?, from_db(n));
        }
        Ok(counts)
    }

    pub(super) async fn purge_finished(&self, before: Millis, keep: Option<u64>) -> Result<u64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM tasks WHERE id IN ( \
                   SELECT id FROM ( \
                     SELECT id, finished_at, \
                       row_number() OVER (ORDER BY finished_at DESC, id DESC) AS newer \
                     FROM tasks WHERE finished_at IS NOT NULL) f \
                   WHERE f.finished_at < $1 OR ($2::bigint IS NOT NULL AND f.newer > $2))",
                &[&to_db(before), &keep.map(to_db)],
            )
            .await
            .map_err(|e| db_error("removing finished tasks", &e))
    }

    pub(super) async fn delete_finished(&self, ids: &[TaskId]) -> Result<Vec<TaskId>> {
        let client = self.client().await?;
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = client
            .query(
                "DELETE FROM tasks WHERE id = ANY($1) AND finished_at IS NOT NULL RETURNING id",
                &[&ids],
            )
            .await
            .map_err(|e| db_error("deleting finished tasks", &e))?;
        rows.iter()
            .map(|row| super::record::task_id(row, 0))
            .collect()
    }
}
