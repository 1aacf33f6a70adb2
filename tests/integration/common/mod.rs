//! The real `bulwark` binary on an ephemeral loopback port with a temporary data and secrets
//! folder, as integration tests, the conformance runner and the load bench use it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// What a test wants from its server beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Extra TOML appended to the generated config (whole tables, e.g. `[testing]\n...`).
    pub extra_toml: String,
    /// Conformance mode: preserve unknown envelope attributes, honour test directives, expose
    /// the reset route, and allow every job type. The default payload limits, quotas and queue
    /// bounds stay in force: no suite comes near them.
    pub conformance: bool,
    /// Environment variables for the server process (e.g. `OJS_SECRET_*`).
    pub env: Vec<(String, String)>,
    /// Files written into the secrets folder before the first start (relative path,
    /// contents; mode 0600).
    pub secret_files: Vec<(String, String)>,
    /// Serve HTTPS: the CA certificate (PEM) clients trust. The caller's `extra_toml` holds
    /// the `[tls]` table.
    pub https_ca: Option<String>,
    /// Run the `bulwark` binary as a process of its own, for tests where the process is the
    /// point: SIGKILL, signals, the server's log, environment variables, metrics counts. Other
    /// servers run in this process (the same `app::serve_until` the binary runs), which starts
    /// and stops faster. Servers with `env` always run as processes.
    pub process: bool,
}

/// Lifts the per-address key-verification budget, for tests that send many wrong keys on
/// purpose from one address.
pub const UNTHROTTLED: &str =
    "[auth.throttle]\nverifications_per_minute = 1000000\nburst = 1000000\n";

/// The limits the conformance configuration runs with: every rate budget far above what a
/// suite sends, abuse detection off (the suites submit bursts of top-priority jobs on purpose),
/// and the default connection limits and timeouts.
pub const CONFORMANCE_LIMITS: &str = "[limits.rate]\n\
    global = { per_second = 1000000, burst = 1000000 }\n\
    ip = { per_second = 1000000, burst = 1000000 }\n\
    tenant = { per_second = 1000000, burst = 1000000 }\n\
    enqueue = { per_second = 1000000, burst = 1000000 }\n\
    worker = { per_second = 1000000, burst = 1000000 }\n\
    other = { per_second = 1000000, burst = 1000000 }\n\n\
    [limits.abuse]\nenabled = false\n\n";

/// Lifts every rate budget and the per-address connection limit and turns abuse detection
/// off, for tests that drive one credential over more than a hundred connections as hard as
/// they can on purpose (durability under load).
pub const UNLIMITED: &str = "[limits.rate]\n\
    global = { per_second = 1000000, burst = 1000000 }\n\
    ip = { per_second = 1000000, burst = 1000000 }\n\
    tenant = { per_second = 1000000, burst = 1000000 }\n\
    enqueue = { per_second = 1000000, burst = 1000000 }\n\
    worker = { per_second = 1000000, burst = 1000000 }\n\
    other = { per_second = 1000000, burst = 1000000 }\n\n\
    [limits.connections]\nper_ip = 10000\n\n\
    [limits.abuse]\nenabled = false\n\n";

impl ServerOptions {
    pub fn conformance() -> Self {
        Self {
            conformance: true,
            ..Self::default()
        }
    }
}

/// How a test server runs.
enum Running {
    /// The `bulwark` binary.
    Process(Child),
    /// `app::serve_until` on a thread of its own with its own runtime, stopped through
    /// `stop`.
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        thread: std::thread::JoinHandle<anyhow::Result<()>>,
    },
}

/// A running server. Dropping it stops it (a process is killed).
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// The bootstrap admin key the server wrote on first start.
    pub admin_key: String,
    pub dir: PathBuf,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    /// The CA clients trust, when the server speaks HTTPS.
    pub https_ca: Option<String>,
    process: bool,
    running: Option<Running>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bulwark"))
}

impl TestServer {
    /// Starts a server in a fresh temporary directory.
    pub fn start(opts: ServerOptions) -> TestServer {
        install_crypto_provider();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let config_path = dir.join("bulwark.toml");
        std::fs::write(&config_path, config_text(&dir, &opts)).expect("write config");
        write_secret_files(&dir.join("secrets"), &opts.secret_files);
        let mut server = TestServer {
            base_url: String::new(),
            admin_key: String::new(),
            dir,
            config_path,
            env: opts.env.clone(),
            https_ca: opts.https_ca.clone(),
            process: opts.process || !opts.env.is_empty(),
            running: None,
            _tmp: Some(tmp),
        };
        server.spawn();
        server
    }

    /// The config file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn spawn(&mut self) {
        let addr_file = self.dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        if self.process {
            self.spawn_process(&addr_file);
        } else {
            self.spawn_in_process(&addr_file);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                if addr.ends_with('\n') {
                    let scheme = if self.https_ca.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    self.base_url = format!("{scheme}://{}", addr.trim());
                    break;
                }
            }
            if let Some(ended) = self.ended_early() {
                panic!("bulwark stopped early: {ended}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "bulwark did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let key_file = self.dir.join("secrets").join("bootstrap-admin.key");
        self.admin_key = std::fs::read_to_string(key_file)
            .expect("bootstrap key file")
            .trim()
            .to_string();
    }

    /// Why the server stopped before it was listening, if it did.
    fn ended_early(&mut self) -> Option<String> {
        match self.running.as_mut()? {
            Running::Process(child) => child.try_wait().unwrap().map(|s| s.to_string()),
            Running::InProcess { thread, .. } if thread.is_finished() => {
                let Some(Running::InProcess { thread, .. }) = self.running.take() else {
                    unreachable!()
                };
                Some(match thread.join() {
                    Ok(Ok(())) => "it returned".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "it panicked".to_string(),
                })
            }
            Running::InProcess { .. } => None,
        }
    }

    /// The server, in this process: the same start-up and shutdown the binary runs.
    fn spawn_in_process(&mut self, addr_file: &Path) {
        let config = bulwark::config::Config::load(Some(&self.config_path)).expect("config");
        let addr_file = addr_file.to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                runtime.block_on(bulwark::app::serve_until(config, Some(addr_file), async {
                    let _ = stopped.await;
                }))
            })
            .expect("server thread");
        self.running = Some(Running::InProcess { stop, thread });
    }

    fn spawn_process(&mut self, addr_file: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let child = Command::new(bin_path())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--addr-file")
            .arg(addr_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn bulwark");
        self.running = Some(Running::Process(child));
    }

    /// The server process id (servers started with `process: true`).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Some(Running::Process(child)) => child.id(),
            _ => panic!("pid() needs a server process: start it with `process: true`"),
        }
    }

    /// The server's log so far (a server process's; an in-process server logs nothing).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills a server process with SIGKILL and waits for it. An in-process server cannot be
    /// killed: it is stopped (tests where the abrupt end is the point use `process: true`).
    pub fn kill(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(running @ Running::InProcess { .. }) => {
                let _ = stop_in_process(running);
                self.wait_for_files();
            }
            None => {}
        }
    }

    /// Stops the server cleanly (SIGTERM to a process) and waits; returns the exit status code
    /// (0 for an in-process server that stopped without error).
    pub fn terminate(&mut self) -> Option<i32> {
        match self.running.take()? {
            Running::Process(mut child) => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
                child.wait().ok().and_then(|s| s.code())
            }
            running => {
                let code = stop_in_process(running);
                self.wait_for_files();
                code
            }
        }
    }

    /// Waits until the database files are free again, as they are once a process has exited:
    /// an in-process server's last worker threads may let go of them a moment after it stopped.
    fn wait_for_files(&self) {
        let data = self.dir.join("data");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = bulwark::store::Store::open(&data) {
            if !matches!(e, bulwark::store::StoreError::InUse(_)) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same data and secrets (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs a `bulwark` subcommand against this server's config (offline commands need the
    /// server stopped).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin_path());
        cmd.args(args).arg("--config").arg(&self.config_path);
        cmd.output().expect("run bulwark")
    }

    /// Stops the server, creates another admin key offline, starts the server again, and
    /// returns the new key.
    pub fn add_admin_key(&mut self, name: &str) -> String {
        let code = self.terminate();
        assert_eq!(
            code,
            Some(0),
            "SIGTERM did not stop the server cleanly:\n{}",
            self.log()
        );
        let out = self.cli(&["keys", "create", "--role", "admin", "--name", name]);
        assert!(
            out.status.success(),
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// An HTTP client for this server (trusting its CA on HTTPS). It keeps no idle
    /// connection: a graceful stop waits for open connections, checking once a second, so an
    /// idle keep-alive connection held by a test would add a second to every stop.
    pub fn client(&self) -> reqwest::Client {
        match &self.https_ca {
            Some(ca) => tls_client(ca, None, None),
            None => reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    /// The `host:port` the server listens on.
    pub fn authority(&self) -> String {
        self.base_url
            .split_once("://")
            .map(|(_, a)| a.to_string())
            .unwrap_or_default()
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.admin_key)
    }
}

/// Stops an in-process server and waits for its last stage; 0 when it stopped without error.
fn stop_in_process(running: Running) -> Option<i32> {
    let Running::InProcess { stop, thread } = running else {
        return None;
    };
    let _ = stop.send(());
    match thread.join() {
        Ok(Ok(())) => Some(0),
        Ok(Err(e)) => {
            eprintln!("in-process server stopped with an error: {e:#}");
            Some(1)
        }
        Err(_) => Some(101),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config_text(dir: &Path, opts: &ServerOptions) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nshutdown_timeout_secs = 1\n\n\
         [storage]\ndata_dir = {data:?}\n\n[secrets]\ndir = {secrets:?}\n\n",
        data = dir.join("data").display().to_string(),
        secrets = dir.join("secrets").display().to_string(),
    );
    if opts.conformance {
        text.push_str(
            "[api]\nunknown_fields = \"preserve\"\n\n\
             [testing]\nallow_reset = true\nhonour_test_directives = true\n\n\
             [validation]\njob_types = [\"*\"]\nmax_schedule_ahead_secs = 3153600000\n\n",
        );
        text.push_str(CONFORMANCE_LIMITS);
    }
    text.push_str(&opts.extra_toml);
    text
}

/// The secret part of an API key (`bwk_<env>_<id>_<secret>`; the secret may itself contain `_`).
pub fn key_secret(key: &str) -> &str {
    key.splitn(4, '_').nth(3).expect("a bwk_ key")
}

fn write_secret_files(secrets: &Path, files: &[(String, String)]) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for (rel, contents) in files {
        let path = secrets.join(rel);
        let parent = path.parent().expect("a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .expect("secrets folder");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("secret file");
        std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write secret file");
    }
}

/// A rustls client config trusting `ca_pem`, presenting `identity` (certificate, key) if
/// given, limited to `version` if given.
pub fn rustls_client_config(
    ca_pem: &str,
    identity: Option<&pki::Pair>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => {
            let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// A reqwest client over [`rustls_client_config`], keeping no idle connection (see
/// [`TestServer::client`]).
pub fn tls_client(
    ca_pem: &str,
    identity: Option<&pki::Pair>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .tls_backend_preconfigured(rustls_client_config(ca_pem, identity, version))
        .build()
        .expect("client")
}

/// A TLS client that keeps its connection alive between requests, for tests about
/// connections.
pub fn tls_client_kept_alive(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_backend_preconfigured(rustls_client_config(ca_pem, None, None))
        .build()
        .expect("client")
}

/// A PKI and the `[tls]` options for a server using it: server certificate and key in
/// `tls/`, the CA as client CA, CRL `tls/ca.crl` revoking `revoked`, `client_auth` as given,
/// and `extra_tls` lines appended to the `[tls]` table (identities go after, as
/// `[[tls.client_identities]]`).
pub fn tls_options(
    ca: &pki::Ca,
    client_auth: &str,
    revoked: &[u64],
    extra_tls: &str,
    after: &str,
) -> ServerOptions {
    let server = ca.server(90);
    let mut files = vec![
        ("tls/server.crt".to_string(), server.cert),
        ("tls/server.key".to_string(), server.key),
        ("tls/ca.crt".to_string(), ca.cert.clone()),
    ];
    let mut toml =
        format!("[tls]\nenabled = true\nclient_auth = \"{client_auth}\"\nreload_poll_secs = 1\n");
    if client_auth != "none" {
        toml.push_str("client_ca_file = \"tls/ca.crt\"\n");
        files.push(("tls/ca.crl".to_string(), ca.crl(revoked)));
        toml.push_str("client_crl_files = [\"tls/ca.crl\"]\n");
    }
    toml.push_str(extra_tls);
    toml.push('\n');
    toml.push_str(after);
    ServerOptions {
        extra_toml: toml,
        secret_files: files,
        https_ca: Some(ca.cert.clone()),
        ..ServerOptions::default()
    }
}
