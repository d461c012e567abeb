//! eBay sync against the simulator over loopback HTTP, with workers in this process.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{ebay_config, TestDb};
use serde_json::json;
use threadsync::config::Config;
use threadsync::jobs::Tokens;
use threadsync::sim::{self, Faults, SimConfig, SimHandle};
use threadsync::sync::{self, Mode};
use threadsync::worker::Worker;
use tokio_util::sync::CancellationToken;

struct Rig {
    db: TestDb,
    sim: SimHandle,
    cfg: Arc<Config>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    async fn new(sim_cfg: SimConfig, rps: f64, in_flight: i32, workers: usize) -> Rig {
        let db = TestDb::new().await;
        let sim = sim::start(sim_cfg).await.expect("simulator");
        let cfg = Arc::new(
            Config::parse(
                &ebay_config(&sim.base_url(), rps, in_flight, ""),
                "test.toml",
            )
            .expect("config"),
        );
        sync::register_accounts(&db.pool, &cfg).await.unwrap();
        let tokens = Tokens::Given(HashMap::from([("acct-0".to_string(), sim.token("acct-0"))]));
        let stop = CancellationToken::new();
        let workers = (0..workers)
            .map(|i| {
                let registry = threadsync::jobs::registry(&cfg, &tokens);
                tokio::spawn(
                    Worker::new(db.pool.clone(), cfg.clone(), registry, &format!("w{i}"), 16)
                        .run(stop.clone()),
                )
            })
            .collect();
        Rig {
            db,
            sim,
            cfg,
            stop,
            workers,
        }
    }

    async fn run(&self, mode: Mode) -> i64 {
        let mut tx = self.db.pool.begin().await.unwrap();
        let (id, created) = sync::start_run(&mut tx, "acct-0", mode).await.unwrap();
        tx.commit().await.unwrap();
        assert!(created);
        self.wait_run(id, Duration::from_secs(60)).await;
        id
    }

    async fn wait_run(&self, id: i64, limit: Duration) -> sync::RunStatus {
        let t = std::time::Instant::now();
        loop {
            let s = sync::run_status(&self.db.pool, id).await.unwrap().unwrap();
            if s.state == "done" || s.state == "failed" {
                return s;
            }
            if t.elapsed() > limit {
                let errors: Vec<(String, Option<String>)> = sqlx::query_as(
                    "SELECT kind, last_error FROM threadsync.jobs WHERE run_id = $1 AND last_error IS NOT NULL LIMIT 5",
                )
                .bind(id)
                .fetch_all(&self.db.pool)
                .await
                .unwrap();
                panic!("run {id} did not finish: {s:?}; job errors: {errors:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn compare(&self) -> threadsync::verify::Comparison {
        let truth = self.sim.truth(Some("acct-0"));
        threadsync::verify::compare(&self.db.pool, "acct-0", &truth["accounts"][0])
            .await
            .unwrap()
    }

    fn calls(&self, route: &str) -> u64 {
        let stats = self.sim.stats();
        stats.accounts.get("acct-0").map_or(0, |a| {
            a.by_route
                .iter()
                .filter(|(r, _)| r.contains(route))
                .flat_map(|(_, by)| by.values())
                .sum()
        })
    }

    async fn close(self) {
        self.stop.cancel();
        for w in self.workers {
            w.await.unwrap().unwrap();
        }
        self.sim.shutdown().await;
        let _ = &self.cfg;
        self.db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_resync_equals_the_truth() {
    let rig = Rig::new(
        SimConfig {
            threads: 300,
            messages: 20,
            seed: 7,
            ..SimConfig::default()
        },
        0.0,
        10,
        2,
    )
    .await;
    let id = rig.run(Mode::Full).await;
    let s = sync::run_status(&rig.db.pool, id).await.unwrap().unwrap();
    assert_eq!(s.state, "done", "{s:?}");
    let c = rig.compare().await;
    assert!(c.is_exact(), "{c:?}");
    assert_eq!(c.db_threads, c.truth_threads);
    assert_eq!(
        s.threads_fetched as usize, c.truth_threads,
        "every thread fetched once: {s:?}"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_do_not_lose_or_duplicate_anything() {
    let faults = Faults {
        error_5xx: 0.10,
        burst_429: 0.05,
        timeout: 0.01,
        malformed: 0.02,
        timeout_ms: 2500,
        ..Faults::default()
    };
    let rig = Rig::new(
        SimConfig {
            threads: 200,
            messages: 15,
            seed: 11,
            faults,
            ..SimConfig::default()
        },
        0.0,
        10,
        2,
    )
    .await;
    let id = rig.run(Mode::Full).await;
    let s = sync::run_status(&rig.db.pool, id).await.unwrap().unwrap();
    assert_eq!(s.state, "done", "{s:?}");
    let c = rig.compare().await;
    assert!(c.is_exact(), "{c:?}");
    // Malformed answers and 5xx failed their attempt with the reason kept, then succeeded.
    let retried: i64 = rig.db.count(&format!("SELECT count(*) FROM threadsync.jobs WHERE run_id = {id} AND attempts > 1 AND status = 'done'")).await;
    assert!(
        retried > 0,
        "faults were injected, some jobs must have retried"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_fetches_only_what_changed() {
    let rig = Rig::new(
        SimConfig {
            threads: 200,
            messages: 10,
            seed: 3,
            ..SimConfig::default()
        },
        0.0,
        10,
        2,
    )
    .await;
    rig.run(Mode::Full).await;
    assert!(rig.compare().await.is_exact());

    // Nothing changed: only list calls.
    rig.sim.reset_stats();
    rig.run(Mode::Incremental).await;
    assert_eq!(
        rig.calls("conversation/"),
        0,
        "no conversation fetch when nothing changed"
    );
    let lists = rig.calls("GET /commerce/message/v1/conversation");
    eprintln!("list calls with nothing changed: {lists}");
    assert!((2..=4).contains(&lists), "only the list heads: {lists}");

    // k threads change: at most the list pages needed plus k fetches.
    let k = 7;
    let changed = rig
        .sim
        .mutate(&json!({"account": "acct-0", "new_messages": k, "direction": "inbound"}))
        .unwrap();
    let touched: std::collections::HashSet<String> = changed["newMessages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["conversationId"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(!touched.is_empty());
    rig.sim.reset_stats();
    rig.run(Mode::Incremental).await;
    let fetches = rig.calls("conversation/");
    let lists = rig.calls("GET /commerce/message/v1/conversation") - fetches;
    eprintln!("after {k} changes: {lists} list calls, {fetches} fetches");
    assert!(lists <= 6, "{lists} list calls");
    assert!(
        fetches as usize <= touched.len().max(1) && fetches > 0,
        "{fetches} fetches for {} changed threads ({changed})",
        touched.len()
    );
    assert!(rig.compare().await.is_exact());
    rig.close().await;
}
