//! The tables, and the versioned migrations that make them.
//!
//! Every host runs the migrations when it opens the database, in one
//! transaction under an advisory lock, so that hosts starting together
//! apply each version once and never see half a schema. `schema_version`
//! keeps one row per version applied. A database of a newer version than
//! this build knows is refused: the hosts of one queue run one schema.

use super::{Shared, db_error};
use crate::{Error, Result};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 1;

/// Held (per transaction) while migrations run: "wpool" and 1.
const MIGRATION_LOCK: i64 = 0x7770_6f6f_6c00_0001;

/// The migrations, oldest first: `MIGRATIONS[n - 1]` makes version `n`.
const MIGRATIONS: [&str; 1] = [V1];

/// Version 1: tasks, modules and module settings.
///
/// Times are milliseconds since the Unix epoch (`bigint`), as in the task
/// records. The columns of `tasks` are what queries select and order by;
/// the rest of the record is `record` (JSON), its input and output bytes
/// beside it so that they are neither encoded as JSON nor rewritten when
/// the task moves. Ids are ULID text, in the C collation so that they sort
/// as the ids do.
const V1: &str = r#"
CREATE SEQUENCE task_seq;
CREATE SEQUENCE lease_tokens;

CREATE TABLE tasks (
    id text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL DEFAULT nextval('task_seq') UNIQUE,
    state text NOT NULL,
    priority integer NOT NULL,
    run_at bigint NOT NULL,
    expires_at bigint,
    idempotency_key text UNIQUE,
    lease_token bigint,
    lease_expires_at bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    module text NOT NULL,
    labels jsonb NOT NULL,
    finished_at bigint,
    record jsonb NOT NULL,
    input bytea NOT NULL,
    output bytea NOT NULL
);
-- Claiming: the ready tasks, highest priority first, then submission order.
CREATE INDEX tasks_ready ON tasks (priority DESC, seq) WHERE state = 'queued';
-- The timer: scheduled tasks by time, waiting tasks by expiry.
CREATE INDEX tasks_due ON tasks (run_at) WHERE state = 'scheduled';
CREATE INDEX tasks_expiry ON tasks (expires_at)
    WHERE state IN ('queued', 'scheduled') AND expires_at IS NOT NULL;
-- Lease expiry.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
-- Listing by state, newest first; counting.
CREATE INDEX tasks_state ON tasks (state, id);
-- Retention, oldest finished first.
CREATE INDEX tasks_finished ON tasks (finished_at, id) WHERE finished_at IS NOT NULL;
-- Module deletion and collection.
CREATE INDEX tasks_module ON tasks (module);
-- Listing by labels.
CREATE INDEX tasks_labels ON tasks USING gin (labels jsonb_path_ops);

CREATE TABLE modules (
    hash text PRIMARY KEY,
    bytes bytea NOT NULL,
    size bigint NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE module_settings (
    hash text PRIMARY KEY,
    settings jsonb NOT NULL
);
"#;

/// Brings the database to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) async fn migrate(shared: &Shared) -> Result<()> {
    let mut client = shared.client().await?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_error("starting the migration", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db_error("waiting for the migration lock", &e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(|e| db_error("creating the schema_version table", &e))?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| db_error("reading the schema version", &e))?;
    if found > SCHEMA_VERSION {
        return Err(Error::Store(format!(
            "the database {} holds a wpool queue of schema version {found}, newer than this \
             wpool knows (version {SCHEMA_VERSION}): run the wpool version the other hosts \
             run (or a newer one) on this host, or point it at another database",
            shared.target
        )));
    }
    for version in found + 1..=SCHEMA_VERSION {
        let index = usize::try_from(version - 1).unwrap_or(usize::MAX);
        let Some(sql) = MIGRATIONS.get(index) else {
            return Err(Error::Host(format!(
                "no migration to schema version {version}"
            )));
        };
        tx.batch_execute(sql)
            .await
            .map_err(|e| db_error(&format!("migrating to schema version {version}"), &e))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| db_error("recording the schema version", &e))?;
        tracing::info!(version, database = %shared.target, "PostgreSQL schema migrated");
    }
    tx.commit()
        .await
        .map_err(|e| db_error("committing the migration", &e))
}
