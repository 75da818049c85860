//! HSM faults under load, end to end: the real `keyward serve` (built with
//! fault points) serves logins and transaction MACs from several devices
//! over mutual TLS while its HSM sessions are taken away — every session
//! closed (what an HSM restart or failover does), then the login ended
//! (an administrator at the HSM logging the application out). SoftHSM keeps
//! sessions per process, so no second process can do either to the
//! server's; the server does it to itself on a signal (SIGUSR2, SIGUSR1;
//! `keyward_server::fault::hsm_faults_on_signal`).
//!
//! Each time the server must heal without a restart: every device is served
//! again, every request in flight meanwhile got an answer (none hangs),
//! and an answer that failed is a retryable 503 (`hsm_unavailable`,
//! `hsm_busy`) at worst, never another error. It prints the time to heal
//! (from the fault to the last device served again) and the answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::station::{Station, device_id};
use common::{Options, Server};
use hyper::Method;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions, Terminal};
use serde_json::json;

const DEVICES: usize = 3;
const ISSUER: &str = "bank-a";
/// No answer within this is a hang.
const HANG: Duration = Duration::from_secs(10);
/// Not healed after this is a failure to heal: a liveness bound, far above
/// the measured time (tens of milliseconds), which the test prints; a timed
/// bound near it would only measure how loaded the CI machine is.
const HEAL_WITHIN: Duration = Duration::from_secs(30);

/// One answer, as the load classes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Ok,
    /// 503 with a retryable code.
    Retry(String),
    /// Anything else: `status code`.
    Bad(String),
    Hang,
}

/// What the load saw: each answer (of a login or a MAC) with its device
/// and when it came.
#[derive(Default)]
struct Log {
    answers: Vec<(usize, Instant, &'static str, Seen)>,
}

fn class(status: hyper::StatusCode, code: &str) -> Seen {
    if status.is_success() {
        Seen::Ok
    } else if status == 503 && matches!(code, "hsm_unavailable" | "hsm_busy") {
        Seen::Retry(code.to_owned())
    } else {
        Seen::Bad(format!("{} {code}", status.as_u16()))
    }
}

/// One device's load: a login, then transaction MACs over its session; a
/// new login after a few, or when the session is refused.
async fn drive(
    n: usize,
    mut dev: SimDevice,
    t: Terminal,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
) {
    let mut token: Option<(String, u32)> = None;
    let mut count = 0u32;
    while !stop.load(Ordering::SeqCst) {
        count += 1;
        let kind = if token.is_none() { "login" } else { "mac" };
        let seen = match &token {
            None => {
                let login = terminal::login(&t, &mut dev, ISSUER, LoginOptions::default());
                match tokio::time::timeout(HANG, login).await {
                    Err(_) => Seen::Hang,
                    Ok(Err(e)) => {
                        // The start refused: its status and code are in the
                        // text, before the body.
                        let text = e.to_string();
                        let head = text.split(" (").next().unwrap_or_default().to_owned();
                        if text.contains("503") && text.contains("hsm_") {
                            Seen::Retry(head)
                        } else {
                            Seen::Bad(head)
                        }
                    }
                    Ok(Ok(out)) => {
                        let seen = class(out.finish.status, out.finish.code());
                        if seen == Seen::Ok {
                            let v = &out.finish.body;
                            token = Some((
                                v["session_token"].as_str().unwrap().to_owned(),
                                v["key_version"].as_u64().unwrap() as u32,
                            ));
                        }
                        seen
                    }
                }
            }
            Some((tok, version)) => {
                let msg = format!("0200|6222020200112233|{count:012}");
                let mac = dev
                    .transaction_mac(ISSUER, "ISO9797-1-M3", 1, msg.as_bytes())
                    .unwrap();
                let body = json!({
                    "key_version": version, "algorithm": "ISO9797-1-M3", "padding": 1,
                    "message": B64.encode(&msg), "mac": B64.encode(&mac),
                });
                let call = t.call(Method::POST, "/v1/transactions", Some(&body), Some(tok));
                match tokio::time::timeout(HANG, call).await {
                    Err(_) => Seen::Hang,
                    Ok(Err(e)) => Seen::Bad(format!("no answer: {e}")),
                    Ok(Ok(r)) => {
                        if r.status.is_success() {
                            assert_eq!(r.body["result"], "valid", "{}", r.body);
                        }
                        if r.code().starts_with("session_") || count.is_multiple_of(4) {
                            token = None;
                        }
                        class(r.status, r.code())
                    }
                }
            }
        };
        log.lock()
            .unwrap()
            .answers
            .push((n, Instant::now(), kind, seen));
    }
}

/// Signals the server, then waits until every device was served after it;
/// the time that took.
async fn fault_and_heal(s: &Server, signal: &str, log: &Arc<Mutex<Log>>) -> Duration {
    // Every device is being served before the fault.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let at = Instant::now();
    let ok = std::process::Command::new("kill")
        .args([signal, &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    loop {
        // A device is served again once a login and a MAC of it succeeded.
        let served: Vec<usize> = {
            let l = log.lock().unwrap();
            let mut by: BTreeMap<usize, (bool, bool)> = BTreeMap::new();
            for (n, when, kind, seen) in &l.answers {
                if *when > at && *seen == Seen::Ok {
                    let e = by.entry(*n).or_default();
                    if *kind == "login" {
                        e.0 = true;
                    } else {
                        e.1 = true;
                    }
                }
            }
            by.into_iter()
                .filter(|(_, (login, mac))| *login && *mac)
                .map(|(n, _)| n)
                .collect()
        };
        if served.len() == DEVICES {
            return at.elapsed();
        }
        assert!(
            at.elapsed() < HEAL_WITHIN,
            "{signal}: not healed after {HEAL_WITHIN:?}: devices served again {served:?}\n\
             answers since the fault:\n{}\n{}",
            since(&log.lock().unwrap(), at),
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The answers after `at`, one line each: when, device, call, answer.
fn since(log: &Log, at: Instant) -> String {
    log.answers
        .iter()
        .filter(|(_, when, _, _)| *when > at)
        .map(|(n, when, kind, seen)| format!("  +{:?} device {n} {kind}: {seen:?}", *when - at))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_sessions_and_a_logout_heal_without_a_restart() {
    // Logins are part of the load: no per-minute cap on them here.
    let s = Server::started_with(Options {
        extra: "[online]\nlogin_starts_per_minute = 1000000\n".into(),
        ..Default::default()
    })
    .await;
    let st = Station::with_operators(&s);
    st.provision_devices(&[(ISSUER, "tdes")], DEVICES);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let mut load = tokio::task::JoinSet::new();
    for n in 0..DEVICES {
        let id = device_id(n);
        let dev = st.device(&id);
        let t = st.terminal(&s.public, &dev, &st.chain(&id));
        load.spawn(drive(n, dev, t, stop.clone(), log.clone()));
    }
    let mut heals = Vec::new();
    // Three rounds: a fault may land on any call in flight.
    let faults = [("-USR2", "every session closed"), ("-USR1", "logged out")];
    for (signal, what) in faults.iter().cycle().take(6).copied() {
        let took = fault_and_heal(&s, signal, &log).await;
        eprintln!("HSM fault ({what}): healed in {took:.1?}");
        heals.push((what, took));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = load.join_next().await {
        r.unwrap();
    }
    let fired = s.log().matches("keyward: HSM fault:").count();
    assert_eq!(fired, heals.len(), "{}", s.log());

    let l = log.lock().unwrap();
    let mut tally: BTreeMap<Seen, u32> = BTreeMap::new();
    for (_, _, kind, seen) in &l.answers {
        let seen = match seen {
            Seen::Ok => Seen::Ok,
            Seen::Retry(c) => Seen::Retry(format!("{kind} {c}")),
            Seen::Bad(c) => Seen::Bad(format!("{kind} {c}")),
            Seen::Hang => Seen::Hang,
        };
        *tally.entry(seen).or_default() += 1;
    }
    let worst = |what: &str| {
        heals
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, t)| *t)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "HSM faults: {} under load from {DEVICES} devices; time to heal (slowest of 3): \
         every session closed {:.1?}, logged out {:.1?}; answers {tally:?}",
        heals.len(),
        worst("every session closed"),
        worst("logged out"),
    );
    let bad: Vec<&Seen> = tally
        .keys()
        .filter(|s| matches!(s, Seen::Bad(_) | Seen::Hang))
        .collect();
    assert!(
        bad.is_empty(),
        "answers other than ok or a retryable 503: {tally:?}\n{}",
        s.log()
    );
}
