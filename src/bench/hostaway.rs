//! `threadsync bench sync --provider hostaway`: a full resync of the account, then the
//! incremental case: `--changed` reservations gain a message and an incremental run
//! brings the copy level. Both phases run under Hostaway's limits (15 requests per window
//! per IP, 20 per account) as the simulator enforces them; the full phase on a window of
//! `--full-window-secs` (default 1 s, so a large account syncs in minutes), the
//! incremental phase on Hostaway's documented 10 s. Calls are the simulator's own counts.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::pg::Durability;
use crate::sim::{self, SimConfig};
use crate::sync::Mode;

use super::sync::{Lab, LabOptions, SyncBenchArgs};

/// Hostaway's documented limits.
pub const IP_LIMIT: u32 = 15;
pub const ACCOUNT_LIMIT: u32 = 20;
pub const WINDOW_SECS: u32 = 10;
/// Hostaway's largest page, the account's default.
const PAGE: u64 = 100;
const ACCOUNT: &str = "acct-0";

#[derive(Debug, Serialize)]
pub struct Phase {
    /// Requests per window the account kept under (the per-IP limit binds one account).
    pub window_requests: u32,
    pub window_secs: u32,
    pub wall_s: f64,
    pub conversations: usize,
    pub messages: usize,
    pub calls: u64,
    pub conversation_list_calls: u64,
    pub reservation_list_calls: u64,
    pub reservation_conversation_calls: u64,
    pub message_calls: u64,
    /// Fewest calls the phase needs (see `threadsync bench sync --help` in the README).
    pub min_calls: u64,
    /// Reads allowed beyond the minimum: the conversation list's head (incremental) or
    /// the catch-up pass's re-read of it (full).
    pub head_read: u64,
    /// The earliest the last call can leave under the window: window x floor((calls - 1)
    /// / requests per window), for the calls made.
    pub floor_s: f64,
    pub floor_ratio: Option<f64>,
    pub throttled_429: u64,
    /// Most requests the simulator saw from the client IP in any window.
    pub ip_window_peak: u64,
    pub missing: usize,
    pub extra: usize,
    pub misfiled: usize,
    pub differing: usize,
}

#[derive(Debug, Serialize)]
pub struct HostawayBenchReport {
    pub provider: &'static str,
    pub reservations: usize,
    pub changed: usize,
    pub full: Phase,
    pub incremental: Phase,
}

/// The account's own keys: its client id, and Hostaway's per-IP limit on `window_secs`.
pub fn keys(window_secs: u32) -> String {
    format!("client_id = \"0\"\nwindow_requests = {IP_LIMIT}\nwindow_secs = {window_secs}\n")
}

fn floor_s(calls: u64, window_secs: u32) -> f64 {
    f64::from(window_secs) * (calls.saturating_sub(1) / u64::from(IP_LIMIT)) as f64
}

pub async fn run(args: SyncBenchArgs) -> anyhow::Result<HostawayBenchReport> {
    anyhow::ensure!(
        args.rate_limit.is_none(),
        "--rate-limit is for eBay and Facebook; Hostaway runs under its own windows"
    );
    anyhow::ensure!(
        args.changed >= 1 && args.changed <= args.threads,
        "--changed must be 1..=--threads"
    );
    anyhow::ensure!(
        (1..=3600).contains(&args.full_window_secs),
        "--full-window-secs must be 1..=3600"
    );
    let mut lab = Lab::start(LabOptions {
        account: "bench".into(),
        sim: SimConfig {
            provider: sim::Provider::Hostaway,
            threads: args.threads,
            messages: args.messages,
            seed: 42,
            hostaway_window_ms: u64::from(args.full_window_secs) * 1000,
            ..SimConfig::default()
        },
        requests_per_second: 0.0,
        in_flight: args.in_flight,
        processes: args.processes,
        durability: Durability::Durable,
        account_keys: keys(args.full_window_secs),
    })
    .await?;
    let result = phases(&mut lab, &args).await;
    lab.stop().await;
    result
}

async fn phases(lab: &mut Lab, args: &SyncBenchArgs) -> anyhow::Result<HostawayBenchReport> {
    let full = phase(lab, Mode::Full, args.full_window_secs, 0, args.json).await?;
    // The changed reservations: the conversations of `changed` reservations, one message
    // each.
    let truth = lab.sim.truth(Some(ACCOUNT));
    let targets: Vec<Value> = truth["accounts"][0]["reservations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("conversationId").cloned())
        .take(args.changed)
        .collect();
    // Hostaway's documented window from here on, once the full phase's sends have aged
    // out of it on both sides.
    lab.reconfigure(keys(WINDOW_SECS)).await?;
    tokio::time::sleep(Duration::from_secs(u64::from(WINDOW_SECS) + 1)).await;
    lab.sim
        .set_hostaway_limits(IP_LIMIT, ACCOUNT_LIMIT, u64::from(WINDOW_SECS) * 1000)?;
    lab.sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": targets,
                           "new_messages": targets.len(), "direction": "inbound"}))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let changed = targets.len() as u64;
    let incremental = phase(lab, Mode::Incremental, WINDOW_SECS, changed, args.json).await?;
    Ok(HostawayBenchReport {
        provider: "hostaway",
        reservations: args.threads,
        changed: targets.len(),
        full,
        incremental,
    })
}

/// One run; `changed`: the conversations (each of its own reservation) that gained a
/// message before an incremental run.
async fn phase(
    lab: &Lab,
    mode: Mode,
    window_secs: u32,
    changed: u64,
    json: bool,
) -> anyhow::Result<Phase> {
    lab.sim.reset_stats();
    let expected_before = lab.sim.expected(ACCOUNT)?;
    let (status, wall) = lab.run(mode, !json).await?;
    anyhow::ensure!(
        status.state == "done",
        "the {} run ended {}: {}",
        mode.as_str(),
        status.state,
        status.last_error.as_deref().unwrap_or("no error recorded")
    );
    let c = lab.compare().await?;
    let stats = lab.account_stats();
    let route = |suffix: &str| -> u64 {
        stats
            .by_route
            .iter()
            .filter(|(r, _)| r.ends_with(suffix))
            .flat_map(|(_, s)| s.values())
            .sum()
    };
    let peaks = lab.sim.hostaway_window_peaks()?;
    // Fewest calls: a full run reads every list page and each conversation's message
    // pages; an incremental one the reservation pages down to the first unchanged one,
    // the conversations of each changed reservation and the messages of each changed
    // conversation.
    let (min_calls, head_read) = match mode {
        Mode::Full => {
            let pages = (expected_before.threads.len() as u64).div_ceil(PAGE).max(1);
            let messages: u64 = expected_before
                .threads
                .iter()
                .map(|t| (t.messages.len() as u64).div_ceil(PAGE).max(1))
                .sum();
            (pages + messages, 1)
        }
        Mode::Incremental => ((changed + 1).div_ceil(PAGE) + 2 * changed, 1),
    };
    let calls = stats.total;
    let floor = floor_s(calls, window_secs);
    let wall_s = wall.as_secs_f64();
    Ok(Phase {
        window_requests: IP_LIMIT,
        window_secs,
        wall_s,
        conversations: c.db_threads,
        messages: c.db_messages,
        calls,
        conversation_list_calls: route("GET /v1/conversations"),
        reservation_list_calls: route("GET /v1/reservations"),
        reservation_conversation_calls: route("/conversations")
            .saturating_sub(route("GET /v1/conversations")),
        message_calls: route("/messages"),
        min_calls,
        head_read,
        floor_s: floor,
        floor_ratio: (floor > 0.0).then(|| wall_s / floor),
        throttled_429: stats.throttled_429,
        ip_window_peak: peaks.by_ip.values().copied().max().unwrap_or(0),
        missing: c.missing_threads + c.missing_messages,
        extra: c.extra_threads + c.extra_messages,
        misfiled: c.misfiled_messages,
        differing: c.differing_threads + c.differing_messages,
    })
}

pub fn print(r: &HostawayBenchReport) {
    for (name, p) in [("full", &r.full), ("incremental", &r.incremental)] {
        println!(
            "{name}: {} conversations, {} messages in {:.2} s ({} requests per {} s window)",
            p.conversations, p.messages, p.wall_s, p.window_requests, p.window_secs
        );
        println!(
            "  calls:       {} ({} conversation pages, {} reservation pages, {} reservation conversation lists, {} message pages); minimum {} + head read {}",
            p.calls,
            p.conversation_list_calls,
            p.reservation_list_calls,
            p.reservation_conversation_calls,
            p.message_calls,
            p.min_calls,
            p.head_read
        );
        match p.floor_ratio {
            Some(f) => println!(
                "  floor:       {:.1} s under the window; ratio {f:.3}",
                p.floor_s
            ),
            None => println!("  floor:       0 s (every call fits one window)"),
        }
        println!(
            "  429s {}, peak {} requests from the IP in one window",
            p.throttled_429, p.ip_window_peak
        );
        println!(
            "  vs truth:    missing {}, extra {}, misfiled {}, differing {}",
            p.missing, p.extra, p.misfiled, p.differing
        );
    }
}
