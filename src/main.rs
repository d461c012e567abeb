//! The threadsync command line: one subcommand per user task, each a thin call into the library.

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
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Full resync of an account (one per account at a time).
    Resync {
        account: String,
        /// Show a live progress bar until the run finishes.
        #[arg(long)]
        follow: bool,
    },
    /// Incremental sync of an account.
    Sync {
        account: String,
        #[arg(long)]
        follow: bool,
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
    /// Sync thousands of threads from the eBay simulator, with a live progress bar.
    Demo(threadsync::demo::DemoArgs),
    /// Serve one provider simulator over HTTP until Ctrl-C.
    Sim(threadsync::sim::SimArgs),
}

#[derive(Subcommand)]
enum JobsCmd {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    Retry {
        id: i64,
    },
    Cancel {
        id: i64,
    },
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
    /// Simulator start-up time and requests/s from a local load client.
    Sim(threadsync::sim::SimBenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Interactive commands keep the terminal for their own output; workers log at info.
    let level = match cli.command {
        Cmd::Demo(_) | Cmd::Bench(_) | Cmd::Resync { .. } | Cmd::Sync { .. } => "warn,sqlx=error",
        _ => "info,sqlx=warn",
    };
    threadsync::init_logging(level);
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load_or_default(cli.config.as_deref())?;
    match cli.command {
        Cmd::Migrate => {
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            db::migrate(&pool).await?;
            // So refresh_thread works before any worker has started.
            sync::register_accounts(&pool, &cfg.accounts).await?;
            println!(
                "migrations applied; {} account(s) of the config registered",
                cfg.accounts.len()
            );
            Ok(())
        }
        Cmd::Runs(RunsCmd::Retry { run_id }) => {
            let pool = db::connect(&db::url_from_env()?, 2).await?;
            let n = sync::retry_run(&pool, run_id).await?;
            println!("run {run_id}: {n} job(s) pending again; the run ends when they do");
            Ok(())
        }
        Cmd::Worker {
            concurrency,
            name,
            runtimes,
        } => run_worker(cfg, concurrency, name, runtimes).await,
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
            let payload: serde_json::Value = serde_json::from_str(&payload)
                .map_err(|e| anyhow::anyhow!("--payload is not valid JSON: {e}"))?;
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
            println!("{id}");
            Ok(())
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
        Cmd::Resync { account, follow } => start_sync(&cfg, &account, Mode::Full, follow).await,
        Cmd::Sync { account, follow } => {
            start_sync(&cfg, &account, Mode::Incremental, follow).await
        }
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
            println!("refresh of thread {thread_id} queued as job {id}");
            Ok(())
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
    cfg: Config,
    concurrency: Option<usize>,
    name: Option<String>,
    runtimes: usize,
) -> anyhow::Result<()> {
    let url = db::url_from_env()?;
    let concurrency = concurrency.unwrap_or(cfg.queue.tuning.concurrency);
    anyhow::ensure!(
        concurrency >= 1 && runtimes >= 1,
        "--concurrency and --runtimes must be at least 1"
    );
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
            json,
        } => {
            if let Some(s) = &status {
                anyhow::ensure!(
                    admin::STATUSES.contains(&s.as_str()),
                    "unknown status {s:?} (one of {})",
                    admin::STATUSES.join(", ")
                );
            }
            let rows = admin::list(&pool, status.as_deref(), kind.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>8}  {:<24} {:<9} {:>8}  {:<20}  last error",
                    "id", "kind", "status", "attempts", "run at"
                );
                for j in rows {
                    let max = j
                        .max_attempts
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:>8}  {:<24} {:<9} {:>8}  {:<20}  {}",
                        j.id,
                        j.kind,
                        j.status,
                        format!("{}/{}", j.attempts, max),
                        j.run_at.format("%Y-%m-%d %H:%M:%S"),
                        j.last_error.unwrap_or_default()
                    );
                }
            }
        }
        JobsCmd::Show { id, json } => {
            let j = admin::show(&pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no job with id {id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("job {}  {}  {}", j.id, j.kind, j.status);
                println!(
                    "  attempts:    {} (max {})",
                    j.attempts,
                    j.max_attempts
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "from jobs.toml".into())
                );
                println!("  last error:  {}", j.last_error.as_deref().unwrap_or("-"));
                println!(
                    "  priority:    {}   run at: {}   run: {}",
                    j.priority,
                    when(j.run_at),
                    j.run_id.map_or_else(|| "-".into(), |r| r.to_string())
                );
                println!(
                    "  created:     {}   started: {}   finished: {}",
                    when(j.created_at),
                    when(j.started_at),
                    when(j.finished_at)
                );
                println!("  dedupe key:  {}", j.dedupe_key.as_deref().unwrap_or("-"));
                println!(
                    "  concurrency: {}",
                    j.concurrency_key.as_deref().unwrap_or("-")
                );
                let lease = match (&j.lease_owner, j.status.as_str()) {
                    (Some(owner), "running") => {
                        format!("{owner} until {}", when(j.lease_expires_at))
                    }
                    (Some(owner), _) => format!("last held by {owner}"),
                    (None, _) => "-".into(),
                };
                println!("  lease:       {lease}");
                println!("  payload:     {}", j.payload);
                if let Some(cp) = &j.checkpoint {
                    println!("  checkpoint:  {cp}");
                }
            }
        }
        JobsCmd::Retry { id } => {
            admin::retry(&pool, id).await?;
            println!("job {id} is pending again");
        }
        JobsCmd::Cancel { id } => {
            admin::cancel(&pool, id).await?;
            println!("job {id} cancelled");
        }
    }
    Ok(())
}

async fn start_sync(cfg: &Config, account: &str, mode: Mode, follow: bool) -> anyhow::Result<()> {
    cfg.account(account)?;
    let pool = db::connect(&db::url_from_env()?, 2).await?;
    db::migrate(&pool).await?;
    sync::register_accounts(&pool, &cfg.accounts).await?;
    let mut tx = pool.begin().await?;
    let (id, created) = sync::start_run(&mut tx, account, mode).await?;
    tx.commit().await?;
    if created {
        println!("{} sync of {account} started: run {id}", mode.as_str());
    } else {
        println!("a sync of {account} is already running: run {id}");
    }
    if follow {
        let s = progress::follow(&pool, id, mode.as_str()).await?;
        progress::print_status(&s);
        anyhow::ensure!(s.state == "done", "run {id} ended {}", s.state);
    }
    Ok(())
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
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"account": acct, "run": run}))?
        );
        return Ok(());
    }
    if let Some(a) = &acct {
        println!(
            "account {} ({}): {} threads, {} messages",
            a.id, a.provider, a.threads, a.messages
        );
        match (&a.paused_until, &a.pause_reason) {
            (Some(until), reason) if *until > chrono::Utc::now() => {
                println!(
                    "  PAUSED until {until}: {}",
                    reason.as_deref().unwrap_or("-")
                )
            }
            _ => println!("  not paused"),
        }
    }
    match &run {
        Some(s) => progress::print_status(s),
        None => println!("no sync runs yet"),
    }
    Ok(())
}

/// A timestamp for people: to the millisecond in UTC, or "-" when unset.
fn when(t: impl Into<Option<chrono::DateTime<chrono::Utc>>>) -> String {
    t.into().map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}
