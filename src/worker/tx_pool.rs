//! Connections for handlers' fenced transactions.
//!
//! sqlx's pool pings a connection when it is taken (unless told not to) and always when it is
//! given back: two extra round trips around a job's three (`BEGIN` with the fence, its
//! writes, `COMMIT`), and round trips are what a small job costs. Here a connection goes
//! back to the pool only after a `COMMIT` or `ROLLBACK` that succeeded, so it is known to be
//! idle and healthy then; any other ending closes it, and the server rolls back whatever
//! was open. A connection that sat idle a while is pinged before reuse, in case the server
//! went away meanwhile.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::queue::Tuning;

/// Idle longer than this, a connection is pinged before it is lent again.
const TRUST_IDLE: Duration = Duration::from_secs(2);

pub struct Manager {
    opts: PgConnectOptions,
}

impl managed::Manager for Manager {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.opts).await
    }

    async fn recycle(&self, conn: &mut PgConnection, m: &Metrics) -> RecycleResult<sqlx::Error> {
        if m.last_used() > TRUST_IDLE {
            conn.ping().await.map_err(RecycleError::Backend)?;
        }
        Ok(())
    }
}

pub type TxPool = managed::Pool<Manager>;
pub type TxConn = managed::Object<Manager>;

/// The pool for one worker runtime. `tuning` sets how its connections commit
/// (`synchronous_commit`) and bounds every transaction: one left idle longer than a lease
/// (its worker frozen, say by SIGSTOP, or a handler stuck between statements) is ended by
/// the server, so the job row it locked is free again by the time the lease has expired
/// and the reaper can hand the job on. A live handler never idles that long inside its
/// transaction: it holds one only to commit.
pub fn new(opts: PgConnectOptions, size: usize, tuning: &Tuning) -> TxPool {
    let idle_ms = tuning.lease_secs.saturating_mul(1000).to_string();
    let opts = opts.options([("idle_in_transaction_session_timeout", idle_ms.as_str())]);
    let opts = if tuning.synchronous_commit {
        opts
    } else {
        opts.options([("synchronous_commit", "off")])
    };
    let timeout = Some(Duration::from_secs(10));
    managed::Pool::builder(Manager { opts })
        .max_size(size.max(1))
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is set, so timeouts are allowed")
}

/// Takes a connection, as a sqlx error so handlers treat it like any database hiccup.
pub async fn get(pool: &TxPool) -> sqlx::Result<TxConn> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
        managed::PoolError::Closed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use crate::db::{self, Scratch};
    use crate::pg::Durability;
    use crate::queue::Tuning;

    /// A transaction left idle past one lease (its worker frozen) is ended by the server,
    /// releasing the row locks it held.
    #[tokio::test]
    async fn a_transaction_idle_past_one_lease_is_ended_by_the_server() {
        let scratch = Scratch::create("ts_txpool", Durability::Throwaway)
            .await
            .expect("scratch database");
        let pool = db::connect(&scratch.url, 2).await.expect("connect");
        let tuning = Tuning {
            lease_secs: 2,
            ..Tuning::default()
        };
        let tx = super::new((*pool.connect_options()).clone(), 1, &tuning);
        let mut conn = super::get(&tx).await.expect("connection");
        let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(&mut *conn)
            .await
            .expect("show");
        assert_eq!(timeout, "2s");
        sqlx::raw_sql("BEGIN; SELECT 1")
            .execute(&mut *conn)
            .await
            .expect("begin");
        tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        let err = sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .expect_err("the server ended the idle transaction");
        // 25P03 idle_in_transaction_session_timeout, or the closed socket behind it.
        let ended = match &err {
            sqlx::Error::Database(d) => d.code().as_deref() == Some("25P03"),
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
            _ => false,
        };
        assert!(ended, "{err:?}");
        drop(super::TxConn::take(conn));
        pool.close().await;
        scratch.close().await;
    }
    #[tokio::test]
    async fn synchronous_commit_false_reaches_every_job_connection() {
        // A durable server: a throwaway one runs with synchronous_commit off throughout.
        let scratch = Scratch::create("ts_txpool", Durability::Durable)
            .await
            .expect("scratch database");
        let pool = db::connect(&scratch.url, 2).await.expect("connect");
        for (synchronous_commit, want) in [(true, "on"), (false, "off")] {
            let tuning = Tuning {
                synchronous_commit,
                ..Tuning::default()
            };
            let tx = super::new((*pool.connect_options()).clone(), 2, &tuning);
            // Both connections of the pool, not only the first.
            let mut a = super::get(&tx).await.expect("connection");
            let mut b = super::get(&tx).await.expect("connection");
            for conn in [&mut a, &mut b] {
                let v: String = sqlx::query_scalar("SHOW synchronous_commit")
                    .fetch_one(&mut **conn)
                    .await
                    .expect("show");
                assert_eq!(v, want, "synchronous_commit = {synchronous_commit}");
            }
        }
        pool.close().await;
        scratch.close().await;
    }
}
