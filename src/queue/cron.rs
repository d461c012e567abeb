//! Cron schedules from jobs.toml. A tick fires by advancing `cron_ticks.last_tick` with a
//! compare-and-set in the same transaction as the enqueue: of N processes that see the
//! same due tick, exactly one wins. After downtime only the latest missed tick fires.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Schedule;
use super::{enqueue, NewJob};

/// Fires every schedule whose next tick is due. Returns the number of jobs enqueued.
pub async fn fire_due(
    pool: &PgPool,
    schedules: &[Schedule],
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    if schedules.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    // A schedule seen for the first time starts counting from now.
    sqlx::query(
        "INSERT INTO threadsync.cron_ticks (schedule, last_tick)
         SELECT unnest($1::text[]), $2 ON CONFLICT (schedule) DO NOTHING",
    )
    .bind(&names)
    .bind(now)
    .execute(pool)
    .await?;
    let last: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT schedule, last_tick FROM threadsync.cron_ticks WHERE schedule = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;

    let mut fired = 0;
    for (name, last_tick) in last {
        let Some(s) = schedules.iter().find(|s| s.name == name) else {
            continue;
        };
        let Some(tick) = latest_due_tick(s, last_tick, now) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        let won = sqlx::query(
            "UPDATE threadsync.cron_ticks SET last_tick = $2 WHERE schedule = $1 AND last_tick < $2",
        )
        .bind(&s.name)
        .bind(tick)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if won {
            // The dedupe key keeps a slow previous tick's job from piling up a second one;
            // run_at records which tick this job is for.
            let job = NewJob::new(&s.kind, s.payload.clone())
                .priority(s.priority)
                .run_at(tick)
                .dedupe(format!("cron:{}", s.name));
            enqueue(&mut *tx, &job).await?;
            tx.commit().await?;
            fired += 1;
        }
    }
    Ok(fired)
}

/// The latest tick in (last_tick, now], if any.
fn latest_due_tick(
    s: &Schedule,
    last_tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // Bounded: a per-second schedule after a month offline is 2.6M steps; cap the walk and
    // fall back to the last tick found (still a single firing).
    s.cron
        .iter_after(last_tick)
        .take(1_000_000)
        .take_while(|t| *t <= now)
        .last()
}

/// When the next schedule is due, to sleep until then.
pub fn next_due(schedules: &[Schedule], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedules
        .iter()
        .filter_map(|s| s.cron.find_next_occurrence(&now, false).ok())
        .min()
}
