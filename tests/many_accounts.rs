//! Many accounts behind few worker slots: a job waiting for its account's send slot waits
//! snoozed, holding no worker slot, so every account runs at its own rate at once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::rig::{Opts, Rig};
use threadsync::sim::SimConfig;
use threadsync::sync::{self, Mode};

/// The largest number of running jobs any one account had, and the number of snoozed jobs
/// holding their account's place, right now.
async fn sample(rig: &Rig) -> (i64, i64) {
    let running = rig
        .db
        .count(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM threadsync.jobs
              WHERE status = 'running' AND concurrency_key IS NOT NULL
              GROUP BY concurrency_key) r",
        )
        .await;
    let held = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE status = 'pending' AND holds_key")
        .await;
    (running, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_accounts_behind_eight_slots_each_run_at_their_own_rate() {
    const ACCOUNTS: usize = 30;
    const RATE: f64 = 5.0;
    const IN_FLIGHT: i32 = 3;
    let rig = Rig::new(Opts {
        sim: SimConfig {
            threads: 40,
            messages: 3,
            seed: 15,
            rps_limit: Some(RATE),
            ..SimConfig::default()
        },
        accounts: ACCOUNTS,
        workers: 1,
        slots: 8,
        requests_per_second: RATE,
        max_in_flight: IN_FLIGHT,
        ..Opts::default()
    })
    .await;
    let t = Instant::now();
    let mut runs = BTreeMap::new();
    for account in rig.account_ids() {
        runs.insert(account.clone(), rig.start_for(&account, Mode::Full).await);
    }
    let (mut most_running, mut most_held) = (0, 0);
    let ids: Vec<i64> = runs.values().copied().collect();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "runs did not finish"
        );
        let (running, held) = sample(&rig).await;
        most_running = most_running.max(running);
        most_held = most_held.max(held);
        let (open, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state NOT IN ('done', 'failed')),
                    count(*) FILTER (WHERE state = 'failed')
               FROM threadsync.sync_runs WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&rig.db.pool)
        .await
        .expect("run states");
        assert_eq!(failed, 0, "failed runs");
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t.elapsed().as_secs_f64();

    let stats = rig.sim.stats();
    let mut floor: f64 = 0.0;
    for account in runs.keys() {
        let a = stats.accounts.get(account).expect("the account was served");
        assert_eq!(a.throttled_429, 0, "{account} was throttled");
        assert!(a.max_rps_1s <= RATE as u64, "{account}: {}", a.max_rps_1s);
        floor = floor.max(a.total as f64 / RATE);
        let c = rig.compare_for(account).await;
        assert!(c.is_exact(), "{account}: {c}");
        assert!(c.truth_messages > 0, "a dataset to compare");
    }
    eprintln!("{ACCOUNTS} accounts: {wall:.2} s against a floor of {floor:.2} s");
    // The cap holds with snoozed jobs counted under it, and the waits were snoozes.
    assert!(
        most_running <= i64::from(IN_FLIGHT),
        "{most_running} running for one account"
    );
    assert!(most_held > 0, "no job ever waited snoozed");
    // Waiting in worker slots, 8 slots would serve under 3 accounts' rates at once (3 jobs
    // each): about 10 times the floor. Snoozed waits leave the slots to the sends.
    assert!(
        wall <= floor * 2.0,
        "30 accounts took {wall:.1} s against a floor of {floor:.1} s"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snoozed_jobs_use_no_attempt_and_a_paused_accounts_wait_parked() {
    let rig = Rig::new(Opts {
        sim: SimConfig {
            threads: 30,
            messages: 2,
            seed: 16,
            rps_limit: Some(4.0),
            ..SimConfig::default()
        },
        workers: 1,
        slots: 8,
        requests_per_second: 4.0,
        max_in_flight: 4,
        ..Opts::default()
    })
    .await;
    let id = rig.start(Mode::Full).await;
    // Pause while jobs wait snoozed for their slots.
    let t = Instant::now();
    while sample(&rig).await.1 == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no job waited snoozed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        sync::flow::pause_by_operator(&rig.db.pool, common::rig::ACCOUNT, "test")
            .await
            .expect("pause")
    );
    // Each snoozed job wakes at its slot, finds the pause and parks.
    rig.db
        .wait_count(
            "SELECT count(*) FROM threadsync.jobs
              WHERE status = 'running' OR (status = 'pending' AND holds_key)",
            0,
            Duration::from_secs(20),
        )
        .await;
    let parked = rig
        .db
        .count(
            "SELECT count(*) FROM threadsync.jobs
              WHERE status = 'pending' AND run_at > now() AND last_error LIKE 'account acct-0 paused: %'",
        )
        .await;
    assert!(parked > 0, "no job parked on the pause");
    let used = rig
        .db
        .count(
            "SELECT coalesce(max(attempts), 0)::int8 FROM threadsync.jobs WHERE status = 'pending'",
        )
        .await;
    assert_eq!(used, 0, "a waiting job used an attempt");

    rig.resume_and_settle().await;
    let s = rig.finish(id, Duration::from_secs(30)).await;
    assert_eq!(s.state, "done", "{s:?}");
    // Every job ran to its end once: snoozes and parks gave their attempts back.
    let over = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE status = 'done' AND attempts <> 1")
        .await;
    assert_eq!(over, 0, "jobs that used more than one attempt");
    let done = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE status = 'done'")
        .await;
    assert!(done > 30, "the run's jobs: {done}");
    rig.assert_exact().await;
    assert_eq!(
        rig.sim.stats().accounts[common::rig::ACCOUNT].throttled_429,
        0,
        "throttled"
    );
    rig.close().await;
}
