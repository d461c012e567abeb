//! The CLI reads what the API reads: `accounts` (list, pause, resume), `workers`, `resync`,
//! `sync`, `jobs`, `runs`, `migrate` and `sim`, each run as the binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::rig::{Opts, Provider, Rig};
use threadsync::sync::Mode;

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

/// `migrate` registers the config's accounts (so `refresh_thread` works before any worker
/// has started), and `runs retry` reopens a failed run, which then ends done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_registers_accounts_and_runs_retry_reopens_a_run() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 1,
        ..Opts::default()
    })
    .await;
    sqlx::query("DELETE FROM threadsync.flow")
        .execute(&rig.db.pool)
        .await
        .expect("flow");
    sqlx::query("DELETE FROM threadsync.accounts")
        .execute(&rig.db.pool)
        .await
        .expect("accounts");
    let (ok, _, err) = cli(&rig, &["migrate"]);
    assert!(ok, "{err}");
    assert_eq!(
        rig.db
            .count("SELECT count(*) FROM threadsync.accounts WHERE id = 'acct-0'")
            .await,
        1
    );

    let s = rig.run(Mode::Full).await;
    // One of its jobs fails for good after the fact: the run is failed.
    sqlx::query(
        "UPDATE threadsync.jobs SET status = 'failed', last_error = 'injected'
          WHERE id = (SELECT max(id) FROM threadsync.jobs WHERE run_id = $1)",
    )
    .bind(s.run_id)
    .execute(&rig.db.pool)
    .await
    .expect("fail a job");
    sqlx::query("UPDATE threadsync.sync_runs SET state = 'failed' WHERE id = $1")
        .bind(s.run_id)
        .execute(&rig.db.pool)
        .await
        .expect("fail the run");
    let (ok, _, err) = cli(&rig, &["runs", "retry", &s.run_id.to_string()]);
    assert!(ok, "{err}");
    let done = rig.finish(s.run_id, Duration::from_secs(30)).await;
    assert_eq!(done.state, "done", "{done:?}");
    let (ok, _, err) = cli(&rig, &["runs", "retry", "987654"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    rig.close().await;
}

/// `sim` serves a simulator and prints where, with each account's credentials.
#[test]
fn sim_prints_its_url_and_credentials_and_serves() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadsync"))
        .args(["sim", "--provider", "hostaway", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the simulator");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let second = lines.next().and_then(Result::ok).unwrap_or_default();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(String::from);
    // A plain HTTP/1.0 request over loopback: the status line of the answer.
    let answer = url.as_ref().and_then(|u| {
        use std::io::{Read, Write};
        let addr = u.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).ok()?;
        conn.write_all(b"GET /v1/conversations HTTP/1.0\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        reply.lines().next().map(String::from)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("Hostaway simulator listening on http://"),
        "{first}"
    );
    assert!(
        second.contains("client_id 0") && second.contains("client secret sim-secret-acct-0"),
        "{second}"
    );
    assert!(
        answer.as_deref().is_some_and(|l| l.contains(" 403")),
        "no token: refused ({answer:?})"
    );
}
