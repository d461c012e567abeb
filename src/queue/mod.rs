//! The durable job queue on PostgreSQL: enqueue, claim, fenced completion, maintenance
//! (heartbeat, reaper, prune), cron and admin commands. It knows nothing of providers.

pub mod admin;
pub mod claim;
pub mod cron;
pub mod enqueue;
pub mod fence;
pub mod maintenance;
pub mod settings;
pub mod workers;

pub use claim::{claim, Claimed, ClaimedJob, Scope};
pub use enqueue::{enqueue, enqueue_batch, NewJob};
pub use fence::{Fence, Finish};
pub use settings::{KindConfig, RetryPolicy, Schedule, Settings, Tuning};

/// The channel the insert trigger notifies.
pub const CHANNEL: &str = "threadsync_jobs";
