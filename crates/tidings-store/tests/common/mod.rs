//! What the store tests share: a fresh PostgreSQL database per test.

use postgres::{Client, NoTls};
use rand::Rng;

/// A fresh database on the test cluster (`TIDINGS_TEST_POSTGRES_URL`, set by
/// `./scripts/test`); returns its URL.
pub fn fresh_database(prefix: &str) -> String {
    let admin = std::env::var("TIDINGS_TEST_POSTGRES_URL").expect(
        "TIDINGS_TEST_POSTGRES_URL is not set: run ./scripts/test, which starts PostgreSQL",
    );
    let name = format!("{prefix}_{}", rand::rng().random::<u32>());
    std::thread::spawn({
        let (admin, name) = (admin.clone(), name.clone());
        move || {
            let mut c = Client::connect(&admin, NoTls).expect("connect to the test cluster");
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create a test database");
        }
    })
    .join()
    .expect("database setup");
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TIDINGS_TEST_POSTGRES_URL must end in /<database>"),
    }
}
