//! `TestApp::spawn()`: a fresh store and server for one test, and helpers to talk to it.
//!
//! The suite runs on either store: `TIDINGS_TEST_BACKEND=postgres` (with
//! `TIDINGS_TEST_POSTGRES_URL`, an admin URL of a PostgreSQL cluster; `scripts/test` starts
//! one) gives every test a fresh database on that cluster instead of a SQLite file.
//! [`TestStore`] is that per-test store, for servers in this process and for the real binary
//! (see [`TestStore::args`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tidings::server::{RunningServer, ServerConfig, StoreLocation};
use tidings_domain::webhook::RetrySchedule;
use tidings_domain::{OrgId, Scope};
use tidings_store::sqlite::IndexTail;
use tidings_store::{Clock, ManualClock, SqliteStore, Store, SystemClock};

/// The store the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store (the default).
    Embedded,
    /// A PostgreSQL database per test, on the cluster at `TIDINGS_TEST_POSTGRES_URL`.
    Postgres,
}

/// The backend chosen by `TIDINGS_TEST_BACKEND` (`embedded`, the default, or `postgres`).
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var("TIDINGS_TEST_BACKEND").as_deref() {
        Err(_) | Ok("" | "embedded" | "sqlite") => Backend::Embedded,
        Ok("postgres" | "postgresql") => Backend::Postgres,
        Ok(other) => panic!("TIDINGS_TEST_BACKEND={other}: expected `embedded` or `postgres`"),
    })
}

/// For a test that only means something on one backend: true, with a note on stderr, when
/// the suite runs on the other (the caller then returns).
pub fn skip_unless(wanted: Backend, why: &str) -> bool {
    if backend() == wanted {
        return false;
    }
    eprintln!("skipped on {:?}: {why}", backend());
    true
}

/// The admin URL of the test cluster; panics with directions when it is missing.
pub fn admin_url() -> String {
    match std::env::var("TIDINGS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "TIDINGS_TEST_BACKEND=postgres needs TIDINGS_TEST_POSTGRES_URL, the admin URL of a \
             PostgreSQL cluster (postgres://postgres@127.0.0.1:PORT/postgres); ./scripts/test \
             starts a throwaway one and sets both"
        ),
    }
}

/// Runs `f` on a connection to `url`. The synchronous `postgres` client runs a runtime of
/// its own, which cannot be started (or dropped) on an async runtime's thread: so this
/// runs on a thread of its own.
pub fn with_postgres<T: Send>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| {
                panic!("cannot connect to the test PostgreSQL at {url} (is it running?): {e:?}")
            });
            f(&mut client)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or_default();
        let mut out = format!("{scheme}://{authority}/{database}");
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        // key=value form: a later dbname wins.
        format!("{url} dbname={database}")
    }
}

/// A database of its own for one test, dropped (with its connections) when this is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub fn create() -> Self {
        let admin = admin_url();
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let name = format!(
            "tidings_test_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        with_postgres(&admin, |c| {
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"))
        });
        let url = with_database(&admin, &name);
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Ok(admin) = std::env::var("TIDINGS_TEST_POSTGRES_URL") else {
            return;
        };
        let name = self.name.clone();
        // Best effort, and never a second panic while a failing test unwinds.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        })
        .join();
    }
}

/// One test's store: a temporary directory (the SQLite store, or files the test writes)
/// and, on PostgreSQL, a fresh database.
pub struct TestStore {
    pub database: Option<TestDatabase>,
    pub dir: TempDir,
}

impl TestStore {
    /// A fresh, empty store on the suite's backend.
    pub fn new() -> Self {
        let database = match backend() {
            Backend::Embedded => None,
            Backend::Postgres => Some(TestDatabase::create()),
        };
        Self {
            database,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn location(&self) -> StoreLocation {
        match &self.database {
            Some(db) => StoreLocation::Postgres(db.url.clone()),
            None => StoreLocation::Embedded(self.dir.path().to_path_buf()),
        }
    }

    /// The command-line arguments that point `tidings` at this store: `--data-dir DIR` or
    /// `--database-url URL`.
    pub fn args(&self) -> Vec<String> {
        match &self.database {
            Some(db) => vec!["--database-url".into(), db.url.clone()],
            None => vec!["--data-dir".into(), self.path_str().into()],
        }
    }

    /// The temporary directory (always there, on either backend).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    /// Opens the store in this process. The embedded store indexes events in fives, and
    /// not when idle (instead of thousands, or after 50 ms without writes): a test's
    /// queries then read most of its events through the index tables and the newest from
    /// the index tail, both parts.
    pub fn open(&self, clock: Arc<dyn Clock>) -> Arc<dyn Store> {
        match &self.database {
            Some(_) => self.location().open_blocking(clock).expect("open store"),
            None => {
                let tail = IndexTail {
                    events: 5,
                    idle: None,
                };
                Arc::new(SqliteStore::open_with(self.path(), clock, tail).expect("open store"))
            }
        }
    }

    /// Runs `f` on a connection to this test's PostgreSQL database (panics on SQLite).
    pub fn postgres<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        let db = self
            .database
            .as_ref()
            .expect("a PostgreSQL test database (TIDINGS_TEST_BACKEND=postgres)");
        with_postgres(&db.url, f)
    }
}

pub struct TestApp {
    pub public: String,
    pub ingest: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub clock: Arc<ManualClock>,
    _server: RunningServer,
    ingest_key: String,
    /// Last: the database is dropped after the server and store above.
    pub data: TestStore,
}

/// The instant every test store starts at.
pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 14, 8, 0, 0)
        .single()
        .expect("valid date")
}

/// How a test server differs from the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// The wall clock instead of the manual one (webhook tests need real time to pass).
    pub real_clock: bool,
    pub allow_private_webhooks: bool,
    pub retry_schedule: &'static str,
    /// The server's default per-key limit: high, so tests that walk many pages are not
    /// throttled; rate-limit tests give their keys their own limits.
    pub rate_limit: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            real_clock: false,
            allow_private_webhooks: false,
            retry_schedule: "5s,5m,30m,2h,5h,10h,10h",
            rate_limit: 1_000_000,
        }
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// For webhook tests: real clock, local receivers allowed, a fast retry schedule.
    pub async fn spawn_for_webhooks(retry_schedule: &'static str) -> Self {
        Self::spawn_with(Options {
            real_clock: true,
            allow_private_webhooks: true,
            retry_schedule,
            ..Options::default()
        })
        .await
    }

    pub async fn spawn_with(options: Options) -> Self {
        let data = TestStore::new();
        let clock = Arc::new(ManualClock::new(start_time()));
        let store_clock: Arc<dyn Clock> = if options.real_clock {
            Arc::new(SystemClock)
        } else {
            clock.clone()
        };
        let store = data.open(Arc::clone(&store_clock));
        let config = ServerConfig {
            allow_private_webhooks: options.allow_private_webhooks,
            retry_schedule: RetrySchedule::parse(options.retry_schedule).expect("schedule"),
            rate_limit: options.rate_limit,
            rate_limit_burst: options.rate_limit.saturating_mul(2),
            ..ServerConfig::new("127.0.0.1:0", "127.0.0.1:0", data.location())
        };
        let server = RunningServer::with_store(&config, Arc::clone(&store), store_clock)
            .await
            .expect("start server");
        let (_, ingest_key) = tidings::keys::create(
            store.as_ref(),
            None,
            vec![Scope::EventsIngest, Scope::EventsRead],
            None,
            None,
        )
        .await
        .expect("ingest key");
        Self {
            public: format!("http://{}", server.public_addr),
            ingest: format!("http://{}", server.ingest_addr),
            client: reqwest::Client::builder()
                .user_agent("tidings-tests")
                .build()
                .expect("client"),
            store,
            clock,
            _server: server,
            ingest_key,
            data,
        }
    }

    /// An organization key with the given scopes.
    pub async fn org_key(&self, org: &str, scopes: &[Scope]) -> String {
        let org: OrgId = org.parse().expect("org id");
        tidings::keys::create(self.store.as_ref(), Some(org), scopes.to_vec(), None, None)
            .await
            .expect("create key")
            .1
    }

    /// An organization key with its own rate limit (requests per second; burst twice that).
    pub async fn limited_key(&self, org: &str, scopes: &[Scope], rate: u32) -> String {
        let org: OrgId = org.parse().expect("org id");
        tidings::keys::create(
            self.store.as_ref(),
            Some(org),
            scopes.to_vec(),
            None,
            Some(rate),
        )
        .await
        .expect("create key")
        .1
    }

    /// A platform key (any organization) with the given scopes.
    pub async fn platform_key(&self, scopes: &[Scope]) -> String {
        tidings::keys::create(self.store.as_ref(), None, scopes.to_vec(), None, None)
            .await
            .expect("create key")
            .1
    }

    pub fn ingest_key(&self) -> &str {
        &self.ingest_key
    }

    /// POSTs a raw body to the ingest port.
    pub async fn ingest_raw(
        &self,
        key: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/internal/v1/events", self.ingest))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("ingest request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Ingests a batch that must succeed; returns the recorded events.
    pub async fn ingest(&self, events: &[Value]) -> Vec<Value> {
        let (status, body) = self
            .ingest_raw(
                &self.ingest_key,
                "application/json",
                json!({ "events": events }).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "ingest failed: {body}");
        body["data"].as_array().expect("data array").clone()
    }

    /// A request with a JSON body on the public API; returns status and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.public, path))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// GET on the public API; returns status and JSON body.
    pub async fn get(&self, key: &str, path_and_query: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{}", self.public, path_and_query))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET request");
        let status = response.status();
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "every response is JSON"
        );
        assert!(
            response.headers().contains_key("x-request-id"),
            "every response has a request id"
        );
        (status, response.json().await.expect("JSON body"))
    }

    /// Walks every page of a list query; returns the items in the order served.
    pub async fn walk(&self, key: &str, path_and_query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let url = match &cursor {
                Some(c) => format!("{path_and_query}&cursor={c}"),
                None => path_and_query.to_string(),
            };
            let (status, body) = self.get(key, &url).await;
            assert_eq!(status, StatusCode::OK, "{url}: {body}");
            items.extend(body["data"].as_array().expect("data").iter().cloned());
            let has_more = body["meta"]["has_more"].as_bool().expect("has_more");
            cursor = body["meta"]["cursor"].as_str().map(str::to_string);
            assert_eq!(
                has_more,
                cursor.is_some(),
                "cursor is null exactly on the last page"
            );
            if !has_more {
                return items;
            }
        }
        panic!("pagination did not end");
    }
}

/// A valid event for `org`, with overrides merged in.
pub fn event(org: &str, overrides: Value) -> Value {
    let mut e = json!({
        "type": "service_line.activated",
        "organization_id": org,
        "workspace_id": null,
        "actor": {"type": "user", "id": "USR-26-000044"},
        "subject": {"type": "service_line", "id": "LIN-26-084729"},
        "payload": {"previous_status": "draft", "new_status": "active"}
    });
    if let (Some(base), Some(extra)) = (e.as_object_mut(), overrides.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    e
}

/// Asserts the §7 error shape and returns the error object.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    error_type: &str,
) -> Value {
    assert_eq!(status, expected, "{body}");
    let error = &body["error"];
    assert_eq!(error["type"], error_type, "{body}");
    assert!(error["code"].is_string(), "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.len() > 10),
        "an actionable message: {body}"
    );
    assert!(
        error["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "{body}"
    );
    error.clone()
}
