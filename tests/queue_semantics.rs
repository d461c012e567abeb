//! Queue semantics against real PostgreSQL, with workers running in this process.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::TestDb;
use serde_json::json;
use threadsync::config::Config;
use threadsync::queue::{claim, cron, enqueue, enqueue_batch, fence, maintenance, NewJob, Scope};
use threadsync::worker::Worker;
use tokio_util::sync::CancellationToken;

fn config(text: &str) -> Arc<Config> {
    Arc::new(Config::parse(text, "test.toml").expect("config"))
}

fn start_worker(
    db: &TestDb,
    cfg: Arc<Config>,
    name: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let registry = threadsync::jobs::registry(&cfg, &threadsync::sync::Tokens::Env);
    let w = Worker::new(
        db.pool.clone(),
        Arc::new(cfg.queue.clone()),
        registry,
        name,
        8,
    );
    (stop.clone(), tokio::spawn(w.run(stop)))
}

#[tokio::test]
async fn claims_follow_priority_then_run_at_and_respect_the_limit() {
    let db = TestDb::new().await;
    let now = Utc::now();
    let low_old = enqueue(
        &db.pool,
        &NewJob::new("k", json!({})).run_at(now - chrono::Duration::seconds(60)),
    )
    .await
    .unwrap();
    let high_new = enqueue(
        &db.pool,
        &NewJob::new("k", json!({}))
            .priority(5)
            .run_at(now - chrono::Duration::seconds(1)),
    )
    .await
    .unwrap();
    let high_old = enqueue(
        &db.pool,
        &NewJob::new("k", json!({}))
            .priority(5)
            .run_at(now - chrono::Duration::seconds(30)),
    )
    .await
    .unwrap();
    let future = enqueue(
        &db.pool,
        &NewJob::new("k", json!({}))
            .priority(9)
            .run_at(now + chrono::Duration::seconds(3600)),
    )
    .await
    .unwrap();

    let got = claim(&db.pool, "t", 2, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![high_old, high_new]
    );
    let got = claim(&db.pool, "t", 10, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![low_old],
        "the future job must wait"
    );
    assert_eq!(db.status_of(future).await, "pending");
    assert_eq!(got[0].attempts, 1);
    db.close().await;
}

#[tokio::test]
async fn dedupe_key_is_unique_among_active_jobs_only() {
    let db = TestDb::new().await;
    let job = NewJob::new("diag.noop", json!({})).dedupe("refresh:acct:t1");
    let a = enqueue(&db.pool, &job).await.unwrap();
    let b = enqueue(&db.pool, &job).await.unwrap();
    assert_eq!(a, b, "a second enqueue while pending returns the same job");
    // The SQL function other apps call behaves the same, inside their own transaction.
    let mut tx = db.pool.begin().await.unwrap();
    let c: i64 = sqlx::query_scalar(
        "SELECT threadsync.enqueue('diag.noop', '{}'::jsonb, dedupe_key => 'refresh:acct:t1')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(a, c);
    assert_eq!(
        enqueue_batch(&db.pool, &[job.clone(), job.clone()])
            .await
            .unwrap(),
        0
    );

    // Claimed (running) still dedupes; once done, a new one is created.
    let claimed = claim(&db.pool, "t", 1, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs;
    assert_eq!(enqueue(&db.pool, &job).await.unwrap(), a);
    let f = threadsync::queue::Fence {
        id: claimed[0].id,
        token: claimed[0].lease_token,
    };
    assert_eq!(fence::complete_batch(&db.pool, &[f]).await.unwrap(), 1);
    let d = enqueue(&db.pool, &job).await.unwrap();
    assert_ne!(a, d, "after the first finished, asking again runs again");
    db.close().await;
}

#[tokio::test]
async fn concurrency_key_caps_running_jobs_across_concurrent_claimers() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..40)
        .map(|_| NewJob::new("k", json!({})).concurrency("acct:a", 3))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.unwrap();
    let free: Vec<NewJob> = (0..5).map(|_| NewJob::new("free", json!({}))).collect();
    enqueue_batch(&db.pool, &free).await.unwrap();

    // Eight claimers race; together they may start at most 3 keyed jobs.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            claim(
                &pool,
                &format!("c{i}"),
                10,
                Duration::from_secs(30),
                &[],
                Scope::All,
            )
            .await
            .unwrap()
            .jobs
        }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let keyed = claimed.iter().filter(|j| j.kind == "k").count();
    assert_eq!(keyed, 3, "exactly the key's limit may run");
    assert_eq!(
        claimed.iter().filter(|j| j.kind == "free").count(),
        5,
        "a saturated key must not starve other jobs"
    );
    assert_eq!(db.count("SELECT count(*) FROM threadsync.jobs WHERE status = 'running' AND concurrency_key = 'acct:a'").await, 3);

    // Finishing one frees exactly one place.
    let one = claimed.iter().find(|j| j.kind == "k").unwrap();
    fence::complete_batch(
        &db.pool,
        &[threadsync::queue::Fence {
            id: one.id,
            token: one.lease_token,
        }],
    )
    .await
    .unwrap();
    let next = claim(&db.pool, "c", 10, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs;
    assert_eq!(next.len(), 1);
    db.close().await;
}

fn fence_of(j: &threadsync::queue::ClaimedJob) -> threadsync::queue::Fence {
    threadsync::queue::Fence {
        id: j.id,
        token: j.lease_token,
    }
}

#[tokio::test]
async fn a_snoozed_job_keeps_its_place_under_its_key_and_uses_no_attempt() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..4)
        .map(|_| NewJob::new("k", json!({})).concurrency("acct:s", 2))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.unwrap();
    let lease = Duration::from_secs(30);

    // One claim of room for 4 takes the key's 2 and says it left some out.
    let first = claim(&db.pool, "c", 4, lease, &[], Scope::All)
        .await
        .unwrap();
    assert_eq!(first.jobs.len(), 2);
    assert!(first.capped, "the key filled up within the claim");
    let a = &first.jobs[0];
    assert_eq!(a.woke_late, None, "not snoozed");

    // Snoozed for a moment, it still counts under the key: the other two wait.
    let at = Utc::now() + chrono::Duration::milliseconds(600);
    let wait = fence::snooze(&db.pool, fence_of(a), at).await.unwrap();
    assert!(wait.is_some_and(|w| w > 0.0 && w <= 0.6), "{wait:?}");
    let none = claim(&db.pool, "c", 4, lease, &[], Scope::All)
        .await
        .unwrap();
    assert!(none.jobs.is_empty(), "claimed past the key's cap: {none:?}");
    assert!(!none.capped, "keys at their cap are skipped up front");

    // Due, it is claimed again, told how late, with its attempt given back; a claim of
    // snoozed jobs only leaves other due jobs alone.
    let plain = enqueue(&db.pool, &NewJob::new("plain", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = claim(&db.pool, "c", 4, lease, &[], Scope::Freed(&[]))
        .await
        .unwrap();
    assert_eq!(again.jobs.len(), 1, "{again:?}");
    let woken = &again.jobs[0];
    assert_eq!(woken.id, a.id);
    assert_eq!(woken.attempts, 1, "the snooze used no attempt");
    let (late, _) = woken.woke_late.expect("claimed after a snooze");
    // Due 600 ms after the snooze and claimed 700 ms after it.
    assert!(
        late >= Duration::from_millis(50) && late < Duration::from_secs(5),
        "{late:?}"
    );
    let rest = claim(&db.pool, "c", 4, lease, &[], Scope::All)
        .await
        .unwrap();
    assert_eq!(
        rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![plain]
    );
    assert!(
        fence::snooze(&db.pool, fence_of(a), at)
            .await
            .unwrap()
            .is_none(),
        "the old lease cannot snooze the job"
    );
    // A cancelled snoozed job gives its place up.
    let b = &first.jobs[1];
    fence::snooze(
        &db.pool,
        fence_of(b),
        Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    threadsync::queue::admin::cancel(&db.pool, b.id)
        .await
        .unwrap();
    let freed = claim(&db.pool, "c", 4, lease, &[], Scope::All)
        .await
        .unwrap();
    assert_eq!(freed.jobs.len(), 1, "one place freed: {freed:?}");
    db.close().await;
}

#[tokio::test]
async fn a_narrow_claim_reads_only_the_freed_keys_in_priority_order() {
    let db = TestDb::new().await;
    let lease = Duration::from_secs(30);
    let a = |p: i32| {
        NewJob::new("k", json!({}))
            .concurrency("acct:a", 1)
            .priority(p)
    };
    let b = NewJob::new("k", json!({})).concurrency("acct:b", 1);
    let mut ids = Vec::new();
    for job in [
        a(0),
        a(0),
        a(5),
        b.clone(),
        b,
        NewJob::new("plain", json!({})),
    ] {
        ids.push(enqueue(&db.pool, &job).await.unwrap());
    }
    let wide = claim(&db.pool, "c", 10, lease, &[], Scope::All)
        .await
        .unwrap();
    let mut taken: Vec<i64> = wide.jobs.iter().map(|j| j.id).collect();
    taken.sort();
    assert_eq!(
        taken,
        vec![ids[2], ids[3], ids[5]],
        "each key's first, and the unkeyed"
    );
    let a_job = wide.jobs.iter().find(|j| j.id == ids[2]).unwrap();
    assert_eq!(a_job.concurrency_key.as_deref(), Some("acct:a"));

    // While a's place is taken, naming the key claims nothing; once it ends, its next job
    // is claimed and no other key's.
    let keys = ["acct:a".to_string()];
    let none = claim(&db.pool, "c", 10, lease, &[], Scope::Freed(&keys))
        .await
        .unwrap();
    assert!(none.jobs.is_empty(), "{none:?}");
    fence::complete_batch(&db.pool, &[fence_of(a_job)])
        .await
        .unwrap();
    let next = claim(&db.pool, "c", 10, lease, &[], Scope::Freed(&keys))
        .await
        .unwrap();
    assert_eq!(
        next.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0]],
        "one place, the oldest of equal priority"
    );
    db.close().await;
}

#[tokio::test]
async fn errors_back_off_reschedule_or_fail_and_bad_jobs_fail_alone() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\npoll_ms = 100\n[retry]\nmax_attempts = 3\nbackoff_base_ms = 60000\nbackoff_cap_ms = 60000\n");
    let transient = enqueue(
        &db.pool,
        &NewJob::new("diag.fail", json!({"mode": "transient"})),
    )
    .await
    .unwrap();
    let permanent = enqueue(
        &db.pool,
        &NewJob::new("diag.fail", json!({"mode": "permanent"})),
    )
    .await
    .unwrap();
    let later = enqueue(
        &db.pool,
        &NewJob::new("diag.fail", json!({"mode": "retry_after", "secs": 600})),
    )
    .await
    .unwrap();
    let unknown = enqueue(&db.pool, &NewJob::new("no.such.kind", json!({})))
        .await
        .unwrap();
    let undecodable = enqueue(&db.pool, &NewJob::new("diag.sleep", json!({"ms": "soon"})))
        .await
        .unwrap();
    let good: Vec<NewJob> = (0..50)
        .map(|_| NewJob::new("diag.write", json!({})))
        .collect();
    enqueue_batch(&db.pool, &good).await.unwrap();

    let (stop, task) = start_worker(&db, cfg, "w1");
    db.wait_count(
        "SELECT count(*) FROM threadsync.diag_writes",
        50,
        Duration::from_secs(20),
    )
    .await;
    db.wait_count(
        "SELECT count(*) FROM threadsync.jobs WHERE status = 'running'",
        0,
        Duration::from_secs(10),
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let row = |id: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32, Option<String>, f64)>(
                "SELECT status, attempts, last_error, extract(epoch FROM run_at - now())::float8 FROM threadsync.jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (st, attempts, err, due_in) = row(transient).await;
    assert_eq!((st.as_str(), attempts), ("pending", 1));
    assert!(err.unwrap().contains("transient"));
    assert!(
        (25.0..=61.0).contains(&due_in),
        "backoff with jitter between half and all of 60 s, got {due_in}"
    );

    let (st, _, err, _) = row(permanent).await;
    assert_eq!(st, "failed");
    assert!(err.unwrap().contains("permanent failure"));

    let (st, attempts, err, due_in) = row(later).await;
    assert_eq!(
        (st.as_str(), attempts),
        ("pending", 0),
        "retry-after does not use an attempt"
    );
    assert!(err.unwrap().contains("retry later"));
    assert!((590.0..=601.0).contains(&due_in), "{due_in}");

    let (st, _, err, _) = row(unknown).await;
    assert_eq!(st, "failed");
    assert!(err.unwrap().contains("unknown job kind"));
    let (st, _, err, _) = row(undecodable).await;
    assert_eq!(st, "failed");
    assert!(err.unwrap().contains("undecodable payload"));
    db.close().await;
}

#[tokio::test]
async fn transient_failures_end_failed_after_max_attempts() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\npoll_ms = 50\n[kinds.\"diag.fail\"]\nmax_attempts = 3\nbackoff_base_ms = 10\nbackoff_cap_ms = 20\n");
    let id = enqueue(
        &db.pool,
        &NewJob::new("diag.fail", json!({"mode": "transient"})),
    )
    .await
    .unwrap();
    let (stop, task) = start_worker(&db, cfg, "w");
    db.wait_count(
        &format!("SELECT count(*) FROM threadsync.jobs WHERE id = {id} AND status = 'failed'"),
        1,
        Duration::from_secs(20),
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        db.count(&format!(
            "SELECT attempts::int8 FROM threadsync.jobs WHERE id = {id}"
        ))
        .await,
        3
    );
    db.close().await;
}

/// A job's own max_attempts (set at enqueue) wins over its kind's policy, both ways.
#[tokio::test]
async fn a_jobs_own_max_attempts_wins_over_the_kinds_policy() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\npoll_ms = 50\n[kinds.\"diag.fail\"]\nmax_attempts = 3\nbackoff_base_ms = 10\nbackoff_cap_ms = 20\n");
    let transient = || NewJob::new("diag.fail", json!({"mode": "transient"}));
    let fewer = enqueue(&db.pool, &transient().max_attempts(2))
        .await
        .unwrap();
    let more = enqueue(&db.pool, &transient().max_attempts(5))
        .await
        .unwrap();
    let (stop, task) = start_worker(&db, cfg, "w");
    db.wait_count(
        &format!("SELECT count(*) FROM threadsync.jobs WHERE id IN ({fewer}, {more}) AND status = 'failed'"),
        2,
        Duration::from_secs(20),
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    for (id, want) in [(fewer, 2), (more, 5)] {
        let attempts = db
            .count(&format!(
                "SELECT attempts::int8 FROM threadsync.jobs WHERE id = {id}"
            ))
            .await;
        assert_eq!(attempts, want, "job {id}");
    }
    db.close().await;
}

/// Jobs claimed past a per-kind limit go straight back to pending, saying why (not
/// "released at worker shutdown").
#[tokio::test]
async fn jobs_claimed_past_a_kind_limit_are_handed_back_with_that_reason() {
    let db = TestDb::new().await;
    let cfg = config(
        "[queue]\npoll_ms = 50\nshutdown_grace_secs = 0\n[kinds.\"diag.sleep\"]\nconcurrency = 1\n",
    );
    let jobs: Vec<NewJob> = (0..4)
        .map(|_| NewJob::new("diag.sleep", json!({"ms": 5000})))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.unwrap();
    let (stop, task) = start_worker(&db, cfg, "w");
    // One claim takes all four; one starts and three go back.
    db.wait_count(
        "SELECT count(*) FROM threadsync.jobs WHERE status = 'pending' AND last_error = \
         'released unstarted: kind diag.sleep is at its concurrency limit (1) on worker w'",
        3,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM threadsync.jobs WHERE last_error LIKE '%shutdown%'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM threadsync.jobs WHERE status = 'running'")
            .await,
        1
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    db.close().await;
}

#[tokio::test]
async fn a_handler_whose_lease_was_lost_commits_nothing() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\nlease_secs = 60\npoll_ms = 50\nshutdown_grace_secs = 0\n");
    // diag.sleep's own handler: it sleeps, then writes its row and completes the job in one
    // fenced statement.
    let id = enqueue(&db.pool, &NewJob::new("diag.sleep", json!({"ms": 1500})))
        .await
        .unwrap();
    let (stop_old, old) = start_worker(&db, cfg.clone(), "old");
    db.wait_count(
        "SELECT count(*) FROM threadsync.jobs WHERE status = 'running'",
        1,
        Duration::from_secs(10),
    )
    .await;
    // While it sleeps, its lease runs out and the reaper hands the job to another claimer.
    let expire = || async {
        sqlx::query(
            "UPDATE threadsync.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = $1",
        )
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
        maintenance::reap(&db.pool, &cfg.queue).await.unwrap()
    };
    assert_eq!(expire().await, 1);
    let newer = claim(&db.pool, "new", 1, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs
        .remove(0);
    assert_eq!(newer.attempts, 2, "the lost attempt counts");
    // The old handler wakes and commits: the fence refuses it, and its row is not written.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop_old.cancel();
    old.await.unwrap().unwrap();
    let rows = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT worker FROM threadsync.diag_writes WHERE job_id = $1 ORDER BY worker",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(
        rows().await,
        Vec::<String>::new(),
        "a stale handler writes nothing"
    );
    assert_eq!(db.status_of(id).await, "running", "still the new claimer's");
    let stale = threadsync::queue::Fence {
        id,
        token: newer.lease_token,
    };
    // That claimer goes silent too; a worker that holds the job now completes it once.
    assert_eq!(expire().await, 1);
    let (stop, task) = start_worker(&db, cfg, "w2");
    db.wait_count(
        &format!("SELECT count(*) FROM threadsync.jobs WHERE id = {id} AND status = 'done'"),
        1,
        Duration::from_secs(10),
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(rows().await, vec!["w2".to_string()]);
    assert!(
        !fenced(&db, stale, &threadsync::queue::Finish::Done).await,
        "a stale token takes no completion"
    );
    db.close().await;
}

#[tokio::test]
async fn notify_wakes_an_idle_worker_well_before_the_poll_floor() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\npoll_ms = 1000\n");
    let (stop, task) = start_worker(&db, cfg, "w");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Without NOTIFY a pickup waits for the next poll (up to 1 s, 200 ms or more four
    // times in five); one slow pickup on a loaded machine is not a failure.
    let mut pickups = Vec::new();
    for _ in 0..7 {
        let id = enqueue(&db.pool, &NewJob::new("diag.noop", json!({})))
            .await
            .unwrap();
        db.wait_count(
            &format!("SELECT count(*) FROM threadsync.jobs WHERE id = {id} AND status = 'done'"),
            1,
            Duration::from_secs(5),
        )
        .await;
        let ms: f64 = sqlx::query_scalar("SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM threadsync.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        pickups.push(ms);
        tokio::time::sleep(Duration::from_millis(rand_ms())).await;
    }
    let quick = pickups.iter().filter(|ms| **ms < 200.0).count();
    assert!(
        quick >= 5,
        "pickups {pickups:?} ms: LISTEN/NOTIFY is not waking the worker"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    db.close().await;
}

fn rand_ms() -> u64 {
    100 + rand::random::<u64>() % 300
}

#[tokio::test]
async fn cron_fires_a_missed_tick_once() {
    let db = TestDb::new().await;
    let cfg = config(
        "[[schedules]]\nname = \"every-minute\"\ncron = \"0 * * * * *\"\nkind = \"diag.noop\"\n",
    );
    let now = Utc::now();
    assert_eq!(
        cron::fire_due(&db.pool, &cfg.queue.schedules, now)
            .await
            .unwrap(),
        0,
        "first sight only records the schedule"
    );
    // Pretend the fleet was down for an hour: 60 ticks were missed.
    sqlx::query("UPDATE threadsync.cron_ticks SET last_tick = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        cron::fire_due(&db.pool, &cfg.queue.schedules, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cron::fire_due(&db.pool, &cfg.queue.schedules, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM threadsync.jobs WHERE kind = 'diag.noop'")
            .await,
        1
    );
    db.close().await;
}

#[tokio::test]
async fn retention_prunes_old_finished_jobs_in_batches() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO threadsync.jobs (kind, status, finished_at)
         SELECT 'old', 'done', now() - interval '10 days' FROM generate_series(1, 2500)
         UNION ALL SELECT 'old', 'failed', now() - interval '10 days'
         UNION ALL SELECT 'recent', 'done', now() - interval '1 hour'
         UNION ALL SELECT 'pending', 'pending', NULL",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let n = maintenance::prune(&db.pool, Duration::from_secs(7 * 24 * 3600), 1000)
        .await
        .unwrap();
    assert_eq!(n, 2501);
    assert_eq!(db.count("SELECT count(*) FROM threadsync.jobs").await, 2);
    db.close().await;
}

#[tokio::test]
async fn sigterm_style_shutdown_releases_unfinished_jobs_at_once() {
    let db = TestDb::new().await;
    let cfg = config("[queue]\nshutdown_grace_secs = 2\nlease_secs = 60\npoll_ms = 50\n");
    let quick = enqueue(&db.pool, &NewJob::new("diag.sleep", json!({"ms": 300})))
        .await
        .unwrap();
    let slow = enqueue(&db.pool, &NewJob::new("diag.sleep", json!({"ms": 60000})))
        .await
        .unwrap();
    let (stop, task) = start_worker(&db, cfg, "w");
    db.wait_count(
        "SELECT count(*) FROM threadsync.jobs WHERE status = 'running'",
        2,
        Duration::from_secs(10),
    )
    .await;
    let t = Instant::now();
    stop.cancel();
    task.await.unwrap().unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(
        db.status_of(quick).await,
        "done",
        "in-flight work within the grace period finishes"
    );
    assert_eq!(
        db.status_of(slow).await,
        "pending",
        "the rest goes back at once, not after the lease"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT attempts::int8 FROM threadsync.jobs WHERE id = {slow}"
        ))
        .await,
        0
    );
    db.close().await;
}

#[tokio::test]
async fn checkpoints_persist_and_reschedule_resets_attempts() {
    use threadsync::queue::{Fence, Finish};
    let db = TestDb::new().await;
    let id = enqueue(&db.pool, &NewJob::new("k", json!({})))
        .await
        .unwrap();
    let job = claim(&db.pool, "w", 1, Duration::from_secs(30), &[], Scope::All)
        .await
        .unwrap()
        .jobs
        .remove(0);
    let f = Fence {
        id,
        token: job.lease_token,
    };
    // The checkpoint travels as a dollar-quoted literal: quotes and the quoting tag itself
    // must come back unchanged.
    let tricky = json!({"offset": 50, "note": "it's $j0$ \\ done"});
    assert!(fenced(&db, f, &Finish::Checkpoint(tricky.clone())).await);
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT checkpoint FROM threadsync.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, tricky);
    assert_eq!(
        db.status_of(id).await,
        "running",
        "a checkpoint keeps the job running"
    );

    let at = Utc::now() + chrono::Duration::seconds(300);
    assert!(
        fenced(
            &db,
            f,
            &Finish::Reschedule {
                at,
                checkpoint: None
            }
        )
        .await
    );
    let (status, attempts, cp, due): (String, i32, serde_json::Value, f64) = sqlx::query_as(
        "SELECT status, attempts, checkpoint, extract(epoch FROM run_at - now())::float8 FROM threadsync.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    assert_eq!(cp, tricky, "the checkpoint survives the reschedule");
    assert!((290.0..=301.0).contains(&due), "{due}");
    db.close().await;
}

/// Opens a fenced transaction the way a worker does and commits it when the fence held
/// (rolls back when not). Returns whether it held.
async fn fenced(
    db: &TestDb,
    f: threadsync::queue::Fence,
    finish: &threadsync::queue::Finish,
) -> bool {
    let mut conn = db.pool.acquire().await.unwrap();
    let held = sqlx::raw_sql(sqlx::AssertSqlSafe(fence::begin_sql(f, finish)))
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected()
        == 1;
    sqlx::raw_sql(if held { "COMMIT" } else { "ROLLBACK" })
        .execute(&mut *conn)
        .await
        .unwrap();
    held
}
