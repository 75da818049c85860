//! Device login throughput against a real `keyward serve`:
//! a load client that opens a fresh mutual-TLS connection for every request
//! (a terminal dialling in) and runs the whole login flow of
//! docs/protocol.md §10 — `POST /v1/login/start`, the device's answer and
//! `POST /v1/login/finish` on one kept-alive connection — with the
//! simulator computing every response ([`keyward_tests::terminal::login`]).
//!
//! For each database backend (SQLite always; PostgreSQL too when
//! `KEYWARD_BENCH_DATABASE_URL` names one, each run in its own schema):
//!
//! 1. An installation is made in this process through the library
//!    (`bootstrap::open` + `init_opened` on a fresh SoftHSM token), and a
//!    fleet of devices (200; `KW_BENCH_DEVICES`) is brought to `issued`
//!    through the admin router (`oneshot` requests): one batch import, then
//!    per device the genuine-device check, original keys for a TDES issuer
//!    and their confirmation, a customer applied for and approved by two
//!    operators, and the binding.
//! 2. `keyward serve` is spawned on that database and token (this bench
//!    binary re-executed as the `keyward` CLI — the same `cli::main` as the
//!    `keyward` binary, built with the bench profile; `KEYWARD_BIN=path` runs
//!    another binary instead), and every device logs in once (that login
//!    carries the initial key update and its confirmation; not part of the
//!    steady state).
//! 3. Measured, closed loop, each concurrent worker with its own device:
//!    steady-state logins (no key update) at 50 and 200 concurrent devices,
//!    and, beside them for scale, (a) fresh mTLS connection + handshake +
//!    `GET /v1/ping` against the same listener (server key in the HSM), the
//!    same with two pings on the connection (a login's two requests without
//!    its work: what any two-step login could reach), the same with TLS
//!    session resumption off (every handshake a full one), and
//!    (b) `Kms::challenge` + `Kms::verify_challenge_response` alone, in
//!    this process on the same token, from the same number of tasks.
//! 4. Then (`KW_BENCH_UNDER_BULK=0` skips it) logins of 8 devices, and
//!    `GET /ready` every 100 ms, first idle, then while 4 loops post
//!    100 000-item bulk batches (wrong MACs over the fleet's keys: each item
//!    a full HSM verification) to `/admin/v1/macs/verify`: interactive HSM
//!    work must not queue behind bulk chunks. `KW_BENCH_BULK_NICE=N` sets
//!    the bulk HSM workers' nice value (`hsm.bulk_nice`; 0 measures the
//!    lanes without it).
//!
//! Connections are fresh, TLS sessions need not be: the server resumes
//! from its session store (`server.tls_session_cache_entries`, one ticket
//! per connection) and each device's `Terminal` resumes. The server-side
//! line under a row shows how many handshakes still needed the HSM
//! signature.
//!
//! The table gives the rate, p50/p99 latency of one operation, refusals and
//! errors, and the CPU the server process and this process (the load
//! client) used during the window, in cores. The load client shares the
//! machine with the server. It prints figures; it asserts nothing about
//! them. Run with
//!
//! ```text
//! KEYWARD_BENCH_DATABASE_URL=postgres://keyward:keyward@127.0.0.1:5432/keyward_bench \
//!   cargo bench -p keyward-tests --bench login
//! ```
//!
//! (without the variable, SQLite only). `KW_BENCH_SECS` sets the measured
//! window (default 6 s, after 2 s of warm-up), `KW_BENCH_HSM_SESSIONS` the
//! HSM sessions of both server and in-process KMS (default 2, the config
//! default), `KW_BENCH_BACKENDS=sqlite|postgres` picks one backend and
//! `KW_BENCH_PERF=FILE` records a `perf record -g -e cpu-clock` profile of
//! the server during the 200-device login window (`KW_BENCH_PERF_CONC=50`:
//! the 50-device one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_config::Config;
use keyward_kms::Kms;
use keyward_kms::types::IssuerId;
use keyward_server::bootstrap;
use keyward_server::edge::startup;
use keyward_server::metrics::Metrics;
use keyward_tests::db::{postgres, sqlite};
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;
use keyward_tests::terminal::{self, LoginOptions, Terminal};
use serde_json::{Value, json};

use common::fleet::{
    Admin, ISSUER, Outcome, Stats, WARMUP, closed_loop, dev_id, header, in_parallel,
    latency_samples, print_row, print_server_side, write_config,
};
use common::{env_usize, spawn_serve};

const BACKEND_ENV: &str = "KW_BENCH_BACKEND";
const DATABASE_URL_ENV: &str = "KEYWARD_BENCH_DATABASE_URL";
const CONCURRENCY: [usize; 2] = [50, 200];
/// Tasks bringing the fleet to `issued` and making the first logins.
const SETUP_TASKS: usize = 8;

fn main() -> ExitCode {
    if let Some(code) = common::keyward_if_reexecuted() {
        return code;
    }
    match std::env::var(BACKEND_ENV) {
        Ok(backend) => {
            one_backend(&backend);
            ExitCode::SUCCESS
        }
        Err(_) => {
            // One child process per backend: its own SoftHSM token, its own
            // PKCS#11 module initialisation, its own server.
            let pg = std::env::var(DATABASE_URL_ENV)
                .ok()
                .filter(|u| !u.trim().is_empty());
            let backends: Vec<String> = match std::env::var("KW_BENCH_BACKENDS") {
                Ok(b) => b.split(',').map(|s| s.trim().to_owned()).collect(),
                Err(_) if pg.is_some() => vec!["sqlite".into(), "postgres".into()],
                Err(_) => vec!["sqlite".into()],
            };
            let exe = std::env::current_exe().unwrap();
            let mut ok = true;
            for b in backends {
                let status = Command::new(&exe).env(BACKEND_ENV, &b).status().unwrap();
                ok &= status.success();
                println!();
            }
            if pg.is_none() {
                println!("(PostgreSQL skipped: set {DATABASE_URL_ENV}=postgres://…)");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

// ---- the installation and its fleet ------------------------------------------

/// One device and its mTLS client.
struct Worker {
    dev: SimDevice,
    terminal: Terminal,
    /// The same client without TLS session resumption.
    full: Terminal,
}

/// A steady-state login: start, the device's answer, finish.
async fn login_op(mut w: Worker) -> (Worker, Outcome) {
    let r = terminal::login(&w.terminal, &mut w.dev, ISSUER, LoginOptions::default()).await;
    let outcome = match r {
        Ok(out) if out.challenge.key_update.is_some() => {
            Err("a steady-state login carried a key update".to_owned())
        }
        Ok(out) => out.answer().map(|_| ()).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    (w, outcome)
}

/// A fresh mTLS connection and `GET /v1/ping` on it.
async fn ping_op(w: Worker) -> (Worker, Outcome) {
    let r = w.terminal.call(Method::GET, "/v1/ping", None, None).await;
    let outcome = match r {
        Ok(reply) if reply.status == StatusCode::OK => Ok(()),
        Ok(reply) => Err(format!("ping: {} {}", reply.status, reply.body)),
        Err(e) => Err(format!("{e:#}")),
    };
    (w, outcome)
}

/// A fresh mTLS connection and two `GET /v1/ping` on it: a login's shape
/// (two requests on one connection) without its work, the ceiling of any
/// two-step protocol against row (a).
async fn ping_twice_op(w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        let mut c = w.terminal.connect().await.map_err(|e| format!("{e:#}"))?;
        for _ in 0..2 {
            let reply = c
                .call(Method::GET, "/v1/ping", None, None)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if reply.status != StatusCode::OK {
                return Err(format!("ping: {} {}", reply.status, reply.body));
            }
        }
        Ok(())
    }
    .await;
    (w, outcome)
}

/// A fresh mTLS connection with a full handshake (no resumption) and
/// `GET /v1/ping` on it.
async fn ping_full_op(w: Worker) -> (Worker, Outcome) {
    let r = w.full.call(Method::GET, "/v1/ping", None, None).await;
    let outcome = match r {
        Ok(reply) if reply.status == StatusCode::OK => Ok(()),
        Ok(reply) => Err(format!("ping: {} {}", reply.status, reply.body)),
        Err(e) => Err(format!("{e:#}")),
    };
    (w, outcome)
}

/// The login's two HSM calls alone, in process: an HSM-random challenge and
/// the check of the device's answer.
async fn hsm_op(kms: Kms, issuer: IssuerId, w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        let ch = kms.challenge(&issuer).await.map_err(|e| e.to_string())?;
        let resp = w
            .dev
            .auth_response(ISSUER, &ch)
            .map_err(|e| e.to_string())?;
        let ok = kms
            .verify_challenge_response(&issuer, w.dev.id, &ch, &resp)
            .await
            .map_err(|e| e.to_string())?;
        if ok {
            Ok(())
        } else {
            Err("response refused".to_owned())
        }
    }
    .await;
    (w, outcome)
}

// ---- one backend -------------------------------------------------------------

/// Devices logging in while the bulk batches run (and idle, before them).
const UNDER_BULK_DEVICES: usize = 8;
/// Concurrent bulk batches, each of the configured maximum of items.
const BULK_BATCHES: usize = 4;
const BULK_ITEMS: usize = keyward_config::bulk::DEFAULT_MAX_ITEMS;

/// A JSON bulk body of `n` CMAC-TDES items spread over the devices' active
/// working keys, with wrong MACs: each still costs its HSM verification.
fn bulk_body(workers: &[Worker], n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|j| {
            let d = &workers[j % workers.len()].dev;
            json!({
                "device_id": d.id.to_string(),
                "issuer_id": ISSUER,
                "key_version": d.key_version(ISSUER).expect("logged in once"),
                "algorithm": "CMAC-TDES",
                "message": B64.encode((j as u64).to_be_bytes().repeat(8)),
                "mac": B64.encode([0u8; 8]),
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap()
}

/// `batches` loops of `POST /admin/v1/macs/verify` with the body in `file`,
/// as the admin (curl), until stopped.
struct BulkLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize)>>,
}

impl BulkLoad {
    fn start(admin: &str, operators: &Path, file: &Path, batches: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..batches)
            .map(|_| {
                let stop = stop.clone();
                let url = format!("https://{admin}/admin/v1/macs/verify");
                let (ops, file) = (operators.to_owned(), file.to_owned());
                std::thread::spawn(move || {
                    let (mut ok, mut other) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let out = Command::new("curl")
                            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                            .args(["--max-time", "600", "--cacert"])
                            .arg(ops.join("ca.pem"))
                            .arg("--cert")
                            .arg(ops.join("admin.pem"))
                            .arg("--key")
                            .arg(ops.join("admin.key"))
                            .args(["-H", "content-type: application/json", "--data-binary"])
                            .arg(format!("@{}", file.display()))
                            .arg(&url)
                            .output()
                            .expect("running curl");
                        if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                            ok += 1;
                        } else {
                            other += 1;
                        }
                    }
                    (ok, other)
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops after the batches in flight: (answered 200, other answers).
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

/// `GET /ready` every 100 ms (curl), as a load balancer probes.
struct ReadyProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(u16, f64)>>,
}

impl ReadyProbe {
    fn start(admin: &str, ca_pem: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, ca) = (format!("https://{admin}/ready"), ca_pem.to_owned());
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let out = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
                    .args(["--max-time", "10", "--cacert"])
                    .arg(&ca)
                    .arg(&url)
                    .output()
                    .expect("running curl");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let mut parts = text.split_whitespace();
                let status = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let secs: f64 = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                seen.push((status, secs * 1000.0));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<(u16, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn print_ready(what: &str, seen: &[(u16, f64)]) {
    let ok = seen.iter().filter(|(s, _)| *s == 200).count();
    let mut ms: Vec<f64> = seen.iter().map(|(_, ms)| *ms).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1]
    };
    println!(
        "{:<50} {:>5} {:>9} {:>8.2} {:>8.2} {:>6}   ({ok} of {} answered 200; curl's time, with its TLS handshake)",
        what,
        1,
        "-",
        pct(0.50),
        pct(0.99),
        seen.len() - ok,
        seen.len()
    );
}

fn one_backend(backend: &str) {
    let devices = env_usize("KW_BENCH_DEVICES", 200).max(CONCURRENCY[1]);
    let window = Duration::from_secs(env_usize("KW_BENCH_SECS", 6) as u64);
    let sessions = env_usize("KW_BENCH_HSM_SESSIONS", 2);
    let perf = std::env::var_os("KW_BENCH_PERF").map(PathBuf::from);
    let perf_conc = env_usize("KW_BENCH_PERF_CONC", CONCURRENCY[1]);
    // The token must exist before the PKCS#11 module is first loaded, and
    // creating it sets SOFTHSM2_CONF: before any other thread runs.
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = match backend {
        "sqlite" => sqlite().unwrap(),
        "postgres" => {
            let url = std::env::var(DATABASE_URL_ENV)
                .unwrap_or_else(|_| panic!("{DATABASE_URL_ENV} is not set"));
            rt.block_on(postgres(url.trim())).unwrap()
        }
        other => panic!("unknown backend {other:?} (sqlite or postgres)"),
    };
    let dir = tempfile::Builder::new()
        .prefix("keyward-loginbench-")
        .tempdir()
        .unwrap();
    let config_path = write_config(dir.path(), &token, &db, sessions, "");
    let data = dir.path().join("data");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let db_name = match backend {
        "sqlite" => "SQLite (WAL, temp file)",
        _ => "PostgreSQL (own schema)",
    };
    println!(
        "== Login on {db_name}: {devices} P-256 devices, TDES issuer, SoftHSM token {}, \
         {sessions} HSM sessions, {cores} cores, window {}s after {}s warm-up",
        token.label,
        window.as_secs(),
        WARMUP.as_secs()
    );

    rt.block_on(async {
        // 1. The installation, in process.
        let t = Instant::now();
        let mut config = Config::load(&config_path).unwrap();
        // The set-up waits longer for SQLite's write lock than the service
        // default (as the tests do); the spawned server keeps the default.
        config.database.acquire_timeout_ms = keyward_tests::db::TEST_ACQUIRE_TIMEOUT_MS;
        let metrics = Metrics::new().unwrap();
        let opened = bootstrap::open(&config, Some(metrics.clone()))
            .await
            .unwrap();
        bootstrap::init_opened(&config, &opened).await.unwrap();
        let state = startup::state_from(config, opened, metrics).await.unwrap();
        let admin = Admin::new(&state, &data).await;
        admin
            .post(
                &admin.root,
                "/admin/v1/issuers",
                json!({"issuer_id": ISSUER, "family": "tdes"}),
                StatusCode::CREATED,
            )
            .await;
        let devs: Vec<SimDevice> = (0..devices)
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
                json!({"batch_id": "LOGIN-BENCH", "manifest": manifest}),
                StatusCode::CREATED,
            )
            .await;
        let a = admin.clone();
        let devs = in_parallel(devs, SETUP_TASKS, move |i, mut d| {
            let a = a.clone();
            async move {
                a.issue(&mut d, i).await;
                d
            }
        })
        .await;
        println!(
            "(set-up in process: init, {devices} devices imported and issued in {:.1}s, not timed)",
            t.elapsed().as_secs_f64()
        );

        // 2. The server, and the fleet's first logins (with key update).
        let root_pem = state.ca.root_pem().to_owned();
        let issuing_pem = state.ca.issuing_pem().to_owned();
        let server = spawn_serve(&config_path, &dir.path().join("serve.log"), &[BACKEND_ENV]);
        let server_pid = server.child.id().to_string();
        let ca_file = data.join("operators/ca.pem");
        let url = format!("https://{}", server.public);
        let mut workers = Vec::new();
        for dev in devs {
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
            let chain = format!("{}{issuing_pem}", rec.pem);
            let terminal = Terminal::new(&url, &root_pem, &chain, &dev).unwrap();
            let full = terminal.without_resumption();
            workers.push(Worker {
                dev,
                terminal,
                full,
            });
        }
        let t = Instant::now();
        let retried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = retried.clone();
        let mut workers = in_parallel(workers, SETUP_TASKS, move |_, mut w: Worker| {
            let retried = r.clone();
            async move {
                // A busy server may answer 503 (e.g. SQLite's write lock not
                // acquired in time): the device dials in again.
                for attempt in 1.. {
                    let out =
                        terminal::login(&w.terminal, &mut w.dev, ISSUER, LoginOptions::default())
                            .await;
                    match out.and_then(|o| o.answer().map(|a| (o, a))) {
                        Ok((o, a)) => {
                            assert!(o.challenge.key_update.is_some() || attempt > 1);
                            assert_eq!(a.key_update.as_deref(), Some("activated"));
                            break;
                        }
                        Err(e) if attempt < 10 => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("first login of {}: {e:#}", w.dev.id),
                    }
                }
                w
            }
        })
        .await;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "(first login of every device, with key update + confirmation: {devices} in {secs:.1}s, \
             {:.0}/s from {SETUP_TASKS} tasks, {} retried, not in the table)",
            devices as f64 / secs,
            retried.load(Ordering::Relaxed)
        );
        println!();
        header();

        // 3. The table.
        let issuer: IssuerId = ISSUER.parse().unwrap();
        for conc in CONCURRENCY {
            let rest = workers.split_off(conc);
            let perf_here = if conc == perf_conc {
                perf.as_deref()
            } else {
                None
            };
            let m0 = latency_samples(&server.admin, &ca_file);
            let (back, login) =
                closed_loop(workers, window, &server_pid, perf_here, login_op).await;
            print_row("login (start + finish, 1 mTLS connection)", conc, &login, true);
            let m1 = latency_samples(&server.admin, &ca_file);
            print_server_side(&m0, &m1, 10.0);
            let (back, ping) = closed_loop(back, window, &server_pid, None, ping_op).await;
            print_row("  (a) mTLS connect + handshake + GET /v1/ping", conc, &ping, true);
            let m2 = latency_samples(&server.admin, &ca_file);
            print_server_side(&m1, &m2, 10.0);
            let (back, twice) = closed_loop(back, window, &server_pid, None, ping_twice_op).await;
            print_row("  (a) same, two pings on the one connection", conc, &twice, true);
            let m2b = latency_samples(&server.admin, &ca_file);
            print_server_side(&m2, &m2b, 10.0);
            let rate = |s: &Stats| s.ops as f64 / s.secs;
            println!(
                "      of (a)'s rate: login {:.0} %, two pings {:.0} %",
                100.0 * rate(&login) / rate(&ping),
                100.0 * rate(&twice) / rate(&ping)
            );
            let m2 = m2b;
            let (back, s) = closed_loop(back, window, &server_pid, None, ping_full_op).await;
            print_row("  (a) same, TLS resumption off (full handshake)", conc, &s, true);
            let m3 = latency_samples(&server.admin, &ca_file);
            print_server_side(&m2, &m3, 10.0);
            let (kms, issuer) = (state.kms.clone(), issuer.clone());
            let hsm_op = move |w| hsm_op(kms.clone(), issuer.clone(), w);
            let (back, s) = closed_loop(back, window, &server_pid, None, hsm_op).await;
            print_row("  (b) HSM challenge + verify, in process", conc, &s, false);
            workers = back;
            workers.extend(rest);
        }
        println!(
            "(server, client, pg, other: CPU cores busy in the window with `keyward serve`, this \
             process (load client, in-process KMS), PostgreSQL and everything else on the machine)"
        );

        // 4. Logins and readiness while a switch's bulk batches run.
        if env_usize("KW_BENCH_UNDER_BULK", 1) > 0 {
            println!();
            let bulk_file = dir.path().join("bulk.json");
            std::fs::write(&bulk_file, bulk_body(&workers, BULK_ITEMS)).unwrap();
            let mut rest = workers.split_off(UNDER_BULK_DEVICES);
            let operators = data.join("operators");
            let probe = ReadyProbe::start(&server.admin, &ca_file);
            let (back, idle) = closed_loop(workers, window, &server_pid, None, login_op).await;
            let ready_idle = probe.stop();
            print_row("login, idle", UNDER_BULK_DEVICES, &idle, true);
            print_ready("  GET /ready, idle", &ready_idle);
            let bulk = BulkLoad::start(&server.admin, &operators, &bulk_file, BULK_BATCHES);
            let probe = ReadyProbe::start(&server.admin, &ca_file);
            let (back, busy) = closed_loop(back, window, &server_pid, None, login_op).await;
            let ready_busy = probe.stop();
            let batches = bulk.stop();
            print_row(
                &format!("login, {BULK_BATCHES} x {BULK_ITEMS}-item batches running"),
                UNDER_BULK_DEVICES,
                &busy,
                true,
            );
            print_ready("  GET /ready, same window", &ready_busy);
            println!(
                "(bulk: {} batches answered 200 ({} other) while logins ran; p99 ratio busy/idle \
                 {:.2})",
                batches.0,
                batches.1,
                busy.p99_ms / idle.p99_ms
            );
            workers = back;
            workers.append(&mut rest);
        }
        drop(server);
        if let Some(p) = &perf {
            println!(
                "(perf profile of the server, {perf_conc}-device login window: {})",
                p.display()
            );
        }
        drop(state);
    });
    drop(rt);
    bootstrap::close_hsm();
    drop(db);
    drop(token);
}
