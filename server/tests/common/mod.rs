//! End-to-end harness: the real `keyward` binary on a fresh SoftHSM token and
//! test database, driven with `curl` and `openssl` like an operator would.
//!
//! Each test gets a temp dir with a config file (listeners on port 0; `serve`
//! prints the bound addresses as its first stdout line), runs `keyward init`,
//! and spawns `keyward serve`. Needs the Debian packages `curl`, `openssl`
//! and, for the metrics test, `prometheus` (`promtool`), besides `softhsm2`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod process;
pub mod replicas;
pub mod station;
pub mod tamper;

use keyward_tests::db::{TestDb, test_database};
use keyward_tests::softhsm::TestToken;

pub const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");
pub const KWCTL: &str = env!("CARGO_BIN_EXE_kwctl");

/// Fails the test with an install hint when a command-line tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: apt-get install {package} (ops/test.sh installs it)"
    );
}

/// A JSON string literal, which is also a valid TOML basic string.
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Extra `[server]` settings for one test.
#[derive(Debug, Clone)]
pub struct Options {
    pub crl_refresh_secs: u64,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    /// More `[server]` lines, verbatim.
    pub extra_server: String,
    /// More config after `[server]`, verbatim (other sections).
    pub extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            crl_refresh_secs: 1,
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 64,
            extra_server: String::new(),
            extra: String::new(),
        }
    }
}

/// One Keyward installation: token, database, config, data dir, process.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub token: TestToken,
    pub db: TestDb,
    pub config: PathBuf,
    pub data: PathBuf,
    child: Option<Child>,
    pub public: String,
    pub admin: String,
}

/// What a curl call returned.
#[derive(Debug)]
pub struct Reply {
    /// 0 when no HTTP response arrived (TLS refused).
    pub status: u16,
    pub body: String,
    /// curl's exit code.
    pub exit: i32,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Server {
    /// A configured but not yet initialised installation.
    pub async fn new() -> Self {
        Self::with_options(Options::default()).await
    }

    pub async fn with_options(opts: Options) -> Self {
        Self::with_database(opts, test_database().await.unwrap())
    }

    /// [`Server::with_options`] on the database `db`.
    pub fn with_database(opts: Options, db: TestDb) -> Self {
        require_tool("curl", "curl");
        require_tool("openssl", "openssl");
        let token = TestToken::create().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("keyward-e2e-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let hsm = token.hsm_config(2);
        let config = dir.path().join("keyward.toml");
        let text = format!(
            r#"data_dir = {data}

[hsm]
module = {module}
token_label = {label}
pin_file = {pin}
sessions = {sessions}
queue_depth = {queue}

[database]
url = {url}
max_connections = 4

[log]
level = "info,keyward=debug"

[server]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_names = ["localhost", "127.0.0.1"]
request_timeout_ms = 10000
max_body_bytes = {max_body}
max_concurrent_requests = {max_concurrent}
crl_refresh_secs = {crl_refresh}
{extra_server}
{extra}
"#,
            data = toml_str(&data.display().to_string()),
            module = toml_str(&hsm.module.display().to_string()),
            label = toml_str(&hsm.token_label),
            pin = toml_str(&hsm.pin_file.as_ref().unwrap().display().to_string()),
            sessions = hsm.sessions,
            queue = hsm.queue_depth,
            url = toml_str(&db.config.url),
            max_body = opts.max_body_bytes,
            crl_refresh = opts.crl_refresh_secs,
            max_concurrent = opts.max_concurrent_requests,
            extra_server = opts.extra_server,
            extra = opts.extra,
        );
        std::fs::write(&config, text).unwrap();
        Self {
            dir,
            token,
            db,
            config,
            data,
            child: None,
            public: String::new(),
            admin: String::new(),
        }
    }

    /// Runs `keyward --config … ARGS`.
    pub fn keyward(&self, args: &[&str]) -> Output {
        let out = Command::new(KEYWARD)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("SOFTHSM2_CONF", TestToken::conf_path().unwrap())
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "keyward {args:?} exited with {}:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// `keyward --json init`, which must succeed; its report.
    pub fn init(&self) -> serde_json::Value {
        let out = self.keyward(&["--json", "init"]);
        assert!(out.status.success(), "init failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `init` then `serve`, waiting until both listeners are bound.
    pub async fn started() -> Self {
        Self::started_with(Options::default()).await
    }

    pub async fn started_with(opts: Options) -> Self {
        let mut s = Self::with_options(opts).await;
        s.init();
        s.start();
        s
    }

    /// Spawns `keyward serve` and reads the listening line.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Server::start`] with more `serve` arguments.
    pub fn start_with(&mut self, args: &[&str]) {
        self.start_with_env(args, &[]);
    }

    /// [`Server::start`] with more `serve` arguments and environment
    /// variables (e.g. `KEYWARD_FAULTS`).
    pub fn start_with_env(&mut self, args: &[&str], env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let (child, public, admin) = self.spawn_serve("serve.log", args, env);
        self.child = Some(child);
        self.public = public;
        self.admin = admin;
    }

    /// A second `keyward serve` on the same configuration — the same
    /// database and HSM token, its own ports and log: another replica.
    pub fn replica(&self, name: &str) -> Replica {
        let log = format!("serve-{name}.log");
        let (child, public, admin) = self.spawn_serve(&log, &[], &[]);
        Replica {
            child,
            public,
            admin,
            log: self.dir.path().join(log),
        }
    }

    /// Spawns `keyward serve ARGS`, logging to `log` in the test dir, and
    /// reads the listening line: `(child, public addr, admin addr)`.
    fn spawn_serve(
        &self,
        log: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Child, String, String) {
        self.spawn_serve_as(&self.config, log, args, env)
    }

    /// [`Server::spawn_serve`] with the configuration file `config`.
    fn spawn_serve_as(
        &self,
        config: &Path,
        log: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Child, String, String) {
        let log_path = self.dir.path().join(log);
        // Appended to: a restarted server's log follows the crashed one's.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(KEYWARD)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(args)
            .env("SOFTHSM2_CONF", TestToken::conf_path().unwrap())
            .env_remove("RUST_LOG")
            // Faults only where a test arms them.
            .env_remove("KEYWARD_FAULTS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let why = stalled(&mut child);
            panic!(
                "serve did not start: {line:?}\n{}\n{why}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        let addr = |which: &str| v["listening"][which].as_str().unwrap().to_owned();
        (child, addr("public"), addr("admin"))
    }

    /// Runs `keyward serve` expecting it to refuse to start: its exit status
    /// and stderr (fails the test if it is still running after 60 s).
    pub fn serve_refused(&self) -> (std::process::ExitStatus, String) {
        let err = self.dir.path().join("refused.log");
        let mut child = Command::new(KEYWARD)
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("SOFTHSM2_CONF", TestToken::conf_path().unwrap())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve started although it should have refused");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, std::fs::read_to_string(err).unwrap_or_default())
    }

    /// The serve process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Fails if the serve process's log (at `keyward=debug`) holds any of
    /// `secrets` (name, value: a session token, a code, an account number),
    /// each matched whole: not as part of a longer run of letters and digits,
    /// so an 8-digit code inside a timestamp is no finding.
    pub fn assert_log_holds_none(&self, secrets: &[(&str, &str)]) {
        let log = self.log();
        assert!(!log.is_empty(), "no log to check");
        for (name, value) in secrets {
            assert!(value.len() >= 8, "{name}: too short to look for");
            let found = log.match_indices(value).any(|(at, _)| {
                let before = log[..at].chars().next_back();
                let after = log[at + value.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            });
            assert!(!found, "the server logged a {name}");
        }
    }

    /// SIGTERM, and the exit status once it has drained.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not exit after SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The serve process's `(VmRSS, VmHWM)` in KiB: resident now, and the
    /// peak since it started.
    pub fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.as_ref().expect("not running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The serve process's id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    /// Whether the serve process is running (not exited or killed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL, as a crash would: no drain, no last audit record. Reaps a
    /// process that already died on its own.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn operators(&self) -> PathBuf {
        self.data.join("operators")
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.operators().join("ca.pem")
    }

    /// `curl` against `https://ADDR{path}` with the server's root, and `args`.
    pub fn curl(&self, addr: &str, path: &str, args: &[&str]) -> Reply {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(self.ca_pem())
            .args(args)
            .arg(format!("https://{addr}{path}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Reply {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_owned(),
            exit: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `curl` on the admin listener with a client certificate (`NAME.pem` and
    /// `NAME.key` in `dir`).
    pub fn admin_as(&self, dir: &Path, name: &str, path: &str, args: &[&str]) -> Reply {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let mut all: Vec<&str> = vec![
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.curl(&self.admin.clone(), path, &all)
    }

    /// `curl` on the admin listener as the first admin (`init`'s files).
    pub fn admin(&self, path: &str, args: &[&str]) -> Reply {
        self.admin_as(&self.operators(), "admin", path, args)
    }

    /// POSTs JSON as the first admin.
    pub fn admin_post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.admin_post_with(path, body, &[])
    }

    /// POSTs JSON as the first admin, with more curl arguments.
    pub fn admin_post_with(&self, path: &str, body: &serde_json::Value, args: &[&str]) -> Reply {
        let file = self.dir.path().join(format!("body-{}.json", rand_suffix()));
        std::fs::write(&file, body.to_string()).unwrap();
        let at = format!("@{}", file.display());
        let mut all = vec!["-H", "content-type: application/json", "--data-binary", &at];
        all.extend_from_slice(args);
        self.admin(path, &all)
    }

    /// A new P-256 key and CSR made by openssl: `(key path, csr PEM)`.
    pub fn openssl_csr(&self, name: &str) -> (PathBuf, String) {
        let key = self.dir.path().join(format!("{name}.key"));
        let csr = self.dir.path().join(format!("{name}.csr"));
        let ok = Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .output()
            .unwrap();
        assert!(ok.status.success(), "openssl req failed");
        (key, std::fs::read_to_string(csr).unwrap())
    }

    /// Registers `device_id` (16 hex digits) in a one-device manufacturing
    /// batch, as the factory would: the CA certifies device keys only for
    /// registered devices.
    pub fn register_device(&self, device_id: &str) {
        use base64::Engine;
        let (_, csr) = self.openssl_csr(&format!("factory-{device_id}"));
        let csr = base64::engine::general_purpose::STANDARD.encode(csr);
        let manifest = format!(
            "{}\n{device_id},P{device_id},,TEST-MODEL,1.0,{csr}\n",
            keyward_device_provisioning::MANIFEST_HEADER
        );
        let r = self.admin_post(
            "/admin/v1/batches",
            &serde_json::json!({ "batch_id": format!("factory-{device_id}"), "manifest": manifest }),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }

    /// Has the admin issue an operator certificate with `role` for a fresh
    /// key; writes `NAME.pem` (leaf + chain) and `NAME.key` in the temp dir.
    /// Returns the serial.
    pub fn new_operator(&self, name: &str, role: &str) -> String {
        let (_, csr) = self.openssl_csr(name);
        let r = self.admin_post(
            "/admin/v1/operators",
            &serde_json::json!({ "csr_pem": csr, "name": name, "role": role }),
        );
        assert_eq!(r.status, 201, "{r:?}");
        let v = r.json();
        let pem = format!(
            "{}{}",
            v["certificate_pem"].as_str().unwrap(),
            v["chain_pem"].as_str().unwrap()
        );
        std::fs::write(self.dir.path().join(format!("{name}.pem")), pem).unwrap();
        v["serial"].as_str().unwrap().to_owned()
    }

    /// `kwctl` against this server as operator `name` (`NAME.pem` and
    /// `NAME.key` in `dir`).
    pub fn kwctl(&self, dir: &Path, name: &str, args: &[&str]) -> Output {
        Command::new(KWCTL)
            .arg("--server")
            .arg(format!("https://{}", self.admin))
            .arg("--ca-cert")
            .arg(self.ca_pem())
            .arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")))
            .args(args)
            .output()
            .unwrap()
    }

    /// GET /metrics (no client certificate).
    pub fn metrics(&self) -> String {
        let r = self.curl(&self.admin.clone(), "/metrics", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }
}

/// The value of one sample line (`name{labels} value`) in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Fails the test unless `promtool check metrics` accepts `text`.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    require_tool("promtool", "prometheus");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A command's stdout as JSON (`kwctl -o json` prints one document, also
/// for errors).
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Another `keyward serve` of the same installation; killed when dropped.
pub struct Replica {
    child: Child,
    pub public: String,
    pub admin: String,
    pub log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the outside check of an exported evidence receipt exactly as
/// docs/protocol.md §11.6 writes it (its `sh` block) in `dir`, which holds
/// the export and the bank's `ca.pem`.
#[allow(dead_code)]
pub fn run_evidence_check(dir: &Path) -> Output {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"))
            .unwrap();
    let section = &doc[doc.find("### 11.6").unwrap()..];
    let start = section.find("```sh\n").unwrap() + "```sh\n".len();
    let script = &section[start..];
    let script = script[..script.find("\n```").unwrap()].replace("cd DIR\n", "");
    Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Why a spawned `serve` gave no first line: how it ended, or, still
/// running, its threads' stacks (`gdb`, where the machine has it), so a
/// stall that a seed does not replay can be read from the failure.
fn stalled(child: &mut Child) -> String {
    if let Ok(Some(status)) = child.try_wait() {
        return format!("serve exited: {status}");
    }
    let pid = child.id().to_string();
    let gdb = Command::new("timeout")
        .args([
            "60",
            "gdb",
            "-p",
            &pid,
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .output();
    let _ = child.kill();
    match gdb {
        Ok(out) if out.status.success() => format!(
            "serve still running, its threads' stacks (gdb):\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Ok(out) => format!(
            "serve still running; gdb could not attach: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("serve still running; no gdb to read its stacks: {e}"),
    }
}
