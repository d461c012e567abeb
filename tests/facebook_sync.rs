//! Facebook Pages beyond the provider contract: Graph's paging truths (privacy-filtered
//! short and empty pages, cursors that die with their item), Meta's rate-limit and error
//! signals, long conversations fetched through their own job, and signed webhooks, each
//! against real PostgreSQL and the simulator over loopback HTTP.

mod common;

use std::time::{Duration, Instant};

use common::rig::{Opts, Provider, Rig, ACCOUNT};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use threadsync::sim::facebook::WebhookTarget;
use threadsync::sim::{Limits, SimConfig};
use threadsync::sync::provider::WebhookSecrets;
use threadsync::sync::{self, Mode};

fn sim(threads: usize) -> SimConfig {
    SimConfig {
        threads,
        messages: 6,
        seed: 11,
        rps_limit: Some(10_000.0),
        ..SimConfig::default()
    }
}

fn opts(sim: SimConfig, keys: &str) -> Opts {
    Opts {
        provider: Provider::Facebook,
        sim,
        account_keys: format!("page_id = \"acct-0\"\n{keys}"),
        ..Opts::default()
    }
}

/// The simulator's conversations in list order (privacy-filtered ones included).
fn order(rig: &Rig) -> Vec<Value> {
    rig.sim.truth(Some(ACCOUNT))["accounts"][0]["conversations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Answers the simulator gave with HTTP `status` on routes containing `route`.
fn answers(rig: &Rig, route: &str, status: u16) -> u64 {
    rig.sim.stats().accounts.get(ACCOUNT).map_or(0, |a| {
        a.by_route
            .iter()
            .filter(|(r, _)| r.contains(route))
            .filter_map(|(_, s)| s.get(&status))
            .sum()
    })
}

async fn wait_paused(rig: &Rig) -> String {
    let t = Instant::now();
    loop {
        let a = sync::account_status(&rig.db.pool, ACCOUNT)
            .await
            .expect("status")
            .expect("account");
        if let (Some(_), Some(reason)) = (a.paused_until, a.pause_reason) {
            return reason;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_filtered_short_and_empty_pages_lose_nothing() {
    let cfg = SimConfig {
        drop_rate: 0.8,
        ..sim(300)
    };
    let rig = Rig::new(opts(cfg, "page_size = 10\n")).await;
    // Precondition: this dataset has pages that come back empty while `next` is present.
    let slots = order(&rig);
    let filtered = |c: &Value| c["privacy_filtered"].as_bool() == Some(true);
    let empty_pages = slots.chunks(10).filter(|p| p.iter().all(filtered)).count();
    let short_pages = slots.chunks(10).filter(|p| p.iter().any(filtered)).count();
    assert!(
        empty_pages >= 2 && short_pages >= 20,
        "{empty_pages} {short_pages}"
    );
    let s = rig.run(Mode::Full).await;
    rig.assert_exact().await;
    let c = rig.compare().await;
    let visible = slots.iter().filter(|c| !filtered(c)).count();
    assert_eq!(
        c.truth_threads, visible,
        "filtered conversations are not expected"
    );
    assert!(s.pages_listed >= 30, "every page walked: {s:?}");
    rig.close().await;
}

/// The cursor of the page after page 3 points at page 3's last conversation; deleting it
/// right after page 3 is served makes that cursor stale. With `also_before`, the last
/// conversation of page 2 goes too, so the fallback cursor is stale as well and the walk
/// starts again from the head.
async fn stale_cursor_case(also_before: bool) {
    let rig = Rig::new(Opts {
        max_in_flight: 1,
        ..opts(sim(100), "page_size = 10\n")
    })
    .await;
    let slots = order(&rig);
    let id = |i: usize| slots[i]["id"].as_str().expect("id").to_string();
    let mut victims = vec![id(29)];
    if also_before {
        victims.push(id(19));
    }
    rig.sim
        .schedule_mutation(3, json!({"account": ACCOUNT, "delete_ids": victims}));
    let s = rig.run(Mode::Full).await;
    let stale = if also_before { 2 } else { 1 };
    assert_eq!(answers(&rig, "conversations", 400), stale, "{s:?}");
    // Nothing skipped: every conversation the provider still has is held, exactly.
    let c = rig.compare().await;
    assert_eq!(
        (c.missing_threads, c.missing_messages, c.differing_threads),
        (0, 0, 0),
        "{}",
        c.summary()
    );
    assert_eq!(c.extra_threads, victims.len(), "{}", c.summary());
    // Never looping: the walk's pages stay bounded (a head restart re-reads 3 pages).
    let bound = 10 + 2 + if also_before { 3 } else { 1 };
    assert!(s.pages_listed <= bound, "{} pages: {s:?}", s.pages_listed);
    // The next full run sees the deleted ones gone.
    rig.run(Mode::Full).await;
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cursor_pages_again_from_the_page_before() {
    stale_cursor_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cursors_twice_in_a_row_restart_from_the_head() {
    stale_cursor_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_613_pauses_the_page_without_a_call_until_resumed() {
    // Configured faster than Meta's 2 calls/s per Page: the simulator answers 613.
    let cfg = SimConfig {
        rps_limit: None,
        ..sim(300)
    };
    let rig = Rig::new(Opts {
        requests_per_second: 6.0,
        max_in_flight: 1,
        ..opts(cfg, "page_size = 10\n")
    })
    .await;
    let id = rig.start(Mode::Full).await;
    let reason = wait_paused(&rig).await;
    assert!(reason.contains("613"), "{reason}");
    let calls = rig.calls();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.calls(), calls, "no call while the Page is locked out");
    assert_eq!(
        answers(&rig, "conversations", 400),
        1,
        "one 613, then silence"
    );
    rig.sim.set_limits(Limits {
        rps_limit: Some(10_000.0),
        daily_quota: None,
    });
    assert!(sync::flow::resume(&rig.db.pool, ACCOUNT)
        .await
        .expect("resume"));
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_80006_pauses_until_it_regains_access() {
    let cfg = SimConfig {
        daily_quota: Some(10),
        ..sim(300)
    };
    let rig = Rig::new(Opts {
        max_in_flight: 1,
        ..opts(cfg, "page_size = 10\n")
    })
    .await;
    let id = rig.start(Mode::Full).await;
    let reason = wait_paused(&rig).await;
    assert!(reason.contains("80006"), "{reason}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.calls(), 11, "the budget's 10 calls and the one refused");
    let a = sync::account_status(&rig.db.pool, ACCOUNT)
        .await
        .expect("status")
        .expect("account");
    let until = a.paused_until.expect("paused");
    assert!(
        until > chrono::Utc::now() + chrono::Duration::hours(20),
        "{until}"
    );
    assert!(
        rig.status(id).await.finished_at.is_none(),
        "the run waits, it does not fail"
    );
    // Meta's window moves on (with room for the rest of the run); the operator resumes
    // rather than wait for the pause to end.
    rig.sim.advance_clock(86_400.0);
    rig.sim.set_limits(Limits {
        rps_limit: Some(10_000.0),
        daily_quota: None,
    });
    assert!(sync::flow::resume(&rig.db.pool, ACCOUNT)
        .await
        .expect("resume"));
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    assert_eq!(answers(&rig, "conversations", 400), 1);
    rig.assert_exact().await;
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_pauses_the_page_with_the_reason() {
    let rig = Rig::new(opts(sim(50), "")).await;
    rig.run(Mode::Full).await;
    assert!(rig.sim.expire_token(ACCOUNT));
    let id = rig.start(Mode::Incremental).await;
    let reason = wait_paused(&rig).await;
    assert!(reason.contains("re-authorize the Page token"), "{reason}");
    assert!(
        reason.contains("FACEBOOK_TOKEN_ACCT0"),
        "names the variable: {reason}"
    );
    // The job that met the refusal failed with the reason, and with it the run (its walk
    // was that one page); nothing calls the provider until a fresh token is set.
    rig.db
        .wait_count(
            &format!(
                "SELECT count(*) FROM threadsync.jobs WHERE run_id = {id} AND status = 'failed'
                   AND last_error LIKE '%re-authorize the Page token%'"
            ),
            1,
            Duration::from_secs(20),
        )
        .await;
    let calls = rig.calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.calls(), calls);
    let s = rig.finish(id, Duration::from_secs(20)).await;
    assert_eq!(s.state, "failed", "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("re-authorize the Page token")),
        "{s:?}"
    );
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_300_new_messages_is_fetched_through_its_own_job() {
    let rig = Rig::new(opts(sim(200), "")).await;
    rig.run(Mode::Full).await;
    rig.assert_exact().await;
    let thread = order(&rig)[150]["id"].as_str().expect("id").to_string();
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": [thread], "new_messages": 300}))
        .expect("mutate");
    rig.sim.reset_stats();
    let id = rig.start(Mode::Incremental).await;
    let s = rig.finish(id, Duration::from_secs(60)).await;
    assert_eq!(s.state, "done", "{s:?}");
    rig.assert_exact().await;
    let fetches: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload->>'thread_id', status FROM threadsync.jobs
          WHERE run_id = $1 AND kind = 'facebook.conversation'",
    )
    .bind(id)
    .fetch_all(&rig.db.pool)
    .await
    .expect("jobs");
    assert_eq!(fetches, vec![(thread.clone(), "done".to_string())]);
    // 100 came inline; the job pages the other 200 and stops at the page that reaches
    // what the first run held.
    let pages = rig.calls_to("messages");
    assert!((2..=3).contains(&pages), "{pages} message pages");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_near_the_budget_slows_the_page_down() {
    let cfg = SimConfig {
        daily_quota: Some(1000),
        ..sim(200)
    };
    let rig = Rig::new(Opts {
        requests_per_second: 8.0,
        max_in_flight: 1,
        ..opts(cfg, "page_size = 10\n")
    })
    .await;
    // 95% used: the headers say so from the first answer on.
    rig.sim.set_buc_used(ACCOUNT, 950).expect("preset");
    let s = rig.run(Mode::Full).await;
    let stats = rig.sim.stats();
    let a = stats.accounts.get(ACCOUNT).expect("stats");
    // Paced at 8/s a window would hold 8 calls; slowed to a quarter, 2 (plus the first).
    assert!(a.max_rps_1s <= 3, "{} calls in one second", a.max_rps_1s);
    assert!(a.total >= 20, "{s:?}");
    assert_eq!(answers(&rig, "conversations", 400), 0, "never locked out");
    rig.assert_exact().await;
    rig.close().await;
}

const APP_SECRET: &str = "app-secret-for-tests";

fn signature(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook receiver over the rig's database, with Facebook's secrets.
async fn serve(rig: &Rig) -> (String, tokio::task::JoinHandle<()>) {
    let secrets = WebhookSecrets {
        signing: Some(APP_SECRET.into()),
        verify: Some("verify-me".into()),
    };
    rig.serve_webhooks("facebook", secrets).await
}

/// Refresh jobs (priority 100) for `thread`.
async fn refreshes(rig: &Rig, thread: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM threadsync.jobs
          WHERE kind = 'facebook.conversation' AND priority = 100 AND payload->>'thread_id' = $1",
    )
    .bind(thread)
    .fetch_one(&rig.db.pool)
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_refreshes_its_conversation_once_and_a_forged_one_nothing() {
    let rig = Rig::new(opts(sim(60), "")).await;
    rig.run(Mode::Full).await;
    let (url, server) = serve(&rig).await;
    let http = reqwest::Client::new();

    // The subscription handshake echoes the challenge for the verify token only.
    let hs = |token: &str| {
        http.get(&url).query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", token),
            ("hub.challenge", "1158201444"),
        ])
    };
    let ok = hs("verify-me").send().await.expect("handshake");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("body"), "1158201444");
    assert_eq!(hs("wrong").send().await.expect("handshake").status(), 403);

    // Held refreshes stay pending while the account is paused, so a duplicate delivery
    // would show as a second job if deduplication failed.
    assert!(sync::flow::pause_by_operator(&rig.db.pool, ACCOUNT, "test")
        .await
        .expect("pause"));
    // A worker holds "not paused" for up to a second (src/sync/flow.rs): let it lapse.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let convs = order(&rig);
    let (target, other) = (
        convs[5]["id"].as_str().expect("id").to_string(),
        convs[6].clone(),
    );
    rig.sim
        .set_webhook(Some(WebhookTarget {
            url: url.clone(),
            app_secret: APP_SECRET.into(),
            duplicate_rate: 1.0,
            shuffle: true,
        }))
        .expect("webhook");
    let added = rig
        .sim
        .mutate(&json!({"account": ACCOUNT, "thread_ids": [target], "new_messages": 2}))
        .expect("mutate");
    assert_eq!(added["new_messages"].as_array().map(Vec::len), Some(2));
    assert!(rig.sim.webhook_idle(Duration::from_secs(20)).await);
    let w = rig.sim.webhook_stats().expect("stats");
    assert_eq!(
        (w.delivered, w.duplicates_sent, w.failed),
        (2, 2, 0),
        "{w:?}"
    );
    assert_eq!(
        refreshes(&rig, &target).await,
        1,
        "two events, duplicated: one refresh"
    );

    // Forged and unsigned deliveries enqueue nothing.
    let user = other["user_id"].as_str().expect("user").to_string();
    let other_id = other["id"].as_str().expect("id").to_string();
    let body = json!({"object": "page", "entry": [{"id": ACCOUNT, "time": 1, "messaging": [
        {"sender": {"id": user}, "recipient": {"id": ACCOUNT}, "timestamp": 1,
         "message": {"mid": "m_forged", "text": "hi"}}]}]})
    .to_string();
    for sig in [Some(signature(body.as_bytes(), "not-the-secret")), None] {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        assert_eq!(req.send().await.expect("post").status(), 403);
    }
    assert_eq!(refreshes(&rig, &other_id).await, 0);
    // The same body, signed, is accepted.
    let signed = http
        .post(&url)
        .header(
            "x-hub-signature-256",
            signature(body.as_bytes(), APP_SECRET),
        )
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(signed.status(), 200);
    assert_eq!(refreshes(&rig, &other_id).await, 1);
    // Meta batches events: a delivery well over the API's 64 KiB body limit is read whole.
    let events: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"sender": {"id": user}, "recipient": {"id": ACCOUNT}, "timestamp": i,
                         "message": {"mid": format!("m_batch_{i}"), "text": "a batched event"}})
        })
        .collect();
    let batch =
        json!({"object": "page", "entry": [{"id": ACCOUNT, "time": 1, "messaging": events}]})
            .to_string();
    assert!(batch.len() > 200 * 1024, "{} bytes", batch.len());
    let big = http
        .post(&url)
        .header(
            "x-hub-signature-256",
            signature(batch.as_bytes(), APP_SECRET),
        )
        .body(batch)
        .send()
        .await
        .expect("post");
    assert_eq!(big.status(), 200);
    assert_eq!(refreshes(&rig, &other_id).await, 1, "still one refresh");

    // A person with no conversation held yet: an incremental run finds it.
    let runs_before = rig
        .db
        .count("SELECT count(*) FROM threadsync.sync_runs")
        .await;
    rig.sim
        .mutate(&json!({"account": ACCOUNT, "new_threads": 1}))
        .expect("new thread");
    assert!(rig.sim.webhook_idle(Duration::from_secs(20)).await);
    let runs_after = rig
        .db
        .count("SELECT count(*) FROM threadsync.sync_runs")
        .await;
    assert_eq!(runs_after, runs_before + 1);

    // Resumed, the refreshes and the run bring the copy level with the provider.
    rig.resume_and_settle().await;
    rig.assert_exact().await;
    server.abort();
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instagram_account_syncs_its_conversations_with_usernames() {
    let cfg = SimConfig {
        instagram_share: 1.0,
        ..sim(120)
    };
    let rig = Rig::new(opts(cfg, "platform = \"instagram\"\npage_size = 25\n")).await;
    rig.run(Mode::Full).await;
    rig.assert_exact().await;
    let (kind, title): (String, String) = sqlx::query_as(
        "SELECT reference_type, title FROM threadsync.threads ORDER BY thread_id LIMIT 1",
    )
    .fetch_one(&rig.db.pool)
    .await
    .expect("thread");
    assert_eq!(kind, "igsid");
    let truth = order(&rig);
    assert!(
        truth
            .iter()
            .any(|c| c["user_name"].as_str() == Some(title.as_str())),
        "titled by the Instagram username: {title}"
    );
    rig.close().await;
}
