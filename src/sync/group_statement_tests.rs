//! The group statement conversation pages commit with, against a real database: each
//! job keeps its own fence, and one job's bad data fails only that job.

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{ConversationPage, ConversationPages};
use super::vocab::MessageRow;
use crate::db::{self, Scratch};
use crate::pg::Durability;
use crate::queue::{Fence, Finish};
use crate::worker::group_commit::{Attempt, Entry, GroupCommit, GroupStatement};
use crate::worker::tx_pool::{self, TxPool};

async fn running_job(pool: &PgPool) -> Fence {
    let (id, token): (i64, Uuid) = sqlx::query_as(
        "INSERT INTO threadsync.jobs (kind, status, lease_token, run_id)
         VALUES ('p.conversation', 'running', gen_random_uuid(), 7) RETURNING id, lease_token",
    )
    .fetch_one(pool)
    .await
    .expect("insert job");
    Fence { id, token }
}

fn page(thread: &str, ids: &[&str], complete: bool) -> ConversationPage {
    let rows = ids
        .iter()
        .map(|id| MessageRow {
            message_id: id.to_string(),
            sender: Some("buyer".into()),
            recipient: None,
            subject: None,
            body: Some(format!("body of {id}")),
            is_read: Some(false),
            sent_at: Utc::now(),
            media: None,
            status: None,
        })
        .collect();
    ConversationPage {
        account: "acct".into(),
        provider: "p",
        thread_id: thread.into(),
        rows,
        complete,
        run_id: Some(7),
        bad_rows: 0,
        bad_row: None,
    }
}

fn done_with(fence: Fence, item: ConversationPage) -> Entry<ConversationPage> {
    Entry {
        fence,
        finish: Finish::Done,
        item,
    }
}

async fn messages_of(pool: &PgPool, thread: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM threadsync.messages WHERE thread_id = $1")
        .bind(thread)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn status_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM threadsync.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("status")
}

async fn setup() -> (Scratch, PgPool, TxPool) {
    let scratch = Scratch::create("ts_group", Durability::Throwaway)
        .await
        .expect("scratch database");
    let pool = db::connect(&scratch.url, 4).await.expect("connect");
    db::migrate(&pool).await.expect("migrate");
    sqlx::query("INSERT INTO threadsync.accounts (id, provider) VALUES ('acct', 'p')")
        .execute(&pool)
        .await
        .expect("account");
    let tx = tx_pool::new(
        (*pool.connect_options()).clone(),
        2,
        &crate::queue::Tuning::default(),
    );
    (scratch, pool, tx)
}

#[tokio::test]
async fn each_job_in_a_shared_statement_keeps_its_own_fence() {
    let (scratch, pool, tx) = setup().await;
    let group = GroupCommit::<ConversationPages>::default();
    let done = running_job(&pool).await;
    let stale = running_job(&pool).await;
    let checkpointed = running_job(&pool).await;
    let lost = Fence {
        id: stale.id,
        token: Uuid::new_v4(),
    };
    // Queued together before any statement runs: one statement carries all three.
    let (a, b, c) = tokio::join!(
        group.commit(&tx, done_with(done, page("t-done", &["m1", "m2"], true))),
        group.commit(&tx, done_with(lost, page("t-lost", &["m3"], true))),
        group.commit(
            &tx,
            Entry {
                fence: checkpointed,
                finish: Finish::Checkpoint(json!({"offset": 50})),
                item: page("t-more", &["m4"], false),
            }
        ),
    );
    assert!(a.expect("done job"), "the done job's fence held");
    assert!(!b.expect("stale job"), "the stale token's fence failed");
    assert!(c.expect("checkpointed job"), "the checkpoint's fence held");

    assert_eq!(messages_of(&pool, "t-done").await, 2);
    assert_eq!(
        messages_of(&pool, "t-lost").await,
        0,
        "a lost lease writes nothing"
    );
    assert_eq!(messages_of(&pool, "t-more").await, 1);
    assert_eq!(status_of(&pool, done.id).await, "done");
    assert_eq!(status_of(&pool, stale.id).await, "running");
    assert_eq!(status_of(&pool, checkpointed.id).await, "running");
    let checkpoint: serde_json::Value =
        sqlx::query_scalar("SELECT checkpoint FROM threadsync.jobs WHERE id = $1")
            .bind(checkpointed.id)
            .fetch_one(&pool)
            .await
            .expect("checkpoint");
    assert_eq!(checkpoint, json!({"offset": 50}));
    let fetched: Vec<String> =
        sqlx::query_scalar("SELECT thread_id FROM threadsync.thread_fetches ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("fetches");
    assert_eq!(
        fetched,
        vec!["t-done"],
        "only the complete fetch that held records its newest"
    );
    let progress: Vec<(i32, i32, i32)> = sqlx::query_as(
        "SELECT threads_fetched, messages_written, http_calls FROM threadsync.sync_run_progress",
    )
    .fetch_all(&pool)
    .await
    .expect("progress");
    assert_eq!(
        progress,
        vec![(1, 3, 2)],
        "one statement, counting the two jobs that held"
    );
    scratch.close().await;
}

#[tokio::test]
async fn a_message_id_already_held_under_another_thread_moves_without_a_duplicate() {
    let (scratch, pool, tx) = setup().await;
    let group = GroupCommit::<ConversationPages>::default();
    let first = running_job(&pool).await;
    let r = group
        .commit(&tx, done_with(first, page("t-old", &["x1"], true)))
        .await;
    assert!(r.expect("first fetch"));
    // "x1" reappears in a thread we hold nothing of: the shared statement's plain insert
    // meets the existing key and fails as a whole...
    let second = running_job(&pool).await;
    let shared = ConversationPages::statement(
        &[done_with(second, page("t-new", &["x1", "x2"], true))],
        Attempt::Shared,
    )
    .execute(&pool)
    .await;
    match shared {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("23505")),
        other => panic!("the shared statement should meet the unique key: {other:?}"),
    }
    assert_eq!(
        status_of(&pool, second.id).await,
        "running",
        "it wrote nothing"
    );
    // ...and the group commit retries it alone, with full upserts.
    let r = group
        .commit(&tx, done_with(second, page("t-new", &["x1", "x2"], true)))
        .await;
    assert!(r.expect("the retry alone commits"));
    let threads: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, thread_id FROM threadsync.messages ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("messages");
    assert_eq!(
        threads,
        vec![("x1".into(), "t-new".into()), ("x2".into(), "t-new".into())],
        "one row per message id, filed where the provider now shows it"
    );
    assert_eq!(status_of(&pool, second.id).await, "done");
    scratch.close().await;
}

#[tokio::test]
async fn a_failing_job_fails_alone() {
    let (scratch, pool, tx) = setup().await;
    let group = GroupCommit::<ConversationPages>::default();
    let good = running_job(&pool).await;
    let bad = running_job(&pool).await;
    // The same message twice in one upsert: PostgreSQL rejects the whole statement.
    let (a, b) = tokio::join!(
        group.commit(&tx, done_with(good, page("t-good", &["g1"], true))),
        group.commit(&tx, done_with(bad, page("t-bad", &["b1", "b1"], true))),
    );
    assert!(a.expect("the good job commits"));
    assert!(b.is_err(), "the bad job reports its error");
    assert_eq!(messages_of(&pool, "t-good").await, 1);
    assert_eq!(messages_of(&pool, "t-bad").await, 0);
    assert_eq!(status_of(&pool, good.id).await, "done");
    assert_eq!(status_of(&pool, bad.id).await, "running");
    scratch.close().await;
}
