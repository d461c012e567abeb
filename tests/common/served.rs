//! `threadsync serve`'s router on 127.0.0.1:0 over a test database, with one eBay account
//! on a simulator and a worker runtime in this process that can be stopped on its own.

use std::collections::HashMap;
use std::sync::Arc;

use threadsync::config::Config;
use threadsync::http::{auth, AppState};
use threadsync::sim::{self, SimConfig, SimHandle};
use threadsync::sync::{self, Tokens};
use threadsync::worker::Worker;
use tokio_util::sync::CancellationToken;

use super::TestDb;

pub struct Served {
    pub base: String,
    pub db: TestDb,
    pub sim: SimHandle,
    stop_server: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    stop_worker: CancellationToken,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Account `acct-0` on a simulator of `sim_cfg`, with `account_keys` added to its
    /// jobs.toml entry; the worker is named `worker`; `admin`/`app` are the API's tokens.
    pub async fn start(
        sim_cfg: SimConfig,
        account_keys: &str,
        worker: &str,
        admin: &str,
        app: &str,
    ) -> Served {
        let db = TestDb::new().await;
        let sim = sim::start(sim_cfg).await.expect("simulator");
        let text = format!(
            "[queue]\nlease_secs = 10\npoll_ms = 50\n\
             [[accounts]]\nid = \"acct-0\"\nprovider = \"ebay\"\nbase_url = \"{}\"\n\
             token_env = \"UNUSED_IN_PROCESS\"\n{account_keys}",
            sim.base_url()
        );
        let cfg = Config::parse(&text, "test.toml").expect("config");
        sync::register_accounts(&db.pool, &cfg.accounts)
            .await
            .expect("register");
        let tokens = Tokens::Given(HashMap::from([("acct-0".to_string(), sim.token("acct-0"))]));
        let runtime = Worker::new(
            db.pool.clone(),
            Arc::new(cfg.queue.clone()),
            threadsync::jobs::registry(&cfg, &tokens),
            worker,
            16,
        );
        let stop_worker = CancellationToken::new();
        let w_stop = stop_worker.clone();
        let worker = tokio::spawn(async move {
            let _ = runtime.run(w_stop).await;
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let state = AppState {
            pool: db.pool.clone(),
            tokens: auth::Tokens::new(admin.into(), Some(app.into())),
            webhooks: Default::default(),
        };
        let stop_server = CancellationToken::new();
        let s_stop = stop_server.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, threadsync::http::router(state))
                .with_graceful_shutdown(async move { s_stop.cancelled().await })
                .await;
        });
        Served {
            base: format!("http://{addr}"),
            db,
            sim,
            stop_server,
            server,
            stop_worker,
            worker: Some(worker),
        }
    }

    /// Stops the worker (the server stays up): jobs then stay where they are.
    pub async fn stop_worker(&mut self) {
        self.stop_worker.cancel();
        if let Some(w) = self.worker.take() {
            let _ = w.await;
        }
    }

    pub async fn close(mut self) {
        self.stop_worker().await;
        self.stop_server.cancel();
        let _ = self.server.await;
        self.sim.shutdown().await;
        self.db.close().await;
    }
}
