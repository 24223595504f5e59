//! `tidings`: the event stream and webhook server, and its command-line tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tidings::client::ApiClient;
use tidings::emit::{EmitSource, emit, event_from_flags};
use tidings::server::{RunningServer, ServerConfig, StoreLocation};
use tidings_domain::webhook::{RetrySchedule, SigningSecret};
use tidings_domain::{OrgId, Scope};
use tidings_store::{RetentionPolicy, Store, SystemClock};

// Ingest and delivery allocate many small, short-lived objects across threads; glibc's
// malloc showed up as ~20 % of the request threads' time in profiles (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "The platform event stream and webhook server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        global = true,
        env = "TIDINGS_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: public API and ingest port.
    Serve(ServeArgs),
    /// Manage API keys (works while the server runs).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Send events to the ingest port.
    Emit(EmitArgs),
    /// Measure ingest, query latency and footprint on temporary embedded stores.
    Bench(tidings::bench::BenchArgs),
    /// Read events from a running server: list, get, or follow (tail).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Follow the stream and forward each event, signed like a webhook, to a local endpoint.
    Listen(ListenArgs),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Args)]
struct ApiArgs {
    /// The public API.
    #[arg(long, env = "TIDINGS_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key with events:read.
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    key: String,
}

#[derive(Args)]
struct FilterArgs {
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    workspace: Option<String>,
    /// Exact types, a comma-separated list, or domain.*.
    #[arg(long = "type", alias = "types")]
    types: Option<String>,
    #[arg(long)]
    subject_type: Option<String>,
    #[arg(long)]
    subject_id: Option<String>,
    #[arg(long)]
    actor_id: Option<String>,
    /// Inclusive start: RFC 3339 or YYYY-MM-DD.
    #[arg(long)]
    from: Option<String>,
    /// Exclusive end.
    #[arg(long)]
    to: Option<String>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("organization_id", &self.org),
            ("workspace_id", &self.workspace),
            ("type", &self.types),
            ("subject_type", &self.subject_type),
            ("subject_id", &self.subject_id),
            ("actor_id", &self.actor_id),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

fn query_string(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

#[derive(Subcommand)]
enum EventsCommand {
    /// One page of events, newest first (use --cursor for the next).
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        limit: Option<u32>,
        /// asc or desc.
        #[arg(long)]
        order: Option<String>,
        #[arg(long)]
        cursor: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One event with its payload (JSON).
    Get {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follow new events as they are recorded.
    Tail {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON event per line instead of a table line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ListenArgs {
    /// Where to POST each event, e.g. http://localhost:3000/hooks.
    #[arg(long)]
    forward_to: String,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Sign with this secret instead of a fresh one (whsec_...).
    #[arg(long, env = "TIDINGS_LISTEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chains and report any altered, inserted or removed record.
    Verify {
        /// Only this organization's chain (`platform` for keys without an organization).
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Which store: the embedded one in `--data-dir`, or PostgreSQL with `--database-url`.
#[derive(Args)]
struct StoreArgs {
    /// Directory of the embedded store.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = "./tidings-data")]
    data_dir: PathBuf,
    /// A PostgreSQL database to use instead of the embedded store, which several `tidings
    /// serve` processes may share: postgres://USER:PASSWORD@HOST:PORT/DATABASE.
    #[arg(
        long,
        env = "TIDINGS_DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "data_dir"
    )]
    database_url: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> StoreLocation {
        match &self.database_url {
            Some(url) => StoreLocation::Postgres(url.clone()),
            None => StoreLocation::Embedded(self.data_dir.clone()),
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address of the public API.
    #[arg(long, env = "TIDINGS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Address of the internal ingest port.
    #[arg(long, env = "TIDINGS_INGEST_LISTEN", default_value = "127.0.0.1:8081")]
    ingest_listen: String,
    #[command(flatten)]
    store: StoreArgs,
    /// JSON file of extra event types: [{"name": "billing.credit_applied", "description": "..."}].
    #[arg(long, env = "TIDINGS_EVENT_TYPES")]
    event_types: Option<PathBuf>,
    /// Also run a simulated platform producing realistic events, and print a read key.
    #[arg(long)]
    demo: bool,
    /// Let webhooks reach loopback and private addresses, over plain http too
    /// (development and tests only).
    #[arg(long, env = "TIDINGS_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
    /// Delays between delivery attempts after a failure.
    #[arg(long, env = "TIDINGS_WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h",
          value_parser = |s: &str| RetrySchedule::parse(s))]
    webhook_retry_schedule: RetrySchedule,
    /// How long a claimed delivery stays one process's: if the process dies, another
    /// attempts the delivery once this has passed. Keep it above the 15 s an attempt may take.
    #[arg(long, env = "TIDINGS_WEBHOOK_LEASE", default_value = "60s",
          value_parser = positive_duration)]
    webhook_lease: Duration,
    /// Requests in flight to one webhook endpoint at a time.
    #[arg(long, env = "TIDINGS_WEBHOOK_CONCURRENCY", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    webhook_concurrency: u16,
    /// Requests per second per API key on the public API (a key may have its own).
    #[arg(long, env = "TIDINGS_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Burst size per key.
    #[arg(long, env = "TIDINGS_RATE_LIMIT_BURST", default_value_t = 200)]
    rate_limit_burst: u32,
    /// How long events are kept.
    #[arg(long, env = "TIDINGS_EVENT_RETENTION", default_value = "90d", value_parser = duration)]
    event_retention: Duration,
    /// How long webhook deliveries (with their attempts) are kept.
    #[arg(long, env = "TIDINGS_DELIVERY_RETENTION", default_value = "30d", value_parser = duration)]
    delivery_retention: Duration,
    /// How long audit records are kept.
    #[arg(long, env = "TIDINGS_AUDIT_RETENTION", default_value = "365d", value_parser = duration)]
    audit_retention: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    tidings_domain::parse_duration(s)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be longer than 0s".into())
        } else {
            Ok(d)
        }
    })
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown only this once) on stdout.
    Create {
        /// The organization the key belongs to.
        #[arg(
            long,
            conflicts_with = "platform",
            required_unless_present = "platform"
        )]
        org: Option<String>,
        /// A platform key: any organization (needed for ingest).
        #[arg(long)]
        platform: bool,
        /// Comma-separated: events:read, webhooks:read, webhooks:write, audit_logs:read, events:ingest.
        #[arg(long)]
        scopes: String,
        /// A note on what the key is for.
        #[arg(long)]
        description: Option<String>,
        /// This key's own limit in requests per second (burst: twice that).
        #[arg(long)]
        rate_limit: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key; it stops working at once.
    Revoke {
        /// The key's ID, e.g. KEY-26-000003.
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
struct EmitArgs {
    /// Ingest port URL.
    #[arg(
        long,
        env = "TIDINGS_INGEST_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    ingest_url: String,
    /// A platform key with the events:ingest scope.
    #[arg(long, env = "TIDINGS_INGEST_KEY", hide_env_values = true)]
    key: String,
    /// Send a JSON file (one event or {"events": [...]}); `-` reads stdin.
    #[arg(long, conflicts_with_all = ["ndjson", "event_type"])]
    file: Option<PathBuf>,
    /// Send NDJSON (one event a line), in batches of 1,000; `-` reads stdin.
    #[arg(long, conflicts_with = "event_type")]
    ndjson: Option<PathBuf>,
    /// Event type, e.g. invoice.paid (with --org, --actor, --subject).
    #[arg(long = "type", requires_all = ["org", "actor", "subject"])]
    event_type: Option<String>,
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    workspace: Option<String>,
    /// TYPE:ID, e.g. user:USR-26-000044.
    #[arg(long)]
    actor: Option<String>,
    /// TYPE:ID, e.g. invoice:INV-26-000001.
    #[arg(long)]
    subject: Option<String>,
    /// The payload as a JSON object.
    #[arg(long)]
    payload: Option<String>,
    #[arg(long)]
    idempotency_key: Option<String>,
}

fn init_logging(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDINGS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The one place the commands open their store (`serve` opens it through the same
/// [`StoreLocation::open`]).
async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    args.location().open(Arc::new(SystemClock)).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The bench starts servers of its own: their info lines would only clutter its progress.
    let default_level = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info",
    };
    init_logging(&cli.log_format, default_level);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Keys { command } => keys(command).await,
        Command::Events { command } => events(command).await,
        Command::Listen(args) => listen(args).await,
        Command::Audit {
            command: AuditCommand::Verify { org, store },
        } => audit_verify(org, store).await,
        Command::Bench(args) => tidings::bench::run(args).await,
        Command::Emit(args) => {
            let source = if let Some(path) = args.file {
                EmitSource::Json(path)
            } else if let Some(path) = args.ndjson {
                EmitSource::Ndjson(path)
            } else if let (Some(t), Some(org), Some(actor), Some(subject)) =
                (&args.event_type, &args.org, &args.actor, &args.subject)
            {
                EmitSource::Flags(Box::new(event_from_flags(
                    t,
                    org,
                    args.workspace.as_deref(),
                    actor,
                    subject,
                    args.payload.as_deref(),
                    args.idempotency_key.as_deref(),
                )?))
            } else {
                anyhow::bail!("give --type/--org/--actor/--subject, --file or --ndjson");
            };
            let recorded = emit(&args.ingest_url, &args.key, source).await?;
            for event in recorded {
                println!("{}", serde_json::to_string(&event)?);
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        event_types_file: args.event_types,
        allow_private_webhooks: args.allow_private_webhooks,
        retry_schedule: args.webhook_retry_schedule,
        webhook_concurrency: usize::from(args.webhook_concurrency),
        webhook_lease: args.webhook_lease,
        rate_limit: args.rate_limit,
        rate_limit_burst: args.rate_limit_burst,
        retention: RetentionPolicy {
            events: args.event_retention,
            deliveries: args.delivery_retention,
            audit_records: args.audit_retention,
        },
        ..ServerConfig::new(&args.listen, &args.ingest_listen, args.store.location())
    };
    let mut server = RunningServer::start(&config).await?;
    println!(
        "Tidings is listening: public API http://{} , ingest http://{} , {}",
        server.public_addr, server.ingest_addr, config.store
    );
    let demo = if args.demo {
        let store = Arc::clone(&server.store);
        let (_, ingest_secret) = tidings::keys::create(
            store.as_ref(),
            None,
            vec![Scope::EventsIngest],
            Some("demo producer".into()),
            None,
        )
        .await?;
        let org: OrgId = tidings::demo::SEED_ORG
            .parse()
            .map_err(|e: tidings_domain::IdError| anyhow::anyhow!(e.0))?;
        let (read_key, read_secret) = tidings::keys::create(
            store.as_ref(),
            Some(org),
            vec![
                Scope::EventsRead,
                Scope::WebhooksRead,
                Scope::WebhooksWrite,
                Scope::AuditLogsRead,
            ],
            Some("demo reader".into()),
            None,
        )
        .await?;
        println!(
            "Demo read key for {} ({}): {read_secret}",
            tidings::demo::SEED_ORG,
            read_key.id
        );
        println!(
            "Try: curl -H 'Authorization: Bearer {read_secret}' 'http://{}/v1/events?organization_id={}&type=service_line.activated&from=2026-04-01'",
            server.public_addr,
            tidings::demo::SEED_ORG
        );
        Some(tokio::spawn(tidings::demo::run(
            format!("http://{}", server.ingest_addr),
            ingest_secret,
        )))
    } else {
        None
    };
    tokio::select! {
        result = server.wait() => result?,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            if let Some(demo) = demo {
                demo.abort();
            }
            server.shutdown().await;
        }
    }
    Ok(())
}

async fn events(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::List {
            api,
            filter,
            limit,
            order,
            cursor,
            json,
        } => {
            let mut pairs = filter.pairs();
            pairs.extend(limit.map(|l| ("limit", l.to_string())));
            pairs.extend(order.map(|o| ("order", o)));
            pairs.extend(cursor.map(|c| ("cursor", c)));
            let client = ApiClient::new(&api.url, &api.key);
            let page = client
                .get(&format!("/v1/events?{}", query_string(&pairs)))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let data = page["data"].as_array().cloned().unwrap_or_default();
                print!("{}", tidings::client::render_events(&data));
                if let Some(c) = page["meta"]["cursor"].as_str() {
                    eprintln!("more: --cursor {c}");
                }
            }
        }
        EventsCommand::Get { id, api } => {
            let client = ApiClient::new(&api.url, &api.key);
            let event = client.get(&format!("/v1/events/{id}")).await?;
            println!("{}", serde_json::to_string_pretty(&event)?);
        }
        EventsCommand::Tail { api, filter, json } => {
            let client = ApiClient::new(&api.url, &api.key);
            let path = format!("/v1/events/stream?{}", query_string(&filter.pairs()));
            eprintln!("following {}{path} (Ctrl-C to stop)", api.url);
            client
                .follow(
                    &path,
                    None,
                    |m| async move {
                        match serde_json::from_str::<serde_json::Value>(&m.data) {
                            Ok(e) if !json => println!("{}", tidings::client::event_line(&e)),
                            _ => println!("{}", m.data),
                        }
                        true
                    },
                    10,
                )
                .await?;
        }
    }
    Ok(())
}

async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(s) => SigningSecret::parse(&s).map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        None => {
            let mut bytes = [0u8; 24];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
            SigningSecret::from_random(bytes)
        }
    };
    println!(
        "Forwarding events to {} signed with {}",
        args.forward_to,
        secret.as_str()
    );
    let sender = tidings_webhooks::WebhookClient::new(true)?;
    let client = ApiClient::new(&args.api.url, &args.api.key);
    let path = format!("/v1/events/stream?{}", query_string(&args.filter.pairs()));
    let forward_to = args.forward_to;
    client
        .follow(
            &path,
            None,
            |m| {
                let (sender, secret, forward_to) =
                    (sender.clone(), secret.clone(), forward_to.clone());
                async move {
                    let id = m.id.clone().unwrap_or_default();
                    let event: serde_json::Value =
                        serde_json::from_str(&m.data).unwrap_or_default();
                    let outcome = sender
                        .send(
                            &forward_to,
                            &id,
                            chrono::Utc::now().timestamp(),
                            m.data.into_bytes(),
                            std::slice::from_ref(&secret),
                        )
                        .await;
                    let result = match (outcome.status_code, outcome.error) {
                        (Some(s), _) => s.to_string(),
                        (None, Some(e)) => e.as_str().to_string(),
                        (None, None) => "no answer".into(),
                    };
                    println!(
                        "{id} {:<30} -> {result} ({} ms)",
                        event["type"].as_str().unwrap_or(""),
                        outcome.duration.as_millis()
                    );
                    true
                }
            },
            u32::MAX,
        )
        .await
}

async fn audit_verify(org: Option<String>, store: StoreArgs) -> anyhow::Result<()> {
    let store = open_store(&store).await?;
    let reports = tidings::audit::verify(store.as_ref(), org.as_deref()).await?;
    let mut broken = 0;
    for r in &reports {
        if r.problems.is_empty() {
            println!("{}: intact ({} records)", r.chain, r.records);
        } else {
            broken += 1;
            println!("{}: BROKEN ({} records)", r.chain, r.records);
            for p in &r.problems {
                println!("  {} {}: {}", p.kind, p.record_id, p.detail);
            }
        }
    }
    if reports.is_empty() {
        println!("no audit records");
    }
    if broken > 0 {
        anyhow::bail!("{broken} audit chain(s) failed verification");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            org,
            platform: _,
            scopes,
            description,
            rate_limit,
            store,
        } => {
            let org = org
                .map(|o| o.parse::<OrgId>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--org: {}", e.0))?;
            let scopes =
                Scope::parse_list(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let store = open_store(&store).await?;
            let (_, secret) =
                tidings::keys::create(store.as_ref(), org, scopes, description, rate_limit).await?;
            println!("{secret}");
        }
        KeysCommand::List { store } => {
            let store = open_store(&store).await?;
            print!("{}", tidings::keys::render_table(&store.list_keys().await?));
        }
        KeysCommand::Revoke { id, store } => {
            let store = open_store(&store).await?;
            let key = tidings::keys::revoke(store.as_ref(), &id).await?;
            eprintln!("revoked {}", key.id);
        }
    }
    Ok(())
}
