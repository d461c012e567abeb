//! Restart PostgreSQL under running workers: they log it, reconnect with backoff and finish
//! the queue with nothing lost. Uses its own private server (a restart would disturb others).

mod common;

use std::time::Duration;

use common::{write_config, TestDb, WorkerProc};
use serde_json::json;
use threadsync::pg::{Durability, PrivatePg};
use threadsync::queue::{enqueue_batch, NewJob};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_a_database_restart() {
    let pg = match PrivatePg::start(Durability::Throwaway) {
        Ok(pg) => pg,
        Err(e) => panic!("this test needs local PostgreSQL server binaries: {e:#}"),
    };
    let db = TestDb::on(&pg.admin_url()).await;
    let jobs: Vec<NewJob> = (0..3000)
        // 3,000 × 30 ms over 16 slots: about 6 s of work, so the restart lands mid-queue.
        .map(|_| NewJob::new("diag.sleep", json!({"ms": 30})))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.unwrap();
    let cfg = write_config("[queue]\nlease_secs = 5\npoll_ms = 200\n");
    let workers: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::start(&db.url, &cfg, &format!("r{i}"), 8))
        .collect();
    db.wait_count(
        "SELECT least(count(*), 300) FROM threadsync.diag_writes",
        300,
        Duration::from_secs(60),
    )
    .await;

    let left = count(
        &db.pool,
        "SELECT count(*) FROM threadsync.jobs WHERE status <> 'done'",
    )
    .await
    .unwrap_or(0);
    assert!(
        left > 1000,
        "the restart must land mid-queue ({left} jobs left)"
    );

    let pg = tokio::task::spawn_blocking(move || {
        pg.restart().expect("restart PostgreSQL");
        pg
    })
    .await
    .unwrap();

    // The test's own pool reconnects too; errors while it does are expected.
    let t = std::time::Instant::now();
    while count(
        &db.pool,
        "SELECT count(*) FROM threadsync.jobs WHERE status = 'done'",
    )
    .await
        != Some(3000)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the queue did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM threadsync.diag_writes").await,
        Some(3000)
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(DISTINCT job_id) FROM threadsync.diag_writes"
        )
        .await,
        Some(3000)
    );
    // Each worker logs the outage once and, once it has settled, its end once: not once
    // per dead pooled connection or per task.
    let t = std::time::Instant::now();
    while !workers
        .iter()
        .all(|w| w.log().contains("database reachable again"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "every worker logs the recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in &workers {
        let log = w.log();
        assert_eq!(log.matches("database unavailable").count(), 1, "{log}");
        assert_eq!(log.matches("database reachable again").count(), 1, "{log}");
    }
    drop(workers);
    db.close().await;
    drop(pg);
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.ok()
}
