//! Provider simulators (eBay, SMSEagle, Facebook, Hostaway) behind one
//! harness: deterministic seeded data, fault injection, rate limits, request
//! stats, a ground-truth export and live mutations. Used by tests, the
//! benchmark and the demo, and runnable standalone via `threadsync sim`.

// Validation helpers return ready-made error responses as `Err`; they are
// built once per failed request, so boxing them would buy nothing.
#![allow(clippy::result_large_err)]

mod bench;
pub mod clock;
mod control;
pub mod ebay;
pub mod expected;
pub mod facebook;
pub mod faults;
pub mod hostaway;
pub mod http;
pub mod smseagle;
pub mod stats;

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use bench::{bench_cli, SimBenchArgs};
pub use expected::{Expected, ExpectedMessage, ExpectedThread};
pub use faults::Faults;
pub use stats::{AccountStats, StatsSnapshot, Totals};

use faults::{FaultAction, FaultPlan};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Ebay,
    Facebook,
    Smseagle,
    Hostaway,
}

/// Which messages make a thread match eBay's `start_time`/`end_time` window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StartTimeSemantics {
    /// Any message (buyer or seller) in the window.
    AnyMessage,
    /// Only buyer (inbound) messages count: seller replies do not surface a thread.
    InboundOnly,
}

/// Order of messages inside eBay getConversation pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MessageOrder {
    Asc,
    Desc,
}

/// Order of the eBay conversation list (the real order is undocumented).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListSort {
    /// latestMessage.createdDate descending (default).
    LatestDesc,
    LatestAsc,
    /// Conversation createdDate descending.
    CreatedDesc,
}

/// Spelling of SMSEagle sent-message statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StatusStyle {
    /// Gammu enum: `SendingOK`, `DeliveryOK`, ...
    Gammu,
    /// `sending_ok`, `delivery_ok`, ...
    Snake,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub provider: Provider,
    pub accounts: usize,
    /// Threads (conversations / phone numbers / reservations) per account.
    pub threads: usize,
    /// eBay: the threads of account i, for each i it holds, in place of `threads` (empty:
    /// every account has `threads`).
    pub threads_by_account: Vec<usize>,
    /// Mean messages per thread.
    pub messages: usize,
    pub seed: u64,
    /// Added to every provider request.
    pub latency_ms: u64,
    /// Daily request quota per account (eBay 2001; Facebook BUC budget). None = unlimited.
    pub daily_quota: Option<u64>,
    /// Per-account requests per second, sliding 1 s window. None = unlimited
    /// (Facebook defaults to its documented 2 calls/s per Page when None).
    pub rps_limit: Option<f64>,
    pub faults: Faults,
    pub start_time_semantics: StartTimeSemantics,
    /// Background workload: mutation steps per second across all accounts.
    pub mutate_rate: f64,
    /// eBay: share of background steps that delete a thread.
    pub mutate_delete_share: f64,
    /// eBay: share of background steps that flip a thread's status
    /// (ACTIVE/ARCHIVE/READ/UNREAD), moving it in or out of filtered lists.
    pub mutate_flip_share: f64,
    /// Lifetime of tokens minted by the token endpoints.
    pub token_ttl_secs: u64,
    /// Epoch ms of the first quota reset; None = next UTC midnight.
    pub quota_reset_at_ms: Option<i64>,
    pub message_order: MessageOrder,
    /// eBay: conversation list order.
    pub list_sort: ListSort,
    /// eBay: opaque immutable user ids instead of usernames.
    pub ebay_user_ids: bool,
    /// eBay: createdDate truncated to whole seconds (ties).
    pub second_resolution: bool,
    /// eBay: the detail endpoint hides messages younger than this while the
    /// list already shows them as latestMessage (eventual consistency).
    pub list_detail_lag_ms: u64,
    /// SMSEagle: status spelling.
    pub status_style: StatusStyle,
    /// SMSEagle: probability that a serial id is skipped (gaps in ids).
    pub id_gap_rate: f64,
    /// SMSEagle: share of sent messages that never get a delivery report.
    pub no_report_rate: f64,
    /// Facebook: probability an item is privacy-filtered out of a page.
    pub drop_rate: f64,
    /// Facebook: only the newest N messages of a conversation are readable.
    pub detail_window: usize,
    /// Facebook: share of conversations (generated and new) that are Instagram ones.
    pub instagram_share: f64,
    /// Hostaway: requests per window per client IP and per account, window length.
    pub hostaway_ip_limit: u32,
    pub hostaway_account_limit: u32,
    pub hostaway_window_ms: u64,
    /// Hostaway: share of generated conversations (and of background steps' new ones) that
    /// are inquiries, with no reservation.
    pub hostaway_inquiry_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            provider: Provider::Ebay,
            accounts: 1,
            threads: 100,
            threads_by_account: Vec::new(),
            messages: 20,
            seed: 1,
            latency_ms: 0,
            daily_quota: None,
            rps_limit: None,
            faults: Faults::default(),
            start_time_semantics: StartTimeSemantics::AnyMessage,
            mutate_rate: 0.0,
            mutate_delete_share: 0.0,
            mutate_flip_share: 0.0,
            token_ttl_secs: 7200,
            quota_reset_at_ms: None,
            message_order: MessageOrder::Asc,
            list_sort: ListSort::LatestDesc,
            ebay_user_ids: false,
            second_resolution: false,
            list_detail_lag_ms: 0,
            status_style: StatusStyle::Gammu,
            id_gap_rate: 0.05,
            no_report_rate: 0.1,
            drop_rate: 0.0,
            detail_window: 20,
            instagram_share: 0.0,
            hostaway_ip_limit: 15,
            hostaway_account_limit: 20,
            hostaway_window_ms: 10_000,
            hostaway_inquiry_share: 0.0,
        }
    }
}

/// Rate-limit knobs changeable at runtime through `/_sim/faults`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    pub rps_limit: Option<f64>,
    pub daily_quota: Option<u64>,
}

/// State every simulator shares: faults, stats, clock, limits.
pub struct Harness {
    pub config: SimConfig,
    pub faults: FaultPlan,
    pub stats: stats::Stats,
    pub clock: clock::SimClock,
    pub limits: RwLock<Limits>,
    pub latency_ms: AtomicU64,
    /// Mutations scheduled to run right after a given provider request.
    pub scripts: std::sync::Mutex<Vec<ScheduledMutation>>,
    /// One-shot rules for the next request with a given path and query.
    pub rules: std::sync::Mutex<Vec<RequestRule>>,
}

/// What a [`RequestRule`] does to the request it matches.
#[derive(Clone, Debug)]
pub enum RuleAction {
    /// Answer 500 with the provider's error shape.
    Fail5xx,
    /// Serve it, then apply this `/_sim/mutate` body before the response leaves.
    MutateAfter(serde_json::Value),
}

/// Applies once, to the first provider request whose path and query contain `matching`:
/// lets a test order events around one page exactly ("fail offset 100 once; change the
/// list right after offset 150 is served").
#[derive(Clone, Debug)]
pub struct RequestRule {
    pub matching: String,
    pub action: RuleAction,
}

/// A `/_sim/mutate` body applied right after the response to provider
/// request number `after_request` (1-based, counting every provider request
/// since start) has been produced, e.g. "delete the item at offset 3 right
/// after page 1 is served".
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduledMutation {
    pub after_request: u64,
    pub mutate: serde_json::Value,
    /// Filled in once it ran: what changed, or the error.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

impl Harness {
    pub fn new(config: SimConfig) -> Self {
        Self {
            faults: FaultPlan::new(config.seed, config.faults.clone()),
            stats: stats::Stats::default(),
            clock: clock::SimClock::new(),
            limits: RwLock::new(Limits {
                rps_limit: config.rps_limit,
                daily_quota: config.daily_quota,
            }),
            latency_ms: AtomicU64::new(config.latency_ms),
            scripts: std::sync::Mutex::default(),
            rules: std::sync::Mutex::default(),
            config,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Schedule `mutate` after `in_requests` more provider requests (>= 1).
    pub fn schedule(&self, in_requests: u64, mutate: serde_json::Value) -> u64 {
        let at = self.faults.requests_seen() + in_requests.max(1);
        if let Ok(mut s) = self.scripts.lock() {
            s.push(ScheduledMutation {
                after_request: at,
                mutate,
                result: None,
            });
        }
        at
    }

    /// Removes and returns the rules that match this request's path and query.
    fn take_rules(&self, path_and_query: &str) -> Vec<RuleAction> {
        let Ok(mut rules) = self.rules.lock() else {
            return Vec::new();
        };
        let (hit, keep): (Vec<RequestRule>, Vec<RequestRule>) = rules
            .drain(..)
            .partition(|r| path_and_query.contains(&r.matching));
        *rules = keep;
        hit.into_iter().map(|r| r.action).collect()
    }

    /// Scheduled mutations due after request number `n` (1-based).
    fn due_scripts(&self, n: u64) -> Vec<(usize, serde_json::Value)> {
        match self.scripts.lock() {
            Ok(s) => s
                .iter()
                .enumerate()
                .filter(|(_, m)| m.result.is_none() && m.after_request <= n)
                .map(|(i, m)| (i, m.mutate.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// What each provider plugs into the shared harness.
pub trait SimProvider: Send + Sync + 'static {
    fn harness(&self) -> &Harness;
    /// Account a request belongs to, for stats only (no validity check).
    fn identify(&self, parts: &Parts) -> Option<String>;
    /// Whether requests to this matched path count toward `max_rps_1s`
    /// (message-API calls; not token or analytics endpoints).
    fn is_metered(&self, _path: &str) -> bool {
        true
    }
    /// The provider's 500 response.
    fn error_5xx(&self) -> Response;
    /// The provider's short-term throttling response.
    fn burst_429(&self) -> Response;
    fn accounts(&self) -> Vec<String>;
    /// A valid static token for `account`.
    fn token(&self, account: &str) -> String;
    /// Current dataset, optionally for one account.
    fn truth(&self, account: Option<&str>) -> serde_json::Value;
    /// The threads and messages of `account` exactly as a synced copy should hold them now
    /// (see [`Expected`]). `since`: only what a sync reading from that instant on holds, for
    /// providers whose first sync reads a window (SMSEagle's cold start).
    fn expected(
        &self,
        account: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Expected, String> {
        let _ = (account, since);
        Err(format!(
            "expected rows are not supported yet for the {:?} simulator",
            self.harness().config.provider
        ))
    }
    /// Apply a `/_sim/mutate` request now and describe what changed.
    fn mutate(&self, body: &serde_json::Value) -> Result<serde_json::Value, String>;
    /// One step of the background workload (one new message, sometimes a new thread).
    fn background_step(&self);
    /// Make the static token of `account` invalid (expired) until reset.
    fn expire_token(&self, account: &str) -> bool;
    /// Provider API routes (faults and stats are layered on by the harness).
    fn api_routes(self: Arc<Self>) -> Router;
    /// Extra provider-specific control routes under `/_sim/`.
    fn control_routes(self: Arc<Self>) -> Router {
        Router::new()
    }
}

/// Running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    provider: Arc<dyn SimProvider>,
    /// The same simulator, typed, for its Facebook-only controls.
    facebook: Option<Arc<facebook::FacebookSim>>,
    /// The same simulator, typed, for its Hostaway-only controls.
    hostaway: Option<Arc<hostaway::HostawaySim>>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn token(&self, account: &str) -> String {
        self.provider.token(account)
    }
    pub fn accounts(&self) -> Vec<String> {
        self.provider.accounts()
    }
    pub fn stats(&self) -> StatsSnapshot {
        self.provider.harness().stats.snapshot()
    }
    pub fn reset_stats(&self) {
        self.provider.harness().stats.reset()
    }
    pub fn truth(&self, account: Option<&str>) -> serde_json::Value {
        self.provider.truth(account)
    }
    /// What a synced copy of `account` should hold now.
    pub fn expected(&self, account: &str) -> anyhow::Result<Expected> {
        self.provider
            .expected(account, None)
            .map_err(anyhow::Error::msg)
    }
    /// What a synced copy of `account` should hold when its first sync read from `since`.
    pub fn expected_since(
        &self,
        account: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Expected> {
        self.provider
            .expected(account, Some(since))
            .map_err(anyhow::Error::msg)
    }
    pub fn faults(&self) -> Faults {
        self.provider.harness().faults.get()
    }
    pub fn set_faults(&self, faults: Faults) {
        self.provider.harness().faults.set(faults)
    }
    pub fn limits(&self) -> Limits {
        self.provider.harness().limits()
    }
    pub fn set_limits(&self, limits: Limits) {
        if let Ok(mut l) = self.provider.harness().limits.write() {
            *l = limits;
        }
    }
    pub fn mutate(&self, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.provider.mutate(body).map_err(anyhow::Error::msg)
    }
    pub fn advance_clock(&self, seconds: f64) {
        self.provider.harness().clock.advance(seconds)
    }
    pub fn expire_token(&self, account: &str) -> bool {
        self.provider.expire_token(account)
    }
    /// Run `mutate` right after the response to the `in_requests`-th next
    /// provider request is produced; returns that request's number.
    pub fn schedule_mutation(&self, in_requests: u64, mutate: serde_json::Value) -> u64 {
        self.provider.harness().schedule(in_requests, mutate)
    }
    /// Adds a one-shot [`RequestRule`].
    pub fn on_next_request(&self, matching: &str, action: RuleAction) {
        if let Ok(mut r) = self.provider.harness().rules.lock() {
            r.push(RequestRule {
                matching: matching.to_string(),
                action,
            });
        }
    }
    /// Scheduled mutations, with results for those that ran.
    pub fn scheduled(&self) -> Vec<ScheduledMutation> {
        self.provider
            .harness()
            .scripts
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
    fn facebook(&self) -> anyhow::Result<&Arc<facebook::FacebookSim>> {
        self.facebook
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("only the Facebook simulator has this control"))
    }
    /// Facebook: set the calls already used in `account`'s current BUC window.
    pub fn set_buc_used(&self, account: &str, used: u64) -> anyhow::Result<()> {
        self.facebook()?
            .set_buc_used(account, used)
            .map_err(anyhow::Error::msg)
    }
    /// Facebook: every Page's BUC window.
    pub fn buc_windows(&self) -> anyhow::Result<Vec<facebook::BucWindow>> {
        Ok(self.facebook()?.buc_windows())
    }
    /// Facebook: post every message added from now on to `target`; None stops and
    /// discards what is still queued.
    pub fn set_webhook(&self, target: Option<facebook::WebhookTarget>) -> anyhow::Result<()> {
        self.facebook()?
            .webhook()
            .set_target(target)
            .map_err(anyhow::Error::msg)
    }
    /// Facebook: webhook sender counters.
    pub fn webhook_stats(&self) -> anyhow::Result<facebook::WebhookStats> {
        Ok(self.facebook()?.webhook().stats())
    }
    /// Facebook or Hostaway: wait until no webhook delivery is queued or in flight; false on
    /// timeout (or for another provider).
    pub async fn webhook_idle(&self, timeout: Duration) -> bool {
        match (&self.facebook, &self.hostaway) {
            (Some(f), _) => f.webhook().idle(timeout).await,
            (_, Some(h)) => h.webhook().idle(timeout).await,
            _ => false,
        }
    }
    fn hostaway(&self) -> anyhow::Result<&Arc<hostaway::HostawaySim>> {
        self.hostaway
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("only the Hostaway simulator has this control"))
    }
    /// Hostaway: post every event from now on to `target`; None stops and discards what is
    /// still queued.
    pub fn set_hostaway_webhook(
        &self,
        target: Option<hostaway::WebhookTarget>,
    ) -> anyhow::Result<()> {
        self.hostaway()?
            .webhook()
            .set_target(target)
            .map_err(anyhow::Error::msg)
    }
    /// Hostaway: webhook sender counters.
    pub fn hostaway_webhook_stats(&self) -> anyhow::Result<hostaway::WebhookStats> {
        Ok(self.hostaway()?.webhook().stats())
    }
    /// Hostaway: the largest number of requests with a valid token (admitted or answered 429)
    /// in any sliding window, per client IP and per account, since start, the last
    /// [`reset_stats`](Self::reset_stats) or the last
    /// [`set_hostaway_limits`](Self::set_hostaway_limits).
    pub fn hostaway_window_peaks(&self) -> anyhow::Result<hostaway::WindowPeaks> {
        Ok(self.hostaway()?.window_peaks())
    }
    /// Hostaway: enforce these limits from now on (empty windows; the peaks restart over
    /// `window_ms`). The `SimConfig` fields keep the initial values. `window_ms` must be >= 1.
    pub fn set_hostaway_limits(
        &self,
        ip_limit: u32,
        account_limit: u32,
        window_ms: u64,
    ) -> anyhow::Result<()> {
        self.hostaway()?
            .set_limits(ip_limit, account_limit, window_ms)
            .map_err(anyhow::Error::msg)
    }
    /// Stop serving; open connections get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}

/// Build the provider named in `config`, bind 127.0.0.1:0 and serve in a task.
pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
    start_on(config, "127.0.0.1:0".parse()?).await
}

/// Like [`start`] but on a chosen address.
pub async fn start_on(config: SimConfig, listen: SocketAddr) -> anyhow::Result<SimHandle> {
    let (mut fb, mut ha) = (None, None);
    let provider: Arc<dyn SimProvider> = match config.provider {
        Provider::Ebay => ebay::EbaySim::build(config)?,
        Provider::Smseagle => smseagle::SmsEagleSim::build(config)?,
        Provider::Facebook => {
            let f = facebook::FacebookSim::new(config);
            fb = Some(f.clone());
            f
        }
        Provider::Hostaway => {
            let h = hostaway::HostawaySim::new(config);
            ha = Some(h.clone());
            h
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(provider.clone());
    let cancel = CancellationToken::new();
    spawn_background(provider.clone(), cancel.clone());
    if let Some(f) = &fb {
        tokio::spawn(f.webhook().clone().run(cancel.clone()));
    }
    if let Some(h) = &ha {
        tokio::spawn(h.webhook().clone().run(cancel.clone()));
    }
    let shutdown = cancel.clone();
    let server = tokio::spawn(async move {
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::warn!("simulator server stopped: {e}");
        }
    });
    Ok(SimHandle {
        addr,
        provider,
        facebook: fb,
        hostaway: ha,
        cancel,
        server,
    })
}

fn router(provider: Arc<dyn SimProvider>) -> Router {
    let api = provider
        .clone()
        .api_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            provider.clone(),
            harness_layer,
        ));
    api.merge(control::routes(provider.clone()))
        .merge(provider.control_routes())
}

/// Runs around every provider route: latency, fault injection, stats.
async fn harness_layer(
    State(p): State<Arc<dyn SimProvider>>,
    req: Request,
    next: Next,
) -> Response {
    let h = p.harness();
    let (parts, body) = req.into_parts();
    let account = p.identify(&parts);
    let rules = h.take_rules(parts.uri.path_and_query().map_or("", |pq| pq.as_str()));
    let (route, metered) = {
        let path = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map(|m| m.as_str())
            .unwrap_or("?");
        (format!("{} {}", parts.method, path), p.is_metered(path))
    };
    let req = Request::from_parts(parts, body);
    let latency = h.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (n, mut action) = h.faults.next();
    if rules.iter().any(|r| matches!(r, RuleAction::Fail5xx)) {
        action = FaultAction::Error5xx;
    }
    let response = match action {
        FaultAction::None => next.run(req).await,
        FaultAction::Error5xx => p.error_5xx(),
        FaultAction::Burst429 => p.burst_429(),
        FaultAction::Slow { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(req).await
        }
        FaultAction::Malformed => {
            let r = next.run(req).await;
            malformed(r).await
        }
        FaultAction::Timeout { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop_connection()
        }
    };
    // A dropped connection is recorded with status 0.
    let status = match action {
        FaultAction::Timeout { .. } => 0,
        _ => response.status().as_u16(),
    };
    h.stats.record(account.as_deref(), &route, status, metered);
    run_scripts(p.as_ref(), n + 1);
    for rule in rules {
        if let RuleAction::MutateAfter(body) = rule {
            if let Err(e) = p.mutate(&body) {
                tracing::warn!(error = %e, "simulator: a request rule's mutation failed");
            }
        }
    }
    response
}

/// Apply scheduled mutations due after request `n` before its response leaves.
fn run_scripts(p: &dyn SimProvider, n: u64) {
    let h = p.harness();
    for (i, body) in h.due_scripts(n) {
        let result = match p.mutate(&body) {
            Ok(v) => v,
            Err(e) => serde_json::json!({ "error": e }),
        };
        if let Ok(mut s) = h.scripts.lock() {
            if let Some(m) = s.get_mut(i) {
                m.result = Some(result);
            }
        }
    }
}

/// Abort the connection without writing a response: a response whose body
/// fails on its first poll makes hyper close the socket before it flushes
/// the status line, so the client sees the connection end with nothing.
fn drop_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other(
            "simulated timeout: connection dropped",
        ))
    });
    Response::new(axum::body::Body::from_stream(stream))
}

/// Keep status and headers, cut the body in half and append garbage.
async fn malformed(r: Response) -> Response {
    let (mut parts, body) = r.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut cut = bytes[..bytes.len() / 2].to_vec();
    cut.extend_from_slice(b"\x00<html>oops");
    parts.status = axum::http::StatusCode::OK;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(cut))
}

fn spawn_background(provider: Arc<dyn SimProvider>, cancel: CancellationToken) {
    let rate = provider.harness().config.mutate_rate;
    if rate <= 0.0 {
        return;
    }
    // Batch steps per tick so high rates do not need sub-millisecond timers.
    let tick = Duration::from_millis(20);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        let mut owed = 0.0f64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = interval.tick() => {
                    owed += rate * tick.as_secs_f64();
                    while owed >= 1.0 {
                        provider.background_step();
                        owed -= 1.0;
                    }
                }
            }
        }
    });
}

/// `threadsync sim` arguments.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    #[arg(long, value_enum, default_value = "ebay")]
    pub provider: Provider,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub accounts: usize,
    /// Threads per account.
    #[arg(long, default_value_t = 100)]
    pub threads: usize,
    /// Mean messages per thread.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Daily quota per account (eBay's is 5000); 0, the default, is unlimited.
    #[arg(long, default_value_t = 0)]
    pub quota: u64,
    /// Requests per second per account (sliding 1 s window).
    #[arg(long)]
    pub rps_limit: Option<f64>,
    /// Shorthand: split this probability evenly between 5xx and burst 429.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub fault_5xx: f64,
    #[arg(long, default_value_t = 0.0)]
    pub fault_429: f64,
    #[arg(long, default_value_t = 0.0)]
    pub fault_timeout: f64,
    #[arg(long, default_value_t = 0.0)]
    pub fault_malformed: f64,
    #[arg(long, default_value_t = 0.0)]
    pub fault_slow: f64,
    #[arg(long, default_value_t = 2000)]
    pub slow_ms: u64,
    #[arg(long, default_value_t = 30000)]
    pub timeout_ms: u64,
    /// Background mutation steps per second (mostly new messages).
    #[arg(long, default_value_t = 0.0)]
    pub mutate_rate: f64,
    /// eBay: share of background steps that delete a thread.
    #[arg(long, default_value_t = 0.0)]
    pub mutate_delete_share: f64,
    /// eBay: share of background steps that flip a thread's status.
    #[arg(long, default_value_t = 0.0)]
    pub mutate_flip_share: f64,
    #[arg(long, value_enum, default_value = "any-message")]
    pub start_time_semantics: StartTimeSemantics,
    #[arg(long, value_enum, default_value = "asc")]
    pub message_order: MessageOrder,
    #[arg(long, value_enum, default_value = "latest-desc")]
    pub list_sort: ListSort,
    /// eBay: show opaque user ids instead of usernames.
    #[arg(long)]
    pub user_ids: bool,
    /// eBay: whole-second timestamps.
    #[arg(long)]
    pub second_resolution: bool,
    /// eBay: detail lags the list by this many ms.
    #[arg(long, default_value_t = 0)]
    pub list_detail_lag_ms: u64,
    #[arg(long, default_value_t = 7200)]
    pub token_ttl_secs: u64,
    #[arg(long, value_enum, default_value = "gammu")]
    pub status_style: StatusStyle,
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Facebook: share of conversations that are Instagram ones.
    #[arg(long, default_value_t = 0.0)]
    pub instagram_share: f64,
    /// Hostaway: share of conversations that are inquiries (no reservation).
    #[arg(long, default_value_t = 0.0)]
    pub hostaway_inquiry_share: f64,
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            provider: self.provider,
            accounts: self.accounts,
            threads: self.threads,
            messages: self.messages,
            seed: self.seed,
            latency_ms: self.latency_ms,
            daily_quota: (self.quota > 0).then_some(self.quota),
            rps_limit: self.rps_limit,
            faults: Faults {
                error_5xx: self.fault_5xx + self.fault_rate / 2.0,
                burst_429: self.fault_429 + self.fault_rate / 2.0,
                timeout: self.fault_timeout,
                malformed: self.fault_malformed,
                slow: self.fault_slow,
                slow_ms: self.slow_ms,
                timeout_ms: self.timeout_ms,
            },
            start_time_semantics: self.start_time_semantics,
            mutate_rate: self.mutate_rate,
            mutate_delete_share: self.mutate_delete_share,
            mutate_flip_share: self.mutate_flip_share,
            token_ttl_secs: self.token_ttl_secs,
            message_order: self.message_order,
            list_sort: self.list_sort,
            ebay_user_ids: self.user_ids,
            second_resolution: self.second_resolution,
            list_detail_lag_ms: self.list_detail_lag_ms,
            status_style: self.status_style,
            drop_rate: self.drop_rate,
            instagram_share: self.instagram_share,
            hostaway_inquiry_share: self.hostaway_inquiry_share,
            ..SimConfig::default()
        }
    }
}

pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let handle = start_on(args.to_config(), args.listen).await?;
    println!(
        "{:?} simulator listening on {} ({} accounts, ready in {:.0} ms)",
        args.provider,
        handle.base_url(),
        args.accounts,
        started.elapsed().as_secs_f64() * 1000.0
    );
    for a in handle.accounts().iter().take(5) {
        match args.provider {
            // threadsync mints Hostaway tokens itself, from the client id and secret.
            Provider::Hostaway => println!(
                "  {a}: token {}, client_id {}, client secret sim-secret-{a}",
                handle.token(a),
                a.trim_start_matches("acct-")
            ),
            _ => println!("  {a}: token {}", handle.token(a)),
        }
    }
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: super::SimArgs,
    }

    #[test]
    fn the_simulator_has_no_quota_unless_asked() {
        let c = Cli::parse_from(["sim"]).sim.to_config();
        assert_eq!(c.daily_quota, None);
        let c = Cli::parse_from(["sim", "--quota", "5000"]).sim.to_config();
        assert_eq!(c.daily_quota, Some(5000));
    }
}
