//! Private PostgreSQL launcher for the demo, the benchmarks and the tests when DATABASE_URL
//! is unset: finds the local server binaries, runs initdb in a data directory of its own
//! (as an unprivileged user when we are root, since PostgreSQL refuses to run as root),
//! listens on a free loopback port, and stops the server when dropped.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub struct PrivatePg {
    bin: PathBuf,
    base: PathBuf,
    port: u16,
    user: Option<nix::unistd::User>,
    /// Server options, kept for restarts.
    opts: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Real commits (fsync on): what benchmarks measure.
    Durable,
    /// fsync off: a throwaway database for tests and demos that must be quick.
    Throwaway,
}

impl PrivatePg {
    pub fn start(durability: Durability) -> anyhow::Result<PrivatePg> {
        let bin = find_bin_dir()?;
        let user = if nix::unistd::geteuid().is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let base = std::env::temp_dir().join(format!(
            "threadsync-pg-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
        if let Some(u) = &user {
            nix::unistd::chown(&base, Some(u.uid), Some(u.gid))
                .context("handing the data directory to the postgres user")?;
        }
        let port = free_port()?;
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c shared_buffers=256MB",
            base.display()
        );
        if durability == Durability::Throwaway {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let pg = PrivatePg {
            bin,
            base,
            port,
            user,
            opts,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let log = pg.base.join("server.log").display().to_string();
        pg.run(
            "pg_ctl",
            &[
                "-D",
                &pg.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &pg.opts,
                "start",
            ],
        )?;
        Ok(pg)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server (fast shutdown: connections are cut), as an operator would.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])?;
        let log = self.base.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &self.opts,
                "start",
            ],
        )
    }

    /// Makes the server stop when process `pid` exits, even if it is killed and no Drop
    /// runs (tests keep one server per test process in a static).
    pub fn stop_when_process_exits(&self, pid: u32) -> anyhow::Result<()> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.data(),
            self.base.display()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.as_owner(&mut cmd);
        cmd.process_group(0);
        cmd.spawn().context("starting the cleanup watcher")?;
        Ok(())
    }

    fn data(&self) -> String {
        self.base.join("data").display().to_string()
    }

    fn as_owner(&self, cmd: &mut Command) {
        cmd.current_dir(&self.base);
        if let Some(u) = &self.user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(tool, args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "{tool} failed: {} {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim(),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(" (server log: {})", tail.join(" | "))
                }
            );
        }
        Ok(())
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).stdin(Stdio::null());
        self.as_owner(&mut cmd);
        cmd
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_tools = |d: &Path| {
        d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file()
    };
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, d)) => Ok(d),
        None => bail!(
            "no PostgreSQL server binaries found (initdb, pg_ctl, postgres on PATH or under /usr/lib/postgresql/*/bin): \
             install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL"
        ),
    }
}

fn unprivileged_user() -> anyhow::Result<nix::unistd::User> {
    for name in ["postgres", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return Ok(u);
        }
    }
    bail!("running as root and no unprivileged user (postgres or nobody) to run PostgreSQL as: create one or set DATABASE_URL")
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
