//! `kwctl audit …`: the audit trail.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use keyward_server::wire::AuditCheckpoint;

use crate::Ctx;
use crate::client::{get, query};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records.
    List {
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Check the whole trail: hash chain, HSM MACs, head and HSM checkpoint;
    /// fails when it is broken.
    Verify {
        /// Also check a signed checkpoint stored earlier (`audit checkpoint
        /// --out FILE`): signature, and that the trail still holds it.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// The current head signed by the HSM audit signing key: store it
    /// outside the installation and check it later with `verify --against`.
    Checkpoint {
        /// Write the signed checkpoint (JSON) to this file as well.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// What people read in a record; the hashes are for `audit verify` (and
/// `-o json`).
const LIST_COLUMNS: &[&str] = &[
    "seq",
    "at_ms",
    "actor",
    "action",
    "target",
    "outcome",
    "detail_json",
];

pub async fn run(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { limit } => {
            let call = get(format!(
                "/audit{}",
                query(&[("limit", limit.map(|l| l.to_string()))])
            ));
            ctx.show_list(call, LIST_COLUMNS).await?;
        }
        AuditCommand::Verify { against } => {
            let q = match against {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let c: AuditCheckpoint = serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a signed audit checkpoint", path.display())
                    })?;
                    query(&[
                        ("seq", Some(c.seq.to_string())),
                        ("hash", Some(c.hash)),
                        ("at_ms", Some(c.at_ms.to_string())),
                        ("signature", Some(c.signature)),
                        ("key", Some(c.key)),
                        ("key_sha256", Some(c.key_sha256)),
                    ])
                }
                None => String::new(),
            };
            let v = ctx.show(get(format!("/audit/verify{q}"))).await?;
            if v["ok"] != true {
                bail!(
                    "audit trail BROKEN at record {}: {}",
                    v["first_bad"],
                    v["problem"].as_str().unwrap_or("?")
                );
            }
        }
        AuditCommand::Checkpoint { out } => {
            let v = ctx.show(get("/audit/checkpoint")).await?;
            if let Some(path) = out {
                std::fs::write(&path, format!("{v}\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
