//! Smoke tests of `bench sync` and `demo` for Facebook and Hostaway, and of `bench fleet`,
//! at small sizes: they run, make the fewest calls (Hostaway: at most those plus the head
//! read), are never throttled and end exact. Not timed.

use std::process::Command;

/// Runs the CLI on DATABASE_URL's server when it is set, else on a private PostgreSQL.
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_threadsync"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run threadsync");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bench_sync_facebook_makes_the_fewest_calls_and_ends_exact() {
    // A mean of 30 messages gives some conversations more than the 100 carried inline.
    let (ok, out, err) = cli(&[
        "bench",
        "sync",
        "--provider",
        "facebook",
        "--threads",
        "300",
        "--messages",
        "30",
        "--rate-limit",
        "20",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON report");
    assert_eq!(r["provider"], "facebook");
    assert_eq!(r["conversations"], 300, "{r}");
    let min = &r["min_calls"];
    assert_eq!(min["list_pages"], 3, "{r}");
    assert!(min["long_conversations"].as_u64() > Some(0), "{r}");
    assert_eq!(
        min["with_catch_up"].as_u64(),
        min["without_catch_up"].as_u64().map(|n| n + 1)
    );
    assert_eq!(r["http_calls"], min["with_catch_up"], "{r}");
    assert_eq!(r["list_calls"], 4, "3 pages and the catch-up read: {r}");
    assert_eq!(r["message_calls"], min["message_pages"], "{r}");
    assert_eq!(r["throttled"], 0, "{r}");
    assert_eq!(r["other_errors"], 0, "{r}");
    for k in ["missing", "extra", "misfiled", "differing"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    assert!(r["floor_ratio"].as_f64().is_some_and(|f| f > 0.0), "{r}");
}

#[test]
fn demo_facebook_says_its_pace_and_ends_exact() {
    let (ok, out, err) = cli(&[
        "demo",
        "--provider",
        "facebook",
        "--threads",
        "150",
        "--messages",
        "5",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Meta's 2 calls/s per Page"), "{out}");
    assert!(out.contains("0 throttled"), "{out}");
    assert!(
        out.contains("the local copy equals the Page's data."),
        "{out}"
    );
}

#[test]
fn bench_sync_hostaway_stays_within_the_fewest_calls_and_ends_exact() {
    let (ok, out, err) = cli(&[
        "bench",
        "sync",
        "--provider",
        "hostaway",
        "--threads",
        "150",
        "--messages",
        "4",
        "--changed",
        "4",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON report");
    assert_eq!(r["provider"], "hostaway");
    for phase in ["full", "incremental"] {
        let p = &r[phase];
        let (calls, min, head) = (
            p["calls"].as_u64().unwrap_or(u64::MAX),
            p["min_calls"].as_u64().unwrap_or(0),
            p["head_read"].as_u64().unwrap_or(0),
        );
        assert!(calls >= min && calls <= min + head, "{phase}: {r}");
        assert_eq!(p["throttled_429"], 0, "{phase}: {r}");
        assert!(p["ip_window_peak"].as_u64() <= Some(15), "{phase}: {r}");
        for k in ["missing", "extra", "misfiled", "differing"] {
            assert_eq!(p[k], 0, "{phase} {k}: {r}");
        }
    }
    let inc = &r["incremental"];
    assert_eq!(inc["reservation_list_calls"], 1, "{r}");
    assert_eq!(inc["reservation_conversation_calls"], 4, "{r}");
    assert_eq!(inc["message_calls"], 4, "{r}");
    assert_eq!(r["full"]["conversations"], 150, "{r}");
}

#[test]
fn demo_hostaway_says_its_window_and_ends_exact() {
    let (ok, out, err) = cli(&["demo", "--provider", "hostaway", "--threads", "60"]);
    assert!(ok, "{err}");
    assert!(out.contains("15 requests per window per IP"), "{out}");
    assert!(out.contains("0 answered 429"), "{out}");
    assert!(
        out.contains("the local copy equals the account's data."),
        "{out}"
    );
}

#[test]
fn bench_sync_states_the_latency_floor_when_the_simulator_is_slow() {
    let (ok, out, err) = cli(&[
        "bench",
        "sync",
        "--threads",
        "100",
        "--messages",
        "2",
        "--latency-ms",
        "20",
        "--in-flight",
        "10",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON report");
    assert_eq!(r["latency_ms"], 20, "{r}");
    let calls = r["http_calls"].as_f64().unwrap_or(0.0);
    let floor = r["latency_floor_s"].as_f64().unwrap_or(0.0);
    assert!((floor - calls * 0.020 / 10.0).abs() < 1e-9, "{r}");
    // Nothing answers faster than the simulator's delay allows.
    assert!(r["latency_floor_ratio"].as_f64() >= Some(1.0), "{r}");
    for k in ["missing", "extra", "misfiled", "differing"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    let (ok, _, err) = cli(&[
        "bench",
        "sync",
        "--provider",
        "facebook",
        "--latency-ms",
        "5",
    ]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn bench_fleet_holds_every_account_to_its_rate_and_ends_exact() {
    let (ok, out, err) = cli(&[
        "bench",
        "fleet",
        "--accounts",
        "3",
        "--threads",
        "40",
        "--messages",
        "3",
        "--rate-limit",
        "20",
        "--processes",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON report");
    assert_eq!(r["accounts"], 3, "{r}");
    assert_eq!(r["accounts_exact"], 3, "{r}");
    assert_eq!(r["accounts_differing"], 0, "{r}");
    assert_eq!(r["failed_runs"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["throttled_429"], 0, "{r}");
    let accounts = r["per_account"].as_array().expect("per-account figures");
    assert_eq!(accounts.len(), 3, "{r}");
    let mut busiest = 0;
    for a in accounts {
        assert_eq!(a["exact"], true, "{a}");
        assert_eq!(a["state"], "done", "{a}");
        assert_eq!(a["threads"], 40, "{a}");
        let (calls, min) = (
            a["http_calls"].as_u64().unwrap_or(0),
            a["min_http_calls"].as_u64().unwrap_or(u64::MAX),
        );
        assert!(calls >= min, "{a}");
        assert_eq!(a["throttled_429"], 0, "{a}");
        busiest = busiest.max(calls);
    }
    // The floor is the busiest account's calls over the rate, and nothing beats it.
    let floor = r["floor_s"].as_f64().unwrap_or(0.0);
    assert!((floor - busiest as f64 / 20.0).abs() < 1e-9, "{r}");
    let (wall, ratio) = (
        r["wall_s"].as_f64().unwrap_or(0.0),
        r["floor_ratio"].as_f64().unwrap_or(0.0),
    );
    assert!((ratio - wall / floor).abs() < 1e-9, "{r}");
    assert!(ratio >= 1.0, "{r}");
    assert!(r["slots_peak"].as_i64() >= Some(1), "{r}");

    let (ok, _, err) = cli(&[
        "bench",
        "fleet",
        "--accounts",
        "3",
        "--threads",
        "10",
        "--rate-limit",
        "0",
    ]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--rate-limit"), "{err}");
}
