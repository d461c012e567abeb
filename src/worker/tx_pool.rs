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

pub fn new(opts: PgConnectOptions, size: usize, synchronous_commit: bool) -> TxPool {
    let opts = if synchronous_commit {
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
