//! `threadsync bench queue`: enqueue N jobs with batched inserts, work them down with W
//! worker runtimes (in this process or in P worker processes), then measure pickup latency
//! of single jobs on the idle queue.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{self, Scratch};
use crate::pg::Durability;
use crate::queue::{enqueue, enqueue_batch, NewJob};
use crate::worker::Worker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Jobs write nothing; their completions are batched.
    Noop,
    /// Each job writes one row and commits it with its own fenced completion.
    Transactional,
}

#[derive(Debug, clap::Args)]
pub struct QueueBenchArgs {
    /// Jobs to enqueue and work down.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Worker runtimes (each with its own claim loop), spread over the processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Worker processes; 0 runs the workers inside the benchmark process.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Job slots per worker runtime.
    #[arg(long, default_value_t = 250)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Mode::Noop)]
    pub mode: Mode,
    /// Job transactions commit with `synchronous_commit = off` (jobs.toml
    /// `queue.synchronous_commit = false`).
    #[arg(long)]
    pub async_commit: bool,
    /// Single jobs enqueued one by one on the idle queue to measure pickup latency.
    #[arg(long, default_value_t = 200)]
    pub latency_samples: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueBenchReport {
    pub mode: Mode,
    pub jobs: usize,
    pub workers: usize,
    pub processes: usize,
    pub synchronous_commit: bool,
    pub enqueued_per_s: f64,
    pub processed_per_s: f64,
    pub pickup_p50_ms: f64,
    pub pickup_p99_ms: f64,
    /// Transactional mode: every job wrote exactly one row.
    pub exactly_once: Option<bool>,
}

pub async fn run(args: QueueBenchArgs) -> anyhow::Result<QueueBenchReport> {
    anyhow::ensure!(
        args.jobs > 0 && args.workers > 0 && args.concurrency > 0,
        "--jobs, --workers and --concurrency must be positive"
    );
    let scratch = Scratch::create("threadsync_bench", Durability::Durable).await?;
    let result = run_on(&scratch.url, &args).await;
    scratch.close().await;
    result
}

async fn run_on(url: &str, args: &QueueBenchArgs) -> anyhow::Result<QueueBenchReport> {
    let pool = db::connect(url, 8).await?;
    db::migrate(&pool).await?;
    let kind = match args.mode {
        Mode::Noop => "diag.noop",
        Mode::Transactional => "diag.write",
    };

    // Enqueue the backlog before any worker runs, in batches of 5,000.
    let jobs: Vec<NewJob> = (0..args.jobs)
        .map(|_| NewJob::new(kind, serde_json::json!({})))
        .collect();
    let t = Instant::now();
    for chunk in jobs.chunks(5000) {
        enqueue_batch(&pool, chunk).await?;
    }
    let enqueued_per_s = args.jobs as f64 / t.elapsed().as_secs_f64();

    let workers = Workers::start(url, args).await?;
    wait_until_idle(&pool, Duration::from_secs(600)).await?;
    // Server-side clock: from the first claim to the last completion.
    let (span_s,): (f64,) = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM threadsync.jobs WHERE status = 'done'",
    )
    .fetch_one(&pool)
    .await?;
    let processed_per_s = args.jobs as f64 / span_s.max(1e-9);
    let exactly_once = match args.mode {
        Mode::Noop => None,
        Mode::Transactional => {
            let (rows, distinct): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(DISTINCT job_id) FROM threadsync.diag_writes",
            )
            .fetch_one(&pool)
            .await?;
            Some(rows == args.jobs as i64 && distinct == rows)
        }
    };

    let (p50, p99) = pickup_latency(&pool, args.latency_samples).await?;
    workers.stop().await;
    Ok(QueueBenchReport {
        mode: args.mode,
        jobs: args.jobs,
        workers: args.workers,
        processes: args.processes,
        synchronous_commit: !args.async_commit,
        enqueued_per_s,
        processed_per_s,
        pickup_p50_ms: p50,
        pickup_p99_ms: p99,
        exactly_once,
    })
}

async fn wait_until_idle(pool: &PgPool, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM threadsync.jobs WHERE status IN ('pending', 'running'))",
        )
        .fetch_one(pool)
        .await?;
        if !busy {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "the queue did not drain within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enqueues single jobs one at a time on the idle queue; latency is claim time minus
/// enqueue time, both from the server clock.
async fn pickup_latency(pool: &PgPool, samples: usize) -> anyhow::Result<(f64, f64)> {
    let mut ids = Vec::with_capacity(samples);
    for _ in 0..samples {
        ids.push(enqueue(pool, &NewJob::new("diag.noop", serde_json::json!({}))).await?);
        // Wait for it to be picked up before the next one, so each lands on an idle queue.
        let id = *ids.last().unwrap_or(&0);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            let started: bool = sqlx::query_scalar(
                "SELECT started_at IS NOT NULL FROM threadsync.jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            if started {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ms: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM threadsync.jobs
          WHERE id = ANY($1) AND started_at IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        ms.len() == samples,
        "only {} of {samples} latency probes were picked up",
        ms.len()
    );
    ms.sort_by(f64::total_cmp);
    Ok((super::percentile(&ms, 50.0), super::percentile(&ms, 99.0)))
}

/// Worker runtimes under test: in this process, or child `threadsync worker` processes.
enum Workers {
    InProcess {
        stop: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    },
    Processes {
        children: Vec<Child>,
        _config: tempfile::TempPath,
    },
}

impl Workers {
    async fn start(url: &str, args: &QueueBenchArgs) -> anyhow::Result<Workers> {
        if args.processes == 0 {
            let pool = db::connect(url, (args.workers * 16).min(96) as u32).await?;
            let mut cfg = Config::default();
            cfg.queue.tuning.synchronous_commit = !args.async_commit;
            let settings = Arc::new(cfg.queue.clone());
            let stop = CancellationToken::new();
            let tasks = (0..args.workers)
                .map(|i| {
                    let w = Worker::new(
                        pool.clone(),
                        settings.clone(),
                        crate::jobs::registry(&cfg, &crate::sync::Tokens::Env),
                        &format!("bench-{i}"),
                        args.concurrency,
                    );
                    tokio::spawn(w.run(stop.clone()))
                })
                .collect();
            return Ok(Workers::InProcess { stop, tasks });
        }
        let exe = std::env::current_exe().context("locating the threadsync binary")?;
        // An explicit file, so a jobs.toml in the working directory cannot change the run.
        let mut config = tempfile::NamedTempFile::new().context("writing the workers' config")?;
        writeln!(
            config,
            "[queue]\nsynchronous_commit = {}",
            !args.async_commit
        )?;
        let config = config.into_temp_path();
        let per_process = args.workers.div_ceil(args.processes);
        let mut children = Vec::new();
        for i in 0..args.processes {
            let child = Command::new(&exe)
                .args(["worker", "--concurrency", &args.concurrency.to_string()])
                .arg("--config")
                .arg(&config)
                .args([
                    "--runtimes",
                    &per_process.to_string(),
                    "--name",
                    &format!("bench-p{i}"),
                ])
                .env("DATABASE_URL", url)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .context("starting a worker process")?;
            children.push(child);
        }
        Ok(Workers::Processes {
            children,
            _config: config,
        })
    }

    async fn stop(self) {
        match self {
            Workers::InProcess { stop, tasks } => {
                stop.cancel();
                for t in tasks {
                    let _ = t.await;
                }
            }
            Workers::Processes { children, .. } => {
                for mut c in children {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(c.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                    let _ = tokio::task::spawn_blocking(move || c.wait()).await;
                }
            }
        }
    }
}

pub fn print(r: &QueueBenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "mode:            {:?}{}",
        r.mode,
        if r.synchronous_commit {
            ""
        } else {
            " (synchronous_commit = off)"
        }
    );
    println!(
        "jobs:            {} ({} workers, {} processes)",
        r.jobs, r.workers, r.processes
    );
    println!("enqueued:        {:.0} jobs/s", r.enqueued_per_s);
    println!("processed:       {:.0} jobs/s", r.processed_per_s);
    println!(
        "pickup latency:  p50 {:.1} ms, p99 {:.1} ms (single jobs, idle queue)",
        r.pickup_p50_ms, r.pickup_p99_ms
    );
    if let Some(ok) = r.exactly_once {
        println!(
            "exactly once:    {}",
            if ok {
                "yes (one committed row per job)"
            } else {
                "NO"
            }
        );
    }
    Ok(())
}
