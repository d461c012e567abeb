//! The dashboard (/ui) in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver), against the router on loopback with a real database, the eBay simulator
//! and a worker runtime in this process. Logs in, starts a run from the account page and
//! follows its live progress to the end, retries and cancels jobs with the buttons, and
//! checks that pages escape what they show. A second test checks sessions, CSRF and the
//! refusals over plain HTTP.
//!
//! Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); without them the
//! browser test fails and says so (THREADSYNC_CHROMIUM and THREADSYNC_CHROMEDRIVER name
//! other binaries). With THREADSYNC_SCREENSHOTS=1 it saves the pages to
//! docs/dashboard-*.png.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use threadsync::queue::{enqueue, NewJob};
use threadsync::sim::SimConfig;
use threadsync::sync;

const ADMIN: &str = "dashboard-admin-token-for-tests";
const APP: &str = "dashboard-app-token-for-tests";
const WORKER: &str = "dashboard-test-worker";

/// The server, its database and simulator, and a worker that can be stopped on its own.
type Dash = common::served::Served;

async fn dash(sim_cfg: SimConfig, account_keys: &str) -> Dash {
    Dash::start(sim_cfg, account_keys, WORKER, ADMIN, APP).await
}

// ------------------------------------------------------------------ the browser

/// chromedriver and the Chromium session it drives; both end when this is dropped.
struct Browser {
    c: Client,
    driver: Child,
    profile: PathBuf,
}

/// `env`'s path if set, else `name` on PATH, else `fallback`; only files that exist.
fn find_program(env: &str, name: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(fallback)).filter(|p| p.is_file()))
}

impl Browser {
    async fn start() -> Browser {
        let missing = "the dashboard test drives headless Chromium: install Debian's chromium and \
                       chromium-driver (`apt-get install -y chromium chromium-driver`; .ci/run does)";
        let chromium = find_program("THREADSYNC_CHROMIUM", "chromium", "/usr/bin/chromium")
            .unwrap_or_else(|| panic!("no chromium found: {missing}"));
        let chromedriver = find_program(
            "THREADSYNC_CHROMEDRIVER",
            "chromedriver",
            "/usr/bin/chromedriver",
        )
        .unwrap_or_else(|| panic!("no chromedriver found: {missing}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile = std::env::temp_dir().join(format!(
            "threadsync-chromium-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let log = profile.join("chromedriver.log");
        // In a process group of its own, with the Chromium it starts: dropping the Browser
        // ends them all, even when the test fails half-way.
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let mut browser_args = vec![
            "--headless".to_string(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.join("data").display()),
        ];
        if nix::unistd::geteuid().is_root() {
            browser_args.push("--no-sandbox".into());
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium.display().to_string(), "args": browser_args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        let c = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(30),
                        "chromedriver at {url} gave no Chromium session: {e} (log: {})",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser { c, driver, profile }
    }

    async fn goto(&self, url: &str) {
        self.c
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    async fn path(&self) -> String {
        let u = self.c.current_url().await.expect("current url");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    async fn text(&self, css: &str) -> String {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    async fn count(&self, css: &str) -> usize {
        self.c
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .len()
    }

    async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} to click: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Clicks a button or link that loads a new page, and waits until it has.
    async fn submit(&self, css: &str) {
        self.c
            .execute("window.__old_page = true; return true", vec![])
            .await
            .expect("mark the page");
        self.click(css).await;
        let t = Instant::now();
        loop {
            let loaded = self
                .c
                .execute(
                    "return window.__old_page === undefined && document.readyState === 'complete'",
                    vec![],
                )
                .await
                .unwrap_or(json!(false));
            if loaded == json!(true) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "clicking {css} loaded no page"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's path starts with `prefix` (after a form's redirect).
    async fn wait_path(&self, prefix: &str) -> String {
        let t = Instant::now();
        loop {
            let p = self.path().await;
            if p.starts_with(prefix) {
                return p;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "never at {prefix}: at {p}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole page as a PNG in docs/ when THREADSYNC_SCREENSHOTS=1.
    async fn screenshot(&self, name: &str) {
        if std::env::var("THREADSYNC_SCREENSHOTS").ok().as_deref() != Some("1") {
            return;
        }
        let dims = self
            .c
            .execute(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]",
                vec![],
            )
            .await
            .expect("page height");
        let h = dims[0].as_u64().unwrap_or(900).clamp(600, 2400);
        let chrome = dims[1].as_u64().unwrap_or(0).min(400);
        self.c
            .set_window_size(1280, (h + chrome) as u32)
            .await
            .expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.c.screenshot().await.expect("screenshot");
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("saved {}", path.display());
        self.c.set_window_size(1280, 900).await.expect("resize");
    }

    async fn close(self) {
        let _ = self.c.clone().close().await;
        // Drop ends chromedriver and whatever it left.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The live panel's counters, as the page shows them.
async fn panel(b: &Browser) -> HashMap<String, String> {
    let v = b
        .c
        .execute(
            "var o = {}; document.querySelectorAll('#live-run [data-field]').forEach(function (e) { o[e.dataset.field] = e.textContent.trim(); });
             o._live = document.getElementById('live-run').dataset.live; return o;",
            vec![],
        )
        .await
        .expect("read the live panel");
    v.as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn num(p: &HashMap<String, String>, k: &str) -> i64 {
    p.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the panel has no number {k}: {p:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let browser = Browser::start().await;
    // Paced at 100 requests/s, a full run of 500 threads takes about five seconds: the page
    // gets several progress events before the end.
    let sim_cfg = SimConfig {
        threads: 500,
        messages: 3,
        seed: 11,
        ..SimConfig::default()
    };
    let mut dash = dash(sim_cfg, "requests_per_second = 100\nmax_in_flight = 8\n").await;
    let b = &browser;

    // Any page without a session goes to the login form, which comes back to it.
    b.goto(&format!("{}/ui/accounts/acct-0", dash.base)).await;
    assert_eq!(b.path().await, "/ui/login?next=/ui/accounts/acct-0");
    b.c.find(Locator::Css("input[name=token]"))
        .await
        .expect("token field")
        .send_keys("wrong")
        .await
        .expect("type");
    b.submit("form.login button[type=submit]").await;
    b.wait_path("/ui/login").await;
    assert!(b.text("p.alert").await.contains("Wrong token"));
    assert!(
        b.c.get_all_cookies().await.expect("cookies").is_empty(),
        "no cookie for a wrong token"
    );
    b.c.find(Locator::Css("input[name=token]"))
        .await
        .expect("token field")
        .send_keys(ADMIN)
        .await
        .expect("type");
    b.submit("form.login button[type=submit]").await;
    b.wait_path("/ui/accounts/acct-0").await;

    // The cookie: a random session id, HttpOnly, SameSite=Strict, only for /ui.
    let cookies = b.c.get_all_cookies().await.expect("cookies");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let c = &cookies[0];
    assert_eq!(c.name(), "threadsync_session");
    assert_eq!(c.http_only(), Some(true));
    assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)");
    assert_eq!(c.path(), Some("/ui"));
    assert!(c.value().len() == 64 && !c.value().contains(ADMIN), "{c:?}");
    let js_cookies =
        b.c.execute("return document.cookie", vec![])
            .await
            .expect("js");
    assert_eq!(
        js_cookies,
        json!(""),
        "page scripts cannot read the session"
    );

    // Start a full resync with the button, and follow it live to the end.
    assert_eq!(b.count("#live-run").await, 0, "no run yet");
    b.submit("form[action='/ui/accounts/acct-0/runs'] button.primary")
        .await;
    let at = b.wait_path("/ui/accounts/acct-0?note=started-").await;
    let run: i64 = at
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("run id");
    assert_eq!(b.text("p.note").await, format!("Started run {run}."));
    let t = Instant::now();
    let mut seen: Vec<i64> = Vec::new();
    let last = loop {
        let p = panel(b).await;
        let fetched = num(&p, "threads_fetched");
        if seen.last() != Some(&fetched) {
            seen.push(fetched);
        }
        if p["_live"] == "over" {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the page never showed the end: {p:?} after {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the page showed threads_fetched {seen:?} in {:?}",
        t.elapsed()
    );
    let status = sync::run_status(&dash.db.pool, run)
        .await
        .expect("status")
        .expect("run");
    assert_eq!(status.state, "done", "{status:?}");
    assert_eq!(last["state"], "done", "{last:?}");
    // The page moved while the run ran: numbers between none and all, only growing.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let between = seen
        .iter()
        .filter(|n| **n > 0 && **n < status.threads_fetched)
        .count();
    assert!(
        between >= 2,
        "the page showed too few intermediate counts: {seen:?}"
    );
    // And it ended on the run's final counters, not on stale ones.
    assert_eq!(status.threads_fetched, 500, "{status:?}");
    for (field, want) in [
        ("pages_listed", status.pages_listed),
        ("threads_seen", status.threads_seen),
        ("threads_fetched", status.threads_fetched),
        ("threads_skipped", status.threads_skipped),
        ("threads_deleted", status.threads_deleted),
        ("messages_written", status.messages_written),
        ("http_calls", status.http_calls),
        ("bad_rows", status.bad_rows),
        ("jobs_active", status.jobs_active),
        ("jobs_failed", status.jobs_failed),
    ] {
        assert_eq!(
            num(&last, field),
            want,
            "{field}: the page {last:?}, the database {status:?}"
        );
    }
    // The run's row in the table followed too.
    assert_eq!(
        b.text(&format!(
            "#runs tr[data-run='{run}'] [data-field=threads_fetched]"
        ))
        .await,
        status.threads_fetched.to_string()
    );
    assert_eq!(
        b.text(&format!("#runs tr[data-run='{run}'] [data-field=state]"))
            .await,
        "done"
    );
    b.screenshot("dashboard-account.png").await;

    // The overview: the account's last run, the live worker, the done jobs of this minute.
    b.submit("header.top nav a[href='/ui']").await;
    b.wait_path("/ui").await;
    assert!(b
        .text("#accounts tr[data-account='acct-0']")
        .await
        .contains(&format!("run {run}")));
    assert!(b.text("#workers").await.contains(WORKER));
    assert_eq!(b.text("#workers-alive").await, "1");
    let done_now: i64 = dash
        .db
        .count("SELECT count(*) FROM threadsync.jobs WHERE status = 'done'")
        .await;
    let shown: i64 = b
        .c
        .execute(
            "return Array.from(document.querySelectorAll('#throughput tbody tr td:nth-child(2)')).reduce(function (s, td) { return s + Number(td.textContent); }, 0)",
            vec![],
        )
        .await
        .expect("throughput")
        .as_i64()
        .expect("a number");
    assert_eq!(
        shown, done_now,
        "every job of this test finished within the last minutes"
    );
    let depth_done = b.text("#depth tfoot th:nth-child(4)").await;
    assert_eq!(depth_done, done_now.to_string());
    b.screenshot("dashboard-overview.png").await;

    // A job that fails for good, then retry and cancel with the buttons.
    let failing = enqueue(
        &dash.db.pool,
        &NewJob::new("diag.fail", json!({"mode": "permanent"})),
    )
    .await
    .expect("enqueue");
    let t = Instant::now();
    while dash.db.status_of(failing).await != "failed" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "diag.fail never failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No worker from here on, so a retried job stays pending for the page to show.
    dash.stop_worker().await;
    b.submit("header.top nav a[href='/ui/jobs']").await;
    b.wait_path("/ui/jobs").await;
    let row = format!("#jobs tr[data-job='{failing}']");
    assert_eq!(b.text(&format!("{row} .badge")).await, "failed");
    b.screenshot("dashboard-jobs.png").await;
    b.c.find(Locator::Css("select[name=status]"))
        .await
        .expect("status filter")
        .select_by_value("failed")
        .await
        .expect("select failed");
    b.submit("form.filters button[type=submit]").await;
    b.wait_path("/ui/jobs?status=failed").await;
    assert_eq!(
        b.count("#jobs tbody tr[data-job]").await,
        1,
        "only the failed job"
    );
    assert!(b.text(&row).await.contains("diag: permanent failure"));
    b.submit(&format!(
        "{row} form[action='/ui/jobs/{failing}/retry'] button"
    ))
    .await;
    let at = b.wait_path("/ui/jobs?status=failed").await;
    assert!(at.ends_with(&format!("note=retried-{failing}")), "{at}");
    assert_eq!(
        b.text("p.note").await,
        format!("Job {failing} is pending again.")
    );
    assert_eq!(
        b.count("#jobs tbody tr[data-job]").await,
        0,
        "no failed job left"
    );
    assert_eq!(dash.db.status_of(failing).await, "pending");
    b.goto(&format!("{}/ui/jobs", dash.base)).await;
    assert_eq!(b.text(&format!("{row} .badge")).await, "pending");
    assert_eq!(b.count(&format!("{row} form[action$='/retry']")).await, 0);
    b.submit(&format!(
        "{row} form[action='/ui/jobs/{failing}/cancel'] button"
    ))
    .await;
    b.wait_path("/ui/jobs?note=cancelled-").await;
    assert_eq!(dash.db.status_of(failing).await, "cancelled");
    assert_eq!(b.text(&format!("{row} .badge")).await, "cancelled");
    b.submit(&format!(
        "{row} form[action='/ui/jobs/{failing}/retry'] button"
    ))
    .await;
    b.wait_path("/ui/jobs?note=retried-").await;
    assert_eq!(dash.db.status_of(failing).await, "pending");
    // Keyset pages: 50 a page, the next one below the last id shown.
    let first_page = b.count("#jobs tbody tr[data-job]").await;
    assert_eq!(first_page, 50);
    let last_id: i64 =
        b.c.find_all(Locator::Css("#jobs tbody tr[data-job]"))
            .await
            .expect("rows")
            .last()
            .expect("a row")
            .attr("data-job")
            .await
            .expect("attr")
            .and_then(|v| v.parse().ok())
            .expect("an id");
    b.submit("#older").await;
    let at = b.wait_path("/ui/jobs?before=").await;
    assert_eq!(at, format!("/ui/jobs?before={last_id}"));
    let ids: Vec<i64> = b
        .c
        .execute(
            "return Array.from(document.querySelectorAll('#jobs tbody tr[data-job]')).map(function (r) { return Number(r.dataset.job); })",
            vec![],
        )
        .await
        .expect("ids")
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|i| *i < last_id),
        "{ids:?}"
    );

    // What a page shows is escaped: a pause reason that is HTML stays text.
    b.goto(&format!("{}/ui/accounts/acct-0", dash.base)).await;
    let reason = "<img src=x onerror=\"window.pwned=1\"><b>bold</b> & more";
    b.c.find(Locator::Css("input[name=reason]"))
        .await
        .expect("reason field")
        .send_keys(reason)
        .await
        .expect("type");
    b.submit("form[action='/ui/accounts/acct-0/pause'] button")
        .await;
    b.wait_path("/ui/accounts/acct-0?note=paused").await;
    assert_eq!(b.text("h1 .pause-reason").await, reason);
    assert_eq!(b.count(".pause-reason img, .pause-reason b").await, 0);
    assert_eq!(
        b.c.execute("return window.pwned === undefined", vec![])
            .await
            .expect("js"),
        json!(true)
    );
    let stored: String =
        sqlx::query_scalar("SELECT pause_reason FROM threadsync.accounts WHERE id = 'acct-0'")
            .fetch_one(&dash.db.pool)
            .await
            .expect("reason");
    assert_eq!(stored, reason);
    b.submit("form[action='/ui/accounts/acct-0/resume'] button")
        .await;
    b.wait_path("/ui/accounts/acct-0?note=resumed").await;
    assert_eq!(b.text("h1 .badge").await, "active");

    // Logging out ends the session on the server: the old cookie opens nothing.
    b.submit("header.top form[action='/ui/logout'] button")
        .await;
    b.wait_path("/ui/login").await;
    b.goto(&format!("{}/ui/jobs", dash.base)).await;
    assert!(
        b.path().await.starts_with("/ui/login"),
        "{}",
        b.path().await
    );

    browser.close().await;
    dash.close().await;
}

// ------------------------------------------------------------------ plain HTTP

/// An HTTP client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn login(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 303);
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    set.split(';').next().expect("name=value").to_string()
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_refusals_over_http() {
    let dash = dash(
        SimConfig {
            threads: 20,
            messages: 2,
            seed: 3,
            ..SimConfig::default()
        },
        "requests_per_second = 0\nmax_in_flight = 8\n",
    )
    .await;
    let http = client();
    let base = &dash.base;

    // No session: pages go to the login form, the event stream is 401, POSTs change nothing.
    for (path, to) in [
        ("/ui", "/ui/login?next=/ui"),
        (
            "/ui/jobs?status=failed",
            "/ui/login?next=/ui/jobs%3Fstatus%3Dfailed",
        ),
        ("/ui/accounts/acct-0", "/ui/login?next=/ui/accounts/acct-0"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(
            (r.status().as_u16(), location(&r)),
            (303, to.to_string()),
            "{path}"
        );
    }
    let r = http
        .get(format!("{base}/ui/runs/1/events"))
        .send()
        .await
        .expect("events");
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(format!("{base}/ui/accounts/acct-0/runs"))
        .form(&[("mode", "full"), ("csrf", "x")])
        .send()
        .await
        .expect("post");
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (303, "/ui/login".to_string())
    );

    // Logging in: a wrong token, the app token and a POST from another site get no session.
    for (token, origin, want) in [
        ("nope", None, 401),
        (APP, None, 403),
        (ADMIN, Some("http://evil.example"), 403),
    ] {
        let mut req = http
            .post(format!("{base}/ui/login"))
            .form(&[("token", token)]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.expect("login");
        assert_eq!(r.status().as_u16(), want, "{token}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = http
        .post(format!("{base}/ui/login"))
        .header("origin", base.as_str())
        .form(&[("token", ADMIN), ("next", "//evil.example/ui")])
        .send()
        .await
        .expect("login");
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (303, "/ui".to_string()),
        "never off the site"
    );
    let set = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains(ADMIN), "{set}");
    let cookie = login(&http, base).await;

    // A page: HTML with a CSP that allows no foreign script, no framing, not cached.
    let r = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("overview");
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert!(h["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'nonce-"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let page = r.text().await.expect("page");
    let csrf = csrf_of(&page);
    assert!(!page.contains(ADMIN));

    // The session cookie opens no /v1 call: the API takes bearer tokens only.
    let r = http
        .get(format!("{base}/v1/accounts"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status().as_u16(), 401);

    // POSTs without the session's CSRF token, or from another site, are refused and change nothing.
    let runs = "SELECT count(*) FROM threadsync.sync_runs";
    let zeros = "0".repeat(64);
    for (form, origin) in [
        (vec![("mode", "full")], None),
        (vec![("mode", "full"), ("csrf", zeros.as_str())], None),
        (vec![("mode", "full"), ("csrf", &csrf[..63])], None),
        (
            vec![("mode", "full"), ("csrf", csrf.as_str())],
            Some("http://evil.example"),
        ),
    ] {
        let mut req = http
            .post(format!("{base}/ui/accounts/acct-0/runs"))
            .header("cookie", &cookie)
            .form(&form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.expect("post");
        assert_eq!(r.status().as_u16(), 403, "{form:?} {origin:?}");
    }
    for path in [
        "/ui/accounts/acct-0/pause",
        "/ui/accounts/acct-0/resume",
        "/ui/jobs/1/retry",
        "/ui/jobs/1/cancel",
        "/ui/logout",
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .header("cookie", &cookie)
            .form(&[("csrf", "wrong")])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 403, "{path}");
    }
    assert_eq!(dash.db.count(runs).await, 0, "nothing started");
    let paused: Option<String> =
        sqlx::query_scalar("SELECT pause_reason FROM threadsync.accounts WHERE id = 'acct-0'")
            .fetch_one(&dash.db.pool)
            .await
            .expect("reason");
    assert_eq!(paused, None, "nothing paused");

    // With the token (and this site's Origin) the same POST works.
    let r = http
        .post(format!("{base}/ui/accounts/acct-0/runs"))
        .header("cookie", &cookie)
        .header("origin", base.as_str())
        .form(&[("mode", "incremental"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 303);
    assert!(
        location(&r).starts_with("/ui/accounts/acct-0?note=started-"),
        "{}",
        location(&r)
    );
    assert_eq!(dash.db.count(runs).await, 1);

    // The cookie-authenticated event stream follows that run to its end. (Before the pause
    // below: workers read an unpaced account's pause up to a second late, so a job they
    // park just after a quick resume would wait out the whole pause.)
    let run: i64 = sqlx::query_scalar("SELECT max(id) FROM threadsync.sync_runs")
        .fetch_one(&dash.db.pool)
        .await
        .expect("run");
    let r = http
        .get(format!("{base}/ui/runs/{run}/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("events");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let body = tokio::time::timeout(Duration::from_secs(60), r.text())
        .await
        .expect("the stream ends with the run")
        .expect("body");
    assert!(body.contains("event: end"), "{body}");
    let r = http
        .get(format!("{base}/ui/runs/999999/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("events");
    assert_eq!(r.status().as_u16(), 404);

    // Bad input gets a page that says so; unknown things are 404; notes are fixed texts.
    for (path, want) in [
        ("/ui/jobs?status=bogus", 400),
        ("/ui/jobs?run=abc", 400),
        ("/ui/accounts/nope", 404),
        ("/ui/no/such/page", 404),
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
    let r = http
        .get(format!(
            "{base}/ui/jobs?note=%3Cscript%3Ealert(1)%3C/script%3E&kind=%3Cscript%3E"
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    let page = r.text().await.expect("page");
    assert!(
        !page.contains("<script>alert") && !page.contains("value=\"<script>"),
        "escaped"
    );
    assert!(
        page.contains("&lt;script&gt;"),
        "the kind filter shows, escaped"
    );

    // A pause reason with markup comes back escaped.
    let r = http
        .post(format!("{base}/ui/accounts/acct-0/pause"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("reason", "<script>alert(1)</script>"),
        ])
        .send()
        .await
        .expect("pause");
    assert_eq!(r.status().as_u16(), 303);
    let page = http
        .get(format!("{base}/ui/accounts/acct-0"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("account")
        .text()
        .await
        .expect("page");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped"
    );
    assert!(!page.contains("<script>alert(1)"));
    let r = http
        .post(format!("{base}/ui/accounts/acct-0/resume"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("resume");
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (303, "/ui/accounts/acct-0?note=resumed".to_string())
    );

    // Logout ends the session on the server.
    let r = http
        .post(format!("{base}/ui/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(
        (r.status().as_u16(), location(&r)),
        (303, "/ui/login".to_string())
    );
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap_or_default()
        .contains("Max-Age=0"));
    let r = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 303, "the old cookie opens nothing");
    dash.close().await;
}
