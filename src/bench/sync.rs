//! `threadsync bench sync`: a full resync of one account against the eBay simulator (or,
//! with `--provider facebook`, the Facebook Page simulator at Meta's 2 calls/s; Hostaway's
//! full and incremental phases are in hostaway.rs), with
//! workers in this process or in worker processes, compared with the simulator's truth.
//! The demos use the same lab.

use std::collections::HashMap;
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
use crate::sim::{self, SimConfig, SimHandle};
use crate::sync::{self, Mode, RunStatus, Tokens};
use crate::verify::{self, Comparison};
use crate::worker::Worker;

/// The simulator account the lab syncs.
const SIM_ACCOUNT: &str = "acct-0";
const TOKEN_ENV: &str = "THREADSYNC_LAB_TOKEN";
/// Requests in flight the lab's account allows unless told otherwise. The two in-process
/// workers have 96 slots; a running job keeps its slot while its page waits for a group
/// commit, so 32 left the CPU partly idle against an unthrottled simulator (15% to 20%
/// fewer threads/s than 64; 96 was no faster than 64).
pub const LAB_IN_FLIGHT: i32 = 64;

/// Graph's largest page: conversations per list page, inline messages per conversation
/// and messages per page of a conversation's own fetch (the account's defaults).
const FB_PAGE: usize = 100;
/// Meta's limit for the Conversations API: calls per second per Page.
pub const FB_RATE: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProvider {
    Ebay,
    Facebook,
    Hostaway,
}

#[derive(Debug, clap::Args)]
pub struct SyncBenchArgs {
    /// Which provider's simulator to sync from.
    #[arg(long, value_enum, default_value_t = BenchProvider::Ebay)]
    pub provider: BenchProvider,
    /// Threads (Facebook: conversations).
    #[arg(long, default_value_t = 10_000)]
    pub threads: usize,
    /// Mean messages per thread.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Requests per second the simulator allows (and the account is configured with);
    /// unset: unthrottled for eBay, 2 (Meta's limit per Page) for Facebook.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Worker processes; 0 runs workers in this process.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Requests in flight per account (fleet-wide).
    #[arg(long, default_value_t = LAB_IN_FLIGHT)]
    pub in_flight: i32,
    /// The simulator answers each request after this many milliseconds (eBay).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Hostaway: reservations that gain a message before the incremental run.
    #[arg(long, default_value_t = 50)]
    pub changed: usize,
    /// Hostaway: the window (seconds) of the full phase's limits; the incremental phase
    /// runs on Hostaway's documented 10 s.
    #[arg(long, default_value_t = 1)]
    pub full_window_secs: u32,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct SyncBenchReport {
    pub threads: usize,
    pub messages: usize,
    pub wall_s: f64,
    pub threads_per_s: f64,
    pub messages_per_s: f64,
    pub http_calls: u64,
    pub min_http_calls: u64,
    pub throttled_429: u64,
    pub max_rps_1s: u64,
    /// Rate-limited runs: wall time over (calls / rate), the floor no client can beat.
    pub floor_ratio: Option<f64>,
    /// The simulator's answer delay, and the floor it sets: calls x latency / requests in
    /// flight (with the ratio of the wall time to it).
    pub latency_ms: u64,
    pub latency_floor_s: Option<f64>,
    pub latency_floor_ratio: Option<f64>,
    /// Differences from the simulator's data: threads plus messages we lack, hold that it
    /// does not, hold under the wrong thread, or hold with other fields.
    pub missing: usize,
    pub extra: usize,
    pub misfiled: usize,
    pub differing: usize,
}

/// A Facebook run's figures. Calls, throttling answers and the peak rate are the
/// simulator's own counts for the Page; the minimum comes from its expected rows.
#[derive(Debug, Serialize)]
pub struct FacebookBenchReport {
    pub provider: &'static str,
    pub conversations: usize,
    pub messages: usize,
    pub wall_s: f64,
    pub conversations_per_s: f64,
    pub messages_per_s: f64,
    /// Calls per second the simulator allows the Page, and the account's pacing.
    pub rate_limit: f64,
    pub http_calls: u64,
    /// Calls to `/{page}/conversations` and to `/{conversation}/messages`.
    pub list_calls: u64,
    pub message_calls: u64,
    pub min_calls: MinCalls,
    /// Wall time over (calls / rate): 1.0 is a run that never left a slot unused.
    pub floor_ratio: f64,
    /// Answers HTTP 400: Graph's throttling (code 613) in this benchmark, which injects no
    /// other fault and sets no daily budget.
    pub throttled: u64,
    /// Answers that were neither 200 nor 400.
    pub other_errors: u64,
    pub max_rps_1s: u64,
    pub missing: usize,
    pub extra: usize,
    pub misfiled: usize,
    pub differing: usize,
}

/// Fewest calls any client needs for the Page's current conversations, from the
/// simulator's expected rows.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MinCalls {
    /// ceil(conversations / 100).
    pub list_pages: u64,
    /// Conversations with more messages than the 100 carried inline.
    pub long_conversations: u64,
    /// Pages of 100 of those conversations' older messages (one per long conversation
    /// unless one holds more than 200 messages).
    pub message_pages: u64,
    /// The catch-up pass's re-read of the head of the list.
    pub catch_up: u64,
    pub without_catch_up: u64,
    pub with_catch_up: u64,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Ebay(SyncBenchReport),
    Facebook(FacebookBenchReport),
    Hostaway(super::hostaway::HostawayBenchReport),
}

#[derive(Clone)]
pub struct LabOptions {
    pub account: String,
    pub sim: SimConfig,
    pub requests_per_second: f64,
    pub in_flight: i32,
    pub processes: usize,
    pub durability: Durability,
    /// Provider-specific account keys appended to the lab's jobs.toml account.
    pub account_keys: String,
}

/// One account of a lab's jobs.toml and the simulator account it syncs.
#[derive(Clone)]
pub struct LabAccount {
    pub id: String,
    pub sim_account: String,
    pub token_env: String,
    pub requests_per_second: f64,
    /// None: the key is left out, so the config's default applies.
    pub in_flight: Option<i32>,
    /// Provider-specific keys appended to the account.
    pub keys: String,
}

/// A lab of any number of accounts in one simulator.
#[derive(Clone)]
pub struct LabSetup {
    pub sim: SimConfig,
    pub accounts: Vec<LabAccount>,
    /// Worker processes; 0 runs two worker runtimes in this process.
    pub processes: usize,
    /// Job slots per runtime or process; None: the worker's default (queue.concurrency),
    /// and processes are started without `--concurrency`.
    pub concurrency: Option<usize>,
    pub durability: Durability,
}

impl From<LabOptions> for LabSetup {
    fn from(o: LabOptions) -> Self {
        LabSetup {
            sim: o.sim,
            accounts: vec![LabAccount {
                id: o.account,
                sim_account: SIM_ACCOUNT.into(),
                token_env: TOKEN_ENV.into(),
                requests_per_second: o.requests_per_second,
                in_flight: Some(o.in_flight),
                keys: o.account_keys,
            }],
            processes: o.processes,
            concurrency: Some(LAB_SLOTS),
            durability: o.durability,
        }
    }
}

/// Job slots of each of the lab's workers (runtimes or processes).
const LAB_SLOTS: usize = 48;

/// A scratch database, a simulator and workers, wired together.
pub struct Lab {
    pub pool: PgPool,
    pub sim: SimHandle,
    /// The first account's id (the only one, for a lab started from [`LabOptions`]).
    pub account: String,
    scratch: Scratch,
    workers: Workers,
    setup: LabSetup,
}

enum Workers {
    InProcess {
        stop: CancellationToken,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    },
    Processes {
        children: Vec<Child>,
        /// Removed when dropped.
        _config: tempfile::TempPath,
    },
}

/// The lab's jobs.toml: quick retries for every sync kind, and its accounts.
fn lab_config(o: &LabSetup, base_url: &str) -> String {
    let provider = match o.sim.provider {
        sim::Provider::Smseagle => "smseagle",
        sim::Provider::Facebook => "facebook",
        sim::Provider::Hostaway => "hostaway",
        _ => "ebay",
    };
    let mut text = String::from("[queue]\nlease_secs = 15\n");
    for kind in ["list_page", "conversation", "folder"] {
        for p in ["ebay", "facebook", "hostaway", "smseagle"] {
            if (kind == "folder") == (p == "smseagle") {
                text += &format!(
                    "[kinds.\"{p}.{kind}\"]\nmax_attempts = 10\nbackoff_base_ms = 200\nbackoff_cap_ms = 5000\n"
                );
            }
        }
    }
    for a in &o.accounts {
        let in_flight = a
            .in_flight
            .map_or(String::new(), |n| format!("max_in_flight = {n}\n"));
        text += &format!(
            "[[accounts]]\nid = \"{}\"\nprovider = \"{provider}\"\nbase_url = \"{base_url}\"\ntoken_env = \"{}\"\n\
             requests_per_second = {}\n{in_flight}request_timeout_secs = 10\n{}",
            a.id, a.token_env, a.requests_per_second, a.keys
        );
    }
    text
}

impl Lab {
    pub async fn start(o: LabOptions) -> anyhow::Result<Lab> {
        Lab::start_setup(o.into()).await
    }

    pub async fn start_setup(o: LabSetup) -> anyhow::Result<Lab> {
        anyhow::ensure!(!o.accounts.is_empty(), "a lab needs an account");
        let scratch = Scratch::create("threadsync_lab", o.durability).await?;
        let pool = db::connect(&scratch.url, 64).await?;
        db::migrate(&pool).await?;
        let sim = sim::start(o.sim.clone())
            .await
            .context("starting the simulator")?;
        let workers = start_workers(&o, &pool, &sim, &scratch.url).await?;
        Ok(Lab {
            pool,
            sim,
            account: o.accounts[0].id.clone(),
            scratch,
            workers,
            setup: o,
        })
    }

    /// The lab's accounts, in the order they were given.
    pub fn accounts(&self) -> &[LabAccount] {
        &self.setup.accounts
    }

    fn first(&self) -> &LabAccount {
        &self.setup.accounts[0]
    }

    /// Stops the workers and starts them again with the first account's own keys replaced
    /// by `account_keys`.
    pub async fn reconfigure(&mut self, account_keys: String) -> anyhow::Result<()> {
        self.setup.accounts[0].keys = account_keys;
        let fresh = start_workers(&self.setup, &self.pool, &self.sim, &self.scratch.url).await?;
        let old = std::mem::replace(&mut self.workers, fresh);
        old.stop().await;
        Ok(())
    }

    /// An error naming the first worker process that has exited (in-process workers: the
    /// first runtime that stopped).
    pub fn check_workers(&mut self) -> anyhow::Result<()> {
        match &mut self.workers {
            Workers::InProcess { tasks, .. } => {
                anyhow::ensure!(
                    tasks.iter().all(|t| !t.is_finished()),
                    "a worker runtime stopped"
                );
            }
            Workers::Processes { children, .. } => {
                for (i, c) in children.iter_mut().enumerate() {
                    if let Some(status) = c.try_wait().context("checking a worker process")? {
                        anyhow::bail!("worker process {i} exited ({status})");
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a run and waits for it, showing the progress bar when `show` is set.
    pub async fn run(&self, mode: Mode, show: bool) -> anyhow::Result<(RunStatus, Duration)> {
        let t = Instant::now();
        let mut tx = self.pool.begin().await?;
        let (id, _) = sync::start_run(&mut tx, &self.account, mode).await?;
        tx.commit().await?;
        let status = if show {
            crate::progress::follow(&self.pool, id, mode.as_str()).await?
        } else {
            // Only the state while it runs: the full counters are sums over every job's
            // progress row, too costly to poll this often under load.
            loop {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM threadsync.sync_runs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                match state.as_deref() {
                    Some("done" | "failed") => break,
                    Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    None => anyhow::bail!("run {id} vanished"),
                }
            }
            sync::run_status(&self.pool, id)
                .await?
                .context("run vanished")?
        };
        Ok((status, t.elapsed()))
    }

    /// The database against what the simulator's account holds now.
    pub async fn compare(&self) -> anyhow::Result<Comparison> {
        self.compare_account(self.first()).await
    }

    /// One account of the database against what its simulator account holds now.
    pub async fn compare_account(&self, a: &LabAccount) -> anyhow::Result<Comparison> {
        let expected = self.sim.expected(&a.sim_account)?;
        verify::compare(&self.pool, &a.id, &expected).await
    }

    /// Fewest requests any client needs for the current dataset: one per list page of
    /// each conversation type, one per 50 messages of each thread.
    pub fn min_http_calls(&self) -> u64 {
        self.min_http_calls_of(&self.first().sim_account)
    }

    /// [`min_http_calls`](Self::min_http_calls) for one simulator account.
    pub fn min_http_calls_of(&self, sim_account: &str) -> u64 {
        let truth = self.sim.truth(Some(sim_account));
        let threads = truth["accounts"][0]["threads"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut per_type: HashMap<String, u64> = HashMap::new();
        let mut fetches = 0;
        for t in &threads {
            *per_type
                .entry(t["conversationType"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            let n = t["messages"].as_array().map_or(0, |m| m.len()) as u64;
            fetches += n.div_ceil(50).max(1);
        }
        let lists: u64 = ["FROM_MEMBERS", "FROM_EBAY"]
            .iter()
            .map(|k| per_type.get(*k).copied().unwrap_or(0).div_ceil(50).max(1))
            .sum();
        lists + fetches
    }

    /// Fewest calls a Facebook sync of the Page's current conversations needs: one per
    /// list page of 100, one per further page of 100 messages of each conversation that
    /// does not fit the inline window, and the catch-up pass's head read.
    pub fn facebook_min_calls(&self) -> anyhow::Result<MinCalls> {
        let expected = self.sim.expected(&self.first().sim_account)?;
        let list_pages = expected.threads.len().div_ceil(FB_PAGE).max(1) as u64;
        let (mut long_conversations, mut message_pages) = (0, 0);
        for t in &expected.threads {
            if t.messages.len() > FB_PAGE {
                long_conversations += 1;
                message_pages += (t.messages.len() - FB_PAGE).div_ceil(FB_PAGE) as u64;
            }
        }
        let without_catch_up = list_pages + message_pages;
        Ok(MinCalls {
            list_pages,
            long_conversations,
            message_pages,
            catch_up: 1,
            without_catch_up,
            with_catch_up: without_catch_up + 1,
        })
    }

    pub fn account_stats(&self) -> crate::sim::stats::AccountStats {
        self.account_stats_of(&self.first().sim_account)
    }

    /// The simulator's counts for one of its accounts.
    pub fn account_stats_of(&self, sim_account: &str) -> crate::sim::stats::AccountStats {
        self.sim
            .stats()
            .accounts
            .get(sim_account)
            .cloned()
            .unwrap_or_default()
    }

    pub async fn stop(self) {
        self.workers.stop().await;
        self.pool.close().await;
        self.sim.shutdown().await;
        self.scratch.close().await;
    }
}

/// The lab's workers: two runtimes in this process, or `processes` worker processes.
async fn start_workers(
    o: &LabSetup,
    pool: &PgPool,
    sim: &SimHandle,
    db_url: &str,
) -> anyhow::Result<Workers> {
    let text = lab_config(o, &sim.base_url());
    let cfg = Arc::new(Config::parse(&text, "lab jobs.toml")?);
    let settings = Arc::new(cfg.queue.clone());
    sync::register_accounts(pool, &cfg.accounts).await?;
    // Hostaway's secret is the client secret threadsync mints its tokens with.
    let tokens: Vec<(&LabAccount, String)> = o
        .accounts
        .iter()
        .map(|a| {
            let token = match o.sim.provider {
                sim::Provider::Hostaway => format!("sim-secret-{}", a.sim_account),
                _ => sim.token(&a.sim_account),
            };
            (a, token)
        })
        .collect();
    if o.processes == 0 {
        let given = tokens
            .iter()
            .map(|(a, token)| (a.id.clone(), token.clone()))
            .collect();
        let tokens = Tokens::Given(given);
        let slots = o.concurrency.unwrap_or(settings.tuning.concurrency);
        let stop = CancellationToken::new();
        let tasks = (0..2)
            .map(|i| {
                let registry = crate::jobs::registry(&cfg, &tokens);
                let w = Worker::new(
                    pool.clone(),
                    settings.clone(),
                    registry,
                    &format!("lab-{i}"),
                    slots,
                );
                tokio::spawn(w.run(stop.clone()))
            })
            .collect();
        return Ok(Workers::InProcess { stop, tasks });
    }
    let mut file = tempfile::NamedTempFile::new().context("writing the workers' config")?;
    file.write_all(text.as_bytes())?;
    let config = file.into_temp_path();
    let exe = std::env::current_exe().context("locating the threadsync binary")?;
    let children = (0..o.processes)
        .map(|i| {
            let mut cmd = Command::new(&exe);
            cmd.arg("--config").arg(&config).arg("worker");
            if let Some(c) = o.concurrency {
                cmd.args(["--concurrency", &c.to_string()]);
            }
            cmd.args(["--name", &format!("lab-p{i}")])
                .env("DATABASE_URL", db_url)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null());
            for (a, token) in &tokens {
                cmd.env(&a.token_env, token);
            }
            cmd.spawn().context("starting a worker process")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Workers::Processes {
        children,
        _config: config,
    })
}

impl Workers {
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

pub async fn run(args: SyncBenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.threads > 0 && args.messages > 0,
        "--threads and --messages must be positive"
    );
    anyhow::ensure!(args.in_flight >= 1, "--in-flight must be at least 1");
    if let Some(r) = args.rate_limit {
        anyhow::ensure!(r > 0.0, "--rate-limit must be positive");
    }
    anyhow::ensure!(
        args.latency_ms <= 60_000,
        "--latency-ms must be at most 60000"
    );
    anyhow::ensure!(
        args.latency_ms == 0 || args.provider == BenchProvider::Ebay,
        "--latency-ms is for the eBay benchmark"
    );
    match args.provider {
        BenchProvider::Ebay => run_ebay(args).await.map(Report::Ebay),
        BenchProvider::Facebook => run_facebook(args).await.map(Report::Facebook),
        BenchProvider::Hostaway => super::hostaway::run(args).await.map(Report::Hostaway),
    }
}

async fn run_ebay(args: SyncBenchArgs) -> anyhow::Result<SyncBenchReport> {
    let lab = Lab::start(LabOptions {
        account: "bench".into(),
        sim: SimConfig {
            threads: args.threads,
            messages: args.messages,
            seed: 42,
            rps_limit: args.rate_limit,
            latency_ms: args.latency_ms,
            ..SimConfig::default()
        },
        requests_per_second: args.rate_limit.unwrap_or(0.0),
        in_flight: args.in_flight,
        processes: args.processes,
        durability: Durability::Durable,
        account_keys: String::new(),
    })
    .await?;
    let result = async {
        let (status, wall) = lab.run(Mode::Full, !args.json).await?;
        anyhow::ensure!(
            status.state == "done",
            "the run ended {}: {}",
            status.state,
            status.last_error.as_deref().unwrap_or("no error recorded")
        );
        let c = lab.compare().await?;
        let stats = lab.account_stats();
        let wall_s = wall.as_secs_f64();
        let latency_floor = (args.latency_ms > 0).then(|| {
            stats.total as f64 * args.latency_ms as f64 / 1000.0 / f64::from(args.in_flight)
        });
        Ok(SyncBenchReport {
            threads: c.db_threads,
            messages: c.db_messages,
            wall_s,
            threads_per_s: c.db_threads as f64 / wall_s,
            messages_per_s: c.db_messages as f64 / wall_s,
            http_calls: stats.total,
            min_http_calls: lab.min_http_calls(),
            throttled_429: stats.throttled_429,
            max_rps_1s: stats.max_rps_1s,
            floor_ratio: args.rate_limit.map(|r| wall_s / (stats.total as f64 / r)),
            latency_ms: args.latency_ms,
            latency_floor_s: latency_floor,
            latency_floor_ratio: latency_floor.map(|f| wall_s / f),
            missing: c.missing_threads + c.missing_messages,
            extra: c.extra_threads + c.extra_messages,
            misfiled: c.misfiled_messages,
            differing: c.differing_threads + c.differing_messages,
        })
    }
    .await;
    lab.stop().await;
    result
}

async fn run_facebook(args: SyncBenchArgs) -> anyhow::Result<FacebookBenchReport> {
    let rate = args.rate_limit.unwrap_or(FB_RATE);
    let lab = Lab::start(LabOptions {
        account: "bench".into(),
        sim: SimConfig {
            provider: sim::Provider::Facebook,
            threads: args.threads,
            messages: args.messages,
            seed: 42,
            rps_limit: Some(rate),
            ..SimConfig::default()
        },
        requests_per_second: rate,
        in_flight: args.in_flight,
        processes: args.processes,
        durability: Durability::Durable,
        account_keys: format!("page_id = \"{SIM_ACCOUNT}\"\n"),
    })
    .await?;
    let result = async {
        let (status, wall) = lab.run(Mode::Full, !args.json).await?;
        anyhow::ensure!(
            status.state == "done",
            "the run ended {}: {}",
            status.state,
            status.last_error.as_deref().unwrap_or("no error recorded")
        );
        let c = lab.compare().await?;
        let stats = lab.account_stats();
        let wall_s = wall.as_secs_f64();
        let calls = |route: &str| -> u64 {
            stats
                .by_route
                .iter()
                .filter(|(r, _)| r.ends_with(route))
                .flat_map(|(_, by_status)| by_status.values())
                .sum()
        };
        let with_status = |keep: &dyn Fn(u16) -> bool| -> u64 {
            stats
                .by_route
                .values()
                .flat_map(|by_status| by_status.iter())
                .filter(|(s, _)| keep(**s))
                .map(|(_, n)| n)
                .sum()
        };
        Ok(FacebookBenchReport {
            provider: "facebook",
            conversations: c.db_threads,
            messages: c.db_messages,
            wall_s,
            conversations_per_s: c.db_threads as f64 / wall_s,
            messages_per_s: c.db_messages as f64 / wall_s,
            rate_limit: rate,
            http_calls: stats.total,
            list_calls: calls("/conversations"),
            message_calls: calls("/messages"),
            min_calls: lab.facebook_min_calls()?,
            floor_ratio: wall_s / (stats.total as f64 / rate),
            throttled: with_status(&|s| s == 400),
            other_errors: with_status(&|s| s != 200 && s != 400),
            max_rps_1s: stats.max_rps_1s,
            missing: c.missing_threads + c.missing_messages,
            extra: c.extra_threads + c.extra_messages,
            misfiled: c.misfiled_messages,
            differing: c.differing_threads + c.differing_messages,
        })
    }
    .await;
    lab.stop().await;
    result
}

pub fn print(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    match r {
        Report::Ebay(r) => print_ebay(r),
        Report::Facebook(r) => print_facebook(r),
        Report::Hostaway(r) => super::hostaway::print(r),
    }
    Ok(())
}

fn print_facebook(r: &FacebookBenchReport) {
    let m = &r.min_calls;
    println!(
        "synced:      {} conversations, {} messages in {:.2} s",
        r.conversations, r.messages, r.wall_s
    );
    println!(
        "throughput:  {:.0} conversations/s, {:.0} messages/s",
        r.conversations_per_s, r.messages_per_s
    );
    println!(
        "HTTP calls:  {} ({} list pages, {} message pages); peak {} calls/s; rate limit {} calls/s",
        r.http_calls, r.list_calls, r.message_calls, r.max_rps_1s, r.rate_limit
    );
    println!(
        "minimum:     {} without the catch-up read ({} list pages + {} message pages for {} long conversations), {} with it",
        m.without_catch_up, m.list_pages, m.message_pages, m.long_conversations, m.with_catch_up
    );
    println!(
        "floor ratio: {:.3} (wall time / (calls / rate limit))",
        r.floor_ratio
    );
    println!(
        "throttled:   {} (HTTP 400, Graph code 613); other errors {}",
        r.throttled, r.other_errors
    );
    println!(
        "vs truth:    missing {}, extra {}, misfiled {}, differing {}",
        r.missing, r.extra, r.misfiled, r.differing
    );
}

fn print_ebay(r: &SyncBenchReport) {
    println!(
        "synced:      {} threads, {} messages in {:.2} s",
        r.threads, r.messages, r.wall_s
    );
    println!(
        "throughput:  {:.0} threads/s, {:.0} messages/s",
        r.threads_per_s, r.messages_per_s
    );
    println!(
        "HTTP calls:  {} (minimum possible {}), 429s {}, peak {} req/s",
        r.http_calls, r.min_http_calls, r.throttled_429, r.max_rps_1s
    );
    if let Some(f) = r.floor_ratio {
        println!("floor ratio: {f:.3} (wall time / (calls / rate limit))");
    }
    if let (Some(floor), Some(f)) = (r.latency_floor_s, r.latency_floor_ratio) {
        println!(
            "latency:     {} ms per answer; floor {floor:.2} s (calls x latency / in flight), ratio {f:.3}",
            r.latency_ms
        );
    }
    println!(
        "vs truth:    missing {}, extra {}, misfiled {}, differing {}",
        r.missing, r.extra, r.misfiled, r.differing
    );
}
