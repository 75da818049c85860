//! What the benches that drive a real `keyward serve` share: the bench
//! binary re-executed as the `keyward` CLI, the spawned server, environment
//! knobs and per-process CPU and memory readings from `/proc`.
//!
//! Each bench compiles this module on its own (`mod common;`), so an item
//! one of them does not use is not dead code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fleet;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use keyward_tests::softhsm::TestToken;
use serde_json::Value;

/// Set on the bench binary re-executed as the server.
const AS_KEYWARD_ENV: &str = "KW_BENCH_AS_KEYWARD";

/// The bench binary re-executed as the `keyward` CLI (`… --config FILE
/// serve`): runs it and gives its exit code; `None` in the bench itself.
/// The first thing a bench's `main` calls.
pub fn keyward_if_reexecuted() -> Option<ExitCode> {
    std::env::var_os(AS_KEYWARD_ENV).map(|_| keyward_server::cli::main())
}

/// Names the backend a child process of [`each_backend`] runs.
const BACKEND_ENV: &str = "KW_BENCH_BACKEND";

/// Runs `one` for each backend asked for (`KW_BENCH_BACKENDS`, else SQLite,
/// and PostgreSQL too when `KEYWARD_BENCH_DATABASE_URL` is set), each in a
/// child process of this binary: SoftHSM sees only the tokens that existed
/// when the process initialised the module. `one` says whether its checks
/// held.
pub fn each_backend(one: fn(&str) -> bool) -> ExitCode {
    if let Ok(backend) = std::env::var(BACKEND_ENV) {
        return if one(&backend) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let backends = match std::env::var("KW_BENCH_BACKENDS") {
        Ok(b) => vec![b],
        Err(_) if std::env::var("KEYWARD_BENCH_DATABASE_URL").is_ok() => {
            vec!["sqlite".to_owned(), "postgres".to_owned()]
        }
        Err(_) => vec!["sqlite".to_owned()],
    };
    let exe = std::env::current_exe().unwrap();
    let mut ok = true;
    for b in backends {
        ok &= Command::new(&exe)
            .env(BACKEND_ENV, &b)
            .status()
            .unwrap()
            .success();
        println!();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The database of `backend`: a temporary SQLite file, or an own schema in
/// the PostgreSQL database `KEYWARD_BENCH_DATABASE_URL` names.
pub fn backend_db(backend: &str, rt: &tokio::runtime::Runtime) -> keyward_tests::db::TestDb {
    match backend {
        "sqlite" => keyward_tests::db::sqlite().unwrap(),
        "postgres" => {
            let url = std::env::var("KEYWARD_BENCH_DATABASE_URL")
                .unwrap_or_else(|_| panic!("KEYWARD_BENCH_DATABASE_URL is not set"));
            rt.block_on(keyward_tests::db::postgres(url.trim()))
                .unwrap()
        }
        other => panic!("unknown backend {other:?} (sqlite or postgres)"),
    }
}

pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number")),
        Err(_) => default,
    }
}

/// A comma-separated list of numbers (`1000,100_000`).
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: a list of numbers"))
        })
        .collect()
}

/// A JSON string literal, which is also a valid TOML basic string.
pub fn toml_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The `[hsm]` line `KW_BENCH_BULK_NICE=N` asks for (the bulk HSM workers'
/// nice value, `hsm.bulk_nice`); empty when unset: the shipped default.
pub fn bulk_nice_line() -> String {
    std::env::var("KW_BENCH_BULK_NICE")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(String::new(), |n| format!("bulk_nice = {n}\n"))
}

/// A running `keyward serve`, stopped (SIGTERM, then SIGKILL after 20 s)
/// when dropped.
pub struct Spawned {
    pub child: Child,
    pub public: String,
    pub admin: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keyward --config CONFIG serve` (this binary re-executed, or
/// `KEYWARD_BIN`), its stderr to `log`, without the environment variables
/// `unset`; returns once it printed where it listens.
pub fn spawn_serve(config: &Path, log: &Path, unset: &[&str]) -> Spawned {
    let (exe, as_cli) = match std::env::var_os("KEYWARD_BIN") {
        Some(p) => (PathBuf::from(p), false),
        None => (std::env::current_exe().unwrap(), true),
    };
    let mut cmd = Command::new(exe);
    if as_cli {
        cmd.env(AS_KEYWARD_ENV, "1");
    }
    for name in unset {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .env_remove("RUST_LOG")
        .env("SOFTHSM2_CONF", TestToken::conf_path().unwrap())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        panic!(
            "serve did not start: {line:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    let addr = |which: &str| v["listening"][which].as_str().unwrap().to_owned();
    Spawned {
        child,
        public: addr("public"),
        admin: addr("admin"),
    }
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_secs(pid: impl std::fmt::Display) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / clock_ticks()
}

/// Resident memory of process `pid`, MiB.
pub fn rss_mib(pid: impl std::fmt::Display) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The kernel's clock ticks per second (`/proc` counts CPU time in them).
pub fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
