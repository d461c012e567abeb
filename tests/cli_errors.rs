//! Every error a user can cause at the command line: a non-zero exit and exactly one line
//! on stderr naming the problem. These run the built binary.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{admin_url, write_config, TestDb};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use threadsync::queue::{enqueue_batch, NewJob};

/// A closed port on loopback: connecting is refused at once.
const CLOSED: &str = "postgres://threadsync@127.0.0.1:1/threadsync";

/// A directory without a jobs.toml, so the binary never picks one up from the checkout.
fn empty_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "threadsync-cli-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The binary with a clean environment for what these tests control: no config or
/// database from the caller, the default log level.
fn threadsync(args: &[&str], database_url: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threadsync"));
    cmd.args(args)
        .current_dir(empty_dir())
        .env_remove("THREADSYNC_CONFIG")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null());
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd
}

fn run(args: &[&str], database_url: Option<&str>) -> Output {
    threadsync(args, database_url)
        .output()
        .expect("run threadsync")
}

/// Asserts the command failed with exactly one line on stderr, `error: ...`, that holds
/// every one of `words`; returns the line.
#[track_caller]
fn one_line_error(out: &Output, words: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected a failure, got {:?}; stderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got: {stderr:?}"
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for w in words {
        assert!(line.contains(w), "{line:?} does not say {w:?}");
    }
    line.to_string()
}

fn config_path(p: &Path) -> String {
    p.display().to_string()
}

/// jobs.toml numbers out of range fail at load, at the line of the key itself.
#[test]
fn config_numbers_out_of_range_fail_at_the_line_of_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("queue", "lease_secs", "1"),
        ("queue", "lease_secs", "86401"),
        ("queue", "poll_ms", "0"),
        ("queue", "poll_ms", "1001"),
        ("queue", "concurrency", "0"),
        ("queue", "concurrency", "10001"),
        ("queue", "shutdown_grace_secs", "-1"),
        ("queue", "shutdown_grace_secs", "86401"),
        ("queue", "retention_hours", "0"),
        ("queue", "retention_hours", "87601"),
        ("queue", "prune_batch", "0"),
        ("queue", "prune_batch", "-1"),
        ("queue", "prune_batch", "100001"),
        ("retry", "max_attempts", "0"),
        ("retry", "max_attempts", "1001"),
        ("retry", "backoff_base_ms", "0"),
        ("retry", "backoff_cap_ms", "86400001"),
        ("kinds.\"diag.fail\"", "concurrency", "0"),
        ("kinds.\"diag.fail\"", "concurrency", "10001"),
        ("kinds.\"diag.fail\"", "max_attempts", "0"),
    ];
    for (table, key, bad) in cases {
        // The key sits on line 4, below a comment, its table's header and another key.
        let other = if *key == "max_attempts" {
            "backoff_base_ms = 1000"
        } else {
            "max_attempts = 3"
        };
        let other = if *table == "queue" {
            "synchronous_commit = true"
        } else {
            other
        };
        let path = write_config(&format!("# test\n[{table}]\n{other}\n{key} = {bad}\n"));
        let out = run(
            &["--config", &config_path(&path), "enqueue", "diag.noop"],
            None,
        );
        let line = one_line_error(
            &out,
            &[&format!("{}:4: ", config_path(&path)), key, "must be"],
        );
        assert!(line.contains(&format!("(got {bad})")), "{line}");
    }
    // The backoff cap below the base: at the cap's line.
    let path = write_config("[retry]\nbackoff_base_ms = 5000\nbackoff_cap_ms = 1000\n");
    let out = run(
        &["--config", &config_path(&path), "enqueue", "diag.noop"],
        None,
    );
    one_line_error(
        &out,
        &[
            &format!("{}:3: ", config_path(&path)),
            "backoff_cap_ms (1000) must be at least backoff_base_ms (5000)",
        ],
    );
}

/// A schedule of a kind nobody runs, or for an account that is not configured, fails at
/// load instead of at every tick.
#[test]
fn schedules_of_unknown_kinds_or_accounts_fail_at_load() {
    let schedule = "[[schedules]]\nname = \"nightly\"\ncron = \"0 0 3 * * *\"\n";
    let path = write_config(&format!("{schedule}kind = \"sync.begin\"\n"));
    let out = run(
        &["--config", &config_path(&path), "enqueue", "diag.noop"],
        None,
    );
    one_line_error(
        &out,
        &[
            &format!("{}:4: ", config_path(&path)),
            "schedule \"nightly\"",
            "\"sync.begin\" is not a job kind",
            "sync.start",
        ],
    );

    let account = "[[accounts]]\nid = \"ebay-main\"\nprovider = \"ebay\"\nbase_url = \"https://api.ebay.com\"\ntoken_env = \"EBAY_TOKEN_MAIN\"\n";
    let path = write_config(&format!(
        "{account}{schedule}kind = \"sync.start\"\npayload = {{ account = \"ebay-mian\", mode = \"full\" }}\n"
    ));
    let out = run(
        &["--config", &config_path(&path), "enqueue", "diag.noop"],
        None,
    );
    one_line_error(
        &out,
        &[
            &format!("{}:10: ", config_path(&path)),
            "account \"ebay-mian\" is not configured",
            "ebay-main",
        ],
    );
}

fn account_config(token_env: &str) -> PathBuf {
    write_config(&format!(
        "[[accounts]]\nid = \"ebay-main\"\nprovider = \"ebay\"\nbase_url = \"https://api.ebay.com\"\n\
         token_env = \"{token_env}\"\n\
         [[schedules]]\nname = \"ebay-main-incremental\"\ncron = \"0 */2 * * * *\"\nkind = \"sync.start\"\n\
         payload = {{ account = \"ebay-main\", mode = \"incremental\" }}\n"
    ))
}

/// A worker that could not run an account's jobs refuses to start, naming the account
/// and its variable, before it even connects.
#[test]
fn a_worker_refuses_to_start_without_an_accounts_token() {
    let var = format!("TS_TEST_TOKEN_{:08x}", rand::random::<u32>());
    let path = account_config(&var);
    let args = ["--config", &config_path(&path), "worker"];
    let out = run(&args, Some(CLOSED));
    one_line_error(
        &out,
        &[
            "\"ebay-main\"",
            &var,
            "is not set",
            "--skip-accounts-without-token",
        ],
    );
    let out = threadsync(&args, Some(CLOSED))
        .env(&var, "")
        .output()
        .expect("run");
    one_line_error(&out, &["\"ebay-main\"", &var, "is empty"]);
}

/// With --skip-accounts-without-token it starts, and says once which accounts it skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_skip_accounts_without_a_token_starts_and_says_so_once() {
    let db = TestDb::new().await;
    let var = format!("TS_TEST_TOKEN_{:08x}", rand::random::<u32>());
    let path = account_config(&var);
    let mut child = threadsync(
        &[
            "--config",
            &config_path(&path),
            "worker",
            "--skip-accounts-without-token",
        ],
        Some(&db.url),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn worker");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.iter().any(|l: &String| l.contains("worker started")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("the worker did not start; its log: {lines:#?}"),
        }
    }
    // A moment more, in case it would say it again.
    std::thread::sleep(Duration::from_millis(1500));
    lines.extend(rx.try_iter());
    let skipped: Vec<&String> = lines.iter().filter(|l| l.contains("skipping")).collect();
    assert_eq!(skipped.len(), 1, "{lines:#?}");
    assert!(
        skipped[0].contains("ebay-main") && skipped[0].contains(&var),
        "{}",
        skipped[0]
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}: {lines:#?}");
    db.close().await;
}

/// enqueue refuses an empty kind and a payload that is JSON but not an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_refuses_an_empty_kind_and_a_payload_that_is_not_an_object() {
    let db = TestDb::new().await;
    let out = run(&["enqueue", ""], Some(&db.url));
    one_line_error(&out, &["kind must not be empty"]);
    let out = run(&["enqueue", "  "], Some(&db.url));
    one_line_error(&out, &["kind must not be empty"]);
    for payload in ["[1, 2]", "42", "\"text\"", "null"] {
        let out = run(
            &["enqueue", "diag.noop", "--payload", payload],
            Some(&db.url),
        );
        one_line_error(&out, &["--payload must be a JSON object"]);
    }
    let out = run(&["enqueue", "diag.noop", "--payload", "{"], Some(&db.url));
    one_line_error(&out, &["--payload is not valid JSON"]);
    assert_eq!(db.count("SELECT count(*) FROM threadsync.jobs").await, 0);
    // What is right still goes in.
    let out = run(
        &["enqueue", "diag.noop", "--payload", "{\"k\": 1}"],
        Some(&db.url),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(db.count("SELECT count(*) FROM threadsync.jobs").await, 1);
    db.close().await;
}

/// `threadsync jobs list --json | head -1`: the reader goes away early, and the command
/// ends quietly and successfully instead of panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_into_a_pipe_closed_early_exits_quietly() {
    let db = TestDb::new().await;
    // Far more output than a pipe buffers, so the command is still writing when the
    // reader goes.
    let jobs: Vec<NewJob> = (0..3000)
        .map(|i| NewJob::new("diag.noop", json!({ "i": i, "pad": "x".repeat(200) })))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.expect("enqueue");
    for args in [
        &["jobs", "list", "--json", "--limit", "3000"][..],
        &["jobs", "list", "--limit", "3000"][..],
    ] {
        let mut child = threadsync(args, Some(&db.url))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("first line");
        assert!(!first.is_empty());
        drop(stdout);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        let status = child.wait().expect("wait");
        assert!(status.success(), "{args:?}: {status:?}, stderr: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
    db.close().await;
}

/// A closed port fails at once, saying the connection was refused.
#[test]
fn an_unreachable_database_fails_at_once_saying_the_connection_was_refused() {
    let t = Instant::now();
    let out = run(&["jobs", "list"], Some(CLOSED));
    one_line_error(&out, &["127.0.0.1:1", "connection refused"]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

/// A missing database or an unknown role: PostgreSQL's message, once, without sqlx's
/// "at line N" of the server's source.
#[test]
fn a_missing_database_or_role_prints_the_servers_message_once() {
    let missing = threadsync::db::with_database(&admin_url(), "ts_no_such_database");
    let out = run(&["jobs", "list"], Some(&missing));
    let line = one_line_error(&out, &["database \"ts_no_such_database\" does not exist"]);
    assert_eq!(line.matches("does not exist").count(), 1, "{line}");
    assert!(!line.contains("at line"), "{line}");

    // The same server as another (unknown) role, where the URL names a TCP host.
    use std::str::FromStr;
    let opts = sqlx::postgres::PgConnectOptions::from_str(&admin_url()).expect("admin url");
    if !opts.get_host().starts_with('/') {
        let url = format!(
            "postgres://ts_no_such_role@{}:{}/postgres",
            opts.get_host(),
            opts.get_port()
        );
        let out = run(&["jobs", "list"], Some(&url));
        let line = one_line_error(&out, &["ts_no_such_role"]);
        assert_eq!(line.matches("ts_no_such_role").count(), 1, "{line}");
        assert!(!line.contains("at line"), "{line}");
    }
}

/// `jobs list` says when it stopped at `--limit` and how to read on; `jobs show` of a job
/// that succeeded after a retry does not present its old error as current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_list_says_where_it_stopped_and_show_dates_old_errors() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..5)
        .map(|i| NewJob::new("diag.noop", json!({ "i": i })))
        .collect();
    enqueue_batch(&db.pool, &jobs).await.expect("enqueue");
    let text = |out: Output| {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = text(run(&["jobs", "list", "--limit", "2"], Some(&db.url)));
    let note = first.lines().last().unwrap_or_default().to_string();
    assert!(
        note.starts_with("stopped at --limit 2; older jobs: --before-id "),
        "{first}"
    );
    let before = note.rsplit(' ').next().unwrap_or_default().to_string();
    let next = text(run(
        &["jobs", "list", "--limit", "2", "--before-id", &before],
        Some(&db.url),
    ));
    assert_eq!(
        next.lines().count(),
        4,
        "header, two jobs, the note: {next}"
    );
    assert!(
        !next.contains(&format!("\n{before:>8} ")),
        "no job repeated: {next}"
    );
    let all = text(run(&["jobs", "list", "--limit", "10"], Some(&db.url)));
    assert!(!all.contains("stopped at"), "{all}");
    assert_eq!(all.lines().count(), 6, "{all}");

    let id: i64 = sqlx::query_scalar(
        "UPDATE threadsync.jobs SET status = 'done', attempts = 2, finished_at = now(),
                last_error = 'connection reset'
          WHERE id = (SELECT min(id) FROM threadsync.jobs) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a done job");
    let shown = text(run(&["jobs", "show", &id.to_string()], Some(&db.url)));
    assert!(
        shown.contains("earlier error (then succeeded):  connection reset"),
        "{shown}"
    );
    db.close().await;
}
