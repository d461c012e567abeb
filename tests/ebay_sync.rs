//! eBay sync against the simulator over loopback HTTP, with workers in this process.

mod common;

use std::time::Duration;

use common::rig::{Opts, Rig};
use serde_json::json;
use threadsync::sim::{self, RuleAction, SimConfig};
use threadsync::sync::{self, Mode};

/// A rig of `workers` worker runtimes, the account capped at `in_flight` requests.
async fn rig(sim: SimConfig, in_flight: i32, workers: usize) -> Rig {
    Rig::new(Opts {
        sim,
        max_in_flight: in_flight,
        workers,
        ..Opts::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_fetches_only_what_changed() {
    let rig = rig(
        SimConfig {
            threads: 200,
            messages: 10,
            seed: 3,
            ..SimConfig::default()
        },
        10,
        2,
    )
    .await;
    rig.run(Mode::Full).await;
    rig.assert_exact().await;

    // Nothing changed: only list calls.
    rig.sim.reset_stats();
    rig.run(Mode::Incremental).await;
    assert_eq!(
        rig.calls_to("conversation/"),
        0,
        "no conversation fetch when nothing changed"
    );
    let lists = rig.calls_to("GET /commerce/message/v1/conversation");
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
    let fetches = rig.calls_to("conversation/");
    let lists = rig.calls_to("GET /commerce/message/v1/conversation") - fetches;
    eprintln!("after {k} changes: {lists} list calls, {fetches} fetches");
    assert!(lists <= 6, "{lists} list calls");
    assert!(
        fetches as usize <= touched.len().max(1) && fetches > 0,
        "{fetches} fetches for {} changed threads ({changed})",
        touched.len()
    );
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_reply_hidden_from_start_time_is_caught_by_the_refresh() {
    let sim_cfg = SimConfig {
        threads: 100,
        messages: 5,
        seed: 5,
        start_time_semantics: sim::StartTimeSemantics::InboundOnly,
        ..SimConfig::default()
    };
    let rig = rig(sim_cfg, 10, 1).await;
    rig.run(Mode::Full).await;
    let reply = rig
        .sim
        .mutate(&json!({"account": "acct-0", "new_messages": 1, "direction": "outbound"}))
        .unwrap();
    let thread = reply["newMessages"][0]["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    // The reply, and its thread's latest message.
    let c = rig.compare().await;
    assert_eq!(counts(&c), [0, 0, 1, 0, 0, 1, 0], "{c}");

    // What the web app does right after it sends: one SQL call in its own transaction.
    // Asked twice before it runs, it is one job.
    let mut tx = rig.db.pool.begin().await.unwrap();
    let job: i64 = sqlx::query_scalar("SELECT threadsync.refresh_thread('acct-0', $1)")
        .bind(&thread)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let again: i64 = sqlx::query_scalar("SELECT threadsync.refresh_thread('acct-0', $1)")
        .bind(&thread)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(job, again, "asking twice while pending runs once");
    rig.db
        .wait_count(
            &format!("SELECT count(*) FROM threadsync.jobs WHERE id = {job} AND status = 'done'"),
            1,
            Duration::from_secs(20),
        )
        .await;
    rig.assert_exact().await;

    // Without a refresh, an incremental sync still catches a hidden reply: after its
    // start_time pass it re-reads the head of the recency-ordered list.
    rig.sim
        .mutate(&json!({"account": "acct-0", "new_messages": 1, "direction": "outbound"}))
        .unwrap();
    rig.sim.reset_stats();
    rig.run(Mode::Incremental).await;
    rig.assert_exact().await;
    assert_eq!(
        rig.calls_to("conversation/"),
        1,
        "exactly the one changed thread is fetched"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_thread_rejects_bad_ids_and_accounts_in_the_callers_transaction() {
    // No workers: the jobs it makes stay pending.
    let rig = rig(
        SimConfig {
            threads: 1,
            ..SimConfig::default()
        },
        7,
        0,
    )
    .await;
    let db = &rig.db;
    sqlx::query("INSERT INTO threadsync.accounts (id, provider) VALUES ('sms-0', 'smseagle')")
        .execute(&db.pool)
        .await
        .unwrap();
    let refresh = |account: &'static str, thread: String| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT threadsync.refresh_thread($1, $2)")
                .bind(account)
                .bind(thread)
                .fetch_one(&pool)
                .await
        }
    };
    let cases = [
        ("acct-0", String::new(), "bad thread id"),
        ("acct-0", " 42".into(), "bad thread id"),
        ("acct-0", "4\n2".into(), "bad thread id"),
        ("acct-0", "x".repeat(257), "bad thread id"),
        ("nope", "42".into(), "no account 'nope'"),
        ("no\npe", "42".into(), "no account 'no?pe'"),
        ("sms-0", "42".into(), "is a smseagle account"),
    ];
    for (account, thread, want) in cases {
        let err = refresh(account, thread.clone()).await.unwrap_err();
        let d = err.as_database_error().expect("a database error");
        assert_eq!(
            d.code().as_deref(),
            Some("22023"),
            "{account} {thread:?}: {d}"
        );
        assert!(
            d.message().contains(want),
            "{account} {thread:?}: {}",
            d.message()
        );
        assert!(!d.message().contains('\n'), "one line: {:?}", d.message());
    }
    assert_eq!(db.count("SELECT count(*) FROM threadsync.jobs").await, 0);

    let id = refresh("acct-0", "x".repeat(256)).await.unwrap();
    let (limit, key): (i32, String) = sqlx::query_as(
        "SELECT concurrency_limit, concurrency_key FROM threadsync.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (limit, key.as_str()),
        (7, "ebay:acct-0"),
        "the account's own in-flight cap"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_pauses_the_account_until_reset_without_burning_attempts() {
    let reset = chrono::Utc::now().timestamp_millis() + 4000;
    let sim_cfg = SimConfig {
        threads: 150,
        messages: 5,
        seed: 9,
        daily_quota: Some(100),
        quota_reset_at_ms: Some(reset),
        ..SimConfig::default()
    };
    let rig = rig(sim_cfg, 4, 1).await;
    let id = rig.start(Mode::Full).await;
    // The quota runs out; the account is paused with the reason shown in status.
    rig.db
        .wait_count(
            "SELECT count(*) FROM threadsync.accounts WHERE paused_until > now()",
            1,
            Duration::from_secs(20),
        )
        .await;
    let st = sync::account_status(&rig.db.pool, "acct-0")
        .await
        .unwrap()
        .unwrap();
    assert!(
        st.pause_reason.unwrap().contains("quota"),
        "status says why"
    );
    // The quota resets (the simulator's clock passes its reset instant); the run finishes.
    // Quotas are daily: give the simulator a fresh one as eBay would at reset.
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    let max_attempts: i64 = rig
        .db
        .count(&format!(
            "SELECT max(attempts)::int8 FROM threadsync.jobs WHERE run_id = {id}"
        ))
        .await;
    assert!(
        max_attempts <= 2,
        "quota pauses must not burn attempts (max {max_attempts})"
    );
    let throttled = rig.sim.stats().totals.throttled_429;
    assert!(
        throttled <= 10,
        "no hammering while paused: {throttled} 429s"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_deleted_between_list_and_fetch_does_not_fail_the_run() {
    // One request in flight: fetches trail the list, leaving time to delete listed threads.
    let rig = rig(
        SimConfig {
            threads: 120,
            messages: 5,
            seed: 13,
            latency_ms: 5,
            ..SimConfig::default()
        },
        1,
        1,
    )
    .await;
    let id = rig.start(Mode::Full).await;
    rig.db
        .wait_count(
            "SELECT least(count(*), 50) FROM threadsync.threads",
            50,
            Duration::from_secs(20),
        )
        .await;
    let victims: Vec<String> = sqlx::query_scalar(
        "SELECT t.thread_id FROM threadsync.threads t
          WHERE NOT EXISTS (SELECT 1 FROM threadsync.thread_fetches f WHERE f.thread_id = t.thread_id)
          ORDER BY t.thread_id DESC LIMIT 3",
    )
    .fetch_all(&rig.db.pool)
    .await
    .unwrap();
    assert_eq!(victims.len(), 3);
    rig.sim
        .mutate(&json!({"account": "acct-0", "delete_ids": victims}))
        .unwrap();
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    assert!(s.threads_deleted >= 1, "{s:?}");
    rig.assert_exact().await;
    let deleted = rig
        .db
        .count("SELECT count(*) FROM threadsync.threads WHERE deleted_at IS NOT NULL")
        .await;
    assert!(deleted >= 1);
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_messages_during_a_full_resync_are_not_missed() {
    let rig = rig(
        SimConfig {
            threads: 600,
            messages: 8,
            seed: 17,
            latency_ms: 2,
            ..SimConfig::default()
        },
        6,
        2,
    )
    .await;
    let id = rig.start(Mode::Full).await;
    // While the main pass pages through the list, threads gain messages (moving to the top,
    // shifting offsets) and new threads appear.
    let mut mutations = 0;
    loop {
        let s = rig.status(id).await;
        if s.state != "running" {
            break;
        }
        rig.sim.mutate(&json!({"account": "acct-0", "new_messages": 5, "new_threads": 1, "direction": "mixed"})).unwrap();
        mutations += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        mutations >= 3,
        "the run ended before the list could shift ({mutations} rounds)"
    );
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done");
    // Everything that happened before the catch-up pass began is in the database. (A change
    // racing the catch-up's first page is the next run's business.)
    let catch_up: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT min(started_at) FROM threadsync.jobs WHERE run_id = $1 AND payload->>'walk' = 'early_stop'",
    )
    .bind(id)
    .fetch_one(&rig.db.pool)
    .await
    .unwrap();
    let have: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT message_id FROM threadsync.messages")
            .fetch_all(&rig.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let truth = rig.sim.truth(Some("acct-0"));
    let mut checked = 0;
    for t in truth["accounts"][0]["threads"].as_array().unwrap() {
        for m in t["messages"].as_array().unwrap() {
            let created =
                chrono::DateTime::parse_from_rfc3339(m["createdDate"].as_str().unwrap()).unwrap();
            if created < catch_up {
                checked += 1;
                let mid = m["messageId"].as_str().unwrap();
                assert!(have.contains(mid), "message {mid} of {created} (before the catch-up at {catch_up}) was missed after {mutations} rounds");
            }
        }
    }
    assert!(checked > 0);
    // Nothing we hold is wrong: no row the provider lacks, none under the wrong thread, no
    // message whose fields differ. (Threads changed after the catch-up read their list page
    // may still show an older latest message or unread count.)
    let c = rig.compare().await;
    assert_eq!(
        (
            c.extra_threads,
            c.extra_messages,
            c.misfiled_messages,
            c.differing_messages
        ),
        (0, 0, 0, 0),
        "{c}"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_pushed_onto_a_page_already_read_is_caught_by_the_catch_up() {
    // One request at a time, so list pages are read in offset order unless one fails.
    let rig = rig(
        SimConfig {
            threads: 300,
            messages: 2,
            seed: 23,
            ..SimConfig::default()
        },
        1,
        1,
    )
    .await;
    let page = |offset: u32| format!("conversation_type=FROM_MEMBERS&limit=50&offset={offset}");
    // Offset 100 fails once and is read again after offset 150. In between, the thread at
    // offset 250 gains a message and jumps to the head: every thread above it moves one
    // place down, and the last one of offset 100's range lands on offset 150, already read.
    rig.sim.on_next_request(&page(100), RuleAction::Fail5xx);
    rig.sim.on_next_request(
        &page(150),
        RuleAction::MutateAfter(json!({"account": "acct-0", "bump_offsets": [250]})),
    );
    let id = rig.run(Mode::Full).await.run_id;

    let finished = |offset: u32| {
        let pool = rig.db.pool.clone();
        async move {
            sqlx::query_as::<_, (i32, chrono::DateTime<chrono::Utc>)>(
                "SELECT attempts, finished_at FROM threadsync.jobs
                  WHERE run_id = $1 AND kind = 'ebay.list_page' AND payload->>'walk' = 'planned'
                    AND payload->>'list' = 'FROM_MEMBERS' AND (payload->>'offset')::int = $2",
            )
            .bind(id)
            .bind(offset as i32)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (attempts_100, at_100) = finished(100).await;
    let (_, at_150) = finished(150).await;
    assert_eq!(attempts_100, 2, "offset 100 failed once");
    assert!(at_100 > at_150, "offset 100 was read after offset 150");
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_start_closes_a_run_left_open() {
    let rig = rig(
        SimConfig {
            threads: 50,
            messages: 3,
            seed: 31,
            ..SimConfig::default()
        },
        10,
        1,
    )
    .await;
    rig.run(Mode::Full).await;
    // A run whose last job's worker died between its commit and its end hook: still open,
    // with no jobs left to close it.
    let stuck: i64 = sqlx::query_scalar(
        "INSERT INTO threadsync.sync_runs (account_id, mode) VALUES ('acct-0', 'incremental') RETURNING id",
    )
    .fetch_one(&rig.db.pool)
    .await
    .unwrap();
    // The next scheduled tick finds it and moves it on.
    threadsync::queue::enqueue(
        &rig.db.pool,
        &threadsync::queue::NewJob::new(
            "sync.start",
            json!({"account": "acct-0", "mode": "incremental"}),
        ),
    )
    .await
    .unwrap();
    let s = rig.finish(stuck, Duration::from_secs(30)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

/// Difference counts in a fixed order: missing threads, extra threads, missing messages,
/// extra messages, misfiled messages, differing threads, differing messages.
fn counts(c: &threadsync::verify::Comparison) -> [usize; 7] {
    [
        c.missing_threads,
        c.extra_threads,
        c.missing_messages,
        c.extra_messages,
        c.misfiled_messages,
        c.differing_threads,
        c.differing_messages,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comparison_fails_both_ways_and_on_every_field() {
    let rig = rig(
        SimConfig {
            threads: 40,
            messages: 4,
            seed: 37,
            ..SimConfig::default()
        },
        10,
        1,
    )
    .await;
    rig.run(Mode::Full).await;
    let c = rig.compare().await;
    assert!(c.is_exact(), "{c}");
    assert_eq!((c.db_threads, c.db_messages), (40, c.truth_messages));

    // Two threads of at least two messages; `m` is a message of `a` other than its latest.
    let expected = rig.sim.expected("acct-0").unwrap();
    let mut long = expected.threads.iter().filter(|t| t.messages.len() >= 2);
    let a = long.next().expect("a thread of two messages").clone();
    let b = long.next().expect("another one").thread_id.clone();
    let m = a.messages[0].message_id.clone();
    let pool = &rig.db.pool;
    let exec = |sql: String| async move {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    };
    for table in ["threads", "messages"] {
        exec(format!(
            "CREATE TABLE public.saved_{table} AS SELECT * FROM threadsync.{table} WHERE account_id = 'acct-0'"
        ))
        .await;
    }
    let restore = || async {
        for table in ["threads", "messages"] {
            exec(format!(
                "DELETE FROM threadsync.{table} WHERE account_id = 'acct-0'"
            ))
            .await;
            exec(format!(
                "INSERT INTO threadsync.{table} SELECT * FROM public.saved_{table}"
            ))
            .await;
        }
    };

    let msg = |set: &str| format!("UPDATE threadsync.messages SET {set} WHERE message_id = '{m}'");
    let thread = |set: &str| {
        format!(
            "UPDATE threadsync.threads SET {set} WHERE thread_id = '{}'",
            a.thread_id
        )
    };
    let cases: Vec<(&str, String, [usize; 7])> = vec![
        (
            "a message deleted",
            format!("DELETE FROM threadsync.messages WHERE message_id = '{m}'"),
            [0, 0, 1, 0, 0, 0, 0],
        ),
        (
            "an extra message",
            format!(
                "INSERT INTO threadsync.messages (account_id, message_id, thread_id, sent_at, body)
                 VALUES ('acct-0', 'not-on-ebay', '{}', now(), 'hello')",
                a.thread_id
            ),
            [0, 0, 0, 1, 0, 0, 0],
        ),
        (
            "a message moved to another thread",
            msg(&format!("thread_id = '{b}'")),
            [0, 0, 0, 0, 1, 0, 0],
        ),
        (
            "an extra thread",
            "INSERT INTO threadsync.threads (account_id, thread_id, provider)
             VALUES ('acct-0', 'not-on-ebay', 'ebay')"
                .into(),
            [0, 1, 0, 0, 0, 0, 0],
        ),
        (
            "a thread row deleted",
            format!(
                "DELETE FROM threadsync.threads WHERE thread_id = '{}'",
                a.thread_id
            ),
            [1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "a live thread marked deleted",
            thread("deleted_at = now()"),
            [1, 0, 0, 0, 0, 0, 0],
        ),
        (
            "sender",
            msg("sender = 'someone_else'"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        ("recipient", msg("recipient = NULL"), [0, 0, 0, 0, 0, 0, 1]),
        (
            "subject",
            msg("subject = subject || '!'"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        ("body", msg("body = body || '!'"), [0, 0, 0, 0, 0, 0, 1]),
        (
            "is_read",
            msg("is_read = NOT is_read"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "media",
            msg("media = CASE WHEN media IS NULL THEN '[]'::jsonb END"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "sent_at",
            msg("sent_at = sent_at + interval '1 millisecond'"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "status",
            msg("status = 'delivery_ok'"),
            [0, 0, 0, 0, 0, 0, 1],
        ),
        (
            "title",
            thread("title = title || '!'"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "thread status",
            thread("status = CASE WHEN status = 'ACTIVE' THEN 'ARCHIVE' ELSE 'ACTIVE' END"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "unread_count",
            thread("unread_count = unread_count + 1"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "latest_message_id",
            thread(&format!("latest_message_id = '{m}'")),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "latest_message_at",
            thread("latest_message_at = latest_message_at - interval '1 second'"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "conversation_type",
            thread("conversation_type = 'FROM_NOBODY'"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "reference_id",
            thread("reference_id = coalesce(reference_id, '') || '9'"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "reference_type",
            thread("reference_type = CASE WHEN reference_type IS NULL THEN 'LISTING' END"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
        (
            "created_at",
            thread("created_at = created_at - interval '1 second'"),
            [0, 0, 0, 0, 0, 1, 0],
        ),
    ];
    for (what, sql, want) in cases {
        exec(sql).await;
        let c = rig.compare().await;
        assert_eq!(counts(&c), want, "{what}: {c}");
        assert!(!c.is_exact(), "{what}");
        restore().await;
        let c = rig.compare().await;
        assert!(c.is_exact(), "restored after {what}: {c}");
    }

    // The provider side moves too: a thread read on eBay clears its unread count and the
    // read flags of its unread messages, which our copy still shows.
    let unread = expected
        .threads
        .iter()
        .find(|t| t.unread_count > 0 && t.thread_id != a.thread_id)
        .expect("a thread with unread messages");
    let flags = unread
        .messages
        .iter()
        .filter(|m| m.is_read == Some(false))
        .count();
    assert!(flags > 0);
    rig.sim
        .mutate(&json!({"account": "acct-0", "set_status": {unread.thread_id.clone(): "READ"}}))
        .unwrap();
    let c = rig.compare().await;
    assert_eq!(counts(&c), [0, 0, 0, 0, 0, 1, flags], "{c}");

    // A thread deleted on eBay is extra here, with its messages, until we mark it deleted;
    // then its messages are kept and no longer compared.
    rig.sim
        .mutate(&json!({"account": "acct-0", "delete_ids": [a.thread_id.clone()]}))
        .unwrap();
    let c = rig.compare().await;
    let n = a.messages.len();
    assert_eq!(counts(&c), [0, 1, 0, n, 0, 1, flags], "{c}");
    assert_eq!(c.samples.extra_threads, std::slice::from_ref(&a.thread_id));
    exec(thread("deleted_at = now()")).await;
    let c = rig.compare().await;
    assert_eq!(counts(&c), [0, 0, 0, 0, 0, 1, flags], "{c}");
    assert_eq!(c.kept_of_deleted, n);
    assert_eq!((c.truth_threads, c.db_threads), (39, 39));
    rig.close().await;
}
