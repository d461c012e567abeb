//! What a provider's push (a webhook delivery) changes in the copy: each thread it names
//! is refreshed (deduplicated with any refresh already pending), and an account whose
//! named thread is not held yet (no row, or none with that reference) gets an incremental
//! run, which finds it at the head of its list.

use sqlx::PgPool;

use super::provider::{ThreadRef, Touch};
use super::runs::{request_run, Mode, Requested};

/// What one delivery led to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// Thread refreshes enqueued (or already pending).
    pub refreshes: u32,
    /// Incremental runs started or queued behind the active one.
    pub runs: u32,
    /// Touches naming no account of this deployment.
    pub ignored: u32,
}

pub async fn apply(pool: &PgPool, provider: &str, touches: &[Touch]) -> sqlx::Result<Applied> {
    let mut applied = Applied::default();
    for t in touches {
        let accounts: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM threadsync.accounts WHERE provider = $1 AND address = $2 ORDER BY id",
        )
        .bind(provider)
        .bind(&t.address)
        .fetch_all(pool)
        .await?;
        if accounts.is_empty() {
            applied.ignored += 1;
        }
        for account in accounts {
            let threads: Vec<String> = match &t.thread {
                ThreadRef::Id(id) => {
                    sqlx::query_scalar(
                        "SELECT thread_id FROM threadsync.threads
                          WHERE account_id = $1 AND thread_id = $2 AND deleted_at IS NULL",
                    )
                    .bind(&account)
                    .bind(id)
                    .fetch_all(pool)
                    .await?
                }
                ThreadRef::Reference(r) => {
                    sqlx::query_scalar(
                        "SELECT thread_id FROM threadsync.threads
                          WHERE account_id = $1 AND reference_id = $2 AND deleted_at IS NULL ORDER BY thread_id",
                    )
                    .bind(&account)
                    .bind(r)
                    .fetch_all(pool)
                    .await?
                }
            };
            let mut tx = pool.begin().await?;
            if threads.is_empty() {
                sync_soon(&mut tx, &account).await?;
                applied.runs += 1;
            }
            for thread in &threads {
                sqlx::query("SELECT threadsync.refresh_thread($1, $2)")
                    .bind(&account)
                    .bind(thread)
                    .execute(&mut *tx)
                    .await?;
                applied.refreshes += 1;
            }
            tx.commit().await?;
        }
    }
    Ok(applied)
}

/// An incremental run now, or right after the active one (which may have read the list's
/// head before the new thread reached it).
async fn sync_soon(conn: &mut sqlx::PgConnection, account: &str) -> sqlx::Result<()> {
    if let Requested::Active { .. } = request_run(&mut *conn, account, Mode::Incremental).await? {
        sqlx::query(
            "UPDATE threadsync.accounts SET queued_mode = coalesce(queued_mode, 'incremental'), updated_at = now()
              WHERE id = $1",
        )
        .bind(account)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
