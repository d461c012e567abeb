//! A database synced before the engine's migration (0007) keeps its data and its queued
//! jobs across the upgrade.

mod common;

use serde_json::json;
use threadsync::db::{self, Scratch};
use threadsync::sync::plan::{FetchPayload, ListPayload, StreamPayload, Walk};

#[tokio::test]
async fn data_and_queued_jobs_survive_the_upgrade_to_provider_neutral_columns() {
    let scratch = Scratch::create_on(&common::admin_url(), "ts_upgrade")
        .await
        .expect("scratch database");
    let pool = db::connect(&scratch.url, 4).await.expect("connect");

    // The schema as it stood before 0007: the first six migrations, from their own files.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut before = 0;
    for entry in std::fs::read_dir("migrations").expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.as_str() < "0007" {
            std::fs::copy(&path, dir.path().join(&name)).expect("copy");
            before += 1;
        }
    }
    assert_eq!(before, 6);
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("old migrator")
        .run(&pool)
        .await
        .expect("old migrations");

    sqlx::raw_sql(
        "INSERT INTO threadsync.accounts (id, provider, members_synced_from) VALUES
             ('e', 'ebay', '2026-11-01T00:00:00Z'), ('s', 'smseagle', NULL);
         INSERT INTO threadsync.sms_folder_cursors (account_id, folder, last_id) VALUES ('s', 'inbox', 42);
         INSERT INTO threadsync.sms_deliveries (account_id, message_id, validity, expires_at)
             VALUES ('s', 'out:7', '5m', '2026-11-01T00:05:00Z');
         INSERT INTO threadsync.sync_runs (id, account_id, mode, state) VALUES (1, 's', 'incremental', 'done');
         INSERT INTO threadsync.sync_run_progress (run_id, folder, sms_new, messages_written, http_calls)
             VALUES (1, 'inbox', 5, 5, 1), (1, 'sentitems', 2, 2, 1);",
    )
    .execute(&pool)
    .await
    .expect("old data");
    let old_list = json!({"account": "e", "conversation_type": "FROM_MEMBERS", "offset": 50,
                          "start_time": "2026-11-01T00:00:00Z", "walk": "next", "total": 120});
    let old_fetch = json!({"account": "e", "thread_id": "t9", "conversation_type": "FROM_EBAY"});
    let old_folder = json!({"account": "s", "folder": "inbox", "after_id": 42});
    for (kind, payload) in [
        ("ebay.list_page", &old_list),
        ("ebay.conversation", &old_fetch),
        ("smseagle.folder", &old_folder),
    ] {
        sqlx::query("SELECT threadsync.enqueue(kind => $1, payload => $2)")
            .bind(kind)
            .bind(payload)
            .execute(&pool)
            .await
            .expect("old job");
    }

    db::migrate(&pool).await.expect("upgrade");

    let (watermark, fetches): (Option<chrono::DateTime<chrono::Utc>>, bool) = sqlx::query_as(
        "SELECT synced_from, fetches_threads FROM threadsync.accounts WHERE id = 'e'",
    )
    .fetch_one(&pool)
    .await
    .expect("account");
    assert_eq!(
        watermark.map(|w| w.to_rfc3339()),
        Some("2026-11-01T00:00:00+00:00".to_string())
    );
    assert!(fetches, "an eBay account fetches threads");
    let cursor: (String, i64) = sqlx::query_as(
        "SELECT stream, position FROM threadsync.stream_cursors WHERE account_id = 's'",
    )
    .fetch_one(&pool)
    .await
    .expect("cursor");
    assert_eq!(cursor, ("inbox".to_string(), 42));
    let remote: Option<i64> = sqlx::query_scalar(
        "SELECT remote_id FROM threadsync.deliveries WHERE message_id = 'out:7'",
    )
    .fetch_one(&pool)
    .await
    .expect("delivery");
    assert_eq!(remote, Some(7));
    let (written, by_stream): (i64, serde_json::Value) = sqlx::query_as(
        "SELECT messages_written, messages_by_stream FROM threadsync.sync_run_totals WHERE run_id = 1",
    )
    .fetch_one(&pool)
    .await
    .expect("totals");
    assert_eq!(written, 7);
    assert_eq!(by_stream, json!({"inbox": 5, "sentitems": 2}));

    // The queued jobs decode as the engine's payloads.
    let payloads: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT kind, payload FROM threadsync.jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("jobs");
    let list: ListPayload = serde_json::from_value(payloads[0].1.clone()).expect("list payload");
    assert_eq!((list.list.as_str(), list.offset), ("FROM_MEMBERS", 50));
    assert!(list.since.is_some());
    assert!(matches!(list.walk, Walk::Next { total: Some(120) }));
    let fetch: FetchPayload = serde_json::from_value(payloads[1].1.clone()).expect("fetch payload");
    assert_eq!(fetch.list.as_deref(), Some("FROM_EBAY"));
    let folder: StreamPayload =
        serde_json::from_value(payloads[2].1.clone()).expect("folder payload");
    assert_eq!((folder.stream.as_str(), folder.after), ("inbox", Some(42)));

    // refresh_thread derives the kind and keys from the provider, and refuses a stream one.
    let id: i64 = sqlx::query_scalar("SELECT threadsync.refresh_thread('e', 't1')")
        .fetch_one(&pool)
        .await
        .expect("refresh");
    let (kind, key): (String, Option<String>) =
        sqlx::query_as("SELECT kind, dedupe_key FROM threadsync.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("refresh job");
    assert_eq!(kind, "ebay.conversation");
    assert_eq!(key.as_deref(), Some("ebay:conversation:e:t1"));
    let refused = sqlx::query_scalar::<_, i64>("SELECT threadsync.refresh_thread('s', 't1')")
        .fetch_one(&pool)
        .await
        .expect_err("a stream account has no thread fetches");
    assert!(
        refused.to_string().contains("no threads to fetch"),
        "{refused}"
    );

    pool.close().await;
    scratch.close().await;
}
