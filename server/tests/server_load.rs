//! The e-purse load end to end (docs/protocol.md §13): `kwctl` opens and
//! credits the customer's account, `kwsim` is the device, its purse on
//! disk, over real mutual TLS to `keyward serve`: a completed load, a
//! failure report reversed, a timeout reversed by the real sweeper, and a
//! lost report settled at the device's next login. The money on the purses
//! is the money that reached the float: none created, none lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::station::{ACCOUNT, D1, D2, Station};
use common::{Options, Server, sample, stdout_json};
use serde_json::Value;

/// A device of the station with its certificate chain on disk, as `kwsim`
/// takes it.
struct Terminal<'a> {
    st: &'a Station<'a>,
    id: &'static str,
    chain: PathBuf,
}

impl<'a> Terminal<'a> {
    fn new(st: &'a Station<'a>, id: &'static str) -> Self {
        let chain = st.s.dir.path().join(format!("{id}.pem"));
        std::fs::write(&chain, st.chain(id)).unwrap();
        Self { st, id, chain }
    }

    /// `kwsim CMD DEVICE --issuer bank-a --server … --ca … --cert … ARGS`.
    fn kwsim(&self, cmd: &str, args: &[&str]) -> (Output, Vec<Value>) {
        let server = format!("https://{}", self.st.s.public);
        let ca = self.st.s.ca_pem();
        let mut all = vec![cmd, self.id, "--issuer", "bank-a", "--server", &server];
        all.extend(["--ca", ca.to_str().unwrap()]);
        all.extend(["--cert", self.chain.to_str().unwrap()]);
        all.extend_from_slice(args);
        let out = self.st.kwsim(&all);
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (out, lines)
    }

    /// `kwsim load`, which must succeed: its lines.
    fn load(&self, amount: u64, args: &[&str]) -> Vec<Value> {
        let amount = amount.to_string();
        let mut all = vec!["--amount", &amount];
        all.extend_from_slice(args);
        let (out, lines) = self.kwsim("load", &all);
        assert!(out.status.success(), "{out:?}\n{}", self.st.s.log());
        lines
    }

    /// `kwsim login`, which must succeed: its lines.
    fn login(&self) -> Vec<Value> {
        let (out, lines) = self.kwsim("login", &[]);
        assert!(out.status.success(), "{out:?}\n{}", self.st.s.log());
        lines
    }

    /// The purse's balance, as `kwsim purse` shows it.
    fn wallet(&self) -> i64 {
        let out = self.st.kwsim(&["purse", self.id]);
        assert!(out.status.success(), "{out:?}");
        stdout_json(&out)["balance_minor"].as_i64().unwrap()
    }
}

/// The line of `step` (the last one).
fn step<'v>(lines: &'v [Value], name: &str) -> &'v Value {
    lines
        .iter()
        .rev()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:?}"))
}

fn balance(st: &Station<'_>, account: &str) -> i64 {
    st.ok("alice", &["account", "show", account])["balance_minor"]
        .as_i64()
        .unwrap()
}

fn load_state(st: &Station<'_>, id: &str) -> Value {
    st.ok("alice", &["load", "show", id])
}

/// Waits (up to 30 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_complete_fail_time_out_and_a_lost_report_is_settled_at_the_next_login() {
    let s = Server::started_with(Options {
        extra: "[load]\nreport_timeout_secs = 3\nsweep_interval_ms = 100\n".into(),
        ..Options::default()
    })
    .await;
    let st = Station::with_operators(&s);
    // Two devices of one customer, both loading from the one account.
    let customer = st.provision(&[("bank-a", "tdes")]);
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
    let credit = st.ok(
        "alice",
        &[
            "account",
            "credit",
            ACCOUNT,
            "--amount",
            "100000",
            "--reference",
            "opening deposit",
        ],
    );
    assert_eq!(credit["balance_after_minor"], 100_000, "{credit}");
    let (d1, d2) = (Terminal::new(&st, D1), Terminal::new(&st, D2));
    let first = ["--customer", &customer, "--account", ACCOUNT];

    // Completed: the account pays, the float receives, the purse holds it.
    let lines = d1.load(10_000, &first);
    assert_eq!(step(&lines, "login")["status"], 200, "{lines:?}");
    let permit = step(&lines, "permit");
    assert_eq!(permit["account_balance_after_minor"], 90_000, "{lines:?}");
    assert_eq!(step(&lines, "report")["state"], "posted", "{lines:?}");
    assert_eq!(step(&lines, "purse")["balance_minor"], 10_000);
    let posted = permit["load_id"].as_str().unwrap().to_owned();
    assert_eq!(balance(&st, ACCOUNT), 90_000);
    assert_eq!(balance(&st, "sys:float:CNY"), 10_000);
    assert_eq!(load_state(&st, &posted)["state"], "posted");

    // A failure report: reversed, the reason the device's.
    let lines = d1.load(5_000, &["--fail", "3"]);
    assert_eq!(step(&lines, "report")["state"], "voided", "{lines:?}");
    let failed = step(&lines, "permit")["load_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = load_state(&st, &failed);
    assert_eq!(
        (shown["reason"].as_str(), shown["device_reason"].as_i64()),
        (Some("failure"), Some(3)),
        "{shown}"
    );
    assert_eq!(balance(&st, ACCOUNT), 90_000);
    assert_eq!(d1.wallet(), 10_000);

    // D1 takes a permit and is never heard of again; D2 loads, but its
    // report is lost. The sweeper reverses both when their time is up.
    let lines = d1.load(7_000, &["--no-apply"]);
    let unapplied = step(&lines, "permit")["load_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(step(&lines, "report")["sent"], false);
    let mut lose = first.to_vec();
    lose.push("--lose-report");
    let lines = d2.load(20_000, &lose);
    let lost = step(&lines, "permit")["load_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(step(&lines, "report")["why"], "lost");
    assert_eq!(d2.wallet(), 20_000, "the purse did load");
    assert_eq!(balance(&st, ACCOUNT), 90_000 - 7_000 - 20_000);
    eventually("the sweeper", || {
        st.ok("alice", &["load", "doubtful"])["loads"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    for id in [&unapplied, &lost] {
        let shown = load_state(&st, id);
        assert_eq!(
            (shown["state"].as_str(), shown["reason"].as_str()),
            (Some("doubtful"), Some("timeout")),
            "{shown}"
        );
    }
    // Reversed: the money is back on the account while the purse holds
    // D2's 20_000 — until D2's next contact proves it.
    assert_eq!(balance(&st, ACCOUNT), 90_000);
    assert_eq!(balance(&st, "sys:loads_in_flight:CNY"), 0);
    st.ok("alice", &["ledger", "verify"]);
    eventually("the doubtful gauges", || {
        let metrics = s.metrics();
        sample(&metrics, "keyward_loads{state=\"doubtful\"}") == Some(2.0)
            && sample(&metrics, "keyward_loads_amount_minor{state=\"doubtful\"}") == Some(27_000.0)
    });

    // D2's next login: its purse's status shows the load applied, so it is
    // late_applied and debited again; D1's shows it was not: the reversal
    // stands.
    let lines = d2.login();
    let settled = &step(&lines, "status")["settled"];
    assert_eq!(settled[0]["load_id"], lost.as_str(), "{lines:?}");
    assert_eq!(settled[0]["state"], "late_applied", "{lines:?}");
    let lines = d1.login();
    let settled = &step(&lines, "status")["settled"];
    assert_eq!(settled[0]["load_id"], unapplied.as_str(), "{lines:?}");
    assert_eq!(settled[0]["state"], "not_applied", "{lines:?}");
    assert_eq!(
        st.ok("alice", &["load", "doubtful"])["loads"],
        serde_json::json!([])
    );

    // No money created or lost: what the purses hold is what reached the
    // float, and the account paid exactly that.
    let float = balance(&st, "sys:float:CNY");
    assert_eq!(float, 30_000);
    assert_eq!(d1.wallet() + d2.wallet(), float);
    assert_eq!(balance(&st, ACCOUNT), 100_000 - float);
    assert_eq!(balance(&st, "sys:loads_in_flight:CNY"), 0);
    let shown = load_state(&st, &lost);
    assert_eq!(shown["state"], "late_applied", "{shown}");
    assert_eq!(
        shown["entries"].as_array().unwrap().len(),
        6,
        "debit, reversal and re-debit: {shown}"
    );
    let verified = st.ok("alice", &["ledger", "verify"]);
    assert_eq!(verified["ok"], true, "{verified}");

    // The load series, as Prometheus scrapes them (the gauges refresh
    // every second). Settled states have no gauge: they only grow, and the
    // counters below count them.
    let gauges = [
        ("keyward_loads{state=\"doubtful\"}", 0.0),
        ("keyward_loads{state=\"pending\"}", 0.0),
        ("keyward_loads_amount_minor{state=\"doubtful\"}", 0.0),
        ("keyward_loads_amount_minor{state=\"pending\"}", 0.0),
    ];
    eventually("the load gauges", || {
        let metrics = s.metrics();
        gauges
            .iter()
            .all(|(series, n)| sample(&metrics, series) == Some(*n))
    });
    let metrics = s.metrics();
    assert_eq!(sample(&metrics, "keyward_loads{state=\"posted\"}"), None);
    for (series, n) in [
        ("keyward_loads_total{outcome=\"permitted\"}", 4.0),
        ("keyward_loads_total{outcome=\"posted\"}", 1.0),
        ("keyward_loads_total{outcome=\"voided\"}", 1.0),
        ("keyward_loads_total{outcome=\"doubtful\"}", 2.0),
        ("keyward_loads_total{outcome=\"late_applied\"}", 1.0),
        ("keyward_loads_total{outcome=\"not_applied\"}", 1.0),
    ] {
        assert_eq!(sample(&metrics, series), Some(n), "{series}\n{metrics}");
    }
    common::promtool_check(&metrics);
}
