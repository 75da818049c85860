//! `keyward`: the Keyward server binary.
//!
//! This version carries the operator's start-up commands: `check` (HSM,
//! mechanisms and catalog), `init` (idempotent bootstrap of the catalog) and
//! `issuer` management. The network service arrives with the server platform.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyward_config::{Config, LogFormat};
use keyward_kms::Kms;
use keyward_kms::catalog::IssuerRecord;
use keyward_kms::types::{IssuerId, KeyFamily};

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "HSM-backed authentication and key-management server"
)]
struct Cli {
    /// Configuration file (see config/example.toml).
    #[arg(
        long,
        short,
        env = "KEYWARD_CONFIG",
        global = true,
        default_value = "config/dev.toml"
    )]
    config: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the HSM token, its mechanisms and the key catalog, and report.
    Check,
    /// Create what is missing (catalog schema); a second run changes nothing.
    Init,
    /// Issuers (banks / payment systems) and their HSM master keys.
    #[command(subcommand)]
    Issuer(IssuerCommand),
}

#[derive(Debug, Subcommand)]
enum IssuerCommand {
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

fn main() -> ExitCode {
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
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
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

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    if config.database.kind() == keyward_config::DatabaseKind::Sqlite {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    }
    let kms = Kms::open(&config)
        .await
        .context("opening the HSM and the key catalog")?;
    match cli.command {
        Command::Check => {
            kms.ready().await?;
            let issuers = kms.catalog().issuers().await?;
            let report = serde_json::json!({
                "hsm": {
                    "token_label": config.hsm.token_label,
                    "module": config.hsm.module,
                    "workers": kms.pool().workers(),
                    "mechanisms": "all required mechanisms present",
                },
                "database": { "kind": format!("{:?}", kms.catalog().kind()).to_lowercase() },
                "issuers": issuers.len(),
            });
            output(cli.json, &report, || {
                format!(
                    "HSM token {:?}: logged in, {} worker session(s), all required mechanisms present\nkey catalog ({:?}): reachable, {} issuer(s)",
                    config.hsm.token_label,
                    kms.pool().workers(),
                    kms.catalog().kind(),
                    issuers.len()
                )
            });
        }
        Command::Init => {
            // Kms::open has run the migrations and the mechanism probe.
            let issuers = kms.catalog().issuers().await?;
            output(
                cli.json,
                &serde_json::json!({"changed": false, "issuers": issuers.len()}),
                || {
                    format!(
                        "catalog schema is up to date; HSM token {:?} is ready; {} issuer(s). Create one with: keyward issuer create ID --family tdes|aes",
                        config.hsm.token_label,
                        issuers.len()
                    )
                },
            );
        }
        Command::Issuer(IssuerCommand::Create { id, family }) => {
            let id: IssuerId = id.parse()?;
            let family: KeyFamily = family.parse()?;
            let rec = kms.create_issuer(id, family).await?;
            output(cli.json, &issuer_json(&rec), || issuer_text(&rec));
        }
        Command::Issuer(IssuerCommand::List) => {
            let list = kms.catalog().issuers().await?;
            let json = serde_json::Value::Array(list.iter().map(issuer_json).collect());
            output(cli.json, &json, || {
                list.iter().map(issuer_text).collect::<Vec<_>>().join("\n")
            });
        }
        Command::Issuer(IssuerCommand::Show { id }) => {
            let rec = kms.issuer(&id.parse()?).await?;
            output(cli.json, &issuer_json(&rec), || issuer_text(&rec));
        }
    }
    Ok(())
}

fn output(json: bool, value: &serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn issuer_json(rec: &IssuerRecord) -> serde_json::Value {
    serde_json::json!({
        "id": rec.id.as_str(),
        "family": rec.family.as_str(),
        "created_at_ms": rec.created_at_ms,
        "master_keys": rec.master_keys.iter().map(|k| serde_json::json!({
            "role": k.role.as_str(),
            "label": k.label,
            "kcv_method": k.kcv.method.as_str(),
            "kcv": k.kcv.hex(),
        })).collect::<Vec<_>>(),
    })
}

fn issuer_text(rec: &IssuerRecord) -> String {
    let keys: Vec<String> = rec
        .master_keys
        .iter()
        .map(|k| format!("  {:<9} {:<28} {}", k.role.as_str(), k.label, k.kcv))
        .collect();
    format!("{} ({})\n{}", rec.id, rec.family, keys.join("\n"))
}
