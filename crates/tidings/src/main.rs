//! `tidings`: the event stream and webhook server, and its command-line tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tidings::emit::{EmitSource, emit, event_from_flags};
use tidings::server::{RunningServer, ServerConfig};
use tidings_domain::{OrgId, Scope};
use tidings_store::{SqliteStore, Store};

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
}

#[derive(Args)]
struct StoreArgs {
    /// Directory of the embedded store.
    #[arg(long, env = "TIDINGS_DATA_DIR", default_value = "./tidings-data")]
    data_dir: PathBuf,
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

fn open_store(args: &StoreArgs) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(&args.data_dir)
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))
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
        listen: args.listen,
        ingest_listen: args.ingest_listen,
        data_dir: args.store.data_dir,
        event_types_file: args.event_types,
    };
    let mut server = RunningServer::start(&config).await?;
    println!(
        "Tidings is listening: public API http://{} , ingest http://{} , data in {}",
        server.public_addr,
        server.ingest_addr,
        config.data_dir.display()
    );
    let demo = if args.demo {
        let store = Arc::clone(&server.store);
        let (_, ingest_secret) = tidings::keys::create(
            store.as_ref(),
            None,
            vec![Scope::EventsIngest],
            Some("demo producer".into()),
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
            store,
        } => {
            let org = org
                .map(|o| o.parse::<OrgId>())
                .transpose()
                .map_err(|e| anyhow::anyhow!("--org: {}", e.0))?;
            let scopes =
                Scope::parse_list(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let store = open_store(&store)?;
            let (_, secret) = tidings::keys::create(&store, org, scopes, description).await?;
            println!("{secret}");
        }
        KeysCommand::List { store } => {
            let store = open_store(&store)?;
            print!("{}", tidings::keys::render_table(&store.list_keys().await?));
        }
        KeysCommand::Revoke { id, store } => {
            let store = open_store(&store)?;
            let key = tidings::keys::revoke(&store, &id).await?;
            eprintln!("revoked {}", key.id);
        }
    }
    Ok(())
}
