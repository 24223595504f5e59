//! `tidings bench`: one run that measures a store end to end, through real HTTP: the embedded
//! one, or PostgreSQL with `--database-url`.
//!
//! What it measures, and why:
//! - **Ingest** through the ingest API of an in-process server on a fresh temporary store,
//!   with ephemeral ports. Each `201` means the batch is committed and fsynced, so this is
//!   the durable rate a producer sees. Three scenarios: one event per request from many
//!   producers (group commit must fold them into shared fsyncs), batches of 100 and batches
//!   of 1,000. The batch-1,000 scenario loads `--events` events, and that store is the one
//!   queried afterwards, so the figure is the rate sustained while the store grows to its
//!   full size. Events come from [`EventGenerator`] (100 organizations by default, skewed);
//!   request bodies are generated before the clock runs, in chunks so that they do not
//!   dominate memory, and only the sending is timed. Each producer holds one keep-alive
//!   HTTP/1.1 connection and sends one request at a time on it, with hyper's client
//!   connection: the producers run on the same cores as the server, so their own cost per
//!   request is kept low (`reqwest` cost about 27 µs of CPU per request against 15 µs,
//!   and single events ran about a sixth slower with it; BENCHMARKS.md).
//! - **A raw SQLite baseline** in the same run: the same rows as the batch-1,000 scenario,
//!   inserted into a fresh file with the store's own schema and settings (WAL,
//!   `synchronous=FULL`, every index), 10,000 rows per transaction, with no HTTP and no
//!   validation. The ratio of the two says how much the layers above SQLite cost.
//! - **Query latency** of `GET /v1/events` over real HTTP, for each query shape the seed
//!   document uses, one request at a time with an organization read key.
//! - **Footprint**: bytes on disk per event (database plus WAL file) and the peak resident
//!   memory of the whole process (server, client and pre-generated bodies together).
//! - **Webhook delivery** (issue 6), last, on fresh stores of servers that may deliver to
//!   127.0.0.1, to real HTTP endpoints inside the bench process (axum, one listener per
//!   endpoint, answering the verification challenge and then 200 at once). Events are
//!   ingested through the ingest API, all in the seed organization, and every webhook is
//!   subscribed to `*` there. The receiver notes when each (endpoint, `webhook-id`) first
//!   arrived; latency runs from the `201` of the event's batch to that moment, and a run
//!   lasts from the first ingest request to the last delivery. Four runs: one endpoint
//!   with ingest as fast as it goes (deliveries per second); the same endpoint with ingest
//!   paced at a steady rate (latency); `--fanout-endpoints` endpoints, all healthy; and
//!   the same with one of them dead (it passes verification, then holds every delivery
//!   past the 15 s timeout), measuring the healthy ones only. Every expected delivery is
//!   checked to arrive exactly once: missing, duplicate and stray deliveries are counted,
//!   and a run waits at most `--delivery-deadline` for its deliveries.
//!
//! With `--database-url` (an admin URL of a PostgreSQL server), the store scenarios (ingest,
//! queries, footprint) run on the PostgreSQL store instead, each on a fresh database made
//! for it (`tidings_bench_<scenario>_<random>`, dropped afterwards), and the baseline is raw
//! PostgreSQL: the same rows inserted into a fresh database with the store's schema and
//! partitions, one multi-row `INSERT … SELECT FROM unnest(…)` per 10,000 rows, with no HTTP,
//! no validation, no idempotency table and no audit. The footprint is then
//! `pg_database_size` of the scenario's database (its WAL is shared by the whole server, so
//! `wal_bytes` is 0). The delivery scenarios also run on PostgreSQL, a database each.
//!
//! Progress goes to stderr; the results go to stdout as a table, or as JSON with `--json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::{Path as AxumPath, State};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidings_domain::{Catalog, IngestFormat, NewEvent, OrgId, Scope, parse_ingest_body};
use tidings_store::postgres::RawPostgresBaseline;
use tidings_store::sqlite::{DATABASE_FILE, RawSqliteBaseline};
use tokio::task::{JoinHandle, JoinSet};

use crate::demo::{EventGenerator, SEED_ORG, SEED_SERVICE_LINE, SEED_WORKSPACE};
use crate::server::{RunningServer, ServerConfig, StoreLocation};

/// Requests' bodies are generated this many events at a time, between timed windows.
const CHUNK_EVENTS: u64 = 100_000;
/// Rows per transaction of the raw SQLite and PostgreSQL baselines.
const BASELINE_ROWS_PER_TRANSACTION: usize = 10_000;
/// Untimed requests per query shape, to warm caches and connections.
const QUERY_WARMUP: usize = 5;
/// How often progress is printed during long phases.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// `tidings bench` flags. The defaults are the routine run; shrink them for a smoke run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Events loaded with batches of 1,000 into the store that is then queried (the
    /// batch-1,000 ingest scenario); the raw SQLite baseline inserts the same rows.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Events sent one per request.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub single_events: u64,
    /// Concurrent producers sending one event per request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub single_producers: u64,
    /// Events sent in batches of 100.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_100_events: u64,
    /// Concurrent producers sending batches of 100 and of 1,000.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_producers: u64,
    /// Timed requests per query shape.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub query_samples: u64,
    /// Cursors followed before timing the deep-page query.
    #[arg(long, default_value_t = 20)]
    pub deep_pages: u64,
    /// `limit` of every timed query (1-100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub page_limit: u32,
    /// Organizations the generated events are spread over (skewed: the first is busiest).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub orgs: u64,
    /// Seed of the event generator; the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Events ingested (batches of 100, `--batch-producers` producers) as fast as the server
    /// takes them, each delivered to one healthy webhook: the delivery throughput scenario.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub delivery_events: u64,
    /// Target ingest rate of the steady-rate latency scenario (events per second).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub paced_rate: u64,
    /// Events per request in the steady-rate scenario (10 at 1,000/s: a request every 10 ms).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub paced_batch: u64,
    /// How long the steady-rate scenario ingests, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub paced_seconds: f64,
    /// Webhooks of the fan-out scenarios (all healthy, then one of them dead).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=1_000))]
    pub fanout_endpoints: u64,
    /// Events ingested in each fan-out run; each goes to every endpoint.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub fanout_events: u64,
    /// Events recorded before the fan-out runs' healthy webhooks exist: the dead endpoint
    /// (subscribed already) owes them all, as one that has been down for a while would.
    /// The all-healthy run records them too, with no webhook, so that both stores match.
    #[arg(long, default_value_t = 20_000)]
    pub dead_backlog: u64,
    /// Longest wait, in seconds after the last ingest, for a scenario's deliveries; what
    /// has not arrived by then is reported as missing.
    #[arg(long, default_value_t = 120.0)]
    pub delivery_deadline: f64,
    /// Run only the webhook delivery scenarios (skip ingest, baseline and queries).
    #[arg(long)]
    pub delivery_only: bool,
    /// Run every scenario on PostgreSQL: an admin URL (e.g.
    /// `postgres://postgres@127.0.0.1:5432/postgres`) of a server where the bench may create
    /// and drop a scratch database per scenario.
    #[arg(long, env = "TIDINGS_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the temporary stores are created (and removed afterwards). Defaults to the
    /// system's temporary directory; put it on the disk you mean to measure.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub settings: Settings,
    /// Empty with `--delivery-only`, like `query`; `baseline`, `batch_1000_to_baseline` and
    /// `storage` are then `null`.
    pub ingest: Vec<IngestResult>,
    pub baseline: Option<BaselineResult>,
    /// Events/s of the batch-1,000 scenario divided by the baseline's.
    pub batch_1000_to_baseline: Option<f64>,
    pub query: Vec<QueryResult>,
    /// Peak resident memory of the bench process while the loaded store answered the
    /// queries (VmHWM, reset before them): the server, its store and the bench's client.
    pub query_peak_memory_bytes: Option<u64>,
    pub storage: Option<StorageResult>,
    pub delivery: DeliveryReport,
    /// Peak resident memory of the bench process (VmHWM), when the platform reports it.
    pub peak_memory_bytes: Option<u64>,
}

/// The store scenarios: ingest, the baseline, queries and the footprint.
struct StoreFigures {
    ingest: Vec<IngestResult>,
    baseline: BaselineResult,
    batch_1000_to_baseline: f64,
    query: Vec<QueryResult>,
    /// VmHWM before the queries (their reset clears it).
    peak_before_queries: Option<u64>,
    query_peak_memory_bytes: Option<u64>,
    storage: StorageResult,
}

/// The webhook delivery scenarios (issue 6).
#[derive(Debug, Serialize)]
pub struct DeliveryReport {
    /// One healthy endpoint, events ingested as fast as the server takes them.
    pub throughput: DeliveryResult,
    /// One healthy endpoint, events ingested at a steady rate.
    pub paced: DeliveryResult,
    /// Every endpoint healthy.
    pub fanout_healthy: DeliveryResult,
    /// The same with one endpoint that never answers; figures of the healthy ones only.
    pub fanout_one_dead: DeliveryResult,
    /// `1 - fanout_one_dead / fanout_healthy` deliveries per second: the share of their
    /// delivery rate the healthy endpoints lose to one dead endpoint (negative: none).
    pub dead_endpoint_cost: f64,
    /// Peak resident memory during the delivery scenarios (VmHWM, reset before them
    /// through `/proc/self/clear_refs`); `None` when the reset is not possible.
    pub peak_memory_bytes: Option<u64>,
}

/// One delivery scenario's figures. Latencies run from the moment the `201` of an event's
/// ingest request arrived to the moment the receiver got the event's first delivery.
#[derive(Debug, Serialize)]
pub struct DeliveryResult {
    /// `throughput`, `paced`, `fanout_healthy` or `fanout_one_dead`.
    pub scenario: String,
    /// Healthy endpoints measured (one webhook each).
    pub endpoints: u64,
    /// Endpoints that never answer (not measured).
    pub dead_endpoints: u64,
    /// Deliveries the dead endpoint owed before the run (`--dead-backlog` events); 0 with
    /// no dead endpoint.
    pub dead_backlog: u64,
    pub events: u64,
    /// Events per ingest request (the largest request, when there were fewer events).
    pub batch_size: u64,
    /// Target ingest rate (events/s) of a paced scenario; `None` when ingest is unpaced.
    pub target_events_per_second: Option<f64>,
    /// Rate at which the ingest API took the events (first request sent to last `201`).
    pub ingest_events_per_second: f64,
    /// `events × endpoints`.
    pub expected: u64,
    /// Distinct (endpoint, event) pairs received.
    pub delivered: u64,
    pub missing: u64,
    /// Deliveries of a pair received before, counted beyond the first.
    pub duplicates: u64,
    /// Deliveries of events that this scenario did not ingest.
    pub unexpected: u64,
    /// Deliveries that arrived before their batch's `201` (their latency counts as 0).
    pub before_ack: u64,
    /// Whether the deadline passed before every expected delivery arrived.
    pub timed_out: bool,
    /// From the first ingest request to the last delivery received.
    pub seconds: f64,
    /// `delivered / seconds`.
    pub deliveries_per_second: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    /// The store every scenario ran on: `sqlite` or `postgres`.
    pub store: String,
    pub seed: u64,
    pub organizations: u64,
    pub cpus: usize,
    pub store_events: u64,
    pub page_limit: u32,
    pub query_samples: u64,
}

#[derive(Debug, Serialize)]
pub struct IngestResult {
    /// `batch_1`, `batch_100` or `batch_1000`.
    pub scenario: String,
    pub batch_size: u64,
    pub producers: u64,
    pub events: u64,
    pub requests: u64,
    /// Time spent sending (body generation excluded).
    pub seconds: f64,
    pub events_per_second: f64,
    /// Per request, from sending to the last byte of the 201.
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct BaselineResult {
    pub events: u64,
    pub rows_per_transaction: usize,
    pub seconds: f64,
    pub events_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct QueryResult {
    pub shape: String,
    pub description: String,
    /// The request's query string (the deep page's cursor elided).
    pub query: String,
    pub samples: u64,
    /// Events in one response.
    pub rows: usize,
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct StorageResult {
    pub events: u64,
    /// Database plus WAL file of the store after the batch-1,000 load (on PostgreSQL:
    /// `pg_database_size` of its database).
    pub bytes: u64,
    pub bytes_per_event: f64,
    /// The WAL file's share of `bytes` (it keeps its largest size once checkpointed); 0 on
    /// PostgreSQL, whose WAL is shared by every database of the server.
    pub wal_bytes: u64,
    /// The database's own size, wherever its newest pages are (`page_count` times the page
    /// size; on PostgreSQL the same as `bytes`). Unlike the database file's size it does
    /// not depend on how much of the WAL was copied back when the sizes were taken.
    pub data_bytes: u64,
    pub data_bytes_per_event: f64,
    /// The same for the baseline's files.
    pub baseline_bytes: u64,
    pub baseline_bytes_per_event: f64,
    pub baseline_wal_bytes: u64,
    pub baseline_data_bytes_per_event: f64,
}

/// Sizes of a SQLite database's files.
#[derive(Debug, Clone, Copy)]
struct FileSizes {
    database: u64,
    wal: u64,
    /// The database's pages in use, in the file or only in the WAL yet.
    data: u64,
}

impl FileSizes {
    fn total(self) -> u64 {
        self.database + self.wal
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        // Nearest rank: the smallest sample with at least p of the samples at or below it.
        let rank = |p: f64| {
            let n = samples.len() as f64;
            samples.get(((p * n).ceil() as usize).saturating_sub(1))
        };
        Self {
            p50: ms(rank(0.50)),
            p99: ms(rank(0.99)),
            max: ms(samples.last()),
        }
    }
}

/// Runs every measurement and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}

/// Runs every measurement, in temporary stores that are removed afterwards.
pub async fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("tidings-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    eprintln!("bench: temporary stores in {}", work.path().display());
    if args.database_url.is_some() {
        eprintln!("bench: every scenario on PostgreSQL, in scratch databases");
    }

    let store = if args.delivery_only {
        None
    } else {
        Some(store_scenarios(work.path(), args).await?)
    };
    // The delivery scenarios run last: attempts to their dead endpoint may still be
    // waiting for their timeout when they finish, and must not disturb another scenario.
    let peak_before_delivery = peak_memory_bytes();
    let delivery = delivery_scenarios(work.path(), args).await?;
    let peaks_before_queries = store
        .as_ref()
        .map(|f| [f.peak_before_queries, f.query_peak_memory_bytes]);
    let peak_memory_bytes = [peak_before_delivery, delivery.peak_memory_bytes]
        .into_iter()
        .chain(peaks_before_queries.into_iter().flatten())
        .flatten()
        .max();
    let (ingest, baseline, batch_1000_to_baseline, query, query_peak_memory_bytes, storage) =
        match store {
            Some(f) => (
                f.ingest,
                Some(f.baseline),
                Some(f.batch_1000_to_baseline),
                f.query,
                f.query_peak_memory_bytes,
                Some(f.storage),
            ),
            None => (Vec::new(), None, None, Vec::new(), None, None),
        };
    Ok(BenchReport {
        settings: Settings {
            store: if args.database_url.is_some() {
                "postgres"
            } else {
                "sqlite"
            }
            .into(),
            seed: args.seed,
            organizations: args.orgs,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            store_events: args.events,
            page_limit: args.page_limit,
            query_samples: args.query_samples,
        },
        ingest,
        baseline,
        batch_1000_to_baseline,
        query,
        query_peak_memory_bytes,
        storage,
        delivery,
        peak_memory_bytes,
    })
}

/// Ingest scenarios, the baseline and the queries, each on a fresh store: under `work`, or
/// in a scratch database of `--database-url` (all of them dropped afterwards, whatever the
/// outcome).
async fn store_scenarios(work: &Path, args: &BenchArgs) -> anyhow::Result<StoreFigures> {
    let mut stores = FreshStores::new(work, args);
    let figures = store_scenarios_in(args, &mut stores).await;
    stores.drop_all().await;
    figures
}

async fn store_scenarios_in(
    args: &BenchArgs,
    stores: &mut FreshStores<'_>,
) -> anyhow::Result<StoreFigures> {
    let mut ingest = Vec::new();
    let (result, server) = ingest_scenario(
        stores.location("batch_1").await?,
        1,
        args.single_producers,
        args.single_events,
        args,
    )
    .await?;
    server.shutdown().await;
    ingest.push(result);

    let (result, server) = ingest_scenario(
        stores.location("batch_100").await?,
        100,
        args.batch_producers,
        args.batch_100_events,
        args,
    )
    .await?;
    server.shutdown().await;
    ingest.push(result);

    let query_store = stores.location("batch_1000").await?;
    let baseline_location = stores.location("baseline").await?;
    let load_started = Utc::now();
    let (result, server) = ingest_scenario(
        query_store.clone(),
        1000,
        args.batch_producers,
        args.events,
        args,
    )
    .await?;
    let load_finished = Utc::now();
    let batch_1000_rate = result.events_per_second;
    ingest.push(result);
    let sizes = match &query_store {
        StoreLocation::Embedded(dir) => file_sizes(&dir.join(DATABASE_FILE))?,
        // pg_database_size of the scenario's database. PostgreSQL's WAL is shared by every
        // database of the server, so none of it is counted: wal_bytes is 0.
        StoreLocation::Postgres(_) => {
            let database = server
                .store
                .size_bytes()
                .await
                .context("reading the store's size")?;
            FileSizes {
                database,
                wal: 0,
                data: database,
            }
        }
    };

    if let StoreLocation::Postgres(url) = &query_store {
        // Fresh partitions have no planner statistics until autovacuum's next pass; the
        // queries are measured as a running database answers them.
        let url = url.clone();
        tokio::task::spawn_blocking(move || tidings_store::postgres::analyze(&url))
            .await
            .context("the ANALYZE thread failed")??;
    }
    // Peak memory while querying (issue 6: "RSS under 300 MiB while querying a 10M
    // store"): the peak so far is kept, then VmHWM is reset for the queries alone.
    let peak_before_queries = peak_memory_bytes();
    let peak_reset = reset_peak_memory();
    let query = query_shapes(&server, args, load_started, load_finished).await?;
    let query_peak_memory_bytes = if peak_reset {
        peak_memory_bytes()
    } else {
        None
    };
    server.shutdown().await;

    let (baseline, baseline_sizes) = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || match baseline_location {
            StoreLocation::Embedded(dir) => raw_sqlite_baseline(&dir.join(DATABASE_FILE), &args),
            StoreLocation::Postgres(url) => raw_postgres_baseline(&url, &args),
        })
        .await
        .context("the baseline thread failed")??
    };

    let per_event = |bytes: u64| bytes as f64 / args.events as f64;
    Ok(StoreFigures {
        batch_1000_to_baseline: batch_1000_rate / baseline.events_per_second,
        ingest,
        baseline,
        query,
        peak_before_queries,
        query_peak_memory_bytes,
        storage: StorageResult {
            events: args.events,
            bytes: sizes.total(),
            bytes_per_event: per_event(sizes.total()),
            wal_bytes: sizes.wal,
            data_bytes: sizes.data,
            data_bytes_per_event: per_event(sizes.data),
            baseline_bytes: baseline_sizes.total(),
            baseline_bytes_per_event: per_event(baseline_sizes.total()),
            baseline_wal_bytes: baseline_sizes.wal,
            baseline_data_bytes_per_event: per_event(baseline_sizes.data),
        },
    })
}

/// Scratch databases of the store scenarios on a PostgreSQL server, made through its admin
/// URL. The sync driver runs on blocking threads only (its clients block on a runtime of
/// their own, also when dropped).
/// Where the scenarios' fresh stores go: directories under `work`, or scratch databases on
/// the server of `--database-url`.
struct FreshStores<'a> {
    work: &'a Path,
    scratch: Option<ScratchDatabases>,
}

impl<'a> FreshStores<'a> {
    fn new(work: &'a Path, args: &BenchArgs) -> Self {
        Self {
            work,
            scratch: args.database_url.clone().map(ScratchDatabases::new),
        }
    }

    /// A fresh store for scenario `name`.
    async fn location(&mut self, name: &str) -> anyhow::Result<StoreLocation> {
        Ok(match &mut self.scratch {
            Some(s) => StoreLocation::Postgres(s.create(name).await?),
            None => StoreLocation::Embedded(self.work.join(name.replace('_', "-"))),
        })
    }

    /// Drops the scratch databases, if any (the directories go with `work`).
    async fn drop_all(self) {
        if let Some(scratch) = self.scratch {
            scratch.drop_all().await;
        }
    }
}

struct ScratchDatabases {
    admin_url: String,
    created: Vec<String>,
}

impl ScratchDatabases {
    fn new(admin_url: String) -> Self {
        Self {
            admin_url,
            created: Vec::new(),
        }
    }

    /// Creates `tidings_bench_<scenario>_<random>` and returns its URL.
    async fn create(&mut self, scenario: &str) -> anyhow::Result<String> {
        let name = format!("tidings_bench_{scenario}_{:08x}", rand::random::<u32>());
        let url = database_url(&self.admin_url, &name)?;
        let (admin_url, db) = (self.admin_url.clone(), name.clone());
        tokio::task::spawn_blocking(move || {
            tidings_store::postgres::create_database(&admin_url, &db)
        })
        .await
        .context("the database thread failed")?
        .with_context(|| format!("creating the scratch database {name}"))?;
        self.created.push(name);
        Ok(url)
    }

    /// Drops every database made, ending leftover sessions; failures are only reported.
    async fn drop_all(self) {
        let Self { admin_url, created } = self;
        let dropped = tokio::task::spawn_blocking(move || {
            for name in created {
                if let Err(e) = tidings_store::postgres::drop_database(&admin_url, &name) {
                    eprintln!("bench: could not drop the scratch database {name}: {e}");
                }
            }
        })
        .await;
        if dropped.is_err() {
            eprintln!("bench: the thread dropping the scratch databases failed");
        }
    }
}

/// The URL of database `name` on the server of `admin_url` (a URL or key=value string).
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    if admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://") {
        let mut url = Url::parse(admin_url).context("--database-url is not a valid URL")?;
        url.set_path(&format!("/{name}"));
        Ok(url.to_string())
    } else {
        Ok(format!("{admin_url} dbname={name}"))
    }
}

/// One request body and the number of events in it.
struct Batch {
    body: Bytes,
    events: u64,
}

/// Starts a server on the fresh store at `location`, sends `events` events in requests of
/// `batch_size` from `producers` concurrent producers, and returns the figures with the
/// server still running.
async fn ingest_scenario(
    location: StoreLocation,
    batch_size: u64,
    producers: u64,
    events: u64,
    args: &BenchArgs,
) -> anyhow::Result<(IngestResult, RunningServer)> {
    let label = format!("batch {batch_size}");
    eprintln!(
        "bench: ingest, {label}, {producers} producers, {} events",
        grouped(events)
    );
    let server = start_server(location).await?;
    let key = producer_key(&server).await?;
    let mut connections = Vec::with_capacity(producers as usize);
    for _ in 0..producers {
        connections.push(ProducerConnection::open(server.ingest_addr, &key).await?);
    }
    let mut generator = EventGenerator::new(args.seed, args.orgs as usize);
    let progress = Progress::start(label, events, "events");
    let chunk = (CHUNK_EVENTS / batch_size).max(1) * batch_size;
    let mut sent = 0;
    let mut requests = 0;
    let mut sending = Duration::ZERO;
    let mut latencies = Vec::new();
    while sent < events {
        let n = chunk.min(events - sent);
        let batches = generate_batches(&mut generator, n, batch_size)?;
        requests += batches.len() as u64;
        let started = Instant::now();
        let (chunk_latencies, back) =
            send_concurrently(connections, batches, &progress.done).await?;
        sending += started.elapsed();
        connections = back;
        latencies.extend(chunk_latencies);
        sent += n;
    }
    drop(progress);
    let seconds = sending.as_secs_f64();
    let result = IngestResult {
        scenario: format!("batch_{batch_size}"),
        batch_size,
        producers,
        events,
        requests,
        seconds,
        events_per_second: events as f64 / seconds,
        latency_ms: Latency::of(&mut latencies),
    };
    eprintln!(
        "bench:   {} events/s, p99 {:.2} ms",
        grouped(result.events_per_second as u64),
        result.latency_ms.p99
    );
    Ok((result, server))
}

/// A platform key for the bench's producers.
async fn producer_key(server: &RunningServer) -> anyhow::Result<String> {
    let (_, secret) = crate::keys::create(
        server.store.as_ref(),
        None,
        vec![Scope::EventsIngest],
        Some("bench producer".into()),
        None,
    )
    .await?;
    Ok(secret)
}

async fn start_server(location: StoreLocation) -> anyhow::Result<RunningServer> {
    let config = ServerConfig::new("127.0.0.1:0", "127.0.0.1:0", location);
    RunningServer::start(&config).await
}

/// `events` generated events as request bodies of `batch_size` events: a bare event for a
/// batch of one, `{"events": [...]}` otherwise.
fn generate_batches(
    generator: &mut EventGenerator,
    events: u64,
    batch_size: u64,
) -> anyhow::Result<Vec<Batch>> {
    let mut batches = Vec::new();
    let mut left = events;
    while left > 0 {
        let n = batch_size.min(left);
        let body = if batch_size == 1 {
            serde_json::to_vec(&generator.next_event())
        } else {
            let events: Vec<Value> = (0..n).map(|_| generator.next_event()).collect();
            serde_json::to_vec(&json!({ "events": events }))
        }
        .context("serializing a request body")?;
        batches.push(Batch {
            body: Bytes::from(body),
            events: n,
        });
        left -= n;
    }
    Ok(batches)
}

/// Sends every batch, one request at a time per producer connection, each producer taking
/// the next unsent batch as soon as its previous one is acknowledged. Returns each request's
/// latency, and the connections for the next chunk.
async fn send_concurrently(
    connections: Vec<ProducerConnection>,
    batches: Vec<Batch>,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<(Vec<Duration>, Vec<ProducerConnection>)> {
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for mut connection in connections {
        let (batches, next, done) = (Arc::clone(&batches), Arc::clone(&next), Arc::clone(done));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                let started = Instant::now();
                connection.ingest(batch.body.clone()).await?;
                latencies.push(started.elapsed());
                done.fetch_add(batch.events, Ordering::Relaxed);
            }
            anyhow::Ok((latencies, connection))
        });
    }
    let mut latencies = Vec::new();
    let mut connections = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (producer_latencies, connection) = joined.context("a producer task failed")??;
        latencies.extend(producer_latencies);
        connections.push(connection);
    }
    Ok((latencies, connections))
}

/// One producer's keep-alive HTTP/1.1 connection to the ingest port, one request at a time,
/// as a platform service posting its events would hold. It is hyper's client connection
/// rather than a `reqwest` client: the producers share the machine's two cores with the
/// server, and `reqwest`'s pool and per-request work cost the server's ingest of single
/// events a measurable share of that CPU (BENCHMARKS.md).
struct ProducerConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    host: header::HeaderValue,
    authorization: header::HeaderValue,
}

impl ProducerConnection {
    async fn open(addr: SocketAddr, key: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the ingest port {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("starting an HTTP/1.1 connection to the ingest port")?;
        // Ends when the sender is dropped or the server closes the connection.
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: header::HeaderValue::from_str(&addr.to_string())
                .context("the ingest address as a Host header")?,
            authorization: header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("the producer key as a header")?,
        })
    }

    /// Posts one request body and reads the answer, failing unless it is 201 Created.
    async fn ingest(&mut self, body: Bytes) -> anyhow::Result<()> {
        use http_body_util::BodyExt;
        let request = axum::http::Request::post("/internal/v1/events")
            .header(header::HOST, self.host.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))
            .context("building an ingest request")?;
        self.sender
            .ready()
            .await
            .context("waiting for the ingest connection")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("sending an ingest request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading an ingest response")?
            .to_bytes();
        if status != StatusCode::CREATED {
            bail!("ingest answered {status}: {}", excerpt(&body));
        }
        Ok(())
    }
}

/// Inserts the batch-1,000 scenario's rows (same generator, same seed) into a fresh file
/// with the store's schema, [`BASELINE_ROWS_PER_TRANSACTION`] rows per transaction. Only
/// the inserts and commits are timed. Returns the figures and the files' sizes.
fn raw_sqlite_baseline(
    file: &Path,
    args: &BenchArgs,
) -> anyhow::Result<(BaselineResult, FileSizes)> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut db = RawSqliteBaseline::create(file)
        .with_context(|| format!("creating the baseline database {}", file.display()))?;
    let result = timed_baseline("SQLite", args, |rows, at| db.insert_transaction(rows, at))?;
    Ok((result, file_sizes(file)?))
}

/// The same into the fresh database at `url`, set up with the store's migrations and
/// partitions, one multi-row insert per transaction. Returns the figures and
/// `pg_database_size` (WAL: 0, see [`StorageResult::wal_bytes`]). Blocking: runs on a
/// blocking thread.
fn raw_postgres_baseline(
    url: &str,
    args: &BenchArgs,
) -> anyhow::Result<(BaselineResult, FileSizes)> {
    let mut db = RawPostgresBaseline::create(url).context("setting up the baseline database")?;
    let result = timed_baseline("PostgreSQL", args, |rows, at| {
        db.insert_transaction(rows, at)
    })?;
    let database = db.size_bytes().context("reading the baseline's size")?;
    let sizes = FileSizes {
        database,
        wal: 0,
        data: database,
    };
    Ok((result, sizes))
}

/// Generates the batch-1,000 scenario's events (untimed) and hands them to `insert`
/// [`BASELINE_ROWS_PER_TRANSACTION`] at a time, timing only `insert`.
fn timed_baseline(
    engine: &str,
    args: &BenchArgs,
    mut insert: impl FnMut(&[NewEvent], i64) -> Result<(), tidings_store::StoreError>,
) -> anyhow::Result<BaselineResult> {
    eprintln!(
        "bench: raw {engine} baseline, {} rows per transaction, {} events",
        grouped(BASELINE_ROWS_PER_TRANSACTION as u64),
        grouped(args.events)
    );
    let catalog = Catalog::builtin();
    let mut generator = EventGenerator::new(args.seed, args.orgs as usize);
    let progress = Progress::start("baseline".into(), args.events, "events");
    let mut inserting = Duration::ZERO;
    let mut left = args.events;
    while left > 0 {
        let n = left.min(BASELINE_ROWS_PER_TRANSACTION as u64);
        let rows = validated_events(&mut generator, n, &catalog)?;
        let started = Instant::now();
        insert(&rows, Utc::now().timestamp()).context("inserting into the baseline database")?;
        inserting += started.elapsed();
        progress.done.fetch_add(n, Ordering::Relaxed);
        left -= n;
    }
    drop(progress);
    let seconds = inserting.as_secs_f64();
    let result = BaselineResult {
        events: args.events,
        rows_per_transaction: BASELINE_ROWS_PER_TRANSACTION,
        seconds,
        events_per_second: args.events as f64 / seconds,
    };
    eprintln!(
        "bench:   {} events/s",
        grouped(result.events_per_second as u64)
    );
    Ok(result)
}

/// `n` generated events, parsed as the ingest port parses them (outside any timing).
fn validated_events(
    generator: &mut EventGenerator,
    n: u64,
    catalog: &Catalog,
) -> anyhow::Result<Vec<NewEvent>> {
    let mut rows = Vec::with_capacity(n as usize);
    let max_batch = tidings_domain::ingest::MAX_BATCH as u64;
    let mut left = n;
    while left > 0 {
        let take = left.min(max_batch);
        let events: Vec<Value> = (0..take).map(|_| generator.next_event()).collect();
        let body = serde_json::to_vec(&json!({ "events": events }))
            .context("serializing generated events")?;
        let parsed = parse_ingest_body(&body, IngestFormat::Json, catalog)
            .map_err(|e| anyhow::anyhow!("generated events do not validate: {e}"))?;
        rows.extend(parsed);
        left -= take;
    }
    Ok(rows)
}

/// The seed document's query shapes, each sampled one request at a time.
async fn query_shapes(
    server: &RunningServer,
    args: &BenchArgs,
    load_started: DateTime<Utc>,
    load_finished: DateTime<Utc>,
) -> anyhow::Result<Vec<QueryResult>> {
    let org: OrgId = SEED_ORG
        .parse()
        .map_err(|e: tidings_domain::IdError| anyhow::anyhow!(e.0))?;
    let (_, key) = crate::keys::create(
        server.store.as_ref(),
        Some(org),
        vec![Scope::EventsRead],
        Some("bench reader".into()),
        // The bench measures latency, not the per-key limit.
        Some(1_000_000),
    )
    .await?;
    let client = reqwest::Client::new();
    let base = format!("http://{}/v1/events", server.public_addr);
    let limit = args.page_limit.to_string();
    let org_and_limit = [("organization_id", SEED_ORG), ("limit", limit.as_str())];
    // The middle half of the load's time span (at least one second), so that the bounds
    // cut through the data rather than enclose all of it.
    let (start, end) = (load_started.timestamp(), load_finished.timestamp());
    let from = start + (end - start) / 4;
    let to = (start + (end - start) * 3 / 4).max(from + 1);
    let rfc3339 = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .with_context(|| format!("timestamp {secs} out of range"))
    };
    let (from, to) = (rfc3339(from)?, rfc3339(to)?);

    let with = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        org_and_limit
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let shape = |name, description: String, params| QueryShape {
        name,
        description,
        params,
    };
    let mut shapes = vec![
        shape("org", "organization only".into(), with(&[])),
        shape(
            "type",
            "organization + type".into(),
            with(&[("type", "service_line.activated")]),
        ),
        shape(
            "subject_id",
            "organization + subject_id".into(),
            with(&[("subject_id", SEED_SERVICE_LINE)]),
        ),
        // A service line with few or no events: the walk finds no full page early, so it
        // probes every epoch of the subject index (the worst case of that layout).
        shape(
            "subject_id_rare",
            "organization + rare subject_id".into(),
            with(&[("subject_id", RARE_SERVICE_LINE)]),
        ),
        shape(
            "workspace_time_range",
            "workspace + from/to".into(),
            vec![
                ("workspace_id".into(), SEED_WORKSPACE.into()),
                ("from".into(), from),
                ("to".into(), to),
                ("limit".into(), limit.clone()),
            ],
        ),
    ];
    let (depth, cursor) = follow_cursors(&client, &key, &base, &with(&[]), args.deep_pages).await?;
    let mut deep = with(&[]);
    if let Some(cursor) = cursor {
        deep.push(("cursor".into(), cursor));
    }
    shapes.push(shape(
        "deep_page",
        format!("organization only, page {} (by cursors)", depth + 1),
        deep,
    ));
    shapes.push(shape(
        "order_asc",
        "organization only, order=asc".into(),
        with(&[("order", "asc")]),
    ));

    let urls = shapes
        .iter()
        .map(|s| Url::parse_with_params(&base, &s.params).context("building a query URL"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sampled = sample_queries(&client, &key, &urls, args.query_samples).await?;
    let mut results = Vec::new();
    for (shape, (latency, rows)) in shapes.into_iter().zip(sampled) {
        let query = shape
            .params
            .iter()
            .map(|(k, v)| match k.as_str() {
                "cursor" => format!("{k}=…"),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("&");
        eprintln!(
            "bench: query {}: p50 {:.2} ms, p99 {:.2} ms, {rows} rows",
            shape.name, latency.p50, latency.p99
        );
        results.push(QueryResult {
            shape: shape.name.to_string(),
            description: shape.description,
            query,
            samples: args.query_samples,
            rows,
            latency_ms: latency,
        });
    }
    Ok(results)
}

/// A service line the generator gives about one event per 10M (ids are drawn from 99,999).
const RARE_SERVICE_LINE: &str = "LIN-26-000001";

/// One kind of `GET /v1/events` request.
struct QueryShape {
    name: &'static str,
    description: String,
    params: Vec<(String, String)>,
}

/// Follows up to `pages` cursors from the first page; returns how many were followed and
/// the last cursor (`None` when the first page was also the last).
async fn follow_cursors(
    client: &reqwest::Client,
    key: &str,
    base: &str,
    params: &[(String, String)],
    pages: u64,
) -> anyhow::Result<(u64, Option<String>)> {
    let mut cursor: Option<String> = None;
    let mut followed = 0;
    while followed < pages {
        let mut params = params.to_vec();
        if let Some(c) = &cursor {
            params.push(("cursor".into(), c.clone()));
        }
        let url = Url::parse_with_params(base, &params).context("building a query URL")?;
        let page = get_page(client, key, url).await?;
        match page["meta"]["cursor"].as_str() {
            Some(next) => {
                cursor = Some(next.to_string());
                followed += 1;
            }
            None => break,
        }
    }
    Ok((followed, cursor))
}

/// Latency of `samples` requests to each URL, one request at a time, after a few untimed
/// ones; and the number of events in each URL's response. The URLs take turns, so that a
/// passing disturbance of the machine spreads over every shape instead of hitting one.
async fn sample_queries(
    client: &reqwest::Client,
    key: &str,
    urls: &[Url],
    samples: u64,
) -> anyhow::Result<Vec<(Latency, usize)>> {
    let mut rows = Vec::with_capacity(urls.len());
    for url in urls {
        let first = get_page(client, key, url.clone()).await?;
        rows.push(first["data"].as_array().map_or(0, Vec::len));
        for _ in 1..QUERY_WARMUP {
            get_page(client, key, url.clone()).await?;
        }
    }
    let mut latencies = vec![Vec::with_capacity(samples as usize); urls.len()];
    eprintln!(
        "bench: query, {} shapes, {samples} samples each",
        urls.len()
    );
    for _ in 0..samples {
        for (url, latencies) in urls.iter().zip(&mut latencies) {
            let started = Instant::now();
            let request = client.get(url.clone()).bearer_auth(key);
            expect_status(request, StatusCode::OK, url.as_str()).await?;
            latencies.push(started.elapsed());
        }
    }
    Ok(latencies
        .iter_mut()
        .map(|l| Latency::of(l))
        .zip(rows)
        .collect())
}

async fn get_page(client: &reqwest::Client, key: &str, url: Url) -> anyhow::Result<Value> {
    let body = expect_status(
        client.get(url.clone()).bearer_auth(key),
        StatusCode::OK,
        url.as_str(),
    )
    .await?;
    serde_json::from_slice(&body).with_context(|| format!("{url} answered with invalid JSON"))
}

// ---------------------------------------------------------------------------------------
// Webhook delivery (issue 6)
// ---------------------------------------------------------------------------------------

/// Events per ingest request in the delivery throughput and fan-out scenarios.
const DELIVERY_BATCH: u64 = 100;
/// How long the dead endpoint holds a delivery before answering: past the sender's 15 s
/// timeout ([`tidings_domain::webhook::ATTEMPT_TIMEOUT`]), so it never answers in time.
const DEAD_ENDPOINT_HOLD: Duration = Duration::from_secs(20);
/// Most paced ingest requests in flight at once; beyond it the pace slips (and the achieved
/// rate in the report shows it) rather than requests piling up without bound.
const PACED_MAX_IN_FLIGHT: usize = 64;
/// How often the bench looks whether the expected deliveries have arrived.
const DELIVERY_POLL: Duration = Duration::from_millis(10);
/// Extra wait after the last expected delivery, so that late duplicates are counted.
const DELIVERY_SETTLE: Duration = Duration::from_millis(250);

/// The delivery scenarios, each on a fresh store (under `work`, or in a scratch database of
/// `--database-url`, dropped afterwards whatever the outcome) with the webhooks pointing at
/// a receiver inside this process. Every generated event belongs to the seed organization,
/// so a webhook subscribed to `*` in it receives every event.
async fn delivery_scenarios(work: &Path, args: &BenchArgs) -> anyhow::Result<DeliveryReport> {
    let mut stores = FreshStores::new(work, args);
    let report = delivery_scenarios_in(args, &mut stores).await;
    stores.drop_all().await;
    report
}

async fn delivery_scenarios_in(
    args: &BenchArgs,
    stores: &mut FreshStores<'_>,
) -> anyhow::Result<DeliveryReport> {
    let peak_reset = reset_peak_memory();
    let deadline = Duration::try_from_secs_f64(args.delivery_deadline)
        .context("--delivery-deadline must be a non-negative number of seconds")?;
    if !(args.paced_seconds > 0.0 && args.paced_seconds.is_finite()) {
        bail!("--paced-seconds must be a positive number");
    }
    let receiver = WebhookReceiver::start(args.fanout_endpoints as u32).await?;

    // One endpoint: throughput, then latency at a steady rate, on the same store.
    let mut rig = DeliveryRig::start(stores.location("delivery").await?, args).await?;
    rig.add_webhook(&receiver.url(0)).await?;
    rig.endpoints = 1;
    let mut generator = EventGenerator::new(args.seed, 1);
    eprintln!(
        "bench: delivery, 1 endpoint, {} events in batches of {DELIVERY_BATCH} from {} producers",
        grouped(args.delivery_events),
        args.batch_producers
    );
    let batches = generate_batches(&mut generator, args.delivery_events, DELIVERY_BATCH)?;
    let ingested = rig
        .ingest_concurrently(batches, args.batch_producers)
        .await?;
    let throughput = rig
        .collect("throughput", &receiver, ingested, None, deadline)
        .await;

    let batches_needed = (args.paced_rate as f64 * args.paced_seconds / args.paced_batch as f64)
        .ceil()
        .max(1.0) as u64;
    let interval = Duration::from_secs_f64(args.paced_batch as f64 / args.paced_rate as f64);
    eprintln!(
        "bench: delivery, 1 endpoint, paced: {} events/s ({} events every {:.1} ms) for {} s",
        grouped(args.paced_rate),
        args.paced_batch,
        interval.as_secs_f64() * 1e3,
        args.paced_seconds
    );
    let batches = generate_batches(
        &mut generator,
        batches_needed * args.paced_batch,
        args.paced_batch,
    )?;
    let ingested = rig.ingest_paced(batches, interval).await?;
    let paced = rig
        .collect(
            "paced",
            &receiver,
            ingested,
            Some(args.paced_rate as f64),
            deadline,
        )
        .await;
    rig.server.shutdown().await;

    // Many endpoints: all healthy, then the same with the first one dead. The healthy run
    // goes first, so that the dead endpoint's attempts (still waiting for their timeout
    // when their run ends) cannot slow it down. Both stores first record the backlog
    // events; in the dead run the dead endpoint is subscribed already and owes them all.
    let mut fanout = Vec::new();
    for dead in [false, true] {
        let name = if dead {
            "fanout_one_dead"
        } else {
            "fanout_healthy"
        };
        let healthy = args.fanout_endpoints as u32 - u32::from(dead);
        eprintln!(
            "bench: delivery, {} endpoints ({}), {} events each",
            args.fanout_endpoints,
            if dead {
                format!(
                    "the first one dead, owing {} backlog events",
                    grouped(args.dead_backlog)
                )
            } else {
                "all healthy".to_string()
            },
            grouped(args.fanout_events)
        );
        let mut rig = DeliveryRig::start(stores.location(name).await?, args).await?;
        let mut generator = EventGenerator::new(args.seed, 1);
        if dead {
            rig.add_webhook(&receiver.dead_url()).await?;
            rig.dead = true;
        }
        if args.dead_backlog > 0 {
            let batches = generate_batches(&mut generator, args.dead_backlog, DELIVERY_BATCH)?;
            rig.ingest_concurrently(batches, args.batch_producers)
                .await?;
            rig.drain_fan_out().await?;
            rig.dead_backlog = args.dead_backlog;
        }
        for n in 0..healthy {
            rig.add_webhook(&receiver.url(n)).await?;
        }
        rig.endpoints = healthy;
        let batches = generate_batches(&mut generator, args.fanout_events, DELIVERY_BATCH)?;
        let ingested = rig
            .ingest_concurrently(batches, args.batch_producers)
            .await?;
        fanout.push(rig.collect(name, &receiver, ingested, None, deadline).await);
        rig.server.shutdown().await;
    }
    let (Some(fanout_one_dead), Some(fanout_healthy)) = (fanout.pop(), fanout.pop()) else {
        bail!("the fan-out runs did not both report");
    };
    let dead_endpoint_cost =
        1.0 - fanout_one_dead.deliveries_per_second / fanout_healthy.deliveries_per_second;
    eprintln!(
        "bench:   a dead endpoint costs the healthy ones {:.1} % of their delivery rate \
         ({} requests reached it)",
        dead_endpoint_cost * 100.0,
        receiver.state.dead_requests.load(Ordering::Relaxed)
    );
    receiver.stop();
    Ok(DeliveryReport {
        throughput,
        paced,
        fanout_healthy,
        fanout_one_dead,
        dead_endpoint_cost,
        peak_memory_bytes: if peak_reset {
            peak_memory_bytes()
        } else {
            None
        },
    })
}

/// A server with webhooks to the bench's receiver, and a producer key for it.
struct DeliveryRig {
    server: RunningServer,
    client: reqwest::Client,
    ingest_url: String,
    ingest_key: String,
    admin_key: String,
    /// Healthy endpoints `0..endpoints` (paths `/hook/{n}`) are measured.
    endpoints: u32,
    /// Whether a webhook to the dead endpoint exists too.
    dead: bool,
    /// Events the dead endpoint owed when the measured run began.
    dead_backlog: u64,
}

/// What one scenario's ingest produced: when it started and ended, and when each event's
/// `201` arrived.
struct Ingested {
    started: Instant,
    finished: Instant,
    /// Events in the largest request.
    batch_size: u64,
    acks: HashMap<String, Instant>,
}

impl DeliveryRig {
    /// Starts a server on a fresh store at `store` that may deliver to 127.0.0.1, with a
    /// producer key and a webhook administrator key for the seed organization. It has no
    /// webhooks yet: see [`DeliveryRig::add_webhook`].
    async fn start(store: StoreLocation, args: &BenchArgs) -> anyhow::Result<Self> {
        let mut config = ServerConfig::new("127.0.0.1:0", "127.0.0.1:0", store);
        config.allow_private_webhooks = true;
        let server = RunningServer::start(&config).await?;
        let ingest_key = producer_key(&server).await?;
        let org: OrgId = SEED_ORG
            .parse()
            .map_err(|e: tidings_domain::IdError| anyhow::anyhow!(e.0))?;
        let (_, admin_key) = crate::keys::create(
            server.store.as_ref(),
            Some(org),
            vec![Scope::WebhooksWrite, Scope::WebhooksRead],
            Some("bench webhook admin".into()),
            // The bench measures delivery, not the per-key limit.
            Some(1_000_000),
        )
        .await?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host((args.batch_producers as usize).max(PACED_MAX_IN_FLIGHT))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            ingest_url: format!("http://{}/internal/v1/events", server.ingest_addr),
            server,
            client,
            ingest_key,
            admin_key,
            endpoints: 0,
            dead: false,
            dead_backlog: 0,
        })
    }

    /// Creates a webhook to `url` subscribed to `*` in the seed organization, through the
    /// API (so it passes the verification challenge first); fails unless it is `active`.
    /// It receives the events recorded from now on.
    async fn add_webhook(&self, url: &str) -> anyhow::Result<()> {
        let request = self
            .client
            .post(format!("http://{}/v1/webhooks", self.server.public_addr))
            .bearer_auth(&self.admin_key)
            .json(&json!({"url": url, "event_types": ["*"], "description": "bench"}));
        let body = expect_status(request, StatusCode::CREATED, "creating a webhook").await?;
        let created: Value =
            serde_json::from_slice(&body).context("reading a webhook creation response")?;
        if created["status"] != "active" {
            bail!("the webhook to {url} is not active: {}", excerpt(&body));
        }
        Ok(())
    }

    /// Fans out every event recorded so far (beside the dispatcher, which may be doing the
    /// same: each pass reads and advances the shared cursor in one transaction).
    async fn drain_fan_out(&self) -> anyhow::Result<()> {
        const PASS: usize = 1_000;
        for _ in 0..100_000 {
            let report = self
                .server
                .store
                .fan_out(PASS)
                .await
                .context("fanning out the backlog")?;
            if report.events_scanned < PASS {
                return Ok(());
            }
        }
        bail!("the fan-out did not catch up with the backlog")
    }

    /// Sends every batch, `producers` requests at a time, as fast as they are acknowledged.
    async fn ingest_concurrently(
        &self,
        batches: Vec<Batch>,
        producers: u64,
    ) -> anyhow::Result<Ingested> {
        let batch_size = batches.iter().map(|b| b.events).max().unwrap_or(0);
        let batches = Arc::new(batches);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for _ in 0..producers {
            let (client, url, key) = (
                self.client.clone(),
                self.ingest_url.clone(),
                self.ingest_key.clone(),
            );
            let (batches, next) = (Arc::clone(&batches), Arc::clone(&next));
            tasks.spawn(async move {
                let mut acks = Vec::new();
                while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                    acks.push(ingest_acknowledged(&client, &url, &key, batch.body.clone()).await?);
                }
                anyhow::Ok(acks)
            });
        }
        let mut acks = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            for (ids, at) in joined.context("a producer task failed")?? {
                acks.extend(ids.into_iter().map(|id| (id, at)));
            }
        }
        Ok(Ingested {
            started,
            finished: Instant::now(),
            batch_size,
            acks,
        })
    }

    /// Sends one batch every `interval` (open loop: a slow answer does not delay the next
    /// request), with at most [`PACED_MAX_IN_FLIGHT`] requests outstanding.
    async fn ingest_paced(
        &self,
        batches: Vec<Batch>,
        interval: Duration,
    ) -> anyhow::Result<Ingested> {
        let batch_size = batches.iter().map(|b| b.events).max().unwrap_or(0);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        let mut acks = HashMap::new();
        let mut add = |joined: Result<anyhow::Result<(Vec<String>, Instant)>, _>| {
            let (ids, at) = joined.context("a paced request failed")??;
            acks.extend(ids.into_iter().map(|id| (id, at)));
            anyhow::Ok(())
        };
        for batch in batches {
            tick.tick().await;
            while tasks.len() >= PACED_MAX_IN_FLIGHT {
                if let Some(joined) = tasks.join_next().await {
                    add(joined)?;
                }
            }
            let (client, url, key) = (
                self.client.clone(),
                self.ingest_url.clone(),
                self.ingest_key.clone(),
            );
            tasks.spawn(async move { ingest_acknowledged(&client, &url, &key, batch.body).await });
        }
        while let Some(joined) = tasks.join_next().await {
            add(joined)?;
        }
        Ok(Ingested {
            started,
            finished: Instant::now(),
            batch_size,
            acks,
        })
    }

    /// Waits (up to `deadline` after the last ingest) for every ingested event to reach
    /// every measured endpoint, then takes the receiver's log and computes the figures.
    async fn collect(
        &self,
        scenario: &str,
        receiver: &WebhookReceiver,
        ingested: Ingested,
        target_rate: Option<f64>,
        deadline: Duration,
    ) -> DeliveryResult {
        let expected = ingested.acks.len() as u64 * u64::from(self.endpoints);
        let progress = Progress::start(scenario.to_string(), expected, "deliveries");
        let give_up = ingested.finished + deadline;
        let mut complete = false;
        let mut checked = None;
        loop {
            let distinct = receiver.state.distinct.load(Ordering::Relaxed);
            progress.done.store(distinct, Ordering::Relaxed);
            // Unexpected deliveries count in `distinct` too: check exactly before stopping,
            // and again only once more has arrived (the check holds the receiver's lock).
            if distinct >= expected && checked != Some(distinct) {
                checked = Some(distinct);
                if receiver.missing(&ingested.acks, self.endpoints) == 0 {
                    complete = true;
                    break;
                }
            }
            if Instant::now() >= give_up {
                break;
            }
            tokio::time::sleep(DELIVERY_POLL).await;
        }
        drop(progress);
        if complete {
            tokio::time::sleep(DELIVERY_SETTLE).await;
        }
        let log = receiver.take_log();
        let mut result = delivery_figures(scenario, &log, &ingested, self.endpoints, target_rate);
        result.timed_out = !complete;
        result.dead_endpoints = u64::from(self.dead);
        result.dead_backlog = if self.dead { self.dead_backlog } else { 0 };
        eprintln!(
            "bench:   {} deliveries/s, p50 {:.2} ms, p99 {:.2} ms; {} of {} delivered, \
             {} duplicates{}",
            grouped(result.deliveries_per_second as u64),
            result.latency_ms.p50,
            result.latency_ms.p99,
            grouped(result.delivered),
            grouped(result.expected),
            result.duplicates,
            if result.timed_out {
                " (deadline passed)"
            } else {
                ""
            }
        );
        result
    }
}

/// The `201` body of the ingest API, as far as the bench needs it.
#[derive(Deserialize)]
struct IngestAck {
    data: Vec<AckedEvent>,
}

#[derive(Deserialize)]
struct AckedEvent {
    id: String,
}

/// Sends one ingest request; returns the recorded events' IDs and when the `201` arrived.
async fn ingest_acknowledged(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: Bytes,
) -> anyhow::Result<(Vec<String>, Instant)> {
    let request = client
        .post(url)
        .bearer_auth(key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    let body = expect_status(request, StatusCode::CREATED, "ingest").await?;
    let at = Instant::now();
    let ack: IngestAck =
        serde_json::from_slice(&body).context("reading the events of an ingest response")?;
    Ok((ack.data.into_iter().map(|e| e.id).collect(), at))
}

/// The figures of one scenario from the receiver's log: every (endpoint, event) pair of
/// the measured endpoints counted once, its latency from the event's `201` to its first
/// receipt, duplicates and strays counted apart.
fn delivery_figures(
    scenario: &str,
    log: &[HashMap<String, Receipt>],
    ingested: &Ingested,
    endpoints: u32,
    target_rate: Option<f64>,
) -> DeliveryResult {
    let events = ingested.acks.len() as u64;
    let expected = events * u64::from(endpoints);
    let mut latencies = Vec::with_capacity(expected as usize);
    let (mut delivered, mut duplicates, mut unexpected, mut before_ack) = (0, 0, 0, 0);
    let mut last = ingested.started;
    for (n, receipts) in log.iter().enumerate() {
        let measured = (n as u64) < u64::from(endpoints);
        for (id, receipt) in receipts {
            match ingested.acks.get(id) {
                Some(ack) if measured => {
                    delivered += 1;
                    duplicates += u64::from(receipt.count - 1);
                    last = last.max(receipt.first);
                    if receipt.first < *ack {
                        before_ack += 1;
                    }
                    latencies.push(receipt.first.saturating_duration_since(*ack));
                }
                _ => unexpected += u64::from(receipt.count),
            }
        }
    }
    let seconds = last
        .saturating_duration_since(ingested.started)
        .as_secs_f64();
    let ingest_seconds = ingested
        .finished
        .saturating_duration_since(ingested.started)
        .as_secs_f64();
    let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    DeliveryResult {
        scenario: scenario.to_string(),
        endpoints: u64::from(endpoints),
        dead_endpoints: 0,
        dead_backlog: 0,
        events,
        batch_size: ingested.batch_size,
        target_events_per_second: target_rate,
        ingest_events_per_second: rate(events, ingest_seconds),
        expected,
        delivered,
        missing: expected - delivered,
        duplicates,
        unexpected,
        before_ack,
        timed_out: false,
        seconds,
        deliveries_per_second: rate(delivered, seconds),
        latency_ms: Latency::of(&mut latencies),
    }
}

/// The first receipt of one (endpoint, event) pair, and how many times it came.
#[derive(Debug, Clone, Copy)]
struct Receipt {
    first: Instant,
    count: u32,
}

/// What the receiver has seen. `log[n]` holds endpoint `n`'s receipts by event ID.
#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<HashMap<String, Receipt>>>,
    /// Distinct (endpoint, event) pairs in `log`.
    distinct: AtomicU64,
    /// Deliveries that reached the dead endpoint (which answers none of them in time).
    dead_requests: AtomicU64,
}

impl ReceiverState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HashMap<String, Receipt>>> {
        // A panic while holding the lock leaves a log that is still consistent.
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Customers' endpoints, inside the bench process: healthy endpoints `0..n`, each on a
/// listener of its own (the webhook client pools connections per host and port, as it
/// would for separate customers), answering 2xx at once and recording when each event
/// arrived; and one dead endpoint that passes the verification challenge and then holds
/// every delivery past the sender's timeout.
struct WebhookReceiver {
    healthy: Vec<SocketAddr>,
    dead: SocketAddr,
    state: Arc<ReceiverState>,
    tasks: Vec<JoinHandle<()>>,
}

impl WebhookReceiver {
    async fn start(endpoints: u32) -> anyhow::Result<Self> {
        let state = Arc::new(ReceiverState::default());
        *state.lock() = vec![HashMap::new(); endpoints as usize];
        let app = axum::Router::new()
            .route("/hook/{n}", axum::routing::post(healthy_endpoint))
            .route("/dead", axum::routing::post(dead_endpoint))
            .with_state(Arc::clone(&state));
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..=endpoints {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a webhook receiver")?;
            addrs.push(
                listener
                    .local_addr()
                    .context("reading a webhook receiver's address")?,
            );
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("bench: a webhook receiver stopped: {e}");
                }
            }));
        }
        let dead = addrs.pop().context("the receiver has no listener")?;
        Ok(Self {
            healthy: addrs,
            dead,
            state,
            tasks,
        })
    }

    /// The URL of healthy endpoint `n`.
    fn url(&self, n: u32) -> String {
        format!("http://{}/hook/{n}", self.healthy[n as usize])
    }

    fn dead_url(&self) -> String {
        format!("http://{}/dead", self.dead)
    }

    /// Expected (endpoint, event) pairs not received yet.
    fn missing(&self, acks: &HashMap<String, Instant>, endpoints: u32) -> u64 {
        let log = self.state.lock();
        log.iter()
            .take(endpoints as usize)
            .map(|received| acks.keys().filter(|id| !received.contains_key(*id)).count() as u64)
            .sum::<u64>()
            + u64::from(endpoints).saturating_sub(log.len() as u64) * acks.len() as u64
    }

    /// The log so far; the receiver starts a fresh one.
    fn take_log(&self) -> Vec<HashMap<String, Receipt>> {
        let mut log = self.state.lock();
        let taken = log.iter_mut().map(std::mem::take).collect();
        self.state.distinct.store(0, Ordering::Relaxed);
        taken
    }

    /// Stops accepting connections (requests under way finish on their own).
    fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer to a verification challenge (`{"type": "webhook.verification", ...}`), or
/// `None` for a delivery. Only bodies that mention it are parsed, to keep deliveries cheap.
fn verification_answer(body: &[u8]) -> Option<String> {
    const MARKER: &[u8] = b"webhook.verification";
    if !body.windows(MARKER.len()).any(|w| w == MARKER) {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    if value["type"] != "webhook.verification" {
        return None;
    }
    Some(json!({ "challenge": value["challenge"] }).to_string())
}

/// A healthy endpoint: records the delivery's first receipt per event ID and answers 200.
async fn healthy_endpoint(
    State(state): State<Arc<ReceiverState>>,
    AxumPath(n): AxumPath<u32>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let at = Instant::now();
    if let Some(answer) = verification_answer(&body) {
        return (StatusCode::OK, answer).into_response();
    }
    let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "no webhook-id").into_response();
    };
    let mut log = state.lock();
    let Some(received) = log.get_mut(n as usize) else {
        return (StatusCode::NOT_FOUND, "no such endpoint").into_response();
    };
    match received.get_mut(id) {
        Some(receipt) => receipt.count += 1,
        None => {
            received.insert(
                id.to_string(),
                Receipt {
                    first: at,
                    count: 1,
                },
            );
            state.distinct.fetch_add(1, Ordering::Relaxed);
        }
    }
    (StatusCode::OK, "ok").into_response()
}

/// The dead endpoint: passes the verification challenge, then never answers a delivery in
/// time.
async fn dead_endpoint(
    State(state): State<Arc<ReceiverState>>,
    body: Bytes,
) -> (StatusCode, String) {
    if let Some(answer) = verification_answer(&body) {
        return (StatusCode::OK, answer);
    }
    state.dead_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(DEAD_ENDPOINT_HOLD).await;
    (StatusCode::OK, "too late".into())
}

/// Resets the process's peak resident memory (VmHWM) on Linux, so that the next reading
/// covers only what follows. Returns whether it worked.
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Sizes of a SQLite database file and of its WAL file (0 if there is none).
fn file_sizes(database: &Path) -> anyhow::Result<FileSizes> {
    let size = |path: &Path| -> anyhow::Result<u64> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading the size of {}", path.display())),
        }
    };
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    Ok(FileSizes {
        database: size(database)?,
        wal: size(Path::new(&wal))?,
        data: tidings_store::sqlite::data_size(database)
            .with_context(|| format!("reading the size of {}", database.display()))?,
    })
}

/// VmHWM from `/proc/self/status`: the most memory the process has held resident.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sends a request and reads its body, failing unless the status is `expected`.
async fn expect_status(
    request: reqwest::RequestBuilder,
    expected: StatusCode,
    what: &str,
) -> anyhow::Result<Bytes> {
    let response = request
        .send()
        .await
        .with_context(|| format!("sending a request ({what})"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .with_context(|| format!("reading a response ({what})"))?;
    if status != expected {
        bail!("{what} answered {status}: {}", excerpt(&body));
    }
    Ok(body)
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned()
}

/// Prints "events (or other `unit`s) done so far" on stderr every few seconds until dropped.
struct Progress {
    done: Arc<AtomicU64>,
    ticker: JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: u64, unit: &'static str) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&done);
        let ticker = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = counter.load(Ordering::Relaxed);
                let rate = n as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "bench:   {label}: {} / {} {unit} ({} {unit}/s wall clock so far)",
                    grouped(n),
                    grouped(total),
                    grouped(rate as u64)
                );
            }
        });
        Self { done, ticker }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render_table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let store = if r.settings.store == "postgres" {
        "PostgreSQL store"
    } else {
        "embedded SQLite store"
    };
    let _ = writeln!(
        out,
        "Tidings bench: {store}, {} CPUs, seed {}, {} organizations\n",
        r.settings.cpus, r.settings.seed, r.settings.organizations
    );
    if let (Some(baseline), Some(ratio), Some(storage)) =
        (&r.baseline, r.batch_1000_to_baseline, &r.storage)
    {
        render_store(&mut out, r, baseline, ratio, storage);
    }
    render_delivery(&mut out, &r.delivery);
    match r.peak_memory_bytes {
        Some(b) => {
            let _ = writeln!(
                out,
                "Peak memory (VmHWM, whole bench process): {} MiB",
                grouped(b / (1024 * 1024))
            );
        }
        None => {
            let _ = writeln!(out, "Peak memory: not reported on this platform");
        }
    }
    out
}

/// The ingest, baseline, query and disk sections of the table.
fn render_store(
    out: &mut String,
    r: &BenchReport,
    baseline: &BaselineResult,
    ratio: f64,
    storage: &StorageResult,
) {
    use std::fmt::Write;
    let postgres = r.settings.store == "postgres";
    let _ = writeln!(
        out,
        "Ingest over HTTP, durable (each 201 after the commit's fsync)"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "scenario", "producers", "events", "events/s", "p50 ms", "p99 ms", "max ms"
    );
    for i in &r.ingest {
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>11} {:>11} {:>9.2} {:>9.2} {:>9.2}",
            format!("batches of {}", grouped(i.batch_size)),
            i.producers,
            grouped(i.events),
            grouped(i.events_per_second as u64),
            i.latency_ms.p50,
            i.latency_ms.p99,
            i.latency_ms.max
        );
    }
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>11} {:>11}   ({} rows/transaction, no HTTP, no validation)",
        if postgres {
            "raw Postgres baseline"
        } else {
            "raw SQLite baseline"
        },
        "-",
        grouped(baseline.events),
        grouped(baseline.events_per_second as u64),
        grouped(baseline.rows_per_transaction as u64)
    );
    let _ = writeln!(out, "batches of 1,000 / baseline: {ratio:.2}x\n");
    let _ = writeln!(
        out,
        "Query: GET /v1/events over HTTP, limit {}, {} sequential samples each, store of {} events",
        r.settings.page_limit,
        r.settings.query_samples,
        grouped(r.settings.store_events)
    );
    let _ = writeln!(
        out,
        "{:<40} {:>5} {:>9} {:>9} {:>9}",
        "shape", "rows", "p50 ms", "p99 ms", "max ms"
    );
    for q in &r.query {
        let _ = writeln!(
            out,
            "{:<40} {:>5} {:>9.2} {:>9.2} {:>9.2}",
            q.description, q.rows, q.latency_ms.p50, q.latency_ms.p99, q.latency_ms.max
        );
    }
    if let Some(b) = r.query_peak_memory_bytes {
        let _ = writeln!(
            out,
            "peak memory while querying (VmHWM, whole bench process, reset before the queries): {} MiB",
            grouped(b / (1024 * 1024))
        );
    }
    if postgres {
        let _ = writeln!(
            out,
            "\nDisk: {} bytes/event ({} bytes for {} events, pg_database_size, shared WAL not \
             counted); baseline {} bytes/event\n",
            storage.bytes_per_event.round(),
            grouped(storage.bytes),
            grouped(storage.events),
            storage.baseline_bytes_per_event.round()
        );
        return;
    }
    let _ = writeln!(
        out,
        "\nDisk: {} bytes/event ({} bytes for {} events, db + wal, of which wal {}; the \
         database's pages in use {} bytes/event); baseline {} bytes/event (wal {}; pages in \
         use {} bytes/event)\n",
        storage.bytes_per_event.round(),
        grouped(storage.bytes),
        grouped(storage.events),
        grouped(storage.wal_bytes),
        storage.data_bytes_per_event.round(),
        storage.baseline_bytes_per_event.round(),
        grouped(storage.baseline_wal_bytes),
        storage.baseline_data_bytes_per_event.round()
    );
}

/// The webhook delivery section of the table.
fn render_delivery(out: &mut String, d: &DeliveryReport) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "Webhook delivery to local receivers (ingest over HTTP; latency from the batch's 201 \
         to the receipt)"
    );
    let _ = writeln!(
        out,
        "{:<36} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>5}",
        "scenario",
        "endpoints",
        "events",
        "delivered",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "missing",
        "dup"
    );
    for s in [
        &d.throughput,
        &d.paced,
        &d.fanout_healthy,
        &d.fanout_one_dead,
    ] {
        let label = match s.scenario.as_str() {
            "throughput" => "1 endpoint, unpaced".to_string(),
            "paced" => format!(
                "1 endpoint, paced {} events/s",
                grouped(s.target_events_per_second.unwrap_or(0.0) as u64)
            ),
            _ if s.dead_endpoints > 0 => format!(
                "{} endpoints, {} dead (healthy shown)",
                s.endpoints + s.dead_endpoints,
                s.dead_endpoints
            ),
            _ => format!("{} endpoints, all healthy", s.endpoints),
        };
        let _ = writeln!(
            out,
            "{:<36} {:>9} {:>7} {:>10} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>5}{}",
            label,
            s.endpoints,
            grouped(s.events),
            grouped(s.delivered),
            grouped(s.deliveries_per_second as u64),
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.max,
            grouped(s.missing),
            grouped(s.duplicates),
            if s.timed_out {
                "  (deadline passed)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "paced ingest achieved {} events/s; unexpected deliveries: {}",
        grouped(d.paced.ingest_events_per_second as u64),
        [
            &d.throughput,
            &d.paced,
            &d.fanout_healthy,
            &d.fanout_one_dead
        ]
        .iter()
        .map(|s| s.unexpected)
        .sum::<u64>()
    );
    let _ = writeln!(
        out,
        "a dead endpoint (owing {} deliveries when the run began) costs the healthy ones \
         {:.1} % of their delivery rate\n",
        grouped(d.fanout_one_dead.dead_backlog),
        d.dead_endpoint_cost * 100.0
    );
    if let Some(b) = d.peak_memory_bytes {
        let _ = writeln!(
            out,
            "Peak memory during the delivery scenarios (VmHWM): {} MiB",
            grouped(b / (1024 * 1024))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_inserts_thousands_separators() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn latency_uses_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50, l.p99, l.max), (50.0, 99.0, 100.0));
        let l = Latency::of(&mut [Duration::from_millis(3)]);
        assert_eq!((l.p50, l.p99, l.max), (3.0, 3.0, 3.0));
    }
}
