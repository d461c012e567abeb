//! Hostaway beyond the provider contract: reservations that move while their list is
//! walked, conversations without a reservation, tokens revoked mid-run, the per-IP window
//! shared by a limit group, and unified webhooks, each against real PostgreSQL and the
//! simulator over loopback HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::rig::{Opts, Provider, Rig, ACCOUNT};
use common::TestDb;
use serde_json::{json, Value};
use threadsync::config::Config;
use threadsync::sim::hostaway::WebhookTarget;
use threadsync::sim::{self, RuleAction, SimConfig};
use threadsync::sync::provider::WebhookSecrets;
use threadsync::sync::{self, Mode, Tokens};
use threadsync::verify;
use threadsync::worker::Worker;
use tokio_util::sync::CancellationToken;

fn sim(threads: usize, inquiry_share: f64) -> SimConfig {
    SimConfig {
        provider: sim::Provider::Hostaway,
        threads,
        messages: 5,
        seed: 21,
        hostaway_ip_limit: 100_000,
        hostaway_account_limit: 100_000,
        hostaway_inquiry_share: inquiry_share,
        ..SimConfig::default()
    }
}

/// Small pages, so incremental walks span several; a window that never binds.
fn opts(sim: SimConfig) -> Opts {
    Opts {
        provider: Provider::Hostaway,
        sim,
        account_keys:
            "client_id = \"0\"\npage_size = 10\nwindow_requests = 100000\nwindow_secs = 1\n".into(),
        ..Opts::default()
    }
}

/// Requests the simulator answered on routes containing `route`, any account.
fn served(rig: &Rig, route: &str) -> u64 {
    rig.sim
        .stats()
        .accounts
        .values()
        .flat_map(|a| a.by_route.iter())
        .filter(|(r, _)| r.contains(route))
        .flat_map(|(_, s)| s.values())
        .sum()
}

/// The simulator's reservations, newest update first (Hostaway's default order).
fn reservations(rig: &Rig) -> Vec<Value> {
    let mut r = rig.sim.truth(Some(ACCOUNT))["accounts"][0]["reservations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    r.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["updatedOn"].as_str().unwrap_or("").to_string(),
                v["id"].as_u64(),
            )
        };
        key(b).cmp(&key(a))
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_updated_mid_walk_is_not_missed() {
    let rig = Rig::new(opts(sim(80, 0.0))).await;
    rig.run(Mode::Full).await;
    // New messages in 30 conversations move their reservations to the top: the
    // incremental walk reads three pages of ten.
    let order = reservations(&rig);
    let fresh: Vec<u64> = order[..30]
        .iter()
        .filter_map(|r| r["conversationId"].as_u64())
        .collect();
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": fresh, "new_messages": 30}))
        .expect("messages");
    // While the second page is read, an old reservation changes (no message): it moves to
    // the head, which the walk has read already.
    let moved = &order[60];
    let moved_id = moved["id"].as_u64().expect("id");
    rig.sim.on_next_request(
        "afterId=",
        RuleAction::MutateAfter(json!({"account": ACCOUNT, "reservation_ids": [moved_id]})),
    );
    let s = rig.run(Mode::Incremental).await;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM threadsync.threads WHERE reference_id = $1")
            .bind(moved_id.to_string())
            .fetch_one(&rig.db.pool)
            .await
            .expect("thread");
    assert_eq!(status.as_deref(), Some("modified"), "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_without_a_reservation_is_synced_by_incremental_sync() {
    let rig = Rig::new(opts(sim(60, 0.2))).await;
    rig.run(Mode::Full).await;
    let added = rig
        .sim
        .mutate(&json!({"account": ACCOUNT, "new_inquiries": 2}))
        .expect("inquiries");
    let ids: Vec<String> = added["newInquiries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["conversationId"].as_u64().map(|n| n.to_string()))
        .collect();
    assert_eq!(ids.len(), 2, "{added}");
    rig.sim.reset_stats();
    rig.run(Mode::Incremental).await;
    let held: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT thread_id, reference_id FROM threadsync.threads WHERE thread_id = ANY($1) ORDER BY 1",
    )
    .bind(&ids)
    .fetch_all(&rig.db.pool)
    .await
    .expect("threads");
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|(_, r)| r.is_none()), "{held:?}");
    // Found at the head of the conversation list, without walking the reservations.
    assert_eq!(served(&rig, "GET /v1/reservations/{id}/conversations"), 0);
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_run_is_minted_again_once_and_the_run_finishes() {
    let rig = Rig::new(opts(sim(60, 0.1))).await;
    rig.sim.on_next_request(
        "/messages",
        RuleAction::MutateAfter(json!({"account": ACCOUNT, "revoke_minted": true})),
    );
    let s = rig.run(Mode::Full).await;
    assert_eq!(served(&rig, "POST /v1/accessTokens"), 2, "{s:?}");
    assert!(served(&rig, "GET /v1/conversations/{id}/messages") > 60);
    rig.assert_exact().await;
    rig.close().await;
}

/// Two accounts of one simulator behind one IP (loopback), in one limit group of 15 per
/// window, each with its own 20: Hostaway's limits on a 2 s window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_in_one_limit_group_stay_under_the_ip_window() {
    let db = TestDb::new().await;
    let sim = sim::start(SimConfig {
        accounts: 2,
        threads: 30,
        messages: 3,
        seed: 5,
        hostaway_window_ms: 2000,
        ..sim(30, 0.0)
    })
    .await
    .expect("simulator");
    let mut text = String::from(
        "[queue]\nlease_secs = 3\npoll_ms = 50\n\n[limit_groups.office]\nrequests = 15\nwindow_secs = 2\n",
    );
    for i in 0..2 {
        text += &format!(
            "\n[[accounts]]\nid = \"acct-{i}\"\nprovider = \"hostaway\"\nbase_url = \"{}\"\n\
             token_env = \"HOSTAWAY_SECRET_{i}\"\nclient_id = \"{i}\"\nmax_in_flight = 10\n\
             window_requests = 20\nwindow_secs = 2\nlimit_group = \"office\"\n",
            sim.base_url()
        );
    }
    let cfg = Arc::new(Config::parse(&text, "group.toml").expect("config"));
    sync::register_accounts(&db.pool, &cfg.accounts)
        .await
        .expect("register");
    let tokens = Tokens::Given(
        (0..2)
            .map(|i| (format!("acct-{i}"), format!("sim-secret-acct-{i}")))
            .collect(),
    );
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let w = Worker::new(
                db.pool.clone(),
                Arc::new(cfg.queue.clone()),
                threadsync::jobs::registry(&cfg, &tokens),
                &format!("w{i}"),
                16,
            );
            tokio::spawn(w.run(stop.clone()))
        })
        .collect();
    let mut runs = Vec::new();
    for i in 0..2 {
        let mut tx = db.pool.begin().await.expect("begin");
        let (id, _) = sync::start_run(&mut tx, &format!("acct-{i}"), Mode::Full)
            .await
            .expect("start");
        tx.commit().await.expect("commit");
        runs.push(id);
    }
    for id in &runs {
        db.wait_count(
            &format!(
                "SELECT count(*) FROM threadsync.sync_runs WHERE id = {id} AND state = 'done'"
            ),
            1,
            Duration::from_secs(90),
        )
        .await;
    }
    let peaks = sim.hostaway_window_peaks().expect("peaks");
    let ip_peak = peaks.by_ip.values().copied().max().unwrap_or(0);
    assert!(ip_peak <= 15, "{peaks:?}");
    // Paced by the window, not far below it.
    assert!(ip_peak >= 10, "{peaks:?}");
    assert_eq!(peaks.by_account.len(), 2, "{peaks:?}");
    assert!(peaks.by_account.values().all(|n| *n <= 20), "{peaks:?}");
    assert_eq!(sim.stats().totals.throttled_429, 0);
    for i in 0..2 {
        let account = format!("acct-{i}");
        let expected = sim.expected(&account).expect("expected");
        let c = verify::compare(&db.pool, &account, &expected)
            .await
            .expect("compare");
        assert!(c.is_exact(), "{account}: {c}");
    }
    stop.cancel();
    for w in workers {
        w.await.expect("worker task").expect("worker");
    }
    sim.shutdown().await;
    db.close().await;
}

const HOOK_USER: &str = "hostaway-hook";
const HOOK_PASSWORD: &str = "hook-secret";

/// The webhook receiver over the rig's database, with Hostaway's secrets.
async fn serve(rig: &Rig) -> (String, tokio::task::JoinHandle<()>) {
    let secrets = WebhookSecrets {
        signing: Some(HOOK_PASSWORD.into()),
        verify: Some(HOOK_USER.into()),
    };
    rig.serve_webhooks("hostaway", secrets).await
}

/// Refresh jobs (priority 100) by thread.
async fn refreshes(rig: &Rig) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT payload->>'thread_id', count(*) FROM threadsync.jobs
          WHERE kind = 'hostaway.conversation' AND priority = 100 GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&rig.db.pool)
    .await
    .expect("refreshes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_for_a_new_message_refreshes_exactly_that_conversation() {
    let rig = Rig::new(opts(sim(40, 0.2))).await;
    rig.run(Mode::Full).await;
    let (url, server) = serve(&rig).await;
    // Held refreshes stay pending while the account is paused, so a duplicate delivery
    // would show as a second job if deduplication failed.
    assert!(sync::flow::pause_by_operator(&rig.db.pool, ACCOUNT, "test")
        .await
        .expect("pause"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    rig.sim
        .set_hostaway_webhook(Some(WebhookTarget {
            basic_user: Some(HOOK_USER.into()),
            basic_password: Some(HOOK_PASSWORD.into()),
            duplicate_rate: 1.0,
            shuffle: true,
            ..WebhookTarget::new(url.clone())
        }))
        .expect("webhook");
    let order = reservations(&rig);
    let target = order[7]["conversationId"].as_u64().expect("id").to_string();
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": [target.parse::<u64>().expect("id")], "new_messages": 2}))
        .expect("messages");
    assert!(rig.sim.webhook_idle(Duration::from_secs(20)).await);
    let w = rig.sim.hostaway_webhook_stats().expect("stats");
    assert_eq!(
        (w.delivered, w.duplicates_sent, w.failed),
        (2, 2, 0),
        "{w:?}"
    );
    assert_eq!(refreshes(&rig).await, vec![(target.clone(), 1)]);

    // A reservation update refreshes its conversation.
    let updated = &order[12];
    let updated_conv = updated["conversationId"].as_u64().expect("id").to_string();
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "reservation_ids": [updated["id"]]}))
        .expect("update");
    assert!(rig.sim.webhook_idle(Duration::from_secs(20)).await);
    let mut want = vec![(target.clone(), 1), (updated_conv, 1)];
    want.sort();
    assert_eq!(refreshes(&rig).await, want);

    // Without the credentials, or with wrong ones, nothing is enqueued.
    let body = json!({"event": "message.received", "accountId": 0,
                      "data": {"conversationId": order[20]["conversationId"], "reservationId": order[20]["id"]}})
    .to_string();
    let http = reqwest::Client::new();
    for auth in [None, Some(("hostaway-hook", "wrong"))] {
        let mut req = http.post(&url).body(body.clone());
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        assert_eq!(req.send().await.expect("post").status(), 403);
    }
    assert_eq!(refreshes(&rig).await, want);

    // A conversation threadsync cannot know yet is answered 503, so Hostaway delivers it
    // again, and an incremental run is started to find it.
    let runs_before = rig
        .db
        .count("SELECT count(*) FROM threadsync.sync_runs")
        .await;
    let unknown = json!({"event": "message.received", "accountId": 0,
                         "data": {"conversationId": 987654321, "reservationId": null}})
    .to_string();
    let answer = http
        .post(&url)
        .basic_auth(HOOK_USER, Some(HOOK_PASSWORD))
        .body(unknown)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 503);
    assert_eq!(
        rig.db
            .count("SELECT count(*) FROM threadsync.sync_runs")
            .await,
        runs_before + 1
    );

    rig.resume_and_settle().await;
    rig.assert_exact().await;
    server.abort();
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_row_keeps_its_reservations_listing_and_dates() {
    let rig = Rig::new(opts(sim(20, 0.0))).await;
    rig.run(Mode::Full).await;
    let r = &reservations(&rig)[3];
    let details: Value =
        sqlx::query_scalar("SELECT details FROM threadsync.threads WHERE reference_id = $1")
            .bind(r["id"].as_u64().expect("id").to_string())
            .fetch_one(&rig.db.pool)
            .await
            .expect("thread");
    assert_eq!(
        details,
        json!({"listing_id": r["listingMapId"], "arrival_date": r["arrivalDate"],
               "departure_date": r["departureDate"]})
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_run_fetches_each_changed_conversation_once() {
    let rig = Rig::new(opts(sim(150, 0.0))).await;
    rig.run(Mode::Full).await;
    let order = reservations(&rig);
    let targets: Vec<u64> = order[40..44]
        .iter()
        .filter_map(|r| r["conversationId"].as_u64())
        .collect();
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": targets, "new_messages": 4}))
        .expect("messages");
    rig.sim.reset_stats();
    let s = rig.run(Mode::Incremental).await;
    let fetches: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT payload->>'thread_id', attempts::int8, last_error FROM threadsync.jobs
          WHERE run_id = $1 AND kind = 'hostaway.conversation' ORDER BY 1",
    )
    .bind(s.run_id)
    .fetch_all(&rig.db.pool)
    .await
    .expect("jobs");
    // A conversation both lists name may get a second job; it reads nothing.
    assert!((4..=8).contains(&fetches.len()), "{fetches:?}");
    assert_eq!(
        served(&rig, "GET /v1/conversations/{id}/messages"),
        4,
        "one call per changed conversation: {fetches:?}"
    );
    // The reservations' page, the conversations' head, one list per changed reservation.
    assert_eq!(rig.calls(), 4 + 6, "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}
