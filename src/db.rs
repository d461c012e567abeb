//! Database connections, migrations, and scratch databases for benchmarks and tests.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::pg::{Durability, PrivatePg};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// DATABASE_URL, or a one-line error saying what to set.
pub fn url_from_env() -> anyhow::Result<String> {
    match std::env::var("DATABASE_URL") {
        Ok(u) if !u.trim().is_empty() => Ok(u),
        _ => anyhow::bail!("DATABASE_URL is not set: point it at the shared PostgreSQL database, e.g. postgres://user@host:5432/threadsync"),
    }
}

/// Where the URL points, without the password, for error messages and logs.
pub fn describe(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "{}:{}/{}",
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or("")
        ),
        Err(_) => "an unparsable DATABASE_URL".into(),
    }
}

/// A statement with its bound parameters.
pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// How long a first connection may take before we say the server does not answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool on `url`, after one connection made straight to the server: a pool retries a
/// refused connection until its acquire timeout and then says only "pool timed out",
/// where the server's own answer (refused, no such database, authentication failed)
/// is what the user needs, at once.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))?
        .log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(5));
    first_connection(&opts, url).await?.close().await.ok();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(opts))
}

/// One connection, or a one-line error saying why not.
async fn first_connection(opts: &PgConnectOptions, url: &str) -> anyhow::Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(connect_error(url, &e)),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to PostgreSQL at {}: no answer within {} s",
            describe(url),
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Why connecting to `url` failed, as one line without a cause chain: PostgreSQL's own
/// message (sqlx's display of it adds the server's source line, and repeats itself as
/// its own cause), or what the socket said.
pub fn connect_error(url: &str, e: &sqlx::Error) -> anyhow::Error {
    let problem = match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused (is the server running and accepting connections there?)"
                .to_string()
        }
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    };
    anyhow::anyhow!(
        "cannot connect to PostgreSQL at {}: {problem}",
        describe(url)
    )
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// A database for one benchmark or test run: a fresh database on the DATABASE_URL server,
/// or on a private server started for the purpose. Dropped (and stopped) on `close`.
pub struct Scratch {
    pub url: String,
    admin_url: String,
    name: String,
    _server: Option<PrivatePg>,
}

impl Scratch {
    /// On DATABASE_URL's server, or on a private server started for this scratch database.
    pub async fn create(prefix: &str, durability: Durability) -> anyhow::Result<Scratch> {
        match std::env::var("DATABASE_URL") {
            Ok(u) if !u.trim().is_empty() => Self::create_on(&u, prefix).await,
            _ => {
                let pg =
                    tokio::task::spawn_blocking(move || PrivatePg::start(durability)).await??;
                let mut s = Self::create_on(&pg.admin_url(), prefix).await?;
                s._server = Some(pg);
                Ok(s)
            }
        }
    }

    /// A fresh database on the server `admin_url` points at, named `prefix` and a random
    /// suffix.
    pub async fn create_on(admin_url: &str, prefix: &str) -> anyhow::Result<Scratch> {
        let name = format!(
            "{prefix}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        check_database_name(&name)?;
        let mut admin = PgConnection::connect(admin_url)
            .await
            .map_err(|e| connect_error(admin_url, &e))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .context("creating a scratch database (the DATABASE_URL role needs CREATEDB)")?;
        Ok(Scratch {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
            _server: None,
        })
    }

    pub async fn close(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// Scratch databases go into `CREATE DATABASE` and `DROP DATABASE` as quoted identifiers:
/// only letters, digits and underscores, within PostgreSQL's 63-byte identifier limit,
/// so no name can end its quotes early or be cut short into another database's name.
fn check_database_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    anyhow::ensure!(
        ok,
        "scratch database name {name:?} must be 1 to 63 letters, digits or underscores"
    );
    Ok(())
}

/// The same server URL pointing at another database (keeps credentials and parameters).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{server}/{name}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_names_are_plain_identifiers() {
        for ok in ["ts_test_123_0a1b2c3d", "A", "x_9"] {
            assert!(super::check_database_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "a\"b", "a-b", "a b", "a;DROP", "é", long.as_str()] {
            assert!(super::check_database_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn scratch_refuses_a_bad_prefix_before_connecting() {
        // Port 1 is closed: the name is refused before any connection is tried.
        let e = super::Scratch::create_on("postgres://u@127.0.0.1:1/postgres", "x\" OR \"y")
            .await
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("letters, digits or underscores"),
            "{e}"
        );
    }

    #[test]
    fn with_database_keeps_credentials_and_params() {
        assert_eq!(
            super::with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
    }
}
