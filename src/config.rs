//! jobs.toml: queue settings, retry policies, per-kind limits, schedules and accounts.
//! Every error names the file, the line and the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub problem: String,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub path: Option<PathBuf>,
    pub queue: QueueConfig,
    pub retry: RetryPolicy,
    pub kinds: BTreeMap<String, KindConfig>,
    pub schedules: Vec<Schedule>,
    pub accounts: Vec<Account>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How long a claim is valid without a heartbeat.
    pub lease_secs: u64,
    /// Poll floor when no NOTIFY arrives (at most 1000).
    pub poll_ms: u64,
    /// Job slots per worker process.
    pub concurrency: usize,
    /// SIGTERM: how long in-flight jobs may run before they are released.
    pub shutdown_grace_secs: u64,
    /// Finished jobs older than this are pruned.
    pub retention_hours: u64,
    /// Rows deleted per prune statement.
    pub prune_batch: i64,
    /// false: handlers' transactions commit without waiting for the WAL flush. A database
    /// crash can then lose the last moments of finished jobs, each with everything it
    /// wrote (they commit together), so those jobs simply run again.
    pub synchronous_commit: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease_secs: 30,
            poll_ms: 1000,
            concurrency: 32,
            shutdown_grace_secs: 20,
            retention_hours: 24 * 7,
            prune_batch: 1000,
            synchronous_commit: true,
        }
    }
}

impl QueueConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 1000,
            backoff_cap_ms: 300_000,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with jitter: the n-th failure waits between half and all of
    /// min(cap, base * 2^(n-1)), so a burst of failures spreads out instead of retrying in step.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exp = attempts.clamp(1, 30) as u32 - 1;
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.backoff_cap_ms);
        let jittered = full / 2 + rand::random::<u64>() % (full / 2 + 1);
        Duration::from_millis(jittered)
    }
}

#[derive(Debug, Clone, Default)]
pub struct KindConfig {
    pub retry: RetryPolicy,
    /// Running jobs of this kind per worker process (None: no limit beyond the slots).
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: croner::Cron,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Ebay,
    Smseagle,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub provider: Provider,
    pub base_url: String,
    /// Name of the environment variable holding the token; the token never sits in the file.
    pub token_env: String,
    pub requests_per_second: f64,
    pub max_in_flight: i32,
    pub request_timeout: Duration,
    /// SMSEagle settings (None for other providers).
    pub sms: Option<SmsSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmsSettings {
    /// Folders synced by message id, in this order (outbox before sentitems, so a
    /// message picked up between two reads is seen in one of them).
    pub folders: Vec<String>,
    /// Messages per folder request.
    pub batch_size: u32,
    /// A folder with no cursor yet starts this far back, not at the whole history.
    pub cold_start: chrono::Duration,
    /// Pending-status checks: the first comes after `check_first`, each next one twice
    /// as late, up to `check_interval`.
    pub check_first: Duration,
    pub check_interval: Duration,
    pub api: crate::providers::smseagle::ReadApi,
}

// ---- raw file shape -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    queue: QueueConfig,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<RawKind>>,
    #[serde(default)]
    schedules: Vec<Spanned<RawSchedule>>,
    #[serde(default)]
    accounts: Vec<Spanned<RawAccount>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    max_attempts: Option<i32>,
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    cron: Spanned<String>,
    kind: String,
    #[serde(default)]
    payload: Option<toml::Value>,
    #[serde(default)]
    priority: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    id: String,
    provider: Provider,
    base_url: String,
    token_env: String,
    #[serde(default = "default_rps")]
    requests_per_second: f64,
    #[serde(default = "default_in_flight")]
    max_in_flight: i32,
    #[serde(default = "default_timeout")]
    request_timeout_secs: f64,
    // SMSEagle only.
    folders: Option<Vec<String>>,
    batch_size: Option<u32>,
    cold_start_days: Option<f64>,
    status_check_interval_secs: Option<f64>,
    status_check_first_secs: Option<f64>,
    api: Option<crate::providers::smseagle::ReadApi>,
}

impl RawAccount {
    fn has_sms_keys(&self) -> bool {
        self.folders.is_some()
            || self.batch_size.is_some()
            || self.cold_start_days.is_some()
            || self.status_check_interval_secs.is_some()
            || self.status_check_first_secs.is_some()
            || self.api.is_some()
    }

    /// SMSEagle settings with their defaults, or what is wrong with them.
    fn sms_settings(&self) -> Result<SmsSettings, String> {
        let folders = self
            .folders
            .clone()
            .unwrap_or_else(|| ["inbox", "outbox", "sentitems"].map(String::from).to_vec());
        if folders.is_empty() {
            return Err("folders must list at least one folder".into());
        }
        for (i, f) in folders.iter().enumerate() {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("folder {f:?} must be letters, digits or _"));
            }
            if folders[..i].contains(f) {
                return Err(format!("folder {f:?} is listed twice"));
            }
        }
        let batch_size = self.batch_size.unwrap_or(500);
        if !(1..=10_000).contains(&batch_size) {
            return Err("batch_size must be 1..=10000".into());
        }
        let secs = |v: Option<f64>, default: f64, key: &str| match v.unwrap_or(default) {
            x if x.is_finite() && x > 0.0 => Ok(Duration::from_secs_f64(x)),
            _ => Err(format!("{key} must be > 0")),
        };
        let cold = secs(
            self.cold_start_days.map(|d| d * 86_400.0),
            7.0 * 86_400.0,
            "cold_start_days",
        )?;
        let check_interval = secs(
            self.status_check_interval_secs,
            300.0,
            "status_check_interval_secs",
        )?;
        let check_first = secs(
            self.status_check_first_secs,
            30.0,
            "status_check_first_secs",
        )?;
        if check_first > check_interval {
            return Err(
                "status_check_first_secs must not exceed status_check_interval_secs".into(),
            );
        }
        let api = self.api.clone().unwrap_or_default();
        if !api.folder_path.starts_with('/') || !api.folder_path.contains("{folder}") {
            return Err("api.folder_path must start with / and contain {folder}".into());
        }
        Ok(SmsSettings {
            folders,
            batch_size,
            cold_start: chrono::Duration::from_std(cold)
                .map_err(|_| "cold_start_days is too large".to_string())?,
            check_first,
            check_interval,
            api,
        })
    }
}

fn default_timeout() -> f64 {
    30.0
}

fn default_rps() -> f64 {
    10.0
}
fn default_in_flight() -> i32 {
    10
}

impl Config {
    /// Reads and validates a jobs.toml file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Loads `path` when given, else ./jobs.toml when present, else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new("jobs.toml").exists() => Self::load(Path::new("jobs.toml")),
            None => Ok(Config::default()),
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, problem: String| ConfigError {
            file: file.to_string(),
            line: span.map(|s| line_of(text, s.start)).unwrap_or(0),
            problem,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            err(e.span(), msg)
        })?;

        let q = &raw.queue;
        let queue_span = text.find("[queue]").map(|s| s..s);
        if q.lease_secs < 2 {
            return Err(err(
                queue_span,
                "queue.lease_secs must be at least 2".into(),
            ));
        }
        if q.poll_ms == 0 || q.poll_ms > 1000 {
            return Err(err(queue_span, "queue.poll_ms must be 1..=1000".into()));
        }
        if q.concurrency == 0 {
            return Err(err(
                queue_span,
                "queue.concurrency must be at least 1".into(),
            ));
        }
        check_policy(&raw.retry).map_err(|p| err(text.find("[retry]").map(|s| s..s), p))?;

        let mut kinds = BTreeMap::new();
        for (name, k) in raw.kinds {
            let span = k.span();
            let k = k.into_inner();
            let retry = RetryPolicy {
                max_attempts: k.max_attempts.unwrap_or(raw.retry.max_attempts),
                backoff_base_ms: k.backoff_base_ms.unwrap_or(raw.retry.backoff_base_ms),
                backoff_cap_ms: k.backoff_cap_ms.unwrap_or(raw.retry.backoff_cap_ms),
            };
            check_policy(&retry)
                .map_err(|p| err(Some(span.clone()), format!("kinds.{name}: {p}")))?;
            if k.concurrency == Some(0) {
                return Err(err(
                    Some(span),
                    format!("kinds.{name}: concurrency must be at least 1"),
                ));
            }
            kinds.insert(
                name,
                KindConfig {
                    retry,
                    concurrency: k.concurrency,
                },
            );
        }

        let mut schedules: Vec<Schedule> = Vec::new();
        for s in raw.schedules {
            let span = s.span();
            let s = s.into_inner();
            if schedules.iter().any(|o| o.name == s.name) {
                return Err(err(
                    Some(span),
                    format!("duplicate schedule name {:?}", s.name),
                ));
            }
            let cron = croner::Cron::new(s.cron.get_ref())
                .with_seconds_optional()
                .parse()
                .map_err(|e| {
                    err(
                        Some(s.cron.span()),
                        format!(
                            "schedule {:?}: bad cron expression {:?}: {e}",
                            s.name,
                            s.cron.get_ref()
                        ),
                    )
                })?;
            let payload = match s.payload {
                Some(v) => {
                    serde_json::to_value(v).map_err(|e| err(Some(span.clone()), e.to_string()))?
                }
                None => serde_json::json!({}),
            };
            schedules.push(Schedule {
                name: s.name,
                cron,
                kind: s.kind,
                payload,
                priority: s.priority,
            });
        }

        let mut accounts: Vec<Account> = Vec::new();
        for a in raw.accounts {
            let span = a.span();
            let a = a.into_inner();
            if accounts.iter().any(|o| o.id == a.id) {
                return Err(err(Some(span), format!("duplicate account id {:?}", a.id)));
            }
            if !a.requests_per_second.is_finite() || a.requests_per_second < 0.0 {
                return Err(err(
                    Some(span),
                    format!(
                        "account {:?}: requests_per_second must be >= 0 (0: unpaced)",
                        a.id
                    ),
                ));
            }
            if !(a.request_timeout_secs.is_finite() && a.request_timeout_secs > 0.0) {
                return Err(err(
                    Some(span),
                    format!("account {:?}: request_timeout_secs must be > 0", a.id),
                ));
            }
            if a.max_in_flight < 1 {
                return Err(err(
                    Some(span),
                    format!("account {:?}: max_in_flight must be at least 1", a.id),
                ));
            }
            if !(a.base_url.starts_with("http://") || a.base_url.starts_with("https://")) {
                return Err(err(
                    Some(span),
                    format!(
                        "account {:?}: base_url must start with http:// or https://",
                        a.id
                    ),
                ));
            }
            let sms = match a.provider {
                Provider::Smseagle => Some(
                    a.sms_settings()
                        .map_err(|p| err(Some(span.clone()), format!("account {:?}: {p}", a.id)))?,
                ),
                Provider::Ebay if a.has_sms_keys() => {
                    return Err(err(
                        Some(span),
                        format!(
                            "account {:?}: folders, batch_size, cold_start_days, status_check_* and api apply to provider = \"smseagle\" only",
                            a.id
                        ),
                    ))
                }
                Provider::Ebay => None,
            };
            accounts.push(Account {
                id: a.id,
                provider: a.provider,
                base_url: a.base_url.trim_end_matches('/').to_string(),
                token_env: a.token_env,
                requests_per_second: a.requests_per_second,
                max_in_flight: a.max_in_flight,
                request_timeout: Duration::from_secs_f64(a.request_timeout_secs),
                sms,
            });
        }

        Ok(Config {
            path: None,
            queue: raw.queue,
            retry: raw.retry,
            kinds,
            schedules,
            accounts,
        })
    }

    pub fn policy(&self, kind: &str) -> RetryPolicy {
        self.kinds.get(kind).map(|k| k.retry).unwrap_or(self.retry)
    }

    pub fn account(&self, id: &str) -> anyhow::Result<&Account> {
        self.accounts.iter().find(|a| a.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.accounts.iter().map(|a| a.id.as_str()).collect();
            anyhow::anyhow!("unknown account {id:?} (configured: {})", known.join(", "))
        })
    }
}

fn check_policy(p: &RetryPolicy) -> Result<(), String> {
    if p.max_attempts < 1 {
        return Err("max_attempts must be at least 1".into());
    }
    if p.backoff_base_ms == 0 || p.backoff_cap_ms < p.backoff_base_ms {
        return Err("backoff_base_ms must be > 0 and backoff_cap_ms >= backoff_base_ms".into());
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_and_line() {
        let e = Config::parse("[queue]\nlease_secs = 30\nbogus = 1\n", "jobs.toml").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().starts_with("jobs.toml:3: "), "{e}");

        let text = "[[schedules]]\nname = \"a\"\nkind = \"diag.noop\"\ncron = \"not a cron\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.problem.contains("bad cron"), "{e}");

        let e = Config::parse("[kinds.\"a\"]\nmax_attempts = 0\n", "x.toml").unwrap_err();
        assert!(e.problem.contains("max_attempts"), "{e}");
    }

    const SMS: &str = "[[accounts]]\nid = \"gw\"\nprovider = \"smseagle\"\nbase_url = \"http://gw\"\ntoken_env = \"T\"\n";

    #[test]
    fn smseagle_defaults() {
        let c = Config::parse(SMS, "f").unwrap();
        let s = c.accounts[0].sms.clone().unwrap();
        assert_eq!(s.folders, ["inbox", "outbox", "sentitems"]);
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.cold_start, chrono::Duration::days(7));
        assert_eq!(s.check_interval, Duration::from_secs(300));
        assert_eq!(s.check_first, Duration::from_secs(30));
        assert_eq!(s.api.folder_path, "/api/v2/messages/{folder}");
    }

    #[test]
    fn smseagle_keys_are_validated_with_lines() {
        let text = format!("{SMS}folders = [\"inbox\", \"inbox\"]\n");
        let e = Config::parse(&text, "jobs.toml").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.problem.contains("listed twice"), "{e}");
        let e = Config::parse(&format!("{SMS}batch_size = 0\n"), "f").unwrap_err();
        assert!(e.problem.contains("batch_size"), "{e}");
        let e = Config::parse(&format!("{SMS}status_check_first_secs = 900\n"), "f").unwrap_err();
        assert!(e.problem.contains("status_check_first_secs"), "{e}");
        let e = Config::parse(&format!("{SMS}[accounts.api]\nid_form = \"x\"\n"), "f").unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let ebay = "[[accounts]]\nid = \"e\"\nprovider = \"ebay\"\nbase_url = \"http://e\"\ntoken_env = \"T\"\nfolders = [\"inbox\"]\n";
        let e = Config::parse(ebay, "f").unwrap_err();
        assert!(e.problem.contains("smseagle\" only"), "{e}");
        let c = Config::parse(
            &format!("{SMS}[accounts.api]\nid_from_param = \"idfrom\"\n"),
            "f",
        )
        .unwrap();
        assert_eq!(
            c.accounts[0].sms.as_ref().unwrap().api.id_from_param,
            "idfrom"
        );
    }

    #[test]
    fn shipped_jobs_toml_is_valid() {
        let c = Config::parse(include_str!("../jobs.toml"), "jobs.toml").unwrap();
        let sms = c.account("sms-office").unwrap().sms.clone().unwrap();
        assert_eq!(sms.check_interval, Duration::from_secs(300));
    }

    #[test]
    fn kind_policy_inherits_defaults() {
        let c = Config::parse(
            "[retry]\nmax_attempts = 7\n[kinds.k]\nbackoff_base_ms = 50\n",
            "f",
        )
        .unwrap();
        let p = c.policy("k");
        assert_eq!((p.max_attempts, p.backoff_base_ms), (7, 50));
        assert_eq!(c.policy("other").max_attempts, 7);
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_base_ms: 100,
            backoff_cap_ms: 1000,
        };
        for _ in 0..100 {
            let d1 = p.backoff(1).as_millis();
            let d3 = p.backoff(3).as_millis();
            let d9 = p.backoff(9).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            assert!((200..=400).contains(&d3), "{d3}");
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }
}
