//! The worker runtime: LISTEN plus a poll floor, batched claims bounded by free slots,
//! heartbeats, the reaper/cron/prune loop, graceful shutdown and dispatch to handlers.

pub mod group_commit;
pub mod job;
pub mod metrics;
pub(crate) mod tx_pool;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use sqlx::postgres::PgListener;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use job::{Fenced, Handler, JobCtx, JobError, JobResult, Periodic, Registry};

use crate::queue::{
    self, cron, fence, maintenance, workers, Claimed, ClaimedJob, Fence, Scope, Settings,
};

/// Largest claim in one statement.
const MAX_BATCH: usize = 1000;

pub struct Worker {
    shared: Arc<Shared>,
    acks: mpsc::UnboundedReceiver<Fence>,
}

struct Shared {
    /// Handlers' connections for reads.
    pool: PgPool,
    /// Handlers' connections for fenced transactions.
    tx_pool: tx_pool::TxPool,
    /// The runtime's own connections (claims, heartbeats, outcomes, reaper), apart from the
    /// handlers' so busy handlers can never starve a heartbeat into a lost lease.
    control: PgPool,
    cfg: Arc<Settings>,
    registry: Registry,
    name: Arc<str>,
    concurrency: usize,
    slots: Arc<Semaphore>,
    /// Woken by NOTIFY, by finished jobs, by snoozed jobs coming due and by shutdown.
    wake: Arc<Notify>,
    /// Set when more than snoozed jobs and freed keys' jobs may have become claimable (an
    /// unkeyed job ended, one was enqueued, the poll came round): the next claim looks at
    /// every due job.
    look_wide: AtomicBool,
    /// Keys of jobs that ended here since the last claim, once per job: the next narrow
    /// claim looks at their due jobs.
    freed: Mutex<Vec<String>>,
    inflight: Mutex<HashMap<i64, InFlight>>,
    running_by_kind: Mutex<HashMap<String, usize>>,
    acks: mpsc::UnboundedSender<Fence>,
    outage: Outage,
}

struct InFlight {
    fence: Fence,
    ctx: Arc<JobCtx>,
    abort: AbortHandle,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        cfg: Arc<Settings>,
        registry: Registry,
        name: &str,
        concurrency: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let concurrency = concurrency.max(1);
        Worker {
            shared: Arc::new(Shared {
                // Handlers hold one only to commit, never across HTTP calls.
                tx_pool: tx_pool::new(
                    (*pool.connect_options()).clone(),
                    concurrency.min(8) + 1,
                    &cfg.tuning,
                ),
                control: PgPoolOptions::new()
                    .max_connections(3)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with((*pool.connect_options()).clone()),
                pool,
                cfg,
                registry,
                name: Arc::from(name),
                concurrency,
                slots: Arc::new(Semaphore::new(concurrency)),
                wake: Arc::new(Notify::new()),
                look_wide: AtomicBool::new(true),
                freed: Mutex::new(Vec::new()),
                inflight: Mutex::new(HashMap::new()),
                running_by_kind: Mutex::new(HashMap::new()),
                acks: tx,
                outage: Outage::default(),
            }),
            acks: rx,
        }
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets in-flight jobs finish
    /// within the grace period and releases the rest to pending at once.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let s = self.shared;
        info!(worker = %s.name, concurrency = s.concurrency, "worker started");
        let background = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(listen(s.clone(), background.clone())),
            tokio::spawn(heartbeat(s.clone(), background.clone())),
            tokio::spawn(maintain(s.clone(), background.clone())),
        ];
        for p in s.registry.periodic_tasks() {
            tasks.push(tokio::spawn(periodic(
                s.pool.clone(),
                p.clone(),
                background.clone(),
            )));
        }
        let acker = tokio::spawn(ack(s.clone(), self.acks, background.clone()));

        claim_loop(&s, &shutdown).await;
        drain(&s).await;

        background.cancel();
        for t in tasks {
            let _ = t.await;
        }
        let _ = acker.await;
        if let Err(e) = workers::leave(&s.control, &s.name).await {
            debug!(error = %e, "could not remove the worker's registration; it expires by itself");
        }
        info!(worker = %s.name, "worker stopped");
        Ok(())
    }
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it (the maps
/// stay consistent: every mutation is a single insert or remove).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn claim_loop(s: &Arc<Shared>, shutdown: &CancellationToken) {
    let poll = Duration::from_millis(s.cfg.tuning.poll_ms);
    let mut backoff = Backoff::new();
    let mut last_full = false;
    // A busy worker is woken every few milliseconds and never waits out the poll: it looks
    // wide at least once per poll interval anyway (jobs that came due by time, accounts not
    // started yet).
    let mut last_wide = Instant::now();
    while !shutdown.is_cancelled() {
        let free = s.slots.available_permits();
        // After a full batch, wait for half the slots before claiming again so claims stay
        // batched under load; an idle worker claims at once.
        if free == 0 || (last_full && free < s.concurrency / 2) {
            tokio::select! {
                _ = s.wake.notified() => {}
                _ = sleep(poll) => s.look_wide.store(true, Ordering::Release),
                _ = shutdown.cancelled() => break,
            }
            last_full = false;
            continue;
        }
        let want = free.min(MAX_BATCH);
        let skip = kinds_at_limit(s);
        // A wide look covers the freed keys too.
        let freed = std::mem::take(&mut *lock(&s.freed));
        let wide = s.look_wide.swap(false, Ordering::AcqRel) || last_wide.elapsed() >= poll;
        if wide {
            last_wide = Instant::now();
        }
        let scope = match wide {
            true => Scope::All,
            false => Scope::Freed(&freed),
        };
        match queue::claim(&s.control, &s.name, want, s.cfg.lease(), &skip, scope).await {
            Ok(Claimed { jobs, capped }) => {
                s.outage.recovered("claim");
                backoff.reset();
                let n = jobs.len();
                start_jobs(s, jobs).await;
                last_full = n == want;
                // A full batch may have left more behind, and one that left out jobs of
                // keys that filled up within it (one account's jobs first in claim order)
                // is followed at once by another, which skips those keys.
                if last_full || (capped && n > 0) {
                    if scope == Scope::All {
                        s.look_wide.store(true, Ordering::Release);
                    }
                    continue;
                }
                tokio::select! {
                    _ = s.wake.notified() => {}
                    _ = sleep(poll) => s.look_wide.store(true, Ordering::Release),
                    _ = shutdown.cancelled() => break,
                }
            }
            Err(e) => {
                s.look_wide.store(true, Ordering::Release);
                s.outage.failed("claim", &e);
                let wait = backoff.next();
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
}

fn kinds_at_limit(s: &Shared) -> Vec<String> {
    let running = lock(&s.running_by_kind);
    s.cfg
        .kinds
        .iter()
        .filter_map(|(k, c)| {
            let limit = c.concurrency?;
            (running.get(k).copied().unwrap_or(0) >= limit).then(|| k.clone())
        })
        .collect()
}

async fn start_jobs(s: &Arc<Shared>, jobs: Vec<ClaimedJob>) {
    // Jobs that cannot start here, by the reason they are handed back with.
    let mut over_limit: BTreeMap<String, Vec<Fence>> = BTreeMap::new();
    for job in jobs {
        let fence = Fence {
            id: job.id,
            token: job.lease_token,
        };
        let Ok(permit) = s.slots.clone().try_acquire_owned() else {
            let reason = format!("released unstarted: worker {} had no free job slot", s.name);
            over_limit.entry(reason).or_default().push(fence);
            continue;
        };
        if !take_kind_slot(s, &job.kind) {
            let limit = s.cfg.kinds.get(&job.kind).and_then(|k| k.concurrency);
            let reason = format!(
                "released unstarted: kind {} is at its concurrency limit ({}) on worker {}",
                job.kind,
                limit.unwrap_or_default(),
                s.name
            );
            over_limit.entry(reason).or_default().push(fence);
            continue;
        }
        spawn_job(s, job, permit);
    }
    // Claimed past a limit within one batch: hand them straight back.
    for (reason, fences) in over_limit {
        if let Err(e) = fence::release_batch(&s.control, &fences, &reason).await {
            warn!(error = %e, "could not release over-limit jobs; the reaper will return them");
        }
    }
}

fn take_kind_slot(s: &Shared, kind: &str) -> bool {
    let limit = s.cfg.kinds.get(kind).and_then(|k| k.concurrency);
    let mut running = lock(&s.running_by_kind);
    let n = running.entry(kind.to_string()).or_insert(0);
    if limit.is_some_and(|l| *n >= l) {
        return false;
    }
    *n += 1;
    true
}

/// Frees the job's slot however its task ends (finished, or aborted at shutdown or on a
/// lost lease).
struct SlotGuard {
    shared: Arc<Shared>,
    id: i64,
    kind: String,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.shared.inflight).remove(&self.id);
        if let Some(n) = lock(&self.shared.running_by_kind).get_mut(&self.kind) {
            *n = n.saturating_sub(1);
        }
        self.shared.wake.notify_one();
    }
}

fn spawn_job(s: &Arc<Shared>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let fence = Fence {
        id: job.id,
        token: job.lease_token,
    };
    let key = job.concurrency_key.clone();
    let ctx = Arc::new(JobCtx::new(
        job,
        s.name.clone(),
        s.pool.clone(),
        s.tx_pool.clone(),
    ));
    let guard = SlotGuard {
        shared: s.clone(),
        id: ctx.id,
        kind: ctx.kind.clone(),
        _permit: permit,
    };
    let shared = s.clone();
    let task_ctx = ctx.clone();
    // Hold the map lock across spawn so the task cannot finish before it is registered.
    let mut inflight = lock(&s.inflight);
    metrics::claimed(&ctx.kind);
    let started = Instant::now();
    let handle = tokio::spawn(async move {
        let _guard = guard;
        let handler = shared.registry.get(&task_ctx.kind);
        let outcome = match &handler {
            None => Err(JobError::Permanent(format!(
                "unknown job kind {:?}",
                task_ctx.kind
            ))),
            Some(h) => AssertUnwindSafe(h.run(&task_ctx))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    Err(JobError::Transient(anyhow::anyhow!(
                        "handler panicked: {}",
                        panic_text(&p)
                    )))
                }),
        };
        task_ctx
            .returned
            .store(true, std::sync::atomic::Ordering::Release);
        let counted = record(&shared, &task_ctx, outcome).await;
        if let Some(counted) = counted {
            metrics::ended(&task_ctx.kind, counted, started.elapsed());
        }
        // A job that ended (not one that snoozed) frees its key's place, once its outcome
        // committed (a batched acknowledgement has not yet).
        let snoozed = matches!(counted, Some(metrics::Outcome::Snoozed));
        let acked_later =
            matches!(counted, Some(metrics::Outcome::Done)) && !task_ctx.is_finished();
        if !snoozed {
            match key {
                Some(key) if !acked_later => lock(&shared.freed).push(key),
                _ => shared.look_wide.store(true, Ordering::Release),
            }
        }
        if let Some(h) = handler {
            h.after(&task_ctx).await;
        }
    });
    inflight.insert(
        fence.id,
        InFlight {
            fence,
            ctx,
            abort: handle.abort_handle(),
        },
    );
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Writes the outcome under the fence. Database errors are retried for up to one lease
/// length; past that the reaper returns the job anyway. Returns the outcome to count.
async fn record(s: &Shared, ctx: &JobCtx, outcome: JobResult) -> Option<metrics::Outcome> {
    let err = match outcome {
        Ok(()) if ctx.is_finished() => return Some(metrics::Outcome::Done),
        Ok(()) => {
            // Wrote nothing: completion rides in the next batched acknowledgement.
            let _ = s.acks.send(ctx.fence);
            return Some(metrics::Outcome::Done);
        }
        Err(JobError::LeaseLost) => {
            warn!(job = ctx.id, kind = %ctx.kind, "lease lost: another worker owns this job; its writes were rolled back");
            return None;
        }
        Err(e) => e,
    };
    if let JobError::Transient(e) = &err {
        // A handler is often the first to meet a database outage (its connection died).
        if let Some(db @ (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) = e.downcast_ref() {
            s.outage.failed("job", db);
        }
    }
    let policy = s.cfg.policy(&ctx.kind);
    let deadline = Instant::now() + s.cfg.lease();
    let mut wait = Duration::from_millis(100);
    loop {
        let res = match &err {
            JobError::Transient(e) => {
                let text = format!("{e:#}");
                fence::fail_transient(&s.control, ctx.fence, policy.max_attempts, policy.backoff(ctx.attempts), &text)
                    .await
                    .map(|st| {
                        match st.as_deref() {
                            Some("failed") => {
                                warn!(job = ctx.id, kind = %ctx.kind, attempts = ctx.attempts, error = %text, "job failed: out of attempts");
                                metrics::Outcome::Failed
                            }
                            _ => {
                                info!(job = ctx.id, kind = %ctx.kind, attempts = ctx.attempts, error = %text, "job will retry");
                                metrics::Outcome::Retried
                            }
                        }
                    })
            }
            JobError::RetryAfter { at, reason } => {
                debug!(job = ctx.id, kind = %ctx.kind, %at, reason = %reason, "job rescheduled by provider signal");
                fence::retry_at(&s.control, ctx.fence, *at, reason)
                    .await
                    .map(|_| metrics::Outcome::Retried)
            }
            JobError::Snooze { at } => {
                fence::snooze(&s.control, ctx.fence, *at).await.map(|wait| {
                    // This runtime claims the job when it is due; the poll is the floor for
                    // every other runtime.
                    if let Some(wait) =
                        wait.and_then(|w| Duration::try_from_secs_f64(w.max(0.0)).ok())
                    {
                        let wake = s.wake.clone();
                        tokio::spawn(async move {
                            sleep(wait).await;
                            wake.notify_one();
                        });
                    }
                    metrics::Outcome::Snoozed
                })
            }
            JobError::Permanent(reason) => {
                warn!(job = ctx.id, kind = %ctx.kind, reason = %reason, "job failed permanently");
                fence::fail_permanent(&s.control, ctx.fence, reason)
                    .await
                    .map(|_| metrics::Outcome::Failed)
            }
            JobError::LeaseLost => return None,
        };
        match res {
            Ok(counted) => {
                s.outage.recovered("record");
                return Some(counted);
            }
            Err(e) if Instant::now() + wait < deadline => {
                s.outage.failed("record", &e);
                debug!(job = ctx.id, error = %e, "recording outcome failed; retrying");
                sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                warn!(job = ctx.id, error = %e, "could not record outcome; the reaper will return the job");
                return None;
            }
        }
    }
}

/// Flushes batched completions of jobs that wrote nothing.
async fn ack(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Fence>, stop: CancellationToken) {
    let mut batch: Vec<Fence> = Vec::new();
    loop {
        if batch.is_empty() {
            tokio::select! {
                f = rx.recv() => match f { Some(f) => batch.push(f), None => return },
                _ = stop.cancelled() => {
                    while let Ok(f) = rx.try_recv() { batch.push(f); }
                    if !batch.is_empty() {
                        let _ = fence::complete_batch(&s.control, &batch).await;
                    }
                    return;
                }
            }
        }
        while batch.len() < 5000 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        match fence::complete_batch(&s.control, &batch).await {
            Ok(_) => {
                s.outage.recovered("acks");
                batch.clear()
            }
            Err(e) => {
                s.outage.failed("acks", &e);
                tokio::select! {
                    _ = sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn listen(s: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    let mut listener: Option<PgListener> = None;
    while !stop.is_cancelled() {
        let l = match listener.as_mut() {
            Some(l) => l,
            None => {
                let connected = async {
                    let mut l = PgListener::connect_with(&s.control).await?;
                    l.listen(queue::CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                }
                .await;
                match connected {
                    Ok(l) => {
                        s.outage.recovered("listen");
                        backoff.reset();
                        // Notifications sent while we were away are lost: look now.
                        s.look_wide.store(true, Ordering::Release);
                        s.wake.notify_one();
                        listener.insert(l)
                    }
                    Err(e) => {
                        s.outage.failed("listen", &e);
                        let wait = backoff.next();
                        tokio::select! { _ = sleep(wait) => {}, _ = stop.cancelled() => return }
                        continue;
                    }
                }
            }
        };
        tokio::select! {
            n = l.recv() => match n {
                Ok(_) => {
                    s.look_wide.store(true, Ordering::Release);
                    s.wake.notify_one()
                }
                Err(e) => {
                    debug!(error = %e, "listener connection lost");
                    listener = None;
                }
            },
            _ = stop.cancelled() => return,
        }
    }
}

async fn heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let lease = s.cfg.lease();
    let every = lease / 3;
    // A job missing from one heartbeat may just be committing its end; only one still
    // missing (and still running here) at the next heartbeat has really lost its lease.
    let mut suspects: HashSet<i64> = HashSet::new();
    loop {
        // Registered (or refreshed) for operators: alive while heartbeats keep coming.
        let in_use = s.concurrency.saturating_sub(s.slots.available_permits());
        if let Err(e) = workers::beat(&s.control, &s.name, s.concurrency, in_use, lease).await {
            debug!(error = %e, "worker registration failed; will retry");
        }
        tokio::select! { _ = sleep(every) => {}, _ = stop.cancelled() => return }
        let held: Vec<Fence> = lock(&s.inflight).values().map(|f| f.fence).collect();
        match maintenance::heartbeat(&s.control, &held, lease).await {
            Ok(alive) => {
                s.outage.recovered("heartbeat");
                let alive: HashSet<i64> = alive.into_iter().collect();
                let mut missing = HashSet::new();
                let mut lost = Vec::new();
                for f in lock(&s.inflight).values() {
                    if !held.contains(&f.fence)
                        || alive.contains(&f.fence.id)
                        || f.ctx.is_finished()
                        || f.ctx.has_returned()
                    {
                        continue;
                    }
                    if suspects.contains(&f.fence.id) {
                        warn!(job = f.fence.id, kind = %f.ctx.kind, "lease lost (reaped or cancelled): stopping the handler");
                        lost.push(f.abort.clone());
                    } else {
                        missing.insert(f.fence.id);
                    }
                }
                for a in lost {
                    a.abort();
                }
                suspects = missing;
            }
            Err(e) => s.outage.failed("heartbeat", &e),
        }
    }
}

/// Reaper and cron every second; retention pruning every minute.
async fn maintain(s: Arc<Shared>, stop: CancellationToken) {
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    loop {
        match maintenance::reap(&s.control, &s.cfg).await {
            Ok(n) => {
                s.outage.recovered("reaper");
                if n > 0 {
                    warn!(jobs = n, "returned jobs with expired leases to the queue");
                }
            }
            Err(e) => s.outage.failed("reaper", &e),
        }
        match cron::fire_due(&s.control, &s.cfg.schedules, chrono::Utc::now()).await {
            Ok(_) => s.outage.recovered("cron"),
            Err(e) => s.outage.failed("cron", &e),
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            let age = Duration::from_secs(s.cfg.tuning.retention_hours * 3600);
            match maintenance::prune(&s.control, age, s.cfg.tuning.prune_batch).await {
                Ok(0) => {}
                Ok(n) => info!(jobs = n, "pruned finished jobs past retention"),
                Err(e) => s.outage.failed("prune", &e),
            }
            last_prune = Instant::now();
        }
        let next_cron = cron::next_due(&s.cfg.schedules, chrono::Utc::now())
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(1));
        let wait = next_cron.clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::select! { _ = sleep(wait) => {}, _ = stop.cancelled() => return }
    }
}

async fn periodic(pool: PgPool, task: Arc<dyn Periodic>, stop: CancellationToken) {
    loop {
        tokio::select! { _ = sleep(task.every()) => {}, _ = stop.cancelled() => return }
        task.tick(&pool).await;
    }
}

async fn drain(s: &Arc<Shared>) {
    let grace = Duration::from_secs(s.cfg.tuning.shutdown_grace_secs);
    let deadline = Instant::now() + grace;
    let busy = || !lock(&s.inflight).is_empty();
    if busy() {
        info!(
            jobs = lock(&s.inflight).len(),
            ?grace,
            "shutting down: waiting for in-flight jobs"
        );
    }
    while busy() && Instant::now() < deadline {
        tokio::select! { _ = s.wake.notified() => {}, _ = sleep(Duration::from_millis(50)) => {} }
    }
    let rest: Vec<(Fence, AbortHandle)> = lock(&s.inflight)
        .values()
        .filter(|f| !f.ctx.has_returned())
        .map(|f| (f.fence, f.abort.clone()))
        .collect();
    if rest.is_empty() {
        return;
    }
    for (_, a) in &rest {
        a.abort();
    }
    let fences: Vec<Fence> = rest.iter().map(|(f, _)| *f).collect();
    for _ in 0..5 {
        match fence::release_batch(&s.control, &fences, "released at worker shutdown").await {
            Ok(n) => {
                info!(jobs = n, "released unfinished jobs to pending");
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not release jobs; retrying");
                sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Logs a database outage once when it starts and once when it ends, whichever of the
/// runtime's tasks (claims, the listener, outcome writes, acks, heartbeat, reaper, cron,
/// prune) meets it first.
#[derive(Default)]
struct Outage {
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    since: Option<Instant>,
    last_failure: Option<Instant>,
}

/// The database counts as back once no task has failed on it for this long: after a
/// restart every pooled connection fails once, each on the task that next takes it.
const OUTAGE_SETTLE: Duration = Duration::from_secs(2);

impl Outage {
    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let mut st = lock(&self.state);
        if st.since.is_none() {
            warn!(task = what, error = %e, "database unavailable; reconnecting with backoff");
            st.since = Some(Instant::now());
        }
        st.last_failure = Some(Instant::now());
    }
    fn recovered(&self, what: &str) {
        let mut st = lock(&self.state);
        let settled = st.last_failure.is_none_or(|f| f.elapsed() >= OUTAGE_SETTLE);
        if let (Some(t), true) = (st.since, settled) {
            info!(task = what, down_for = ?t.elapsed(), "database reachable again");
            st.since = None;
        }
    }
}

/// Capped exponential backoff for a task retrying the database.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    fn new() -> Self {
        Backoff(Self::FIRST)
    }
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        wait
    }
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}
