//! jobs.toml: queue settings, retry policies, per-kind limits, schedules and accounts.
//! Every error names the file, the line and the problem. The queue's settings are the
//! queue's own types; each provider reads its own account keys.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
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
    /// Sliding-window limits every request of the account counts against, fleet-wide:
    /// its own, and its limit group's.
    pub windows: Vec<Window>,
    pub settings: Arc<dyn Connect>,
}

/// At most `requests` in any `secs` seconds, shared by everything that names `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `account:ID` or `group:NAME`.
    pub key: String,
    pub requests: u32,
    pub secs: u32,
}

const WINDOW_REQUESTS: RangeInclusive<i64> = 1..=100_000;
const WINDOW_SECS: RangeInclusive<i64> = 1..=86_400;

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

/// A table's keys, each with where it stands in the file.
type RawTable = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    queue: Option<Spanned<RawTable>>,
    #[serde(default)]
    retry: Option<Spanned<RawTable>>,
    #[serde(default)]
    kinds: BTreeMap<String, Spanned<RawTable>>,
    #[serde(default)]
    schedules: Vec<Spanned<RawSchedule>>,
    #[serde(default)]
    accounts: Vec<Spanned<RawTable>>,
    #[serde(default)]
    limit_groups: BTreeMap<String, Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    cron: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    payload: Option<Spanned<toml::Value>>,
    #[serde(default)]
    priority: i32,
}

/// The keys of `[queue]`, `[retry]` or one `[kinds."KIND"]`, read one by one so every
/// error names the line of the key itself.
struct Table<'a> {
    keys: RawTable,
    /// How errors name the keys: `queue`, `retry`, `kinds."KIND"`.
    name: String,
    /// Where the table starts, for problems no single key of it holds.
    at: usize,
    text: &'a str,
    file: &'a str,
}

/// An integer key's value and where it stands.
type IntKey = Option<(i64, std::ops::Range<usize>)>;

impl<'a> Table<'a> {
    fn new(raw: Option<Spanned<RawTable>>, name: String, text: &'a str, file: &'a str) -> Self {
        let (at, keys) = match raw {
            Some(t) => (t.span().start, t.into_inner()),
            None => (0, RawTable::new()),
        };
        Table {
            keys,
            name,
            at,
            text,
            file,
        }
    }

    fn error_at(&self, offset: usize, problem: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: line_of(self.text, offset),
            problem,
        }
    }

    /// Takes an integer key, which must lie in `range`.
    fn int(&mut self, key: &str, range: RangeInclusive<i64>) -> Result<IntKey, ConfigError> {
        let Some(v) = self.keys.remove(key) else {
            return Ok(None);
        };
        let span = v.span();
        let name = format!("{}.{key}", self.name);
        match v.into_inner() {
            toml::Value::Integer(n) if range.contains(&n) => Ok(Some((n, span))),
            toml::Value::Integer(n) => Err(self.error_at(
                span.start,
                format!(
                    "{name} must be {}..={} (got {n})",
                    range.start(),
                    range.end()
                ),
            )),
            other => Err(self.error_at(
                span.start,
                format!(
                    "{name} must be an integer {}..={} (got {} {other})",
                    range.start(),
                    range.end(),
                    other.type_str()
                ),
            )),
        }
    }

    fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.keys.remove(key) else {
            return Ok(None);
        };
        let span = v.span();
        match v.into_inner() {
            toml::Value::Boolean(b) => Ok(Some(b)),
            other => Err(self.error_at(
                span.start,
                format!(
                    "{}.{key} must be true or false (got {} {other})",
                    self.name,
                    other.type_str()
                ),
            )),
        }
    }

    /// The retry policy keys, each inheriting from `inherit` when absent.
    fn policy(&mut self, inherit: RetryPolicy) -> Result<RetryPolicy, ConfigError> {
        let max = self.int("max_attempts", RetryPolicy::MAX_ATTEMPTS)?;
        let base = self.int("backoff_base_ms", RetryPolicy::BACKOFF_MS)?;
        let cap = self.int("backoff_cap_ms", RetryPolicy::BACKOFF_MS)?;
        // In range, so the conversions cannot fail; the inherited value is the fallback.
        let p = RetryPolicy {
            max_attempts: max.as_ref().map_or(inherit.max_attempts, |(n, _)| {
                i32::try_from(*n).unwrap_or(inherit.max_attempts)
            }),
            backoff_base_ms: base.as_ref().map_or(inherit.backoff_base_ms, |(n, _)| {
                u64::try_from(*n).unwrap_or(inherit.backoff_base_ms)
            }),
            backoff_cap_ms: cap.as_ref().map_or(inherit.backoff_cap_ms, |(n, _)| {
                u64::try_from(*n).unwrap_or(inherit.backoff_cap_ms)
            }),
        };
        if p.backoff_cap_ms < p.backoff_base_ms {
            let (base_ms, cap_ms) = (p.backoff_base_ms, p.backoff_cap_ms);
            let name = &self.name;
            // At the key that made them cross: the cap when this table sets it.
            return Err(match (cap, base) {
                (Some((_, span)), _) => self.error_at(
                    span.start,
                    format!("{name}.backoff_cap_ms ({cap_ms}) must be at least backoff_base_ms ({base_ms})"),
                ),
                (None, Some((_, span))) => self.error_at(
                    span.start,
                    format!("{name}.backoff_base_ms ({base_ms}) must be at most backoff_cap_ms ({cap_ms})"),
                ),
                (None, None) => self.error_at(
                    self.at,
                    format!("{name}: backoff_cap_ms ({cap_ms}) must be at least backoff_base_ms ({base_ms})"),
                ),
            });
        }
        Ok(p)
    }

    /// Every key left over is unknown.
    fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
        match self.keys.iter().next() {
            Some((k, v)) => Err(self.error_at(
                v.span().start,
                format!(
                    "{}: unknown key {k} (known: {})",
                    self.name,
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

const QUEUE_KEYS: &[&str] = &[
    "lease_secs",
    "poll_ms",
    "concurrency",
    "shutdown_grace_secs",
    "retention_hours",
    "prune_batch",
    "synchronous_commit",
];
const RETRY_KEYS: &[&str] = &["max_attempts", "backoff_base_ms", "backoff_cap_ms"];
const LIMIT_GROUP_KEYS: &[&str] = &["requests", "window_secs"];
const KIND_KEYS: &[&str] = &[
    "max_attempts",
    "backoff_base_ms",
    "backoff_cap_ms",
    "concurrency",
];

/// `[queue]`: each key in its range, at its own line.
fn tuning(t: &mut Table) -> Result<Tuning, ConfigError> {
    let d = Tuning::default();
    // Every range lies within the target type, so the conversions only fall back in theory.
    let u64_of =
        |v: IntKey, default: u64| v.map_or(default, |(n, _)| u64::try_from(n).unwrap_or(default));
    Ok(Tuning {
        lease_secs: u64_of(t.int("lease_secs", Tuning::LEASE_SECS)?, d.lease_secs),
        poll_ms: u64_of(t.int("poll_ms", Tuning::POLL_MS)?, d.poll_ms),
        concurrency: t
            .int("concurrency", Tuning::CONCURRENCY)?
            .map_or(d.concurrency, |(n, _)| {
                usize::try_from(n).unwrap_or(d.concurrency)
            }),
        shutdown_grace_secs: u64_of(
            t.int("shutdown_grace_secs", Tuning::SHUTDOWN_GRACE_SECS)?,
            d.shutdown_grace_secs,
        ),
        retention_hours: u64_of(
            t.int("retention_hours", Tuning::RETENTION_HOURS)?,
            d.retention_hours,
        ),
        prune_batch: t
            .int("prune_batch", Tuning::PRUNE_BATCH)?
            .map_or(d.prune_batch, |(n, _)| n),
        synchronous_commit: t
            .bool("synchronous_commit")?
            .unwrap_or(d.synchronous_commit),
    })
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

        let mut q = Table::new(raw.queue, "queue".into(), text, file);
        let tuning = tuning(&mut q)?;
        q.finish(QUEUE_KEYS)?;
        let mut r = Table::new(raw.retry, "retry".into(), text, file);
        let retry = r.policy(RetryPolicy::default())?;
        r.finish(RETRY_KEYS)?;

        let mut kinds = BTreeMap::new();
        for (name, k) in raw.kinds {
            let mut t = Table::new(Some(k), format!("kinds.{name:?}"), text, file);
            let policy = t.policy(retry)?;
            let concurrency = t
                .int("concurrency", KindConfig::CONCURRENCY)?
                .and_then(|(n, _)| usize::try_from(n).ok());
            t.finish(KIND_KEYS)?;
            kinds.insert(
                name,
                KindConfig {
                    retry: policy,
                    concurrency,
                },
            );
        }

        let mut groups = BTreeMap::new();
        for (name, g) in raw.limit_groups {
            let mut t = Table::new(Some(g), format!("limit_groups.{name}"), text, file);
            let at = t.at;
            let requests = t.int("requests", WINDOW_REQUESTS)?;
            let secs = t.int("window_secs", WINDOW_SECS)?;
            t.finish(LIMIT_GROUP_KEYS)?;
            let (Some((requests, _)), Some((secs, _))) = (requests, secs) else {
                return Err(err(
                    Some(at..at),
                    format!("limit_groups.{name} needs requests and window_secs"),
                ));
            };
            groups.insert(
                name.clone(),
                Window {
                    key: format!("group:{name}"),
                    requests: u32::try_from(requests).unwrap_or(1),
                    secs: u32::try_from(secs).unwrap_or(1),
                },
            );
        }

        // Accounts first: a schedule's payload may name one.
        let mut accounts: Vec<AccountConfig> = Vec::new();
        for a in raw.accounts {
            let a = account(a, &accounts, &groups, text, file)?;
            accounts.push(a);
        }

        let known_kinds = crate::jobs::kinds();
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
            if !known_kinds.iter().any(|k| k == s.kind.get_ref()) {
                return Err(err(
                    Some(s.kind.span()),
                    format!(
                        "schedule {:?}: kind {:?} is not a job kind threadsync runs (one of {})",
                        s.name,
                        s.kind.get_ref(),
                        known_kinds.join(", ")
                    ),
                ));
            }
            let payload = match s.payload {
                Some(v) => {
                    let at = v.span();
                    let v = v.into_inner();
                    schedule_account(&v, &accounts).map_err(|p| {
                        err(Some(at.clone()), format!("schedule {:?}: {p}", s.name))
                    })?;
                    serde_json::to_value(v).map_err(|e| err(Some(at), e.to_string()))?
                }
                None => serde_json::json!({}),
            };
            schedules.push(Schedule {
                name: s.name,
                cron,
                kind: s.kind.into_inner(),
                payload,
                priority: s.priority,
            });
        }

        Ok(Config {
            path: None,
            queue: Settings {
                tuning,
                retry,
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
    groups: &BTreeMap<String, Window>,
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
        .unwrap_or(provider.default_rate());
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
    let in_range = |range: RangeInclusive<i64>| {
        move |n: &i64| match range.contains(n) {
            true => Ok(()),
            false => Err(format!("must be {}..={}", range.start(), range.end())),
        }
    };
    let window_requests = keys.take_with("window_requests", in_range(0..=100_000))?;
    let window_secs = keys.take_with("window_secs", in_range(WINDOW_SECS))?;
    let own = match (window_requests, window_secs) {
        (Some(0), _) => None,
        (Some(r), Some(s)) => Some((r, s)),
        (None, None) => provider
            .default_window()
            .map(|(r, s)| (i64::from(r), i64::from(s))),
        _ => return Err(keys.invalid("window_requests and window_secs go together")),
    };
    // `window_requests = 0`: no window of its own.
    let mut windows: Vec<Window> = own
        .map(|(r, s)| Window {
            key: format!("account:{id}"),
            requests: u32::try_from(r).unwrap_or(1),
            secs: u32::try_from(s).unwrap_or(1),
        })
        .into_iter()
        .collect();
    let group: Option<String> =
        keys.take_with("limit_group", |g: &String| match groups.contains_key(g) {
            true => Ok(()),
            false => Err(format!(
                "names {g:?}, which no [limit_groups.{g}] table defines"
            )),
        })?;
    windows.extend(group.and_then(|g| groups.get(&g).cloned()));
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
        windows,
        settings: Arc::from(settings),
    })
}

/// A schedule's payload is a table, and an `account` it names is configured.
fn schedule_account(payload: &toml::Value, accounts: &[AccountConfig]) -> Result<(), String> {
    let Some(table) = payload.as_table() else {
        return Err(format!(
            "payload must be a table, e.g. {{ account = \"...\" }} (got {} {payload})",
            payload.type_str()
        ));
    };
    match table.get("account") {
        None => Ok(()),
        Some(toml::Value::String(id)) if accounts.iter().any(|a| a.id == *id) => Ok(()),
        Some(toml::Value::String(id)) => {
            let known: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
            Err(format!(
                "payload account {id:?} is not configured (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        }
        Some(other) => Err(format!(
            "payload account must be a string (got {} {other})",
            other.type_str()
        )),
    }
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

    /// The error of `text`, checked to name `line` and to mention `words`.
    fn fails_at(text: &str, line: usize, words: &str) {
        let e = Config::parse(text, "jobs.toml").expect_err(text);
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.problem.contains(words), "{text:?}: {e}");
    }

    #[test]
    fn queue_numbers_out_of_range_name_the_line_of_the_key() {
        for (key, bad) in [
            ("lease_secs", "1"),
            ("lease_secs", "86401"),
            ("poll_ms", "0"),
            ("poll_ms", "1001"),
            ("concurrency", "0"),
            ("concurrency", "10001"),
            ("shutdown_grace_secs", "-1"),
            ("shutdown_grace_secs", "86401"),
            ("retention_hours", "0"),
            ("retention_hours", "5124095576030431"),
            ("prune_batch", "0"),
            ("prune_batch", "-5"),
            ("prune_batch", "100001"),
            ("lease_secs", "\"30\""),
            ("synchronous_commit", "1"),
        ] {
            let text = format!("# comment\n[queue]\nlease_secs = 30\n{key} = {bad}\n");
            let text = text.replacen("lease_secs = 30\nlease_secs", "lease_secs", 1);
            let line = if key == "lease_secs" { 3 } else { 4 };
            fails_at(&text, line, &format!("queue.{key} must be"));
        }
        let c = Config::parse(
            "[queue]\nlease_secs = 2\npoll_ms = 1000\nconcurrency = 10000\nshutdown_grace_secs = 0\n\
             retention_hours = 87600\nprune_batch = 100000\nsynchronous_commit = false\n",
            "f",
        )
        .unwrap();
        let t = &c.queue.tuning;
        assert_eq!(
            (t.lease_secs, t.concurrency, t.prune_batch),
            (2, 10000, 100_000)
        );
        assert!(!t.synchronous_commit);
        fails_at(
            "[queue]\nlease_secs = 30\nbogus = 1\n",
            3,
            "unknown key bogus",
        );
    }

    #[test]
    fn retry_and_kind_numbers_out_of_range_name_the_line_of_the_key() {
        fails_at(
            "[retry]\nmax_attempts = 0\n",
            2,
            "retry.max_attempts must be 1..=1000",
        );
        fails_at("[retry]\n\nmax_attempts = 1001\n", 3, "retry.max_attempts");
        fails_at("[retry]\nbackoff_base_ms = 0\n", 2, "retry.backoff_base_ms");
        fails_at(
            "[retry]\nbackoff_cap_ms = 86400001\n",
            2,
            "retry.backoff_cap_ms",
        );
        fails_at(
            "[retry]\nbackoff_base_ms = 500\nbackoff_cap_ms = 100\n",
            3,
            "backoff_cap_ms (100) must be at least backoff_base_ms (500)",
        );
        // The cap inherited from [retry] (300000) is below the kind's own base.
        fails_at(
            "[kinds.\"diag.fail\"]\nmax_attempts = 3\nbackoff_base_ms = 400000\n",
            3,
            "kinds.\"diag.fail\".backoff_base_ms (400000) must be at most backoff_cap_ms (300000)",
        );
        fails_at(
            "[kinds.k]\nmax_attempts = -1\n",
            2,
            "kinds.\"k\".max_attempts",
        );
        fails_at(
            "[kinds.k]\nmax_attempts = 2\nconcurrency = 0\n",
            3,
            "concurrency must be 1..=10000",
        );
        fails_at("[kinds.k]\nconcurrency = 10001\n", 2, "concurrency");
        fails_at("[kinds.k]\nconcurency = 1\n", 2, "unknown key concurency");
        let c = Config::parse("[kinds.k]\nconcurrency = 10000\n", "f").unwrap();
        assert_eq!(c.queue.kinds["k"].concurrency, Some(10000));
    }

    const SCHEDULE: &str = "[[schedules]]\nname = \"s\"\ncron = \"0 * * * * *\"\n";

    #[test]
    fn schedules_name_a_registered_kind_and_a_configured_account() {
        fails_at(
            &format!("{SCHEDULE}kind = \"diag.nope\"\n"),
            4,
            "kind \"diag.nope\" is not a job kind",
        );
        fails_at(
            &format!("{EBAY}{SCHEDULE}kind = \"sync.start\"\npayload = {{ account = \"x\", mode = \"full\" }}\n"),
            10,
            "payload account \"x\" is not configured (configured: e)",
        );
        fails_at(
            &format!("{SCHEDULE}kind = \"diag.noop\"\npayload = 5\n"),
            5,
            "payload must be a table",
        );
        fails_at(
            &format!("{SCHEDULE}kind = \"sync.start\"\npayload = {{ account = 7 }}\n"),
            5,
            "payload account must be a string",
        );
        for kind in crate::jobs::kinds() {
            let text =
                format!("{EBAY}{SCHEDULE}kind = \"{kind}\"\npayload = {{ account = \"e\" }}\n");
            Config::parse(&text, "f").unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
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
