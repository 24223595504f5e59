//! Wires the store, the catalog and the two routers into a running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tidings_domain::webhook::RetrySchedule;
use tidings_domain::{Catalog, EventTypeInfo};
use tidings_http::AppState;
use tidings_http::rate_limit::RateLimits;
use tidings_store::postgres::PostgresStore;
use tidings_store::{Clock, RetentionPolicy, SqliteStore, Store, SweepReport, SystemClock};
use tidings_webhooks::{Dispatcher, DispatcherConfig, WebhookClient, WebhookServices};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Where the data lives: the embedded SQLite store in a directory (one process), or a
/// PostgreSQL database (any number of processes).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The directory of the embedded store.
    Embedded(PathBuf),
    /// A PostgreSQL connection string: a URL (`postgres://user:password@host:port/db`) or
    /// libpq `key=value` pairs.
    Postgres(String),
}

impl StoreLocation {
    /// Opens (and migrates) the store. The work runs off the async runtime.
    pub async fn open(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Store>> {
        let location = self.clone();
        tokio::task::spawn_blocking(move || location.open_blocking(clock))
            .await
            .context("the task opening the store failed")?
    }

    /// Like [`StoreLocation::open`], for code that is not async.
    pub fn open_blocking(&self, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            Self::Embedded(dir) => Arc::new(
                SqliteStore::open_with_clock(dir, clock)
                    .with_context(|| format!("opening the store in {}", dir.display()))?,
            ),
            Self::Postgres(url) => Arc::new(
                PostgresStore::connect_with_clock(url, clock)
                    .with_context(|| format!("opening the PostgreSQL store at {}", redact(url)))?,
            ),
        })
    }
}

/// Says which store, never with a password: `embedded store in DIR` or `PostgreSQL at URL`.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(dir) => write!(f, "embedded store in {}", dir.display()),
            Self::Postgres(url) => write!(f, "PostgreSQL at {}", redact(url)),
        }
    }
}

/// Like `Display`: a configuration dump must not print the database password either.
impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded(dir) => f.debug_tuple("Embedded").field(dir).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
        }
    }
}

/// A connection string without its password, as the driver reads it:
/// `postgres://user@host:port/dbname`. Anything it cannot read is not shown at all.
pub fn redact(url: &str) -> String {
    let Ok(config) = url.parse::<postgres::Config>() else {
        return "(a connection string that does not parse)".into();
    };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Everything `serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub ingest_listen: String,
    pub store: StoreLocation,
    /// A JSON file with extra event types: `[{"name": "...", "description": "..."}]`.
    pub event_types_file: Option<PathBuf>,
    /// Let webhooks reach loopback and private addresses over plain http (development).
    pub allow_private_webhooks: bool,
    pub retry_schedule: RetrySchedule,
    /// Requests in flight to one webhook endpoint.
    pub webhook_concurrency: usize,
    /// Requests per second per key, and the burst, unless a key has its own limit.
    pub rate_limit: u32,
    pub rate_limit_burst: u32,
    pub retention: RetentionPolicy,
    /// How often the retention sweep runs.
    pub sweep_interval: Duration,
    /// How long a claimed delivery stays this process's before another may attempt it.
    pub webhook_lease: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the addresses and the store.
    pub fn new(listen: &str, ingest_listen: &str, store: StoreLocation) -> Self {
        Self {
            listen: listen.into(),
            ingest_listen: ingest_listen.into(),
            store,
            event_types_file: None,
            allow_private_webhooks: false,
            retry_schedule: RetrySchedule::default(),
            webhook_concurrency: DispatcherConfig::default().per_endpoint,
            rate_limit: 100,
            rate_limit_burst: 200,
            retention: RetentionPolicy::default(),
            sweep_interval: Duration::from_secs(60),
            webhook_lease: DispatcherConfig::default().lease,
        }
    }
}

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub public_addr: SocketAddr,
    pub ingest_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub catalog: Arc<Catalog>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

/// Loads the built-in catalog plus the operator's extension file, if any.
pub fn load_catalog(file: Option<&PathBuf>) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::builtin();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading event types from {}", path.display()))?;
        let extra: Vec<EventTypeInfo> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} must be a JSON array of {{\"name\": ..., \"description\": ...}}",
                path.display()
            )
        })?;
        catalog
            .extend(extra)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(catalog)
}

/// Rows deleted per retention pass: small enough that a pass is a short transaction.
pub const SWEEP_BATCH: usize = 2_000;

/// Sweeps until nothing old is left, every `interval`, in bounded passes with a pause
/// between them so that ingest and queries never wait long behind the sweep.
pub async fn sweep_until_done(
    store: &dyn Store,
    policy: RetentionPolicy,
) -> anyhow::Result<SweepReport> {
    let mut total = SweepReport::default();
    loop {
        let pass = store.sweep_retention(policy, SWEEP_BATCH).await?;
        total.events += pass.events;
        total.deliveries += pass.deliveries;
        total.audit_records += pass.audit_records;
        if pass.total() == 0 {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_retention(
    store: Arc<dyn Store>,
    policy: RetentionPolicy,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        match sweep_until_done(store.as_ref(), policy).await {
            Ok(r) if r.total() > 0 => tracing::info!(
                events = r.events,
                deliveries = r.deliveries,
                audit_records = r.audit_records,
                "retention sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
    }
}

impl RunningServer {
    /// Opens the store at `config.store` and starts serving.
    pub async fn start(config: &ServerConfig) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = config.store.open(Arc::clone(&clock)).await?;
        Self::with_store(config, store, clock).await
    }

    /// Starts serving on an already opened store (`config.store` is then only reported).
    /// `clock` must be the store's.
    pub async fn with_store(
        config: &ServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let catalog = Arc::new(load_catalog(config.event_types_file.as_ref())?);
        let webhooks = WebhookServices {
            client: WebhookClient::new(config.allow_private_webhooks)
                .context("building the webhook HTTP client")?,
            schedule: config.retry_schedule.clone(),
            clock: Arc::clone(&clock),
            wake: Arc::new(Notify::new()),
        };
        if config.webhook_lease < tidings_domain::webhook::ATTEMPT_TIMEOUT {
            tracing::warn!(
                lease = ?config.webhook_lease,
                attempt_timeout = ?tidings_domain::webhook::ATTEMPT_TIMEOUT,
                "the webhook lease is shorter than an attempt may take: a slow endpoint may \
                 get the same delivery twice"
            );
        }
        if config.allow_private_webhooks {
            tracing::warn!(
                "--allow-private-webhooks: webhooks may reach private addresses over http"
            );
        }
        let state = AppState {
            store: Arc::clone(&store),
            catalog: Arc::clone(&catalog),
            webhooks: Arc::new(webhooks.clone()),
            committed: Arc::new(watch::channel(0).0),
            openapi: Arc::default(),
            rate_limits: Some(Arc::new(RateLimits::new(
                config.rate_limit,
                config.rate_limit_burst,
            ))),
        };
        let public = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding the public API to {}", config.listen))?;
        let ingest = TcpListener::bind(&config.ingest_listen)
            .await
            .with_context(|| format!("binding the ingest port to {}", config.ingest_listen))?;
        let public_addr = public.local_addr()?;
        let ingest_addr = ingest.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let serve = |listener: TcpListener, router: axum::Router| {
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
            })
        };
        let dispatcher = Dispatcher::new(
            Arc::clone(&store),
            webhooks.client.clone(),
            clock,
            DispatcherConfig {
                schedule: config.retry_schedule.clone(),
                per_endpoint: config.webhook_concurrency.max(1),
                lease: config.webhook_lease,
                ..DispatcherConfig::default()
            },
            Arc::clone(&webhooks.wake),
        );
        let dispatcher_stop = stopped.clone();
        let sweeper = tokio::spawn(run_retention(
            Arc::clone(&store),
            config.retention,
            config.sweep_interval,
            stopped.clone(),
        ));
        let tasks = vec![
            serve(public, tidings_http::public_router(state.clone())),
            serve(ingest, tidings_http::ingest_router(state)),
            tokio::spawn(async move {
                dispatcher.run(dispatcher_stop).await;
                Ok(())
            }),
            sweeper,
        ];
        tracing::info!(%public_addr, %ingest_addr, store = %config.store, "listening");
        Ok(Self {
            public_addr,
            ingest_addr,
            store,
            catalog,
            stop,
            tasks,
        })
    }

    /// Stops accepting connections, finishes in-flight requests, and waits for both ports.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "server stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "server task failed"),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits until a server task ends on its own (an I/O failure).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.tasks.first_mut() {
            task.await??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_connection_strings() {
        for (url, shown) in [
            (
                "postgres://tidings:s3cret@db.internal:5432/tidings",
                "postgres://tidings@db.internal:5432/tidings",
            ),
            (
                "postgresql://u:p%40ss@h/db?sslmode=disable&password=x&application_name=t",
                "postgres://u@h:5432/db",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            (
                "host=db user=t password=s3cret dbname=x",
                "postgres://t@db/x",
            ),
            (
                "host=db password = 'it\\'s secret' dbname=x",
                "postgres://@db/x",
            ),
            (
                "not a url password=x",
                "(a connection string that does not parse)",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let location = StoreLocation::Postgres("postgres://u:s3cret@h/db".into());
        assert!(!location.to_string().contains("s3cret"));
        assert!(!format!("{location:?}").contains("s3cret"));
    }
}
