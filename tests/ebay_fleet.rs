//! eBay sync with real worker processes: SIGKILLs mid-run, restarts, and fleet-wide rate
//! limits across four processes.

mod common;

use std::time::{Duration, Instant};

use common::{ebay_config, write_config, TestDb, WorkerProc};
use nix::sys::signal::Signal;
use threadsync::sim::{self, SimConfig, SimHandle};
use threadsync::sync::{self, Mode};

struct Fleet {
    db: TestDb,
    sim: SimHandle,
    config: std::path::PathBuf,
    token: String,
}

impl Fleet {
    async fn new(sim_cfg: SimConfig, rps: f64, in_flight: i32) -> Fleet {
        let db = TestDb::new().await;
        let sim = sim::start(sim_cfg).await.expect("simulator");
        let config = write_config(&ebay_config(&sim.base_url(), rps, in_flight, ""));
        let token = sim.token("acct-0");
        let cfg = threadsync::config::Config::load(&config).unwrap();
        sync::register_accounts(&db.pool, &cfg.accounts)
            .await
            .unwrap();
        Fleet {
            db,
            sim,
            config,
            token,
        }
    }

    fn worker(&self, name: &str) -> WorkerProc {
        WorkerProc::start_with_env(
            &self.db.url,
            &self.config,
            name,
            16,
            &[("EBAY_TOKEN_ACCT0", &self.token)],
        )
    }

    async fn start_run(&self) -> i64 {
        let mut tx = self.db.pool.begin().await.unwrap();
        let (id, _) = sync::start_run(&mut tx, "acct-0", Mode::Full)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        id
    }

    async fn state(&self, id: i64) -> sync::RunStatus {
        sync::run_status(&self.db.pool, id).await.unwrap().unwrap()
    }

    async fn wait_done(&self, id: i64, limit: Duration) -> sync::RunStatus {
        let t = Instant::now();
        loop {
            let s = self.state(id).await;
            if s.state == "done" || s.state == "failed" {
                return s;
            }
            assert!(t.elapsed() < limit, "run did not finish: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn assert_exact(&self) {
        let expected = self.sim.expected("acct-0").unwrap();
        let c = threadsync::verify::compare(&self.db.pool, "acct-0", &expected)
            .await
            .unwrap();
        assert!(c.is_exact(), "{c}");
    }

    fn calls(&self) -> u64 {
        self.sim
            .stats()
            .accounts
            .get("acct-0")
            .map_or(0, |a| a.total)
    }

    async fn close(self) {
        self.sim.shutdown().await;
        self.db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_repeatedly_mid_run_lose_and_duplicate_nothing() {
    // A 250 requests/s limit makes the run's ~1,530 calls last at least six seconds on
    // any machine, so every kill below lands mid-run however fast the workers are.
    let fleet = Fleet::new(
        SimConfig {
            threads: 1500,
            messages: 12,
            seed: 21,
            latency_ms: 3,
            ..SimConfig::default()
        },
        250.0,
        16,
    )
    .await;
    let id = fleet.start_run().await;
    let mut workers = vec![fleet.worker("k0"), fleet.worker("k1")];
    let mut kills = 0;
    let t = Instant::now();
    while fleet.state(id).await.state != "done" {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "run did not finish under kills"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        // SIGKILL a worker each time the simulator has served another 200 calls (wherever
        // its jobs happen to be), and start a replacement.
        if kills < 6 && fleet.calls() >= 200 * (kills as u64 + 1) {
            let victim = kills % workers.len();
            workers[victim].signal(Signal::SIGKILL);
            assert!(workers[victim].wait_exit(Duration::from_secs(5)));
            workers[victim] = fleet.worker(&format!("k{victim}-{kills}"));
            kills += 1;
        }
    }
    assert_eq!(kills, 6, "the run finished before every kill landed");
    let s = fleet.state(id).await;
    assert_eq!(s.state, "done", "{s:?}");
    fleet.assert_exact().await;
    drop(workers);
    fleet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_all_workers_after_a_kill_costs_at_most_two_percent_more_calls() {
    let dataset = SimConfig {
        threads: 1200,
        messages: 10,
        seed: 23,
        latency_ms: 3,
        ..SimConfig::default()
    };

    // Uninterrupted reference run.
    let reference = Fleet::new(dataset.clone(), 0.0, 16).await;
    let id = reference.start_run().await;
    let workers = vec![reference.worker("r0"), reference.worker("r1")];
    reference.wait_done(id, Duration::from_secs(120)).await;
    let baseline = reference.calls();
    drop(workers);
    reference.close().await;

    // Same data; every worker is SIGKILLed about halfway, then all restart.
    let fleet = Fleet::new(dataset, 0.0, 16).await;
    let id = fleet.start_run().await;
    let mut workers = vec![fleet.worker("a0"), fleet.worker("a1")];
    let t = Instant::now();
    while fleet.state(id).await.threads_fetched < 500 {
        assert!(t.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in &mut workers {
        w.signal(Signal::SIGKILL);
        assert!(w.wait_exit(Duration::from_secs(5)));
    }
    let at_kill = fleet.state(id).await;
    assert_eq!(at_kill.state, "running", "killed mid-run");
    // Restart after the leases expire (10 s in this config).
    let workers = vec![fleet.worker("b0"), fleet.worker("b1")];
    let s = fleet.wait_done(id, Duration::from_secs(120)).await;
    assert_eq!(s.state, "done");
    fleet.assert_exact().await;
    let calls = fleet.calls();
    assert!(
        calls as f64 <= baseline as f64 * 1.02,
        "interrupted run made {calls} calls, uninterrupted {baseline} (> 2% more)"
    );
    drop(workers);
    fleet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_rate_limit_without_a_single_429() {
    let limit = 50.0;
    let fleet = Fleet::new(
        SimConfig {
            threads: 500,
            messages: 5,
            seed: 29,
            rps_limit: Some(limit),
            ..SimConfig::default()
        },
        limit,
        10,
    )
    .await;
    let id = fleet.start_run().await;
    let workers: Vec<WorkerProc> = (0..4).map(|i| fleet.worker(&format!("f{i}"))).collect();
    let s = fleet.wait_done(id, Duration::from_secs(120)).await;
    assert_eq!(s.state, "done");
    fleet.assert_exact().await;
    let stats = fleet.sim.stats();
    let a = &stats.accounts["acct-0"];
    assert_eq!(a.throttled_429, 0, "the simulator saw 429s: {a:?}");
    let peak = a.max_rps_1s as f64;
    assert!(
        peak <= limit && peak >= limit * 0.95,
        "peak {peak} req/s should be within 5% under the limit {limit}"
    );
    drop(workers);
    fleet.close().await;
}
