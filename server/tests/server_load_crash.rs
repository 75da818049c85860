//! Crash safety of the e-purse load, end to end (docs/protocol.md §12.5,
//! §13): the real `keyward serve`, built with fault points, over mutual
//! TLS; the devices are purses (`keyward_tests::purse`) that check every
//! permit, apply it, report, and carry on after a lost answer as a terminal
//! would (the same bytes again; a status, never replayed, at the next
//! contact).
//!
//! - The sweep: for every load and ledger fault point × {kill, panic}, at
//!   its first hit and (for points a run meets more than once) its second,
//!   a server armed there runs three loads (one reported, two whose reports
//!   are lost, one left to the sweeper after the crash); the server is
//!   restarted without faults, the sweeper and the device's next contact
//!   finish every load, and the checks below run.
//! - Random runs: two replicas on one database, several devices loading
//!   concurrently from one account, each report sent to the replica that
//!   did not issue the permit, a random replica SIGKILLed at random instants
//!   and restarted. Every answer is recorded as ok, failed or unknown; a
//!   failed answer whose effect happened is a bug.
//!
//! The checks after each: `kwctl ledger verify` (I1–I9) finds nothing; no
//! load is `pending` later than the timeout + the sweep period + 5 s after
//! the last restart, and after the device's next contact every load is
//! terminal (`posted`, `voided`, `late_applied`, `not_applied`); the money
//! on the purses equals the float (none created), customer account + loads
//! in flight + float + receivable equals what was credited (none lost); a
//! load reached the float iff its purse applied it; every permit a purse got
//! is byte for byte the stored one; a refused request left no load, a
//! refused report decided nothing.
//!
//! `KEYWARD_LOAD_CRASH_SEED=S` replays (the seed is printed first),
//! `KEYWARD_LOAD_CRASH_RUNS=N` sets the random runs (20 by default; the
//! long form 500, ops/README.md), `KEYWARD_LOAD_CRASH_POINTS=a,b` limits the
//! sweep to those points.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::process::{self, STEP};
use common::station::{ACCOUNT, Station, device_id};
use common::{Options, Server};
use hyper::Method;
use keyward_kms::db::Database;
use keyward_server::fault::ENV;
use keyward_tests::purse::Purse;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions, Terminal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::Row;

/// `[load] report_timeout_secs` of these servers.
const TIMEOUT_SECS: u64 = 1;
/// `[load] sweep_interval_ms`.
const SWEEP_MS: u64 = 100;
/// `[load] max_amount_minor`: the random runs ask for more now and then.
const MAX_AMOUNT: u64 = 10_000;
/// What the account is credited with at the start.
const OPENING: i64 = 1_000_000;
/// Random runs of the short form (CI).
const RUNS: u64 = 20;
/// The loads' terminal states.
const TERMINAL: [&str; 4] = ["posted", "voided", "late_applied", "not_applied"];

/// I8: how long after a restart a load may still be pending.
fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_SECS * 1000 + SWEEP_MS + 5000)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A device with its purse and its session.
struct Device {
    dev: SimDevice,
    chain: String,
    purse: Purse,
    token: Option<String>,
}

/// What the clients saw.
#[derive(Default)]
struct History {
    /// Every permit answer received: load id, permit and signature bytes.
    permits: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// For each load a purse got a permit for: whether it applied it.
    applied: BTreeMap<String, bool>,
    /// Reports answered ok, with the state they named.
    reported: Vec<(String, String)>,
    /// Request bytes whose final answer was a refusal.
    failed_requests: Vec<Vec<u8>>,
    /// Report bytes (and their load) whose final answer was a refusal.
    failed_reports: Vec<(String, Vec<u8>)>,
    ok: u32,
    failed: u32,
    unknown: u32,
}

impl History {
    fn merge(&mut self, o: Self) {
        self.permits.extend(o.permits);
        self.applied.extend(o.applied);
        self.reported.extend(o.reported);
        self.failed_requests.extend(o.failed_requests);
        self.failed_reports.extend(o.failed_reports);
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
    }

    /// Records a permit answer; its load id.
    fn permit(&mut self, answer: &Value) -> String {
        let b64 = |k: &str| B64.decode(answer[k].as_str().unwrap()).unwrap();
        let id = answer["load_id"].as_str().unwrap().to_owned();
        self.permits
            .push((id.clone(), b64("permit"), b64("signature")));
        id
    }
}

/// One answer, as the client classes it.
enum Answer {
    Ok(Value),
    /// A typed refusal (4xx): `status code`.
    Failed(String),
    /// The session is unknown or expired: log in, then ask again.
    Session,
    /// No answer, or a 5xx: the effect is unknown. `true` when an HTTP
    /// answer came (the server lives).
    Unknown(bool),
}

/// One POST of `body` by `d` to the public listener `addr`.
async fn attempt(addr: &str, root: &str, d: &Device, path: &str, body: &Value) -> Answer {
    let Ok(t) = Terminal::new(&format!("https://{addr}"), root, &d.chain, &d.dev) else {
        return Answer::Unknown(false);
    };
    let call = t.call(Method::POST, path, Some(body), d.token.as_deref());
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(r)) if r.status.is_success() => Answer::Ok(r.body),
        Ok(Ok(r)) if r.code().starts_with("session_") => Answer::Session,
        Ok(Ok(r)) if r.status.is_client_error() => {
            Answer::Failed(format!("{} {}", r.status.as_u16(), r.code()))
        }
        Ok(Ok(_)) => Answer::Unknown(true),
        _ => Answer::Unknown(false),
    }
}

/// A login of `d` at `addr`; whether it got a session.
async fn login(addr: &str, root: &str, d: &mut Device) -> bool {
    let Ok(t) = Terminal::new(&format!("https://{addr}"), root, &d.chain, &d.dev) else {
        return false;
    };
    let out = terminal::login(&t, &mut d.dev, "bank-a", LoginOptions::default());
    match tokio::time::timeout(Duration::from_secs(10), out).await {
        Ok(Ok(out)) => match out.answer() {
            Ok(a) => {
                d.token = Some(a.session_token);
                true
            }
            Err(_) => false,
        },
        _ => false,
    }
}

/// An installation with `devices` devices of one customer, its account
/// opened and credited with [`OPENING`]; the server runs.
async fn bank(devices: usize) -> (Server, Database, String, PathBuf, Vec<Device>) {
    let s = Server::started_with(Options {
        extra: format!(
            "[load]\nreport_timeout_secs = {TIMEOUT_SECS}\nsweep_interval_ms = {SWEEP_MS}\n\
             max_amount_minor = {MAX_AMOUNT}\n"
        ),
        ..Default::default()
    })
    .await;
    s.new_operator("alice", "operator");
    s.new_operator("bob", "operator");
    let dir = s.dir.path().join("devices");
    let st = Station {
        s: &s,
        devices: dir.clone(),
    };
    let customer = st.provision_devices(&[("bank-a", "tdes")], devices);
    st.ok(
        "alice",
        &[
            "account",
            "create",
            ACCOUNT,
            "--customer",
            &customer,
            "--currency",
            "CNY",
        ],
    );
    let opening = OPENING.to_string();
    let credit = st.ok(
        "alice",
        &[
            "account",
            "credit",
            ACCOUNT,
            "--amount",
            &opening,
            "--reference",
            "opening",
        ],
    );
    assert_eq!(credit["balance_after_minor"], OPENING, "{credit}");
    let devices = (0..devices)
        .map(device_id)
        .map(|id| Device {
            dev: st.device(&id),
            chain: st.chain(&id),
            purse: Purse::new(id.parse().unwrap(), &customer, ACCOUNT, "CNY"),
            token: None,
        })
        .collect();
    let (db, root) = process::db_and_root(&s).await;
    (s, db, root, dir, devices)
}

/// The loads' states by id.
async fn states(db: &Database) -> BTreeMap<String, String> {
    sqlx::query("SELECT id, state FROM loads")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("id"), r.get("state")))
        .collect()
}

/// Waits (restarting nothing) until no load is pending; fails past `by`.
async fn none_pending(db: &Database, by: Instant, what: &str) {
    loop {
        let pending: Vec<String> = states(db)
            .await
            .into_iter()
            .filter(|(_, s)| s == "pending")
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < by,
            "{what}: I8: still pending past the timeout + sweep period + 5 s: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Money lost and created, as the checks found them (both 0, or the
/// checks fail first).
#[derive(Default, Debug)]
struct Money {
    lost: i64,
    created: i64,
}

/// Every check of a run (see the module), over the database, the ledger's
/// own verification and what the clients saw.
async fn check(
    s: &Server,
    db: &Database,
    dir: &std::path::Path,
    credited: i64,
    purses: i64,
    h: &History,
    what: &str,
) -> Money {
    let st = Station {
        s,
        devices: dir.to_owned(),
    };
    let verified = st.ok("alice", &["ledger", "verify"]);
    assert!(
        verified["ok"] == true && verified["violations"] == serde_json::json!([]),
        "{what}: ledger verify: {verified}"
    );

    let rows = sqlx::query("SELECT id, request, permit, permit_sig, state, report FROM loads")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let mut loads = BTreeMap::new();
    for r in &rows {
        let id: String = r.get("id");
        let state: String = r.get("state");
        assert!(
            TERMINAL.contains(&state.as_str()),
            "{what}: load {id} is {state}"
        );
        // Money reached the float iff the purse applied the load (a load
        // no purse got a permit for was applied by none).
        let applied = h.applied.get(&id).copied().unwrap_or(false);
        let paid = state == "posted" || state == "late_applied";
        assert_eq!(
            paid, applied,
            "{what}: load {id} is {state}, applied: {applied}"
        );
        let bytes = |c: &str| r.get::<Vec<u8>, _>(c);
        let report: Option<Vec<u8>> = r.get("report");
        loads.insert(
            id,
            (
                bytes("request"),
                bytes("permit"),
                bytes("permit_sig"),
                state,
                report,
            ),
        );
    }
    for (id, permit, sig) in &h.permits {
        let (_, p, s, _, _) = loads
            .get(id)
            .unwrap_or_else(|| panic!("{what}: a permit for {id}, which is no load"));
        assert!(
            p == permit && s == sig,
            "{what}: I4: the permit of {id} changed"
        );
    }
    for (id, state) in &h.reported {
        assert_eq!(&loads[id].3, state, "{what}: {id} was answered {state}");
    }
    for bytes in &h.failed_requests {
        assert!(
            loads.values().all(|l| &l.0 != bytes),
            "{what}: a refused request made a load"
        );
    }
    for (id, bytes) in &h.failed_reports {
        assert!(
            loads.get(id).is_none_or(|l| l.4.as_ref() != Some(bytes)),
            "{what}: a refused report decided {id}"
        );
    }

    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for r in sqlx::query("SELECT account_id, delta_minor FROM ledger_entries")
        .fetch_all(db.pool())
        .await
        .unwrap()
    {
        *sums.entry(r.get("account_id")).or_default() += r.get::<i64, _>("delta_minor");
    }
    let sum = |a: &str| sums.get(a).copied().unwrap_or_default();
    let (account, in_flight, float, receivable) = (
        sum(ACCOUNT),
        sum("sys:loads_in_flight:CNY"),
        sum("sys:float:CNY"),
        sum("sys:receivable:CNY"),
    );
    let money = Money {
        lost: credited - (account + in_flight + float + receivable),
        created: purses - float,
    };
    assert_eq!(
        in_flight, 0,
        "{what}: money in flight after every load ended"
    );
    assert!(
        money.lost == 0 && money.created == 0,
        "{what}: {money:?} (account {account}, in flight {in_flight}, float {float}, \
         receivable {receivable}, purses {purses})"
    );
    money
}

// --- the sweep --------------------------------------------------------------

/// The sweep's one server and device.
struct Rig {
    s: Server,
    db: Database,
    root: String,
    dir: PathBuf,
    d: Device,
    h: History,
    restarts: u32,
}

impl Rig {
    /// A server that died is started again, without faults.
    fn revive(&mut self) {
        process::revive(&mut self.s, &mut self.restarts);
    }

    /// Sends `body` until an answer comes: after a lost one, a server that
    /// died (it is given 2 s to) is started again and the same bytes go
    /// again. A refusal fails the test: nothing here may be refused.
    async fn send(&mut self, path: &str, body: &Value) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(
                Instant::now() < deadline,
                "{path}: no answer\n{}",
                self.s.log()
            );
            match attempt(&self.s.public, &self.root, &self.d, path, body).await {
                Answer::Ok(v) => {
                    self.h.ok += 1;
                    return v;
                }
                Answer::Failed(code) => panic!("{path}: refused {code}\n{}", self.s.log()),
                Answer::Session => {
                    if !login(&self.s.public, &self.root, &mut self.d).await {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        self.revive();
                    }
                }
                Answer::Unknown(answered) => {
                    self.h.unknown += 1;
                    process::let_die(&mut self.s, answered).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    self.revive();
                }
            }
        }
    }

    /// A load of `amount`: request, permit checked; then `report` it
    /// applied, failed (`applied == false`), or lose the report (the purse
    /// applies it or not). Its id.
    async fn load(&mut self, amount: u64, applied: bool, report: bool) -> String {
        let req = self.d.purse.request(&self.d.dev, amount).unwrap();
        let answer = self.send("/v1/loads", &req.body).await;
        let permit = self.d.purse.check_permit(&answer, &self.root).unwrap();
        let id = self.h.permit(&answer);
        self.h.applied.insert(id.clone(), applied);
        let rep = if applied {
            self.d.purse.apply(&self.d.dev, &permit).unwrap()
        } else {
            self.d.purse.fail(&self.d.dev, &permit, 7).unwrap()
        };
        if report {
            let path = format!("/v1/loads/{id}/report");
            let state = self.send(&path, &rep.body).await["state"]
                .as_str()
                .unwrap()
                .to_owned();
            self.h.reported.push((id.clone(), state));
        }
        id
    }

    /// The device's next contact: a status (a fresh one after a lost
    /// answer: a status is never replayed).
    async fn status(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(
                Instant::now() < deadline,
                "status: no answer\n{}",
                self.s.log()
            );
            let status = self.d.purse.status(&self.d.dev).unwrap();
            match attempt(
                &self.s.public,
                &self.root,
                &self.d,
                "/v1/loads/status",
                &status.body,
            )
            .await
            {
                Answer::Ok(_) => return self.h.ok += 1,
                Answer::Failed(code) => panic!("status: refused {code}\n{}", self.s.log()),
                Answer::Session => {
                    login(&self.s.public, &self.root, &mut self.d).await;
                }
                Answer::Unknown(_) => {
                    self.h.unknown += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.revive();
                }
            }
        }
    }

    /// Waits until load `id` is no longer pending, reviving a dead server.
    async fn left_pending(&mut self, id: &str) {
        let deadline = Instant::now() + STEP;
        while states(&self.db).await.get(id).map(String::as_str) == Some("pending") {
            assert!(
                Instant::now() < deadline,
                "{id} stays pending\n{}",
                self.s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.revive();
        }
    }
}

/// The hits a sweep case arms a point at: the ones a case meets twice
/// (two requests, two settlements, many seals) at both.
fn hits(point: &str) -> &'static [u64] {
    match point {
        "load.report.verified" | "load.sweep.voided" => &[1],
        _ => &[1, 2],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_load_fault_point_killed_or_panicked_leaves_the_money_whole() {
    let points = process::sweep_points("server_load_crash", "KEYWARD_LOAD_CRASH_POINTS");
    let cases = process::sweep_cases(&points, hits);
    let (mut s, db, root, dir, mut devices) = bank(1).await;
    s.kill();
    let mut rig = Rig {
        s,
        db,
        root,
        dir,
        d: devices.remove(0),
        h: History::default(),
        restarts: 0,
    };
    let started = Instant::now();
    let mut money = Money::default();
    for (i, spec) in cases.iter().enumerate() {
        eprintln!("sweep case {i}: {ENV}={spec}");
        let fires = process::fired(&rig.s);
        rig.s.start_with_env(&[], &[(ENV, spec)]);
        // A: reported (applied, or failed in every third case).
        rig.load(1000, i % 3 != 2, true).await;
        // B: its report lost; the sweeper voids it as doubtful.
        let b = rig.load(200, i % 2 == 0, false).await;
        rig.left_pending(&b).await;
        // C: its request settles B by what the purse proves; its report
        // is lost too, and the server dies before the sweeper acts.
        rig.load(300, (i / 2) % 2 == 0, false).await;
        // A job's point (the seal) may still be due.
        process::until_fired(&rig.s, fires, spec).await;
        rig.s.kill();
        rig.s.start();
        let restarted = Instant::now();
        // Without the device, the sweeper takes C; at the device's next
        // contact every load ends.
        none_pending(&rig.db, restarted + bound(), spec).await;
        rig.status().await;
        assert!(
            restarted.elapsed() < bound(),
            "{spec}: I8: took {:?}",
            restarted.elapsed()
        );
        let purses = i64::try_from(rig.d.purse.balance).unwrap();
        let m = check(&rig.s, &rig.db, &rig.dir, OPENING, purses, &rig.h, spec).await;
        money.lost += m.lost;
        money.created += m.created;
        rig.s.kill();
    }
    eprintln!(
        "load crash sweep: {} cases ({} points × kill, panic × hits) in {:.0?}, every point fired; \
         {} restarts after a crash; answers ok {}, unknown {}; {} loads; violations 0, \
         money lost {}, money created {}",
        cases.len(),
        points.len(),
        started.elapsed(),
        rig.restarts,
        rig.h.ok,
        rig.h.unknown,
        rig.h.applied.len(),
        money.lost,
        money.created,
    );
}

// --- random runs ------------------------------------------------------------

/// The replicas' public addresses, as the devices find them now.
type Addrs = Arc<RwLock<[String; 2]>>;

fn addr(addrs: &Addrs, i: usize) -> String {
    addrs.read().unwrap()[i].clone()
}

/// Sends `body` (the same bytes every time) until an answer comes or
/// `deadline` passes, to `to()` each time; the final answer, or `None`
/// when none came (unknown).
async fn deliver(
    d: &mut Device,
    h: &mut History,
    root: &str,
    path: &str,
    body: &Value,
    deadline: Instant,
    mut to: impl FnMut() -> String,
) -> Option<Result<Value, String>> {
    while Instant::now() < deadline {
        let at = to();
        match attempt(&at, root, d, path, body).await {
            Answer::Ok(v) => {
                h.ok += 1;
                return Some(Ok(v));
            }
            Answer::Failed(code) => {
                h.failed += 1;
                return Some(Err(code));
            }
            Answer::Session => {
                if !login(&at, root, d).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Answer::Unknown(_) => {
                h.unknown += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

/// One device's part of a run: `loads` loads, each request to a random
/// replica, each report to the other one.
async fn drive(
    mut d: Device,
    addrs: Addrs,
    root: String,
    seed: u64,
    loads: u32,
) -> (Device, History) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = History::default();
    for _ in 0..loads {
        let amount = if rng.gen_bool(0.1) {
            MAX_AMOUNT + 1
        } else {
            rng.gen_range(1..=2_000)
        };
        let req = d.purse.request(&d.dev, amount).unwrap();
        let deadline = Instant::now() + STEP;
        let mut issuer = 0;
        let mut pick = StdRng::seed_from_u64(rng.r#gen());
        let answer = deliver(
            &mut d,
            &mut h,
            &root,
            "/v1/loads",
            &req.body,
            deadline,
            || {
                issuer = pick.gen_range(0..2);
                addr(&addrs, issuer)
            },
        )
        .await;
        let answer = match answer {
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                h.failed_requests.push(req.bytes);
                continue;
            }
            // Never answered: the purse moves on.
            None => continue,
        };
        let permit = d.purse.check_permit(&answer, &root).unwrap();
        let id = h.permit(&answer);
        // Mostly applied and reported; else failed, applied with the
        // report lost, or neither applied nor reported.
        let (applied, report) = match rng.gen_range(0..10) {
            0..=6 => (true, true),
            7 => (false, true),
            8 => (true, false),
            _ => (false, false),
        };
        h.applied.insert(id.clone(), applied);
        let rep = if applied {
            d.purse.apply(&d.dev, &permit).unwrap()
        } else {
            d.purse.fail(&d.dev, &permit, 9).unwrap()
        };
        if !report {
            continue;
        }
        let other = 1 - issuer;
        let path = format!("/v1/loads/{id}/report");
        let deadline = Instant::now() + STEP;
        match deliver(&mut d, &mut h, &root, &path, &rep.body, deadline, || {
            addr(&addrs, other)
        })
        .await
        {
            Some(Ok(v)) => h
                .reported
                .push((id, v["state"].as_str().unwrap().to_owned())),
            Some(Err(_)) => h.failed_reports.push((id, rep.bytes)),
            None => {}
        }
    }
    (d, h)
}

/// The device's next contact: a status to `at`, fresh after a lost answer.
async fn next_contact(d: &mut Device, h: &mut History, root: &str, addrs: &Addrs, at: usize) {
    let deadline = Instant::now() + STEP;
    loop {
        assert!(Instant::now() < deadline, "status: no answer");
        let status = d.purse.status(&d.dev).unwrap();
        let to = addr(addrs, at);
        match attempt(&to, root, d, "/v1/loads/status", &status.body).await {
            Answer::Ok(_) => return h.ok += 1,
            Answer::Failed(code) => panic!("status refused: {code}"),
            Answer::Session => {
                login(&to, root, d).await;
            }
            Answer::Unknown(_) => {
                h.unknown += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_loads_on_two_replicas_killed_at_random_lose_and_create_no_money() {
    const DEVICES: usize = 3;
    let runs = env_u64("KEYWARD_LOAD_CRASH_RUNS").unwrap_or(RUNS);
    let seed = env_u64("KEYWARD_LOAD_CRASH_SEED").unwrap_or_else(rand::random::<u64>);
    eprintln!("load crash runs: {runs}, seed {seed} (replay: KEYWARD_LOAD_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut s, db, root, dir, mut devices) = bank(DEVICES).await;
    let mut b = s.replica("b");
    let addrs: Addrs = Arc::new(RwLock::new([s.public.clone(), b.public.clone()]));
    let mut h = History::default();
    let mut kills = 0u32;
    let mut credited = OPENING;
    let started = Instant::now();
    for run in 0..runs {
        let what = format!("seed {seed}, run {run}");
        let mut set = tokio::task::JoinSet::new();
        for d in devices.drain(..) {
            let loads = rng.gen_range(2..=4);
            set.spawn(drive(d, addrs.clone(), root.clone(), rng.r#gen(), loads));
        }
        // The first kill early in the run (the devices' work takes a few
        // hundred ms), later ones further apart.
        let mut pause = Duration::from_millis(rng.gen_range(0..150));
        while !set.is_empty() {
            tokio::select! {
                done = set.join_next() => {
                    let (d, seen) = done.unwrap().unwrap();
                    devices.push(d);
                    h.merge(seen);
                }
                () = tokio::time::sleep(pause) => {
                    let which = rng.gen_range(0..2);
                    let down = Duration::from_millis(rng.gen_range(0..300));
                    kills += 1;
                    pause = Duration::from_millis(rng.gen_range(50..600));
                    if which == 0 {
                        s.kill();
                        tokio::time::sleep(down).await;
                        tokio::task::block_in_place(|| s.start());
                        addrs.write().unwrap()[0] = s.public.clone();
                    } else {
                        drop(b);
                        tokio::time::sleep(down).await;
                        b = tokio::task::block_in_place(|| s.replica("b"));
                        addrs.write().unwrap()[1] = b.public.clone();
                    }
                }
            }
        }
        // Devices in a stable order for the next run's seeds.
        devices.sort_by(|x, y| x.purse.device.cmp(&y.purse.device));
        // Without contact, the sweeper ends every pending load in time;
        // then each device's next contact settles what it proves.
        none_pending(&db, Instant::now() + bound(), &what).await;
        for d in &mut devices {
            let at = rng.gen_range(0..2);
            next_contact(d, &mut h, &root, &addrs, at).await;
        }
        let purses = devices
            .iter()
            .map(|d| i64::try_from(d.purse.balance).unwrap())
            .sum();
        check(&s, &db, &dir, credited, purses, &h, &what).await;
        if (run + 1) % 50 == 0 {
            eprintln!(
                "load crash runs: {} done, {kills} SIGKILLs, violations 0",
                run + 1
            );
        }
        // Money for the next runs: the long form drains the account.
        if credited - purses < OPENING / 2 {
            let st = Station {
                s: &s,
                devices: dir.clone(),
            };
            let amount = (OPENING / 2).to_string();
            st.ok(
                "alice",
                &[
                    "account",
                    "credit",
                    ACCOUNT,
                    "--amount",
                    &amount,
                    "--reference",
                    "top-up",
                ],
            );
            credited += OPENING / 2;
        }
    }
    eprintln!(
        "load crash runs: {runs} in {:.0?}, seed {seed}, {DEVICES} devices on two replicas; \
         {kills} SIGKILLs; answers ok {}, failed {}, unknown {}; {} loads permitted, \
         {} reports answered; violations 0, money lost 0, money created 0",
        started.elapsed(),
        h.ok,
        h.failed,
        h.unknown,
        h.applied.len(),
        h.reported.len(),
    );
}
