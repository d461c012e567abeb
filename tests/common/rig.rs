//! One rig for the sync tests: a fresh database, a provider's simulator over loopback
//! HTTP, account `acct-0` registered against it, and real workers (runtimes in this
//! process, or `threadsync worker` processes from [`Rig::process`]).
//!
//! ```ignore
//! let rig = Rig::new(Opts {
//!     provider: Provider::SmsEagle,
//!     account_keys: "cold_start_days = 36500\n".into(),
//!     ..Opts::default()
//! })
//! .await;
//! rig.run(Mode::Full).await;
//! rig.assert_exact().await;
//! rig.close().await;
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use threadsync::config::Config;
use threadsync::http::{auth, AppState};
use threadsync::sim::{self, SimConfig, SimHandle};
use threadsync::sync::provider::WebhookSecrets;
use threadsync::sync::{self, Mode, RunStatus, Tokens};
use threadsync::verify::{self, Comparison};
use threadsync::worker::Worker;
use tokio_util::sync::CancellationToken;

use super::{TestDb, WorkerProc};

/// The one account every rig syncs.
pub const ACCOUNT: &str = "acct-0";

/// The providers the engine syncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    #[default]
    Ebay,
    Facebook,
    Hostaway,
    SmsEagle,
}

impl Provider {
    /// The name jobs.toml and the job kinds use.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ebay => "ebay",
            Provider::Facebook => "facebook",
            Provider::Hostaway => "hostaway",
            Provider::SmsEagle => "smseagle",
        }
    }

    fn simulator(self) -> sim::Provider {
        match self {
            Provider::Ebay => sim::Provider::Ebay,
            Provider::Facebook => sim::Provider::Facebook,
            Provider::Hostaway => sim::Provider::Hostaway,
            Provider::SmsEagle => sim::Provider::Smseagle,
        }
    }

    /// The variable worker processes read the account's token from.
    pub fn token_env(self) -> &'static str {
        match self {
            Provider::Ebay => "EBAY_TOKEN_ACCT0",
            Provider::Facebook => "FACEBOOK_TOKEN_ACCT0",
            Provider::Hostaway => "HOSTAWAY_SECRET_ACCT0",
            Provider::SmsEagle => "SMSEAGLE_TOKEN_ACCT0",
        }
    }

    /// The secret a worker is given for the account: the simulator's static token, or for
    /// Hostaway the client secret threadsync mints its tokens with.
    pub fn secret(self, sim: &SimHandle) -> String {
        self.secret_of(sim, ACCOUNT)
    }

    fn secret_of(self, sim: &SimHandle, account: &str) -> String {
        match self {
            Provider::Hostaway => format!("sim-secret-{account}"),
            _ => sim.token(account),
        }
    }

    /// The provider's job kinds and the retry tuning the rig gives them: quick backoff,
    /// and attempts enough to outlast injected faults.
    fn kinds(self) -> &'static [(&'static str, &'static str)] {
        const DATA: &str = "max_attempts = 20\nbackoff_base_ms = 50\nbackoff_cap_ms = 500\n";
        const CHECKS: &str = "backoff_base_ms = 50\nbackoff_cap_ms = 500\n";
        match self {
            Provider::Ebay | Provider::Facebook | Provider::Hostaway => {
                &[("list_page", DATA), ("conversation", DATA)]
            }
            Provider::SmsEagle => &[("folder", DATA), ("status_check", CHECKS)],
        }
    }
}

/// What a rig runs. Start from the default and change what the test needs:
/// `Opts { max_in_flight: 1, ..Opts::default() }`.
#[derive(Clone, Debug)]
pub struct Opts {
    pub provider: Provider,
    /// The simulator's dataset, faults and limits; its `provider` is set from `provider`.
    pub sim: SimConfig,
    /// Worker runtimes in this process (0: none; start processes with [`Rig::process`]).
    pub workers: usize,
    /// Job slots of each worker runtime and each worker process.
    pub slots: usize,
    /// The account's pacing (0: unpaced) and in-flight cap.
    pub requests_per_second: f64,
    pub max_in_flight: i32,
    /// More keys of the account, the provider's own (SMSEagle: `cold_start_days`,
    /// `batch_size`, ...), one `key = value` a line.
    pub account_keys: String,
    /// More jobs.toml text before the account (`[kinds."..."]`, `[retry]`, ...). A
    /// `[kinds."<kind>"]` table here replaces the rig's own for that kind.
    pub extra: String,
    pub lease_secs: u64,
    /// Accounts `acct-0` .. `acct-{n-1}`, each with the same keys (the simulator serves at
    /// least as many); the rig's single-account helpers speak of [`ACCOUNT`].
    pub accounts: usize,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            provider: Provider::Ebay,
            sim: SimConfig::default(),
            workers: 1,
            slots: 16,
            requests_per_second: 0.0,
            max_in_flight: 10,
            account_keys: String::new(),
            extra: String::new(),
            lease_secs: 3,
            accounts: 1,
        }
    }
}

/// jobs.toml text for account [`ACCOUNT`] of `opts.provider` served at `base_url`.
pub fn config_text(opts: &Opts, base_url: &str) -> String {
    let p = opts.provider;
    let n = p.name();
    let mut text = format!("[queue]\nlease_secs = {}\npoll_ms = 50\n", opts.lease_secs);
    for (kind, tuning) in p.kinds() {
        let header = format!("[kinds.\"{n}.{kind}\"]\n");
        if !opts.extra.contains(header.trim_end()) {
            text += &header;
            text += tuning;
        }
    }
    text += &opts.extra;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for i in 0..opts.accounts.max(1) {
        text += &format!(
            "[[accounts]]\nid = \"acct-{i}\"\nprovider = \"{n}\"\nbase_url = \"{base_url}\"\n\
             token_env = \"{}\"\nrequests_per_second = {:?}\nmax_in_flight = {}\n\
             request_timeout_secs = 2\n{}",
            token_env(p, i),
            opts.requests_per_second,
            opts.max_in_flight,
            opts.account_keys,
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// The variable account `acct-{i}`'s token is read from.
fn token_env(p: Provider, i: usize) -> String {
    match i {
        0 => p.token_env().to_string(),
        i => format!("{}_{i}", p.token_env()),
    }
}

pub struct Rig {
    pub provider: Provider,
    pub db: TestDb,
    pub sim: SimHandle,
    pub cfg: Arc<Config>,
    /// The jobs.toml worker processes load.
    pub config_path: PathBuf,
    slots: usize,
    accounts: usize,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    pub async fn new(opts: Opts) -> Rig {
        let db = TestDb::new().await;
        let sim = sim::start(SimConfig {
            provider: opts.provider.simulator(),
            accounts: opts.sim.accounts.max(opts.accounts),
            ..opts.sim.clone()
        })
        .await
        .expect("simulator");
        let text = config_text(&opts, &sim.base_url());
        let cfg = Arc::new(Config::parse(&text, "rig.toml").expect("config"));
        sync::register_accounts(&db.pool, &cfg.accounts)
            .await
            .expect("register");
        let tokens = Tokens::Given(
            (0..opts.accounts.max(1))
                .map(|i| {
                    let id = format!("acct-{i}");
                    let secret = opts.provider.secret_of(&sim, &id);
                    (id, secret)
                })
                .collect(),
        );
        let stop = CancellationToken::new();
        let workers = (0..opts.workers)
            .map(|i| {
                let registry = threadsync::jobs::registry(&cfg, &tokens);
                let w = Worker::new(
                    db.pool.clone(),
                    Arc::new(cfg.queue.clone()),
                    registry,
                    &format!("w{i}"),
                    opts.slots,
                );
                tokio::spawn(w.run(stop.clone()))
            })
            .collect();
        Rig {
            provider: opts.provider,
            config_path: super::write_config(&text),
            db,
            sim,
            cfg,
            slots: opts.slots,
            accounts: opts.accounts.max(1),
            stop,
            workers,
        }
    }

    /// A `threadsync worker` process on the rig's database and config, with the
    /// accounts' tokens in its environment.
    pub fn process(&self, name: &str) -> WorkerProc {
        let env: Vec<(String, String)> = (0..self.accounts)
            .map(|i| {
                let secret = self.provider.secret_of(&self.sim, &format!("acct-{i}"));
                (token_env(self.provider, i), secret)
            })
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        WorkerProc::start_with_env(&self.db.url, &self.config_path, name, self.slots, &env)
    }

    /// The rig's account ids, `acct-0` first.
    pub fn account_ids(&self) -> Vec<String> {
        (0..self.accounts).map(|i| format!("acct-{i}")).collect()
    }

    /// Starts a run as `threadsync resync`/`sync` would; returns its id.
    pub async fn start(&self, mode: Mode) -> i64 {
        self.start_for(ACCOUNT, mode).await
    }

    /// Starts a run of `account`; returns its id.
    pub async fn start_for(&self, account: &str, mode: Mode) -> i64 {
        let mut tx = self.db.pool.begin().await.expect("begin");
        let (id, created) = sync::start_run(&mut tx, account, mode)
            .await
            .expect("start");
        tx.commit().await.expect("commit");
        assert!(created, "one run at a time");
        id
    }

    pub async fn status(&self, id: i64) -> RunStatus {
        sync::run_status(&self.db.pool, id)
            .await
            .expect("status")
            .expect("run")
    }

    /// Waits for the run to end (done or failed) and returns its status; panics, with
    /// the jobs' errors, after `limit`.
    pub async fn finish(&self, id: i64, limit: Duration) -> RunStatus {
        let t = Instant::now();
        loop {
            let s = self.status(id).await;
            if s.state == "done" || s.state == "failed" {
                return s;
            }
            if t.elapsed() > limit {
                let errors: Vec<(String, Option<String>)> = sqlx::query_as(
                    "SELECT kind, last_error FROM threadsync.jobs
                      WHERE run_id = $1 AND last_error IS NOT NULL LIMIT 5",
                )
                .bind(id)
                .fetch_all(&self.db.pool)
                .await
                .expect("job errors");
                panic!(
                    "{} run {id} still {} after {limit:?}: {s:?}; job errors: {errors:?}",
                    self.provider.name(),
                    s.state
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a run and waits up to a minute for it to end done.
    pub async fn run(&self, mode: Mode) -> RunStatus {
        let id = self.start(mode).await;
        let s = self.finish(id, Duration::from_secs(60)).await;
        assert_eq!(s.state, "done", "{s:?}");
        s
    }

    /// The database against the rows the simulator says a synced copy holds.
    pub async fn compare(&self) -> Comparison {
        self.compare_for(ACCOUNT).await
    }

    /// `account`'s copy against the rows the simulator says it should hold.
    pub async fn compare_for(&self, account: &str) -> Comparison {
        let expected = self.sim.expected(account).expect("expected rows");
        verify::compare(&self.db.pool, account, &expected)
            .await
            .expect("compare")
    }

    /// The copy equals the provider's data, both ways and on every field.
    pub async fn assert_exact(&self) {
        let c = self.compare().await;
        assert!(c.is_exact(), "{}: {c}", self.provider.name());
        assert!(c.truth_messages > 0, "a dataset to compare");
    }

    /// Requests the simulator served the account since it started or last reset.
    pub fn calls(&self) -> u64 {
        self.sim
            .stats()
            .accounts
            .get(ACCOUNT)
            .map_or(0, |a| a.total)
    }

    /// Requests the simulator served the account on routes containing `route`.
    pub fn calls_to(&self, route: &str) -> u64 {
        self.sim.stats().accounts.get(ACCOUNT).map_or(0, |a| {
            a.by_route
                .iter()
                .filter(|(r, _)| r.contains(route))
                .flat_map(|(_, by_status)| by_status.values())
                .sum()
        })
    }

    /// Resumes the paused account and waits until no job is left. Every job is parked
    /// first: one still parking as the resume lands would look again only after its minute.
    pub async fn resume_and_settle(&self) {
        self.db
            .wait_count(
                "SELECT count(*) FROM threadsync.jobs WHERE status = 'running'",
                0,
                Duration::from_secs(20),
            )
            .await;
        assert!(sync::flow::resume(&self.db.pool, ACCOUNT)
            .await
            .expect("resume"));
        self.db
            .wait_count(
                "SELECT count(*) FROM threadsync.jobs WHERE status IN ('pending', 'running')",
                0,
                Duration::from_secs(60),
            )
            .await;
    }

    /// `threadsync serve`'s router over the rig's database on 127.0.0.1:0, with `provider`'s
    /// webhook secrets; returns the receiver's URL (`/webhooks/{provider}`) and the server.
    pub async fn serve_webhooks(
        &self,
        provider: &'static str,
        secrets: WebhookSecrets,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let state = AppState {
            pool: self.db.pool.clone(),
            tokens: auth::Tokens::new("admin-token".into(), None),
            webhooks: Arc::new(HashMap::from([(provider, secrets)])),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, threadsync::http::router(state)).await;
        });
        (format!("http://{addr}/webhooks/{provider}"), server)
    }

    /// Stops the in-process workers (each must stop cleanly), the simulator and the
    /// database.
    pub async fn close(self) {
        self.stop.cancel();
        for w in self.workers {
            w.await.expect("worker task").expect("worker");
        }
        self.sim.shutdown().await;
        self.db.close().await;
    }
}
