//! Named fault points: places in a durable or external step where a test
//! can make the server crash, to show that a restart finishes what the
//! crash interrupted (docs/protocol.md §12.5).
//!
//! [`fault_point!`](crate::fault_point) marks a point. It compiles to
//! nothing unless the crate is built with the cargo feature `faults`, which
//! only the test command turns on (`ops/test.sh`): a production build has no
//! point to trigger, and ignores `KEYWARD_FAULTS` with a warning.
//!
//! With the feature, `keyward serve` arms points from [`ENV`] at start:
//! `KEYWARD_FAULTS=name=kill@3,other=panic`: `kill` sends SIGKILL to the
//! own process (no destructor, no flush: a power cut as far as the
//! database and the receivers can tell), `panic` panics the task that hit
//! it; `@N` fires at the Nth hit of the point (the first without it). An
//! unknown name or action stops the start.
//!
//! Every point is listed once in [`POINTS`], so a sweep can iterate them; a
//! test keeps the list equal to the names the code uses.

use std::fmt;

/// The environment variable naming the points to arm.
pub const ENV: &str = "KEYWARD_FAULTS";

/// Every fault point: a confirmation's in the order it meets them, then
/// the load's, provisioning's, the login's and the trail's.
pub const POINTS: &[&str] = &[
    // The code was drawn and its MAC made; nothing is written yet.
    "confirmation.submit.code_made",
    // The confirmation, its code message and audit record committed.
    "confirmation.submit.committed",
    // Just before the submit's answer goes back.
    "confirmation.submit.answered",
    // The drain leased messages (attempt counted), nothing sent yet.
    "outbox.claimed",
    // The receiver answered 2xx; the message is not marked sent yet.
    "outbox.send.acknowledged",
    // The message is marked sent.
    "outbox.send.marked",
    // Signature, bytes and code checked; nothing is written yet.
    "confirmation.confirm.verified",
    // Executed and its executor message committed.
    "confirmation.confirm.committed",
    // Just before the confirm's answer goes back.
    "confirmation.confirm.answered",
    // The executor answered 2xx for an execution; not marked sent yet.
    "confirmation.executor.sent",
    // A load request's signature verified and its bytes decoded.
    "load.request.verified",
    // The permit signed in the HSM; nothing is written yet.
    "load.permit.signed",
    // The debit (pending transfer), load row and permit committed.
    "load.debit.committed",
    // Just before the permit goes back to the device.
    "load.permit.answered",
    // A report's signature verified; nothing is written yet.
    "load.report.verified",
    // A load's post, void or settlement committed.
    "load.settle.committed",
    // The sweeper voided an overdue load (committed).
    "load.sweep.voided",
    // A ledger checkpoint signed in the HSM; the seal is not written yet.
    "ledger.seal.signed",
    // Entries sealed and the checkpoint committed.
    "ledger.seal.committed",
    // An import's rows reserved under its lease; no certificate issued yet.
    "provisioning.import.reserved",
    // Every row's certificate issued; the batch is not complete yet.
    "provisioning.import.certified",
    // The batch complete and its decision audited; the answer not sent.
    "provisioning.import.committed",
    // An init package recorded as pending and audited; not answered yet.
    "provisioning.init.committed",
    // A login's challenge sealed (and any key offer made); not answered.
    "login.start.answered",
    // New working keys offered (a pending version stored).
    "rotation.offer.made",
    // A login's session committed; the token not answered yet.
    "login.finish.committed",
    // A key confirmation applied and its session committed.
    "rotation.confirm.committed",
    // A lockout committed (credential locked, serial named, audit staged);
    // the certificate is not revoked yet.
    "login.lockout.committed",
    // The lockout's certificates revoked; the CRL is not re-signed yet.
    "login.lockout.revoked",
    // The current CRL signed (when due) and stored; the TLS listeners do
    // not check it yet.
    "crl.published",
    // A bulk MAC batch's audit record written; the summary not answered.
    "bulk.batch.audited",
    // A secure channel (and its ticket and record) committed, full or
    // resumed; the ServerFinished not answered.
    "channel.open.committed",
    // A carried record claimed (both sequences moved); its request not
    // run, its answer not sealed.
    "channel.record.claimed",
    // The card's key update committed; not acknowledged.
    "channel.rekey.committed",
    // Audit records chained and committed; the head not noted yet.
    "audit.append.committed",
    // Staged audit records chained and committed.
    "audit.staged.flushed",
    // The audit checkpoint written to the HSM token.
    "audit.checkpoint.written",
];

/// The crash tests that sweep the points, each with the prefixes of the
/// points it covers; every point falls to exactly one (a test checks).
pub const SWEEPS: &[(&str, &[&str])] = &[
    ("server_crash", &["confirmation.", "outbox."]),
    ("server_load_crash", &["load.", "ledger."]),
    (
        "server_fault_sweep",
        &[
            "provisioning.",
            "login.",
            "rotation.",
            "crl.",
            "bulk.",
            "channel.",
            "audit.",
        ],
    ),
];

/// The points the sweep `test` covers, in [`POINTS`] order.
pub fn swept_by(test: &str) -> Vec<&'static str> {
    let prefixes = SWEEPS
        .iter()
        .find(|(t, _)| *t == test)
        .map_or(&[][..], |(_, p)| *p);
    POINTS
        .iter()
        .copied()
        .filter(|p| prefixes.iter().any(|pre| p.starts_with(pre)))
        .collect()
}

/// Whether this build has fault points (the cargo feature `faults`).
pub const COMPILED_IN: bool = cfg!(feature = "faults");

/// Marks a fault point: with the feature `faults`, the point named (one of
/// [`POINTS`](crate::fault::POINTS)) fires here if armed; without it,
/// nothing.
#[macro_export]
macro_rules! fault_point {
    ($name:literal) => {{
        #[cfg(feature = "faults")]
        $crate::fault::hit($name);
    }};
}

/// What an armed point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL of the own process.
    Kill,
    /// A panic of the task that hit the point.
    Panic,
}

/// One armed point: fires at its `at`th hit (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub point: &'static str,
    pub action: Action,
    pub at: u64,
}

/// A `KEYWARD_FAULTS` value that cannot be armed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{ENV}: `{0}` is not name=kill|panic[@N]")]
    Syntax(String),
    #[error("{ENV}: no fault point is named `{0}` (see keyward_server::fault::POINTS)")]
    UnknownPoint(String),
}

/// Parses `name=kill@3,other=panic` (whitespace around items ignored).
pub fn parse(spec: &str) -> Result<Vec<Armed>, SpecError> {
    spec.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let syntax = || SpecError::Syntax(item.to_owned());
            let (name, rest) = item.split_once('=').ok_or_else(syntax)?;
            let point = POINTS
                .iter()
                .find(|p| **p == name.trim())
                .ok_or_else(|| SpecError::UnknownPoint(name.trim().to_owned()))?;
            let (action, at) = match rest.split_once('@') {
                Some((a, n)) => (
                    a,
                    n.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(syntax)?,
                ),
                None => (rest, 1),
            };
            let action = match action {
                "kill" => Action::Kill,
                "panic" => Action::Panic,
                _ => return Err(syntax()),
            };
            Ok(Armed { point, action, at })
        })
        .collect()
}

impl fmt::Display for Armed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Kill => "kill",
            Action::Panic => "panic",
        };
        write!(f, "{}={action}@{}", self.point, self.at)
    }
}

/// Arms the points [`ENV`] names, once, at start. Without the feature a
/// set variable is only warned about.
pub fn arm_from_env() -> Result<(), SpecError> {
    let Ok(spec) = std::env::var(ENV) else {
        return Ok(());
    };
    if !COMPILED_IN {
        tracing::warn!("{ENV} ignored: this build has no fault points (cargo feature `faults`)");
        return Ok(());
    }
    let armed = parse(&spec)?;
    if armed.is_empty() {
        return Ok(());
    }
    let shown = armed.iter().map(Armed::to_string).collect::<Vec<_>>();
    tracing::warn!(armed = %shown.join(","), "fault points armed: this server will crash on purpose");
    #[cfg(feature = "faults")]
    imp::arm(armed);
    Ok(())
}

#[cfg(feature = "faults")]
pub use imp::hit;

/// HSM faults on signal, for the HSM fault test: SIGUSR2 closes every HSM
/// session of the process, SIGUSR1 logs it out of the token (what an HSM
/// restart or an administrator at the HSM does). Only with the feature;
/// `keyward serve` runs it beside the listeners.
#[cfg(feature = "faults")]
pub async fn hsm_faults_on_signal(kms: keyward_kms::Kms) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::warn!("HSM fault signals not available");
        return;
    };
    loop {
        let logout = tokio::select! {
            _ = usr1.recv() => true,
            _ = usr2.recv() => false,
        };
        let what = if logout {
            "log out"
        } else {
            "close every session"
        };
        eprintln!("keyward: HSM fault: {what}");
        if let Err(e) = kms.drop_hsm_sessions(logout).await {
            eprintln!("keyward: HSM fault {what} failed: {e}");
        }
    }
}

#[cfg(feature = "faults")]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{Action, Armed, POINTS};

    /// The armed points with their hit counters.
    static ARMED: OnceLock<Vec<(Armed, AtomicU64)>> = OnceLock::new();

    pub(super) fn arm(armed: Vec<Armed>) {
        let _ = ARMED.set(armed.into_iter().map(|a| (a, AtomicU64::new(0))).collect());
        // Provisioning's points (its own crate) call back here.
        let _ = keyward_device_provisioning::fault::HOOK.set(hit);
    }

    /// A point was reached: fires it if armed and this is its hit.
    pub fn hit(name: &'static str) {
        debug_assert!(
            POINTS.contains(&name),
            "fault point {name} is not in POINTS"
        );
        let Some(armed) = ARMED.get() else {
            return;
        };
        for (a, hits) in armed.iter().filter(|(a, _)| a.point == name) {
            if hits.fetch_add(1, Ordering::SeqCst) + 1 != a.at {
                continue;
            }
            eprintln!("keyward: fault point {a} fires");
            match a.action {
                Action::Kill => {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                    // SIGKILL is not delivered synchronously everywhere:
                    // nothing after the point may run meanwhile.
                    loop {
                        std::thread::park();
                    }
                }
                #[allow(clippy::panic)]
                Action::Panic => panic!("fault point {name} fired"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_unknown_points_are_refused() {
        assert_eq!(
            parse(" outbox.claimed=kill@3 , confirmation.confirm.verified=panic,").unwrap(),
            vec![
                Armed {
                    point: "outbox.claimed",
                    action: Action::Kill,
                    at: 3
                },
                Armed {
                    point: "confirmation.confirm.verified",
                    action: Action::Panic,
                    at: 1
                },
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(matches!(
            parse("outbox.claimd=kill"),
            Err(SpecError::UnknownPoint(_))
        ));
        for bad in [
            "outbox.claimed",
            "outbox.claimed=stop",
            "outbox.claimed=kill@0",
            "outbox.claimed=kill@x",
        ] {
            assert!(matches!(parse(bad), Err(SpecError::Syntax(_))), "{bad}");
        }
    }

    /// The list a sweep iterates is exactly the set of points in the code.
    #[test]
    fn points_are_the_names_the_code_uses() {
        fn scan(dir: &std::path::Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{e}")) {
                let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
                if path.is_dir() {
                    scan(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("fault.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
                    let marker = concat!("fault_point", "!(\"");
                    for (at, _) in text.match_indices(marker) {
                        let rest = &text[at + marker.len()..];
                        let end = rest.find('"').unwrap_or(0);
                        found.push(rest[..end].to_owned());
                    }
                }
            }
        }
        let mut found = Vec::new();
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        scan(&manifest.join("src"), &mut found);
        scan(&manifest.join("../device-provisioning/src"), &mut found);
        let mut listed: Vec<String> = POINTS.iter().map(|p| (*p).to_owned()).collect();
        listed.sort();
        let mut unique = found.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            found.len(),
            "a point is used twice: {found:?}"
        );
        assert_eq!(unique, listed);
    }

    /// Every point is swept by exactly one crash test, and each of those
    /// tests exists and selects its points by [`swept_by`] (directly or
    /// through the tests' `sweep_points`).
    #[test]
    fn every_point_is_covered_by_one_sweep() {
        for p in POINTS {
            let by: Vec<&str> = SWEEPS
                .iter()
                .filter(|(t, _)| swept_by(t).contains(p))
                .map(|(t, _)| *t)
                .collect();
            assert_eq!(by.len(), 1, "{p} is swept by {by:?}");
        }
        let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        for (test, _) in SWEEPS {
            let text = std::fs::read_to_string(tests.join(format!("{test}.rs")))
                .unwrap_or_else(|e| panic!("{test}: {e}"));
            assert!(
                text.contains(&format!("swept_by(\"{test}\")"))
                    || text.contains(&format!("sweep_points(\"{test}\"")),
                "{test} does not select its points with swept_by"
            );
        }
    }

    /// A build without the feature (every production build) has no point:
    /// the macro expands to nothing and `KEYWARD_FAULTS` arms nothing.
    #[cfg(not(feature = "faults"))]
    #[test]
    fn without_the_feature_no_point_is_compiled_in() {
        const { assert!(!COMPILED_IN) };
        crate::fault_point!("confirmation.submit.committed");
        assert!(parse("outbox.claimed=kill").is_ok());
        // Arming is refused silently: the point above stays inert.
        assert_eq!(arm_from_env(), Ok(()));
    }

    #[cfg(feature = "faults")]
    #[test]
    fn with_the_feature_points_are_compiled_in() {
        const { assert!(COMPILED_IN) };
        // Not armed: passing a point does nothing.
        crate::fault_point!("confirmation.submit.committed");
    }
}
