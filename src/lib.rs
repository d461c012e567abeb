//! threadsync: a durable PostgreSQL job queue and worker that keeps a local copy of message
//! threads from messaging providers in sync.

pub mod bench;
pub mod config;
pub mod db;
pub mod demo;
pub mod demo_hostaway;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up logging to stderr; RUST_LOG overrides the default level. Text has colour codes
/// only when stderr is a terminal.
pub fn init_logging(default: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
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
