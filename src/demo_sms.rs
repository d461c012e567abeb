//! `threadsync demo --provider smseagle`: the SMSEagle simulator's history synced by
//! folder, then new traffic, then pending delivery statuses settling (or expiring) while
//! the simulated clock moves on ten minutes at a time.

use std::time::Duration;

use serde_json::json;

use crate::bench::sync::{Lab, LabOptions};
use crate::pg::Durability;
use crate::sim::{Provider, SimConfig};
use crate::sync::{Mode, RunStatus};

/// The seeded gateway history ends on 2026-01-01, so the demo widens the cold-start
/// window to take all of it; checks come quickly so they keep up with the fast clock.
const ACCOUNT_KEYS: &str = "cold_start_days = 3650\nbatch_size = 500\n\
                            status_check_first_secs = 0.2\nstatus_check_interval_secs = 0.5\n";

pub async fn run(numbers: usize, per_number: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        numbers > 0 && per_number > 0,
        "--threads and --messages must be positive"
    );
    println!(
        "threadsync demo: an SMSEagle gateway with {numbers} phone numbers and about {} messages, served by the simulator",
        numbers * per_number
    );
    if std::env::var("DATABASE_URL").is_err() {
        println!("starting a private PostgreSQL (DATABASE_URL is unset)...");
    }
    let lab = Lab::start(LabOptions {
        account: "acct-0".into(),
        sim: SimConfig {
            provider: Provider::Smseagle,
            threads: numbers,
            messages: per_number,
            seed: 2026,
            no_report_rate: 0.2,
            ..SimConfig::default()
        },
        requests_per_second: 0.0,
        in_flight: 16,
        processes: 0,
        durability: Durability::Throwaway,
        account_keys: ACCOUNT_KEYS.into(),
    })
    .await?;
    let result = demo(&lab).await;
    lab.stop().await;
    result
}

async fn demo(lab: &Lab) -> anyhow::Result<()> {
    println!(
        "\n1. first sync: each folder read by message id, 500 at a time, each batch its own job"
    );
    let (first, wall) = lab.run(Mode::Incremental, true).await?;
    folders(&first, wall);

    let mut sent = 0;
    for v in ["5m", "10m", "30m", "1h"] {
        let r = lab
            .sim
            .mutate(&json!({"account": "acct-0", "send": 10, "validity": v}))?;
        sent += r["sent_ids"].as_array().map_or(0, |a| a.len());
    }
    lab.sim.mutate(&json!({"account": "acct-0", "inbox": 25}))?;
    lab.sim.advance_clock(10.0);
    println!(
        "\n2. meanwhile on the gateway: 25 SMS received, {sent} sent with validity 5m/10m/30m/1h"
    );

    println!("\n3. incremental sync (only ids above each folder's cursor)");
    let (inc, wall) = lab.run(Mode::Incremental, true).await?;
    folders(&inc, wall);

    println!("\n4. pending delivery statuses, checked by their own jobs while gateway time passes");
    for step in 1..=8 {
        lab.sim.advance_clock(600.0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (pending, settled, expired, checks) = deliveries(lab).await?;
        println!(
            "   +{:>3} min: pending {pending:>3}  final {settled:>3}  expired {expired:>3}  ({checks} checks so far)",
            step * 10
        );
        if pending == 0 {
            break;
        }
    }

    let c = lab.compare().await?;
    println!("\ncompared with the simulator's data, both ways and field by field (delivery statuses included):");
    print!("{}", c.table());
    anyhow::ensure!(
        c.is_exact(),
        "the synced copy differs from the gateway's data: {c}"
    );
    println!("\nthe local copy equals the gateway's data, statuses included.");
    Ok(())
}

fn folders(s: &RunStatus, wall: Duration) {
    let per: Vec<String> = s
        .messages_by_stream
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    println!(
        "   {}: {} new messages ({}), {} HTTP calls, {:.1} s",
        s.state,
        s.messages_written,
        if per.is_empty() {
            "none".to_string()
        } else {
            per.join(", ")
        },
        s.http_calls,
        wall.as_secs_f64()
    );
}

async fn deliveries(lab: &Lab) -> anyhow::Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE outcome = 'pending'), count(*) FILTER (WHERE outcome IN ('final', 'sent')),
                count(*) FILTER (WHERE outcome = 'expired'), coalesce(sum(checks), 0)
           FROM threadsync.deliveries WHERE account_id = 'acct-0'",
    )
    .fetch_one(&lab.pool)
    .await?)
}
