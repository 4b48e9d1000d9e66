//! `--data-dir` for `status`, `result` and `list`: the same answers read
//! from a data directory directly, with no daemon (for tasks a `submit`
//! queued there when no server answered). The directory must not be held
//! by a running `wpool serve`: ask that daemon instead.

use std::path::Path;

use anyhow::anyhow;

use super::server::types::{ResultView, TaskAnswer, TaskList, TaskView};
use super::{Failure, exit};
use crate::store::{SledOptions, SledStore, Store, TaskFilter};
use crate::{Payload, Slot, TaskId};

/// Opens the data directory read for a command.
fn open(dir: &Path) -> Result<SledStore, Failure> {
    if !dir.exists() {
        return Err(Failure::new(
            exit::NOT_FOUND,
            anyhow!("there is no data directory {}", dir.display()),
        ));
    }
    SledStore::open(dir, &SledOptions::new())
        .map_err(|e| {
            // The daemon is named only when the directory is held: a store
            // of a newer schema, or a damaged one, has its own reason.
            let hint = if e.is_in_use() {
                " (a running `wpool serve` holds it: ask that daemon with --server instead)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "cannot open the data directory {}{hint}",
                dir.display()
            ))
        })
        .map_err(|e| Failure::new(exit::REFUSED, e))
}

fn parse(id: &str) -> Result<TaskId, Failure> {
    id.parse()
        .map_err(|e: crate::Error| Failure::bad_input(anyhow!("{e}")))
}

fn not_found(id: &TaskId, dir: &Path) -> Failure {
    Failure::new(
        exit::NOT_FOUND,
        anyhow!("no task {id} in the data directory {}", dir.display()),
    )
}

/// What `GET /v1/tasks/{id}` would answer.
pub(crate) fn task(dir: &Path, id: &str) -> Result<TaskAnswer, Failure> {
    let store = open(dir)?;
    let id = parse(id)?;
    let record = store
        .get(&id)
        .map_err(Failure::internal)?
        .ok_or_else(|| not_found(&id, dir))?;
    Ok(TaskAnswer {
        task: TaskView::from(&record),
        result: None,
        created: None,
    })
}

/// The task's result with its whole output, `None` if not final.
pub(crate) fn result(dir: &Path, id: &str) -> Result<Option<ResultView>, Failure> {
    let store = open(dir)?;
    let id = parse(id)?;
    let record = store
        .get(&id)
        .map_err(Failure::internal)?
        .ok_or_else(|| not_found(&id, dir))?;
    if !record.state.is_final() {
        return Ok(None);
    }
    let output = match &record.output {
        Payload::Inline(bytes) => bytes.clone(),
        kept => store
            .read_payload(&id, Slot::Output, kept)
            .map_err(Failure::internal)?,
    };
    Ok(record.result_with(output).as_ref().map(ResultView::from))
}

/// What `GET /v1/tasks` would answer for `filter`.
pub(crate) fn list(dir: &Path, filter: &TaskFilter) -> Result<TaskList, Failure> {
    let store = open(dir)?;
    let tasks = store.list(filter).map_err(Failure::internal)?;
    let next_cursor = (tasks.len() == filter.page_size())
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(TaskList {
        tasks: tasks.iter().map(TaskView::from).collect(),
        next_cursor,
    })
}
