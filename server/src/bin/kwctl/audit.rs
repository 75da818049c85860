//! `kwctl audit …`: the audit trail.

use clap::Subcommand;

use crate::Ctx;
use crate::client::{get, query};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest audit records.
    List {
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Check the hash chain of the whole trail.
    Verify,
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
        AuditCommand::Verify => {
            ctx.show(get("/audit/verify")).await?;
        }
    }
    Ok(())
}
