//! The registry of live worker runtimes: registered at start, refreshed with every
//! heartbeat, removed at a clean stop. A row past its `alive_until` is a dead worker.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub slots: i32,
    pub slots_in_use: i32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Past this instant without a heartbeat, the worker is taken for dead.
    pub alive_until: DateTime<Utc>,
}

/// Registers the runtime, or refreshes its row: `slots_in_use` now, alive for `ttl`.
pub async fn beat(
    pool: &PgPool,
    name: &str,
    slots: usize,
    in_use: usize,
    ttl: Duration,
) -> sqlx::Result<()> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO threadsync.workers (name, host, pid, slots, slots_in_use, alive_until)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
         ON CONFLICT (name) DO UPDATE SET slots_in_use = excluded.slots_in_use, slots = excluded.slots,
                last_heartbeat = now(), alive_until = excluded.alive_until,
                host = excluded.host, pid = excluded.pid",
    )
    .bind(name)
    .bind(host)
    .bind(i32::try_from(std::process::id()).unwrap_or(i32::MAX))
    .bind(i32::try_from(slots).unwrap_or(i32::MAX))
    .bind(i32::try_from(in_use).unwrap_or(i32::MAX))
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn leave(pool: &PgPool, name: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM threadsync.workers WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// Live workers (and, with `all`, the rows of dead ones too), by name.
pub async fn list(pool: &PgPool, all: bool) -> sqlx::Result<Vec<WorkerRow>> {
    sqlx::query_as(
        "SELECT name, host, pid, slots, slots_in_use, started_at, last_heartbeat, alive_until
           FROM threadsync.workers WHERE $1 OR alive_until > now() ORDER BY name",
    )
    .bind(all)
    .fetch_all(pool)
    .await
}
