//! The CLI reads what the API reads: `accounts` (list, pause, resume) and `workers`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::rig::{Opts, Provider, Rig};

fn cli(rig: &Rig, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_threadsync"))
        .args(["--config", &rig.config_path.display().to_string()])
        .args(args)
        .env("DATABASE_URL", &rig.db.url)
        .env("RUST_LOG", "error")
        .output()
        .expect("run threadsync");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_workers_from_the_command_line() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 0,
        ..Opts::default()
    })
    .await;
    let (ok, out, err) = cli(&rig, &["accounts", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("acct-0 (ebay): active"), "{out}");

    let (ok, out, err) = cli(
        &rig,
        &["accounts", "pause", "acct-0", "--reason", "vendor outage"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "account acct-0 paused: vendor outage");
    let (_, out, _) = cli(&rig, &["accounts", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rows[0]["pause_reason"], "vendor outage");
    let (ok, _, err) = cli(&rig, &["accounts", "pause", "nope"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown account \"nope\""), "{err}");
    let (ok, out, err) = cli(&rig, &["accounts", "resume", "acct-0"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "account acct-0 resumed");
    let (_, out, _) = cli(&rig, &["accounts", "list"]);
    assert!(out.starts_with("acct-0 (ebay): active"), "{out}");

    let (ok, out, _) = cli(&rig, &["workers"]);
    assert!(ok);
    assert_eq!(out.trim(), "no worker is alive");
    let mut w = rig.process("cli-visible");
    let t = Instant::now();
    loop {
        let (_, out, _) = cli(&rig, &["workers", "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if rows[0]["name"] == "cli-visible" {
            assert_eq!(rows[0]["slots"], 16);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never listed: {out} {}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A clean stop removes the registration.
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait_exit(Duration::from_secs(15)));
    let (_, out, _) = cli(&rig, &["workers"]);
    assert_eq!(out.trim(), "no worker is alive");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_objects_or_plain_text_without_colour_codes() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 0,
        ..Opts::default()
    })
    .await;
    let token = rig.sim.token("acct-0");
    for format in ["json", "text"] {
        let child = Command::new(env!("CARGO_BIN_EXE_threadsync"))
            .args(["--config", &rig.config_path.display().to_string()])
            .args(["--log-format", format, "worker", "--name", "logger"])
            .env("DATABASE_URL", &rig.db.url)
            .env(Provider::Ebay.token_env(), &token)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("worker");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let out = child.wait_with_output().expect("exit");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("worker started"), "{format}: {err}");
        assert!(
            !err.contains('\u{1b}'),
            "{format}: no colour codes into a pipe: {err:?}"
        );
        if format == "json" {
            for line in err.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
    rig.close().await;
}

#[test]
fn serve_refuses_to_start_without_the_admin_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_threadsync"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("THREADSYNC_ADMIN_TOKEN")
        .env("THREADSYNC_APP_TOKEN", "only-an-app-token")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run threadsync");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("set THREADSYNC_ADMIN_TOKEN"), "{err}");
    assert!(
        !err.contains("only-an-app-token"),
        "no token in errors: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_and_sync_speak_json_for_scripts() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 1,
        ..Opts::default()
    })
    .await;
    let (ok, out, err) = cli(&rig, &["resync", "acct-0", "--json", "--follow"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["request"]["outcome"], "started", "{v}");
    assert_eq!(v["run"]["state"], "done", "{v}");
    assert_eq!(v["run"]["run_id"], v["request"]["run_id"], "{v}");
    let (ok, out, err) = cli(&rig, &["sync", "acct-0", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["mode"], "incremental", "{v}");
    assert!(v["request"]["run_id"].is_i64(), "{v}");
    assert_eq!(v["run"], serde_json::Value::Null, "no --follow: {v}");
    // As text, the final block says how long the run took.
    rig.db
        .wait_count(
            "SELECT count(*) FROM threadsync.sync_runs WHERE finished_at IS NULL",
            0,
            Duration::from_secs(30),
        )
        .await;
    let (ok, out, err) = cli(&rig, &["resync", "acct-0", "--follow"]);
    assert!(ok, "{err}");
    assert!(out.contains(" done") && out.contains("  took "), "{out}");
    rig.close().await;
}

/// `jobs retry` puts a failed job back to pending with its attempts reset; `jobs cancel`
/// cancels a pending one; both refuse a job in the wrong state with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retry_and_cancel_from_the_command_line() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 0,
        ..Opts::default()
    })
    .await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT threadsync.enqueue(kind => 'diag.noop', payload => jsonb_build_object('i', i))
           FROM generate_series(1, 2) i",
    )
    .fetch_all(&rig.db.pool)
    .await
    .expect("enqueue");
    let (failed, pending) = (ids[0].to_string(), ids[1].to_string());
    sqlx::query(
        "UPDATE threadsync.jobs SET status = 'failed', attempts = 3, finished_at = now(),
                last_error = 'boom' WHERE id = $1",
    )
    .bind(ids[0])
    .execute(&rig.db.pool)
    .await
    .expect("fail it");
    let state = |id: i64| {
        let pool = rig.db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, i32)>(
                "SELECT status, attempts FROM threadsync.jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("job")
        }
    };

    let (ok, _, err) = cli(&rig, &["jobs", "retry", &failed]);
    assert!(ok, "{err}");
    assert_eq!(state(ids[0]).await, ("pending".to_string(), 0));
    let (ok, _, err) = cli(&rig, &["jobs", "retry", &pending]);
    assert!(!ok, "a pending job is not retried");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (ok, _, err) = cli(&rig, &["jobs", "cancel", &pending]);
    assert!(ok, "{err}");
    assert_eq!(state(ids[1]).await.0, "cancelled");
    let (ok, _, err) = cli(&rig, &["jobs", "cancel", &pending]);
    assert!(!ok, "already cancelled");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (ok, _, err) = cli(&rig, &["jobs", "cancel", "999999"]);
    assert!(!ok);
    assert!(err.contains("999999"), "{err}");
    rig.close().await;
}
