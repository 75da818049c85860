//! Transaction confirmation throughput against a real `keyward serve`
//! (docs/protocol.md §11–§12): each operation is one terminal dialling in
//! for one confirmation on one kept-alive mutual-TLS connection — `POST
//! /v1/confirmations` (the transaction; the server draws the code from the
//! HSM, MACs it in the HSM and commits the confirmation with its outbox
//! message), the code delivered by the outbox to a real local HTTPS webhook
//! receiver (Standard Webhooks signature checked), the customer's code
//! signed by the device with the transaction, `POST
//! /v1/confirmations/{id}/confirm` (signature, bytes and code checked; the
//! HSM signs the evidence receipt; the execution is queued for the core
//! banking receiver).
//!
//! For each backend (SQLite always; PostgreSQL too when
//! `KEYWARD_BENCH_DATABASE_URL` names one): a fleet brought to `issued`
//! in process (each customer its own phone number), `keyward serve`
//! spawned with the receiver as gateway and executor, every device logged
//! in once; then, measured, a fresh mTLS connection + `GET /v1/ping` (the
//! same-run baseline), confirmations in a closed loop, and confirmations
//! paced at min(500/s, half the closed-loop rate), with the delivery
//! latency: from the submit's answer (its outbox row committed just
//! before) to the receiver's 2xx — an upper bound on commit → 2xx minus
//! the answer's way back.
//!
//! It prints figures and asserts nothing about them:
//!
//! ```text
//! KEYWARD_BENCH_DATABASE_URL=postgres://keyward:keyward@127.0.0.1:5432/keyward_bench \
//!   cargo bench -p keyward-tests --bench confirmation
//! ```
//!
//! `KW_BENCH_SECS` (default 6), `KW_BENCH_CONC` (default 32),
//! `KW_BENCH_BACKENDS=sqlite|postgres`, `KW_BENCH_HSM_SESSIONS` (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_protocol::confirmation::Code;
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;
use keyward_tests::terminal::Terminal;
use keyward_tests::webhook::Receiver;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use common::fleet::{
    Outcome, Stats, WARMUP, closed_loop, header, import, in_parallel, install, phone, print_row,
    session, terminal_for, write_config,
};
use common::{env_usize, spawn_serve};

const BACKEND_ENV: &str = "KW_BENCH_BACKEND";
const SETUP_TASKS: usize = 8;

/// Code messages awaited, by phone number: (body, when the receiver had it).
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<(Vec<u8>, Instant)>>>>;
/// Delivery latencies: (when the confirmation started, submit answered →
/// receiver 2xx).
type Deliveries = Arc<Mutex<Vec<(Instant, Duration)>>>;

struct Worker {
    dev: SimDevice,
    terminal: Terminal,
    token: String,
    phone: String,
    account: String,
    waiting: Waiting,
    deliveries: Deliveries,
    next: Option<(Instant, Duration)>,
}

async fn ping_op(w: Worker) -> (Worker, Outcome) {
    let r = w.terminal.call(Method::GET, "/v1/ping", None, None).await;
    let outcome = match r {
        Ok(reply) if reply.status == StatusCode::OK => Ok(()),
        Ok(reply) => Err(format!("ping: {} {}", reply.status, reply.body)),
        Err(e) => Err(format!("{e:#}")),
    };
    (w, outcome)
}

async fn confirm_op(mut w: Worker) -> (Worker, Outcome) {
    if let Some((next, period)) = w.next {
        tokio::time::sleep_until(next.into()).await;
        w.next = Some((next + period, period));
    }
    let outcome = confirm_once(&w).await;
    (w, outcome)
}

async fn confirm_once(w: &Worker) -> Outcome {
    let e = |e: anyhow::Error| format!("{e:#}");
    let start = Instant::now();
    let tx = json!({
        "payer_account": w.account,
        "payee_account": "DE89370400440532013000",
        "payee_name": "ACME GmbH",
        "amount": 12345,
        "currency": "EUR",
        "reference": "Invoice 2026-118",
    });
    let tx_bytes = serde_json::to_vec(&tx).unwrap();
    let (send, code_msg) = oneshot::channel();
    w.waiting.lock().unwrap().insert(w.phone.clone(), send);
    let mut conn = w.terminal.connect().await.map_err(e)?;
    let r = conn
        .call(Method::POST, "/v1/confirmations", Some(&tx), Some(&w.token))
        .await
        .map_err(e)?;
    let answered = Instant::now();
    if r.status != StatusCode::CREATED {
        return Err(format!("submit: {} {}", r.status, r.body));
    }
    let id = r.body["confirmation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (body, arrived) = tokio::time::timeout(Duration::from_secs(10), code_msg)
        .await
        .map_err(|_| "no code message within 10 s".to_owned())?
        .map_err(|_| "the waiter was dropped".to_owned())?;
    w.deliveries
        .lock()
        .unwrap()
        .push((start, arrived.saturating_duration_since(answered)));
    let payload: Value = serde_json::from_slice(&body).map_err(|x| x.to_string())?;
    let digits = payload["text"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Code "))
        .ok_or("no code line")?
        .trim()
        .to_owned();
    let code = Code::parse(&digits).map_err(|x| x.to_string())?;
    let sig = w.dev.sign_confirmation(&tx_bytes, &code);
    let body = json!({
        "transaction": B64.encode(&tx_bytes),
        "code": code.as_str(),
        "signature": B64.encode(sig),
    });
    let r = conn
        .call(
            Method::POST,
            &format!("/v1/confirmations/{id}/confirm"),
            Some(&body),
            Some(&w.token),
        )
        .await
        .map_err(e)?;
    if r.status != StatusCode::OK || r.body["state"] != "executed" {
        return Err(format!("confirm: {} {}", r.status, r.body));
    }
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

fn print_deliveries(d: &Deliveries, from: Instant) {
    let mut v: Vec<Duration> = d
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s >= from)
        .map(|(_, l)| *l)
        .collect();
    println!(
        "    delivery: submit answered → receiver 2xx p50 {:.2} ms, p99 {:.2} ms ({} messages)",
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        v.len()
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
    let conc = env_usize("KW_BENCH_CONC", 32);
    let window = Duration::from_secs(env_usize("KW_BENCH_SECS", 6) as u64);
    let sessions = env_usize("KW_BENCH_HSM_SESSIONS", 2);
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = common::backend_db(backend, &rt);
    let dir = tempfile::Builder::new()
        .prefix("keyward-confirmbench-")
        .tempdir()
        .unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let db_name = match backend {
        "sqlite" => "SQLite (WAL, synchronous=FULL, temp file)",
        _ => "PostgreSQL (synchronous_commit=on, own schema)",
    };

    rt.block_on(async {
        let receiver = Receiver::start().await;
        let extra = format!(
            "\n[confirmation]\ngateway = \"gateway\"\nexecutor_channel = \"webhook\"\n\
             executor = \"core\"\n[confirmation.channels]\nsms = \"webhook\"\nim = \"webhook\"\n\
             email = \"webhook\"\n{}{}",
            receiver.config_toml("gateway", dir.path()),
            receiver.config_toml("core", dir.path()),
        );
        let config_path = write_config(dir.path(), &token, &db, sessions, &extra);
        let data = dir.path().join("data");
        println!(
            "== Confirmation on {db_name}: {conc} P-256 devices, code and execution through a \
             local HTTPS webhook receiver, SoftHSM token {}, {sessions} HSM sessions, {cores} \
             cores, window {}s after {}s warm-up",
            token.label,
            window.as_secs(),
            WARMUP.as_secs()
        );
        let t = Instant::now();
        let (state, admin) = install(&config_path, &data).await;
        let devs = import(&admin, conc, "CONFIRM-BENCH").await;
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
            "(set-up in process: init, {conc} devices issued in {:.1}s, not timed)",
            t.elapsed().as_secs_f64()
        );

        // Route each code message to the device whose phone it is for.
        let waiting: Waiting = Arc::default();
        let (feed, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        *receiver.seen.feed.lock().unwrap() = Some(feed);
        let w2 = waiting.clone();
        tokio::spawn(async move {
            while let Some((_, body, at)) = arrivals.recv().await {
                let to = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["to"].as_str().map(str::to_owned));
                if let Some(to) = to
                    && let Some(s) = w2.lock().unwrap().remove(&to)
                {
                    let _ = s.send((body, at));
                }
            }
        });

        let server = spawn_serve(&config_path, &dir.path().join("serve.log"), &[BACKEND_ENV]);
        let server_pid = server.child.id().to_string();
        let url = format!("https://{}", server.public);
        let deliveries: Deliveries = Arc::default();
        let mut workers = Vec::new();
        for (i, dev) in devs.into_iter().enumerate() {
            let terminal = terminal_for(&state, &dev, &url).await;
            workers.push(Worker {
                dev,
                terminal,
                token: String::new(),
                phone: phone(i),
                account: format!("62220202{i:08}"),
                waiting: waiting.clone(),
                deliveries: deliveries.clone(),
                next: None,
            });
        }
        let workers = in_parallel(workers, SETUP_TASKS, |_, mut w: Worker| async move {
            w.token = session(&w.terminal, &mut w.dev).await;
            w
        })
        .await;

        header();
        let (workers, s) = closed_loop(workers, window, &server_pid, None, ping_op).await;
        print_row("connect + ping (baseline)", conc, &s, true);

        let from = Instant::now() + WARMUP;
        let (mut workers, s) = closed_loop(workers, window, &server_pid, None, confirm_op).await;
        print_row(
            "confirmation: submit, code by webhook, confirm",
            conc,
            &s,
            true,
        );
        print_deliveries(&deliveries, from);
        let closed = rate(&s);

        let paced = if closed.is_finite() {
            (closed / 2.0).clamp(1.0, 500.0)
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(conc as f64 / paced);
        let t0 = Instant::now();
        for (i, w) in workers.iter_mut().enumerate() {
            w.next = Some((t0 + period.mul_f64(i as f64 / conc as f64), period));
        }
        deliveries.lock().unwrap().clear();
        let from = Instant::now() + WARMUP;
        let (_, s) = closed_loop(workers, window, &server_pid, None, confirm_op).await;
        print_row(
            &format!("confirmation: paced at {paced:.0}/s"),
            conc,
            &s,
            true,
        );
        print_deliveries(&deliveries, from);
        drop(server);
    });
}

fn rate(s: &Stats) -> f64 {
    s.ops as f64 / s.secs
}
