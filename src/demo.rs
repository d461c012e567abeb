//! `threadsync demo`: a private PostgreSQL (unless DATABASE_URL is set), the eBay simulator
//! with 5,000 threads of about 20 messages, workers in this process; a full resync with the
//! live progress bar, new messages, an incremental sync, and a comparison with the truth.
//! `--provider smseagle` shows an SMS gateway instead (see demo_sms.rs); `--provider
//! facebook` a Facebook Page of 2,000 conversations at Meta's 2 calls/s (`facebook` below);
//! `--provider hostaway` a Hostaway account (demo_hostaway.rs).

use serde_json::json;

use crate::bench::sync::{Lab, LabOptions, FB_RATE, LAB_IN_FLIGHT};
use crate::pg::Durability;
use crate::sim::{Provider, SimConfig};
use crate::sync::flow::PACE_MARGIN;
use crate::sync::{Mode, RunStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProvider {
    Ebay,
    Smseagle,
    Facebook,
    Hostaway,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Which provider's simulator to sync from.
    #[arg(long, value_enum, default_value_t = DemoProvider::Ebay)]
    pub provider: DemoProvider,
    /// Threads (eBay, default 5000), phone numbers (SMSEagle, default 200) or
    /// conversations (Facebook, default 2000; Hostaway, default 300).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Mean messages per thread, number or conversation; default 20.
    #[arg(long)]
    pub messages: Option<usize>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.provider == DemoProvider::Smseagle {
        return crate::demo_sms::run(args.threads.unwrap_or(200), args.messages.unwrap_or(20))
            .await;
    }
    if args.provider == DemoProvider::Hostaway {
        return crate::demo_hostaway::run(args.threads.unwrap_or(300), args.messages.unwrap_or(10))
            .await;
    }
    if args.provider == DemoProvider::Facebook {
        return facebook(args.threads.unwrap_or(2000), args.messages.unwrap_or(20)).await;
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

/// `--provider facebook`: the Page's conversations by cursor, 100 per list page with each
/// one's newest 100 messages inline, a fetch of its own for a conversation with more; every
/// call paced at Meta's 2 calls/s per Page, which the simulator enforces (code 613).
async fn facebook(conversations: usize, messages: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        conversations > 0 && messages > 0,
        "--threads and --messages must be positive"
    );
    println!(
        "threadsync demo: a Facebook Page with {conversations} conversations of about {messages} messages, served by the simulator"
    );
    println!(
        "every call is paced at Meta's {FB_RATE} calls/s per Page (the simulator answers code 613 above it)"
    );
    if std::env::var("DATABASE_URL").is_err() {
        println!("starting a private PostgreSQL (DATABASE_URL is unset)...");
    }
    let lab = Lab::start(LabOptions {
        account: "fb-demo".into(),
        sim: SimConfig {
            provider: Provider::Facebook,
            threads: conversations,
            messages,
            seed: 2026,
            rps_limit: Some(FB_RATE),
            ..SimConfig::default()
        },
        requests_per_second: FB_RATE,
        in_flight: LAB_IN_FLIGHT,
        processes: 0,
        durability: Durability::Throwaway,
        account_keys: "page_id = \"acct-0\"\n".into(),
    })
    .await?;
    let result = facebook_demo(&lab).await;
    lab.stop().await;
    result
}

async fn facebook_demo(lab: &Lab) -> anyhow::Result<()> {
    let min = lab.facebook_min_calls()?;
    println!(
        "\n1. full sync: the conversation list by cursor, 100 per page, each conversation's newest \
         100 messages inline; a conversation with more gets its own fetch of its messages"
    );
    println!(
        "   at least {} calls: {} list pages, {} message pages for {} long conversations, 1 catch-up read \
         of the list's head (about {:.0} s at {FB_RATE} calls/s)",
        min.with_catch_up,
        min.list_pages,
        min.message_pages,
        min.long_conversations,
        min.with_catch_up as f64 / (FB_RATE * PACE_MARGIN)
    );
    let before = Calls::of(lab);
    let (full, full_wall) = lab.run(Mode::Full, true).await?;
    let after_full = Calls::of(lab);
    fb_summary(&full, full_wall, after_full.since(&before));

    let inbound = lab.sim.mutate(
        &json!({"account": "acct-0", "new_messages": 40, "new_threads": 5, "direction": "inbound"}),
    )?;
    let replies = lab
        .sim
        .mutate(&json!({"account": "acct-0", "new_messages": 20, "direction": "outbound"}))?;
    let count = |v: &serde_json::Value, k: &str| v[k].as_array().map_or(0, |a| a.len());
    println!(
        "\n2. meanwhile on Facebook: {} messages from people, {} replies from the Page, {} new conversations",
        count(&inbound, "new_messages"),
        count(&replies, "new_messages"),
        count(&inbound, "new_threads")
    );

    println!(
        "\n3. incremental sync: the head of the list, up to the first page with nothing changed"
    );
    let (inc, inc_wall) = lab.run(Mode::Incremental, true).await?;
    fb_summary(&inc, inc_wall, Calls::of(lab).since(&after_full));

    let c = lab.compare().await?;
    println!("\ncompared with the simulator's data, both ways and field by field:");
    print!("{}", c.table());
    anyhow::ensure!(
        c.is_exact(),
        "the synced copy differs from the Page's data: {c}"
    );
    println!("\nthe local copy equals the Page's data.");
    Ok(())
}

/// The simulator's counts of the Page's calls.
struct Calls {
    lists: u64,
    messages: u64,
    throttled: u64,
    total: u64,
}

impl Calls {
    fn of(lab: &Lab) -> Calls {
        let s = lab.account_stats();
        let on = |suffix: &str| -> u64 {
            s.by_route
                .iter()
                .filter(|(r, _)| r.ends_with(suffix))
                .flat_map(|(_, by_status)| by_status.values())
                .sum()
        };
        Calls {
            lists: on("/conversations"),
            messages: on("/messages"),
            throttled: s.by_route.values().filter_map(|m| m.get(&400)).sum(),
            total: s.total,
        }
    }

    fn since(&self, before: &Calls) -> Calls {
        Calls {
            lists: self.lists - before.lists,
            messages: self.messages - before.messages,
            throttled: self.throttled - before.throttled,
            total: self.total - before.total,
        }
    }
}

fn fb_summary(s: &RunStatus, wall: std::time::Duration, calls: Calls) {
    let secs = wall.as_secs_f64();
    println!(
        "   {}: {} conversations written, {} unchanged, {} messages written, {:.1} s ({:.0} conversations/s)",
        s.state,
        s.threads_fetched,
        s.threads_skipped,
        s.messages_written,
        secs,
        s.threads_fetched as f64 / secs.max(1e-9)
    );
    println!(
        "   {} calls: {} list pages (catch-up read included), {} message pages; {} throttled (613)",
        calls.total, calls.lists, calls.messages, calls.throttled
    );
}
