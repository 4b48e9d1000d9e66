//! A PostgreSQL database of its own for each test, on the server named by
//! `WPOOL_TEST_POSTGRES` (which `scripts/test.sh` starts and sets), so that
//! tests run in parallel. Dropped with the test.

use std::sync::Arc;

use tokio_postgres::NoTls;
use wpool::backend::{Backend, PostgresBackend, PostgresOptions};

/// A database created for one test.
pub(crate) struct TestDatabase {
    /// Its URL.
    pub(crate) url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    /// Creates a database with a random name.
    pub(crate) fn create() -> Self {
        let admin = std::env::var("WPOOL_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "WPOOL_TEST_POSTGRES is not set: run the suite with scripts/test.sh, or set \
                 WPOOL_TEST_POSTGRES to a server where this user may create databases \
                 (e.g. postgres://me@127.0.0.1:5432/postgres)"
            )
        });
        let name = format!("wpool_test_{:016x}", fastrand::u64(..));
        sql(&admin, &format!("CREATE DATABASE {name}"));
        TestDatabase {
            url: with_database(&admin, &name),
            admin,
            name,
        }
    }

    /// A new backend on this database (another host, as far as the queue
    /// can tell).
    pub(crate) fn open(&self) -> Arc<dyn Backend> {
        Arc::new(self.backend())
    }

    /// [`TestDatabase::open`], typed.
    pub(crate) fn backend(&self) -> PostgresBackend {
        PostgresBackend::connect_blocking(&self.url, &PostgresOptions::new())
            .unwrap_or_else(|e| panic!("cannot open the test database {}: {e}", self.url))
    }

    /// Runs `statements` on this database.
    pub(crate) fn execute(&self, statements: &str) {
        sql(&self.url, statements);
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Best effort: the throwaway cluster goes anyway.
        let _ = try_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        panic!("WPOOL_TEST_POSTGRES must be a URL, postgres://user@host:port/database: {url}");
    };
    let (authority, query) = match rest.find(['/', '?']) {
        Some(at) => {
            let query = rest[at..].find('?').map(|q| &rest[at + q..]);
            (&rest[..at], query.unwrap_or(""))
        }
        None => (rest, ""),
    };
    format!("{scheme}://{authority}/{name}{query}")
}

fn sql(url: &str, statements: &str) {
    if let Err(e) = try_sql(url, statements) {
        panic!("{statements} on {url}: {e}");
    }
}

/// Runs `statements` on a thread and runtime of its own (callers may be
/// inside a runtime).
fn try_sql(url: &str, statements: &str) -> Result<(), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let (client, connection) = tokio_postgres::connect(url, NoTls)
                        .await
                        .map_err(|e| format!("cannot connect: {e}"))?;
                    let driver = tokio::spawn(connection);
                    let done =
                        client
                            .batch_execute(statements)
                            .await
                            .map_err(|e| match e.as_db_error() {
                                Some(db) => db.message().to_string(),
                                None => e.to_string(),
                            });
                    drop(client);
                    let _ = driver.await;
                    done
                })
            })
            .join()
            .map_err(|_| "panicked".to_string())?
    })
}

#[test]
fn the_database_is_named_in_the_url() {
    assert_eq!(
        with_database("postgres://u@h:5/postgres", "x"),
        "postgres://u@h:5/x"
    );
    assert_eq!(
        with_database("postgres://u@h:5/postgres?host=/tmp", "x"),
        "postgres://u@h:5/x?host=/tmp"
    );
    assert_eq!(with_database("postgresql://u@h", "x"), "postgresql://u@h/x");
}
