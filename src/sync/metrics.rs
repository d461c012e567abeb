//! What the engine counts in a worker process: provider requests by provider, account and
//! outcome, throttling answers, and the time jobs wait for their account's send slot.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::vocab::ProviderError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub provider: String,
    pub account: String,
    /// ok, throttled, quota_spent, unauthorized, not_found, rejected, transient, malformed.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    pub provider: String,
    pub account: String,
}

pub struct Metrics {
    pub requests: Family<Request, Counter>,
    pub throttled: Family<AccountLabel, Counter>,
    pub pacing_wait: Family<AccountLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
}

pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        requests: Family::default(),
        throttled: Family::default(),
        pacing_wait: Family::default(),
    })
}

/// One provider call and how it ended.
pub fn request<T>(provider: &str, account: &str, r: &Result<T, ProviderError>) {
    let status = match r {
        Ok(_) => "ok",
        Err(ProviderError::Throttled { .. }) => "throttled",
        Err(ProviderError::QuotaSpent { .. }) => "quota_spent",
        Err(ProviderError::Unauthorized(_)) => "unauthorized",
        Err(ProviderError::NotFound) => "not_found",
        Err(ProviderError::Rejected(_)) => "rejected",
        Err(ProviderError::Transient(_)) => "transient",
        Err(ProviderError::Malformed(_)) => "malformed",
        Err(ProviderError::StaleCursor(_)) => "stale_cursor",
    };
    let m = get();
    m.requests
        .get_or_create(&Request {
            provider: provider.to_string(),
            account: account.to_string(),
            status: status.to_string(),
        })
        .inc();
    if matches!(
        r,
        Err(ProviderError::Throttled { .. } | ProviderError::QuotaSpent { .. })
    ) {
        m.throttled.get_or_create(&labels(provider, account)).inc();
    }
}

pub fn paced(provider: &str, account: &str, waited: Duration) {
    get()
        .pacing_wait
        .get_or_create(&labels(provider, account))
        .inc_by(waited.as_secs_f64());
}

fn labels(provider: &str, account: &str) -> AccountLabel {
    AccountLabel {
        provider: provider.to_string(),
        account: account.to_string(),
    }
}

pub fn register(r: &mut Registry) {
    let m = get();
    r.register(
        "provider_requests",
        "Provider calls, by provider, account and outcome",
        m.requests.clone(),
    );
    r.register(
        "provider_throttled",
        "Throttling answers (rate limited or budget spent), by provider and account",
        m.throttled.clone(),
    );
    r.register(
        "pacing_wait_seconds",
        "Time jobs waited for their account's next send slot",
        m.pacing_wait.clone(),
    );
}
