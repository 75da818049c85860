//! The command line: `check`, `init`, `serve`, `issuer …`, `audit verify`,
//! `audit repair`.
//! One function per command; output as text, or JSON with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyward_config::{Config, LogFormat};
use keyward_kms::catalog::IssuerRecord;
use keyward_kms::types::{IssuerId, KeyFamily};

use crate::admin::create_recorded;
use anyhow::Context;

use crate::audit::{Actor, AuditLog, RepairOutcome, SignedCheckpoint};
use crate::bootstrap::open_kms;
use crate::wire::issuers::Issuer;

/// The `keyward` binary: parse the command line, load the config, run the
/// command on a multi-threaded runtime, close the HSM.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyward: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyward: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli, config));
    drop(runtime);
    crate::bootstrap::close_hsm();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keyward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "HSM-backed authentication and key-management server"
)]
pub struct Cli {
    /// Configuration file (see config/example.toml).
    #[arg(
        long,
        short,
        env = "KEYWARD_CONFIG",
        global = true,
        default_value = "config/dev.toml"
    )]
    pub config: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the HSM token, its mechanisms and the key catalog, and report.
    Check,
    /// Create what is missing: schemas, CA, server TLS key and certificate,
    /// the first admin operator. A second run changes nothing.
    Init,
    /// Run the service: the public (device) and admin TLS listeners. Verifies
    /// the audit trail from its HSM checkpoint first and refuses to serve on
    /// a break.
    Serve {
        /// Serve even when the audit trail does not verify (the break is
        /// logged and recorded): for an operator who has looked into it.
        #[arg(long)]
        allow_broken_audit: bool,
    },
    /// Issuers (banks / payment systems) and their HSM master keys.
    #[command(subcommand)]
    Issuer(IssuerCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// Generate an issuer's master keys in the HSM and record them.
    Create {
        /// Issuer id: 1-32 characters of a-z, 0-9 and '-'.
        id: String,
        /// Key family: tdes (2-key TDES) or aes (AES-128).
        #[arg(long)]
        family: String,
    },
    /// List issuers.
    List,
    /// Show one issuer with its master-key labels and KCVs.
    Show { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain, every HSM MAC and the head, and compare with
    /// the HSM checkpoint; exit status 1 and the first bad record if broken.
    Verify {
        /// Also check a signed checkpoint stored elsewhere (the JSON that
        /// `kwctl audit checkpoint` printed): its signature, and that the
        /// trail still holds that record.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Re-anchor a trail cut back to an older, once-valid head: records
    /// `audit.repair` (what verification found, which records were lost)
    /// and moves the HSM checkpoint onto it. Refused while the trail
    /// verifies, and when a record or the head was changed (not only cut).
    Repair {
        /// Why (incident reference, what was restored): kept in the record.
        #[arg(long)]
        reason: String,
    },
}

/// Runs a command. `Ok(false)` means it ran but found a problem (exit 1).
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<bool> {
    match cli.command {
        Command::Serve { allow_broken_audit } => {
            crate::fault::arm_from_env()?;
            crate::edge::serve::serve(config, allow_broken_audit)
                .await
                .map(|()| true)
        }
        Command::Init => init(cli.json, &config).await,
        Command::Audit(AuditCommand::Verify { against }) => {
            audit_verify(cli.json, &config, against).await
        }
        Command::Audit(AuditCommand::Repair { reason }) => {
            audit_repair(cli.json, &config, &reason).await
        }
        Command::Check => check(cli.json, &config).await,
        Command::Issuer(cmd) => issuer(cli.json, &config, cmd).await,
    }
}

async fn check(json: bool, config: &Config) -> anyhow::Result<bool> {
    let kms = open_kms(config).await?;
    kms.ready().await?;
    let issuers = kms.issuers().await?;
    let caps = kms.capabilities();
    let pin = if caps.pin_translate {
        "PIN translation: vendor mechanism configured (hsm.mechanisms.pin_translate), present"
    } else {
        "PIN translation: not available (no vendor mechanism configured; SoftHSM has none): \
         PIN routes answer 501 hsm_mechanism_missing"
    };
    let retail = if caps.vendor_retail_mac {
        "X9.19 retail MAC: vendor mechanism"
    } else {
        "X9.19 retail MAC: emulated from DES2 keys (docs/protocol.md §6.3)"
    };
    let report = serde_json::json!({
        "hsm": {
            "token_label": config.hsm.token_label,
            "module": config.hsm.module,
            "workers": kms.hsm_workers(),
            "mechanisms": "all required mechanisms present",
            "pin_translation": caps.pin_translate,
            "vendor_retail_mac": caps.vendor_retail_mac,
            "audit_mechanisms": keyward_kms::AUDIT_MECHANISMS
                .iter()
                .map(|(m, purpose)| format!("{} ({purpose})", keyward_kms::hsm::mechanism_name(*m)))
                .collect::<Vec<_>>(),
        },
        "database": { "kind": format!("{:?}", kms.db().kind()).to_lowercase() },
        "issuers": issuers.len(),
    });
    output(json, &report, || {
        format!(
            "HSM token {:?}: logged in, {} worker session(s), all required mechanisms present (audit trail: {})\n{pin}\n{retail}\nkey catalog ({:?}): reachable, {} issuer(s)",
            config.hsm.token_label,
            kms.hsm_workers(),
            keyward_kms::AUDIT_MECHANISMS
                .iter()
                .map(|(m, _)| keyward_kms::hsm::mechanism_name(*m))
                .collect::<Vec<_>>()
                .join(", "),
            kms.db().kind(),
            issuers.len()
        )
    });
    Ok(true)
}

async fn init(json: bool, config: &Config) -> anyhow::Result<bool> {
    let report = crate::bootstrap::init(config).await?;
    let value = serde_json::json!({
        "changed": report.changed(),
        "created": report.created,
        "tls_dir": report.tls_dir,
        "operator_dir": report.operator_dir,
        "server_certificate_serial": report.server_serial,
        "admin_certificate_serial": report.admin_serial,
    });
    output(json, &value, || {
        if report.changed() {
            let mut lines = vec!["created:".to_owned()];
            lines.extend(report.created.iter().map(|c| format!("  {c}")));
            if report.admin_serial.is_some() {
                lines.push(format!(
                    "The admin's key is in {}/admin.key: move it to the admin's machine and delete it here.",
                    report.operator_dir.display()
                ));
            }
            lines.push("next: keyward serve".to_owned());
            lines.join("\n")
        } else {
            "nothing changed: schemas, CA, server TLS certificate and admin operator are in place"
                .to_owned()
        }
    });
    Ok(true)
}

async fn audit_verify(
    json: bool,
    config: &Config,
    against: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let stored: Option<SignedCheckpoint> =
        match &against {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(serde_json::from_str(&text).with_context(|| {
                    format!("{} is not a signed audit checkpoint", path.display())
                })?)
            }
            None => None,
        };
    let kms = open_kms(config).await?;
    let pool = kms.db().pool().clone();
    let kind = kms.db().kind();
    crate::migrate::run(&pool, kind).await?;
    let audit = AuditLog::new(&kms, None);
    let report = audit
        .verify_and_record(&Actor::Cli, "cli", stored.as_ref())
        .await?;
    // A failed check wrote nothing to the chain; the checkpoint stays.
    if report.ok() {
        audit.checkpoint().await?;
    }
    let value = serde_json::to_value(crate::wire::AuditVerified::from(&report))?;
    output(json, &value, || match report.first_bad {
        None => format!("audit trail OK: {} record(s), chain intact", report.records),
        Some(seq) => format!(
            "audit trail BROKEN at record {seq}: {} ({} record(s) read)",
            report.problem.as_deref().unwrap_or("?"),
            report.records
        ),
    });
    Ok(report.ok())
}

async fn audit_repair(json: bool, config: &Config, reason: &str) -> anyhow::Result<bool> {
    let reason: keyward_device_provisioning::Reason = reason.parse()?;
    let kms = open_kms(config).await?;
    let (pool, kind) = (kms.db().pool().clone(), kms.db().kind());
    crate::migrate::run(&pool, kind).await?;
    let audit = AuditLog::new(&kms, None);
    let outcome = audit.repair(&Actor::Cli, "cli", reason.as_str()).await?;
    let (ok, value, text) = match &outcome {
        RepairOutcome::Intact(r) => (
            false,
            serde_json::json!({ "repaired": false, "ok": true, "records": r.records }),
            "audit trail OK: nothing to repair".to_owned(),
        ),
        RepairOutcome::NotRepairable(r) => (
            false,
            serde_json::json!({ "repaired": false, "ok": false, "first_bad": r.first_bad,
                                "problem": r.problem }),
            format!(
                "not repaired: the stored chain itself is broken at record {}: {} (a repair                  re-anchors only a trail cut back to an older head)",
                r.first_bad.unwrap_or(0),
                r.problem.as_deref().unwrap_or("?")
            ),
        ),
        RepairOutcome::Repaired(r) => (
            r.after.ok(),
            serde_json::json!({
                "repaired": true, "ok": r.after.ok(), "problem": r.found.problem,
                "checkpoint_seq": r.checkpoint_seq, "lost_from": r.lost_from,
                "lost_to": r.lost_to, "lost": r.lost_from.map(|f| r.lost_to - f + 1),
                "incidents": r.incidents, "anchor_seq": r.anchor_seq,
            }),
            format!(
                "audit trail re-anchored at record {} (was: {}); records {}..={} lost;                  verification now {}",
                r.anchor_seq,
                r.found.problem.as_deref().unwrap_or("?"),
                r.lost_from.map_or("?".to_owned(), |f| f.to_string()),
                r.lost_to,
                if r.after.ok() { "OK" } else { "still BROKEN" }
            ),
        ),
    };
    output(json, &value, || text);
    Ok(ok)
}

async fn issuer(json: bool, config: &Config, cmd: IssuerCommand) -> anyhow::Result<bool> {
    let kms = open_kms(config).await?;
    match cmd {
        IssuerCommand::Create { id, family } => {
            let id: IssuerId = id.parse()?;
            let family: KeyFamily = family.parse()?;
            let (pool, kind) = (kms.db().pool().clone(), kms.db().kind());
            crate::migrate::run(&pool, kind).await?;
            let audit = AuditLog::new(&kms, None);
            let rec = create_recorded(&kms, &audit, None, &Actor::Cli, "cli", id, family).await?;
            audit.checkpoint().await?;
            output(json, &Issuer::from(&rec), || issuer_text(&rec));
        }
        IssuerCommand::List => {
            let list = kms.issuers().await?;
            let value: Vec<Issuer> = list.iter().map(Issuer::from).collect();
            output(json, &value, || {
                list.iter().map(issuer_text).collect::<Vec<_>>().join("\n")
            });
        }
        IssuerCommand::Show { id } => {
            let rec = kms.issuer(&id.parse()?).await?;
            output(json, &Issuer::from(&rec), || issuer_text(&rec));
        }
    }
    Ok(true)
}

fn output(json: bool, value: &impl serde::Serialize, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        println!("{}", text());
    }
}

fn issuer_text(rec: &IssuerRecord) -> String {
    let keys: Vec<String> = rec
        .master_keys
        .iter()
        .map(|k| format!("  {:<9} {:<28} {}", k.role.as_str(), k.label, k.kcv))
        .collect();
    format!("{} ({})\n{}", rec.id, rec.family, keys.join("\n"))
}
