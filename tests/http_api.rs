//! `threadsync serve`'s API over real HTTP on loopback: scoped tokens, runs with live
//! progress over SSE, refreshes, jobs, workers, health, OpenAPI and metrics, against a
//! real database, the eBay simulator and a real worker runtime.

mod common;

use std::time::{Duration, Instant};

use common::served::Served;
use futures::StreamExt;
use serde_json::{json, Value};
use threadsync::sim::SimConfig;

const ADMIN: &str = "admin-token-for-tests";
const APP: &str = "app-token-for-tests";

struct Api {
    served: Served,
    http: reqwest::Client,
}

impl std::ops::Deref for Api {
    type Target = Served;
    fn deref(&self) -> &Served {
        &self.served
    }
}

impl Api {
    async fn start(sim_cfg: SimConfig) -> Api {
        let served = Served::start(
            sim_cfg,
            "requests_per_second = 0\nmax_in_flight = 8\n",
            "api-test-worker",
            ADMIN,
            APP,
        )
        .await;
        Api {
            served,
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, Some(ADMIN), None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(ADMIN), Some(body)).await
    }

    async fn wait_state(&self, run: i64, want: &str) -> Value {
        let t = Instant::now();
        loop {
            let (_, r) = self.get(&format!("/v1/runs/{run}")).await;
            if r["state"] == want {
                return r;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "run {run} never {want}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn close(self) {
        self.served.close().await;
    }
}

/// Errors are one JSON shape.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty() && !e.contains('\n')),
        "{body}"
    );
}

fn small() -> SimConfig {
    SimConfig {
        threads: 120,
        messages: 4,
        seed: 5,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_errors_have_one_shape() {
    let api = Api::start(small()).await;
    let (s, b) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((s, b), (200, Value::String("ok".into())));
    let (s, b) = api.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = api.call("GET", "/v1/accounts", None, None).await;
    assert_error(s, &b, 401, "unauthorized");
    let (s, b) = api.call("GET", "/v1/accounts", Some("wrong"), None).await;
    assert_error(s, &b, 401, "unauthorized");
    let (s, b) = api.call("GET", "/v1/accounts", Some(APP), None).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = api
        .call(
            "POST",
            "/v1/runs",
            Some(APP),
            Some(json!({"account": "acct-0", "mode": "full"})),
        )
        .await;
    assert_error(s, &b, 403, "forbidden");

    // Malformed JSON, an unknown field, an unknown account or run, an oversized body.
    let resp = api
        .http
        .post(format!("{}/v1/runs", api.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    let s = resp.status().as_u16();
    let b: Value = resp.json().await.expect("json");
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = api
        .post("/v1/runs", json!({"account": "acct-0", "mode": "sideways"}))
        .await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = api
        .post("/v1/runs", json!({"account": "nope", "mode": "full"}))
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = api.get("/v1/runs/999999").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = api.get("/v1/no/such/route").await;
    assert_error(s, &b, 404, "not_found");
    let big = "x".repeat(threadsync::http::BODY_LIMIT + 10);
    let (s, b) = api
        .post("/v1/runs", json!({"account": big, "mode": "full"}))
        .await;
    assert_error(s, &b, 413, "payload_too_large");
    let (s, b) = api.get("/v1/jobs?status=bogus").await;
    assert_error(s, &b, 400, "bad_request");
    assert_eq!(
        api.db
            .count("SELECT count(*) FROM threadsync.sync_runs")
            .await,
        0,
        "nothing changed"
    );

    // The OpenAPI document lists the API and holds no token.
    let (s, doc) = api.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    for path in [
        "/v1/runs",
        "/v1/runs/{id}/events",
        "/v1/jobs",
        "/v1/workers",
        "/v1/accounts/{account}/threads/{thread_id}/refresh",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let text = doc.to_string();
    assert!(!text.contains(ADMIN) && !text.contains(APP));
    api.close().await;
}

/// Reads a run's event stream to its end; returns the events' names and their data.
async fn events(api: &Api, run: i64, token: &str) -> Vec<(String, Value)> {
    let resp = api
        .http
        .get(format!("{}/v1/runs/{run}/events", api.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let t = Instant::now();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if !data.is_empty() {
                out.push((
                    name,
                    serde_json::from_str(&data).unwrap_or(Value::String(data)),
                ));
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the stream did not end"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_started_over_http_streams_its_progress_to_the_end() {
    let mut cfg = small();
    cfg.threads = 300;
    cfg.latency_ms = 8;
    let api = Api::start(cfg).await;
    let (s, b) = api
        .post("/v1/runs", json!({"account": "acct-0", "mode": "full"}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["outcome"], "started");
    let run = b["run_id"].as_i64().expect("run id");
    let (s, b) = api
        .post("/v1/runs", json!({"account": "acct-0", "mode": "full"}))
        .await;
    assert_error(s, &b, 409, "conflict");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("run {run}"))),
        "{b}"
    );

    let evs = events(&api, run, APP).await;
    let (last, progress) = evs.split_last().expect("events");
    assert_eq!(last.0, "end", "{evs:?}");
    assert_eq!(last.1["state"], "done", "{last:?}");
    assert!(!progress.is_empty(), "progress before the end: {evs:?}");
    assert!(progress.iter().all(|(n, _)| n == "progress"), "{evs:?}");
    // The numbers only grow, and the end holds them all.
    let fetched: Vec<i64> = evs
        .iter()
        .map(|(_, d)| d["threads_fetched"].as_i64().unwrap_or(-1))
        .collect();
    assert!(fetched.windows(2).all(|w| w[0] <= w[1]), "{fetched:?}");
    assert_eq!(last.1["threads_fetched"], 300, "{last:?}");
    let c = threadsync::verify::compare(
        &api.db.pool,
        "acct-0",
        &api.sim.expected("acct-0").expect("expected"),
    )
    .await
    .expect("compare");
    assert!(c.is_exact(), "{}", c.summary());

    // Accounts show the last run; workers show the live runtime.
    let (_, accounts) = api.get("/v1/accounts").await;
    assert_eq!(accounts[0]["id"], "acct-0");
    assert_eq!(accounts[0]["last_run_id"], run);
    assert_eq!(accounts[0]["last_run_state"], "done");
    let (_, workers) = api.get("/v1/workers").await;
    let names: Vec<&str> = workers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(names, ["api-test-worker"], "{workers}");
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resync_asked_during_an_incremental_run_starts_when_it_ends() {
    let mut cfg = small();
    cfg.latency_ms = 10;
    let api = Api::start(cfg).await;
    let (s, b) = api
        .post(
            "/v1/runs",
            json!({"account": "acct-0", "mode": "incremental"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let first = b["run_id"].as_i64().expect("run");
    let (s, b) = api
        .post("/v1/runs", json!({"account": "acct-0", "mode": "full"}))
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b, json!({"outcome": "queued", "after_run": first}));
    let (_, accounts) = api.get("/v1/accounts").await;
    assert_eq!(accounts[0]["queued_mode"], "full");
    api.wait_state(first, "done").await;
    let t = Instant::now();
    let next = loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM threadsync.sync_runs WHERE id > $1")
                .bind(first)
                .fetch_one(&api.db.pool)
                .await
                .expect("next run");
        if let Some(id) = id {
            break id;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the queued full run never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = api.wait_state(next, "done").await;
    assert_eq!(r["mode"], "full");
    let (_, accounts) = api.get("/v1/accounts").await;
    assert_eq!(accounts[0]["queued_mode"], Value::Null);
    api.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_jobs_pauses_and_metrics() {
    let api = Api::start(small()).await;
    let (_, b) = api
        .post("/v1/runs", json!({"account": "acct-0", "mode": "full"}))
        .await;
    let run = b["run_id"].as_i64().expect("run");
    api.wait_state(run, "done").await;

    // A web app reads a thread and asks for its refresh; asking twice while pending is one job.
    let thread: String = sqlx::query_scalar("SELECT min(thread_id) FROM threadsync.threads")
        .fetch_one(&api.db.pool)
        .await
        .expect("thread");
    let (s, t) = api
        .call(
            "GET",
            &format!("/v1/accounts/acct-0/threads/{thread}"),
            Some(APP),
            None,
        )
        .await;
    assert_eq!(s, 200, "{t}");
    assert!(!t["messages"].as_array().expect("messages").is_empty());
    let (s, paused) = api
        .call(
            "POST",
            "/v1/accounts/acct-0/pause",
            Some(ADMIN),
            Some(json!({"reason": "maintenance window"})),
        )
        .await;
    assert_eq!(s, 200, "{paused}");
    assert!(paused["paused_until"].is_string(), "{paused}");
    // Workers read an unpaced account's pause state at most a second late.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refresh = format!("/v1/accounts/acct-0/threads/{thread}/refresh");
    let (s, a) = api.call("POST", &refresh, Some(APP), None).await;
    assert_eq!(s, 202, "{a}");
    let (_, b) = api.call("POST", &refresh, Some(APP), None).await;
    assert_eq!(a["job_id"], b["job_id"], "deduplicated");
    let (s, b) = api
        .call(
            "POST",
            "/v1/accounts/nope/threads/1/refresh",
            Some(APP),
            None,
        )
        .await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = api
        .call(
            "POST",
            "/v1/accounts/acct-0/threads/%20x/refresh",
            Some(APP),
            None,
        )
        .await;
    assert_error(s, &b, 400, "bad_request");

    // Paused: the refresh parks without using an attempt, and the account says why.
    let job = a["job_id"].as_i64().expect("job");
    let t = Instant::now();
    loop {
        let (_, j) = api.get(&format!("/v1/jobs/{job}")).await;
        if j["status"] == "pending"
            && j["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("maintenance window"))
        {
            assert_eq!(j["attempts"], 0, "{j}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never parked: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, accts) = api.get("/v1/accounts").await;
    assert_eq!(accts[0]["pause_reason"], "maintenance window");
    let (s, acct) = api.post("/v1/accounts/acct-0/resume", json!({})).await;
    assert_eq!(s, 200, "{acct}");
    assert_eq!(acct["paused_until"], Value::Null);
    let t = Instant::now();
    loop {
        let (_, j) = api.get(&format!("/v1/jobs/{job}")).await;
        if j["status"] == "done" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "resume did not wake it: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Listing with filters, page by page.
    let (s, p1) = api
        .get(&format!(
            "/v1/jobs?status=done&kind=ebay.conversation&run={run}&limit=7"
        ))
        .await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["jobs"].as_array().map(Vec::len), Some(7));
    let before = p1["next_before_id"].as_i64().expect("more pages");
    let (_, p2) = api
        .get(&format!(
            "/v1/jobs?status=done&kind=ebay.conversation&run={run}&limit=7&before_id={before}"
        ))
        .await;
    let ids = |p: &Value| -> Vec<i64> {
        p["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_i64())
            .collect()
    };
    assert!(ids(&p2).iter().all(|i| *i < before), "{p2}");
    let filter = serde_json::to_string(&json!({"thread_id": thread})).expect("json");
    let (_, by_payload) = api
        .get(&format!(
            "/v1/jobs?account=acct-0&payload={}",
            urlencode(&filter)
        ))
        .await;
    let mine = ids(&by_payload);
    assert!(
        mine.contains(&job) && mine.len() >= 2,
        "the run's fetch and the refresh: {by_payload}"
    );

    // Retry and cancel.
    let (s, b) = api.post(&format!("/v1/jobs/{job}/retry"), json!({})).await;
    assert_error(s, &b, 409, "conflict");
    let (_, x) = api
        .post(
            "/v1/runs",
            json!({"account": "acct-0", "mode": "incremental"}),
        )
        .await;
    let r2 = x["run_id"].as_i64().expect("run");
    api.wait_state(r2, "done").await;
    let (s, b) = api.post("/v1/jobs/999999/cancel", json!({})).await;
    assert_error(s, &b, 404, "not_found");

    // Metrics parse as Prometheus text and count what the database holds.
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let done: i64 = api.db.count("SELECT count(*) FROM threadsync.jobs WHERE kind = 'ebay.conversation' AND status = 'done'").await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("threadsync_jobs{")
                && l.contains("kind=\"ebay.conversation\"")
                && l.contains("status=\"done\"")
        })
        .unwrap_or_else(|| panic!("no conversation/done series in:\n{text}"));
    let value: i64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert_eq!(value, done);
    assert!(
        text.lines()
            .any(|l| l.starts_with("threadsync_sync_runs{state=\"done\"} 2")),
        "{text}"
    );
    assert!(text.contains("threadsync_accounts_paused 0"), "{text}");
    api.close().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
