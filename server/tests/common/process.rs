//! A `keyward serve` under a fault sweep: the cases it is armed with, the
//! wait for its point to fire, and starting it again after it died. Shared
//! by the sweeps (server_fault_sweep, server_load_crash).

use std::time::{Duration, Instant};

use keyward_kms::db::Database;
use keyward_server::fault::swept_by;

use super::Server;

/// What the server logs when a point fires (server/src/fault.rs).
pub const FIRES: &str = "keyward: fault point";
/// How long any one step of a case may take, restarts included.
pub const STEP: Duration = Duration::from_secs(30);

/// The points `test` sweeps; only those the comma-separated list in the
/// environment variable `only` names, when it is set.
pub fn sweep_points(test: &str, only: &str) -> Vec<&'static str> {
    let only = std::env::var(only).ok();
    let points: Vec<&str> = swept_by(test)
        .into_iter()
        .filter(|p| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|o| o.trim() == *p))
        })
        .collect();
    assert!(!points.is_empty(), "no point of {test} selected");
    points
}

/// A sweep's cases: each point killed and panicked at each of its `hits`.
pub fn sweep_cases(points: &[&str], hits: impl Fn(&str) -> &'static [u64]) -> Vec<String> {
    points
        .iter()
        .flat_map(|p| {
            hits(p)
                .iter()
                .flat_map(move |at| ["kill", "panic"].map(|a| format!("{p}={a}@{at}")))
        })
        .collect()
}

/// How often the server's log says a point fired.
pub fn fired(s: &Server) -> usize {
    s.log().matches(FIRES).count()
}

/// Waits up to 3 s for case `spec`'s point to fire (a background one, a
/// job's or a timer's, may still be due) past the `before` firings logged
/// when the case began; fails the case if it never does.
pub async fn until_fired(s: &Server, before: usize, spec: &str) {
    let due = Instant::now() + Duration::from_secs(3);
    while fired(s) == before {
        assert!(
            Instant::now() < due,
            "case {spec}: the point never fired\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that died is started again, without faults; counts it.
pub fn revive(s: &mut Server, restarts: &mut u32) {
    if !s.running() {
        s.kill();
        *restarts += 1;
        s.start();
    }
}

/// After a request got no good answer: a server that is dying is given
/// 2 s to die; one that `answered` (a panic fails only its request) is not
/// waited for.
pub async fn let_die(s: &mut Server, answered: bool) {
    let died = Instant::now() + Duration::from_secs(2);
    while !answered && s.running() && Instant::now() < died {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The installation's database and CA root (PEM), for the checks a sweep
/// makes beside the server.
pub async fn db_and_root(s: &Server) -> (Database, String) {
    let db = Database::connect(&s.db.config).await.unwrap();
    let root = std::fs::read_to_string(s.ca_pem()).unwrap();
    (db, root)
}
