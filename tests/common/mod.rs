//! Shared test support: a fresh database per test (on DATABASE_URL's server, or on one
//! private server per test process), worker processes, polling helpers, and the sync
//! tests' rig ([`rig`]).
#![allow(dead_code)]

pub mod rig;
pub mod served;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sqlx::PgPool;
use threadsync::db::{self, Scratch};
use threadsync::pg::{Durability, PrivatePg};

static SERVER: OnceLock<Result<PrivatePg, String>> = OnceLock::new();

/// The server tests create their databases on.
pub fn admin_url() -> String {
    if let Ok(u) = std::env::var("DATABASE_URL") {
        if !u.trim().is_empty() {
            return u;
        }
    }
    let server = SERVER.get_or_init(|| {
        let pg = PrivatePg::start(Durability::Throwaway).map_err(|e| format!("{e:#}"))?;
        pg.stop_when_process_exits(std::process::id())
            .map_err(|e| format!("{e:#}"))?;
        Ok(pg)
    });
    match server {
        Ok(pg) => pg.admin_url(),
        Err(e) => panic!("no DATABASE_URL and no private PostgreSQL: {e}"),
    }
}

pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    scratch: Option<Scratch>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        Self::on(&admin_url()).await
    }

    pub async fn on(admin_url: &str) -> TestDb {
        let scratch = Scratch::create_on(admin_url, "ts_test")
            .await
            .expect("scratch database");
        let pool = db::connect(&scratch.url, 8).await.expect("connect");
        db::migrate(&pool).await.expect("migrate");
        TestDb {
            url: scratch.url.clone(),
            pool,
            scratch: Some(scratch),
        }
    }

    pub async fn close(mut self) {
        self.pool.close().await;
        if let Some(s) = self.scratch.take() {
            s.close().await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    pub async fn status_of(&self, id: i64) -> String {
        sqlx::query_scalar("SELECT status FROM threadsync.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("status")
    }

    /// Polls until `sql` (a count) returns `want`, or panics after `limit`.
    pub async fn wait_count(&self, sql: &str, want: i64, limit: Duration) {
        let t = Instant::now();
        loop {
            let n = self.count(sql).await;
            if n == want {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "timed out after {limit:?} waiting for `{sql}` = {want}, last {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes a jobs.toml for a test and returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "threadsync-test-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("config dir");
    let p = dir.join("jobs.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// A `threadsync worker` process; killed when dropped.
pub struct WorkerProc {
    pub child: Child,
    pub name: String,
}

impl WorkerProc {
    pub fn start(db_url: &str, config: &Path, name: &str, concurrency: usize) -> WorkerProc {
        Self::start_with_env(db_url, config, name, concurrency, &[])
    }

    pub fn start_with_env(
        db_url: &str,
        config: &Path,
        name: &str,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> WorkerProc {
        let log =
            std::env::temp_dir().join(format!("threadsync-{name}-{}.log", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_threadsync"))
            .args([
                "--config",
                &config.display().to_string(),
                "worker",
                "--name",
                name,
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .env("DATABASE_URL", db_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("spawn worker");
        WorkerProc {
            child,
            name: name.to_string(),
        }
    }

    pub fn log(&self) -> String {
        let log = std::env::temp_dir().join(format!(
            "threadsync-{}-{}.log",
            self.name,
            std::process::id()
        ));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal worker");
    }

    /// Waits for the process to exit; returns whether it did within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
