//! `threadsync worker --metrics ADDR` serves what that process counted, in the Prometheus
//! text format, and the counts agree with the database and the simulator.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::rig::{Opts, Provider, Rig};
use threadsync::sync::Mode;

/// `name{labels} value` lines of a scrape, by series.
fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_metrics_count_its_jobs_and_provider_requests() {
    let rig = Rig::new(Opts {
        provider: Provider::Ebay,
        workers: 0,
        ..Opts::default()
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let token = rig.sim.token("acct-0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadsync"))
        .args([
            "--config",
            &rig.config_path.display().to_string(),
            "worker",
            "--name",
            "metered",
        ])
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &rig.db.url)
        .env(Provider::Ebay.token_env(), &token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker");
    let run = rig.start(Mode::Full).await;
    let status = rig.finish(run, Duration::from_secs(60)).await;
    assert_eq!(status.state, "done", "{status:?}");
    // The run is done; the worker records outcomes before it reports the end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let _ = child.kill();
    let _ = child.wait();
    let s = series(&text);
    let done: i64 = rig
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE kind = 'ebay.conversation' AND status = 'done'")
        .await;
    assert_eq!(
        s.get("threadsync_jobs_completed_total{kind=\"ebay.conversation\"}")
            .copied(),
        Some(done as f64),
        "{text}"
    );
    assert_eq!(
        s.get("threadsync_jobs_claimed_total{kind=\"ebay.conversation\"}")
            .copied(),
        Some(done as f64),
        "no fault, no retry: {text}"
    );
    let ok = s
        .get("threadsync_provider_requests_total{provider=\"ebay\",account=\"acct-0\",status=\"ok\"}")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(
        ok,
        rig.calls() as f64,
        "one count per simulator request: {text}"
    );
    assert_eq!(ok, status.http_calls as f64);
    assert!(
        text.contains("threadsync_job_duration_seconds_count{kind=\"ebay.conversation\"}"),
        "{text}"
    );
    assert!(
        text.contains("threadsync_pacing_wait_seconds_total"),
        "{text}"
    );
    rig.close().await;
}
