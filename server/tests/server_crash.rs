//! Crash safety of transaction confirmation, end to end (docs/protocol.md
//! §12.5): the real `keyward serve`, built with fault points, is armed to
//! SIGKILL itself at a random point and hit (`KEYWARD_FAULTS`); the terminal
//! (the simulator over mutual TLS) submits, the code reaches a real local
//! HTTPS webhook receiver, the device confirms, the execution goes to the
//! receiver. Whenever the server dies it is restarted without faults and
//! the client carries on as a terminal would (a lost submit answer: submit
//! again; a lost confirm answer: confirm again). After each run the outbox
//! must have drained and:
//!
//! - every message reached the receiver under one message id (repeats of
//!   that id allowed, never a second id for one message);
//! - every confirmed transaction is executed, with exactly one executor
//!   message id, and nothing else was executed;
//! - no confirmation is left where the protocol cannot finish it: executed,
//!   or pending with its code delivered (a submit whose answer was lost,
//!   which closes at its expiry).
//!
//! The runs go through the confirmation and outbox points in rounds, each
//! round every point once in a random order, and every point must have
//! fired once the runs are at least as many as the points.
//!
//! 20 runs by default (CI); `KEYWARD_CRASH_RUNS=N` for the long form,
//! `KEYWARD_CRASH_SEED=S` to replay a run (the seed is printed first) and
//! `KEYWARD_CRASH_POINTS=a,b` to draw from those points only. A second test
//! shows `panic` failing only the request that reached its point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::Server;
use common::process::{FIRES, STEP};
use common::station::{ACCOUNT, D1, Station, code_in, confirm_body, webhook_confirmations};
use hyper::Method;
use keyward_kms::db::Database;
use keyward_protocol::confirmation::Code;
use keyward_server::fault::{ENV, swept_by};
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions, Reply, Terminal};
use keyward_tests::webhook::Receiver;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;

/// Runs of the short form (CI).
const RUNS: u64 = 20;

/// One installation, its device, and the client's session on the server
/// now running.
struct Rig {
    s: Server,
    db: Database,
    receiver: Receiver,
    /// The receiver's CA and secret files, read at each start.
    _files: tempfile::TempDir,
    dev: SimDevice,
    chain: String,
    terminal: Option<Terminal>,
    token: String,
    /// Times the server died and was started again.
    restarts: u32,
}

impl Rig {
    /// A provisioned installation (devices D1, D2 of one customer at
    /// bank-a) sending to a fresh receiver; not running.
    async fn new() -> Self {
        let receiver = Receiver::start().await;
        let files = tempfile::tempdir().unwrap();
        let mut s = Server::with_options(common::Options {
            extra: webhook_confirmations(&receiver, files.path()),
            ..Default::default()
        })
        .await;
        s.init();
        s.start();
        s.new_operator("alice", "operator");
        s.new_operator("bob", "operator");
        let (dev, chain) = {
            let st = Station {
                s: &s,
                devices: s.dir.path().join("devices"),
            };
            st.provision(&[("bank-a", "tdes")]);
            (st.device(D1), st.chain(D1))
        };
        s.kill();
        let db = Database::connect(&s.db.config).await.unwrap();
        Self {
            s,
            db,
            receiver,
            _files: files,
            dev,
            chain,
            terminal: None,
            token: String::new(),
            restarts: 0,
        }
    }

    /// `keyward serve` with `faults` armed (none when empty), and a login.
    async fn start(&mut self, faults: &str) {
        let env: Vec<(&str, &str)> = if faults.is_empty() {
            Vec::new()
        } else {
            vec![(ENV, faults)]
        };
        self.s.start_with_env(&[], &env);
        let ca = std::fs::read_to_string(self.s.ca_pem()).unwrap();
        let t = Terminal::new(
            &format!("https://{}", self.s.public),
            &ca,
            &self.chain,
            &self.dev,
        )
        .unwrap();
        let out = terminal::login(&t, &mut self.dev, "bank-a", LoginOptions::default())
            .await
            .unwrap();
        self.token = out.answer().unwrap().session_token;
        self.terminal = Some(t);
    }

    /// After a request got no answer: the server must have died (it is
    /// given 5 s to); it is started again without faults.
    async fn restart_dead(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.s.running() {
            assert!(
                Instant::now() < deadline,
                "{what}: no answer, yet the server runs\n{}",
                self.s.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.s.kill();
        self.restarts += 1;
        self.start("").await;
    }

    /// Between polls: a server that died meanwhile is started again.
    async fn tick(&mut self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "{what}: timed out\n{}",
            self.s.log()
        );
        if !self.s.running() {
            self.restart_dead(what).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// One request of the session; `None` when no answer came (the
    /// connection died with the server).
    async fn post(&self, path: &str, body: &Value) -> Option<Reply> {
        let call =
            self.terminal
                .as_ref()
                .unwrap()
                .call(Method::POST, path, Some(body), Some(&self.token));
        match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }

    /// A column of confirmation `id`, once it is set.
    async fn confirmation_column(&self, id: &str, column: &str) -> Option<String> {
        let sql = format!("SELECT {column} AS v FROM confirmations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .unwrap()?;
        row.try_get::<Option<String>, _>("v").unwrap()
    }

    /// The body the receiver got under message id `id`, if any.
    fn received(&self, id: &str) -> Option<Vec<u8>> {
        self.receiver.seen.bodies().get(id).cloned()
    }

    /// Waits until the outbox holds nothing left to send.
    async fn drained(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE state <> 'sent'")
                .fetch_one(self.db.pool())
                .await
                .unwrap();
            if left == 0 {
                return;
            }
            self.tick(deadline, "draining the outbox").await;
        }
    }
}

/// What the client knows at the end of the runs.
#[derive(Default)]
struct History {
    /// Confirmations the client submitted and confirmed (its own view).
    confirmed: BTreeSet<String>,
    /// Submits whose answer was lost (the confirmation may exist).
    lost_submits: u32,
    /// Confirms whose first answer was lost and whose repeat was refused
    /// as already decided.
    repeated_confirms: u32,
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmations_survive_a_sigkill_at_any_fault_point() {
    let runs = std::env::var("KEYWARD_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let seed = std::env::var("KEYWARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("crash runs: {runs}, seed {seed} (replay: KEYWARD_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mine = swept_by("server_crash");
    let points: Vec<&'static str> = match std::env::var("KEYWARD_CRASH_POINTS") {
        Ok(only) => mine
            .iter()
            .copied()
            .filter(|p| only.split(',').any(|o| o.trim() == *p))
            .collect(),
        Err(_) => mine.clone(),
    };
    assert!(
        !points.is_empty(),
        "KEYWARD_CRASH_POINTS names no point of {mine:?}"
    );
    // Each round of runs meets every point once, in a random order.
    let mut order: Vec<&'static str> = Vec::new();

    let mut rig = Rig::new().await;
    let mut history = History::default();
    let mut fired: BTreeMap<&str, u32> = BTreeMap::new();
    let started = Instant::now();
    for run in 0..runs {
        if order.is_empty() {
            order = points.clone();
            order.shuffle(&mut rng);
        }
        let point = order.pop().unwrap();
        // The outbox points are met by the code message and the execution.
        let at = if point.starts_with("outbox.") {
            rng.gen_range(1..=2)
        } else {
            1
        };
        let spec = format!("{point}=kill@{at}");
        eprintln!("run {run}: {ENV}={spec}");
        rig.start(&spec).await;
        let fires = rig.s.log().matches(FIRES).count();
        confirm_one(&mut rig, &mut history, run).await;
        rig.drained().await;
        if rig.s.log().matches(FIRES).count() > fires {
            *fired.entry(point).or_default() += 1;
        }
        // The point was not met: the server dies here all the same, then
        // comes back without faults.
        rig.s.kill();
        rig.start("").await;
        rig.drained().await;
        check(&rig, &history, &format!("seed {seed}, run {run}, {spec}")).await;
        rig.s.kill();
    }
    if runs as usize >= points.len() {
        let missed: Vec<&&str> = points.iter().filter(|p| !fired.contains_key(*p)).collect();
        assert!(missed.is_empty(), "seed {seed}: never fired: {missed:?}");
    }
    let ids = rig.receiver.seen.ids();
    let unique = ids.iter().collect::<BTreeSet<_>>().len();
    eprintln!(
        "crash runs: {runs} in {:.0?}, seed {seed}; the fault fired in {} runs ({fired:?}); \
         {} restarts; {} deliveries of {unique} messages ({} repeats of an id); \
         {} submit answers lost, {} confirm answers lost and repeated; violations: 0",
        started.elapsed(),
        fired.values().sum::<u32>(),
        rig.restarts,
        ids.len(),
        ids.len() - unique,
        history.lost_submits,
        history.repeated_confirms,
    );
}

/// One transaction submitted, its code read from the receiver, confirmed:
/// a terminal's way, through every crash on the way.
async fn confirm_one(rig: &mut Rig, history: &mut History, run: u64) {
    let deadline = Instant::now() + STEP;
    let mut attempt = 0;
    let (id, bytes) = loop {
        let tx = json!({
            "payer_account": ACCOUNT,
            "payee_account": "DE89370400440532013000",
            "payee_name": "ACME GmbH",
            "amount": 1000 + run,
            "currency": "EUR",
            "reference": format!("Crash run {run}.{attempt}"),
        });
        attempt += 1;
        match rig.post("/v1/confirmations", &tx).await {
            Some(r) if r.status == 201 => {
                let id = r.body["confirmation_id"].as_str().unwrap().to_owned();
                break (id, serde_json::to_vec(&tx).unwrap());
            }
            Some(r) => panic!("submit answered {}: {}", r.status, r.body),
            None => {
                history.lost_submits += 1;
                rig.restart_dead("submit").await;
            }
        }
        rig.tick(deadline, "submit").await;
    };
    // The customer's phone: the code message under the delivery's id.
    let code: Code = loop {
        let delivered = match rig.confirmation_column(&id, "delivery_id").await {
            Some(d) => rig.received(&d),
            None => None,
        };
        if let Some(body) = delivered {
            break code_in(&body);
        }
        rig.tick(deadline, "code delivery").await;
    };
    let path = format!("/v1/confirmations/{id}/confirm");
    let body = confirm_body(&rig.dev, &bytes, &code);
    let mut repeated = false;
    loop {
        match rig.post(&path, &body).await {
            Some(r) if r.status == 200 => {
                assert_eq!(r.body["state"], "executed", "{}", r.body);
                break;
            }
            // The first answer was lost: the repeat finds it decided.
            Some(r) if repeated && r.code() == "confirmation_refused" => {
                history.repeated_confirms += 1;
                break;
            }
            Some(r) => panic!("confirm answered {}: {}", r.status, r.body),
            None => {
                repeated = true;
                rig.restart_dead("confirm").await;
            }
        }
    }
    history.confirmed.insert(id.clone());
    // The executor's side: the execution arrives.
    loop {
        let executed = match rig.confirmation_column(&id, "execution_id").await {
            Some(e) => rig.received(&e).is_some(),
            None => false,
        };
        if executed {
            return;
        }
        rig.tick(deadline, "execution delivery").await;
    }
}

/// The run's invariants over the database, the receiver and the client's
/// history.
async fn check(rig: &Rig, history: &History, run: &str) {
    let seen: BTreeSet<String> = rig.receiver.seen.ids().into_iter().collect();
    let bodies = rig.receiver.seen.bodies();
    assert_eq!(
        rig.receiver
            .seen
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{run}"
    );

    // Each message: one row, sent, and received under its id; nothing
    // received that is not a message.
    let rows = sqlx::query("SELECT message_id, topic, subject_id, state FROM outbox")
        .fetch_all(rig.db.pool())
        .await
        .unwrap();
    let mut messages = BTreeSet::new();
    let mut per_subject: BTreeMap<(String, String), u32> = BTreeMap::new();
    for r in &rows {
        let (id, topic, subject, state): (String, String, String, String) = (
            r.get("message_id"),
            r.get("topic"),
            r.get("subject_id"),
            r.get("state"),
        );
        assert_eq!(state, "sent", "{run}: message {id}");
        assert!(seen.contains(&id), "{run}: message {id} never received");
        *per_subject.entry((subject, topic)).or_default() += 1;
        messages.insert(id);
    }
    assert!(
        seen.is_subset(&messages),
        "{run}: a received id is no message"
    );
    assert!(
        per_subject.values().all(|n| *n == 1),
        "{run}: two messages for one step: {per_subject:?}"
    );

    // The receivers' own view: one id per code text, one id per execution.
    let mut code_ids: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut execution_ids: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (id, body) in &bodies {
        let v: Value = serde_json::from_slice(body).unwrap();
        if let Some(c) = v["confirmation_id"].as_str() {
            execution_ids.entry(c.to_owned()).or_default().insert(id);
        } else {
            let text = v["text"].as_str().unwrap().to_owned();
            code_ids.entry(text).or_default().insert(id);
        }
    }
    for (what, ids) in code_ids.iter().chain(&execution_ids) {
        assert_eq!(ids.len(), 1, "{run}: {what:?} arrived under {ids:?}");
    }

    // Executed exactly the confirmed ones, each once; every other one can
    // still finish (its code was delivered) or closes at its expiry.
    let rows = sqlx::query("SELECT id, state, delivery_id, execution_id FROM confirmations")
        .fetch_all(rig.db.pool())
        .await
        .unwrap();
    let mut executed = BTreeSet::new();
    for r in &rows {
        let (id, state, delivery): (String, String, String) =
            (r.get("id"), r.get("state"), r.get("delivery_id"));
        let execution: Option<String> = r.get("execution_id");
        assert!(
            seen.contains(&delivery),
            "{run}: {id}: code never delivered"
        );
        match state.as_str() {
            "executed" => {
                let execution = execution.unwrap();
                let ids = execution_ids.get(&id).cloned().unwrap_or_default();
                assert_eq!(
                    ids,
                    BTreeSet::from([execution.as_str()]),
                    "{run}: {id} executed under {ids:?}"
                );
                executed.insert(id);
            }
            "pending" => assert!(
                !history.confirmed.contains(&id),
                "{run}: {id} confirmed, still pending"
            ),
            other => panic!("{run}: {id} is {other}"),
        }
    }
    assert_eq!(executed, history.confirmed, "{run}");
    let pending = rows.len() - executed.len();
    assert!(
        pending <= history.lost_submits as usize,
        "{run}: {pending} pending, {} submit answers lost",
        history.lost_submits
    );
    let handed: BTreeSet<String> = execution_ids.keys().cloned().collect();
    assert_eq!(handed, executed, "{run}: executions of unexecuted ones");
}

/// `panic` fails the one request that reached the point, not the server:
/// the submit that panicked after its commit answers 500, its confirmation
/// and code message exist all the same, and the next submit (the point
/// fires once) is served as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_at_a_point_fails_only_the_request_that_reached_it() {
    let mut rig = Rig::new().await;
    rig.start("confirmation.submit.committed=panic").await;
    let tx = |n: u32| {
        json!({
            "payer_account": ACCOUNT,
            "payee_account": "DE89370400440532013000",
            "payee_name": "ACME GmbH",
            "amount": 500 + n,
            "currency": "EUR",
            "reference": format!("Panic {n}"),
        })
    };
    let failed = rig.post("/v1/confirmations", &tx(1)).await.unwrap();
    assert_eq!(failed.status, 500, "{}", failed.body);
    let served = rig.post("/v1/confirmations", &tx(2)).await.unwrap();
    assert_eq!(served.status, 201, "{}", served.body);
    assert!(rig.s.running());
    assert_eq!(rig.s.log().matches(FIRES).count(), 1);
    rig.drained().await;
    let deliveries: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM confirmations")
        .fetch_all(rig.db.pool())
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        assert!(rig.received(&d).is_some(), "{d} not delivered");
    }
}
