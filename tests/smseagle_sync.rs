//! SMSEagle sync against the simulator over loopback HTTP and real PostgreSQL: folder
//! cursors, id gaps, pending-status checks over simulated time, a gateway outage, and a
//! SIGKILLed worker process.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::rig::{Opts, Provider, Rig};
use common::TestDb;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use threadsync::providers::smseagle::is_final;
use threadsync::sim::{self, Faults, SimConfig, SimHandle};
use threadsync::sync::{self, Mode};
use threadsync::verify::{self, Comparison};

fn sim_cfg(threads: usize, messages: usize) -> SimConfig {
    SimConfig {
        provider: sim::Provider::Smseagle,
        threads,
        messages,
        seed: 7,
        id_gap_rate: 0.0,
        ..SimConfig::default()
    }
}

/// A rig for SMSEagle account `acct-0`, one worker runtime; the seeded history is months
/// old, so the cold-start window reaches back far enough to include it.
fn sms(sim: SimConfig, extra_account_keys: &str) -> Opts {
    sms_window(sim, 36500.0, extra_account_keys)
}

fn sms_window(sim: SimConfig, cold_start_days: f64, extra_account_keys: &str) -> Opts {
    Opts {
        provider: Provider::SmsEagle,
        sim,
        lease_secs: 2,
        account_keys: format!("cold_start_days = {cold_start_days:?}\n{extra_account_keys}"),
        // Checks back off from 100 ms.
        extra: "[kinds.\"smseagle.status_check\"]\nbackoff_base_ms = 100\nbackoff_cap_ms = 1000\n"
            .into(),
        ..Opts::default()
    }
}

fn truth_messages(sim: &SimHandle) -> Vec<Value> {
    sim.truth(Some("acct-0"))["accounts"][0]["messages"]
        .as_array()
        .unwrap()
        .clone()
}

async fn db_ids(db: &TestDb) -> BTreeSet<String> {
    sqlx::query_scalar("SELECT message_id FROM threadsync.messages WHERE account_id = 'acct-0'")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn cursors(db: &TestDb) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT stream, position FROM threadsync.stream_cursors WHERE account_id = 'acct-0'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn max_id(truth: &[Value], folder: &str) -> Option<i64> {
    truth
        .iter()
        .filter(|m| m["folder"] == folder)
        .map(|m| m["id"].as_i64().unwrap())
        .max()
}

fn folder_requests(rig: &Rig) -> u64 {
    rig.calls_to("/api/v2/messages/{folder}")
}

#[tokio::test]
async fn incremental_reads_only_new_ids_per_folder() {
    let rig = Rig::new(sms(sim_cfg(10, 20), "")).await;
    let first = rig.run(Mode::Incremental).await;
    let truth = truth_messages(&rig.sim);
    // Every message, field by field, statuses included, filed under its remote number (the
    // thread, as for any provider), and nothing else.
    let cmp = rig.compare().await;
    assert!(cmp.is_exact(), "{cmp}");
    assert_eq!(cmp.truth_messages, truth.len());
    assert_eq!(first.messages_written as usize, truth.len());
    let c = cursors(&rig.db).await;
    assert_eq!(c.get("inbox").copied(), max_id(&truth, "inbox"));
    assert_eq!(c.get("sentitems").copied(), max_id(&truth, "sentitems"));
    let providers: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT provider FROM threadsync.threads WHERE account_id = 'acct-0'",
    )
    .fetch_all(&rig.db.pool)
    .await
    .unwrap();
    assert_eq!(providers, ["smseagle"]);

    // Nothing new: one request per folder, nothing written.
    let snapshot = "SELECT (SELECT count(*) FROM threadsync.messages WHERE synced_at > r.started_at)
                         + (SELECT count(*) FROM threadsync.threads WHERE synced_at > r.started_at)
                         + (SELECT count(*) FROM threadsync.stream_cursors WHERE updated_at > r.started_at)
                      FROM threadsync.sync_runs r WHERE r.id = (SELECT max(id) FROM threadsync.sync_runs)";
    rig.sim.reset_stats();
    let idle = rig.run(Mode::Incremental).await;
    assert_eq!(folder_requests(&rig), 3, "inbox, outbox, sentitems");
    assert_eq!(
        rig.db.count(snapshot).await,
        0,
        "an idle sync writes nothing"
    );
    assert_eq!(idle.messages_written, 0);
    rig.assert_exact().await;

    // n new messages: exactly those are inserted; each cursor is the highest id seen.
    let added = rig
        .sim
        .mutate(&json!({"account": "acct-0", "inbox": 7, "send": 3}))
        .unwrap();
    let before = db_ids(&rig.db).await;
    let third = rig.run(Mode::Incremental).await;
    let after = db_ids(&rig.db).await;
    let new: BTreeSet<String> = after.difference(&before).cloned().collect();
    let mut expected = BTreeSet::new();
    for id in added["inbox_ids"].as_array().unwrap() {
        expected.insert(format!("in:{id}"));
    }
    for id in added["sent_ids"].as_array().unwrap() {
        expected.insert(format!("out:{id}"));
    }
    assert_eq!(new, expected);
    assert_eq!(third.messages_written, 10);
    let inbox_new = third.messages_by_stream.get("inbox").copied();
    assert_eq!(inbox_new, Some(7), "{:?}", third.messages_by_stream);
    let c = cursors(&rig.db).await;
    let top_inbox = added["inbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .max();
    assert_eq!(c.get("inbox").copied(), top_inbox);
    // Just sent: still in the outbox (the simulated modem picks up after 2-6 s).
    let top_sent = added["sent_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .max();
    assert_eq!(c.get("outbox").copied(), top_sent);
    // All there, under the right numbers. Only the statuses of the sends can differ: the
    // modem may have picked them up since the outbox was read.
    let cmp = rig.compare().await;
    let [missing_t, extra_t, missing_m, extra_m, misfiled, differing_t] = [
        cmp.missing_threads,
        cmp.extra_threads,
        cmp.missing_messages,
        cmp.extra_messages,
        cmp.misfiled_messages,
        cmp.differing_threads,
    ];
    assert_eq!(
        [
            missing_t,
            extra_t,
            missing_m,
            extra_m,
            misfiled,
            differing_t
        ],
        [0; 6],
        "{cmp}"
    );
    assert!(cmp.differing_messages <= 3, "{cmp}");
    // Once the modem took them and the sent folder is read, the copy is exact.
    rig.sim.advance_clock(10.0);
    rig.run(Mode::Incremental).await;
    rig.assert_exact().await;
    rig.close().await;
}

/// The copy against what a first sync whose window started between `before` and `after`
/// holds. Messages are minutes apart: at most one falls between the two bounds, so the copy
/// equals what one of them expects.
async fn exact_within(
    rig: &Rig,
    before: chrono::DateTime<chrono::Utc>,
    after: chrono::DateTime<chrono::Utc>,
) -> Comparison {
    let mut seen = Vec::new();
    for since in [before, after] {
        let expected = rig.sim.expected_since("acct-0", since).unwrap();
        let c = verify::compare(&rig.db.pool, "acct-0", &expected)
            .await
            .unwrap();
        if c.is_exact() {
            return c;
        }
        seen.push(c.to_string());
    }
    panic!("the copy equals neither window: {}", seen.join("\n"));
}

#[tokio::test]
async fn a_first_sync_holds_exactly_the_cold_start_window() {
    let sim_cfg = sim_cfg(10, 40);
    // Start the window in the middle of the seeded history.
    let probe = sim::start(sim_cfg.clone()).await.unwrap();
    let mut dates: Vec<chrono::DateTime<chrono::Utc>> = probe
        .expected("acct-0")
        .unwrap()
        .threads
        .iter()
        .flat_map(|t| t.messages.iter().map(|m| m.sent_at))
        .collect();
    probe.shutdown().await;
    dates.sort();
    let middle = dates[dates.len() / 2];
    let days = (chrono::Utc::now() - middle).num_seconds() as f64 / 86_400.0;
    let rig = Rig::new(sms_window(sim_cfg, days, "")).await;

    // The worker's window starts `days` before the moment each folder job ran (the same
    // arithmetic as the config's).
    let window = chrono::Duration::from_std(Duration::from_secs_f64(days * 86_400.0)).unwrap();
    let before = chrono::Utc::now() - window;
    rig.run(Mode::Incremental).await;
    let after = chrono::Utc::now() - window;
    let first = exact_within(&rig, before, after).await;
    let all = rig.compare().await;
    assert!(
        first.truth_messages > 0 && first.truth_messages < all.truth_messages,
        "the window cuts the history: {first}\n{all}"
    );
    // Against the whole history, what lies before the window is missing, and only that.
    assert_eq!(
        all.missing_messages,
        all.truth_messages - first.truth_messages,
        "{all}"
    );
    assert_eq!(
        all.extra_threads + all.extra_messages + all.misfiled_messages + all.differing_messages,
        0,
        "{all}"
    );

    // Later messages are read by id, whatever the window.
    rig.sim
        .mutate(&json!({"account": "acct-0", "inbox": 4}))
        .unwrap();
    rig.run(Mode::Incremental).await;
    let second = exact_within(&rig, before, after).await;
    assert_eq!(second.truth_messages, first.truth_messages + 4, "{second}");
    rig.close().await;
}

#[tokio::test]
async fn id_gaps_lose_nothing() {
    let cfg = SimConfig {
        id_gap_rate: 0.3,
        ..sim_cfg(10, 20)
    };
    let rig = Rig::new(sms(cfg, "batch_size = 7\n")).await;
    rig.run(Mode::Incremental).await;
    let truth = rig.sim.truth(Some("acct-0"));
    let skipped = truth["accounts"][0]["skipped_ids"].as_array().unwrap();
    assert!(skipped.len() > 10, "the gateway must skip ids");
    let msgs = truth_messages(&rig.sim);
    rig.assert_exact().await;
    assert!(
        folder_requests(&rig) as usize > msgs.len() / 7,
        "read in batches of 7"
    );
    assert_eq!(
        cursors(&rig.db).await.get("sentitems").copied(),
        max_id(&msgs, "sentitems")
    );
    rig.close().await;
}

/// Sends `per_validity` messages with each validity, lets the modem pick them up, and
/// syncs so their checks start. Returns the followed gateway ids.
async fn send_and_follow(rig: &Rig, per_validity: usize) -> Vec<u64> {
    for v in ["5m", "10m", "30m", "1h"] {
        rig.sim
            .mutate(&json!({"account": "acct-0", "send": per_validity, "validity": v}))
            .unwrap();
    }
    rig.sim.advance_clock(10.0);
    rig.run(Mode::Incremental).await;
    let followed: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM threadsync.deliveries WHERE account_id = 'acct-0' ORDER BY 1",
    )
    .fetch_all(&rig.db.pool)
    .await
    .unwrap();
    followed
        .iter()
        .map(|m| m.trim_start_matches("out:").parse().unwrap())
        .collect()
}

async fn wait_settled(db: &TestDb, limit: Duration) {
    db.wait_count(
        "SELECT count(*) FROM threadsync.deliveries WHERE outcome = 'pending'",
        0,
        limit,
    )
    .await;
}

/// The copy equals the gateway's data, statuses included, and every followed message
/// ended as the simulator says: its final status, or expired with the last status the
/// gateway showed. Returns (final, expired).
async fn assert_matches_truth(rig: &Rig, followed: &[u64]) -> (usize, usize) {
    rig.assert_exact().await;
    let truth: HashMap<u64, String> = rig
        .sim
        .expected("acct-0")
        .unwrap()
        .threads
        .iter()
        .flat_map(|t| t.messages.iter())
        .filter_map(|m| {
            let id = m.message_id.strip_prefix("out:")?.parse().ok()?;
            Some((id, m.status.clone()?))
        })
        .collect();
    let (mut finals, mut expired) = (0, 0);
    for id in followed {
        let (status, outcome): (Option<String>, String) = sqlx::query_as(
            "SELECT m.status, d.outcome FROM threadsync.deliveries d
               JOIN threadsync.messages m USING (account_id, message_id)
              WHERE d.account_id = 'acct-0' AND d.message_id = $1",
        )
        .bind(format!("out:{id}"))
        .fetch_one(&rig.db.pool)
        .await
        .unwrap();
        let want = &truth[id];
        assert_eq!(status.as_deref(), Some(want.as_str()), "message {id}");
        if is_final(want) {
            assert_eq!(outcome, "final", "message {id}");
            finals += 1;
        } else {
            assert_eq!(outcome, "expired", "message {id} ({want})");
            expired += 1;
        }
    }
    (finals, expired)
}

fn lookups(sim: &SimHandle) -> BTreeMap<String, u64> {
    sim.stats()
        .accounts
        .get("acct-0")
        .map(|a| a.lookups_by_id.clone())
        .unwrap_or_default()
}

const FAST_CHECKS: &str = "status_check_first_secs = 0.1\nstatus_check_interval_secs = 0.3\n";

#[tokio::test]
async fn pending_statuses_settle_or_expire_and_checks_stop() {
    let cfg = SimConfig {
        no_report_rate: 0.35,
        ..sim_cfg(5, 2)
    };
    let rig = Rig::new(sms(cfg, FAST_CHECKS)).await;
    rig.run(Mode::Incremental).await;
    let followed = send_and_follow(&rig, 6).await;
    assert!(followed.len() >= 20, "{followed:?}");
    // A while of checks on the gateway's present: reports due later have not come yet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pending = rig
        .db
        .count("SELECT count(*) FROM threadsync.deliveries WHERE outcome = 'pending'")
        .await;
    assert!(
        pending > 0,
        "1h validities cannot all be final within seconds"
    );
    // Two simulated hours later every report that will ever come has come.
    rig.sim.advance_clock(7200.0);
    wait_settled(&rig.db, Duration::from_secs(15)).await;
    let (finals, expired) = assert_matches_truth(&rig, &followed).await;
    assert!(
        finals > 0 && expired > 0,
        "final {finals}, expired {expired}"
    );

    // The run that found them counts their checks, though it finished long ago.
    let run_id = sync::latest_run(&rig.db.pool, "acct-0")
        .await
        .unwrap()
        .unwrap();
    let s = sync::run_status(&rig.db.pool, run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.settled + s.expired) as usize, followed.len(), "{s:?}");
    assert!(
        s.checks_made as usize >= followed.len() && s.statuses_changed > 0,
        "{s:?}"
    );

    // No check runs for a message after it settled.
    let seen = lookups(&rig.sim);
    for id in &followed {
        assert!(
            seen.get(&id.to_string()).copied().unwrap_or(0) >= 1,
            "message {id} never checked"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(lookups(&rig.sim), seen, "lookups after settling");
    let active = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE kind = 'smseagle.status_check' AND status IN ('pending', 'running')")
        .await;
    assert_eq!(active, 0);
    rig.close().await;
}

#[tokio::test]
async fn gateway_outage_delays_checks_without_dropping_them() {
    let cfg = SimConfig {
        no_report_rate: 0.3,
        ..sim_cfg(5, 2)
    };
    let rig = Rig::new(sms(cfg, FAST_CHECKS)).await;
    rig.run(Mode::Incremental).await;
    let followed = send_and_follow(&rig, 4).await;
    assert!(!followed.is_empty());

    // The gateway fails every request: half 5xx, half dropped connections.
    rig.sim.set_faults(Faults {
        error_5xx: 0.5,
        timeout: 0.5,
        timeout_ms: 200,
        ..Faults::default()
    });
    rig.sim.advance_clock(7200.0);
    let t0 = rig.calls();
    let outage = Duration::from_secs(3);
    tokio::time::sleep(outage).await;
    let during = rig.calls() - t0;
    // Backoff (100 ms doubling, capped at the 0.3 s interval) allows about ten tries per
    // check in 3 s; a hot loop would make hundreds.
    assert!(during > 0, "checks kept trying");
    assert!(
        during <= followed.len() as u64 * 14,
        "{during} requests for {} checks in {outage:?}",
        followed.len()
    );
    let failed = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE status = 'failed'")
        .await;
    assert_eq!(failed, 0, "an outage never drops a check");
    let noted = rig
        .db
        .count("SELECT count(*) FROM threadsync.deliveries WHERE last_error IS NOT NULL")
        .await;
    assert!(noted > 0, "the gateway failure is recorded");

    rig.sim.set_faults(Faults::default());
    wait_settled(&rig.db, Duration::from_secs(15)).await;
    assert_matches_truth(&rig, &followed).await;
    rig.close().await;
}

#[tokio::test]
async fn sigkill_during_a_folder_batch_keeps_cursor_and_rows_consistent() {
    let rig = Rig::new(Opts {
        workers: 0,
        slots: 8,
        ..sms(
            SimConfig {
                latency_ms: 15,
                id_gap_rate: 0.1,
                ..sim_cfg(40, 50)
            },
            "batch_size = 25\n",
        )
    })
    .await;
    let mut w1 = rig.process("sms-kill-1");

    let run_id = rig.start(Mode::Incremental).await;
    // Kill once some batches committed, in the middle of the next one.
    let t = Instant::now();
    while rig
        .db
        .count("SELECT count(*) FROM threadsync.messages")
        .await
        < 300
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no progress: {}",
            w1.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w1.signal(Signal::SIGKILL);
    assert!(w1.wait_exit(Duration::from_secs(5)));
    let at_kill = rig
        .db
        .count("SELECT count(*) FROM threadsync.messages")
        .await;
    let _w2 = rig.process("sms-kill-2");
    let status = rig.finish(run_id, Duration::from_secs(40)).await;
    assert_eq!(status.state, "done", "{status:?}");

    let truth = truth_messages(&rig.sim);
    let cmp = rig.compare().await;
    assert!(
        (at_kill as usize) < cmp.truth_messages,
        "killed before the end"
    );
    assert!(
        cmp.is_exact(),
        "no gap, no extra row, no stale field: {cmp}"
    );
    let c = cursors(&rig.db).await;
    assert_eq!(c.get("inbox").copied(), max_id(&truth, "inbox"));
    assert_eq!(c.get("sentitems").copied(), max_id(&truth, "sentitems"));
    // Each message counted once as new, whatever the kill interrupted.
    assert_eq!(status.messages_written as usize, truth.len(), "{status:?}");
    rig.close().await;
}
