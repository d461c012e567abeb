//! Batched claims: `FOR UPDATE SKIP LOCKED` in priority then run_at order, never more than
//! the caller's free slots, honouring fleet-wide concurrency keys.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
    pub max_attempts: Option<i32>,
    pub lease_token: Uuid,
    pub checkpoint: Option<Value>,
    pub run_id: Option<i64>,
    pub concurrency_key: Option<String>,
    /// For a job that was snoozed: how long past the time it was snoozed to it was as of
    /// `claimed`, the moment its claim's update answered (the commit after it counts).
    #[sqlx(skip)]
    pub woke_late: Option<(Duration, Instant)>,
    /// For a snoozed job: seconds past `run_at` when the claim's update took it.
    late: Option<f64>,
}

/// The jobs that count under their concurrency key: running ones and snoozed ones (two
/// arms, so each reads its own partial index).
macro_rules! key_holders {
    () => {
        "SELECT concurrency_key, concurrency_limit FROM threadsync.jobs
          WHERE status = 'running' AND concurrency_key IS NOT NULL
         UNION ALL
         SELECT concurrency_key, concurrency_limit FROM threadsync.jobs
          WHERE status = 'pending' AND holds_key AND concurrency_key IS NOT NULL"
    };
}

/// What one claim took.
#[derive(Debug, Default)]
pub struct Claimed {
    /// In claim order.
    pub jobs: Vec<ClaimedJob>,
    /// Some due jobs were left out because their concurrency key filled up within this
    /// claim: another claim, which skips those keys, may find more.
    pub capped: bool,
}

/// Due snoozed jobs, as the first part of a claim's one statement.
macro_rules! snoozed_due {
    () => {
        "s AS (SELECT id, concurrency_key, concurrency_limit, true AS snoozed
                      FROM threadsync.jobs
                     WHERE status = 'pending' AND holds_key AND run_at <= now()
                       AND kind <> ALL($2)
                     ORDER BY run_at
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED)"
    };
}

/// A due job a claim looked at.
#[derive(sqlx::FromRow)]
struct Candidate {
    id: i64,
    concurrency_key: Option<String>,
    concurrency_limit: i32,
    snoozed: bool,
}

/// A candidate with a concurrency key.
struct Keyed {
    id: i64,
    key: String,
    limit: i32,
}

/// Which due jobs a claim looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Snoozed jobs that came due, then every other due job.
    All,
    /// Snoozed jobs that came due, and due jobs of these concurrency keys (a key once for
    /// each of its jobs that ended since the last claim): when nothing else can have become
    /// claimable (no unkeyed job ended, none was enqueued), this reads only small indexes,
    /// however many other keys sit at their cap with a backlog.
    Freed(&'a [String]),
}

/// Claims up to `limit` due jobs for `owner`, skipping kinds in `skip_kinds` (those whose
/// local per-kind limit is reached). Due snoozed jobs come first: they hold their key's
/// place already and wait for a time they chose.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    skip_kinds: &[String],
    scope: Scope<'_>,
) -> sqlx::Result<Claimed> {
    if limit == 0 {
        return Ok(Claimed::default());
    }
    // Right after a bulk enqueue the planner's row estimate is stale and it picks a bitmap
    // scan plus a sort of the whole backlog (60 ms for 100k jobs instead of 1.5 ms). The
    // claim index already yields rows in claim order, so forbid those plans for this
    // transaction only (in the same round trip as BEGIN). A forbidden plan's cost also
    // passes the JIT threshold, and compiling (hundreds of ms) never pays off here.
    let mut tx = pool
        .begin_with(
            "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off",
        )
        .await?;
    // One round trip either way: due snoozed jobs (they hold their key's place already),
    // and with them, for a wide look, every other due job whose key has room (keys already
    // at their limit are filtered out up front so a backlog of one busy account never
    // starves the rest of the queue), or for a narrow one the due jobs of the freed keys,
    // each read from its own end of the key's index.
    let sql = match scope {
        Scope::Freed([]) => concat!("WITH ", snoozed_due!(), " SELECT * FROM s"),
        Scope::Freed(_) => concat!(
            "WITH ",
            snoozed_due!(),
            ", f AS (SELECT key, count(*) AS n FROM unnest($3::text[]) AS u(key) GROUP BY key),
               k AS (SELECT j.id, j.concurrency_key, j.concurrency_limit, false AS snoozed
                       FROM f CROSS JOIN LATERAL (
                            SELECT id, concurrency_key, concurrency_limit
                              FROM threadsync.jobs
                             WHERE status = 'pending' AND NOT holds_key AND concurrency_key = f.key
                               AND run_at <= now() AND kind <> ALL($2)
                             ORDER BY priority DESC, run_at, id
                             LIMIT f.n
                             FOR UPDATE SKIP LOCKED) j)
             SELECT * FROM s UNION ALL SELECT * FROM k"
        ),
        Scope::All => concat!(
            "WITH ",
            snoozed_due!(),
            ", o AS (SELECT id, concurrency_key, concurrency_limit, false AS snoozed
                       FROM threadsync.jobs
                      WHERE status = 'pending' AND run_at <= now() AND NOT holds_key
                        AND kind <> ALL($2)
                        AND (concurrency_key IS NULL OR concurrency_key <> ALL(ARRAY(
                               SELECT concurrency_key FROM (",
            key_holders!(),
            ") h GROUP BY concurrency_key HAVING count(*) >= min(concurrency_limit))))
                      ORDER BY priority DESC, run_at, id
                      LIMIT $1
                      FOR UPDATE SKIP LOCKED)
             SELECT * FROM s UNION ALL SELECT * FROM o"
        ),
    };
    let mut query = sqlx::query_as::<_, Candidate>(sql)
        .bind(limit as i64)
        .bind(skip_kinds);
    if let Scope::Freed(keys @ [_, ..]) = scope {
        query = query.bind(keys);
    }
    let rows: Vec<Candidate> = query.fetch_all(&mut *tx).await?;
    let (snoozed, others): (Vec<Candidate>, Vec<Candidate>) =
        rows.into_iter().partition(|c| c.snoozed);
    let mut ids: Vec<i64> = snoozed.iter().map(|c| c.id).collect();
    // Others only fill the room the snoozed left (the rest stay pending at commit).
    let others: Vec<Candidate> = others
        .into_iter()
        .take(limit.saturating_sub(ids.len()))
        .collect();
    let keyed: Vec<Keyed> = others
        .iter()
        .filter_map(|c| {
            Some(Keyed {
                id: c.id,
                key: c.concurrency_key.clone()?,
                limit: c.concurrency_limit,
            })
        })
        .collect();
    let admitted: HashSet<i64> = match keyed.is_empty() {
        true => HashSet::new(),
        false => admit_keyed(&mut tx, keyed).await?.into_iter().collect(),
    };
    let before = ids.len();
    ids.extend(
        others
            .iter()
            .filter(|c| c.concurrency_key.is_none() || admitted.contains(&c.id))
            .map(|c| c.id),
    );
    let capped = ids.len() - before < others.len();
    if ids.is_empty() {
        return Ok(Claimed {
            jobs: Vec::new(),
            capped,
        });
    }

    let mut jobs = sqlx::query_as::<_, ClaimedJob>(
        "UPDATE threadsync.jobs
            SET status = 'running', attempts = attempts + 1, lease_owner = $2, holds_key = false,
                lease_token = gen_random_uuid(),
                lease_expires_at = now() + make_interval(secs => $3), started_at = now()
          WHERE id = ANY($1)
      RETURNING id, kind, payload, attempts, max_attempts, lease_token, checkpoint, run_id, concurrency_key,
                CASE WHEN id = ANY($4) THEN extract(epoch FROM clock_timestamp() - run_at)::float8 END AS late",
    )
    .bind(&ids)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(&ids[..snoozed.len()])
    .fetch_all(&mut *tx)
    .await?;
    // Lateness is read as the rows are taken, after any wait for a key's lock, and counted
    // on from here: a snoozed job must not think itself on time after a slow claim.
    let claimed = Instant::now();
    tx.commit().await?;
    // RETURNING has no defined order: start jobs in claim order.
    let rank: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    jobs.sort_by_key(|j| rank.get(&j.id).copied().unwrap_or(usize::MAX));
    for j in &mut jobs {
        j.woke_late = j.late.map(|late| {
            (
                Duration::try_from_secs_f64(late).unwrap_or_default(),
                claimed,
            )
        });
    }
    Ok(Claimed { jobs, capped })
}

/// Decides which keyed candidates may start. Claimers serialize per key on a
/// transaction-scoped advisory lock, then count the running and snoozed jobs that
/// committed before them (in a statement of its own, so its snapshot follows the locks).
async fn admit_keyed(tx: &mut sqlx::PgConnection, keyed: Vec<Keyed>) -> sqlx::Result<Vec<i64>> {
    let mut keys: Vec<String> = keyed.iter().map(|k| k.key.clone()).collect();
    keys.sort();
    keys.dedup();
    // All in one round trip, in the order of the locks' own ids, so no two claimers ever
    // wait for each other.
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(h)) FROM (
             SELECT DISTINCT hashtextextended(k, 7301) AS h FROM unnest($1::text[]) AS k ORDER BY 1) l",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    let running: Vec<(String, i64)> = sqlx::query_as(concat!(
        "SELECT concurrency_key, count(*) FROM (",
        key_holders!(),
        ") h WHERE concurrency_key = ANY($1) GROUP BY concurrency_key"
    ))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let mut used: HashMap<String, i64> = running.into_iter().collect();
    let mut admitted = Vec::new();
    // `keyed` is still in claim order.
    for k in keyed {
        let n = used.entry(k.key).or_insert(0);
        if *n < i64::from(k.limit) {
            *n += 1;
            admitted.push(k.id);
        }
    }
    Ok(admitted)
}
