//! `threadsync demo --provider hostaway`: reservations and inquiries of a Hostaway account,
//! served by the simulator under Hostaway's limits (15 requests per window per IP) on a
//! 1 s window instead of the documented 10 s, so the demo takes seconds; a full sync, new
//! messages, inquiries and booking changes, an incremental sync, and a comparison with
//! the truth.

use serde_json::json;

use crate::bench::hostaway::{keys, ACCOUNT_LIMIT, IP_LIMIT};
use crate::bench::sync::{Lab, LabOptions};
use crate::pg::Durability;
use crate::sim::{Provider, SimConfig};
use crate::sync::{Mode, RunStatus};

pub async fn run(reservations: usize, messages: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        reservations > 0 && messages > 0,
        "--threads and --messages must be positive"
    );
    println!(
        "threadsync demo: a Hostaway account with {reservations} conversations of about {messages} messages \
         (a tenth of them inquiries, with no reservation), served by the simulator"
    );
    println!(
        "every call keeps under Hostaway's {IP_LIMIT} requests per window per IP, here on a 1 s window \
         (Hostaway's is 10 s) so the demo takes seconds, not minutes"
    );
    if std::env::var("DATABASE_URL").is_err() {
        println!("starting a private PostgreSQL (DATABASE_URL is unset)...");
    }
    let lab = Lab::start(LabOptions {
        account: "hostaway-demo".into(),
        sim: SimConfig {
            provider: Provider::Hostaway,
            threads: reservations,
            messages,
            seed: 2026,
            hostaway_inquiry_share: 0.1,
            hostaway_ip_limit: IP_LIMIT,
            hostaway_account_limit: ACCOUNT_LIMIT,
            hostaway_window_ms: 1000,
            ..SimConfig::default()
        },
        requests_per_second: 0.0,
        in_flight: 10,
        processes: 0,
        durability: Durability::Throwaway,
        account_keys: keys(1),
    })
    .await?;
    let result = demo(&lab).await;
    lab.stop().await;
    result
}

async fn demo(lab: &Lab) -> anyhow::Result<()> {
    println!(
        "\n1. full sync: every conversation (/v1/conversations, 100 per page), each one's messages \
         by its own job; threadsync mints the access token itself"
    );
    let (full, wall) = lab.run(Mode::Full, true).await?;
    summary(&full, wall, lab);
    lab.sim.reset_stats();

    let inbound = lab.sim.mutate(
        &json!({"account": "acct-0", "new_messages": 30, "new_threads": 3, "new_inquiries": 2, "direction": "inbound"}),
    )?;
    let updated = lab
        .sim
        .mutate(&json!({"account": "acct-0", "update_reservations": 5}))?;
    let count = |v: &serde_json::Value, k: &str| v[k].as_array().map_or(0, |a| a.len());
    println!(
        "\n2. meanwhile on Hostaway: {} guest messages, {} new bookings, {} new inquiries, {} bookings modified",
        count(&inbound, "newMessages"),
        count(&inbound, "newThreads"),
        count(&inbound, "newInquiries"),
        count(&updated, "updatedReservationIds"),
    );

    println!(
        "\n3. incremental sync: reservations by last update down to the first page before the last \
         sync, each changed one's conversations, and the head of the conversation list (inquiries)"
    );
    let (inc, wall) = lab.run(Mode::Incremental, true).await?;
    summary(&inc, wall, lab);

    let c = lab.compare().await?;
    println!("\ncompared with the simulator's data, both ways and field by field:");
    print!("{}", c.table());
    anyhow::ensure!(
        c.is_exact(),
        "the synced copy differs from the account's data: {c}"
    );
    println!("\nthe local copy equals the account's data.");
    Ok(())
}

fn summary(s: &RunStatus, wall: std::time::Duration, lab: &Lab) {
    let stats = lab.account_stats();
    println!(
        "   {}: {} conversations listed, {} messages written, {} calls, {} answered 429, {:.1} s",
        s.state,
        s.threads_seen,
        s.messages_written,
        stats.total,
        stats.throttled_429,
        wall.as_secs_f64()
    );
}
