//! `kwctl confirmation show ID`: a transaction confirmation's state,
//! attempts and deliveries (never its code, bytes or the customer's
//! contact), for support and disputes. `kwctl confirmation evidence ID
//! --out DIR`: an executed one's signed evidence receipt and what checks
//! it, as files (docs/protocol.md §11.6).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use keyward_server::confirmation::export;
use keyward_server::wire::confirmations::EvidenceExport;

use crate::Ctx;
use crate::client::get;

#[derive(Debug, Subcommand)]
pub enum ConfirmationCommand {
    /// State, attempts, amount, and each delivery's state, attempts and
    /// last error.
    Show {
        /// The confirmation id the device was given.
        id: String,
    },
    /// Writes the evidence receipt, its signature, the evidence certificate
    /// chain, the device certificate, the transaction and the message into
    /// DIR (admin or auditor; the files hold personal data).
    Evidence {
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(ctx: &Ctx, cmd: ConfirmationCommand) -> anyhow::Result<()> {
    match cmd {
        ConfirmationCommand::Show { id } => ctx
            .show(get(format!("/confirmations/{id}")))
            .await
            .map(drop),
        ConfirmationCommand::Evidence { id, out } => {
            let v = ctx
                .call(get(format!("/confirmations/{id}/evidence")))
                .await?;
            let e: EvidenceExport =
                serde_json::from_value(v).context("reading the server's evidence answer")?;
            let files = export::write_dir(&e, &out)?;
            println!("{}: {}", out.display(), files.join(", "));
            Ok(())
        }
    }
}
