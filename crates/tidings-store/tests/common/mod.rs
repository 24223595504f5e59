//! What the store tests share: a fresh PostgreSQL database per test, dropped afterwards.

use postgres::{Client, NoTls};
use rand::Rng;

/// A database of its own on the test cluster, dropped (with any connections still open)
/// when this goes out of scope, so that a long-lived developer cluster does not fill up
/// with test databases. Dereferences to its URL.
pub struct TestDatabase {
    url: String,
    admin: String,
    name: String,
}

impl std::ops::Deref for TestDatabase {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // A test's failure is reported by the test; a leftover database is not worth a
        // second panic during unwinding.
        let _ = admin_statement(self.admin.clone(), sql);
    }
}

/// Runs one statement as the cluster's admin, on a thread of its own (the synchronous
/// driver must not run on an async test's runtime thread).
fn admin_statement(admin: String, sql: String) -> Result<(), String> {
    std::thread::spawn(move || {
        let mut c = Client::connect(&admin, NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(&sql).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the admin thread panicked".to_string())?
}

/// A fresh database on the test cluster (`TIDINGS_TEST_POSTGRES_URL`, set by
/// `./scripts/test`).
pub fn fresh_database(prefix: &str) -> TestDatabase {
    let admin = std::env::var("TIDINGS_TEST_POSTGRES_URL").expect(
        "TIDINGS_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL",
    );
    let name = format!("{prefix}_{}", rand::rng().random::<u32>());
    admin_statement(admin.clone(), format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TIDINGS_TEST_POSTGRES_URL must end in /<database>"),
    };
    TestDatabase { url, admin, name }
}
