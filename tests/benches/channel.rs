//! The card-to-server secure channel against a real `keyward serve`
//! (docs/protocol.md §14): full RSA handshakes and a login carried in a
//! channel, each beside its same-run baseline.
//!
//! For each backend (SQLite always; PostgreSQL too when
//! `KEYWARD_BENCH_DATABASE_URL` names one):
//!
//! 1. An installation in process (`init` on a fresh SoftHSM token: the
//!    channel key and certificate among it) and a fleet of issued devices;
//!    each device is its own card and relaying terminal (its mutual TLS).
//! 2. In process, on the same token, from the same number of tasks: the
//!    raw SoftHSM RSA-OAEP unwrap of a pre-master (`Kms::unwrap_premaster`,
//!    the handshake's one RSA private operation), then every HSM call one
//!    handshake makes (one random for the hello; the unwrap, then the
//!    master, five keys, Finished MAC, ticket handle and four state wraps
//!    in one job for the key exchange), once from one task (its p50 is the
//!    HSM µs per handshake) and from all of them.
//! 3. `keyward serve` spawned on it; every device logs in once (its first
//!    key update). Measured, closed loop, each worker on its own kept-alive
//!    connection: full handshakes (hello + key exchange, the card checking
//!    the chain and the Finished); a steady-state login (start + finish)
//!    sent directly; the same login carried in an open channel (each request
//!    sealed by the card, opened, run as the card and answered in the HSM);
//!    then `GET /v1/ping` direct and carried, the cost of one record beside
//!    the route's own.
//! 4. Resumption on the other replica: a second `keyward serve` on the
//!    same database and token; each card resumes under its latest ticket
//!    on the replica that did not issue it (one round trip, no RSA
//!    operation: the pre-master unwraps both servers count in
//!    `keyward_hsm_operation_duration_seconds` stay where they were, which
//!    the bench asserts).
//!
//! It prints figures beside their baselines; it asserts nothing about
//! them. Run with
//!
//! ```text
//! KEYWARD_BENCH_DATABASE_URL=postgres://keyward:keyward@127.0.0.1:5432/keyward_bench \
//!   cargo bench -p keyward-tests --bench channel
//! ```
//!
//! `KW_BENCH_SECS` sets the window (default 6 s), `KW_BENCH_CONC` the
//! concurrent devices (default 16), `KW_BENCH_BACKENDS=sqlite|postgres` one
//! backend, `KW_BENCH_HSM_SESSIONS` the HSM sessions of both the server and
//! the in-process KMS (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::Method;
use keyward_kms::Kms;
use keyward_kms::hsm::{OaepHash as HsmOaep, PublicKey};
use keyward_kms::service::CHANNEL_KEY_LABEL;
use keyward_protocol::channel::{self, OaepHash};
use keyward_tests::channel::{Carrier, Ticket, encrypt_pre_master};
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;
use keyward_tests::terminal::{self, Caller as _, Connection, LoginOptions, Terminal};

use common::fleet::{
    ISSUER, Outcome, Stats, WARMUP, closed_loop, der_of_pem, header, import, in_parallel, install,
    latency_samples, print_row, print_server_side, session, terminal_for, write_config,
};
use common::{env_usize, spawn_serve};

const BACKEND_ENV: &str = "KW_BENCH_BACKEND";
const SETUP_TASKS: usize = 8;

/// One device: the card, and the terminal relaying it.
struct Worker {
    dev: SimDevice,
    terminal: Terminal,
    /// The card's certificate (DER) and the Keyward root (PEM).
    cert: Vec<u8>,
    root: String,
    conn: Option<Connection>,
    carrier: Option<Carrier>,
    /// The same terminal on the second replica, and its connection.
    other: Option<Terminal>,
    other_conn: Option<Connection>,
    /// The card's latest ticket, and whether the second replica issued it.
    ticket: Option<(Ticket, bool)>,
}

/// A full RSA handshake on the worker's kept-alive connection.
async fn handshake_op(mut w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        let conn = match w.conn.take() {
            Some(c) => c,
            None => w.terminal.connect().await.map_err(|e| format!("{e:#}"))?,
        };
        match Carrier::open(conn, &w.dev, &w.cert, &w.root).await {
            Ok(Ok(c)) => {
                w.conn = Some(c.conn);
                w.ticket = Some((c.ticket, false));
                Ok(())
            }
            Ok(Err(r)) => Err(format!("handshake: {} {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        }
    }
    .await;
    (w, outcome)
}

/// A resumption under the card's latest ticket, always on the replica
/// that did not issue it (so nothing the issuing process holds helps); the
/// new channel's ticket is the next one's.
async fn resume_op(mut w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        let (ticket, by_other) = w.ticket.take().ok_or("no ticket left")?;
        let (slot, terminal) = if by_other {
            (&mut w.conn, &w.terminal)
        } else {
            (
                &mut w.other_conn,
                w.other.as_ref().ok_or("no second replica")?,
            )
        };
        let conn = match slot.take() {
            Some(c) => c,
            None => terminal.connect().await.map_err(|e| format!("{e:#}"))?,
        };
        match Carrier::resume(conn, &ticket).await {
            Ok(Ok(c)) => {
                *slot = Some(c.conn);
                w.ticket = Some((c.ticket, !by_other));
                Ok(())
            }
            Ok(Err(r)) => Err(format!("resumption: {} {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        }
    }
    .await;
    (w, outcome)
}

/// A steady-state login on the worker's kept-alive connection.
async fn direct_login_op(mut w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        if w.conn.is_none() {
            w.conn = Some(w.terminal.connect().await.map_err(|e| format!("{e:#}"))?);
        }
        let conn = w.conn.as_mut().ok_or("no connection")?;
        let r = terminal::login_over(conn, &mut w.dev, ISSUER, LoginOptions::default()).await;
        steady(r)
    }
    .await;
    (w, outcome)
}

/// The same login carried in the worker's open channel.
async fn carried_login_op(mut w: Worker) -> (Worker, Outcome) {
    let outcome = async {
        let carrier = w.carrier.as_mut().ok_or("no channel")?;
        let r = terminal::login_over(carrier, &mut w.dev, ISSUER, LoginOptions::default()).await;
        steady(r)
    }
    .await;
    (w, outcome)
}

/// `GET /v1/ping` on the worker's kept-alive connection, or carried in its
/// channel: the cost of one record beside the route's own.
async fn ping_op(mut w: Worker, carried: bool) -> (Worker, Outcome) {
    let outcome = async {
        let r = match (carried, w.carrier.as_mut(), w.conn.as_mut()) {
            (true, Some(c), _) => c.request(Method::GET, "/v1/ping", None, None).await,
            (false, _, Some(c)) => c.request(Method::GET, "/v1/ping", None, None).await,
            _ => return Err("no connection".to_owned()),
        };
        match r {
            Ok(r) if r.status.is_success() => Ok(()),
            Ok(r) => Err(format!("ping: {} {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        }
    }
    .await;
    (w, outcome)
}

fn steady(r: anyhow::Result<terminal::LoginOutcome>) -> Outcome {
    match r {
        Ok(out) if out.challenge.key_update.is_some() => {
            Err("a steady-state login carried a key update".to_owned())
        }
        Ok(out) => out.answer().map(|_| ()).map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The raw RSA private operation: one OAEP unwrap in the HSM.
async fn rsa_op(kms: Kms, ciphertext: Vec<u8>, w: ()) -> ((), Outcome) {
    let r = kms.unwrap_premaster(CHANNEL_KEY_LABEL, ciphertext).await;
    (w, r.map(drop).map_err(|e| e.to_string()))
}

/// Every HSM call of one handshake, in the server's order.
async fn hsm_handshake_op(kms: Kms, ciphertext: Vec<u8>, w: ()) -> ((), Outcome) {
    let r = async {
        // The hello's random and channel id (one call), standing in for
        // the transcript hash too.
        let r = kms.random::<48>().await?;
        let h: [u8; 32] = r[..32].try_into().unwrap();
        let pms = kms.unwrap_premaster(CHANNEL_KEY_LABEL, ciphertext).await?;
        let schedule = keyward_server::channel::schedule(&h, channel::master_input(&h));
        kms.channel_establish(pms, schedule).await?;
        Ok::<_, keyward_kms::KmsError>(())
    }
    .await;
    (w, r.map_err(|e| e.to_string()))
}

/// A pre-master encrypted to the channel key as a card does it.
async fn premaster_ciphertext(kms: &Kms) -> Vec<u8> {
    let PublicKey::Rsa { modulus, exponent } =
        kms.channel_public_key(CHANNEL_KEY_LABEL).await.unwrap()
    else {
        panic!("the channel key is not RSA");
    };
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&modulus),
        rsa::BigUint::from_bytes_be(&exponent),
    )
    .unwrap();
    let hash = match kms.channel_oaep_hash(CHANNEL_KEY_LABEL).await.unwrap() {
        HsmOaep::Sha1 => OaepHash::Sha1,
        HsmOaep::Sha256 => OaepHash::Sha256,
    };
    encrypt_pre_master(&key, hash, &[7u8; 32], &mut rand::thread_rng()).unwrap()
}

/// The pre-master unwraps (the handshake's one RSA operation) a server
/// counted in a [`latency_samples`] reading.
fn unwraps(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.contains("_count{") && k.contains("channel_unwrap_premaster"))
        .map(|(_, v)| v)
        .sum()
}

fn rate(s: &Stats) -> f64 {
    s.ops as f64 / s.secs
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
    let conc = env_usize("KW_BENCH_CONC", 16).max(1);
    let window = Duration::from_secs(env_usize("KW_BENCH_SECS", 6) as u64);
    let sessions = env_usize("KW_BENCH_HSM_SESSIONS", 2);
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = common::backend_db(backend, &rt);
    let dir = tempfile::Builder::new()
        .prefix("keyward-channelbench-")
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
        "== Secure channel on {db_name}: {conc} P-256 cards, SoftHSM token {}, \
         {sessions} HSM sessions, {cores} cores, window {}s after {}s warm-up",
        token.label,
        window.as_secs(),
        WARMUP.as_secs()
    );

    rt.block_on(async {
        let (state, admin) = install(&config_path, &data).await;
        let devs = import(&admin, conc, "CHANNEL-BENCH").await;
        let a = admin.clone();
        let devs = in_parallel(devs, SETUP_TASKS, move |i, mut d: SimDevice| {
            let a = a.clone();
            async move {
                a.issue(&mut d, i).await;
                d
            }
        })
        .await;

        header();
        // The HSM alone, in process, before the server starts.
        let kms = state.kms.clone();
        let ct = premaster_ciphertext(&kms).await;
        let (k, c) = (kms.clone(), ct.clone());
        let op = move |w| rsa_op(k.clone(), c.clone(), w);
        let (_, raw) = closed_loop(vec![(); conc], window, "self", None, op).await;
        print_row(
            "in process: RSA-OAEP unwrap (SoftHSM, raw)",
            conc,
            &raw,
            false,
        );
        let (k, c) = (kms.clone(), ct.clone());
        let op = move |w| hsm_handshake_op(k.clone(), c.clone(), w);
        let (_, one) = closed_loop(vec![()], window, "self", None, op.clone()).await;
        print_row("in process: one handshake's HSM calls", 1, &one, false);
        let (_, all) = closed_loop(vec![(); conc], window, "self", None, op).await;
        print_row("in process: one handshake's HSM calls", conc, &all, false);

        let server = spawn_serve(&config_path, &dir.path().join("serve.log"), &[BACKEND_ENV]);
        let pid = server.child.id().to_string();
        let url = format!("https://{}", server.public);
        let mut workers = Vec::new();
        for dev in devs {
            let terminal = terminal_for(&state, &dev, &url).await;
            let serial: keyward_ca::Serial = state
                .provisioning
                .device(dev.id)
                .await
                .unwrap()
                .cert_serial
                .unwrap()
                .parse()
                .unwrap();
            let cert = der_of_pem(&state.ca.get(&serial).await.unwrap().unwrap().pem);
            workers.push(Worker {
                dev,
                terminal,
                cert,
                root: state.ca.root_pem().to_owned(),
                conn: None,
                carrier: None,
                other: None,
                other_conn: None,
                ticket: None,
            });
        }
        // Every card's first login (its first key update): not measured.
        let workers = in_parallel(workers, SETUP_TASKS, |_, mut w: Worker| async move {
            session(&w.terminal, &mut w.dev).await;
            w
        })
        .await;

        let ca_file = data.join("operators/ca.pem");
        let m0 = latency_samples(&server.admin, &ca_file);
        let (workers, full) = closed_loop(workers, window, &pid, None, handshake_op).await;
        let m1 = latency_samples(&server.admin, &ca_file);
        print_row(
            "full RSA handshake, kept-alive connection",
            conc,
            &full,
            true,
        );
        print_server_side(&m0, &m1, 10.0);

        // Resumption on the other replica: a second `keyward serve` on the
        // same database and token takes every ticket the first issued, and
        // the other way round.
        let second = spawn_serve(&config_path, &dir.path().join("serve2.log"), &[BACKEND_ENV]);
        let url2 = format!("https://{}", second.public);
        let mut workers = workers;
        for w in &mut workers {
            w.other = Some(terminal_for(&state, &w.dev, &url2).await);
        }
        let counted = unwraps(&m1) - unwraps(&m0);
        let before = [m1, latency_samples(&second.admin, &ca_file)];
        let (workers, resumed) = closed_loop(workers, window, &pid, None, resume_op).await;
        let after = [
            latency_samples(&server.admin, &ca_file),
            latency_samples(&second.admin, &ca_file),
        ];
        print_row("resumption, other replica (no RSA)", conc, &resumed, true);
        print_server_side(&before[1], &after[1], 10.0);
        let rsa: Vec<f64> = (0..2)
            .map(|i| unwraps(&after[i]) - unwraps(&before[i]))
            .collect();
        if counted > 0.0 {
            println!(
                "    RSA operations while resuming: {} and {} (the full handshakes: {counted})",
                rsa[0], rsa[1]
            );
            assert_eq!(rsa, [0.0, 0.0], "a resumption ran an RSA operation");
        } else {
            println!("    RSA operations while resuming: not counted by this server");
        }
        drop(second);
        let (mut workers, direct) = closed_loop(workers, window, &pid, None, direct_login_op).await;
        print_row(
            "login direct (start + finish), kept-alive",
            conc,
            &direct,
            true,
        );
        for w in &mut workers {
            let conn = w.terminal.connect().await.unwrap();
            let c = Carrier::open(conn, &w.dev, &w.cert, &w.root).await.unwrap();
            w.carrier = Some(c.unwrap_or_else(|r| panic!("{} {}", r.status, r.body)));
        }
        let (workers, carried) = closed_loop(workers, window, &pid, None, carried_login_op).await;
        print_row("login carried in a channel", conc, &carried, true);
        let (workers, ping) = closed_loop(workers, window, &pid, None, |w| ping_op(w, false)).await;
        print_row("ping direct, kept-alive", conc, &ping, true);
        let (_, ping_carried) =
            closed_loop(workers, window, &pid, None, |w| ping_op(w, true)).await;
        print_row("ping carried in a channel", conc, &ping_carried, true);

        println!();
        println!(
            "    handshakes {:.0}/s = {:.0}% of the raw RSA-OAEP unwrap rate {:.0}/s; \
             HSM per handshake {:.0} µs (p50, one task)",
            rate(&full),
            rate(&full) / rate(&raw) * 100.0,
            rate(&raw),
            one.p50_ms * 1000.0
        );
        println!(
            "    resumptions {:.0}/s = {:.1}× the full handshake's, p50 {:.2} ms, p99 {:.2} ms",
            rate(&resumed),
            rate(&resumed) / rate(&full),
            resumed.p50_ms,
            resumed.p99_ms
        );
        println!(
            "    carried login vs direct: rate {:.0}% ({:+.0}% slower), p50 {:.2} vs {:.2} ms",
            rate(&carried) / rate(&direct) * 100.0,
            (1.0 - rate(&carried) / rate(&direct)) * 100.0,
            carried.p50_ms,
            direct.p50_ms
        );
        drop(server);
    });
}
