//! Group commit. Jobs whose whole fenced transaction is one statement of the same shape hand
//! their writes to a [`GroupCommit`], which writes every job waiting at that moment in one
//! statement: under load one round trip, one plan execution and one WAL flush serve many
//! jobs instead of one each. A job that finds a statement slot free goes at once, so an idle
//! worker adds no delay; jobs arriving while the slots are busy go together in the next one.
//!
//! Each job keeps its own fence: one whose lease was lost writes nothing while the others
//! commit. If a shared statement fails as a whole (bad data in one job, a deadlock, a
//! shortcut defeated by a conflict), every job in it is retried alone and without
//! shortcuts, so the error reaches only the job that caused it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use sqlx::Row;
use tokio::sync::oneshot;

use super::lock;
use super::tx_pool::{self, TxConn, TxPool};
use super::JobError;
use crate::db::PgQuery;
use crate::queue::{Fence, Finish};

/// Statements in flight at once per group: one runs while the next gathers jobs.
const MAX_STATEMENTS: usize = 2;
/// Most jobs in one statement.
const MAX_JOBS: usize = 64;

/// The shape of one group's statement.
pub trait GroupStatement: Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    /// Items with equal keys never share a statement (they would write the same rows).
    fn key(item: &Self::Item) -> String;

    /// One statement writing every entry under its job's fence (see `fence::group_fence_cte`),
    /// returning the ids of the jobs whose fence held. The others' writes are skipped.
    fn statement(entries: &[Entry<Self::Item>], attempt: Attempt) -> PgQuery<'_>;
}

/// Which try a statement is: a shared statement may take shortcuts that a rare conflict
/// defeats (the statement then fails); a job retried alone after that must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Shared,
    Alone,
}

pub struct Entry<T> {
    pub fence: Fence,
    pub finish: Finish,
    pub item: T,
}

/// `Ok(true)`: committed; `Ok(false)`: the lease was lost and nothing was written.
type Reply = Result<bool, JobError>;

struct Waiting<T> {
    entry: Entry<T>,
    reply: oneshot::Sender<Reply>,
}

struct State<T> {
    waiting: VecDeque<Waiting<T>>,
    running: usize,
}

pub struct GroupCommit<G: GroupStatement> {
    state: Arc<Mutex<State<G::Item>>>,
}

impl<G: GroupStatement> Default for GroupCommit<G> {
    fn default() -> Self {
        GroupCommit {
            state: Arc::new(Mutex::new(State {
                waiting: VecDeque::new(),
                running: 0,
            })),
        }
    }
}

impl<G: GroupStatement> GroupCommit<G> {
    /// Commits `entry` with whichever jobs share its statement.
    pub(crate) async fn commit(&self, pool: &TxPool, entry: Entry<G::Item>) -> Reply {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = lock(&self.state);
            s.waiting.push_back(Waiting { entry, reply: tx });
            let free = s.running < MAX_STATEMENTS;
            if free {
                s.running += 1;
            }
            free
        };
        if start {
            // Its own task: a job aborted while waiting must not take the others' statement
            // down with it.
            tokio::spawn(drive::<G>(self.state.clone(), pool.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(JobError::Transient(anyhow::anyhow!(
                "group commit stopped before answering"
            )))
        })
    }
}

/// Gives the statement slot back if the driver panics, so the group does not stall.
struct Slot<T> {
    state: Arc<Mutex<State<T>>>,
    held: bool,
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        if self.held {
            lock(&self.state).running -= 1;
        }
    }
}

/// Runs statements until no job is waiting, then gives its slot back (under the same lock
/// as the check, so a job queued meanwhile always finds a driver).
async fn drive<G: GroupStatement>(state: Arc<Mutex<State<G::Item>>>, pool: TxPool) {
    let mut slot = Slot {
        state: state.clone(),
        held: true,
    };
    loop {
        let batch = {
            let mut s = lock(&state);
            let batch = take_batch::<G>(&mut s.waiting);
            if batch.is_empty() {
                s.running -= 1;
                slot.held = false;
                return;
            }
            batch
        };
        run_batch::<G>(&pool, batch).await;
    }
}

/// The oldest waiting jobs, at most [`MAX_JOBS`], one per key, in job id order (so
/// concurrent statements lock job rows in one order).
fn take_batch<G: GroupStatement>(
    waiting: &mut VecDeque<Waiting<G::Item>>,
) -> Vec<Waiting<G::Item>> {
    let mut keys = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = VecDeque::new();
    while let Some(w) = waiting.pop_front() {
        if batch.len() < MAX_JOBS && keys.insert(G::key(&w.entry.item)) {
            batch.push(w);
        } else {
            rest.push_back(w);
        }
    }
    *waiting = rest;
    batch.sort_by_key(|w| w.entry.fence.id);
    batch
}

async fn run_batch<G: GroupStatement>(pool: &TxPool, batch: Vec<Waiting<G::Item>>) {
    let (entries, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|w| (w.entry, w.reply)).unzip();
    match execute::<G>(pool, &entries, Attempt::Shared).await {
        Ok(held) => {
            for (entry, reply) in entries.iter().zip(replies) {
                let _ = reply.send(Ok(held.contains(&entry.fence.id)));
            }
        }
        // The statement failed as a whole: find the job that made it fail.
        Err(sqlx::Error::Database(_)) => {
            for (entry, reply) in entries.iter().zip(replies) {
                let one = execute::<G>(pool, std::slice::from_ref(entry), Attempt::Alone).await;
                let _ = reply.send(one.map(|held| !held.is_empty()).map_err(JobError::from));
            }
        }
        // The connection or the server failed: the outcome is unknown to all of them, and the
        // fence makes their retries safe. The first carries the error itself (the worker
        // notices outages from it), the rest its text.
        Err(e) => {
            let text = e.to_string();
            let mut first = Some(e);
            for reply in replies {
                let err = match first.take() {
                    Some(e) => JobError::from(e),
                    None => JobError::Transient(anyhow::anyhow!("{text}")),
                };
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// Runs one statement for `entries`; returns the ids of the jobs whose fence held.
async fn execute<G: GroupStatement>(
    pool: &TxPool,
    entries: &[Entry<G::Item>],
    attempt: Attempt,
) -> sqlx::Result<HashSet<i64>> {
    let mut conn = tx_pool::get(pool).await?;
    match G::statement(entries, attempt).fetch_all(&mut *conn).await {
        Ok(rows) => rows.iter().map(|r| r.try_get::<i64, _>(0)).collect(),
        // The statement failed and rolled back; the connection is idle again.
        Err(e @ sqlx::Error::Database(_)) => Err(e),
        Err(e) => {
            drop(TxConn::take(conn));
            Err(e)
        }
    }
}
