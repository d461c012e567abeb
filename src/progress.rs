//! Live progress of a sync run: a bar (pages, threads, messages, requests/s, ETA) until the
//! run finishes.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::sync::{self, RunStatus};

/// Follows run `run_id` until it is done or failed; returns its final status.
pub async fn follow(pool: &PgPool, run_id: i64, label: &str) -> anyhow::Result<RunStatus> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} threads  {msg}  ETA {eta}")
            .map_err(|e| anyhow::anyhow!("progress template: {e}"))?
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    let mut last = (Instant::now(), 0i64);
    let mut rate = 0.0;
    loop {
        let s = sync::run_status(pool, run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no sync run {run_id}"))?;
        let why_idle = stalled(pool, &s.account_id).await?;
        let elapsed = last.0.elapsed().as_secs_f64();
        if elapsed >= 0.5 {
            rate = (s.http_calls - last.1) as f64 / elapsed;
            last = (Instant::now(), s.http_calls);
        }
        bar.set_length(s.threads_seen.max(1) as u64);
        bar.set_position((s.threads_fetched + s.threads_skipped + s.threads_deleted) as u64);
        bar.set_message(match &why_idle {
            Some(why) => format!("[{}] {why}", s.state),
            None => format!(
                "pages {}  fetched {}  unchanged {}  messages {}  {:.0} req/s  [{}]",
                s.pages_listed,
                s.threads_fetched,
                s.threads_skipped,
                s.messages_written,
                rate,
                s.state
            ),
        });
        if s.state == "done" || s.state == "failed" {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    writeln!(
        out,
        "  started {}  finished {}",
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
