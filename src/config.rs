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
            accounts.push(Account {
                id: a.id,
                provider: a.provider,
                base_url: a.base_url.trim_end_matches('/').to_string(),
                token_env: a.token_env,
                requests_per_second: a.requests_per_second,
                max_in_flight: a.max_in_flight,
                request_timeout: Duration::from_secs_f64(a.request_timeout_secs),
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
