//! `threadsync bench api`: concurrent clients ask `serve` to refresh threads (random ones,
//! with repeats) for a fixed time, over loopback HTTP with keep-alive. Reports refreshes/s
//! and latency, and checks that every thread asked for has exactly one pending refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::db::{self, Scratch};
use crate::http::{auth, AppState};
use crate::pg::Durability;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long the clients call.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Distinct threads the refreshes go to (fewer threads: more repeats).
    #[arg(long, default_value_t = 20_000)]
    pub threads: usize,
    /// Database connections of the server.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct ApiBenchReport {
    pub clients: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Distinct threads asked for, and pending refresh jobs after the run.
    pub threads_asked: usize,
    pub pending_refreshes: i64,
    /// Threads with more than one pending refresh (must be 0).
    pub duplicated: i64,
}

const TOKEN: &str = "bench-api-admin-token";
const ACCOUNT: &str = "bench-ebay";

pub async fn run(a: ApiBenchArgs) -> anyhow::Result<ApiBenchReport> {
    anyhow::ensure!(
        a.clients >= 1 && a.threads >= 1 && a.duration_secs >= 1 && a.connections >= 1,
        "--clients, --threads, --duration-secs and --connections must be at least 1"
    );
    let scratch = Scratch::create("threadsync_bench_api", Durability::Durable).await?;
    let pool = db::connect(&scratch.url, a.connections).await?;
    db::migrate(&pool).await?;
    sqlx::query(
        "INSERT INTO threadsync.accounts (id, provider, fetches_threads) VALUES ($1, 'ebay', true)",
    )
    .bind(ACCOUNT)
    .execute(&pool)
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = AppState {
        pool: pool.clone(),
        tokens: auth::Tokens::new(TOKEN.into(), None),
        webhooks: Default::default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, crate::http::router(state))
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });

    let deadline = Instant::now() + Duration::from_secs(a.duration_secs);
    let asked = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let clients: Vec<_> = (0..a.clients)
        .map(|_| {
            let asked = asked.clone();
            let threads = a.threads;
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap_or_default();
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t: usize = rand::thread_rng().gen_range(0..threads);
                    let url = format!("http://{addr}/v1/accounts/{ACCOUNT}/threads/t{t}/refresh");
                    let start = Instant::now();
                    let ok = match http.post(&url).bearer_auth(TOKEN).send().await {
                        Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    lat.push(start.elapsed().as_secs_f64() * 1000.0);
                    if ok {
                        mine.push(t);
                    } else {
                        errors += 1;
                    }
                }
                if let Ok(mut s) = asked.lock() {
                    s.extend(mine);
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for c in clients {
        let (l, e) = c.await?;
        lat.extend(l);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    stop.cancel();
    server.await??;
    lat.sort_by(|x, y| x.total_cmp(y));
    let (pending, duplicated): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) - count(DISTINCT dedupe_key) FROM threadsync.jobs
          WHERE kind = 'ebay.conversation' AND status = 'pending'",
    )
    .fetch_one(&pool)
    .await?;
    let threads_asked = asked.lock().map(|s| s.len()).unwrap_or(0);
    pool.close().await;
    scratch.close().await;
    Ok(ApiBenchReport {
        clients: a.clients,
        duration_s: wall,
        requests: lat.len() as u64,
        errors,
        requests_per_s: lat.len() as f64 / wall,
        p50_ms: super::percentile(&lat, 50.0),
        p99_ms: super::percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        threads_asked,
        pending_refreshes: pending,
        duplicated,
    })
}

pub fn print(r: &ApiBenchReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "{} refreshes in {:.1} s from {} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors",
        r.requests, r.duration_s, r.clients, r.requests_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.errors
    );
    println!(
        "{} threads asked for, {} pending refreshes, {} threads with more than one",
        r.threads_asked, r.pending_refreshes, r.duplicated
    );
    Ok(())
}
