//! eBay sync with real worker processes: SIGKILLs mid-run, restarts, and fleet-wide rate
//! limits across four processes.

mod common;

use std::time::{Duration, Instant};

use common::rig::{Opts, Rig, ACCOUNT};
use common::WorkerProc;
use nix::sys::signal::Signal;
use threadsync::sim::SimConfig;
use threadsync::sync::Mode;

/// A rig for worker processes of 16 slots each (none in this process), the account paced
/// at `rps` (0: unpaced) with `in_flight` requests at most; leases last 10 s.
async fn new_fleet(sim: SimConfig, rps: f64, in_flight: i32) -> Rig {
    Rig::new(Opts {
        sim,
        requests_per_second: rps,
        max_in_flight: in_flight,
        workers: 0,
        slots: 16,
        lease_secs: 10,
        ..Opts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_repeatedly_mid_run_lose_and_duplicate_nothing() {
    // A 250 requests/s limit makes the run's ~1,530 calls last at least six seconds on
    // any machine, so every kill below lands mid-run however fast the workers are.
    let fleet = new_fleet(
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
    let id = fleet.start(Mode::Full).await;
    let mut workers = vec![fleet.process("k0"), fleet.process("k1")];
    let mut kills = 0;
    let t = Instant::now();
    while fleet.status(id).await.state != "done" {
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
            workers[victim] = fleet.process(&format!("k{victim}-{kills}"));
            kills += 1;
        }
    }
    assert_eq!(kills, 6, "the run finished before every kill landed");
    let s = fleet.status(id).await;
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
    let reference = new_fleet(dataset.clone(), 0.0, 16).await;
    let id = reference.start(Mode::Full).await;
    let workers = vec![reference.process("r0"), reference.process("r1")];
    let s = reference.finish(id, Duration::from_secs(120)).await;
    assert_eq!(s.state, "done", "{s:?}");
    let baseline = reference.calls();
    drop(workers);
    reference.close().await;

    // Same data; every worker is SIGKILLed about halfway, then all restart.
    let fleet = new_fleet(dataset, 0.0, 16).await;
    let id = fleet.start(Mode::Full).await;
    let mut workers = vec![fleet.process("a0"), fleet.process("a1")];
    let t = Instant::now();
    while fleet.status(id).await.threads_fetched < 500 {
        assert!(t.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in &mut workers {
        w.signal(Signal::SIGKILL);
        assert!(w.wait_exit(Duration::from_secs(5)));
    }
    let at_kill = fleet.status(id).await;
    assert_eq!(at_kill.state, "running", "killed mid-run");
    // Restart after the leases expire (10 s in this config).
    let workers = vec![fleet.process("b0"), fleet.process("b1")];
    let s = fleet.finish(id, Duration::from_secs(120)).await;
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
    let fleet = new_fleet(
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
    let id = fleet.start(Mode::Full).await;
    let workers: Vec<WorkerProc> = (0..4).map(|i| fleet.process(&format!("f{i}"))).collect();
    let s = fleet.finish(id, Duration::from_secs(120)).await;
    assert_eq!(s.state, "done");
    fleet.assert_exact().await;
    let stats = fleet.sim.stats();
    let a = &stats.accounts[ACCOUNT];
    assert_eq!(a.throttled_429, 0, "the simulator saw 429s: {a:?}");
    let peak = a.max_rps_1s as f64;
    assert!(
        peak <= limit && peak >= limit * 0.95,
        "peak {peak} req/s should be within 5% under the limit {limit}"
    );
    drop(workers);
    fleet.close().await;
}
