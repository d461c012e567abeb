//! jobs.toml: queue settings, retry policies, per-kind limits, schedules and accounts.
//! Every error names the file, the line and the problem. The queue's settings are the
//! queue's own types; each provider reads its own account keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::queue::{KindConfig, RetryPolicy, Schedule, Settings, Tuning};
use crate::sync::{Connect, Shape};

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
    /// `[queue]`, `[retry]`, `[kinds]` and `[[schedules]]`: the queue's own settings.
    pub queue: Settings,
    pub accounts: Vec<AccountConfig>,
}

/// One `[[accounts]]` entry: the keys every provider has, and the provider's own
/// (parsed by the provider, see [`AccountKeys`]).
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub id: String,
    pub provider: &'static str,
    pub shape: Shape,
    pub base_url: String,
    /// Name of the environment variable holding the secret; it never sits in the file.
    pub token_env: String,
    pub requests_per_second: f64,
    pub max_in_flight: i32,
    pub request_timeout: Duration,
    pub settings: Arc<dyn Connect>,
}

/// The keys of one `[[accounts]]` entry not read yet, each with where it stands in the
/// file, so a provider's errors name the line of the key itself.
pub struct AccountKeys<'a> {
    keys: BTreeMap<String, Spanned<toml::Value>>,
    account: String,
    /// The entry's own span, for keys that are missing.
    span: std::ops::Range<usize>,
    text: &'a str,
    file: &'a str,
}

impl AccountKeys<'_> {
    /// Takes `key` and decodes its value; absent is None.
    pub fn take<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.take_with(key, |_| Ok(()))
    }

    /// Takes `key`, decodes it and checks it with `check`, whose error names the key's line.
    pub fn take_with<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(v) = self.keys.remove(key) else {
            return Ok(None);
        };
        let span = v.span();
        let value: T = v.into_inner().try_into().map_err(|e: toml::de::Error| {
            self.error_at(span.clone(), format!("{key}: {}", e.message().trim()))
        })?;
        check(&value).map_err(|p| self.error_at(span, format!("{key} {p}")))?;
        Ok(Some(value))
    }

    /// An error about the whole entry (keys that only fail together), at its first line.
    pub fn invalid(&self, problem: impl std::fmt::Display) -> ConfigError {
        self.error_at(self.span.clone(), problem.to_string())
    }

    fn error_at(&self, span: std::ops::Range<usize>, problem: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            problem: format!("account {:?}: {problem}", self.account),
        }
    }

    fn required<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Result<T, ConfigError> {
        self.take_with(key, check)?
            .ok_or_else(|| self.invalid(format!("missing key {key}")))
    }

    /// Every key left over is unknown to the provider.
    fn finish(self, provider: &str) -> Result<(), ConfigError> {
        match self.keys.iter().next() {
            Some((k, v)) => Err(self.error_at(
                v.span(),
                format!("unknown key {k} for provider = {provider:?}"),
            )),
            None => Ok(()),
        }
    }
}

// ---- raw file shape -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    queue: Tuning,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<RawKind>>,
    #[serde(default)]
    schedules: Vec<Spanned<RawSchedule>>,
    #[serde(default)]
    accounts: Vec<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
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

        let mut accounts: Vec<AccountConfig> = Vec::new();
        for a in raw.accounts {
            let a = account(a, &accounts, text, file)?;
            accounts.push(a);
        }

        Ok(Config {
            path: None,
            queue: Settings {
                tuning: raw.queue,
                retry: raw.retry,
                kinds,
                schedules,
            },
            accounts,
        })
    }

    pub fn account(&self, id: &str) -> anyhow::Result<&AccountConfig> {
        self.accounts.iter().find(|a| a.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.accounts.iter().map(|a| a.id.as_str()).collect();
            anyhow::anyhow!("unknown account {id:?} (configured: {})", known.join(", "))
        })
    }
}

/// One `[[accounts]]` entry: the common keys here, the rest by its provider. `seen`
/// holds the ids of the entries before it.
fn account(
    entry: Spanned<BTreeMap<String, Spanned<toml::Value>>>,
    seen: &[AccountConfig],
    text: &str,
    file: &str,
) -> Result<AccountConfig, ConfigError> {
    let span = entry.span();
    let mut keys = AccountKeys {
        keys: entry.into_inner(),
        account: String::new(),
        span,
        text,
        file,
    };
    let id: String = keys.required("id", |id: &String| {
        if id.is_empty() {
            Err("must not be empty".into())
        } else if seen.iter().any(|a| a.id == *id) {
            Err(format!("{id:?} is a duplicate account id"))
        } else {
            Ok(())
        }
    })?;
    keys.account = id.clone();
    let names = || {
        let known: Vec<&str> = crate::providers::ALL.iter().map(|p| p.name()).collect();
        known.join(", ")
    };
    let name: String = keys.required("provider", |n: &String| match crate::providers::find(n) {
        Some(_) => Ok(()),
        None => Err(format!("{n:?} is not a provider (one of {})", names())),
    })?;
    let provider = crate::providers::find(&name)
        .ok_or_else(|| keys.invalid(format!("unknown provider {name:?}")))?;
    let base_url: String = keys.required("base_url", |u: &String| {
        if u.starts_with("http://") || u.starts_with("https://") {
            Ok(())
        } else {
            Err("must start with http:// or https://".into())
        }
    })?;
    let token_env: String = keys.required("token_env", |v: &String| {
        if v.is_empty() {
            Err("must name an environment variable".into())
        } else {
            Ok(())
        }
    })?;
    let requests_per_second: f64 = keys
        .take_with("requests_per_second", |r: &f64| {
            if r.is_finite() && (0.0..=100_000.0).contains(r) {
                Ok(())
            } else {
                Err("must be 0..=100000 (0: unpaced)".into())
            }
        })?
        .unwrap_or(10.0);
    let max_in_flight: i32 = keys
        .take_with("max_in_flight", |n: &i32| {
            if (1..=10_000).contains(n) {
                Ok(())
            } else {
                Err("must be 1..=10000".into())
            }
        })?
        .unwrap_or(10);
    let timeout: f64 = keys
        .take_with("request_timeout_secs", |t: &f64| {
            if t.is_finite() && *t > 0.0 && *t <= 3600.0 {
                Ok(())
            } else {
                Err("must be > 0 and at most 3600".into())
            }
        })?
        .unwrap_or(30.0);
    let settings = provider.settings(&mut keys)?;
    keys.finish(provider.name())?;
    Ok(AccountConfig {
        id,
        provider: provider.name(),
        shape: provider.shape(),
        base_url: base_url.trim_end_matches('/').to_string(),
        token_env,
        requests_per_second,
        max_in_flight,
        request_timeout: Duration::from_secs_f64(timeout),
        settings: Arc::from(settings),
    })
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

    const EBAY: &str = "[[accounts]]\nid = \"e\"\nprovider = \"ebay\"\nbase_url = \"http://e\"\ntoken_env = \"T\"\n";

    #[test]
    fn account_errors_name_the_line_of_the_key() {
        let e = Config::parse(&format!("{EBAY}max_in_flight = 0\n"), "jobs.toml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.problem.contains("max_in_flight"), "{e}");
        let e = Config::parse(&format!("{EBAY}folders = [\"inbox\"]\n"), "f").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.problem.contains("unknown key folders"), "{e}");
        let e = Config::parse(&EBAY.replace("\"ebay\"", "\"myspace\""), "f").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.problem.contains("not a provider"), "{e}");
        let e = Config::parse(&format!("{EBAY}{EBAY}"), "f").unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.problem.contains("duplicate"), "{e}");
        let e = Config::parse(&EBAY.replace("base_url = \"http://e\"\n", ""), "f").unwrap_err();
        assert!(e.problem.contains("missing key base_url"), "{e}");
    }

    #[test]
    fn shipped_jobs_toml_is_valid() {
        let c = Config::parse(include_str!("../jobs.toml"), "jobs.toml").unwrap();
        assert!(c.account("ebay-main").is_ok() && c.account("sms-office").is_ok());
        assert!(!c.queue.schedules.is_empty());
    }

    #[test]
    fn kind_policy_inherits_defaults() {
        let c = Config::parse(
            "[retry]\nmax_attempts = 7\n[kinds.k]\nbackoff_base_ms = 50\n",
            "f",
        )
        .unwrap();
        let p = c.queue.policy("k");
        assert_eq!((p.max_attempts, p.backoff_base_ms), (7, 50));
        assert_eq!(c.queue.policy("other").max_attempts, 7);
    }
}
