//! `kwctl channel …`: the card-to-server secure channel.

use clap::Subcommand;

use crate::Ctx;
use crate::client::post_empty;

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// Make a new channel RSA key in the HSM, certified under the `channel`
    /// profile, current for new handshakes on every replica (admin only).
    /// Handshakes begun under the old key finish under it.
    RotateKey,
}

pub async fn run(ctx: &Ctx, cmd: ChannelCommand) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::RotateKey => {
            ctx.show(post_empty("/channel/keys")).await?;
        }
    }
    Ok(())
}
