//! `tidings bench`: one run that measures the embedded store end to end, through real HTTP.
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
//!   dominate memory, and only the sending is timed.
//! - **A raw SQLite baseline** in the same run: the same rows as the batch-1,000 scenario,
//!   inserted into a fresh file with the store's own schema and settings (WAL,
//!   `synchronous=FULL`, every index), 10,000 rows per transaction, with no HTTP and no
//!   validation. The ratio of the two says how much the layers above SQLite cost.
//! - **Query latency** of `GET /v1/events` over real HTTP, for each query shape the seed
//!   document uses, one request at a time with an organization read key.
//! - **Footprint**: bytes on disk per event (database plus WAL file) and the peak resident
//!   memory of the whole process (server, client and pre-generated bodies together).
//!
//! Progress goes to stderr; the results go to stdout as a table, or as JSON with `--json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{StatusCode, Url, header};
use serde::Serialize;
use serde_json::{Value, json};
use tidings_domain::{Catalog, IngestFormat, NewEvent, OrgId, Scope, parse_ingest_body};
use tidings_store::sqlite::{DATABASE_FILE, RawSqliteBaseline};
use tokio::task::{JoinHandle, JoinSet};

use crate::demo::{EventGenerator, SEED_ORG, SEED_SERVICE_LINE, SEED_WORKSPACE};
use crate::server::{RunningServer, ServerConfig};

/// Requests' bodies are generated this many events at a time, between timed windows.
const CHUNK_EVENTS: u64 = 100_000;
/// Rows per transaction of the raw SQLite baseline.
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
    pub ingest: Vec<IngestResult>,
    pub baseline: BaselineResult,
    /// Events/s of the batch-1,000 scenario divided by the baseline's.
    pub batch_1000_to_baseline: f64,
    pub query: Vec<QueryResult>,
    pub storage: StorageResult,
    /// Peak resident memory of the bench process (VmHWM), when the platform reports it.
    pub peak_memory_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Settings {
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
    /// Database plus WAL file of the store after the batch-1,000 load.
    pub bytes: u64,
    pub bytes_per_event: f64,
    /// The WAL file's share of `bytes` (it keeps its largest size once checkpointed).
    pub wal_bytes: u64,
    /// The same for the baseline's files.
    pub baseline_bytes: u64,
    pub baseline_bytes_per_event: f64,
    pub baseline_wal_bytes: u64,
}

/// Sizes of a SQLite database's files.
#[derive(Debug, Clone, Copy)]
struct FileSizes {
    database: u64,
    wal: u64,
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

    let mut ingest = Vec::new();
    let (result, server) = ingest_scenario(
        &work.path().join("batch-1"),
        1,
        args.single_producers,
        args.single_events,
        args,
    )
    .await?;
    server.shutdown().await;
    ingest.push(result);

    let (result, server) = ingest_scenario(
        &work.path().join("batch-100"),
        100,
        args.batch_producers,
        args.batch_100_events,
        args,
    )
    .await?;
    server.shutdown().await;
    ingest.push(result);

    let load_started = Utc::now();
    let query_store = work.path().join("batch-1000");
    let (result, server) =
        ingest_scenario(&query_store, 1000, args.batch_producers, args.events, args).await?;
    let load_finished = Utc::now();
    let batch_1000_rate = result.events_per_second;
    ingest.push(result);
    let sizes = file_sizes(&query_store.join(DATABASE_FILE))?;

    let query = query_shapes(&server, args, load_started, load_finished).await?;
    server.shutdown().await;

    let baseline_file = work.path().join("baseline").join(DATABASE_FILE);
    let (baseline, baseline_sizes) = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || raw_sqlite_baseline(&baseline_file, &args))
            .await
            .context("the baseline thread failed")??
    };

    let per_event = |bytes: u64| bytes as f64 / args.events as f64;
    Ok(BenchReport {
        settings: Settings {
            seed: args.seed,
            organizations: args.orgs,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            store_events: args.events,
            page_limit: args.page_limit,
            query_samples: args.query_samples,
        },
        batch_1000_to_baseline: batch_1000_rate / baseline.events_per_second,
        ingest,
        baseline,
        query,
        storage: StorageResult {
            events: args.events,
            bytes: sizes.total(),
            bytes_per_event: per_event(sizes.total()),
            wal_bytes: sizes.wal,
            baseline_bytes: baseline_sizes.total(),
            baseline_bytes_per_event: per_event(baseline_sizes.total()),
            baseline_wal_bytes: baseline_sizes.wal,
        },
        peak_memory_bytes: peak_memory_bytes(),
    })
}

/// One request body and the number of events in it.
struct Batch {
    body: Bytes,
    events: u64,
}

/// Starts a server on a fresh store in `data_dir`, sends `events` events in requests of
/// `batch_size` from `producers` concurrent producers, and returns the figures with the
/// server still running.
async fn ingest_scenario(
    data_dir: &Path,
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
    let server = start_server(data_dir).await?;
    let (_, key) = crate::keys::create(
        server.store.as_ref(),
        None,
        vec![Scope::EventsIngest],
        Some("bench producer".into()),
        None,
    )
    .await?;
    let url = format!("http://{}/internal/v1/events", server.ingest_addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(producers as usize)
        .build()
        .context("building the HTTP client")?;
    let mut generator = EventGenerator::new(args.seed, args.orgs as usize);
    let progress = Progress::start(label, events);
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
        let chunk_latencies =
            send_concurrently(&client, &url, &key, batches, producers, &progress.done).await?;
        sending += started.elapsed();
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

async fn start_server(data_dir: &Path) -> anyhow::Result<RunningServer> {
    let config = ServerConfig::new("127.0.0.1:0", "127.0.0.1:0", data_dir.to_path_buf());
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

/// Sends every batch, `producers` requests at a time, each producer taking the next unsent
/// batch as soon as its previous one is acknowledged. Returns each request's latency.
async fn send_concurrently(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    batches: Vec<Batch>,
    producers: u64,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Duration>> {
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..producers {
        let (client, url, key) = (client.clone(), url.to_string(), key.to_string());
        let (batches, next, done) = (Arc::clone(&batches), Arc::clone(&next), Arc::clone(done));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(batch.body.clone())
                    .send()
                    .await
                    .context("sending an ingest request")?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .context("reading an ingest response")?;
                latencies.push(started.elapsed());
                if status != StatusCode::CREATED {
                    bail!("ingest answered {status}: {}", excerpt(&body));
                }
                done.fetch_add(batch.events, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("a producer task failed")??);
    }
    Ok(latencies)
}

/// Inserts the batch-1,000 scenario's rows (same generator, same seed) into a fresh file
/// with the store's schema, [`BASELINE_ROWS_PER_TRANSACTION`] rows per transaction. Only
/// the inserts and commits are timed. Returns the figures and the files' sizes.
fn raw_sqlite_baseline(
    file: &Path,
    args: &BenchArgs,
) -> anyhow::Result<(BaselineResult, FileSizes)> {
    eprintln!(
        "bench: raw SQLite baseline, {} rows per transaction, {} events",
        grouped(BASELINE_ROWS_PER_TRANSACTION as u64),
        grouped(args.events)
    );
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut db = RawSqliteBaseline::create(file)
        .with_context(|| format!("creating the baseline database {}", file.display()))?;
    let catalog = Catalog::builtin();
    let mut generator = EventGenerator::new(args.seed, args.orgs as usize);
    let progress = Progress::start("baseline".into(), args.events);
    let mut inserting = Duration::ZERO;
    let mut left = args.events;
    while left > 0 {
        let n = left.min(BASELINE_ROWS_PER_TRANSACTION as u64);
        let rows = validated_events(&mut generator, n, &catalog)?;
        let started = Instant::now();
        db.insert_transaction(&rows, Utc::now().timestamp())
            .context("inserting into the baseline database")?;
        inserting += started.elapsed();
        progress.done.fetch_add(n, Ordering::Relaxed);
        left -= n;
    }
    drop(progress);
    let sizes = file_sizes(file)?;
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
    Ok((result, sizes))
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
            let response = client
                .get(url.clone())
                .bearer_auth(key)
                .send()
                .await
                .context("sending a query")?;
            let status = response.status();
            let body = response.bytes().await.context("reading a query response")?;
            latencies.push(started.elapsed());
            if status != StatusCode::OK {
                bail!("{url} answered {status}: {}", excerpt(&body));
            }
        }
    }
    Ok(latencies
        .iter_mut()
        .map(|l| Latency::of(l))
        .zip(rows)
        .collect())
}

async fn get_page(client: &reqwest::Client, key: &str, url: Url) -> anyhow::Result<Value> {
    let response = client
        .get(url.clone())
        .bearer_auth(key)
        .send()
        .await
        .context("sending a query")?;
    let status = response.status();
    let body = response.bytes().await.context("reading a query response")?;
    if status != StatusCode::OK {
        bail!("{url} answered {status}: {}", excerpt(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} answered with invalid JSON"))
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
    })
}

/// VmHWM from `/proc/self/status`: the most memory the process has held resident.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned()
}

/// Prints "events done so far" on stderr every few seconds until dropped.
struct Progress {
    done: Arc<AtomicU64>,
    ticker: JoinHandle<()>,
}

impl Progress {
    fn start(label: String, total: u64) -> Self {
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
                    "bench:   {label}: {} / {} events ({} events/s wall clock so far)",
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
    let _ = writeln!(
        out,
        "Tidings bench: embedded SQLite store, {} CPUs, seed {}, {} organizations\n",
        r.settings.cpus, r.settings.seed, r.settings.organizations
    );
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
        "raw SQLite baseline",
        "-",
        grouped(r.baseline.events),
        grouped(r.baseline.events_per_second as u64),
        grouped(r.baseline.rows_per_transaction as u64)
    );
    let _ = writeln!(
        out,
        "batches of 1,000 / baseline: {:.2}x\n",
        r.batch_1000_to_baseline
    );
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
    let _ = writeln!(
        out,
        "\nDisk: {} bytes/event ({} bytes for {} events, db + wal, of which wal {}); \
         baseline {} bytes/event (wal {})",
        r.storage.bytes_per_event.round(),
        grouped(r.storage.bytes),
        grouped(r.storage.events),
        grouped(r.storage.wal_bytes),
        r.storage.baseline_bytes_per_event.round(),
        grouped(r.storage.baseline_wal_bytes)
    );
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
