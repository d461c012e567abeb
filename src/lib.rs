//! threadsync: a durable PostgreSQL job queue and worker that keeps a local copy of message
//! threads from messaging providers in sync.

pub mod bench;
pub mod config;
pub mod db;
pub mod demo;
pub mod demo_sms;
pub mod http;
pub mod jobs;
pub mod pg;
pub mod progress;
pub mod providers;
pub mod queue;
pub mod sim;
pub mod sync;
pub mod verify;
pub mod worker;

/// Sets up logging to stderr; RUST_LOG overrides the default level.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `host-pid`: unique enough to tell workers apart in `jobs list`; leases use tokens, so a
/// restarted worker reusing a name never inherits anything.
pub fn default_worker_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}
