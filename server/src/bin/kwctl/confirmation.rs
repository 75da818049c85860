//! `kwctl confirmation show ID`: a transaction confirmation's state,
//! attempts and deliveries (never its code, bytes or the customer's
//! contact), for support and disputes.

use clap::Subcommand;

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
}

pub async fn run(ctx: &Ctx, cmd: ConfirmationCommand) -> anyhow::Result<()> {
    match cmd {
        ConfirmationCommand::Show { id } => ctx
            .show(get(format!("/confirmations/{id}")))
            .await
            .map(drop),
    }
}
