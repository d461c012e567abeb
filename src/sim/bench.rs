//! `threadsync bench sim`: starts an eBay simulator in-process and drives it
//! with many keep-alive connections. The client speaks raw HTTP/1.1 over
//! tokio sockets so that, on a small machine, the measurement is dominated
//! by the simulator and not by the load generator.

use super::{start, Provider, SimConfig};
use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args, Debug)]
pub struct SimBenchArgs {
    /// Threads in the simulated account.
    #[arg(long, default_value_t = 10_000)]
    pub threads: usize,
    /// Mean messages per thread.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Share of requests that are list calls; the rest are conversation details.
    #[arg(long, default_value_t = 0.5)]
    pub list_share: f64,
    /// Page size used by both routes.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
pub struct BenchReport {
    pub threads: usize,
    pub messages_total: usize,
    pub startup_ms: f64,
    pub connections: usize,
    pub duration_secs: f64,
    pub requests: u64,
    pub list_requests: u64,
    pub detail_requests: u64,
    pub non_200: u64,
    pub requests_per_sec: f64,
    pub response_mb_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Default)]
struct WorkerResult {
    list: u64,
    detail: u64,
    non_200: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

/// One keep-alive HTTP/1.1 connection issuing GETs and reading
/// Content-Length delimited responses.
struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            body: 0..0,
        })
    }

    /// Returns the status; the body is `self.body()` until the next call.
    async fn get(&mut self, host: &str, path: &str, token: &str) -> anyhow::Result<u16> {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        self.buf.clear();
        let header_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..header_end]).context("header utf8")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .context("content-length")?;
        while self.buf.len() < header_end + len {
            self.fill().await?;
        }
        self.body = header_end..header_end + len;
        Ok(status)
    }

    fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(16 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const BASE: &str = "/commerce/message/v1";

/// Collect every FROM_MEMBERS conversation id by walking the list.
async fn collect_ids(addr: SocketAddr, token: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = RawConn::connect(addr).await?;
    let host = addr.to_string();
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let path =
            format!("{BASE}/conversation?conversation_type=FROM_MEMBERS&limit=50&offset={offset}");
        let status = conn.get(&host, &path, token).await?;
        if status != 200 {
            bail!("list returned {status}");
        }
        let v: serde_json::Value = serde_json::from_slice(conn.body())?;
        let page = v["conversations"].as_array().cloned().unwrap_or_default();
        ids.extend(
            page.iter()
                .filter_map(|t| t["conversationId"].as_str().map(str::to_string)),
        );
        if v.get("next").is_none() || page.is_empty() {
            return Ok(ids);
        }
        offset += 50;
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    addr: SocketAddr,
    token: String,
    ids: Arc<Vec<String>>,
    list_share: f64,
    limit: usize,
    seed: u64,
    deadline: Instant,
) -> anyhow::Result<WorkerResult> {
    let mut conn = RawConn::connect(addr).await?;
    let host = addr.to_string();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = WorkerResult::default();
    let max_offset = ids.len().saturating_sub(limit).max(1);
    while Instant::now() < deadline {
        let is_list = rng.gen_bool(list_share);
        let path = if is_list {
            format!(
                "{BASE}/conversation?conversation_type=FROM_MEMBERS&limit={limit}&offset={}",
                rng.gen_range(0..max_offset)
            )
        } else {
            format!(
                "{BASE}/conversation/{}?conversation_type=FROM_MEMBERS&limit={limit}",
                ids[rng.gen_range(0..ids.len())]
            )
        };
        let t0 = Instant::now();
        let status = conn.get(&host, &path, &token).await?;
        r.latencies_us
            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        r.bytes += conn.body().len() as u64;
        if status != 200 {
            r.non_200 += 1;
        }
        if is_list {
            r.list += 1;
        } else {
            r.detail += 1;
        }
    }
    Ok(r)
}

pub async fn run_bench(args: &SimBenchArgs) -> anyhow::Result<BenchReport> {
    let t0 = Instant::now();
    let handle = start(SimConfig {
        provider: Provider::Ebay,
        accounts: 1,
        threads: args.threads,
        messages: args.messages,
        seed: args.seed,
        ..SimConfig::default()
    })
    .await?;
    let startup_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let token = handle.token("acct-0");
    let ids = Arc::new(collect_ids(handle.addr, &token).await?);
    if ids.is_empty() {
        bail!("no FROM_MEMBERS conversations to query");
    }
    let messages_total = handle.truth(None)["accounts"][0]["messageCount"]
        .as_u64()
        .unwrap_or(0) as usize;
    let duration = Duration::from_secs_f64(args.duration_secs.max(0.1));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|k| {
            tokio::spawn(worker(
                handle.addr,
                token.clone(),
                ids.clone(),
                args.list_share.clamp(0.0, 1.0),
                args.limit.clamp(1, 50),
                args.seed.wrapping_add(k as u64),
                deadline,
            ))
        })
        .collect();
    let mut total = WorkerResult::default();
    for t in tasks {
        let r = t.await??;
        total.list += r.list;
        total.detail += r.detail;
        total.non_200 += r.non_200;
        total.bytes += r.bytes;
        total.latencies_us.extend(r.latencies_us);
    }
    let elapsed = started.elapsed().as_secs_f64();
    handle.shutdown().await;
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        let l = &total.latencies_us;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    };
    let requests = total.list + total.detail;
    Ok(BenchReport {
        threads: args.threads,
        messages_total,
        startup_ms,
        connections: args.connections,
        duration_secs: elapsed,
        requests,
        list_requests: total.list,
        detail_requests: total.detail,
        non_200: total.non_200,
        requests_per_sec: requests as f64 / elapsed,
        response_mb_per_sec: total.bytes as f64 / elapsed / 1e6,
        latency_p50_ms: pct(0.50),
        latency_p99_ms: pct(0.99),
    })
}

pub async fn bench_cli(args: SimBenchArgs) -> anyhow::Result<()> {
    let r = run_bench(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "eBay simulator: {} threads / {} messages, startup {:.0} ms",
            r.threads, r.messages_total, r.startup_ms
        );
        println!(
            "{} connections for {:.1} s: {} requests ({} list, {} detail, {} non-200)",
            r.connections,
            r.duration_secs,
            r.requests,
            r.list_requests,
            r.detail_requests,
            r.non_200
        );
        println!(
            "{:.0} requests/s, {:.1} MB/s of JSON, latency p50 {:.2} ms, p99 {:.2} ms",
            r.requests_per_sec, r.response_mb_per_sec, r.latency_p50_ms, r.latency_p99_ms
        );
    }
    Ok(())
}
