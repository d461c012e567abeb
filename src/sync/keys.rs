//! Job kind names and the dedupe and concurrency keys the engine's jobs use. The formats
//! are part of the stored state: queued jobs and `threadsync.refresh_thread` rely on them.

use super::Shape;

/// The job kind that opens and plans a run.
pub const START_KIND: &str = "sync.start";

/// One page of a thread list.
pub fn list_kind(provider: &str) -> String {
    format!("{provider}.list_page")
}

/// Every page of one thread's messages.
pub fn fetch_kind(provider: &str) -> String {
    format!("{provider}.conversation")
}

/// One batch of a message stream above its cursor.
pub fn stream_kind(provider: &str) -> String {
    format!("{provider}.folder")
}

/// One delivery-status check of a followed message.
pub fn check_kind(provider: &str) -> String {
    format!("{provider}.status_check")
}

/// The kinds a provider of `shape` runs: what `sync::register` registers for it.
pub fn provider_kinds(provider: &str, shape: Shape) -> [String; 2] {
    match shape {
        Shape::Threads => [list_kind(provider), fetch_kind(provider)],
        Shape::Stream => [stream_kind(provider), check_kind(provider)],
    }
}

/// Caps the account's requests in flight across the fleet.
pub fn requests_key(provider: &str, account: &str) -> String {
    format!("{provider}:{account}")
}

/// One fetch per thread at a time, whoever asks (a run, or the web app's refresh).
pub fn fetch_dedupe(provider: &str, account: &str, thread_id: &str) -> String {
    format!("{provider}:conversation:{account}:{thread_id}")
}

/// Streams of one account are read one at a time.
pub fn streams_key(provider: &str, account: &str) -> String {
    format!("{provider}:{account}:folders")
}

pub fn check_dedupe(provider: &str, account: &str, remote_id: i64) -> String {
    format!("{}{remote_id}", check_dedupe_prefix(provider, account))
}

pub fn check_dedupe_prefix(provider: &str, account: &str) -> String {
    format!("{provider}:check:{account}:")
}
