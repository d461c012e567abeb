//! Live progress of a sync run: a bar (pages, threads, messages, requests/s, ETA) until the
//! run finishes.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::sync::{self, RunStatus};

/// How far back the rates and the ETA look: long enough to smooth page-by-page jitter,
/// short enough that a stall (a pause, a slow stretch) does not linger in them.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Follows run `run_id` until it is done or failed; returns its final status. Two lines,
/// each within 80 columns:
///
/// ```text
/// full        [=========>      ]  58%  5,800 threads  ETA 12s  running
///   117 pages  5,690 fetched  110 unchanged  114,002 messages  31 req/s
/// ```
pub async fn follow(pool: &PgPool, run_id: i64, label: &str) -> anyhow::Result<RunStatus> {
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{prefix:11} [{bar:16}] {percent:>3}%  {msg}")
            .map_err(|e| anyhow::anyhow!("progress template: {e}"))?
            .progress_chars("=> "),
    );
    bar.set_prefix(label.chars().take(11).collect::<String>());
    let detail = ProgressBar::new_spinner();
    detail.set_style(
        ProgressStyle::with_template("  {wide_msg}")
            .map_err(|e| anyhow::anyhow!("progress template: {e}"))?,
    );
    let lines = indicatif::MultiProgress::new();
    let bar = lines.add(bar);
    let detail = lines.add(detail);
    // (when, HTTP calls, threads done) samples for the recent rates.
    let mut samples: std::collections::VecDeque<(Instant, i64, i64)> = Default::default();
    let mut distinct = (Instant::now() - RATE_WINDOW, 0i64);
    loop {
        let s = sync::run_status(pool, run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no sync run {run_id}"))?;
        let why_idle = stalled(pool, &s.account_id).await?;
        if distinct.0.elapsed() >= Duration::from_secs(1) {
            distinct = (Instant::now(), threads_met(pool, &s).await?);
        }
        let done = s.threads_fetched + s.threads_skipped + s.threads_deleted;
        let now = Instant::now();
        samples.push_back((now, s.http_calls, done));
        while samples.len() > 2 && samples.front().is_some_and(|f| now - f.0 > RATE_WINDOW) {
            samples.pop_front();
        }
        let (calls_rate, done_rate) = match (samples.front(), samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let dt = (b.0 - a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / dt, (b.2 - a.2) as f64 / dt)
            }
            _ => (0.0, 0.0),
        };
        // Threads seen counts sightings (a catch-up lists some twice): the share done is
        // sightings handled over sightings; the count shown is distinct threads.
        let seen = s.threads_seen.max(1);
        bar.set_position((done.clamp(0, seen) * 1000 / seen) as u64);
        let eta = match (&why_idle, done_rate > 0.0) {
            (None, true) => {
                let left = (seen - done).max(0) as f64 / done_rate;
                format!(
                    "ETA {}",
                    short_duration(Duration::from_secs_f64(left.min(1e7)))
                )
            }
            _ => "ETA -".into(),
        };
        bar.set_message(format!(
            "{} threads  {eta}  {}",
            thousands(distinct.1),
            s.state.replace('_', " ")
        ));
        detail.set_message(match &why_idle {
            Some(why) => why.clone(),
            None => detail_line(&s, calls_rate),
        });
        if s.state == "done" || s.state == "failed" {
            bar.finish();
            detail.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The counters under the bar.
fn detail_line(s: &RunStatus, calls_rate: f64) -> String {
    counters(
        [
            s.pages_listed,
            s.threads_fetched,
            s.threads_skipped,
            s.messages_written,
        ],
        calls_rate,
    )
}

fn counters([pages, fetched, unchanged, messages]: [i64; 4], calls_rate: f64) -> String {
    format!(
        "{} pages  {} fetched  {} unchanged  {} messages  {calls_rate:.0} req/s",
        thousands(pages),
        thousands(fetched),
        thousands(unchanged),
        thousands(messages),
    )
}

/// Distinct threads the run has written so far (listed, fetched or streamed).
async fn threads_met(pool: &PgPool, s: &RunStatus) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM threadsync.threads WHERE account_id = $1 AND synced_at >= $2",
    )
    .bind(&s.account_id)
    .bind(s.started_at)
    .fetch_one(pool)
    .await
}

/// 12,345.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// 42s, 3m05s, 2h10m.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Waits, without a bar, for run `run_id` to end; returns its final status.
pub async fn wait(pool: &PgPool, run_id: i64) -> anyhow::Result<RunStatus> {
    loop {
        let s = sync::run_status(pool, run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no sync run {run_id}"))?;
        if s.state == "done" || s.state == "failed" {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Why a run may be making no progress: its account is paused, or no worker is alive.
async fn stalled(pool: &PgPool, account: &str) -> sqlx::Result<Option<String>> {
    let paused: Option<(chrono::DateTime<chrono::Utc>, Option<String>)> = sqlx::query_as(
        "SELECT paused_until, pause_reason FROM threadsync.accounts WHERE id = $1 AND paused_until > now()",
    )
    .bind(account)
    .fetch_optional(pool)
    .await?;
    if let Some((until, reason)) = paused {
        return Ok(Some(format!(
            "PAUSED until {}: {}",
            until.format("%Y-%m-%d %H:%M UTC"),
            reason.unwrap_or_default()
        )));
    }
    let alive = crate::queue::workers::list(pool, false).await?;
    Ok(alive
        .is_empty()
        .then(|| "no worker is alive: start `threadsync worker`".to_string()))
}

/// Writes a run's status as text.
pub fn print_status(out: &mut dyn Write, s: &RunStatus) -> std::io::Result<()> {
    writeln!(
        out,
        "run {}  account {}  {}  {}",
        s.run_id, s.account_id, s.mode, s.state
    )?;
    let took = s
        .finished_at
        .and_then(|f| (f - s.started_at).to_std().ok())
        .map(|d| format!("  took {:.1} s", d.as_secs_f64()))
        .unwrap_or_default();
    writeln!(
        out,
        "  started {}  finished {}{took}",
        s.started_at.format("%Y-%m-%d %H:%M:%S"),
        s.finished_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    )?;
    writeln!(
        out,
        "  pages listed {}  threads seen {}  fetched {}  unchanged {}  deleted {}",
        s.pages_listed, s.threads_seen, s.threads_fetched, s.threads_skipped, s.threads_deleted
    )?;
    writeln!(
        out,
        "  messages written {}  HTTP calls {}",
        s.messages_written, s.http_calls
    )?;
    if !s.messages_by_stream.is_empty() || s.checks_made > 0 {
        let streams: Vec<String> = s
            .messages_by_stream
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        writeln!(out, "  messages by folder: {}", streams.join(", "))?;
        writeln!(
            out,
            "  status checks {}  statuses changed {}  settled {}  expired {}",
            s.checks_made, s.statuses_changed, s.settled, s.expired
        )?;
    }
    if s.bad_rows > 0 {
        writeln!(
            out,
            "  provider rows skipped {} (first: {})",
            s.bad_rows,
            s.first_bad_row.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(
        out,
        "  jobs active {}  failed {}",
        s.jobs_active, s.jobs_failed
    )?;
    if let Some(e) = &s.last_error {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-4200), "-4,200");
        assert_eq!(short_duration(Duration::from_secs(42)), "42s");
        assert_eq!(short_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(short_duration(Duration::from_secs(7800)), "2h10m");
    }

    #[test]
    fn both_lines_fit_80_columns_for_a_run_of_200000_threads() {
        let first = format!(
            "{:11} [{}] {:>3}%  {} threads  ETA {}  {}",
            "incremental",
            "=".repeat(16),
            100,
            thousands(200_000),
            short_duration(Duration::from_secs(7_199)),
            "catching up"
        );
        assert!(first.len() <= 80, "{} columns: {first}", first.len());
        let second = format!("  {}", counters([4_000, 150_000, 50_000, 4_000_000], 100.0));
        assert!(second.len() <= 80, "{} columns: {second}", second.len());
    }
}
