//! Load generator for Bulwark over its OJS HTTP binding.
//!
//! Workloads (all by default, in this order, or the ones named on the command line):
//!
//! - `fsync`: the machine's single-thread fsync rate (4 KiB write + `sync_data`, ~3 s) on the
//!   filesystem of the data folder, the ceiling of any one-commit-per-request design.
//! - `w1`: durable enqueue, 20,000 jobs with ~200-byte args from 16 keep-alive producers.
//! - `w2`: drain of what W1 left: 8 workers fetch a batch and ack each job until empty.
//! - `w3-mixed`: 8 closed-loop producers and 8 workers for 20 s; end-to-end latency is from the
//!   producer's send to the worker's ack answer.
//! - `w3-fixed`: open-loop producers at a fixed total rate (500 jobs/s) and 8 workers for 20 s;
//!   end-to-end latency is from the scheduled send time to the ack answer.
//!
//! By default the bench starts its own `bulwark` (the release binary Cargo built for the bench)
//! in a temporary folder with `workers = 0` and the default `[queue]` settings, and kills it at
//! the end; `--url URL --key KEY` target a running server instead (loopback only).
//!
//! Every HTTP exchange is one keep-alive HTTP/1.1 connection per producer or worker, driven by
//! hyper's connection-level client on a single-threaded runtime (the leanest client we measured;
//! `--client reqwest` switches to reqwest for comparison). Latencies are kept as sorted vectors.
//!
//! `--tls on` serves the self-started server over HTTPS (TLS 1.3, a throw-away CA and server
//! certificate made with rcgen) and wraps every bench connection in rustls (ring); each
//! producer or worker does one handshake and keeps its connection.
//!
//! `cargo bench --bench load -- --help` lists the options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

const JOBS_PATH: &str = "/ojs/v1/jobs";
const FETCH_PATH: &str = "/ojs/v1/workers/fetch";
const ACK_PATH: &str = "/ojs/v1/workers/ack";
const HEALTH_PATH: &str = "/ojs/v1/health";

/// Longest any single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest W1 or W2 may run, whatever the job count.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// How long W3 waits after its producers stop for the workers to finish the backlog.
const W3_GRACE: Duration = Duration::from_secs(10);
/// Hard cap on the jobs one W3 run may enqueue (closed-loop producers are time-bounded too).
const W3_MAX_JOBS: usize = 5_000_000;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    Fsync,
    W1,
    W2,
    W3Mixed,
    W3Fixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientKind {
    Hyper,
    Reqwest,
}

#[derive(Clone, Debug)]
struct Opts {
    url: Option<String>,
    key: Option<String>,
    /// W1 producers.
    concurrency: usize,
    /// W1 jobs.
    jobs: usize,
    /// W3 run time.
    duration: Duration,
    /// W3 fixed total rate, jobs/s.
    rate: f64,
    /// W2 and W3 workers.
    workers: usize,
    /// W3 producers.
    producers: usize,
    /// Fetch `count` in W2.
    batch: usize,
    /// Fetch `count` in W3.
    w3_batch: usize,
    /// Worker sleep after an empty fetch (W3).
    idle_sleep: Duration,
    /// W3 workers long-poll: `wait_ms` on every fetch (0: plain fetches and `idle_sleep`).
    wait_ms: u64,
    /// Size of the serialized `args` array.
    arg_bytes: usize,
    fsync_secs: f64,
    client: ClientKind,
    client_threads: usize,
    /// Serve and speak HTTPS.
    tls: bool,
    workloads: Vec<Workload>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            url: None,
            key: None,
            concurrency: 16,
            jobs: 20_000,
            duration: Duration::from_secs(20),
            rate: 500.0,
            workers: 8,
            producers: 8,
            batch: 50,
            w3_batch: 10,
            idle_sleep: Duration::from_millis(1),
            wait_ms: 0,
            arg_bytes: 200,
            fsync_secs: 3.0,
            client: ClientKind::Hyper,
            client_threads: 1,
            tls: false,
            workloads: Vec::new(),
        }
    }
}

const USAGE: &str = "\
usage: cargo bench --bench load -- [options] [workloads]

workloads: fsync w1 w2 w3-mixed w3-fixed (w3 = both w3 workloads, all = everything; default all)

options:
  --url URL              target a running server (http://127.0.0.1:PORT; loopback only)
  --key KEY              its API key (or BULWARK_KEY in the environment)
  --concurrency N        W1 producers (16)
  --jobs N               W1 jobs (20000)
  --duration-secs S      W3 run time (20)
  --rate R               W3 fixed total enqueue rate, jobs/s (500)
  --workers N            W2/W3 workers (8)
  --producers N          W3 producers (8)
  --batch N              W2 fetch count (50: throughput flattens from 25 on)
  --w3-batch N           W3 fetch count (10)
  --idle-sleep-us US     W3 worker sleep after an empty fetch, microseconds (1000; 0 = busy
                         polling; tokio's timer rounds sleeps up to whole milliseconds)
  --wait-ms MS           W3 workers long-poll with this wait_ms on every fetch (0 = plain
                         fetches with --idle-sleep-us between empty ones)
  --arg-bytes N          serialized args size, bytes (200)
  --fsync-secs S         fsync workload length (3)
  --client hyper|reqwest HTTP client (hyper)
  --client-threads N     client runtime threads (1 = single-threaded runtime)
  --tls on|off           HTTPS (TLS 1.3) to the self-started server (off; hyper client only)
";

fn parse_opts() -> Opts {
    let mut o = Opts::default();
    let mut args = std::env::args().skip(1);
    let mut names: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if arg == "--bench" {
            continue;
        }
        if arg == "--help" || arg == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let Some(flag) = arg.strip_prefix("--") else {
            names.push(arg);
            continue;
        };
        let (flag, value) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = args
                    .next()
                    .unwrap_or_else(|| die(&format!("--{flag} needs a value")));
                (flag.to_string(), v)
            }
        };
        let num = |v: &str| -> f64 {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .unwrap_or_else(|| die(&format!("--{flag}: not a positive number: {v}")))
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let int = |v: &str| -> usize { num(v).round() as usize };
        match flag.as_str() {
            "url" => o.url = Some(value),
            "key" => o.key = Some(value),
            "concurrency" => o.concurrency = int(&value),
            "jobs" => o.jobs = int(&value),
            "duration-secs" => o.duration = Duration::from_secs_f64(num(&value)),
            "rate" => o.rate = num(&value),
            "workers" => o.workers = int(&value),
            "producers" => o.producers = int(&value),
            "batch" => o.batch = int(&value),
            "w3-batch" => o.w3_batch = int(&value),
            "idle-sleep-us" => {
                // 0 is allowed: busy polling (a yield between fetches).
                o.idle_sleep = Duration::from_micros(value.parse().unwrap_or_else(|_| {
                    die(&format!("--idle-sleep-us: not a whole number: {value}"))
                }));
            }
            "wait-ms" => {
                o.wait_ms = value
                    .parse()
                    .unwrap_or_else(|_| die(&format!("--wait-ms: not a whole number: {value}")));
            }
            "arg-bytes" => o.arg_bytes = int(&value),
            "fsync-secs" => o.fsync_secs = num(&value),
            "client" => {
                o.client = match value.as_str() {
                    "hyper" => ClientKind::Hyper,
                    "reqwest" => ClientKind::Reqwest,
                    _ => die("--client is hyper or reqwest"),
                }
            }
            "client-threads" => o.client_threads = int(&value),
            "tls" => {
                o.tls = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => die("--tls is on or off"),
                }
            }
            _ => die(&format!("unknown option --{flag}\n\n{USAGE}")),
        }
    }
    for name in names {
        match name.to_ascii_lowercase().as_str() {
            "all" => o.workloads.extend([
                Workload::Fsync,
                Workload::W1,
                Workload::W2,
                Workload::W3Mixed,
                Workload::W3Fixed,
            ]),
            "fsync" => o.workloads.push(Workload::Fsync),
            "w1" => o.workloads.push(Workload::W1),
            "w2" => o.workloads.push(Workload::W2),
            "w3" => o.workloads.extend([Workload::W3Mixed, Workload::W3Fixed]),
            "w3-mixed" | "w3mixed" | "mixed" => o.workloads.push(Workload::W3Mixed),
            "w3-fixed" | "w3fixed" | "fixed" => o.workloads.push(Workload::W3Fixed),
            other => die(&format!("unknown workload {other}\n\n{USAGE}")),
        }
    }
    if o.workloads.is_empty() {
        o.workloads = vec![
            Workload::Fsync,
            Workload::W1,
            Workload::W2,
            Workload::W3Mixed,
            Workload::W3Fixed,
        ];
    }
    o.workloads.sort();
    o.workloads.dedup();
    if o.key.is_none() {
        o.key = std::env::var("BULWARK_KEY").ok();
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("load: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------------
// Time, latencies, errors

/// Nanoseconds since the bench started (one monotonic clock shared by producers and workers).
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn instant_of_ns(ns: u64) -> Instant {
    // `now_ns` initialises the base; derive the instant from it.
    let now = now_ns();
    let now_i = Instant::now();
    if ns >= now {
        now_i + Duration::from_nanos(ns - now)
    } else {
        now_i - Duration::from_nanos(now - ns)
    }
}

/// Latency samples in nanoseconds.
#[derive(Default, Clone)]
struct Lat(Vec<u64>);

impl Lat {
    fn push(&mut self, ns: u64) {
        self.0.push(ns);
    }
    fn merge(&mut self, other: Lat) {
        self.0.extend(other.0);
    }
    fn finish(mut self) -> Self {
        self.0.sort_unstable();
        self
    }
    /// Nearest-rank percentile in milliseconds (`self` sorted).
    fn pct_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.0.len()) - 1;
        #[allow(clippy::cast_precision_loss)]
        let ms = self.0[idx] as f64 / 1e6;
        ms
    }
}

/// Non-2xx answers and transport failures, by kind.
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    fn add(&self, what: String) {
        *self.0.lock().unwrap().entry(what).or_default() += 1;
    }
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client: one keep-alive connection per producer or worker

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    base: String,
    host: HeaderValue,
    auth: HeaderValue,
    kind: ClientKind,
    errors: Arc<Errors>,
    requests: Arc<AtomicU64>,
}

struct Resp {
    status: u16,
    body: Bytes,
}

enum Conn {
    Hyper {
        t: Target,
        sender: Option<SendRequest<Full<Bytes>>>,
    },
    Reqwest {
        t: Target,
        client: reqwest::Client,
    },
}

/// The rustls client config when the bench speaks HTTPS (set once in `main`).
static TLS_CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

async fn hyper_connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    if let Some(config) = TLS_CLIENT.get() {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(sender);
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A CA and a server certificate for localhost (PEM: CA, server certificate, server key).
fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("certificate").pem();
    (ca_pem, cert, key.serialize_pem())
}

fn tls_client_config(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

impl Target {
    async fn conn(&self) -> Conn {
        match self.kind {
            ClientKind::Hyper => Conn::Hyper {
                t: self.clone(),
                sender: hyper_connect(self.addr).await.ok(),
            },
            ClientKind::Reqwest => Conn::Reqwest {
                t: self.clone(),
                client: reqwest::Client::builder()
                    .http1_only()
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(1)
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("reqwest client"),
            },
        }
    }
}

impl Conn {
    fn target(&self) -> &Target {
        match self {
            Conn::Hyper { t, .. } | Conn::Reqwest { t, .. } => t,
        }
    }

    /// Sends one request; a transport failure or timeout is an `Err` (and drops the connection).
    async fn send(
        &mut self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<Resp, String> {
        self.target().requests.fetch_add(1, Ordering::Relaxed);
        match self {
            Conn::Hyper { t, sender } => {
                let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    if sender.is_none() {
                        *sender = Some(hyper_connect(t.addr).await?);
                    }
                    let s = sender.as_mut().expect("connected");
                    s.ready().await.map_err(|e| format!("connection: {e}"))?;
                    let mut req = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(HOST, t.host.clone())
                        .header(AUTHORIZATION, t.auth.clone());
                    if !body.is_empty() {
                        req =
                            req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    }
                    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
                    let resp = s
                        .send_request(req)
                        .await
                        .map_err(|e| format!("request: {e}"))?;
                    let status = resp.status().as_u16();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("body: {e}"))?
                        .to_bytes();
                    Ok(Resp { status, body })
                })
                .await
                .unwrap_or_else(|_| Err("timeout".to_string()));
                if result.is_err() {
                    *sender = None;
                }
                result
            }
            Conn::Reqwest { t, client } => {
                let url = format!("{}{}", t.base, path);
                let mut req = client
                    .request(method, url)
                    .header(AUTHORIZATION, t.auth.clone());
                if !body.is_empty() {
                    req = req.header(CONTENT_TYPE, "application/json").body(body);
                }
                let resp = req.send().await.map_err(|e| format!("request: {e}"))?;
                let status = resp.status().as_u16();
                let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
                Ok(Resp { status, body })
            }
        }
    }

    /// Sends and checks the status; anything else is counted as an error and yields `None`.
    async fn call(
        &mut self,
        what: &str,
        path: &'static str,
        body: Bytes,
        want: u16,
    ) -> Option<Bytes> {
        match self.send(Method::POST, path, body).await {
            Ok(r) if r.status == want => Some(r.body),
            Ok(r) => {
                let snippet: String = String::from_utf8_lossy(&r.body).chars().take(160).collect();
                self.target()
                    .errors
                    .add(format!("{what}: HTTP {} {snippet}", r.status));
                None
            }
            Err(e) => {
                self.target().errors.add(format!("{what}: {e}"));
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire bodies

fn make_pad(arg_bytes: usize) -> Arc<str> {
    // `[{"seq":NNNNNNN,"t":NNNNNNNNNNNN,"pad":"…"}]` is about 45 bytes plus the pad.
    Arc::from("x".repeat(arg_bytes.saturating_sub(45).max(1)))
}

fn job_body(queue: &str, seq: usize, t_ns: u64, pad: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"bench.job","args":[{{"seq":{seq},"t":{t_ns},"pad":"{pad}"}}],"options":{{"queue":"{queue}"}}}}"#
    ))
}

fn fetch_body(queue: &str, count: usize, worker: &str, wait_ms: u64) -> Bytes {
    if wait_ms > 0 {
        return Bytes::from(format!(
            r#"{{"queues":["{queue}"],"count":{count},"worker_id":"{worker}","wait_ms":{wait_ms}}}"#
        ));
    }
    Bytes::from(format!(
        r#"{{"queues":["{queue}"],"count":{count},"worker_id":"{worker}"}}"#
    ))
}

fn ack_body(id: &str, worker: &str) -> Bytes {
    Bytes::from(format!(r#"{{"job_id":"{id}","worker_id":"{worker}"}}"#))
}

#[derive(Deserialize)]
struct Fetched {
    jobs: Vec<FetchedJob>,
}

#[derive(Deserialize)]
struct FetchedJob {
    id: String,
    #[serde(default)]
    args: Vec<FetchedArg>,
}

#[derive(Deserialize)]
struct FetchedArg {
    #[serde(default)]
    t: u64,
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc (Linux; figures are zero elsewhere)

const CLK_TCK: f64 = 100.0;

/// utime + stime in seconds from a `/proc/.../stat` line, and the thread name.
fn stat_cpu(text: &str) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / CLK_TCK))
}

fn process_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| stat_cpu(&t))
        .map_or(0.0, |(_, s)| s)
}

/// CPU seconds per thread (by tid) of a process.
fn thread_cpu(pid: u32) -> BTreeMap<String, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let tid = entry.file_name().to_string_lossy().to_string();
        if let Some(v) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|t| stat_cpu(&t))
        {
            out.insert(tid, v);
        }
    }
    out
}

/// Busy and total jiffies of the whole machine.
fn machine_cpu() -> (f64, f64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 0.0);
    };
    let Some(line) = text.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

struct CpuMark {
    client: f64,
    server: Option<BTreeMap<String, (String, f64)>>,
    machine: (f64, f64),
}

fn cpu_mark(server_pid: Option<u32>) -> CpuMark {
    CpuMark {
        client: process_cpu("self"),
        server: server_pid.map(thread_cpu),
        machine: machine_cpu(),
    }
}

/// CPU use between two marks, as text.
fn cpu_report(a: &CpuMark, b: &CpuMark, secs: f64, requests: u64) -> String {
    let mut s = String::new();
    let client = b.client - a.client;
    #[allow(clippy::cast_precision_loss)]
    let per_req = if requests > 0 {
        client / requests as f64 * 1e6
    } else {
        0.0
    };
    let _ = write!(
        s,
        "  cpu: client {client:.2} s ({:.0}% of a core",
        100.0 * client / secs
    );
    if requests > 0 {
        let _ = write!(s, ", {per_req:.1} us/request over {requests} requests");
    }
    s.push(')');
    if let (Some(sa), Some(sb)) = (&a.server, &b.server) {
        // Group threads by name with trailing digits removed (actix workers, tokio pools).
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        let mut total = 0.0;
        for (tid, (name, after)) in sb {
            let before = sa.get(tid).map_or(0.0, |(_, v)| *v);
            let d = after - before;
            total += d;
            let group = name
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .to_string();
            *by_name.entry(group).or_default() += d;
        }
        let mut groups: Vec<(String, f64)> =
            by_name.into_iter().filter(|(_, v)| *v > 0.0).collect();
        groups.sort_by(|x, y| y.1.total_cmp(&x.1));
        let _ = write!(
            s,
            "\n  cpu: server {total:.2} s ({:.0}% of a core):",
            100.0 * total / secs
        );
        for (name, v) in groups.iter().take(6) {
            let _ = write!(s, " {name}* {v:.2} s;");
        }
    }
    let (busy, all) = (b.machine.0 - a.machine.0, b.machine.1 - a.machine.1);
    if all > 0.0 {
        let _ = write!(
            s,
            "\n  cpu: machine {:.0}% busy over {} cores (/proc/stat ticks: undercounts short bursts)",
            100.0 * busy / all,
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        );
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Own server

/// The bench drives one credential far past the per-principal defaults (1,000 enqueues a
/// second, spike detection): it measures the server's capacity, not its limits.
const LOAD_LIMITS: &str = "[limits.rate]\n\
    global = { per_second = 1000000000, burst = 1000000 }\n\
    ip = { per_second = 1000000000, burst = 1000000 }\n\
    tenant = { per_second = 1000000000, burst = 1000000 }\n\
    enqueue = { per_second = 1000000000, burst = 1000000 }\n\
    worker = { per_second = 1000000000, burst = 1000000 }\n\
    other = { per_second = 1000000000, burst = 1000000 }\n\n\
    [limits.abuse]\nenabled = false\n";

struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Server {
    /// A server on the defaults, except the quotas, the queue bound and the rate limits: one key
    /// drives every producer and worker here, and the backlog is the thing being measured. With
    /// `tls`, over HTTPS with a throw-away certificate whose CA the bench clients trust.
    fn start(tls: bool) -> (Server, String, String) {
        let dir = tempfile::Builder::new()
            .prefix("bulwark-load-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let path = path.as_path();
        let config = path.join("bulwark.toml");
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 0\nshutdown_timeout_secs = 1\n\n\
             [storage]\ndata_dir = {:?}\n\n[secrets]\ndir = {:?}\n\n\
             [quotas]\nmax_pending_jobs_per_principal = 0\n\
             max_running_jobs_per_principal = 0\n\n\
             [backpressure]\ndefault_max_depth = 0\n\n{}",
            path.join("data").display().to_string(),
            path.join("secrets").display().to_string(),
            LOAD_LIMITS,
        );
        if tls {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            let (ca, cert, key) = tls_material();
            let tls_dir = path.join("secrets").join("tls");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&tls_dir)
                .expect("secrets folder");
            std::fs::set_permissions(
                path.join("secrets"),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .expect("secrets mode");
            for (name, contents) in [("server.crt", &cert), ("server.key", &key)] {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(tls_dir.join(name))
                    .expect("certificate file");
                f.write_all(contents.as_bytes()).expect("write certificate");
            }
            text.push_str("\n[tls]\nenabled = true\n");
            let _ = TLS_CLIENT.set(Arc::new(tls_client_config(&ca)));
        }
        std::fs::write(&config, text).expect("write config");
        let addr_file = path.join("addr");
        let log = std::fs::File::create(path.join("server.log")).expect("log file");
        // `BULWARK_BENCH_BIN` runs another build (an earlier commit's, to compare back to back).
        let bin = std::env::var_os("BULWARK_BENCH_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_bulwark")),
            PathBuf::from,
        );
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn bulwark");
        let mut server = Server {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                if addr.ends_with('\n') {
                    let scheme = if tls { "https" } else { "http" };
                    break format!("{scheme}://{}", addr.trim());
                }
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                die(&format!(
                    "bulwark exited early ({status}):\n{}",
                    server.log()
                ));
            }
            if Instant::now() > deadline {
                die(&format!("bulwark did not start:\n{}", server.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = std::fs::read_to_string(path.join("secrets").join("bootstrap-admin.key"))
            .expect("bootstrap key")
            .trim()
            .to_string();
        (server, url, key)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `http://host:port` → a loopback socket address, or exit.
fn loopback_addr(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| {
            url.strip_prefix("https://")
                .filter(|_| TLS_CLIENT.get().is_some())
        })
        .unwrap_or_else(|| die("--url must be http://HOST:PORT (plain HTTP on loopback)"));
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        die("--url must have no path");
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .unwrap_or_else(|e| die(&format!("--url {url}: {e}")))
        .collect();
    addrs
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .unwrap_or_else(|| die("--url must resolve to a loopback address"))
}

// ---------------------------------------------------------------------------------------------
// Reports

struct Row {
    label: String,
    lat: Lat,
}

struct Report {
    name: String,
    detail: String,
    jobs: u64,
    secs: f64,
    rate_label: &'static str,
    rows: Vec<Row>,
    extra: Vec<String>,
    errors: BTreeMap<String, u64>,
    cpu: String,
}

impl Report {
    fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let r = self.jobs as f64 / self.secs;
        r
    }

    fn print(&self) {
        println!();
        println!("== {} ({})", self.name, self.detail);
        println!(
            "  {:<28} {:>9} {:>9} {:>11}",
            "", "jobs", "seconds", self.rate_label
        );
        println!(
            "  {:<28} {:>9} {:>9.2} {:>11.1}",
            "total",
            self.jobs,
            self.secs,
            self.rate()
        );
        println!(
            "  {:<28} {:>9} {:>9} {:>9} {:>9}",
            "latency", "samples", "p50 ms", "p99 ms", "max ms"
        );
        for row in &self.rows {
            println!(
                "  {:<28} {:>9} {:>9.2} {:>9.2} {:>9.2}",
                row.label,
                row.lat.0.len(),
                row.lat.pct_ms(50.0),
                row.lat.pct_ms(99.0),
                row.lat.pct_ms(100.0)
            );
        }
        for line in &self.extra {
            println!("  {line}");
        }
        println!("{}", self.cpu);
        if !self.errors.is_empty() {
            let n: u64 = self.errors.values().sum();
            println!("  !!!!!! {n} ERRORS in {} !!!!!!", self.name);
            for (what, count) in &self.errors {
                println!("  !!! {count} x {what}");
            }
        }
        let _ = std::io::stdout().flush();
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[derive(Clone)]
struct Ctx {
    target: Target,
    opts: Arc<Opts>,
    server_pid: Option<u32>,
    pad: Arc<str>,
}

impl Ctx {
    /// Runs a workload body between CPU marks and collects its errors.
    async fn measured<F, Fut>(&self, f: F) -> (Report, f64)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Report>,
    {
        self.target.errors.take();
        let requests_before = self.target.requests.load(Ordering::Relaxed);
        let a = cpu_mark(self.server_pid);
        let started = Instant::now();
        let mut report = f().await;
        let wall = started.elapsed().as_secs_f64();
        let b = cpu_mark(self.server_pid);
        let requests = self.target.requests.load(Ordering::Relaxed) - requests_before;
        report.cpu = cpu_report(&a, &b, wall, requests);
        report.errors = self.target.errors.take();
        (report, wall)
    }
}

fn fsync_rate(dir: &Path, secs: f64) -> Report {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe.bin");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("fsync probe file");
    let block = vec![0xa5u8; 4096];
    let mut lat = Lat::default();
    let started = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut n: u64 = 0;
    // Bounded in time and count.
    while started.elapsed() < limit && n < 10_000_000 {
        let t = Instant::now();
        file.write_all_at(&block, 0).expect("write");
        file.sync_data().expect("fdatasync");
        lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Report {
        name: "fsync".into(),
        detail: format!("4 KiB write + fdatasync, one thread, in {}", dir.display()),
        jobs: n,
        secs,
        rate_label: "fsyncs/s",
        rows: vec![Row {
            label: "write + fdatasync".into(),
            lat: lat.finish(),
        }],
        extra: Vec::new(),
        errors: BTreeMap::new(),
        cpu: String::new(),
    }
}

/// W1: `jobs` enqueues from `producers` keep-alive connections, as fast as they are answered.
async fn w1(ctx: &Ctx, queue: &'static str, jobs: usize, producers: usize) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for _ in 0..producers {
        conns.push(ctx.target.conn().await);
    }
    let deadline = Instant::now() + PHASE_LIMIT;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let pad = ctx.pad.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let mut ok = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs || Instant::now() > deadline {
                    break;
                }
                let t0 = now_ns();
                let body = job_body(queue, i, t0, &pad);
                if conn.call("enqueue", JOBS_PATH, body, 201).await.is_some() {
                    lat.push(now_ns() - t0);
                    ok += 1;
                }
            }
            (lat, ok)
        }));
    }
    let mut lat = Lat::default();
    let mut ok = 0;
    for t in tasks {
        let (l, n) = t.await.expect("producer task");
        lat.merge(l);
        ok += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let args_len = job_body(queue, 12_345, 1_234_567_890_123, &ctx.pad).len();
    Report {
        name: "W1 durable enqueue".into(),
        detail: format!(
            "{jobs} jobs, {producers} producers, request body {args_len} bytes, queue {queue}"
        ),
        jobs: ok,
        secs,
        rate_label: "jobs/s",
        rows: vec![Row {
            label: "enqueue (201)".into(),
            lat: lat.finish(),
        }],
        extra: Vec::new(),
        errors: BTreeMap::new(),
        cpu: String::new(),
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

#[allow(clippy::cast_precision_loss)]
fn per_sec(n: u64, secs: f64) -> f64 {
    n as f64 / secs
}

/// What a worker loop measures.
#[derive(Default)]
struct WorkerOut {
    fetch: Lat,
    ack: Lat,
    e2e: Lat,
    fetch_to_ack: Lat,
    acked: u64,
    fetches: u64,
    empty: u64,
}

/// A worker: fetch `batch`, ack each job in turn. In drain mode it stops at the first empty
/// fetch; otherwise it sleeps `idle` after an empty fetch and stops when `stop` is set.
#[allow(clippy::too_many_arguments)]
async fn worker(
    mut conn: Conn,
    queue: &'static str,
    id: String,
    batch: usize,
    drain: bool,
    idle: Duration,
    wait_ms: u64,
    stop: Arc<AtomicBool>,
    completed: Arc<AtomicU64>,
    deadline: Instant,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    // Draining (W2) never waits: an empty queue ends it.
    let wait_ms = if drain { 0 } else { wait_ms };
    let fetch = fetch_body(queue, batch, &id, wait_ms);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let t0 = now_ns();
        let Some(body) = conn.call("fetch", FETCH_PATH, fetch.clone(), 200).await else {
            // Errors are counted; back off a little so a failing server is not hammered.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let fetched_at = now_ns();
        out.fetch.push(fetched_at - t0);
        out.fetches += 1;
        let jobs = match serde_json::from_slice::<Fetched>(&body) {
            Ok(f) => f.jobs,
            Err(e) => {
                conn.target().errors.add(format!("fetch: bad body: {e}"));
                continue;
            }
        };
        if jobs.is_empty() {
            out.empty += 1;
            if drain {
                break;
            }
            if wait_ms > 0 {
                // The server already waited for a job.
                continue;
            }
            if idle.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(idle).await;
            }
            continue;
        }
        for job in jobs {
            let t1 = now_ns();
            if conn
                .call("ack", ACK_PATH, ack_body(&job.id, &id), 200)
                .await
                .is_some()
            {
                let done = now_ns();
                out.ack.push(done - t1);
                out.fetch_to_ack.push(done - fetched_at);
                if let Some(sent) = job.args.first().map(|a| a.t).filter(|t| *t > 0) {
                    out.e2e.push(done.saturating_sub(sent));
                }
                out.acked += 1;
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out
}

async fn spawn_workers(
    ctx: &Ctx,
    queue: &'static str,
    batch: usize,
    drain: bool,
    stop: &Arc<AtomicBool>,
    completed: &Arc<AtomicU64>,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<WorkerOut>> {
    let mut conns = Vec::new();
    for _ in 0..ctx.opts.workers {
        conns.push(ctx.target.conn().await);
    }
    conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            tokio::spawn(worker(
                conn,
                queue,
                format!("bench-w{i}"),
                batch,
                drain,
                ctx.opts.idle_sleep,
                ctx.opts.wait_ms,
                stop.clone(),
                completed.clone(),
                deadline,
            ))
        })
        .collect()
}

async fn join_workers(tasks: Vec<tokio::task::JoinHandle<WorkerOut>>) -> WorkerOut {
    let mut all = WorkerOut::default();
    for t in tasks {
        let w = t.await.expect("worker task");
        all.fetch.merge(w.fetch);
        all.ack.merge(w.ack);
        all.e2e.merge(w.e2e);
        all.fetch_to_ack.merge(w.fetch_to_ack);
        all.acked += w.acked;
        all.fetches += w.fetches;
        all.empty += w.empty;
    }
    all
}

/// W2: workers drain the queue.
async fn w2(ctx: &Ctx, queue: &'static str, expected: Option<u64>) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks = spawn_workers(
        ctx,
        queue,
        ctx.opts.batch,
        true,
        &stop,
        &completed,
        started + PHASE_LIMIT,
    )
    .await;
    let out = join_workers(tasks).await;
    let secs = started.elapsed().as_secs_f64();
    let mut extra = vec![format!(
        "{} fetches ({} empty), {:.1} jobs per non-empty fetch",
        out.fetches,
        out.empty,
        ratio(out.acked, (out.fetches - out.empty).max(1))
    )];
    if let Some(n) = expected {
        if n != out.acked {
            ctx.target
                .errors
                .add(format!("drain: acked {} of {n} enqueued jobs", out.acked));
        }
        extra.push(format!("acked {} of {n} jobs W1 enqueued", out.acked));
    }
    Report {
        name: "W2 drain".into(),
        detail: format!(
            "{} workers, fetch count {}, one ack per job",
            ctx.opts.workers, ctx.opts.batch
        ),
        jobs: out.acked,
        secs,
        rate_label: "acks/s",
        rows: vec![
            Row {
                label: "fetch (200)".into(),
                lat: out.fetch.finish(),
            },
            Row {
                label: "ack (200)".into(),
                lat: out.ack.finish(),
            },
        ],
        extra,
        errors: BTreeMap::new(),
        cpu: String::new(),
    }
}

/// W3: producers (closed-loop, or open-loop at `rate`) and workers for the configured time.
async fn w3(ctx: &Ctx, queue: &'static str, rate: Option<f64>) -> Report {
    let o = &ctx.opts;
    let stop_workers = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let enqueued = Arc::new(AtomicU64::new(0));
    let hard_deadline = Instant::now() + o.duration + W3_GRACE + Duration::from_secs(30);
    let workers = spawn_workers(
        ctx,
        queue,
        o.w3_batch,
        false,
        &stop_workers,
        &completed,
        hard_deadline,
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..o.producers {
        conns.push(ctx.target.conn().await);
    }
    let start_ns = now_ns() + 5_000_000;
    let duration_ns = u64::try_from(o.duration.as_nanos()).unwrap_or(u64::MAX);
    let end_ns = start_ns + duration_ns;
    // Open loop: a scheduler thread sleeps (std::thread::sleep, ~0.1 ms precise, where tokio's
    // timer rounds up to whole milliseconds) until each job's scheduled time and hands the time
    // to the producers round-robin; a producer still busy with its previous request sends late
    // and the lateness counts against the latency (no coordinated omission).
    let mut schedules = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..o.producers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
        schedules.push(tx);
        receivers.push(Some(rx));
    }
    let scheduler = rate.map(|r| {
        std::thread::spawn(move || {
            for seq in 0..W3_MAX_JOBS {
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let at = start_ns + (seq as f64 * 1e9 / r) as u64;
                if at >= end_ns {
                    break;
                }
                let now = now_ns();
                if at > now {
                    std::thread::sleep(Duration::from_nanos(at - now));
                }
                if schedules[seq % schedules.len()].send((seq, at)).is_err() {
                    break;
                }
            }
        })
    });
    let producers = o.producers;
    let mut tasks = Vec::new();
    for (p, mut conn) in conns.into_iter().enumerate() {
        let pad = ctx.pad.clone();
        let enqueued = enqueued.clone();
        let mut schedule = receivers[p].take().filter(|_| rate.is_some());
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let mut lag = Lat::default();
            if schedule.is_none() {
                tokio::time::sleep_until(instant_of_ns(start_ns).into()).await;
            }
            for k in 0..W3_MAX_JOBS {
                let (seq, t0) = if let Some(rx) = schedule.as_mut() {
                    let Some((seq, at)) = rx.recv().await else {
                        break;
                    };
                    lag.push(now_ns().saturating_sub(at));
                    (seq, at)
                } else {
                    let t = now_ns();
                    if t >= end_ns {
                        break;
                    }
                    (k * producers + p, t)
                };
                let body = job_body(queue, seq, t0, &pad);
                if conn.call("enqueue", JOBS_PATH, body, 201).await.is_some() {
                    lat.push(now_ns() - t0);
                    enqueued.fetch_add(1, Ordering::Relaxed);
                }
            }
            (lat, lag)
        }));
    }
    // Snapshot the counters at the end of the window, then let the workers finish the backlog.
    tokio::time::sleep_until(instant_of_ns(end_ns).into()).await;
    let enq_window = enqueued.load(Ordering::Relaxed);
    let done_window = completed.load(Ordering::Relaxed);
    let mut enq_lat = Lat::default();
    let mut lag = Lat::default();
    for t in tasks {
        let (l, g) = t.await.expect("producer task");
        enq_lat.merge(l);
        lag.merge(g);
    }
    if let Some(s) = scheduler {
        s.join().expect("scheduler thread");
    }
    let total_enqueued = enqueued.load(Ordering::Relaxed);
    let grace_end = Instant::now() + W3_GRACE;
    while completed.load(Ordering::Relaxed) < total_enqueued && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_workers.store(true, Ordering::Relaxed);
    let out = join_workers(workers).await;
    let secs = o.duration.as_secs_f64();
    let backlog = total_enqueued.saturating_sub(out.acked);
    let mut extra = vec![
        format!(
            "in the {secs:.0} s window: enqueued {enq_window} ({:.1}/s), completed {done_window} ({:.1}/s)",
            per_sec(enq_window, secs),
            per_sec(done_window, secs)
        ),
        if o.wait_ms > 0 {
            format!(
                "{} fetches, {} empty (workers long-poll with wait_ms {}), fetch count {}",
                out.fetches, out.empty, o.wait_ms, o.w3_batch
            )
        } else {
            format!(
                "{} fetches, {} empty (worker sleeps {} us after an empty fetch), fetch count {}",
                out.fetches,
                out.empty,
                o.idle_sleep.as_micros(),
                o.w3_batch
            )
        },
    ];
    if rate.is_none() && enq_window > done_window {
        extra.push(format!(
            "backlog grew to {} jobs by the end of the window: the producers outpace the \
             workers, so end-to-end latency here is mostly time spent queued",
            enq_window - done_window
        ));
    }
    if backlog > 0 {
        extra.push(format!(
            "{backlog} jobs still unacked {} s after the producers stopped",
            W3_GRACE.as_secs()
        ));
        ctx.target.errors.add(format!(
            "w3: {backlog} enqueued jobs were not completed in the grace time"
        ));
    }
    let e2e_label = if rate.is_some() {
        "end to end (scheduled->ack)"
    } else {
        "end to end (send->ack)"
    };
    let mut rows = vec![
        Row {
            label: e2e_label.into(),
            lat: out.e2e.finish(),
        },
        Row {
            label: if rate.is_some() {
                "enqueue (scheduled->201)".into()
            } else {
                "enqueue (201)".into()
            },
            lat: enq_lat.finish(),
        },
        Row {
            label: "fetch-to-ack (fetched->ack)".into(),
            lat: out.fetch_to_ack.finish(),
        },
        Row {
            label: "fetch (200)".into(),
            lat: out.fetch.finish(),
        },
        Row {
            label: "ack (200)".into(),
            lat: out.ack.finish(),
        },
    ];
    if rate.is_some() {
        rows.push(Row {
            label: "producer send lag".into(),
            lat: lag.finish(),
        });
    }
    let (name, detail) = match rate {
        Some(r) => (
            "W3 fixed rate",
            format!(
                "{r} jobs/s open loop from {} producers, {} workers, {secs:.0} s",
                o.producers, o.workers
            ),
        ),
        None => (
            "W3 mixed",
            format!(
                "{} closed-loop producers, {} workers, {secs:.0} s",
                o.producers, o.workers
            ),
        ),
    };
    Report {
        name: name.into(),
        detail,
        jobs: done_window,
        secs,
        rate_label: "completed/s",
        rows,
        extra,
        errors: BTreeMap::new(),
        cpu: String::new(),
    }
}

// ---------------------------------------------------------------------------------------------

fn summary(reports: &[Report], opts: &Opts, own_server: bool) -> String {
    let mut s = String::new();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = writeln!(
        s,
        "Bulwark load bench (cargo bench --bench load; {cores} cores, Linux {}; client: {:?} on {} \
         thread(s) against {} server)",
        kernel.trim(),
        opts.client,
        opts.client_threads,
        if own_server {
            "its own release"
        } else {
            "an external"
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| workload | jobs | seconds | rate | latency | p50 ms | p99 ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|");
    for r in reports {
        let mut first = true;
        for row in &r.rows {
            if first {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {:.0} {} | {} | {:.2} | {:.2} |",
                    r.name,
                    r.jobs,
                    r.secs,
                    r.rate(),
                    r.rate_label,
                    row.label,
                    row.lat.pct_ms(50.0),
                    row.lat.pct_ms(99.0)
                );
                first = false;
            } else {
                let _ = writeln!(
                    s,
                    "| | | | | {} | {:.2} | {:.2} |",
                    row.label,
                    row.lat.pct_ms(50.0),
                    row.lat.pct_ms(99.0)
                );
            }
        }
    }
    let _ = writeln!(s);
    for r in reports {
        let _ = writeln!(s, "- {}: {}", r.name, r.detail);
    }
    s
}

fn main() {
    let opts = parse_opts();
    let _ = rustls::crypto::ring::default_provider().install_default();
    now_ns();

    let needs_server = opts.workloads.iter().any(|w| *w != Workload::Fsync);
    let mut server: Option<Server> = None;
    let (url, key) = match (&opts.url, needs_server) {
        (Some(url), _) => {
            let key = opts
                .key
                .clone()
                .unwrap_or_else(|| die("--url needs --key (or BULWARK_KEY)"));
            if opts.tls {
                die("--tls on applies to the server the bench starts, not to --url");
            }
            (url.clone(), key)
        }
        (None, true) => {
            if opts.tls && opts.client != ClientKind::Hyper {
                die("--tls on works with --client hyper");
            }
            let (s, url, key) = Server::start(opts.tls);
            println!(
                "started {} at {url} (data in {})",
                env!("CARGO_BIN_EXE_bulwark"),
                s.data_dir().display()
            );
            server = Some(s);
            (url, key)
        }
        (None, false) => (String::new(), String::new()),
    };
    let own_server = server.is_some();
    let fsync_dir = server
        .as_ref()
        .map_or_else(std::env::temp_dir, Server::data_dir);

    let runtime = if opts.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.client_threads)
            .enable_all()
            .build()
    }
    .expect("runtime");

    let opts = Arc::new(opts);
    let reports = runtime.block_on(async {
        let mut reports: Vec<Report> = Vec::new();
        let ctx = if needs_server {
            let addr = loopback_addr(&url);
            let target = Target {
                addr,
                base: url.clone(),
                host: HeaderValue::from_str(&addr.to_string()).expect("host header"),
                auth: HeaderValue::from_str(&format!("Bearer {key}"))
                    .unwrap_or_else(|_| die("the key is not a valid header value")),
                kind: opts.client,
                errors: Arc::new(Errors::default()),
                requests: Arc::new(AtomicU64::new(0)),
            };
            let mut probe = target.conn().await;
            match probe.send(Method::GET, HEALTH_PATH, Bytes::new()).await {
                Ok(r) if r.status == 200 => {}
                Ok(r) => die(&format!(
                    "health check answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) => die(&format!("health check failed: {e}")),
            }
            Some(Ctx {
                target,
                opts: opts.clone(),
                server_pid: server.as_ref().and_then(Server::pid),
                pad: make_pad(opts.arg_bytes),
            })
        } else {
            None
        };
        let mut w1_jobs: Option<u64> = None;
        for w in &opts.workloads {
            let report = match w {
                Workload::Fsync => {
                    let dir = fsync_dir.clone();
                    let secs = opts.fsync_secs;
                    let a = cpu_mark(None);
                    let mut r = tokio::task::spawn_blocking(move || fsync_rate(&dir, secs))
                        .await
                        .expect("fsync task");
                    r.cpu = cpu_report(&a, &cpu_mark(None), r.secs, 0);
                    r
                }
                Workload::W1 => {
                    let ctx = ctx.as_ref().expect("ctx");
                    let (r, _) = ctx
                        .measured(|| w1(ctx, "bench", opts.jobs, opts.concurrency))
                        .await;
                    w1_jobs = Some(r.jobs);
                    r
                }
                Workload::W2 => {
                    let ctx = ctx.as_ref().expect("ctx");
                    if w1_jobs.is_none() {
                        // W2 drains what W1 enqueued; fill the queue first when W1 was not asked.
                        let (mut fill, _) = ctx
                            .measured(|| w1(ctx, "bench", opts.jobs, opts.concurrency))
                            .await;
                        fill.name = "W2 fill (W1 not requested)".into();
                        fill.print();
                        w1_jobs = Some(fill.jobs);
                        reports.push(fill);
                    }
                    let (r, _) = ctx.measured(|| w2(ctx, "bench", w1_jobs)).await;
                    r
                }
                Workload::W3Mixed => {
                    let ctx = ctx.as_ref().expect("ctx");
                    ctx.measured(|| w3(ctx, "bench-mixed", None)).await.0
                }
                Workload::W3Fixed => {
                    let ctx = ctx.as_ref().expect("ctx");
                    ctx.measured(|| w3(ctx, "bench-fixed", Some(opts.rate)))
                        .await
                        .0
                }
            };
            report.print();
            reports.push(report);
        }
        reports
    });

    let text = summary(&reports, &opts, own_server);
    println!();
    println!(
        "---------------------------------------- summary ----------------------------------------"
    );
    print!("{text}");
    let errors: u64 = reports.iter().flat_map(|r| r.errors.values()).sum();
    if let Some(s) = &server {
        let log = s.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\""))
            .take(10)
            .collect();
        if !bad.is_empty() {
            println!("\nserver log warnings/errors (first 10):");
            for l in bad {
                println!("  {l}");
            }
        }
    }
    drop(server);
    if errors > 0 {
        println!();
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        println!("!!! THIS RUN HAD {errors} ERRORS: the figures above are not valid !!!");
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        std::process::exit(1);
    }
}
