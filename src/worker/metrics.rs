//! What a worker process counts, by job kind: jobs claimed, completed, failed, retried and
//! snoozed,
//! and how long they ran. Process-wide (every runtime of the process adds to the same
//! series); `threadsync worker --metrics ADDR` serves them with the engine's.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    pub claimed: Family<KindLabel, Counter>,
    pub completed: Family<KindLabel, Counter>,
    pub failed: Family<KindLabel, Counter>,
    pub retried: Family<KindLabel, Counter>,
    pub snoozed: Family<KindLabel, Counter>,
    pub duration: Family<KindLabel, Histogram>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        claimed: Family::default(),
        completed: Family::default(),
        failed: Family::default(),
        retried: Family::default(),
        snoozed: Family::default(),
        duration: Family::new_with_constructor(duration_histogram),
    })
}

fn label(kind: &str) -> KindLabel {
    KindLabel {
        kind: kind.to_string(),
    }
}

pub fn claimed(kind: &str) {
    get().claimed.get_or_create(&label(kind)).inc();
}

/// A job's outcome: `done`, `failed`, `retried` or `snoozed`, after `took`.
pub fn ended(kind: &str, outcome: Outcome, took: Duration) {
    let m = get();
    let l = label(kind);
    match outcome {
        Outcome::Done => m.completed.get_or_create(&l).inc(),
        Outcome::Failed => m.failed.get_or_create(&l).inc(),
        Outcome::Retried => m.retried.get_or_create(&l).inc(),
        Outcome::Snoozed => m.snoozed.get_or_create(&l).inc(),
    };
    m.duration.get_or_create(&l).observe(took.as_secs_f64());
}

#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Done,
    Failed,
    Retried,
    Snoozed,
}

pub fn register(r: &mut Registry) {
    let m = get();
    r.register("jobs_claimed", "Jobs claimed, by kind", m.claimed.clone());
    r.register("jobs_completed", "Jobs done, by kind", m.completed.clone());
    r.register(
        "jobs_failed",
        "Jobs failed for good, by kind",
        m.failed.clone(),
    );
    r.register(
        "jobs_retried",
        "Jobs sent back to pending (backoff or a provider's retry-after), by kind",
        m.retried.clone(),
    );
    r.register(
        "jobs_snoozed",
        "Jobs sent back to pending until a time their handler chose, keeping their concurrency slot, by kind",
        m.snoozed.clone(),
    );
    r.register(
        "job_duration_seconds",
        "From claim to outcome, by kind",
        m.duration.clone(),
    );
}
