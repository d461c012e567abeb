//! The threadsync command line: one subcommand per user task, each a thin call into the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use threadsync::config::Config;
use threadsync::queue::{admin, enqueue, NewJob};
use threadsync::sync::{self, Mode};
use threadsync::worker::Worker;
use threadsync::{bench, db, jobs, progress};

/// glibc's allocator took a fifth of the worker's CPU in the sync benchmark (request and
/// response buffers, JSON values, bound arrays); jemalloc serves the same pattern for less.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "threadsync",
    version,
    about = "Durable PostgreSQL job queue that keeps message threads from messaging providers in sync"
)]
struct Cli {
    /// jobs.toml (default: ./jobs.toml when present, else built-in defaults).
    #[arg(long, global = true, env = "THREADSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text (no colour codes unless stderr is a terminal) or as JSON objects
    /// for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = threadsync::LogFormat::Text)]
    log_format: threadsync::LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply the migrations to DATABASE_URL (idempotent).
    Migrate,
    /// Run one worker process; any number share one database.
    Worker {
        /// Job slots (default: queue.concurrency from jobs.toml).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Name shown as the lease owner (default: host-pid).
        #[arg(long)]
        name: Option<String>,
        /// Independent claim loops in this process, each with --concurrency slots.
        #[arg(long, default_value_t = 1)]
        runtimes: usize,
        /// Start even when a configured account's token variable is unset or empty: those
        /// accounts are skipped (logged once) and their schedules do not fire from here.
        #[arg(long)]
        skip_accounts_without_token: bool,
        /// Serve this process's Prometheus metrics (jobs by kind and outcome, job
        /// durations, provider requests, throttling, pacing wait) at ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Enqueue one job.
    Enqueue {
        kind: String,
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// RFC 3339 time, e.g. 2026-11-22T18:00:00Z.
        #[arg(long)]
        run_at: Option<String>,
        #[arg(long)]
        dedupe_key: Option<String>,
        #[arg(long)]
        concurrency_key: Option<String>,
        #[arg(long, default_value_t = 1)]
        concurrency_limit: i32,
        #[arg(long)]
        max_attempts: Option<i32>,
    },
    /// Inspect and manage jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Manage sync runs.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// The registered accounts: list them, pause or resume one.
    #[command(subcommand)]
    Accounts(AccountsCmd),
    /// The worker runtimes alive now (they register and heartbeat in the database).
    Workers {
        /// Also show the rows of workers that stopped heartbeating.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API (/v1), health checks and metrics until SIGTERM. Needs
    /// THREADSYNC_ADMIN_TOKEN; THREADSYNC_APP_TOKEN optionally sets the app token.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Full resync of an account (one per account at a time).
    Resync {
        account: String,
        /// Show a live progress bar until the run finishes.
        #[arg(long)]
        follow: bool,
        /// Print what was started (and, with --follow, the final status) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Incremental sync of an account.
    Sync {
        account: String,
        /// Show a live progress bar until the run finishes.
        #[arg(long)]
        follow: bool,
        /// Print what was started (and, with --follow, the final status) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch one thread now, ahead of bulk work.
    Refresh { account: String, thread_id: String },
    /// A run's counters, state and errors, and why an account is paused.
    Status {
        run_id: Option<i64>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sync thousands of threads from a provider simulator (eBay; --provider smseagle,
    /// facebook or hostaway), with a live progress bar.
    Demo(threadsync::demo::DemoArgs),
    /// Serve one provider simulator over HTTP until Ctrl-C.
    Sim(threadsync::sim::SimArgs),
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Jobs, newest first.
    List {
        /// Only jobs in this status (pending, running, done, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this kind, e.g. ebay.conversation.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only jobs older than this id: the next page after a list that stopped at --limit.
        #[arg(long)]
        before_id: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job in full: attempts, errors, keys, lease, payload, checkpoint.
    Show {
        /// The job's id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put a failed or cancelled job back to pending.
    Retry {
        /// The job's id.
        id: i64,
    },
    /// Cancel a pending or running job (a running job's commit is then rejected).
    Cancel {
        /// The job's id.
        id: i64,
    },
}

#[derive(Subcommand)]
enum AccountsCmd {
    /// Provider, pause state and reason, watermark and last run of every account.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Park the account's jobs (no attempts used) until it is resumed.
    Pause {
        account: String,
        /// Shown with the pause.
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// End any pause of the account and wake its parked jobs.
    Resume { account: String },
}

#[derive(Subcommand)]
enum RunsCmd {
    /// Put every failed or cancelled job of a run back to pending and reopen the run; it
    /// ends done once they succeed.
    Retry {
        /// The run id (`threadsync status --account A` shows the last one).
        run_id: i64,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Queue throughput and pickup latency.
    Queue(bench::queue::QueueBenchArgs),
    /// Full resync throughput against the eBay simulator.
    Sync(bench::sync::SyncBenchArgs),
    /// Full resyncs of many eBay accounts at once, each held to its own request rate.
    Fleet(bench::fleet::FleetBenchArgs),
    /// Simulator start-up time and requests/s from a local load client.
    Sim(threadsync::sim::SimBenchArgs),
    /// Thread refreshes/s and latency through `serve`, with the dedupe check.
    Api(bench::api::ApiBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Interactive commands keep the terminal for their own output; workers log at info.
    let level = match cli.command {
        Cmd::Demo(_) | Cmd::Bench(_) | Cmd::Resync { .. } | Cmd::Sync { .. } => "warn,sqlx=error",
        _ => "info,sqlx=warn",
    };
    threadsync::init_logging(level, cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is gone.
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error as one line: its causes joined by ": ", each said once. A PostgreSQL error
/// shows its message only (sqlx's display adds the server's source line, and the error
/// is its own cause again).
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(d)) => d.message().to_string(),
            _ => match cause.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                Some(d) => d.message().to_string(),
                None => cause.to_string(),
            },
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Writes a command's output to stdout. A reader that stops early (`threadsync jobs list
/// --json | head -1`) is no error: the rest of the output is dropped and the command
/// succeeds, quietly, as other Unix tools do. SIGPIPE stays ignored (Rust's default), so
/// a write to a database socket the server closed stays an error the command reports.
fn emit(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// `value` as pretty JSON on standard output.
fn emit_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    emit(|o| writeln!(o, "{text}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load_or_default(cli.config.as_deref())?;
    match cli.command {
        Cmd::Migrate => {
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            db::migrate(&pool).await?;
            // So refresh_thread works before any worker has started.
            sync::register_accounts(&pool, &cfg.accounts).await?;
            emit(|o| {
                writeln!(
                    o,
                    "migrations applied; {} account(s) of the config registered",
                    cfg.accounts.len()
                )
            })
        }
        Cmd::Serve { listen } => {
            let tokens = threadsync::http::auth::Tokens::from_env()?;
            let pool = db::connect(&db::url_from_env()?, 8).await?;
            db::migrate(&pool).await?;
            sync::register_accounts(&pool, &cfg.accounts).await?;
            threadsync::http::serve(pool, tokens, listen, shutdown_signal()).await
        }
        Cmd::Accounts(cmd) => accounts(cmd).await,
        Cmd::Workers { all, json } => {
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            let rows = threadsync::queue::workers::list(&pool, all).await?;
            if json {
                return emit_json(&rows);
            }
            emit(|o| {
                if rows.is_empty() {
                    return writeln!(o, "no worker is alive");
                }
                writeln!(
                    o,
                    "{:<28} {:<16} {:>7} {:>11}  last heartbeat",
                    "name", "host", "pid", "slots used"
                )?;
                for w in &rows {
                    writeln!(
                        o,
                        "{:<28} {:<16} {:>7} {:>11}  {}{}",
                        w.name,
                        w.host,
                        w.pid,
                        format!("{}/{}", w.slots_in_use, w.slots),
                        when(w.last_heartbeat),
                        if w.alive_until < chrono::Utc::now() {
                            "  (dead)"
                        } else {
                            ""
                        }
                    )?;
                }
                Ok(())
            })
        }
        Cmd::Runs(RunsCmd::Retry { run_id }) => {
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            let n = sync::retry_run(&pool, run_id).await?;
            emit(|o| {
                writeln!(
                    o,
                    "run {run_id}: {n} job(s) pending again; the run ends when they do"
                )
            })
        }
        Cmd::Worker {
            concurrency,
            name,
            runtimes,
            skip_accounts_without_token,
            metrics,
        } => {
            run_worker(
                cfg,
                concurrency,
                name,
                runtimes,
                skip_accounts_without_token,
                metrics,
            )
            .await
        }
        Cmd::Enqueue {
            kind,
            payload,
            priority,
            run_at,
            dedupe_key,
            concurrency_key,
            concurrency_limit,
            max_attempts,
        } => {
            anyhow::ensure!(
                !kind.trim().is_empty(),
                "the job kind must not be empty (e.g. diag.noop, sync.start)"
            );
            let payload: serde_json::Value = serde_json::from_str(&payload)
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
            anyhow::ensure!(
                payload.is_object(),
                "--payload must be a JSON object, e.g. '{{\"account\": \"ebay-main\"}}' (got {payload})"
            );
            let mut job = NewJob::new(kind, payload).priority(priority);
            if let Some(t) = run_at {
                let at = DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| anyhow::anyhow!("--run-at {t:?} is not an RFC 3339 time: {e}"))?;
                job = job.run_at(at.with_timezone(&Utc));
            }
            if let Some(k) = dedupe_key {
                job = job.dedupe(k);
            }
            if let Some(k) = concurrency_key {
                anyhow::ensure!(
                    concurrency_limit >= 1,
                    "--concurrency-limit must be at least 1"
                );
                job = job.concurrency(k, concurrency_limit);
            }
            if let Some(m) = max_attempts {
                anyhow::ensure!(m >= 1, "--max-attempts must be at least 1");
                job = job.max_attempts(m);
            }
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            let id = enqueue(&pool, &job).await?;
            emit(|o| writeln!(o, "{id}"))
        }
        Cmd::Jobs(cmd) => run_jobs(cmd).await,
        Cmd::Bench(BenchCmd::Queue(args)) => {
            let json = args.json;
            let report = bench::queue::run(args).await?;
            bench::queue::print(&report, json)
        }
        Cmd::Bench(BenchCmd::Sync(args)) => {
            let json = args.json;
            let report = bench::sync::run(args).await?;
            bench::sync::print(&report, json)
        }
        Cmd::Bench(BenchCmd::Fleet(args)) => {
            let json = args.json;
            let report = bench::fleet::run(args).await?;
            bench::fleet::print(&report, json)?;
            bench::fleet::verdict(&report)
        }
        Cmd::Bench(BenchCmd::Api(args)) => {
            let json = args.json;
            let report = bench::api::run(args).await?;
            bench::api::print(&report, json)
        }
        Cmd::Resync {
            account,
            follow,
            json,
        } => start_sync(&cfg, &account, Mode::Full, follow, json).await,
        Cmd::Sync {
            account,
            follow,
            json,
        } => start_sync(&cfg, &account, Mode::Incremental, follow, json).await,
        Cmd::Refresh { account, thread_id } => {
            cfg.account(&account)?;
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            sync::register_accounts(&pool, &cfg.accounts).await?;
            let id: i64 = sqlx::query_scalar("SELECT threadsync.refresh_thread($1, $2)")
                .bind(&account)
                .bind(&thread_id)
                .fetch_one(&pool)
                .await
                .map_err(|e| match e.as_database_error() {
                    // The function's own check (bad thread id, an account without thread fetches).
                    Some(d) if d.code().as_deref() == Some("22023") => {
                        anyhow::anyhow!("{}", d.message())
                    }
                    _ => e.into(),
                })?;
            emit(|o| writeln!(o, "refresh of thread {thread_id} queued as job {id}"))
        }
        Cmd::Status {
            run_id,
            account,
            json,
        } => status(run_id, account, json).await,
        Cmd::Demo(args) => threadsync::demo::run(args).await,
        Cmd::Bench(BenchCmd::Sim(args)) => threadsync::sim::bench_cli(args).await,
        Cmd::Sim(args) => threadsync::sim::run_cli(args).await,
    }
}

async fn run_worker(
    mut cfg: Config,
    concurrency: Option<usize>,
    name: Option<String>,
    runtimes: usize,
    skip_accounts_without_token: bool,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let concurrency = concurrency.unwrap_or(cfg.queue.tuning.concurrency);
    let slots = threadsync::queue::Tuning::CONCURRENCY;
    anyhow::ensure!(
        i64::try_from(concurrency).is_ok_and(|c| slots.contains(&c)),
        "--concurrency must be {}..={}",
        slots.start(),
        slots.end()
    );
    anyhow::ensure!(runtimes >= 1, "--runtimes must be at least 1");
    // Before anything else: a worker that cannot run an account's jobs must not start
    // and fail every one of them.
    let missing = accounts_without_token(&cfg);
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|(id, problem)| format!("{id:?} ({problem})"))
            .collect::<Vec<_>>()
            .join(", ");
        let many = missing.len() > 1;
        anyhow::ensure!(
            skip_accounts_without_token,
            "no token for account{} {list}: set {}, or start the worker with --skip-accounts-without-token",
            if many { "s" } else { "" },
            if many { "them" } else { "it" },
        );
        // Its jobs still fail here with the missing variable named, should this worker
        // claim one; its schedules are left to workers that hold the token.
        cfg.queue.schedules.retain(|s| {
            let account = s.payload.get("account").and_then(|a| a.as_str());
            !account.is_some_and(|a| missing.iter().any(|(id, _)| id == a))
        });
        tracing::warn!(
            "skipping account{} without a token: {list}; their schedules do not fire from this worker",
            if many { "s" } else { "" }
        );
    }
    let url = db::url_from_env()?;
    // Handlers hold a connection only while they read (this pool) or commit (each runtime's
    // own transaction pool), never during HTTP calls.
    let pool = db::connect(&url, (runtimes * concurrency.min(8) / 2 + 2) as u32).await?;
    db::migrate(&pool).await?;
    threadsync::sync::register_accounts(&pool, &cfg.accounts).await?;
    let name = name.unwrap_or_else(threadsync::default_worker_name);
    let settings = Arc::new(cfg.queue.clone());
    let stop = CancellationToken::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: no new claims; finishing in-flight jobs");
        signals.cancel();
    });
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen: {e}"))?;
        let stopped = stop.clone();
        tokio::spawn(threadsync::http::metrics::serve_process(
            listener,
            async move { stopped.cancelled().await },
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..runtimes {
        let n = if runtimes == 1 {
            name.clone()
        } else {
            format!("{name}/{i}")
        };
        let w = Worker::new(
            pool.clone(),
            settings.clone(),
            jobs::registry(&cfg, &sync::Tokens::Env),
            &n,
            concurrency,
        );
        tasks.push(tokio::spawn(w.run(stop.clone())));
    }
    for t in tasks {
        t.await.context("worker task")??;
    }
    Ok(())
}

/// The configured accounts whose token variable this process cannot read, each with why.
fn accounts_without_token(cfg: &Config) -> Vec<(String, String)> {
    cfg.accounts
        .iter()
        .filter_map(|a| {
            let problem = match std::env::var(&a.token_env) {
                Ok(v) if v.trim().is_empty() => "is empty",
                Ok(_) => return None,
                Err(std::env::VarError::NotPresent) => "is not set",
                Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
            };
            Some((a.id.clone(), format!("{} {problem}", a.token_env)))
        })
        .collect()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_jobs(cmd: JobsCmd) -> anyhow::Result<()> {
    let pool = db::connect(&db::url_from_env()?, 2).await?;
    match cmd {
        JobsCmd::List {
            status,
            kind,
            limit,
            before_id,
            json,
        } => {
            if let Some(s) = &status {
                anyhow::ensure!(
                    admin::STATUSES.contains(&s.as_str()),
                    "unknown status {s:?} (one of {})",
                    admin::STATUSES.join(", ")
                );
            }
            let filter = admin::Filter {
                status,
                kind,
                limit,
                before_id,
                ..admin::Filter::default()
            };
            let rows = admin::list(&pool, &filter).await?;
            // A full page may have more behind it: say so, and how to read on.
            let more = (rows.len() as i64 >= limit)
                .then(|| rows.last().map(|j| j.id))
                .flatten();
            if json {
                // A script compares the array's length with --limit.
                emit_json(&rows)?;
            } else {
                emit(|o| {
                    writeln!(
                        o,
                        "{:>8}  {:<24} {:<9} {:>8}  {:<20}  last error",
                        "id", "kind", "status", "attempts", "run at"
                    )?;
                    for j in rows {
                        let max = j
                            .max_attempts
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-".into());
                        writeln!(
                            o,
                            "{:>8}  {:<24} {:<9} {:>8}  {:<20}  {}",
                            j.id,
                            j.kind,
                            j.status,
                            format!("{}/{}", j.attempts, max),
                            j.run_at.format("%Y-%m-%d %H:%M:%S"),
                            j.last_error.unwrap_or_default()
                        )?;
                    }
                    if let Some(last) = more {
                        writeln!(
                            o,
                            "stopped at --limit {limit}; older jobs: --before-id {last}"
                        )?;
                    }
                    Ok(())
                })?;
            }
        }
        JobsCmd::Show { id, json } => {
            let j = admin::show(&pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no job with id {id}"))?;
            if json {
                emit_json(&j)?;
            } else {
                let lease = match (&j.lease_owner, j.status.as_str()) {
                    (Some(owner), "running") => {
                        format!("{owner} until {}", when(j.lease_expires_at))
                    }
                    (Some(owner), _) => format!("last held by {owner}"),
                    (None, _) => "-".into(),
                };
                emit(|o| {
                    writeln!(o, "job {}  {}  {}", j.id, j.kind, j.status)?;
                    writeln!(
                        o,
                        "  attempts:    {} (max {})",
                        j.attempts,
                        j.max_attempts
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "from jobs.toml".into())
                    )?;
                    // A job that succeeded after a retry keeps its earlier error: not current.
                    let label = match j.status.as_str() {
                        "done" => "earlier error (then succeeded)",
                        "failed" | "cancelled" => "error",
                        _ => "last error",
                    };
                    writeln!(o, "  {label}:  {}", j.last_error.as_deref().unwrap_or("-"))?;
                    writeln!(
                        o,
                        "  priority:    {}   run at: {}   run: {}",
                        j.priority,
                        when(j.run_at),
                        j.run_id.map_or_else(|| "-".into(), |r| r.to_string())
                    )?;
                    writeln!(
                        o,
                        "  created:     {}   started: {}   finished: {}",
                        when(j.created_at),
                        when(j.started_at),
                        when(j.finished_at)
                    )?;
                    writeln!(
                        o,
                        "  dedupe key:  {}",
                        j.dedupe_key.as_deref().unwrap_or("-")
                    )?;
                    writeln!(
                        o,
                        "  concurrency: {}",
                        j.concurrency_key.as_deref().unwrap_or("-")
                    )?;
                    writeln!(o, "  lease:       {lease}")?;
                    writeln!(o, "  payload:     {}", j.payload)?;
                    if let Some(cp) = &j.checkpoint {
                        writeln!(o, "  checkpoint:  {cp}")?;
                    }
                    Ok(())
                })?;
            }
        }
        JobsCmd::Retry { id } => {
            admin::retry(&pool, id).await?;
            emit(|o| writeln!(o, "job {id} is pending again"))?;
        }
        JobsCmd::Cancel { id } => {
            admin::cancel(&pool, id).await?;
            emit(|o| writeln!(o, "job {id} cancelled"))?;
        }
    }
    Ok(())
}

async fn start_sync(
    cfg: &Config,
    account: &str,
    mode: Mode,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    cfg.account(account)?;
    let pool = db::connect(&db::url_from_env()?, 2).await?;
    db::migrate(&pool).await?;
    sync::register_accounts(&pool, &cfg.accounts).await?;
    let mut tx = pool.begin().await?;
    let requested = sync::request_run(&mut tx, account, mode).await?;
    tx.commit().await?;
    if json {
        let id = match requested {
            sync::Requested::Started { run_id } | sync::Requested::Active { run_id } => run_id,
            sync::Requested::Queued { after_run } => after_run,
        };
        let end = match follow {
            true => Some(progress::wait(&pool, id).await?),
            false => None,
        };
        emit_json(
            &serde_json::json!({"account": account, "mode": mode, "request": requested, "run": end}),
        )?;
        if let Some(s) = end {
            anyhow::ensure!(s.state == "done", "run {id} ended {}", s.state);
        }
        return Ok(());
    }
    let id = match requested {
        sync::Requested::Started { run_id } => {
            emit(|o| {
                writeln!(
                    o,
                    "{} sync of {account} started: run {run_id}",
                    mode.as_str()
                )
            })?;
            run_id
        }
        sync::Requested::Active { run_id } => {
            emit(|o| writeln!(o, "a sync of {account} is already running: run {run_id}"))?;
            run_id
        }
        sync::Requested::Queued { after_run } => {
            emit(|o| {
                writeln!(
                    o,
                    "an incremental sync of {account} is running (run {after_run}); the full resync starts when it ends"
                )
            })?;
            after_run
        }
    };
    if follow {
        let s = progress::follow(&pool, id, mode.as_str()).await?;
        emit(|o| progress::print_status(o, &s))?;
        anyhow::ensure!(s.state == "done", "run {id} ended {}", s.state);
    }
    Ok(())
}

async fn accounts(cmd: AccountsCmd) -> anyhow::Result<()> {
    let pool = db::connect(&db::url_from_env()?, 2).await?;
    match cmd {
        AccountsCmd::List { json } => {
            let rows = sync::runs::accounts(&pool, None).await?;
            if json {
                return emit_json(&rows);
            }
            emit(|o| {
                for a in &rows {
                    let paused = match (&a.paused_until, &a.pause_reason) {
                        (Some(u), r) if *u > chrono::Utc::now() => {
                            format!("PAUSED until {}: {}", when(*u), r.as_deref().unwrap_or("-"))
                        }
                        _ => "active".into(),
                    };
                    writeln!(o, "{} ({}): {paused}", a.id, a.provider)?;
                    let last = match (a.last_run_id, &a.last_run_mode, &a.last_run_state) {
                        (Some(id), Some(m), Some(st)) => format!("run {id} ({m}) {st}"),
                        _ => "no runs yet".into(),
                    };
                    writeln!(
                        o,
                        "  watermark {}   last {last}{}",
                        when(a.synced_from),
                        a.queued_mode
                            .as_deref()
                            .map(|m| format!("   queued: {m}"))
                            .unwrap_or_default()
                    )?;
                }
                Ok(())
            })
        }
        AccountsCmd::Pause { account, reason } => {
            anyhow::ensure!(
                sync::flow::pause_by_operator(&pool, &account, &reason).await?,
                "unknown account {account:?}"
            );
            emit(|o| writeln!(o, "account {account} paused: {reason}"))
        }
        AccountsCmd::Resume { account } => {
            anyhow::ensure!(
                sync::flow::resume(&pool, &account).await?,
                "unknown account {account:?}"
            );
            emit(|o| writeln!(o, "account {account} resumed"))
        }
    }
}

async fn status(run_id: Option<i64>, account: Option<String>, json: bool) -> anyhow::Result<()> {
    let pool = db::connect(&db::url_from_env()?, 2).await?;
    let (run_id, acct) = match (run_id, &account) {
        (Some(id), _) => (Some(id), None),
        (None, Some(a)) => {
            let st = sync::account_status(&pool, a)
                .await?
                .ok_or_else(|| anyhow::anyhow!("unknown account {a:?}"))?;
            (sync::latest_run(&pool, a).await?, Some(st))
        }
        (None, None) => anyhow::bail!("give a RUN_ID or --account ACCOUNT"),
    };
    let run = match run_id {
        Some(id) => Some(
            sync::run_status(&pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no sync run {id}"))?,
        ),
        None => None,
    };
    if json {
        return emit_json(&serde_json::json!({"account": acct, "run": run}));
    }
    emit(|o| {
        if let Some(a) = &acct {
            writeln!(
                o,
                "account {} ({}): {} threads, {} messages",
                a.id, a.provider, a.threads, a.messages
            )?;
            match (&a.paused_until, &a.pause_reason) {
                (Some(until), reason) if *until > chrono::Utc::now() => writeln!(
                    o,
                    "  PAUSED until {until}: {}",
                    reason.as_deref().unwrap_or("-")
                )?,
                _ => writeln!(o, "  not paused")?,
            }
        }
        match &run {
            Some(s) => progress::print_status(o, s),
            None => writeln!(o, "no sync runs yet"),
        }
    })
}

/// A timestamp for people: to the millisecond in UTC, or "-" when unset.
fn when(t: impl Into<Option<chrono::DateTime<chrono::Utc>>>) -> String {
    t.into().map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}
