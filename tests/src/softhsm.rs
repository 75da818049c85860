//! A fresh SoftHSM token for each test.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the library is first initialised and
//! does not see tokens created after that, so each test process gets its own
//! token directory (inside the temp dir `ops/test.sh` made for the run, or the
//! system temp dir) and creates its tokens there before opening the HSM. Tests
//! therefore run one per process: use `cargo nextest run`, as `ops/test.sh` does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use keyward_config::{HsmConfig, MechanismOverrides};

/// Debian's SoftHSM module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// User PIN of every test token (test-only).
pub const TEST_PIN: &str = "1234";
const TEST_SO_PIN: &str = "5678";

/// A SoftHSM token that exists for the life of the value.
#[derive(Debug)]
pub struct TestToken {
    pub label: String,
    pin_file: PathBuf,
}

fn softhsm_conf() -> Result<&'static Path> {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = CONF.get() {
        return Ok(p);
    }
    // Parallel `softhsm2-util --init-token` runs in one token directory race
    // ("Could not get info about the token"), so every test process gets its
    // own directory: under the run's dir when ops/test.sh set one, else under
    // the system temp dir.
    let run_dir = match std::env::var_os("SOFTHSM2_CONF") {
        Some(p) => PathBuf::from(p)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir),
        None => std::env::temp_dir(),
    };
    let dir = tempfile::Builder::new()
        .prefix(&format!("kw-p{}-", std::process::id()))
        .tempdir_in(&run_dir)?
        .keep();
    let conf = write_conf(&dir)?;
    #[allow(unsafe_code)]
    // SAFETY: set once per process, before it loads the PKCS#11 module (which
    // reads SOFTHSM2_CONF) and before other threads read the environment:
    // nextest runs each test in its own process.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf)
    };
    Ok(CONF.get_or_init(|| conf))
}

/// Writes a SoftHSM config whose tokens live in `dir/tokens`.
pub fn write_conf(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("tokens"))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            dir.join("tokens").display()
        ),
    )?;
    Ok(conf)
}

impl TestToken {
    /// Creates a new token with a unique label.
    pub fn create() -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let conf = softhsm_conf()?;
        if !Path::new(SOFTHSM_MODULE).exists() {
            bail!(
                "SoftHSM is not installed ({SOFTHSM_MODULE} missing): run ops/test.sh, or apt-get install softhsm2"
            );
        }
        let label = format!(
            "kwt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf)
            .args(["--init-token", "--free", "--label", &label])
            .args(["--pin", TEST_PIN, "--so-pin", TEST_SO_PIN])
            .output()
            .context("running softhsm2-util")?;
        if !out.status.success() {
            bail!(
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pin_file = conf
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{label}.pin"));
        std::fs::write(&pin_file, TEST_PIN)?;
        Ok(Self { label, pin_file })
    }

    /// An `[hsm]` section for this token.
    pub fn hsm_config(&self, sessions: usize) -> HsmConfig {
        HsmConfig {
            module: PathBuf::from(SOFTHSM_MODULE),
            token_label: self.label.clone(),
            pin_file: Some(self.pin_file.clone()),
            pin_env: None,
            sessions,
            bulk_sessions: None,
            bulk_nice: keyward_config::DEFAULT_BULK_NICE,
            queue_depth: 4096,
            derived_key_cache: 10_000,
            serialize_object_ops: true,
            mechanisms: MechanismOverrides::default(),
        }
    }

    /// What an auditor sees: `pkcs11-tool --list-objects --type KIND` (`secrkey`,
    /// `privkey`, ...) on this token, logged in.
    pub fn list_objects(&self, kind: &str) -> Result<String> {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", softhsm_conf()?)
            .args(["--module", SOFTHSM_MODULE, "--token-label", &self.label])
            .args([
                "--login",
                "--pin",
                TEST_PIN,
                "--list-objects",
                "--type",
                kind,
            ])
            .output()
            .context("running pkcs11-tool (apt-get install opensc)")?;
        if !out.status.success() {
            bail!(
                "pkcs11-tool failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `SOFTHSM2_CONF` in force for this process.
    pub fn conf_path() -> Result<&'static Path> {
        softhsm_conf()
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        if let Ok(conf) = softhsm_conf() {
            let _ = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", conf)
                .args(["--delete-token", "--token", &self.label])
                .output();
        }
        let _ = std::fs::remove_file(&self.pin_file);
    }
}
