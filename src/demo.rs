//! `threadsync demo`: a private PostgreSQL (unless DATABASE_URL is set), the eBay simulator
//! with 5,000 threads of about 20 messages, workers in this process; a full resync with the
//! live progress bar, new messages, an incremental sync, and a comparison with the truth.
//! `--provider smseagle` shows an SMS gateway instead (see demo_sms.rs).

use serde_json::json;

use crate::bench::sync::{Lab, LabOptions, LAB_IN_FLIGHT};
use crate::pg::Durability;
use crate::sim::SimConfig;
use crate::sync::{Mode, RunStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProvider {
    Ebay,
    Smseagle,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Which provider's simulator to sync from.
    #[arg(long, value_enum, default_value_t = DemoProvider::Ebay)]
    pub provider: DemoProvider,
    /// Threads (eBay, default 5000) or phone numbers (SMSEagle, default 200).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Messages per thread (eBay) or per number (SMSEagle); default 20.
    #[arg(long)]
    pub messages: Option<usize>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.provider == DemoProvider::Smseagle {
        return crate::demo_sms::run(args.threads.unwrap_or(200), args.messages.unwrap_or(20))
            .await;
    }
    let (threads, messages) = (args.threads.unwrap_or(5000), args.messages.unwrap_or(20));
    println!(
        "threadsync demo: {} eBay threads of about {} messages, served by the simulator",
        threads, messages
    );
    if std::env::var("DATABASE_URL").is_err() {
        println!("starting a private PostgreSQL (DATABASE_URL is unset)...");
    }
    let lab = Lab::start(LabOptions {
        account: "ebay-demo".into(),
        sim: SimConfig {
            threads,
            messages,
            seed: 2026,
            ..SimConfig::default()
        },
        requests_per_second: 0.0,
        in_flight: LAB_IN_FLIGHT,
        processes: 0,
        durability: Durability::Throwaway,
        account_keys: String::new(),
    })
    .await?;
    let result = demo(&lab).await;
    lab.stop().await;
    result
}

async fn demo(lab: &Lab) -> anyhow::Result<()> {
    println!("\n1. full resync (every list page and every thread as its own durable job)");
    let calls0 = lab.account_stats().total;
    let (full, full_wall) = lab.run(Mode::Full, true).await?;
    let calls1 = lab.account_stats().total;
    summary(&full, full_wall, calls1 - calls0);

    let changed = lab.sim.mutate(
        &json!({"account": "acct-0", "new_messages": 120, "new_threads": 10, "direction": "mixed"}),
    )?;
    let new_messages = changed["newMessages"].as_array().map_or(0, |a| a.len());
    println!("\n2. meanwhile on eBay: {new_messages} new messages and 10 new threads arrive");

    println!("\n3. incremental sync (only what changed)");
    let (inc, inc_wall) = lab.run(Mode::Incremental, true).await?;
    let calls2 = lab.account_stats().total;
    summary(&inc, inc_wall, calls2 - calls1);

    let c = lab.compare().await?;
    println!("\ncompared with the simulator's data, both ways and field by field:");
    print!("{}", c.table());
    anyhow::ensure!(
        c.is_exact(),
        "the synced copy differs from the provider's data: {c}"
    );
    println!("\nthe local copy equals eBay's data.");
    Ok(())
}

fn summary(s: &RunStatus, wall: std::time::Duration, calls: u64) {
    let secs = wall.as_secs_f64();
    println!(
        "   {}: {} threads fetched, {} unchanged, {} messages written, {} HTTP calls, {:.1} s ({:.0} threads/s)",
        s.state,
        s.threads_fetched,
        s.threads_skipped,
        s.messages_written,
        calls,
        secs,
        s.threads_fetched as f64 / secs.max(1e-9)
    );
}
