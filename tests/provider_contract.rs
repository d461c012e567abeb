//! The provider contract: every property below holds for every provider the engine syncs.
//! Each property is one test body; `contract!` instantiates it per provider over one rig
//! (a fresh database, the provider's simulator over loopback HTTP, real workers).

mod common;

use std::time::{Duration, Instant};

use common::rig::{Opts, Provider as P, Rig, ACCOUNT};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use threadsync::sim::{Faults, SimConfig, SimHandle};
use threadsync::sync::{self, Mode};
use threadsync::verify::Comparison;

/// What the contract needs to know of a provider beyond the rig: its dataset, its job
/// kinds, how to make its data change, and what its runs may cost.
impl P {
    /// A dataset of about `threads` threads.
    fn sim(self, threads: usize, seed: u64) -> SimConfig {
        match self {
            P::Ebay => SimConfig {
                threads,
                messages: 6,
                seed,
                ..SimConfig::default()
            },
            // Meta's 2 calls/s per Page is the subject of its own tests.
            P::Facebook => SimConfig {
                threads,
                messages: 6,
                seed,
                rps_limit: Some(10_000.0),
                ..SimConfig::default()
            },
            // Hostaway's windows are the subject of their own tests; a share of inquiries
            // (conversations without a reservation).
            P::Hostaway => SimConfig {
                threads,
                messages: 6,
                seed,
                hostaway_ip_limit: 100_000,
                hostaway_account_limit: 100_000,
                hostaway_inquiry_share: 0.2,
                ..SimConfig::default()
            },
            P::SmsEagle => SimConfig {
                threads: threads / 4,
                messages: 24,
                seed,
                id_gap_rate: 0.05,
                ..SimConfig::default()
            },
        }
    }

    /// A rig over `sim` with `workers` worker runtimes in this process.
    fn rig(self, sim: SimConfig, workers: usize) -> Opts {
        Opts {
            provider: self,
            sim,
            workers,
            max_in_flight: 8,
            account_keys: self.account_keys().into(),
            ..Opts::default()
        }
    }

    /// Keys of the provider's own; SMS: the seeded history is months old, so the first
    /// sync reads it all.
    fn account_keys(self) -> &'static str {
        match self {
            P::Ebay => "",
            // Small pages and a small inline window: runs of several list pages, and
            // conversations both completed inline and fetched on their own.
            P::Facebook => "page_id = \"acct-0\"\npage_size = 25\ninline_messages = 3\n",
            // Small pages: runs of several list pages; a window that never binds, so an
            // injected 429 holds back for 1 s.
            P::Hostaway => {
                "client_id = \"0\"\npage_size = 25\nwindow_requests = 100000\nwindow_secs = 1\n"
            }
            P::SmsEagle => "cold_start_days = 36500\nbatch_size = 50\n",
        }
    }

    /// The kind of the jobs that do most of a run's calls.
    fn bulk_kind(self) -> String {
        match self {
            P::Ebay => "ebay.conversation".into(),
            P::Facebook => "facebook.conversation".into(),
            P::Hostaway => "hostaway.conversation".into(),
            P::SmsEagle => "smseagle.folder".into(),
        }
    }

    /// Makes `n` new messages at the provider; returns the threads they went to.
    fn add_messages(self, sim: &SimHandle, n: usize) -> Vec<String> {
        let body = match self {
            P::Ebay | P::Facebook | P::Hostaway => {
                json!({"account": ACCOUNT, "new_messages": n, "direction": "inbound"})
            }
            P::SmsEagle => json!({"account": ACCOUNT, "inbox": n}),
        };
        let changed = sim.mutate(&body).expect("mutate");
        match self {
            P::Ebay => ids(&changed["newMessages"], "conversationId"),
            P::Facebook => ids(&changed["new_messages"], "conversation_id"),
            P::Hostaway => ids(&changed["newMessages"], "conversationId"),
            P::SmsEagle => ids(&changed["inbox_ids"], ""),
        }
    }

    /// Makes the provider serve `n` rows the sync cannot decode; returns their ids and
    /// how many messages they hide (a poisoned eBay thread hides all of its messages).
    fn poison(self, sim: &SimHandle, n: usize) -> (Vec<String>, usize) {
        let body = match self {
            P::Ebay | P::Facebook | P::Hostaway => {
                json!({"account": ACCOUNT, "poison_threads": n})
            }
            P::SmsEagle => json!({"account": ACCOUNT, "poison": n}),
        };
        let changed = sim.mutate(&body).expect("mutate");
        match self {
            P::Ebay | P::Facebook | P::Hostaway => {
                let key = match self {
                    P::Ebay => "poisonedThreadIds",
                    P::Hostaway => "poisonedConversationIds",
                    _ => "poisoned_thread_ids",
                };
                let ids = ids(&changed[key], "");
                let expected = sim.expected(ACCOUNT).expect("expected");
                let hidden = expected
                    .threads
                    .iter()
                    .filter(|t| ids.contains(&t.thread_id))
                    .map(|t| t.messages.len())
                    .sum();
                (ids, hidden)
            }
            P::SmsEagle => {
                let ids = ids(&changed["poisoned_ids"], "");
                let n = ids.len();
                (ids, n)
            }
        }
    }

    /// Calls an incremental run may make after `changed` new messages: the provider's
    /// list heads or stream reads, plus one fetch per changed thread.
    fn incremental_budget(self, changed: usize) -> u64 {
        match self {
            // Two lists, a head page each, a catch-up head each, one extra page of slack
            // each; plus the fetches.
            P::Ebay => 6 + changed as u64,
            // One list: its head and the page after it, the catch-up's the same, one page
            // of slack; plus a fetch where a thread's new messages overflow the inline window.
            P::Facebook => 5 + changed as u64,
            // Two heads (reservations, conversations), one page each; per changed thread
            // its reservation's conversations and its fetch; one page of slack per list.
            P::Hostaway => 4 + 2 * changed as u64,
            // One read per folder (none full), and the folders' reads in catch-up: none.
            P::SmsEagle => 3,
        }
    }

    /// Threads a quiet full run fetches one by one: every listed thread, once. A stream
    /// provider reads its messages in batches and fetches no thread.
    fn threads_fetched(self, c: &Comparison) -> i64 {
        match self {
            // Completed inline from the list or by their own fetch: each counted once.
            P::Ebay | P::Facebook | P::Hostaway => c.truth_threads as i64,
            P::SmsEagle => 0,
        }
    }
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let x = if field.is_empty() { x } else { &x[field] };
            x.as_str()
                .map(String::from)
                .or_else(|| x.as_u64().map(|n| n.to_string()))
        })
        .collect()
}

async fn full_resync_equals_the_truth_both_ways(p: P) {
    // Long threads too: an eBay conversation of more than 50 messages takes several pages.
    let mut sim = p.sim(300, 7);
    sim.messages = sim.messages.max(20);
    let rig = Rig::new(p.rig(sim, 2)).await;
    let s = rig.run(Mode::Full).await;
    assert_eq!(s.bad_rows, 0, "{s:?}");
    rig.assert_exact().await;
    let c = rig.compare().await;
    assert_eq!(
        s.threads_fetched,
        p.threads_fetched(&c),
        "every thread fetched once: {s:?}"
    );
    rig.close().await;
}

async fn faults_lose_nothing(p: P) {
    let mut cfg = p.sim(200, 2);
    cfg.messages = cfg.messages.max(15);
    cfg.faults = Faults {
        error_5xx: 0.10,
        burst_429: 0.05,
        timeout: 0.01,
        malformed: 0.02,
        timeout_ms: 2500,
        ..Faults::default()
    };
    let rig = Rig::new(p.rig(cfg, 2)).await;
    let id = rig.start(Mode::Full).await;
    let s = rig.finish(id, Duration::from_secs(90)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    let retried = rig
        .db
        .count(&format!(
            "SELECT count(*) FROM threadsync.jobs WHERE run_id = {id} AND attempts > 1 AND status = 'done'"
        ))
        .await;
    // Malformed answers, 5xx and timeouts failed their attempt, then the job succeeded.
    assert!(
        retried > 0,
        "faults were injected: some jobs must have retried and succeeded"
    );
    rig.close().await;
}

async fn incremental_fetches_only_what_changed(p: P) {
    let rig = Rig::new(p.rig(p.sim(200, 3), 2)).await;
    rig.run(Mode::Full).await;
    rig.assert_exact().await;
    let touched = p.add_messages(&rig.sim, 5);
    assert!(!touched.is_empty());
    let mut distinct = touched.clone();
    distinct.sort();
    distinct.dedup();
    rig.sim.reset_stats();
    let s = rig.run(Mode::Incremental).await;
    let calls = rig.calls();
    let budget = p.incremental_budget(distinct.len());
    assert!(
        calls <= budget && calls > 0,
        "{}: {calls} calls for {} changed threads (budget {budget}): {s:?}",
        p.name(),
        distinct.len()
    );
    assert!(s.messages_written >= 5, "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

async fn a_thread_deleted_between_full_runs_is_marked_deleted(p: P) {
    let rig = Rig::new(p.rig(p.sim(120, 4), 2)).await;
    rig.run(Mode::Full).await;
    let gone = rig
        .sim
        .mutate(&json!({"account": ACCOUNT, "delete_threads": 4}))
        .expect("delete");
    let key = match p {
        P::Facebook => "deleted_ids",
        P::Hostaway => "deletedConversationIds",
        _ => "deletedThreadIds",
    };
    let gone = ids(&gone[key], "");
    assert_eq!(gone.len(), 4, "{gone:?}");
    // A thread wrongly marked deleted comes back when the provider lists it again.
    let back: String = sqlx::query_scalar(
        "UPDATE threadsync.threads SET deleted_at = now()
          WHERE thread_id = (SELECT min(thread_id) FROM threadsync.threads WHERE deleted_at IS NULL
                              AND NOT thread_id = ANY($1))
      RETURNING thread_id",
    )
    .bind(&gone)
    .fetch_one(&rig.db.pool)
    .await
    .expect("mark one");
    let s = rig.run(Mode::Full).await;
    let deleted: Vec<String> = sqlx::query_scalar(
        "SELECT thread_id FROM threadsync.threads WHERE deleted_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&rig.db.pool)
    .await
    .expect("deleted");
    let mut want = gone.clone();
    want.sort();
    assert_eq!(deleted, want, "exactly the threads the provider dropped");
    assert!(!deleted.contains(&back), "a relisted thread is live again");
    assert!(s.threads_deleted >= 4, "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

async fn a_worker_killed_mid_run_loses_nothing(p: P) {
    let mut cfg = p.sim(300, 5);
    cfg.latency_ms = 5;
    let rig = Rig::new(Opts {
        slots: 8,
        ..p.rig(cfg, 0)
    })
    .await;
    let mut first = rig.process(&format!("{}-kill-1", p.name()));
    let id = rig.start(Mode::Full).await;
    let t = Instant::now();
    while rig
        .db
        .count("SELECT count(*) FROM threadsync.messages")
        .await
        < 200
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no progress: {}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.signal(Signal::SIGKILL);
    assert!(first.wait_exit(Duration::from_secs(5)));
    let in_flight = rig
        .db
        .count(&format!(
            "SELECT count(*) FROM threadsync.jobs WHERE run_id = {id} AND status IN ('pending', 'running')"
        ))
        .await;
    assert!(in_flight > 0, "killed mid-run, with work left");
    let _second = rig.process(&format!("{}-kill-2", p.name()));
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

/// A web app's refresh of a thread the provider does not have ends failed with "not
/// found", visibly, and a held thread the provider deleted is marked deleted.
async fn a_refresh_of_a_thread_the_provider_lacks_fails_saying_so(p: P) {
    let rig = Rig::new(p.rig(p.sim(40, 9), 1)).await;
    rig.run(Mode::Full).await;
    let held: String = sqlx::query_scalar(
        "SELECT min(thread_id) FROM threadsync.threads WHERE deleted_at IS NULL",
    )
    .fetch_one(&rig.db.pool)
    .await
    .expect("a thread");
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "delete_ids": [held]}))
        .expect("delete");
    for thread in ["no-such-thread", held.as_str()] {
        let job: i64 = sqlx::query_scalar("SELECT threadsync.refresh_thread($1, $2)")
            .bind(ACCOUNT)
            .bind(thread)
            .fetch_one(&rig.db.pool)
            .await
            .expect("refresh");
        rig.db
            .wait_count(
                &format!(
                    "SELECT count(*) FROM threadsync.jobs WHERE id = {job} AND status = 'failed'"
                ),
                1,
                Duration::from_secs(20),
            )
            .await;
        let error: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM threadsync.jobs WHERE id = $1")
                .bind(job)
                .fetch_one(&rig.db.pool)
                .await
                .expect("job");
        let error = error.unwrap_or_default();
        assert!(
            error.contains(&format!("thread {thread} not found at the provider")),
            "{error}"
        );
    }
    let deleted: Vec<String> =
        sqlx::query_scalar("SELECT thread_id FROM threadsync.threads WHERE deleted_at IS NOT NULL")
            .fetch_all(&rig.db.pool)
            .await
            .expect("deleted");
    assert_eq!(deleted, vec![held]);
    rig.close().await;
}

/// A credential the provider stops accepting pauses the account with a reason that names
/// the variable to fix, and nothing more is asked of the provider meanwhile.
async fn a_refused_token_pauses_the_account_naming_its_variable(p: P) {
    let rig = Rig::new(p.rig(p.sim(40, 10), 1)).await;
    rig.run(Mode::Full).await;
    assert!(rig.sim.expire_token(ACCOUNT));
    let id = rig.start(Mode::Incremental).await;
    let t = Instant::now();
    let reason = loop {
        let a = sync::account_status(&rig.db.pool, ACCOUNT)
            .await
            .expect("status")
            .expect("account");
        if let (Some(_), Some(r)) = (a.paused_until, a.pause_reason) {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(reason.contains(rig.provider.token_env()), "{reason}");
    rig.db
        .wait_count(
            &format!(
                "SELECT least(count(*), 1) FROM threadsync.jobs WHERE run_id = {id} AND status = 'failed'"
            ),
            1,
            Duration::from_secs(20),
        )
        .await;
    let calls = rig.calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.calls(), calls, "no call while paused");
    rig.close().await;
}

/// A row the provider sends that cannot be decoded is skipped and counted with its
/// reason; the rest of its page or batch syncs, and later runs move past it.
async fn a_poison_row_is_skipped_and_recorded(p: P) {
    let rig = Rig::new(p.rig(p.sim(120, 8), 1)).await;
    let (poisoned, hidden) = p.poison(&rig.sim, 3);
    assert_eq!(poisoned.len(), 3, "{poisoned:?}");
    let s = rig.run(Mode::Full).await;
    // Counted each time the run reads them (an eBay catch-up reads the lists again).
    assert!(s.bad_rows >= 3, "{s:?}");
    assert!(s.first_bad_row.is_some(), "{s:?}");
    let c = rig.compare().await;
    let (missing_threads, missing_messages) = match p {
        P::Ebay | P::Facebook | P::Hostaway => (3, hidden),
        P::SmsEagle => (0, 3),
    };
    assert_eq!(
        (c.missing_threads, c.missing_messages),
        (missing_threads, missing_messages),
        "only the poison is missing: {}",
        c.summary()
    );
    assert_eq!(
        (
            c.extra_threads,
            c.extra_messages,
            c.misfiled_messages,
            c.differing_messages
        ),
        (0, 0, 0, 0),
        "{}",
        c.summary()
    );
    // A stream thread whose newest message is the poison shows an older latest message.
    assert!(c.differing_threads <= missing_messages, "{}", c.summary());
    // Later rows sync; the poison never stalls a later run.
    p.add_messages(&rig.sim, 4);
    let s = rig.run(Mode::Incremental).await;
    assert!(s.messages_written >= 4, "{s:?}");
    let after = rig.compare().await;
    assert_eq!(
        (after.missing_messages, after.extra_messages),
        (c.missing_messages, 0),
        "{}",
        after.summary()
    );
    rig.close().await;
}

/// Takes one pending job of the run's bulk kind and applies `sql` to it ($1: its id);
/// returns the id.
async fn grab_pending(rig: &Rig, run: i64, sql: &str) -> i64 {
    let kind = rig.provider.bulk_kind();
    let t = Instant::now();
    loop {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM threadsync.jobs WHERE run_id = $1 AND kind = $2 AND status = 'pending'
              ORDER BY id LIMIT 1",
        )
        .bind(run)
        .bind(&kind)
        .fetch_optional(&rig.db.pool)
        .await
        .expect("pending job");
        if let Some(id) = id {
            let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .bind(id)
                .execute(&rig.db.pool)
                .await
                .expect("grab")
                .rows_affected();
            if n == 1 {
                return id;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no {kind} job ever pending"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `job` is the only job of the run still pending or running.
async fn wait_only_active(rig: &Rig, run: i64, job: i64) {
    rig.db
        .wait_count(
            &format!(
                "SELECT count(*) FROM threadsync.jobs WHERE run_id = {run} AND id <> {job}
                   AND status IN ('pending', 'running')"
            ),
            0,
            Duration::from_secs(60),
        )
        .await;
}

/// A pending job cancelled when it is the run's last one leaves no job end to close the
/// run: the workers' sweep does, and the run fails (a cancelled job did not do its part).
/// `runs retry` reopens it, and it ends done once the job succeeds.
async fn a_run_whose_last_job_is_cancelled_ends_and_retries_to_done(p: P) {
    let rig = Rig::new(p.rig(p.sim(120, 6), 1)).await;
    let id = rig.start(Mode::Full).await;
    // As if backing off: due in an hour, so every other job ends before it.
    let parked = grab_pending(
        &rig,
        id,
        "UPDATE threadsync.jobs SET run_at = now() + interval '1 hour' WHERE id = $1 AND status = 'pending'",
    )
    .await;
    wait_only_active(&rig, id, parked).await;
    assert_eq!(
        rig.status(id).await.finished_at,
        None,
        "still open: its job is pending"
    );
    threadsync::queue::admin::cancel(&rig.db.pool, parked)
        .await
        .expect("cancel");
    let s = rig.finish(id, Duration::from_secs(20)).await;
    assert_eq!(s.state, "failed", "a cancelled job fails the run: {s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("cancelled")),
        "{s:?}"
    );
    let retried = sync::retry_run(&rig.db.pool, id).await.expect("retry");
    assert_eq!(retried, 1);
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

/// A job the reaper fails (its worker died on its last attempt) has no end hook to close
/// the run: the workers' sweep does.
async fn a_run_whose_last_job_the_reaper_fails_still_ends(p: P) {
    let rig = Rig::new(p.rig(p.sim(120, 7), 1)).await;
    let id = rig.start(Mode::Full).await;
    let last = grab_pending(
        &rig,
        id,
        "UPDATE threadsync.jobs SET run_at = now() + interval '1 hour' WHERE id = $1 AND status = 'pending'",
    )
    .await;
    wait_only_active(&rig, id, last).await;
    // As if a worker had claimed it on its last attempt and died.
    let n = sqlx::query(
        "UPDATE threadsync.jobs SET status = 'running', attempts = 1, max_attempts = 1,
                lease_owner = 'dead-worker', lease_token = gen_random_uuid(),
                lease_expires_at = now()
          WHERE id = $1 AND status = 'pending'",
    )
    .bind(last)
    .execute(&rig.db.pool)
    .await
    .expect("orphan it")
    .rows_affected();
    assert_eq!(n, 1);
    let s = rig.finish(id, Duration::from_secs(20)).await;
    assert_eq!(s.state, "failed", "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("lease expired")),
        "{s:?}"
    );
    rig.close().await;
}

macro_rules! contract {
    ($provider:ident, $p:ident, [$($property:ident),* $(,)?]) => {
        mod $provider {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    super::$property(super::P::$p).await
                }
            )*
        }
    };
}

/// The whole contract, for a provider of thread lists.
macro_rules! thread_list_contract {
    ($provider:ident, $p:ident) => {
        contract!(
            $provider,
            $p,
            [
                full_resync_equals_the_truth_both_ways,
                faults_lose_nothing,
                incremental_fetches_only_what_changed,
                a_refresh_of_a_thread_the_provider_lacks_fails_saying_so,
                a_thread_deleted_between_full_runs_is_marked_deleted,
                a_poison_row_is_skipped_and_recorded,
                a_refused_token_pauses_the_account_naming_its_variable,
                a_worker_killed_mid_run_loses_nothing,
                a_run_whose_last_job_is_cancelled_ends_and_retries_to_done,
                a_run_whose_last_job_the_reaper_fails_still_ends,
            ]
        );
    };
}

thread_list_contract!(ebay, Ebay);
thread_list_contract!(facebook, Facebook);
thread_list_contract!(hostaway, Hostaway);

// A stream provider has no thread list to reconcile deletions against: a message deleted
// on an SMS gateway stays in the copy (docs/smseagle.md), so that property is not part of
// its contract.
contract!(
    smseagle,
    SmsEagle,
    [
        full_resync_equals_the_truth_both_ways,
        faults_lose_nothing,
        incremental_fetches_only_what_changed,
        a_poison_row_is_skipped_and_recorded,
        a_refused_token_pauses_the_account_naming_its_variable,
        a_worker_killed_mid_run_loses_nothing,
        a_run_whose_last_job_is_cancelled_ends_and_retries_to_done,
        a_run_whose_last_job_the_reaper_fails_still_ends,
    ]
);
