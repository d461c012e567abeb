//! `threadsync bench fleet`: full resyncs of many eBay accounts at once, every one held to
//! its own request rate by the simulator (429 above it, sliding 1 s window) and configured
//! with the same rate. All runs start in one transaction; the report sets the last finish
//! against the floor no client can beat (the busiest account's calls over the rate), shows
//! how the finishes spread, how many worker slots were in use, and compares every account
//! with the simulator's truth.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::percentile;
use super::sync::{Lab, LabAccount, LabSetup};
use crate::pg::Durability;
use crate::sim::SimConfig;
use crate::sync::{self, Mode};

/// `--skewed`: one large account and many small ones.
pub const SKEW_BIG_THREADS: usize = 5000;
pub const SKEW_SMALL_ACCOUNTS: usize = 50;
pub const SKEW_SMALL_THREADS: usize = 50;

/// How often the runs' states and the running jobs are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct FleetBenchArgs {
    /// eBay accounts, each its own simulator account (required unless --skewed, refused
    /// with it).
    #[arg(long)]
    pub accounts: Option<usize>,
    /// Threads per account (required unless --skewed, refused with it).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Mean messages per thread.
    #[arg(long, default_value_t = 5)]
    pub messages: usize,
    /// Requests per second per account (required): the simulator answers 429 above it in
    /// any sliding 1 s window, and every account is configured with it.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Worker processes (`threadsync worker`); 0 runs two worker runtimes in this process.
    #[arg(long, default_value_t = 2)]
    pub processes: usize,
    /// Job slots per worker process or runtime (default: the worker's own,
    /// queue.concurrency, 32).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The simulator answers each request after this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Requests in flight per account, fleet-wide (default: the account default,
    /// max_in_flight = 10).
    #[arg(long)]
    pub in_flight: Option<i32>,
    /// One account of 5000 threads and 50 accounts of 50 threads, all at --rate-limit;
    /// --accounts and --threads are refused with it.
    #[arg(long)]
    pub skewed: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Per-account elapsed times, from its run's start to its finish (seconds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Spread {
            min: percentile(&v, 0.0),
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            max: percentile(&v, 100.0),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AccountFigures {
    pub account: String,
    pub threads: usize,
    pub messages: usize,
    /// The run's final state: done or failed.
    pub state: String,
    pub last_error: Option<String>,
    /// From the run's start to its finish, on the database's clock.
    pub elapsed_s: f64,
    /// Every HTTP call the simulator answered for this account (429s included).
    pub http_calls: u64,
    pub min_http_calls: u64,
    pub throttled_429: u64,
    pub max_rps_1s: u64,
    /// http_calls / rate limit, and elapsed over it.
    pub floor_s: f64,
    pub floor_ratio: f64,
    pub exact: bool,
}

/// `--skewed`: how the small accounts fared next to the big one, each against its own
/// floor (its calls / rate limit).
#[derive(Debug, Serialize)]
pub struct SkewFigures {
    pub big_account: String,
    pub big_threads: usize,
    pub big_ratio: f64,
    pub small_accounts: usize,
    pub small_threads: usize,
    pub small_ratio_median: f64,
    pub small_ratio_max: f64,
    pub small_ratio_max_account: String,
}

#[derive(Debug, Serialize)]
pub struct FleetReport {
    pub accounts: usize,
    pub skewed: bool,
    /// What the simulator holds, all accounts together.
    pub threads: usize,
    pub messages: usize,
    pub rate_limit: f64,
    pub processes: usize,
    /// None: the worker's default.
    pub concurrency: Option<usize>,
    /// None: the account default.
    pub in_flight: Option<i32>,
    pub latency_ms: u64,
    /// From the start of the runs (one transaction) to the last finish.
    pub wall_s: f64,
    /// The busiest account's calls / rate limit: no client finishes every account sooner.
    pub floor_s: f64,
    pub floor_account: String,
    pub floor_ratio: f64,
    pub http_calls: u64,
    pub min_http_calls: u64,
    pub throttled_429: u64,
    pub finish_s: Spread,
    /// Jobs in state running, sampled every 100 ms while any run was open.
    pub slots_peak: i64,
    pub slots_mean: f64,
    pub slot_samples: usize,
    pub accounts_exact: usize,
    pub accounts_differing: usize,
    pub differing: Vec<String>,
    /// "account: last error" for every run that ended failed.
    pub failed_runs: Vec<String>,
    pub skew: Option<SkewFigures>,
    pub per_account: Vec<AccountFigures>,
}

/// The thread count of each simulator account, checked.
fn shape(args: &FleetBenchArgs) -> anyhow::Result<Vec<usize>> {
    if args.skewed {
        anyhow::ensure!(
            args.accounts.is_none() && args.threads.is_none(),
            "--skewed sets its own accounts and threads (1 of {SKEW_BIG_THREADS}, \
             {SKEW_SMALL_ACCOUNTS} of {SKEW_SMALL_THREADS}): drop --accounts and --threads"
        );
        let mut threads = vec![SKEW_BIG_THREADS];
        threads.extend(std::iter::repeat_n(SKEW_SMALL_THREADS, SKEW_SMALL_ACCOUNTS));
        return Ok(threads);
    }
    let accounts = args
        .accounts
        .context("--accounts is required (or --skewed)")?;
    let threads = args
        .threads
        .context("--threads is required (or --skewed)")?;
    anyhow::ensure!(
        (1..=10_000).contains(&accounts),
        "--accounts must be 1..=10000"
    );
    anyhow::ensure!(threads >= 1, "--threads must be positive");
    Ok(vec![threads; accounts])
}

fn check(args: &FleetBenchArgs) -> anyhow::Result<f64> {
    let rate = args
        .rate_limit
        .context("--rate-limit is required (requests per second per account)")?;
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0 && rate <= 100_000.0,
        "--rate-limit must be positive and at most 100000"
    );
    anyhow::ensure!(args.messages >= 1, "--messages must be positive");
    anyhow::ensure!(args.processes <= 64, "--processes must be at most 64");
    if let Some(c) = args.concurrency {
        let slots = crate::queue::Tuning::CONCURRENCY;
        anyhow::ensure!(
            i64::try_from(c).is_ok_and(|c| slots.contains(&c)),
            "--concurrency must be {}..={}",
            slots.start(),
            slots.end()
        );
    }
    if let Some(f) = args.in_flight {
        anyhow::ensure!((1..=10_000).contains(&f), "--in-flight must be 1..=10000");
    }
    anyhow::ensure!(
        args.latency_ms <= 60_000,
        "--latency-ms must be at most 60000"
    );
    Ok(rate)
}

pub async fn run(args: FleetBenchArgs) -> anyhow::Result<FleetReport> {
    let rate = check(&args)?;
    let threads = shape(&args)?;
    let accounts = (0..threads.len())
        .map(|i| LabAccount {
            id: format!("acct-{i}"),
            sim_account: format!("acct-{i}"),
            token_env: format!("THREADSYNC_LAB_TOKEN_{i}"),
            requests_per_second: rate,
            in_flight: args.in_flight,
            keys: String::new(),
        })
        .collect();
    let mut lab = Lab::start_setup(LabSetup {
        sim: SimConfig {
            accounts: threads.len(),
            threads: threads[0],
            threads_by_account: if args.skewed {
                threads.clone()
            } else {
                Vec::new()
            },
            messages: args.messages,
            seed: 42,
            rps_limit: Some(rate),
            latency_ms: args.latency_ms,
            ..SimConfig::default()
        },
        accounts,
        processes: args.processes,
        concurrency: args.concurrency,
        durability: Durability::Durable,
    })
    .await?;
    let result = measure(&mut lab, &args, rate).await;
    lab.stop().await;
    result
}

/// One run's end, as the runs table holds it.
#[derive(sqlx::FromRow)]
struct RunEnd {
    account_id: String,
    state: String,
    last_error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

async fn measure(lab: &mut Lab, args: &FleetBenchArgs, rate: f64) -> anyhow::Result<FleetReport> {
    let mut tx = lab.pool.begin().await?;
    let mut ids = Vec::with_capacity(lab.accounts().len());
    for a in lab.accounts() {
        let (id, _) = sync::start_run(&mut tx, &a.id, Mode::Full).await?;
        ids.push(id);
    }
    tx.commit().await?;

    let mut slots: Vec<i64> = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (open, running): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM threadsync.sync_runs
                      WHERE id = ANY($1) AND state NOT IN ('done', 'failed')),
                    (SELECT count(*) FROM threadsync.jobs WHERE status = 'running')",
        )
        .bind(&ids)
        .fetch_one(&lab.pool)
        .await?;
        if open == 0 {
            break;
        }
        slots.push(running);
        lab.check_workers()?;
    }

    let ends: Vec<RunEnd> = sqlx::query_as(
        "SELECT account_id, state, last_error, started_at, finished_at
           FROM threadsync.sync_runs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&lab.pool)
    .await?;
    let ends: BTreeMap<String, RunEnd> = ends
        .into_iter()
        .map(|e| (e.account_id.clone(), e))
        .collect();
    let start = ends
        .values()
        .map(|e| e.started_at)
        .min()
        .context("no run was started")?;
    let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;

    let stats = lab.sim.stats();
    let mut per_account = Vec::with_capacity(ends.len());
    let mut last_finish = start;
    for a in lab.accounts() {
        let end = ends
            .get(&a.id)
            .with_context(|| format!("the run of {} vanished", a.id))?;
        let finished = end
            .finished_at
            .with_context(|| format!("the run of {} ended with no finish time", a.id))?;
        last_finish = last_finish.max(finished);
        let c = lab.compare_account(a).await?;
        let s = stats
            .accounts
            .get(&a.sim_account)
            .cloned()
            .unwrap_or_default();
        let elapsed_s = seconds(finished - end.started_at);
        let floor_s = s.total as f64 / rate;
        per_account.push(AccountFigures {
            account: a.id.clone(),
            threads: c.truth_threads,
            messages: c.truth_messages,
            state: end.state.clone(),
            last_error: end.last_error.clone(),
            elapsed_s,
            http_calls: s.total,
            min_http_calls: lab.min_http_calls_of(&a.sim_account),
            throttled_429: s.throttled_429,
            max_rps_1s: s.max_rps_1s,
            floor_s,
            floor_ratio: elapsed_s / floor_s,
            exact: c.is_exact(),
        });
    }

    let wall_s = seconds(last_finish - start);
    let busiest = per_account
        .iter()
        .max_by_key(|a| a.http_calls)
        .context("no account")?;
    let floor_s = busiest.floor_s;
    let elapsed: Vec<f64> = per_account.iter().map(|a| a.elapsed_s).collect();
    let differing: Vec<String> = per_account
        .iter()
        .filter(|a| !a.exact)
        .map(|a| a.account.clone())
        .collect();
    let failed_runs = per_account
        .iter()
        .filter(|a| a.state != "done")
        .map(|a| {
            format!(
                "{}: {}",
                a.account,
                a.last_error.as_deref().unwrap_or("no error recorded")
            )
        })
        .collect();
    let skew = if args.skewed {
        skew_figures(&per_account)
    } else {
        None
    };
    Ok(FleetReport {
        accounts: per_account.len(),
        skewed: args.skewed,
        threads: per_account.iter().map(|a| a.threads).sum(),
        messages: per_account.iter().map(|a| a.messages).sum(),
        rate_limit: rate,
        processes: args.processes,
        concurrency: args.concurrency,
        in_flight: args.in_flight,
        latency_ms: args.latency_ms,
        wall_s,
        floor_s,
        floor_account: busiest.account.clone(),
        floor_ratio: wall_s / floor_s,
        http_calls: per_account.iter().map(|a| a.http_calls).sum(),
        min_http_calls: per_account.iter().map(|a| a.min_http_calls).sum(),
        throttled_429: per_account.iter().map(|a| a.throttled_429).sum(),
        finish_s: Spread::of(&elapsed),
        slots_peak: slots.iter().copied().max().unwrap_or(0),
        slots_mean: if slots.is_empty() {
            0.0
        } else {
            slots.iter().sum::<i64>() as f64 / slots.len() as f64
        },
        slot_samples: slots.len(),
        accounts_exact: per_account.len() - differing.len(),
        accounts_differing: differing.len(),
        differing,
        failed_runs,
        skew,
        per_account,
    })
}

/// The first account is the big one; the others are the small ones.
fn skew_figures(per_account: &[AccountFigures]) -> Option<SkewFigures> {
    let (big, small) = per_account.split_first()?;
    let worst = small
        .iter()
        .max_by(|x, y| x.floor_ratio.total_cmp(&y.floor_ratio))?;
    let mut ratios: Vec<f64> = small.iter().map(|a| a.floor_ratio).collect();
    ratios.sort_by(f64::total_cmp);
    Some(SkewFigures {
        big_account: big.account.clone(),
        big_threads: big.threads,
        big_ratio: big.floor_ratio,
        small_accounts: small.len(),
        small_threads: SKEW_SMALL_THREADS,
        small_ratio_median: percentile(&ratios, 50.0),
        small_ratio_max: worst.floor_ratio,
        small_ratio_max_account: worst.account.clone(),
    })
}

pub fn print(r: &FleetReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let shape = match &r.skew {
        Some(s) => format!(
            "1 account of {} threads and {} of {}",
            s.big_threads, s.small_accounts, s.small_threads
        ),
        None => format!("{} accounts", r.accounts),
    };
    let slots = r
        .concurrency
        .map_or("default".to_string(), |c| c.to_string());
    let workers = if r.processes == 0 {
        format!("2 in-process runtimes x {slots} slots")
    } else {
        format!("{} worker processes x {slots} slots", r.processes)
    };
    let in_flight = r.in_flight.map_or("default".to_string(), |f| f.to_string());
    println!(
        "fleet:       {shape}: {} threads, {} messages; {} req/s per account, {workers}, in flight {in_flight}",
        r.threads, r.messages, r.rate_limit
    );
    println!(
        "wall:        {:.2} s from the start to the last finish; floor {:.2} s ({}'s calls / rate limit); ratio {:.3}",
        r.wall_s, r.floor_s, r.floor_account, r.floor_ratio
    );
    let f = &r.finish_s;
    println!(
        "finish:      per account from its start: min {:.2} s, median {:.2} s, p90 {:.2} s, max {:.2} s",
        f.min, f.median, f.p90, f.max
    );
    if let Some(s) = &r.skew {
        println!(
            "skew:        big {} ratio {:.3}; small accounts (elapsed / own floor) median {:.3}, max {:.3} ({})",
            s.big_account,
            s.big_ratio,
            s.small_ratio_median,
            s.small_ratio_max,
            s.small_ratio_max_account
        );
    }
    println!(
        "HTTP calls:  {} (minimum possible {}), 429s {}",
        r.http_calls, r.min_http_calls, r.throttled_429
    );
    println!(
        "slots:       running jobs peak {}, mean {:.1} ({} samples, every 100 ms)",
        r.slots_peak, r.slots_mean, r.slot_samples
    );
    let named = if r.differing.is_empty() {
        String::new()
    } else {
        format!(": {}", r.differing.join(", "))
    };
    println!(
        "vs truth:    {} accounts exact, {} differing{named}",
        r.accounts_exact, r.accounts_differing
    );
    for f in &r.failed_runs {
        println!("failed run:  {f}");
    }
    Ok(())
}

/// An error when any run failed or any account differs from its truth.
pub fn verdict(r: &FleetReport) -> anyhow::Result<()> {
    anyhow::ensure!(
        r.failed_runs.is_empty(),
        "{} of {} runs failed; first: {}",
        r.failed_runs.len(),
        r.accounts,
        r.failed_runs[0]
    );
    anyhow::ensure!(
        r.differing.is_empty(),
        "{} of {} accounts differ from the simulator's truth: {}",
        r.differing.len(),
        r.accounts,
        r.differing.join(", ")
    );
    Ok(())
}
