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

pub async fn run(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<()> {
    let call = match cmd {
        AuditCommand::List { limit } => get(format!(
            "/audit{}",
            query(&[("limit", limit.map(|l| l.to_string()))])
        )),
        AuditCommand::Verify => get("/audit/verify"),
    };
    ctx.show(call).await?;
    Ok(())
}
