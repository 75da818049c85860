//! The fleet the benches against a real `keyward serve` share: the
//! installation's configuration, an admin router in process that brings
//! devices to `issued`, the closed loop that measures an operation and its
//! table row.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::BodyExt;
use keyward_ca::{IssueRequest, Role};
use keyward_kms::hsm::PublicKey;
use keyward_kms::types::DeviceId;
use keyward_server::AppState;
use keyward_server::admin_app;
use keyward_server::edge::identity::{ClientIdentity, PeerCertificate};
use keyward_tests::db::TestDb;
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;
use keyward_tests::terminal::Terminal;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{clock_ticks, cpu_secs, toml_str};

/// The card issuer every bench device is initialised for.
pub const ISSUER: &str = "bench-tdes";
/// Closed loops run this long before their window opens.
pub const WARMUP: Duration = Duration::from_secs(2);

/// One operation's outcome in a closed loop.
pub type Outcome = Result<(), String>;

pub fn write_config(
    dir: &Path,
    token: &TestToken,
    db: &TestDb,
    sessions: usize,
    extra: &str,
) -> PathBuf {
    let hsm = token.hsm_config(sessions);
    // `KW_BENCH_SERIALIZE_OBJECT_OPS=false` measures what a module without
    // SoftHSM 2.6.1's object races would allow (`hsm.serialize_object_ops`).
    let serialize = std::env::var("KW_BENCH_SERIALIZE_OBJECT_OPS").map_or(true, |v| v != "false");
    let bulk_nice = super::bulk_nice_line();
    let config = dir.join("keyward.toml");
    // All load comes from 127.0.0.1: the per-address connection cap (128 by
    // default, against one abusive client) would refuse the 200 devices.
    let text = format!(
        r#"data_dir = {data}

[hsm]
module = {module}
token_label = {label}
pin_file = {pin}
sessions = {sessions}
serialize_object_ops = {serialize}
{bulk_nice}
[database]
url = {url}

[server]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_names = ["localhost", "127.0.0.1"]
max_connections_per_address = 4096

[online]
# Each device logs in back to back here, far past a terminal's minute.
login_starts_per_minute = 1000000
{extra}"#,
        data = toml_str(&dir.join("data").display().to_string()),
        module = toml_str(&hsm.module.display().to_string()),
        label = toml_str(&hsm.token_label),
        pin = toml_str(&hsm.pin_file.as_ref().unwrap().display().to_string()),
        url = toml_str(&db.config.url),
    );
    std::fs::write(&config, text).unwrap();
    config
}

pub fn identity_of(der: &[u8]) -> ClientIdentity {
    ClientIdentity {
        peer: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
        cert: Some(PeerCertificate::from_der(der).expect("a certificate")),
    }
}

pub fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The admin router with the operators that bring devices to `issued`.
#[derive(Clone)]
pub struct Admin {
    pub router: Router,
    pub root: ClientIdentity,
    pub alice: ClientIdentity,
    pub bob: ClientIdentity,
}

impl Admin {
    pub async fn new(state: &AppState, data: &Path) -> Self {
        let pem = std::fs::read_to_string(data.join("operators/admin.pem")).unwrap();
        Self {
            router: admin_app(state.clone()),
            root: identity_of(&der_of_pem(&pem)),
            alice: operator(state, "alice").await,
            bob: operator(state, "bob").await,
        }
    }

    /// One POST as `who`; the body, which must have `status`. A 503 (the
    /// SQLite write lock not taken in time on a busy machine: "not
    /// performed") is retried.
    pub async fn post(
        &self,
        who: &ClientIdentity,
        path: &str,
        body: Value,
        status: StatusCode,
    ) -> Value {
        for attempt in 1.. {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            req.extensions_mut().insert(who.clone());
            let res = self.router.clone().oneshot(req).await.unwrap();
            let got = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            if got == StatusCode::SERVICE_UNAVAILABLE && attempt < 10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(got, status, "{path}: {}", String::from_utf8_lossy(&bytes));
            return serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        }
        unreachable!()
    }

    /// Check, original keys, customer, binding: device `n` is `issued`.
    pub async fn issue(&self, d: &mut SimDevice, n: usize) {
        self.issue_as(d, n, None).await;
    }

    /// [`Self::issue`], bound to an existing customer and account when
    /// given (several devices of one customer), else to a new customer `n`
    /// with account `62220202{n:08}`. Returns the customer and account.
    pub async fn issue_as(
        &self,
        d: &mut SimDevice,
        n: usize,
        existing: Option<(String, String)>,
    ) -> (String, String) {
        let id = d.id;
        let path = |tail: &str| format!("/admin/v1/devices/{id}{tail}");
        let c = self
            .post(
                &self.root,
                &path("/challenge"),
                json!({}),
                StatusCode::CREATED,
            )
            .await;
        let sig = d.sign_challenge(&hex::decode(c["challenge"].as_str().unwrap()).unwrap());
        self.post(
            &self.root,
            &path("/check"),
            json!({"challenge_id": c["challenge_id"], "signature": B64.encode(sig)}),
            StatusCode::OK,
        )
        .await;
        let pkg = self
            .post(
                &self.root,
                &path("/init"),
                json!({"issuer_id": ISSUER}),
                StatusCode::CREATED,
            )
            .await;
        let pkg = keyward_tests::wire::init_package_from_json(&pkg).unwrap();
        let answer = d.load_init_package(&pkg).unwrap();
        assert!(answer.accepted);
        let confirm =
            serde_json::to_value(keyward_tests::wire::confirm_body(ISSUER, &answer)).unwrap();
        self.post(&self.root, &path("/init/confirm"), confirm, StatusCode::OK)
            .await;
        let (customer, account) = match existing {
            Some(c) => c,
            None => self.customer(n).await,
        };
        self.post(
            &self.root,
            &path("/bindings"),
            json!({"customer_id": customer, "issuer_id": ISSUER,
                   "secure_element": "psam", "accounts": [account]}),
            StatusCode::CREATED,
        )
        .await;
        (customer, account)
    }

    /// Customer `n` applied for by alice and approved by bob (contact: the
    /// phone number [`phone`]`(n)`): its id and account.
    pub async fn customer(&self, n: usize) -> (String, String) {
        let account = format!("62220202{n:08}");
        let applied = self
            .post(
                &self.alice,
                "/admin/v1/applications",
                json!({"name": format!("Bench Customer {n}"),
                       "national_id": format!("1101011990{n:08}"),
                       "accounts": [account],
                       "contact": {"kind": "sms", "address": phone(n)}}),
                StatusCode::CREATED,
            )
            .await;
        let app_id = applied["application_id"].as_str().unwrap();
        let approved = self
            .post(
                &self.bob,
                &format!("/admin/v1/applications/{app_id}/approve"),
                json!({}),
                StatusCode::OK,
            )
            .await;
        let customer = approved["customer_id"].as_str().unwrap().to_owned();
        (customer, account)
    }
}

pub async fn operator(state: &AppState, name: &str) -> ClientIdentity {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let cert = state
        .ca
        .issue_for_public_key(
            &PublicKey::P256(point),
            IssueRequest::operator(name, Role::Operator),
        )
        .await
        .unwrap();
    identity_of(&cert.der)
}

pub fn dev_id(i: usize) -> DeviceId {
    let n = u32::try_from(i).unwrap().to_be_bytes();
    DeviceId::from_bytes([0x62, 0x22, 0xbe, 0x00, n[0], n[1], n[2], n[3]])
}

/// Runs `f` over `items`, `tasks` at a time; the items back in order.
pub async fn in_parallel<T, F, Fut>(items: Vec<T>, tasks: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = T> + Send,
{
    let n = items.len();
    let queue = Arc::new(std::sync::Mutex::new(
        items.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (queue, f) = (queue.clone(), f.clone());
        set.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((i, item)) = next else { break };
                done.push((i, f(i, item).await));
            }
            done
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        for (i, item) in r.unwrap() {
            out[i] = Some(item);
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

// ---- the server --------------------------------------------------------------

/// The `_sum` and `_count` samples of the server's latency histograms
/// (`keyward_http_request_duration_seconds`,
/// `keyward_hsm_operation_duration_seconds`) from its `/metrics`.
pub fn latency_samples(admin: &str, ca_pem: &Path) -> std::collections::BTreeMap<String, f64> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca_pem)
        .arg(format!("https://{admin}/metrics"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("_duration_seconds_sum{") || l.contains("_duration_seconds_count{"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Mean server-side latency (and count) per route and HSM operation between two
/// [`latency_samples`], for the ones that ran at least `min` times.
pub fn print_server_side(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    min: f64,
) {
    let mut parts = Vec::new();
    for (key, count) in after {
        let Some(base) = key.split_once("_count{") else {
            continue;
        };
        let n = count - before.get(key).copied().unwrap_or(0.0);
        let sum_key = format!("{}_sum{{{}", base.0, base.1);
        let sum = after.get(&sum_key).copied().unwrap_or(0.0)
            - before.get(&sum_key).copied().unwrap_or(0.0);
        if n < min {
            continue;
        }
        // The label values only: `public /v1/login/start`, `hsm tls_handshake_sign ok`.
        let values: Vec<&str> = base
            .1
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.trim_matches('"')))
            .collect();
        let what = if base.0.contains("hsm") {
            format!("hsm {}", values.join(" "))
        } else {
            values.join(" ")
        };
        parts.push(format!("{what}: {:.2} ms ×{n:.0}", sum / n * 1000.0));
    }
    if !parts.is_empty() {
        println!("    server-side means: {}", parts.join("; "));
    }
}

// ---- measuring ---------------------------------------------------------------

/// CPU seconds used so far by all processes named `comm` (PostgreSQL's
/// backends: `postgres`).
pub fn procs_cpu_secs(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .map(|e| cpu_secs(e.file_name().to_string_lossy()))
        .sum()
}

/// CPU seconds all processes of the machine have used so far (busy, that
/// is neither idle nor waiting for I/O), from `/proc/stat`.
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    (total - idle) / clock_ticks()
}

/// What one closed-loop run measured.
pub struct Stats {
    pub ops: usize,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub server_cores: f64,
    pub client_cores: f64,
    /// Cores busy in PostgreSQL's processes.
    pub db_cores: f64,
    /// Cores busy with anything else on the machine (other builds).
    pub other_cores: f64,
}

/// How long the operations in flight when a window ends may take to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// Every worker runs `op` back to back for the warm-up and the window;
/// operations that started and ended inside the window are counted.
pub async fn closed_loop<W, F, Fut>(
    workers: Vec<W>,
    window: Duration,
    server_pid: &str,
    perf: Option<&Path>,
    op: F,
) -> (Vec<W>, Stats)
where
    W: Send + 'static,
    F: Fn(W) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (W, Outcome)> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (from, to) = (t0 + WARMUP, t0 + WARMUP + window);
    let mut set = tokio::task::JoinSet::new();
    for mut w in workers {
        let (stop, op) = (stop.clone(), op.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let (back, outcome) = op(w).await;
                w = back;
                let end = Instant::now();
                if start >= from && end <= to {
                    match outcome {
                        Ok(()) => lat.push(end - start),
                        Err(e) => failures.push(e),
                    }
                }
            }
            (w, lat, failures)
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let self_pid = std::process::id().to_string();
    let (s0, c0, d0, m0) = (
        cpu_secs(server_pid),
        cpu_secs(&self_pid),
        procs_cpu_secs("postgres"),
        machine_busy_secs(),
    );
    let recorder = perf.map(|out| {
        Command::new("perf")
            .args(["record", "-q", "-g", "-e", "cpu-clock", "-F", "999", "-p"])
            .arg(server_pid)
            .arg("-o")
            .arg(out)
            .args(["--", "sleep"])
            .arg(format!("{}", window.as_secs_f64()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running perf")
    });
    tokio::time::sleep_until(to.into()).await;
    let (s1, c1, d1, m1) = (
        cpu_secs(server_pid),
        cpu_secs(&self_pid),
        procs_cpu_secs("postgres"),
        machine_busy_secs(),
    );
    stop.store(true, Ordering::Relaxed);
    let mut workers = Vec::new();
    let mut lat = Vec::new();
    let mut failures = Vec::new();
    // Each worker ends with the operation it is in; one that never ends is a
    // hung request, and the bench says so instead of spinning unseen.
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(r) = set.join_next().await {
            let (w, l, f) = r.unwrap();
            workers.push(w);
            lat.extend(l);
            failures.extend(f);
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "{} of the operations in flight at the window's end did not finish within {DRAIN_LIMIT:?}",
        set.len()
    );
    if let Some(mut p) = recorder {
        let _ = p.wait();
    }
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    let secs = window.as_secs_f64();
    let stats = Stats {
        ops: lat.len(),
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        failed: failures.len(),
        first_failure: failures.into_iter().next(),
        server_cores: (s1 - s0) / secs,
        client_cores: (c1 - c0) / secs,
        db_cores: (d1 - d0) / secs,
        other_cores: ((m1 - m0) - (s1 - s0) - (c1 - c0) - (d1 - d0)).max(0.0) / secs,
    };
    (workers, stats)
}

pub fn header() {
    println!(
        "{:<50} {:>5} {:>9} {:>8} {:>8} {:>6} {:>7} {:>7} {:>5} {:>6}",
        "what", "conc", "per s", "p50 ms", "p99 ms", "failed", "server", "client", "pg", "other"
    );
}

pub fn print_row(what: &str, conc: usize, s: &Stats, show_server: bool) {
    let srv = if show_server {
        format!("{:.2}", s.server_cores)
    } else {
        "-".to_owned()
    };
    println!(
        "{:<50} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>7} {:>7.2} {:>5.2} {:>6.2}",
        what,
        conc,
        s.ops as f64 / s.secs,
        s.p50_ms,
        s.p99_ms,
        s.failed,
        srv,
        s.client_cores,
        s.db_cores,
        s.other_cores
    );
    if let Some(e) = &s.first_failure {
        println!("    first failure: {e}");
    }
}

/// Customer `n`'s phone number: its own, so a bench can tell whose code a
/// delivered message carries.
pub fn phone(n: usize) -> String {
    format!("+86138{n:08}")
}

/// The installation in this process on `config_path` (init included; the
/// set-up waits for SQLite's write lock as the tests do), its admin router
/// and the bench issuer.
pub async fn install(config_path: &Path, data: &Path) -> (AppState, Admin) {
    use keyward_server::{bootstrap, edge::startup, metrics::Metrics};
    let mut config = keyward_config::Config::load(config_path).unwrap();
    config.database.acquire_timeout_ms = keyward_tests::db::TEST_ACQUIRE_TIMEOUT_MS;
    let metrics = Metrics::new().unwrap();
    let opened = bootstrap::open(&config, Some(metrics.clone()))
        .await
        .unwrap();
    bootstrap::init_opened(&config, &opened).await.unwrap();
    let state = startup::state_from(config, opened, metrics).await.unwrap();
    let admin = Admin::new(&state, data).await;
    admin
        .post(
            &admin.root,
            "/admin/v1/issuers",
            json!({"issuer_id": ISSUER, "family": "tdes"}),
            StatusCode::CREATED,
        )
        .await;
    (state, admin)
}

/// `n` P-256 devices imported as batch `batch`.
pub async fn import(admin: &Admin, n: usize, batch: &str) -> Vec<SimDevice> {
    let devs: Vec<SimDevice> = (0..n)
        .map(|i| SimDevice::p256(dev_id(i)).unwrap())
        .collect();
    let mut manifest = format!("{}\n", keyward_device_provisioning::MANIFEST_HEADER);
    for d in &devs {
        manifest.push_str(&d.manifest_row());
        manifest.push('\n');
    }
    admin
        .post(
            &admin.root,
            "/admin/v1/batches",
            json!({"batch_id": batch, "manifest": manifest}),
            StatusCode::CREATED,
        )
        .await;
    devs
}

/// The mTLS client of an issued device against the server at `url`: its
/// registered certificate and the issuing CA's.
pub async fn terminal_for(state: &AppState, dev: &SimDevice, url: &str) -> Terminal {
    let serial: keyward_ca::Serial = state
        .provisioning
        .device(dev.id)
        .await
        .unwrap()
        .cert_serial
        .unwrap()
        .parse()
        .unwrap();
    let rec = state.ca.get(&serial).await.unwrap().unwrap();
    let chain = format!("{}{}", rec.pem, state.ca.issuing_pem());
    Terminal::new(url, state.ca.root_pem(), &chain, dev).unwrap()
}

/// A session for the device: a login, dialled again on a busy server's
/// 503 (e.g. SQLite's write lock not taken in time).
pub async fn session(terminal: &Terminal, dev: &mut SimDevice) -> String {
    for attempt in 1.. {
        let out = keyward_tests::terminal::login(
            terminal,
            dev,
            ISSUER,
            keyward_tests::terminal::LoginOptions::default(),
        )
        .await;
        match out.and_then(|o| o.answer()) {
            Ok(a) => return a.session_token,
            Err(_) if attempt < 10 => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("login of {}: {e:#}", dev.id),
        }
    }
    unreachable!()
}
