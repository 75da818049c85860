//! E-purse load throughput against a real `keyward serve` (docs/protocol.md
//! §13): each operation is one terminal dialling in for one load — a fresh
//! mutual-TLS connection, `POST /v1/loads` (the device-signed request; the
//! server verifies it, signs the permit in the HSM and commits the debit),
//! the purse applying the permit, `POST /v1/loads/{id}/report` (the
//! device-signed report; the server posts the load) — with durability on
//! (PostgreSQL `synchronous_commit = on`, SQLite WAL `synchronous = FULL`).
//!
//! For each backend (SQLite always; PostgreSQL too when
//! `KEYWARD_BENCH_DATABASE_URL` names one):
//!
//! 1. An installation in process (`init` on a fresh SoftHSM token), a fleet
//!    brought to `issued` through the admin router, each device's customer
//!    given a ledger account and credited; one "hot" customer whose account
//!    a tenth of the devices share.
//! 2. `keyward serve` spawned on it; every device logs in once (a session).
//! 3. Measured, closed loop: beside them for scale, a fresh mTLS
//!    connection and `GET /v1/ping` (the same-run baseline); loads, every
//!    device its own account (all credit the one float); loads with a
//!    tenth of them debiting the hot account; then the loads paced at half
//!    the closed-loop rate, with p50/p99 of each leg (request → permit,
//!    report → posted).
//!
//! The purse checks each permit against its request (`LoadPermit::answers`)
//! but not its certificate chain: that is client CPU on the server's
//! machine, and the route and end-to-end tests check it. The bench prints
//! figures; it asserts nothing about them. Run with
//!
//! ```text
//! KEYWARD_BENCH_DATABASE_URL=postgres://keyward:keyward@127.0.0.1:5432/keyward_bench \
//!   cargo bench -p keyward-tests --bench load
//! ```
//!
//! `KW_BENCH_SECS` sets the window (default 6 s), `KW_BENCH_CONC` the
//! concurrent devices (default 32), `KW_BENCH_BACKENDS=sqlite|postgres` one
//! backend, `KW_BENCH_HSM_SESSIONS` the server's HSM sessions (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_protocol::load::LoadPermit;
use keyward_tests::purse::Purse;
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;
use keyward_tests::terminal::Terminal;
use serde_json::json;

use common::fleet::{
    Outcome, Stats, WARMUP, closed_loop, header, import, in_parallel, install, print_row, session,
    terminal_for, write_config,
};
use common::{env_usize, spawn_serve};

const BACKEND_ENV: &str = "KW_BENCH_BACKEND";
const SETUP_TASKS: usize = 8;
/// Credited to every account: far more than the window can load.
const FUNDS: i64 = 900_000_000_000;
const AMOUNT: u64 = 100;

/// Leg latencies: (when the load started, request → permit, report).
type Legs = Arc<Mutex<Vec<(Instant, Duration, Duration)>>>;

/// One device dialling in for loads.
struct Worker {
    dev: SimDevice,
    terminal: Terminal,
    token: String,
    purse: Purse,
    legs: Legs,
    /// For the paced run: this worker's next start.
    next: Option<(Instant, Duration)>,
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

/// One load on one fresh connection: request, permit, apply, report.
async fn load_op(mut w: Worker) -> (Worker, Outcome) {
    if let Some((next, period)) = w.next {
        tokio::time::sleep_until(next.into()).await;
        w.next = Some((next + period, period));
    }
    let outcome = load_once(&mut w).await;
    (w, outcome)
}

async fn load_once(w: &mut Worker) -> Outcome {
    let e = |e: anyhow::Error| format!("{e:#}");
    let start = Instant::now();
    let mut conn = w.terminal.connect().await.map_err(e)?;
    let req = w.purse.request(&w.dev, AMOUNT).map_err(e)?;
    let r = conn
        .call(Method::POST, "/v1/loads", Some(&req.body), Some(&w.token))
        .await
        .map_err(e)?;
    if r.status != StatusCode::CREATED {
        return Err(format!("request: {} {}", r.status, r.body));
    }
    let permit_leg = start.elapsed();
    let bytes = B64
        .decode(r.body["permit"].as_str().unwrap_or_default())
        .map_err(|x| x.to_string())?;
    let permit = LoadPermit::decode(&bytes).map_err(|x| x.to_string())?;
    let report = w.purse.apply(&w.dev, &permit).map_err(e)?;
    let id = r.body["load_id"].as_str().unwrap_or_default().to_owned();
    let t = Instant::now();
    let r = conn
        .call(
            Method::POST,
            &format!("/v1/loads/{id}/report"),
            Some(&report.body),
            Some(&w.token),
        )
        .await
        .map_err(e)?;
    if r.status != StatusCode::OK || r.body["state"] != "posted" {
        return Err(format!("report: {} {}", r.status, r.body));
    }
    w.legs
        .lock()
        .unwrap()
        .push((start, permit_leg, t.elapsed()));
    Ok(())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// p50/p99 of each leg of the loads that started inside the window.
fn print_legs(legs: &Legs, from: Instant) {
    let all = legs.lock().unwrap();
    let inside: Vec<_> = all.iter().filter(|(s, _, _)| *s >= from).collect();
    let mut permit: Vec<Duration> = inside.iter().map(|l| l.1).collect();
    let mut report: Vec<Duration> = inside.iter().map(|l| l.2).collect();
    println!(
        "    legs: request → permit p50 {:.2} ms, p99 {:.2} ms; report → posted p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut permit, 0.5),
        pct(&mut permit, 0.99),
        pct(&mut report, 0.5),
        pct(&mut report, 0.99)
    );
}

fn main() -> ExitCode {
    if let Some(code) = common::keyward_if_reexecuted() {
        return code;
    }
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    common::each_backend(|b| {
        one_backend(b);
        true
    })
}

fn one_backend(backend: &str) {
    let conc = env_usize("KW_BENCH_CONC", 32).max(10);
    let window = Duration::from_secs(env_usize("KW_BENCH_SECS", 6) as u64);
    let sessions = env_usize("KW_BENCH_HSM_SESSIONS", 2);
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = common::backend_db(backend, &rt);
    let dir = tempfile::Builder::new()
        .prefix("keyward-loadbench-")
        .tempdir()
        .unwrap();
    // Credits are set up in bulk: no second operator for them here.
    let extra = "\n[load]\nreport_timeout_secs = 600\ndual_control_above_minor = 1000000000000000\nmax_amount_minor = 1000000\n";
    let config_path = write_config(dir.path(), &token, &db, sessions, extra);
    let data = dir.path().join("data");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let db_name = match backend {
        "sqlite" => "SQLite (WAL, synchronous=FULL, temp file)",
        _ => "PostgreSQL (synchronous_commit=on, own schema)",
    };
    // Devices: `conc` with their own accounts, and conc/10 more of the hot
    // customer (sharing one account).
    let hot = conc / 10;
    let devices = conc + hot;
    println!(
        "== E-purse load on {db_name}: {devices} P-256 devices ({hot} share one hot account), \
         SoftHSM token {}, {sessions} HSM sessions, {cores} cores, window {}s after {}s warm-up",
        token.label,
        window.as_secs(),
        WARMUP.as_secs()
    );

    rt.block_on(async {
        let t = Instant::now();
        let (state, admin) = install(&config_path, &data).await;
        let devs = import(&admin, devices, "LOAD-BENCH").await;
        // The hot customer first: its devices are bound to it.
        let hot_customer = admin.customer(devices).await;
        let a = admin.clone();
        let hc = hot_customer.clone();
        let issued = in_parallel(
            devs.into_iter().map(|d| (d, None)).collect(),
            SETUP_TASKS,
            move |i, (mut d, _): (SimDevice, Option<(String, String)>)| {
                let (a, hc) = (a.clone(), hc.clone());
                async move {
                    let existing = (i >= conc).then_some(hc);
                    let c = a.issue_as(&mut d, i, existing).await;
                    (d, Some(c))
                }
            },
        )
        .await;
        let mut accounts: Vec<(String, String)> =
            issued.iter().filter_map(|(_, c)| c.clone()).collect();
        accounts.sort();
        accounts.dedup();
        for (customer, account) in &accounts {
            admin
                .post(
                    &admin.root,
                    "/admin/v1/accounts",
                    json!({"account": account, "customer_id": customer, "currency": "CNY"}),
                    StatusCode::CREATED,
                )
                .await;
            admin
                .post(
                    &admin.root,
                    &format!("/admin/v1/accounts/{account}/credits"),
                    json!({"amount_minor": FUNDS, "reference": "bench"}),
                    StatusCode::CREATED,
                )
                .await;
        }
        println!(
            "(set-up in process: init, {devices} devices issued, {} accounts credited in {:.1}s, not timed)",
            accounts.len(),
            t.elapsed().as_secs_f64()
        );

        let server = spawn_serve(&config_path, &dir.path().join("serve.log"), &[BACKEND_ENV]);
        let server_pid = server.child.id().to_string();
        let url = format!("https://{}", server.public);
        let legs: Legs = Arc::default();
        let mut workers = Vec::new();
        for (dev, c) in issued {
            let (customer, account) = c.unwrap();
            let terminal = terminal_for(&state, &dev, &url).await;
            let purse = Purse::new(dev.id, &customer, &account, "CNY");
            workers.push(Worker {
                dev,
                terminal,
                token: String::new(),
                purse,
                legs: legs.clone(),
                next: None,
            });
        }
        let mut workers = in_parallel(workers, SETUP_TASKS, |_, mut w: Worker| async move {
            w.token = session(&w.terminal, &mut w.dev).await;
            w
        })
        .await;
        // The hot devices last: the first `conc` have their own accounts.
        let hot_workers = workers.split_off(conc);

        header();
        let (back, s) = closed_loop(workers, window, &server_pid, None, ping_op).await;
        print_row("connect + ping (baseline)", conc, &s, true);
        workers = back;

        let from = Instant::now() + WARMUP;
        let (back, s) = closed_loop(workers, window, &server_pid, None, load_op).await;
        print_row("load: request + report, own accounts", conc, &s, true);
        print_legs(&legs, from);
        let uncontended = rate(&s);
        workers = back;

        // A tenth of the devices now debit the one hot account.
        let mut mixed: Vec<Worker> = workers.drain(..conc - hot).collect();
        mixed.extend(hot_workers);
        legs.lock().unwrap().clear();
        let from = Instant::now() + WARMUP;
        let (back, s) = closed_loop(mixed, window, &server_pid, None, load_op).await;
        print_row("load: 10% on one hot account", conc, &s, true);
        print_legs(&legs, from);
        println!(
            "    contended / uncontended: {:.0}%",
            rate(&s) / uncontended * 100.0
        );
        let mut mixed = back;

        // Paced at half the uncontended rate: each worker starts a load
        // every conc / (rate / 2) seconds.
        let period = Duration::from_secs_f64(conc as f64 / (uncontended / 2.0).max(1.0));
        let t0 = Instant::now();
        for (i, w) in mixed.iter_mut().enumerate() {
            let offset = period.mul_f64(i as f64 / conc as f64);
            w.next = Some((t0 + offset, period));
        }
        legs.lock().unwrap().clear();
        let from = Instant::now() + WARMUP;
        let (_, s) = closed_loop(mixed, window, &server_pid, None, load_op).await;
        print_row(
            &format!("load: paced at {:.0}/s (half)", uncontended / 2.0),
            conc,
            &s,
            true,
        );
        print_legs(&legs, from);

        // The books after the runs.
        let report = state.ledger.verify().await.unwrap();
        println!(
            "    ledger verify after the runs: ok {} ({} entries, {} violations)",
            report.ok,
            report.entries,
            report.violations.len()
        );
        drop(server);
    });
}

fn rate(s: &Stats) -> f64 {
    s.ops as f64 / s.secs
}
