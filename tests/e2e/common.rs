//! Test harness: the real `natter` binary on loopback, real WebSocket clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_client::protocol::codec::Encoding;
use natter_client::protocol::{
    ClientFrame, DeviceId, Envelope, OpaqueBytes, QueueItem, ServerFrame, UserId,
};
use natter_client::{ConnectOptions, Connection, Credentials, Event, HttpClient};

/// Limits the tests run under unless a test sets its own: generous, so that only the
/// rate-limit tests meet them.
pub const TEST_LIMITS: &[&str] = &[
    "--limit-register-ip",
    "100000:100000",
    "--limit-register-phone",
    "100000:100000",
    "--limit-send",
    "100000:100000",
    "--limit-prekeys",
    "100000:100000",
    "--limit-directory",
    "100000:100000",
    "--limit-typing",
    "100000:100000",
    // Every other limit; a test's own `--limit NAME=…` comes later and wins.
    "--limit",
    "ack=100000:100000,read=100000:100000,ping=100000:100000,account=100000:100000,\
     link_code=100000:100000,group_create=100000:100000,group_change=100000:100000,\
     group_info=100000:100000,presence=100000:100000,call_offer=100000:100000,\
     call_offer_pair=100000:100000,call_signal=100000:100000,call_ice=100000:100000,\
     ice_servers=100000:100000,room_join=100000:100000,room_signal=100000:100000",
    "--max-groups-per-hour",
    "100000",
];

/// The test limits minus those `args` sets itself (a flag may be given only once;
/// `--limit` may be repeated, the last one for a name winning).
fn test_limits_except(args: &[&str]) -> Vec<&'static str> {
    TEST_LIMITS
        .chunks(2)
        .filter(|pair| pair[0] == "--limit" || !args.contains(&pair[0]))
        .flatten()
        .copied()
        .collect()
}

pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub ws: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

static PHONE: AtomicU64 = AtomicU64::new(0);

/// A phone number no other test in this process uses.
pub fn phone() -> String {
    let n = PHONE.fetch_add(1, Ordering::Relaxed);
    format!("+1555{:03}{:05}", std::process::id() % 1000, n)
}

impl TestServer {
    /// A server on a fresh data directory with the test limits.
    pub fn start() -> TestServer {
        Self::start_with(&[])
    }

    /// A server on a fresh data directory; `args` come after (and override) the test limits.
    pub fn start_with(args: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, args);
        s._tmp = Some(tmp);
        s
    }

    /// A server on `data_dir` (kept by the caller, e.g. to restart on it).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> TestServer {
        Self::start_at(data_dir, "127.0.0.1:0", args)
    }

    /// A server on a fresh data directory with the built-in limits, not the tests' generous
    /// ones (for tests of the defaults themselves).
    pub fn start_with_default_limits(args: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Self::launch(&dir, "127.0.0.1:0", args, false);
        s._tmp = Some(tmp);
        s
    }

    /// A server on `data_dir` listening on `listen` (to come back where clients expect it).
    pub fn start_at(data_dir: &Path, listen: &str, args: &[&str]) -> TestServer {
        Self::launch(data_dir, listen, args, true)
    }

    fn launch(data_dir: &Path, listen: &str, args: &[&str], test_limits: bool) -> TestServer {
        let log = data_dir.with_extension("log");
        std::fs::create_dir_all(data_dir.parent().unwrap()).unwrap();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // The built-in TURN server on random ports, unless the test places it itself.
        let turn: &[&str] = if args
            .iter()
            .any(|a| a.starts_with("--turn-listen") || a.starts_with("--turn-enabled"))
        {
            &[]
        } else {
            &["--turn-listen", "127.0.0.1:0"]
        };
        // The SFU on a random port too.
        let sfu: &[&str] = if args.iter().any(|a| a.starts_with("--sfu-")) {
            &[]
        } else {
            &["--sfu-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(turn)
            .args(sfu)
            .args(["--log", "info"])
            .args(if test_limits {
                test_limits_except(args)
            } else {
                Vec::new()
            })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("natter binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line.expect("stdout");
            if let Some(url) = line.trim().strip_prefix("http ") {
                base = Some(url.trim().trim_end_matches('/').to_owned());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let Some(base) = base else {
            let _ = child.kill();
            panic!(
                "natter did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let ws = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
        TestServer {
            child: Some(child),
            base,
            ws,
            data_dir: data_dir.to_owned(),
            _tmp: None,
            log,
        }
    }

    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.base)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        for _ in 0..200 {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        panic!("natter did not exit within 10 s of SIGTERM");
    }

    /// Registers a new user (development-mode code) and returns its primary device.
    pub async fn register(&self) -> Credentials {
        self.http()
            .register_dev(&phone(), "test")
            .await
            .expect("registration")
    }

    pub async fn connect(&self, creds: &Credentials) -> Connection {
        self.connect_with(creds, ConnectOptions::default()).await
    }

    pub async fn connect_json(&self, creds: &Credentials) -> Connection {
        self.connect_with(
            creds,
            ConnectOptions {
                encoding: Encoding::Json,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn connect_with(&self, creds: &Credentials, opts: ConnectOptions) -> Connection {
        Connection::connect(&self.ws, &creds.token, opts)
            .await
            .expect("connect")
    }

    /// Registers a user and connects it; waits for its (empty) queue to drain.
    pub async fn user(&self) -> (Credentials, Connection) {
        let creds = self.register().await;
        let mut conn = self.connect(&creds).await;
        expect_queue_empty(&mut conn).await;
        (creds, conn)
    }

    /// Links a new device to the account of the primary connection `primary`.
    pub async fn link(&self, primary: &Connection) -> Credentials {
        let ServerFrame::LinkCode { code, .. } = primary
            .request(ClientFrame::DeviceLinkCode { id: 0 })
            .await
            .expect("link code")
        else {
            panic!("expected link_code");
        };
        self.http().link(&code, "linked").await.expect("link")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

/// The next server-initiated frame; panics on close or after [`WAIT`].
pub async fn recv(conn: &mut Connection) -> ServerFrame {
    match tokio::time::timeout(WAIT, conn.next_event()).await {
        Ok(Some(Event::Frame(f))) => f,
        Ok(Some(Event::Closed(c))) => panic!("connection closed: {c:?}"),
        Ok(None) => panic!("connection gone"),
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

/// Skips frames until one matches.
pub async fn recv_until(
    conn: &mut Connection,
    mut pred: impl FnMut(&ServerFrame) -> bool,
) -> ServerFrame {
    loop {
        let f = recv(conn).await;
        if pred(&f) {
            return f;
        }
    }
}

/// Waits for the close event and returns its code and reason.
pub async fn recv_close(conn: &mut Connection) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await {
            Ok(Some(Event::Closed(c))) => return c,
            Ok(Some(Event::Frame(_))) => {}
            Ok(None) => return None,
            Err(_) => panic!("connection not closed within {WAIT:?}"),
        }
    }
}

/// Asserts that nothing arrives for `dur`.
pub async fn expect_silence(conn: &mut Connection, dur: Duration) {
    if let Ok(Some(ev)) = tokio::time::timeout(dur, conn.next_event()).await {
        panic!("expected silence, got {ev:?}");
    }
}

pub async fn expect_queue_empty(conn: &mut Connection) {
    let f = recv(conn).await;
    assert!(
        matches!(f, ServerFrame::QueueEmpty {}),
        "expected queue_empty, got {f:?}"
    );
}

/// The next `deliver` frame (skipping `queue_empty`), acknowledged.
pub async fn recv_item(conn: &mut Connection) -> (u64, QueueItem) {
    let (qseq, item) = recv_item_unacked(conn).await;
    conn.notify(ClientFrame::Ack {
        id: 0,
        qseqs: vec![qseq],
    })
    .unwrap();
    (qseq, item)
}

/// The next `deliver` frame (skipping `queue_empty`), not acknowledged.
pub async fn recv_item_unacked(conn: &mut Connection) -> (u64, QueueItem) {
    match recv_until(conn, |f| !matches!(f, ServerFrame::QueueEmpty {})).await {
        ServerFrame::Deliver { qseq, item } => (qseq, (*item).clone()),
        other => panic!("expected deliver, got {other:?}"),
    }
}

pub fn envelope(device: DeviceId, body: &[u8]) -> Envelope {
    Envelope {
        device,
        body: OpaqueBytes(body.to_vec()),
    }
}

/// A `send` of `body` to one device of `to`.
pub fn send_frame(client_id: &str, to: UserId, device: DeviceId, body: &[u8]) -> ClientFrame {
    ClientFrame::Send {
        id: 0,
        client_id: client_id.to_owned(),
        to,
        envelopes: vec![envelope(device, body)],
    }
}

/// Sends and returns the assigned conversation sequence.
pub async fn send(conn: &Connection, client_id: &str, to: &Credentials, body: &[u8]) -> u64 {
    match conn
        .request(send_frame(client_id, to.user, to.device, body))
        .await
        .expect("send")
    {
        ServerFrame::Sent { seq, duplicate, .. } => {
            assert!(!duplicate);
            seq
        }
        other => panic!("expected sent, got {other:?}"),
    }
}

/// Opens the server's database read-only (for checks of what is stored).
pub fn open_db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join("natter.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open database")
}

pub fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).expect("count query")
}

/// Whether a test that needs an outside program must fail (CI) rather than skip.
pub fn require_all() -> bool {
    std::env::var("NATTER_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips (returns false, printing why) or, under `NATTER_REQUIRE_ALL=1`, fails.
pub fn available(what: &str, why_missing: &str) -> bool {
    if require_all() {
        panic!("{what} is required (NATTER_REQUIRE_ALL=1): {why_missing}");
    }
    eprintln!("SKIPPED: {what} is not available: {why_missing}");
    false
}

/// coturn (Debian's `turnserver`) on loopback with REST credentials, as the relay for
/// relay-only call tests until natter's own TURN server lands.
pub struct Coturn {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Coturn {
    pub const SECRET: &'static str = "natter-test-turn-secret";

    pub fn start() -> Option<Coturn> {
        let found = Command::new("turnserver")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found && !available("coturn (turnserver)", "install the coturn package") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let log = dir.path().join("turn.log");
        let child = Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args(["--min-port=40000", "--max-port=40999"])
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={}", Self::SECRET),
            ])
            .args([
                "--realm=natter.test",
                "--no-tls",
                "--no-dtls",
                "--no-tcp-relay",
            ])
            .args([
                "--allow-loopback-peers",
                "--no-cli",
                "--simple-log",
                "--verbose",
            ])
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--pidfile={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        // Ready once it listens.
        for _ in 0..100 {
            let listening = std::fs::read_to_string(&log)
                .map(|l| {
                    l.contains("IPv4. UDP listener opened on") || l.contains("listener opened")
                })
                .unwrap_or(false);
            if listening {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Coturn {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    /// Whether coturn's log shows an allocation that relayed data to a peer.
    pub fn relayed_something(&self) -> bool {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // natter-media's TURN client binds a channel per peer (which installs the
        // permission too) rather than sending CreatePermission.
        log.contains("ALLOCATE processed, success")
            && (log.contains("CREATE_PERMISSION processed, success")
                || log.contains("CHANNEL_BIND processed, success"))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the series named exactly `name` (labels included, as Prometheus prints them).
pub fn metric(text: &str, name: &str) -> f64 {
    try_metric(text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

pub fn try_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl TestServer {
    /// Asks for a registration code for `phone` over plain HTTP and expects a refusal:
    /// returns its status, `Retry-After` (seconds) and error code.
    pub async fn refused_code_request(&self, phone: &str) -> (u16, u64, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/register/request", self.base))
            .json(&serde_json::json!({ "phone": phone }))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        (
            status,
            retry,
            body["code"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A counter or gauge from `/metrics` (0 when it is not there).
    pub async fn metric(&self, name: &str) -> f64 {
        try_metric(&self.metrics().await, name).unwrap_or(0.0)
    }

    /// Waits up to `within` for the series `name` to reach `at_least`; returns its value.
    pub async fn wait_metric(&self, name: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = try_metric(&self.metrics().await, name).unwrap_or(0.0);
            if v >= at_least || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `within` for the series `name` to fall to `at_most`; returns its value.
    pub async fn wait_metric_at_most(&self, name: &str, at_most: f64, within: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = try_metric(&self.metrics().await, name).unwrap_or(0.0);
            if v <= at_most || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
