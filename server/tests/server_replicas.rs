//! Seeded two-replica runs on PostgreSQL (docs/protocol.md §12.5): two real
//! `keyward serve` replicas on one database and one HSM token, replica B
//! reaching the database through a TCP proxy of the test's; the
//! PostgreSQL cluster is the test's own (`initdb` in a temp dir), so
//! restarting it disturbs no other test.
//!
//! Each seed is one run: a scheduler seeded with it (`StdRng`) has devices
//! do concurrent operations against either replica — logins (new working
//! keys offered after an operator's rotation request), transaction MACs,
//! confirmations (submit, the code read at the local webhook receiver,
//! confirm), e-purse loads (permit, apply, report to the other replica) —
//! while it SIGKILLs and restarts a replica, restarts PostgreSQL (`-m
//! fast` or `-m immediate`), cuts replica B from the database for a while,
//! requests key rotations, suspends a device, revokes an operator's
//! certificate, and has a spare device answer its logins wrongly until it
//! is locked out (in the background, while the next faults strike). Every answer is recorded as ok, failed (a
//! typed 4xx) or unknown (no answer, a reset, a 5xx): a failed answer
//! whose effect happened is a bug; an unknown one may have either outcome.
//!
//! After each run everything is healed, the sweeper, the outbox and each
//! purse's next contact finish what is open, and:
//!
//! - `kwctl ledger verify` (I1–I9) and `kwctl audit verify` (the chain and
//!   its HSM checkpoint) find nothing;
//! - the history against the database: a permit answered is the stored
//!   load byte for byte, a report answered names its load's state, a
//!   refused request made no load and a refused report decided nothing; a
//!   load reached the float iff its purse applied it; no money lost or
//!   created;
//! - a replay of the ledger's journal (its entries in chain order, then id
//!   order) through a model of accounts from zero: every stored balance is
//!   the model's, each step books one amount from one account to another,
//!   each transfer's steps are the ones its state names, each load's state
//!   the one its transfer's steps give;
//! - confirmations: every message sent and received under one id, one
//!   message per step, one id per code text and per execution; every
//!   confirm answered ok executed once, none refused executed;
//! - no credential locked with a valid certificate (every device the run
//!   locked out has none left); at most one active and one pending
//!   working-key version per credential;
//! - every certificate the run revoked is refused at the TLS handshake by
//!   both replicas (the CRL published, and reloaded by the other replica's
//!   poll), while a valid operator's is served.
//!
//! PostgreSQL only: it skips (and says so) on the SQLite pass, i.e. without
//! `KEYWARD_TEST_DATABASE_URL` (that database itself is not used), and when
//! `/usr/lib/postgresql/15/bin` is missing. `KEYWARD_REPLICA_SEED=S` is the
//! first seed (random by default, printed first), `KEYWARD_REPLICA_SEEDS=N`
//! the number of runs (20; the long form 1,000, ops/README.md). Seeds
//! follow one installation, so `KEYWARD_REPLICA_SEED=S
//! KEYWARD_REPLICA_SEEDS=1` replays the operations and faults of seed S
//! (with the same commit), not the state earlier seeds left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::replicas::{PgCluster, Proxy, with_port};
use common::station::{ACCOUNT, Station, code_in, confirm_body, device_id, webhook_confirmations};
use common::{Options, Replica, Server};
use hyper::Method;
use keyward_kms::db::Database;
use keyward_tests::purse::Purse;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions, Terminal};
use keyward_tests::webhook::Receiver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;

/// `[load] report_timeout_secs`.
const TIMEOUT_SECS: u64 = 1;
/// `[load] sweep_interval_ms`.
const SWEEP_MS: u64 = 100;
/// `[load] max_amount_minor`: now and then a request asks for more.
const MAX_AMOUNT: u64 = 10_000;
/// What the account is credited with at the start.
const OPENING: i64 = 1_000_000;
/// Runs of the short form (CI).
const SEEDS: u64 = 20;
/// Devices, each one client task.
const DEVICES: usize = 3;
/// Spare devices, one for each lockout a run may make (more with
/// `KEYWARD_REPLICA_VICTIMS`); once they are used up no lockout is made.
const VICTIMS: usize = 4;
/// The issuer every device is keyed for.
const ISSUER: &str = "bank-a";
/// How long one client call may take before its answer counts as lost.
const CALL: Duration = Duration::from_secs(5);
/// How long an operation retries (the same bytes) before it is unknown.
const OP: Duration = Duration::from_secs(12);
/// How long the checks wait for the sweeper, the outbox, a next contact.
const SETTLE: Duration = Duration::from_secs(30);
/// The loads' terminal states.
const TERMINAL: [&str; 4] = ["posted", "voided", "late_applied", "not_applied"];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A device with its purse and its session.
struct Device {
    dev: SimDevice,
    chain: String,
    purse: Purse,
    token: Option<String>,
    /// A login's answer was lost since the last one answered: the device
    /// may hold keys the server did not confirm.
    login_unknown: bool,
}

/// How an answer counts.
#[derive(Clone, Copy)]
enum Class {
    Ok,
    Failed,
    Unknown,
}

/// What the clients saw.
#[derive(Default)]
struct History {
    /// Per kind of operation: answers ok, failed, unknown.
    kinds: BTreeMap<&'static str, [u32; 3]>,
    /// Every permit answered: load id, permit and signature bytes.
    permits: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// For each load a purse got a permit for: whether it applied it.
    applied: BTreeMap<String, bool>,
    /// Reports answered ok, with the state they named.
    reported: Vec<(String, String)>,
    /// Request bytes whose answer was a refusal.
    failed_requests: Vec<Vec<u8>>,
    /// Report bytes (and their load) whose answer was a refusal.
    failed_reports: Vec<(String, Vec<u8>)>,
    /// Confirmations whose confirm was sent at all.
    confirm_sent: BTreeSet<String>,
    /// Confirms answered ok.
    confirmed: BTreeSet<String>,
    /// Confirms refused, every earlier attempt answered too.
    refused_confirms: BTreeSet<String>,
    /// Refusals that should not happen: what, and the code.
    refusals: Vec<String>,
    /// MACs answered, but not `valid`, by a device whose keys the server
    /// had confirmed.
    bad_macs: Vec<String>,
    /// The refusals' codes, counted.
    codes: BTreeMap<String, u32>,
}

impl History {
    fn tally(&mut self, kind: &'static str, c: Class) {
        let t = self.kinds.entry(kind).or_default();
        t[c as usize] += 1;
    }

    fn merge(&mut self, o: Self) {
        for (k, v) in o.kinds {
            let t = self.kinds.entry(k).or_default();
            for i in 0..3 {
                t[i] += v[i];
            }
        }
        self.permits.extend(o.permits);
        self.applied.extend(o.applied);
        self.reported.extend(o.reported);
        self.failed_requests.extend(o.failed_requests);
        self.failed_reports.extend(o.failed_reports);
        self.confirm_sent.extend(o.confirm_sent);
        self.confirmed.extend(o.confirmed);
        self.refused_confirms.extend(o.refused_confirms);
        self.refusals.extend(o.refusals);
        self.bad_macs.extend(o.bad_macs);
        for (k, v) in o.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }

    /// A refusal that should not happen, unless the device was suspended
    /// (an operator's action the scheduler takes).
    fn refused(&mut self, what: String) {
        if !what.contains("device_suspended") {
            self.refusals.push(what);
        }
    }

    fn total(&self, c: Class) -> u32 {
        self.kinds.values().map(|t| t[c as usize]).sum()
    }
}

/// One answer, as the client classes it.
enum Answer {
    Ok(Value),
    /// A typed refusal (4xx): its code.
    Failed(String),
    /// The session is unknown or expired: log in, then ask again.
    Session,
    /// No answer, or a 5xx: the effect is unknown.
    Unknown,
}

/// One POST of `body` by `d` to the public listener `addr`.
async fn attempt(addr: &str, root: &str, d: &Device, path: &str, body: &Value) -> Answer {
    let Ok(t) = Terminal::new(&format!("https://{addr}"), root, &d.chain, &d.dev) else {
        return Answer::Unknown;
    };
    let call = t.call(Method::POST, path, Some(body), d.token.as_deref());
    match tokio::time::timeout(CALL, call).await {
        Ok(Ok(r)) if r.status.is_success() => Answer::Ok(r.body),
        Ok(Ok(r)) if r.code().starts_with("session_") => Answer::Session,
        Ok(Ok(r)) if r.status.is_client_error() => {
            Answer::Failed(format!("{} {}", r.status.as_u16(), r.code()))
        }
        _ => Answer::Unknown,
    }
}

/// What an operation came to, as the client knows it.
enum Outcome {
    Ok(Value),
    /// Refused, every earlier attempt answered too: no effect may exist.
    Failed(String),
    /// No answer, or a refusal after an attempt whose answer was lost
    /// (the lost one may have had the effect).
    Unknown,
}

/// A login of `d` at `addr` (taking new working keys if offered).
async fn login(addr: &str, root: &str, d: &mut Device, h: &mut History) -> Class {
    let Ok(t) = Terminal::new(&format!("https://{addr}"), root, &d.chain, &d.dev) else {
        h.tally("login", Class::Unknown);
        d.login_unknown = true;
        return Class::Unknown;
    };
    let out = terminal::login(&t, &mut d.dev, ISSUER, LoginOptions::default());
    let class = match tokio::time::timeout(CALL, out).await {
        Ok(Ok(out)) if out.finish.status.is_success() => {
            d.token = Some(out.answer().unwrap().session_token);
            d.login_unknown = false;
            Class::Ok
        }
        Ok(Ok(out)) if out.finish.status.is_client_error() => {
            h.refused(format!(
                "login finish {} {}",
                out.finish.status,
                out.finish.code()
            ));
            Class::Failed
        }
        // A start refused with a 4xx (its text names the status).
        Ok(Err(e)) if e.to_string().starts_with("login start refused: 4") => {
            h.refused(format!("{e:#}"));
            Class::Failed
        }
        _ => {
            d.login_unknown = true;
            Class::Unknown
        }
    };
    h.tally("login", class);
    class
}

/// The replicas' (public, admin) addresses, as clients find them now.
type Addrs = Arc<RwLock<[(String, String); 2]>>;

fn addr(addrs: &Addrs, i: usize) -> String {
    addrs.read().unwrap()[i].0.clone()
}

fn admin_addr(addrs: &Addrs, i: usize) -> String {
    addrs.read().unwrap()[i].1.clone()
}

/// What every client task shares.
#[derive(Clone)]
struct Ctx {
    addrs: Addrs,
    root: String,
    db: Database,
    seen: Arc<keyward_tests::webhook::Seen>,
    /// The CA root and an operator's certificate and key (PEM files), for
    /// bulk batches on the admin listeners; a dir for request bodies.
    files: [PathBuf; 3],
    tmp: PathBuf,
}

impl Ctx {
    /// Sends `body` (the same bytes every time) to replica `to()` until an
    /// answer comes or [`OP`] passes; `None` when none came (unknown).
    async fn deliver(
        &self,
        d: &mut Device,
        h: &mut History,
        kind: &'static str,
        path: &str,
        body: &Value,
        mut to: impl FnMut() -> usize,
    ) -> Outcome {
        let deadline = Instant::now() + OP;
        let mut lost = false;
        while Instant::now() < deadline {
            let at = addr(&self.addrs, to());
            match attempt(&at, &self.root, d, path, body).await {
                Answer::Ok(v) => {
                    h.tally(kind, Class::Ok);
                    return Outcome::Ok(v);
                }
                Answer::Failed(code) => {
                    *h.codes.entry(format!("{kind}: {code}")).or_default() += 1;
                    if lost {
                        h.tally(kind, Class::Unknown);
                        return Outcome::Unknown;
                    }
                    h.tally(kind, Class::Failed);
                    return Outcome::Failed(code);
                }
                Answer::Session => {
                    if !matches!(login(&at, &self.root, d, h).await, Class::Ok) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Answer::Unknown => {
                    lost = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        h.tally(kind, Class::Unknown);
        Outcome::Unknown
    }

    /// A load: the request to a random replica, the report (if the
    /// purse makes one) to the other.
    async fn load(&self, d: &mut Device, h: &mut History, rng: &mut StdRng) {
        let amount = if rng.gen_bool(0.1) {
            MAX_AMOUNT + 1
        } else {
            rng.gen_range(1..=2_000)
        };
        let req = d.purse.request(&d.dev, amount).unwrap();
        let mut pick = StdRng::seed_from_u64(rng.r#gen());
        let mut issuer = 0;
        let answer = self
            .deliver(d, h, "load request", "/v1/loads", &req.body, || {
                issuer = pick.gen_range(0..2);
                issuer
            })
            .await;
        let answer = match answer {
            Outcome::Ok(a) => a,
            Outcome::Failed(code) => {
                if amount <= MAX_AMOUNT {
                    h.refused(format!("load request {code}"));
                }
                h.failed_requests.push(req.bytes);
                return;
            }
            Outcome::Unknown => return,
        };
        let permit = d.purse.check_permit(&answer, &self.root).unwrap();
        let b64 = |k: &str| B64.decode(answer[k].as_str().unwrap()).unwrap();
        let id = answer["load_id"].as_str().unwrap().to_owned();
        h.permits
            .push((id.clone(), b64("permit"), b64("signature")));
        // Mostly applied and reported; else failed, applied with the
        // report lost, or neither.
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
            return;
        }
        let other = 1 - issuer;
        let path = format!("/v1/loads/{id}/report");
        match self
            .deliver(d, h, "load report", &path, &rep.body, || other)
            .await
        {
            Outcome::Ok(v) => h
                .reported
                .push((id, v["state"].as_str().unwrap().to_owned())),
            Outcome::Failed(_) => h.failed_reports.push((id, rep.bytes)),
            Outcome::Unknown => {}
        }
    }

    /// A transaction MAC by the device's current keys.
    async fn mac(&self, d: &mut Device, h: &mut History, rng: &mut StdRng) {
        if d.token.is_none() {
            let at = addr(&self.addrs, rng.gen_range(0..2));
            login(&at, &self.root, d, h).await;
        }
        let text = format!("0200|{ACCOUNT}|{:012}", rng.gen_range(1..1_000_000));
        let body = terminal::transaction_body(&d.dev, ISSUER, &text).unwrap();
        let to = rng.gen_range(0..2);
        let answer = self
            .deliver(d, h, "transaction MAC", "/v1/transactions", &body, || to)
            .await;
        match answer {
            Outcome::Ok(v) if v["result"] != "valid" && !d.login_unknown => {
                h.bad_macs.push(v.to_string());
            }
            Outcome::Failed(code) if !d.login_unknown => {
                h.refused(format!("transaction MAC {code}"));
            }
            _ => {}
        }
    }

    /// A bulk batch (one item: a MAC by the device's current key) on a
    /// replica's admin listener, as a back office sends it.
    async fn bulk(&self, d: &Device, h: &mut History, rng: &mut StdRng, n: u64) {
        let Some(version) = d.dev.key_version(ISSUER) else {
            return;
        };
        let msg = format!("0200|{ACCOUNT}|{n:012}");
        let mac = d
            .dev
            .transaction_mac(ISSUER, "ISO9797-1-M3", 1, msg.as_bytes())
            .unwrap();
        let body = json!({ "items": [{
            "device_id": d.dev.id.to_string(), "issuer_id": ISSUER, "key_version": version,
            "algorithm": "ISO9797-1-M3", "padding": 1,
            "message": B64.encode(&msg), "mac": B64.encode(&mac[..4]),
        }]});
        let file = self.tmp.join(format!("bulk-{}-{n}.json", d.dev.id));
        std::fs::write(&file, body.to_string()).unwrap();
        let url = format!(
            "https://{}/admin/v1/macs/verify",
            admin_addr(&self.addrs, rng.gen_range(0..2))
        );
        let [ca, cert, key] = self.files.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
                .arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(url)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        match status.trim() {
            "200" => {
                h.tally("bulk batch", Class::Ok);
                let v: Value = serde_json::from_str(body).unwrap();
                if v["results"][0]["result"] != "valid" && !d.login_unknown {
                    h.bad_macs.push(format!("bulk: {v}"));
                }
            }
            s if s.starts_with('4') => {
                h.tally("bulk batch", Class::Failed);
                h.refused(format!("bulk batch {s} {body}"));
            }
            _ => h.tally("bulk batch", Class::Unknown),
        }
    }

    /// A confirmation: submitted, its code read at the receiver (the
    /// customer's phone), confirmed (the same bytes until answered).
    async fn confirmation(&self, d: &mut Device, h: &mut History, rng: &mut StdRng, n: u64) {
        let tx = json!({
            "payer_account": ACCOUNT,
            "payee_account": "DE89370400440532013000",
            "payee_name": "ACME GmbH",
            "amount": rng.gen_range(100..100_000),
            "currency": "EUR",
            "reference": format!("Replica run {n}"),
        });
        if d.token.is_none() {
            let at = addr(&self.addrs, rng.gen_range(0..2));
            login(&at, &self.root, d, h).await;
        }
        // A submit is not repeated: a lost answer may have made one.
        let at = addr(&self.addrs, rng.gen_range(0..2));
        let id = loop {
            match attempt(&at, &self.root, d, "/v1/confirmations", &tx).await {
                Answer::Ok(v) => {
                    h.tally("confirmation submit", Class::Ok);
                    break v["confirmation_id"].as_str().unwrap().to_owned();
                }
                Answer::Session => {
                    if !matches!(login(&at, &self.root, d, h).await, Class::Ok) {
                        h.tally("confirmation submit", Class::Unknown);
                        return;
                    }
                }
                Answer::Failed(code) => {
                    h.tally("confirmation submit", Class::Failed);
                    h.refused(format!("confirmation submit {code}"));
                    return;
                }
                Answer::Unknown => {
                    h.tally("confirmation submit", Class::Unknown);
                    return;
                }
            }
        };
        let Some(code) = self.code(&id).await else {
            // Not delivered in time: the checks still want it delivered.
            return;
        };
        let bytes = serde_json::to_vec(&tx).unwrap();
        let body = confirm_body(&d.dev, &bytes, &code);
        let path = format!("/v1/confirmations/{id}/confirm");
        h.confirm_sent.insert(id.clone());
        let to = rng.gen_range(0..2);
        match self.deliver(d, h, "confirm", &path, &body, || to).await {
            Outcome::Ok(v) => {
                assert_eq!(v["state"], "executed", "confirm of {id}: {v}");
                h.confirmed.insert(id);
            }
            Outcome::Failed(code) => {
                h.refused(format!("confirm {code}"));
                h.refused_confirms.insert(id);
            }
            Outcome::Unknown => {}
        }
    }

    /// The code of confirmation `id` as delivered, if it comes within [`OP`].
    async fn code(&self, id: &str) -> Option<keyward_protocol::confirmation::Code> {
        let deadline = Instant::now() + OP;
        while Instant::now() < deadline {
            let delivery: Option<String> =
                sqlx::query_scalar("SELECT delivery_id FROM confirmations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.db.pool())
                    .await
                    .ok()
                    .flatten();
            if let Some(body) = delivery.and_then(|d| self.seen.bodies().get(&d).cloned()) {
                return Some(code_in(&body));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// One device's part of a run: `ops` operations picked by `seed`.
async fn drive(ctx: Ctx, mut d: Device, seed: u64, ops: u32) -> (Device, History) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = History::default();
    for n in 0..ops {
        match rng.gen_range(0..20) {
            0..=7 => ctx.load(&mut d, &mut h, &mut rng).await,
            8..=11 => {
                let at = addr(&ctx.addrs, rng.gen_range(0..2));
                login(&at, &ctx.root, &mut d, &mut h).await;
            }
            12..=13 => ctx.mac(&mut d, &mut h, &mut rng).await,
            14 => {
                let n = seed.wrapping_add(u64::from(n));
                ctx.bulk(&d, &mut h, &mut rng, n).await;
            }
            _ => {
                let n = seed.wrapping_add(u64::from(n));
                ctx.confirmation(&mut d, &mut h, &mut rng, n).await;
            }
        }
    }
    (d, h)
}

/// The faults (and operator actions) a scheduler may inject.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillA,
    KillB,
    PgFast,
    PgImmediate,
    CutB,
    Rotate,
    Suspend,
    /// An operator certificate issued, then revoked: every replica must
    /// refuse it from then on (the CRL published and reloaded).
    Revoke,
    /// A spare device answers logins wrongly, in the background while the
    /// next faults strike, until its credential is locked (and its
    /// certificate revoked).
    Lockout,
}

/// The installation: replica A (the harness's server), replica B behind
/// the proxy, the cluster, the receiver.
struct Rig {
    s: Server,
    b: Option<Replica>,
    b_url: String,
    proxy: Proxy,
    pg: PgCluster,
    receiver: Receiver,
    _files: tempfile::TempDir,
    db: Database,
    root: String,
    dir: PathBuf,
    addrs: Addrs,
    faults: BTreeMap<String, u32>,
    /// Operators whose certificates were revoked since the last check.
    revoked: Vec<String>,
    /// Spare devices a lockout may take, and the lockouts under way.
    victims: Vec<Device>,
    lockouts: tokio::task::JoinSet<String>,
}

impl Rig {
    fn station(&self) -> Station<'_> {
        Station {
            s: &self.s,
            devices: self.dir.clone(),
        }
    }

    /// `kwctl -o json ARGS` as alice on replica A until it succeeds (a
    /// database just restarted may fail a first call).
    async fn operator(&self, args: &[&str]) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut all = vec!["-o", "json"];
            all.extend_from_slice(args);
            let out =
                tokio::task::block_in_place(|| self.s.kwctl(self.s.dir.path(), "alice", &all));
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kwctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// POSTs `body` to replica A's admin listener as the first admin until
    /// it answers one of `done` (a database just restarted may fail a first
    /// call); the answer.
    async fn as_admin(&self, path: &str, body: &Value, done: &[u16]) -> Value {
        let deadline = Instant::now() + SETTLE;
        loop {
            let r = tokio::task::block_in_place(|| self.s.admin_post(path, body));
            if done.contains(&r.status) {
                return r.json();
            }
            assert!(Instant::now() < deadline, "POST {path}: {r:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A new auditor certificate `NAME.pem` (and key) in the server's dir;
    /// its serial.
    async fn spare_operator(&self, name: &str) -> String {
        let (_, csr) = tokio::task::block_in_place(|| self.s.openssl_csr(name));
        let body = json!({ "csr_pem": csr, "name": name, "role": "auditor" });
        let v = self.as_admin("/admin/v1/operators", &body, &[201]).await;
        let pem = format!(
            "{}{}",
            v["certificate_pem"].as_str().unwrap(),
            v["chain_pem"].as_str().unwrap()
        );
        std::fs::write(self.s.dir.path().join(format!("{name}.pem")), pem).unwrap();
        v["serial"].as_str().unwrap().to_owned()
    }

    /// Applies `f`, healing before it returns: a replica comes back, the
    /// database accepts connections again, the cut ends after `down`.
    async fn inject(&mut self, f: Fault, down: Duration, devices: &[String], pick: usize) {
        *self.faults.entry(format!("{f:?}")).or_default() += 1;
        match f {
            Fault::KillA => {
                self.s.kill();
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| self.s.start());
                self.addrs.write().unwrap()[0] = (self.s.public.clone(), self.s.admin.clone());
            }
            Fault::KillB => {
                self.b = None;
                tokio::time::sleep(down).await;
                let b = tokio::task::block_in_place(|| self.s.replica_via("b", &self.b_url));
                self.addrs.write().unwrap()[1] = (b.public.clone(), b.admin.clone());
                self.b = Some(b);
            }
            Fault::PgFast | Fault::PgImmediate => {
                let immediate = matches!(f, Fault::PgImmediate);
                tokio::task::block_in_place(|| self.pg.restart(immediate));
            }
            Fault::CutB => {
                self.proxy.cut();
                tokio::time::sleep(down).await;
                self.proxy.heal();
            }
            Fault::Rotate => {
                let device = &devices[pick % devices.len()];
                self.operator(&["key", "rotate", "--issuer", ISSUER, "--device", device])
                    .await;
            }
            Fault::Lockout => {
                if let Some(victim) = self.victims.pop() {
                    let (addrs, root, db) =
                        (self.addrs.clone(), self.root.clone(), self.db.clone());
                    self.lockouts
                        .spawn(lock_out(addrs, root, db, victim, pick as u64));
                }
            }
            Fault::Revoke => {
                let name = format!("spare-{}", self.faults["Revoke"]);
                let serial = self.spare_operator(&name).await;
                let path = format!("/admin/v1/ca/certificates/{serial}/revoke");
                self.as_admin(&path, &json!({}), &[200, 409]).await;
                self.revoked.push(name);
            }
            Fault::Suspend => {
                // Refused meanwhile (`device_suspended`), then resumed.
                let device = &devices[pick % devices.len()];
                let why = ["--reason", "replica run"];
                self.operator(&["device", "suspend", device, why[0], why[1]])
                    .await;
                tokio::time::sleep(down).await;
                self.operator(&["device", "resume", device, why[0], why[1]])
                    .await;
            }
        }
    }
}

/// The installation, both replicas running; `None` when PostgreSQL 15 is
/// not installed.
async fn bank() -> Option<(Rig, Vec<Device>)> {
    let pg = PgCluster::start()?;
    let receiver = Receiver::start().await;
    let files = tempfile::tempdir().unwrap();
    let db = keyward_tests::db::postgres(&pg.url()).await.unwrap();
    let mut s = Server::with_database(
        Options {
            extra: format!(
                "[load]\nreport_timeout_secs = {TIMEOUT_SECS}\nsweep_interval_ms = {SWEEP_MS}\n\
                 max_amount_minor = {MAX_AMOUNT}\n{}",
                webhook_confirmations(&receiver, files.path())
            ),
            ..Default::default()
        },
        db,
    );
    s.init();
    s.start();
    s.new_operator("alice", "operator");
    s.new_operator("bob", "operator");
    let dir = s.dir.path().join("devices");
    let st = Station {
        s: &s,
        devices: dir.clone(),
    };
    let victims = env_u64("KEYWARD_REPLICA_VICTIMS").unwrap_or(VICTIMS as u64) as usize;
    let customer = st.provision_devices(&[(ISSUER, "tdes")], DEVICES + victims);
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
    credit(&st, OPENING, "opening");
    let mut devices: Vec<Device> = (0..DEVICES + victims)
        .map(device_id)
        .map(|id| Device {
            dev: st.device(&id),
            chain: st.chain(&id),
            purse: Purse::new(id.parse().unwrap(), &customer, ACCOUNT, "CNY"),
            token: None,
            login_unknown: false,
        })
        .collect();
    let victims = devices.split_off(DEVICES);
    let proxy = Proxy::start(pg.port).await;
    let b_url = with_port(&s.db.config.url, pg.port, proxy.port);
    let b = s.replica_via("b", &b_url);
    let db = Database::connect(&s.db.config).await.unwrap();
    let root = std::fs::read_to_string(s.ca_pem()).unwrap();
    let addrs = Arc::new(RwLock::new([
        (s.public.clone(), s.admin.clone()),
        (b.public.clone(), b.admin.clone()),
    ]));
    let rig = Rig {
        s,
        b: Some(b),
        b_url,
        proxy,
        pg,
        receiver,
        _files: files,
        db,
        root,
        dir,
        addrs,
        faults: BTreeMap::new(),
        revoked: Vec::new(),
        victims,
        lockouts: tokio::task::JoinSet::new(),
    };
    Some((rig, devices))
}

fn credit(st: &Station<'_>, amount: i64, reference: &str) {
    let amount = amount.to_string();
    st.ok(
        "alice",
        &[
            "account",
            "credit",
            ACCOUNT,
            "--amount",
            &amount,
            "--reference",
            reference,
        ],
    );
}

/// Polls `sql` (one count) until it is 0; fails past [`SETTLE`].
async fn until_none(db: &Database, sql: &str, what: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(db.pool())
            .await
            .unwrap_or(-1);
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} left after {SETTLE:?} ({sql})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The device's next contact: a status (fresh after a lost answer).
async fn next_contact(ctx: &Ctx, d: &mut Device, h: &mut History, at: usize, what: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        assert!(Instant::now() < deadline, "{what}: status: no answer");
        let status = d.purse.status(&d.dev).unwrap();
        let to = addr(&ctx.addrs, at);
        match attempt(&to, &ctx.root, d, "/v1/loads/status", &status.body).await {
            Answer::Ok(_) => return h.tally("load status", Class::Ok),
            Answer::Failed(code) => panic!("{what}: status refused: {code}"),
            Answer::Session => {
                login(&to, &ctx.root, d, h).await;
            }
            Answer::Unknown => {
                h.tally("load status", Class::Unknown);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Money on the purses and in the ledger, as the checks found it.
struct Money {
    account: i64,
    float: i64,
    receivable: i64,
}

/// Replays the ledger's journal through a model of accounts and checks
/// every stored balance and state against it (see the module); the
/// model's balances.
async fn replay(db: &Database, what: &str) -> BTreeMap<String, i64> {
    let entries = sqlx::query(
        "SELECT transfer_id, step, account_id, delta_minor FROM ledger_entries \
         ORDER BY chain_seq IS NULL, chain_seq, id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut balances: BTreeMap<String, i64> = BTreeMap::new();
    let mut steps: BTreeMap<String, BTreeMap<String, Vec<(String, i64)>>> = BTreeMap::new();
    for e in &entries {
        let (transfer, step, account, delta): (String, String, String, i64) = (
            e.get("transfer_id"),
            e.get("step"),
            e.get("account_id"),
            e.get("delta_minor"),
        );
        *balances.entry(account.clone()).or_default() += delta;
        steps
            .entry(transfer)
            .or_default()
            .entry(step)
            .or_default()
            .push((account, delta));
    }
    assert_eq!(
        balances.values().sum::<i64>(),
        0,
        "{what}: model: the entries do not sum to zero"
    );

    let accounts = sqlx::query("SELECT id, kind, floor_minor, balance_minor FROM ledger_accounts")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let mut known = BTreeSet::new();
    for a in &accounts {
        let (id, kind, floor, stored): (String, String, i64, i64) = (
            a.get("id"),
            a.get("kind"),
            a.get("floor_minor"),
            a.get("balance_minor"),
        );
        let model = balances.get(&id).copied().unwrap_or_default();
        if kind == "customer" {
            assert_eq!(stored, model, "{what}: model: balance of {id}");
            assert!(model >= floor, "{what}: model: {id} below its floor");
        } else {
            assert_eq!(
                stored, 0,
                "{what}: model: system account {id} holds a balance"
            );
        }
        known.insert(id);
    }
    for id in balances.keys() {
        assert!(
            known.contains(id),
            "{what}: model: entries of unknown account {id}"
        );
    }

    let transfers = sqlx::query(
        "SELECT id, kind, state, late, amount_minor, debit_account, credit_account \
         FROM ledger_transfers",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut by_state: BTreeMap<String, (String, bool, i64, String)> = BTreeMap::new();
    for t in &transfers {
        let (id, kind, state, late, amount, debit, credit): (
            String,
            String,
            String,
            Option<String>,
            i64,
            String,
            String,
        ) = (
            t.get("id"),
            t.get("kind"),
            t.get("state"),
            t.get("late"),
            t.get("amount_minor"),
            t.get("debit_account"),
            t.get("credit_account"),
        );
        let mine = steps.remove(&id).unwrap_or_default();
        // Each step: the amount from one account to another.
        for (step, legs) in &mine {
            let mut deltas: Vec<i64> = legs.iter().map(|(_, d)| *d).collect();
            deltas.sort_unstable();
            assert_eq!(
                deltas,
                [-amount, amount],
                "{what}: model: {id} step {step} moves {legs:?}"
            );
        }
        let leg = |step: &str, sign: i64| -> String {
            mine[step]
                .iter()
                .find(|(_, d)| d.signum() == sign)
                .unwrap()
                .0
                .clone()
        };
        let names: Vec<&str> = mine.keys().map(String::as_str).collect();
        let re_debit = mine.contains_key("re_debit");
        let expected: &[&str] = match (kind.as_str(), state.as_str()) {
            ("external_credit", "posted") => &["credit_external"],
            ("external_debit", "posted") => &["debit_external"],
            ("load", "pending") => &["open"],
            ("load", "posted") => &["open", "post"],
            ("load", "voided") if re_debit => &["open", "re_debit", "void"],
            ("load", "voided") => &["open", "void"],
            _ => panic!("{what}: model: transfer {id} is a {kind} {state}"),
        };
        assert_eq!(
            names, expected,
            "{what}: model: steps of {kind} {id} ({state})"
        );
        if kind == "load" {
            let suspense = leg("open", 1);
            assert!(
                leg("open", -1) == debit && suspense.starts_with("sys:loads_in_flight:"),
                "{what}: model: {id} opened from the wrong account"
            );
            if state == "posted" {
                assert!(leg("post", 1) == credit && leg("post", -1) == suspense);
            }
            if state == "voided" {
                assert!(
                    leg("void", 1) == debit && leg("void", -1) == suspense,
                    "{what}: model: {id} voided to the wrong account"
                );
            }
            if re_debit {
                let payer = leg("re_debit", -1);
                let late_ok = match late.as_deref() {
                    Some("customer") => payer == debit,
                    Some("receivable") => payer.starts_with("sys:receivable:"),
                    _ => false,
                };
                assert!(
                    late_ok && leg("re_debit", 1) == credit,
                    "{what}: model: {id} re-debited from {payer} (late {late:?})"
                );
            } else {
                assert!(
                    matches!(late.as_deref(), None | Some("closed")),
                    "{what}: model: {id} late {late:?} without a re-debit"
                );
            }
        }
        by_state.insert(id, (state, re_debit, amount, debit));
    }
    assert!(
        steps.is_empty(),
        "{what}: model: entries of unknown transfers {:?}",
        steps.keys().collect::<Vec<_>>()
    );

    for l in sqlx::query("SELECT id, state, amount_minor, account_id FROM loads")
        .fetch_all(db.pool())
        .await
        .unwrap()
    {
        let (id, state, amount, account): (String, String, i64, String) = (
            l.get("id"),
            l.get("state"),
            l.get("amount_minor"),
            l.get("account_id"),
        );
        let (t_state, re_debit, t_amount, debit) = &by_state[&id];
        assert!(
            *t_amount == amount && *debit == account,
            "{what}: model: load {id} is not its transfer"
        );
        let given = match (t_state.as_str(), *re_debit) {
            ("pending", _) => &["pending"][..],
            ("posted", _) => &["posted"][..],
            ("voided", true) => &["late_applied"][..],
            ("voided", false) => &["voided", "doubtful", "not_applied"][..],
            _ => &[][..],
        };
        assert!(
            given.contains(&state.as_str()),
            "{what}: model: load {id} is {state}, its transfer {t_state} (re-debit {re_debit})"
        );
    }
    balances
}

/// Every check of a run (see the module).
async fn check(rig: &Rig, h: &History, credited: i64, purses: i64, what: &str) -> Money {
    let st = rig.station();
    let t = Instant::now();
    let verified = st.ok("alice", &["ledger", "verify"]);
    assert!(
        verified["ok"] == true && verified["violations"] == json!([]),
        "{what}: ledger verify: {verified}"
    );
    let ledger = t.elapsed();
    let audit = st.ok("admin", &["audit", "verify"]);
    assert!(audit["ok"] == true, "{what}: audit verify: {audit}");
    eprintln!(
        "{what}: ledger verify {ledger:.1?}, audit verify {:.1?} ({} records)",
        t.elapsed() - ledger,
        audit["records"]
    );

    // Loads: the history against the rows.
    let rows = sqlx::query("SELECT id, request, permit, permit_sig, state, report FROM loads")
        .fetch_all(rig.db.pool())
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
        let applied = h.applied.get(&id).copied().unwrap_or(false);
        let paid = state == "posted" || state == "late_applied";
        assert_eq!(
            paid, applied,
            "{what}: load {id} is {state}, applied: {applied}"
        );
        let report: Option<Vec<u8>> = r.get("report");
        loads.insert(
            id,
            (
                r.get::<Vec<u8>, _>("request"),
                r.get::<Vec<u8>, _>("permit"),
                r.get::<Vec<u8>, _>("permit_sig"),
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
            "{what}: a refused load request made a load"
        );
    }
    for (id, bytes) in &h.failed_reports {
        assert!(
            loads.get(id).is_none_or(|l| l.4.as_ref() != Some(bytes)),
            "{what}: a refused report decided {id}"
        );
    }

    // The journal through the model; money neither lost nor created.
    let balances = replay(&rig.db, what).await;
    let sum = |a: &str| balances.get(a).copied().unwrap_or_default();
    let money = Money {
        account: sum(ACCOUNT),
        float: sum("sys:float:CNY"),
        receivable: sum("sys:receivable:CNY"),
    };
    let in_flight = sum("sys:loads_in_flight:CNY");
    assert_eq!(
        in_flight, 0,
        "{what}: money in flight after every load ended"
    );
    assert_eq!(
        money.account + money.float + money.receivable,
        credited,
        "{what}: money lost (account {}, float {}, receivable {})",
        money.account,
        money.float,
        money.receivable
    );
    assert_eq!(
        purses, money.float,
        "{what}: money created: purses {purses}"
    );

    check_confirmations(rig, h, what).await;
    check_credentials(&rig.db, what).await;
    assert!(
        h.bad_macs.is_empty(),
        "{what}: MACs not valid: {:?}",
        h.bad_macs
    );
    // A refusal of a well-formed request, every earlier attempt answered,
    // other than a suspended device's: one the server should not make.
    assert!(h.refusals.is_empty(), "{what}: refused: {:?}", h.refusals);
    money
}

/// The confirmations and the outbox against the receiver and the history.
async fn check_confirmations(rig: &Rig, h: &History, what: &str) {
    let seen = &rig.receiver.seen;
    assert_eq!(
        seen.bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{what}: bad webhook signatures"
    );
    let ids: BTreeSet<String> = seen.ids().into_iter().collect();
    let bodies = seen.bodies();
    let rows = sqlx::query("SELECT message_id, topic, subject_id, state FROM outbox")
        .fetch_all(rig.db.pool())
        .await
        .unwrap();
    let mut messages = BTreeSet::new();
    let mut per_step: BTreeMap<(String, String), u32> = BTreeMap::new();
    for r in &rows {
        let (id, topic, subject, state): (String, String, String, String) = (
            r.get("message_id"),
            r.get("topic"),
            r.get("subject_id"),
            r.get("state"),
        );
        assert_eq!(state, "sent", "{what}: message {id}");
        assert!(ids.contains(&id), "{what}: message {id} never received");
        *per_step.entry((subject, topic)).or_default() += 1;
        messages.insert(id);
    }
    assert!(
        ids.is_subset(&messages),
        "{what}: a received id is no message"
    );
    assert!(
        per_step.values().all(|n| *n == 1),
        "{what}: two messages for one step: {per_step:?}"
    );
    let mut code_ids: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut execution_ids: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (id, body) in &bodies {
        let v: Value = serde_json::from_slice(body).unwrap();
        if let Some(c) = v["confirmation_id"].as_str() {
            execution_ids.entry(c.to_owned()).or_default().insert(id);
        } else if let Some(text) = v["text"].as_str() {
            code_ids.entry(text.to_owned()).or_default().insert(id);
        }
    }
    for (m, ids) in code_ids.iter().chain(&execution_ids) {
        assert_eq!(ids.len(), 1, "{what}: {m:?} arrived under {ids:?}");
    }
    let rows = sqlx::query("SELECT id, state, delivery_id, execution_id FROM confirmations")
        .fetch_all(rig.db.pool())
        .await
        .unwrap();
    let mut executed = BTreeSet::new();
    for r in &rows {
        let (id, state, delivery): (String, String, String) =
            (r.get("id"), r.get("state"), r.get("delivery_id"));
        assert!(
            ids.contains(&delivery),
            "{what}: {id}: code never delivered"
        );
        if state == "executed" {
            let execution: String = r.get::<Option<String>, _>("execution_id").unwrap();
            let got = execution_ids.get(&id).cloned().unwrap_or_default();
            assert_eq!(
                got,
                BTreeSet::from([execution.as_str()]),
                "{what}: {id} executed under {got:?}"
            );
            executed.insert(id);
        }
    }
    assert!(
        h.confirmed.is_subset(&executed),
        "{what}: confirmed but not executed: {:?}",
        h.confirmed.difference(&executed).collect::<Vec<_>>()
    );
    assert!(
        executed.is_subset(&h.confirm_sent),
        "{what}: executed, never confirmed: {:?}",
        executed.difference(&h.confirm_sent).collect::<Vec<_>>()
    );
    assert!(
        h.refused_confirms.is_disjoint(&executed),
        "{what}: a refused confirm executed: {:?}",
        h.refused_confirms
            .intersection(&executed)
            .collect::<Vec<_>>()
    );
    let handed: BTreeSet<String> = execution_ids.keys().cloned().collect();
    assert_eq!(handed, executed, "{what}: executions of unexecuted ones");
}

/// No credential locked with a valid certificate; working-key versions.
async fn check_credentials(db: &Database, what: &str) {
    let valid_locked: Vec<String> = sqlx::query(
        "SELECT o.device_id FROM online_credentials o \
         JOIN certificates c ON c.device_id = o.device_id AND c.profile = 'device' \
         WHERE o.locked_at_ms IS NOT NULL AND c.status = 'valid'",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("device_id"))
    .collect();
    assert!(
        valid_locked.is_empty(),
        "{what}: locked with a valid certificate: {valid_locked:?}"
    );
    let bad: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT device_id, \
           SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END) AS active, \
           SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending \
         FROM working_key_versions GROUP BY issuer_id, device_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("device_id"), r.get("active"), r.get("pending")))
    .filter(|(_, a, p)| *a > 1 || *p > 1)
    .collect();
    assert!(bad.is_empty(), "{what}: working-key versions: {bad:?}");
}

/// A spare device answers its logins wrongly at either replica until its
/// credential is locked; its id. Faults strike meanwhile: an answer may be
/// lost, a replica gone, the database away.
async fn lock_out(addrs: Addrs, root: String, db: Database, mut d: Device, seed: u64) -> String {
    let id = d.dev.id.to_string();
    let mut rng = StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + SETTLE;
    while !is_locked(&db, &id).await {
        assert!(
            Instant::now() < deadline,
            "{id}: not locked after {SETTLE:?}"
        );
        let at = addr(&addrs, rng.gen_range(0..2));
        if let Ok(t) = Terminal::new(&format!("https://{at}"), &root, &d.chain, &d.dev) {
            let wrong = LoginOptions {
                wrong_response: true,
            };
            let _ =
                tokio::time::timeout(CALL, terminal::login(&t, &mut d.dev, ISSUER, wrong)).await;
        }
    }
    id
}

/// Whether `device`'s credential is locked (false while the database is
/// away).
async fn is_locked(db: &Database, device: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM online_credentials WHERE device_id = $1 AND locked_at_ms IS NOT NULL",
    )
    .bind(device)
    .fetch_one(db.pool())
    .await
    .is_ok_and(|n| n > 0)
}

/// Every certificate revoked in the run is refused by both replicas
/// (within [`SETTLE`]: a replica learns of another's revocation by its
/// poll), while alice's is still served there.
async fn check_revocations(rig: &mut Rig, ctx: &Ctx, what: &str) {
    let deadline = Instant::now() + SETTLE;
    for name in std::mem::take(&mut rig.revoked) {
        for replica in 0..2 {
            loop {
                let at = admin_addr(&ctx.addrs, replica);
                let (spare, alice) = (
                    whoami(ctx, &at, &name).await,
                    whoami(ctx, &at, "alice").await,
                );
                if spare != "200" && alice == "200" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: replica {replica} still serves revoked {name} ({spare}; alice {alice})"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The HTTP status of `GET /admin/v1/whoami` on `admin` as operator
/// `name`, `000` when the TLS handshake is refused.
async fn whoami(ctx: &Ctx, admin: &str, name: &str) -> String {
    let dir = ctx.files[1].parent().unwrap().to_owned();
    let ca = ctx.files[0].clone();
    let url = format!("https://{admin}/admin/v1/whoami");
    let name = name.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(ca)
            .arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")))
            .arg(url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Whether this run is the PostgreSQL pass (see the module).
fn postgres_pass() -> bool {
    std::env::var(keyward_tests::db::TEST_DATABASE_URL_ENV).is_ok_and(|u| !u.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn seeded_runs_on_two_replicas_with_crashes_restarts_and_a_cut_keep_every_invariant() {
    if !postgres_pass() {
        eprintln!(
            "SKIPPED: PostgreSQL only (its own cluster); runs in the PostgreSQL pass \
             (KEYWARD_TEST_DATABASE_URL set)"
        );
        return;
    }
    let seeds = env_u64("KEYWARD_REPLICA_SEEDS").unwrap_or(SEEDS);
    let first = env_u64("KEYWARD_REPLICA_SEED").unwrap_or_else(|| rand::random::<u64>() >> 1);
    eprintln!(
        "replica runs: {seeds} seeds from {first} (replay: KEYWARD_REPLICA_SEED={first} \
         KEYWARD_REPLICA_SEEDS={seeds}; one seed S: KEYWARD_REPLICA_SEED=S KEYWARD_REPLICA_SEEDS=1)"
    );
    let started = Instant::now();
    let Some((mut rig, mut devices)) = bank().await else {
        return;
    };
    let setup = started.elapsed();
    let ids: Vec<String> = (0..DEVICES).map(device_id).collect();
    let ctx = Ctx {
        addrs: rig.addrs.clone(),
        root: rig.root.clone(),
        db: rig.db.clone(),
        seen: rig.receiver.seen.clone(),
        files: [
            rig.s.ca_pem(),
            rig.s.dir.path().join("alice.pem"),
            rig.s.dir.path().join("alice.key"),
        ],
        tmp: rig.s.dir.path().to_owned(),
    };
    let mut h = History::default();
    let mut credited = OPENING;
    let mut slowest = Duration::ZERO;
    let mut locked_out = 0;
    let runs = Instant::now();
    for seed in first..first + seeds {
        let what = format!("seed {seed} (KEYWARD_REPLICA_SEED={seed} KEYWARD_REPLICA_SEEDS=1)");
        let run_started = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut set = tokio::task::JoinSet::new();
        for d in devices.drain(..) {
            let ops = rng.gen_range(3..=7);
            set.spawn(drive(ctx.clone(), d, rng.r#gen(), ops));
        }
        // One to three faults, the first early (a run's work takes a
        // second or two).
        let mut left = rng.gen_range(1..=3);
        let mut pause = Duration::from_millis(rng.gen_range(0..300));
        while !set.is_empty() {
            tokio::select! {
                done = set.join_next() => {
                    let (d, seen) = done.unwrap().unwrap();
                    devices.push(d);
                    h.merge(seen);
                }
                () = tokio::time::sleep(pause), if left > 0 => {
                    left -= 1;
                    let f = match rng.gen_range(0..16) {
                        0..=2 => Fault::KillA,
                        3..=5 => Fault::KillB,
                        6 => Fault::PgFast,
                        7 => Fault::PgImmediate,
                        8..=10 => Fault::CutB,
                        11 | 12 => Fault::Rotate,
                        13 => Fault::Suspend,
                        14 => Fault::Revoke,
                        _ => Fault::Lockout,
                    };
                    let down = Duration::from_millis(rng.gen_range(0..800));
                    let pick = rng.gen_range(0..DEVICES);
                    rig.inject(f, down, &ids, pick).await;
                    pause = Duration::from_millis(rng.gen_range(100..800));
                }
            }
        }
        devices.sort_by(|x, y| x.purse.device.cmp(&y.purse.device));
        // Each lockout ends locked (asserted in it); `check_credentials`
        // then finds no locked credential with a valid certificate.
        while let Some(done) = rig.lockouts.join_next().await {
            done.unwrap();
            locked_out += 1;
        }
        // Healed (every fault heals itself); the sweeper ends what is
        // pending, each purse's next contact settles what it proves, the
        // outbox drains.
        until_none(
            &rig.db,
            "SELECT COUNT(*) FROM loads WHERE state = 'pending'",
            &what,
        )
        .await;
        for d in &mut devices {
            let at = rng.gen_range(0..2);
            next_contact(&ctx, d, &mut h, at, &what).await;
        }
        until_none(
            &rig.db,
            "SELECT COUNT(*) FROM outbox WHERE state <> 'sent'",
            &what,
        )
        .await;
        let purses = devices
            .iter()
            .map(|d| i64::try_from(d.purse.balance).unwrap())
            .sum();
        let money = check(&rig, &h, credited, purses, &what).await;
        check_revocations(&mut rig, &ctx, &what).await;
        let took = run_started.elapsed();
        slowest = slowest.max(took);
        eprintln!("{what}: whole after {took:.1?}");
        // Money for the next runs: the long form drains the account.
        if money.account < OPENING / 2 {
            credit(&rig.station(), OPENING / 2, "top-up");
            credited += OPENING / 2;
        }
    }
    let per = runs.elapsed() / u32::try_from(seeds.max(1)).unwrap();
    eprintln!(
        "replica runs: {seeds} seeds from {first} in {:.0?} (setup {setup:.1?}, {per:.1?} a seed, \
         slowest {slowest:.1?}); faults {:?}; answers ok {}, failed {}, unknown {} ({:?}); \
         {} loads permitted, {} confirmations executed as confirmed, {locked_out} devices \
         locked out; refusals {:?} (expected: {:?}); violations 0",
        runs.elapsed(),
        rig.faults,
        h.total(Class::Ok),
        h.total(Class::Failed),
        h.total(Class::Unknown),
        h.kinds,
        h.applied.len(),
        h.confirmed.len(),
        h.refusals,
        h.codes,
    );
}
