//! `kwctl key …`: working-key versions and rotation.
//!
//! A rotation is lazy: the server records the request, and each device takes
//! new keys at its next login (no HSM work until then); `key pending` lists
//! the devices that have not confirmed yet.

use clap::Subcommand;
use keyward_server::wire::login::RotateRequest;

use crate::Ctx;
use crate::client::{encode, get, post, query};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Ask for new working keys at the next login: for one device
    /// (--device), or for every device of the issuer (no --device).
    Rotate {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        device: Option<String>,
    },
    /// Every working-key version of a device at an issuer (never key bytes).
    List {
        #[arg(long)]
        device: String,
        #[arg(long)]
        issuer: String,
    },
    /// Bound devices of an issuer that have not confirmed new keys.
    Pending {
        #[arg(long)]
        issuer: String,
        /// At most this many devices (server default 100, at most 10000).
        #[arg(long)]
        limit: Option<u32>,
    },
}

pub async fn run(ctx: &Ctx, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Rotate { issuer, device } => {
            if device.as_deref() == Some("") {
                anyhow::bail!("--device needs a device id");
            }
            let path = format!("/issuers/{}/rotations", encode(&issuer));
            ctx.show(post(path, RotateRequest { device_id: device }))
                .await?;
        }
        KeyCommand::List { device, issuer } => {
            let path = format!(
                "/devices/{}/keys{}",
                encode(&device),
                query(&[("issuer_id", Some(issuer))])
            );
            let v = ctx.call(get(path)).await?;
            ctx.print_with(&v, || {
                crate::output::grid(
                    v["versions"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                    &[
                        "version",
                        "state",
                        "created_at_ms",
                        "activated_at_ms",
                        "retire_at_ms",
                    ],
                    "",
                )
            })?;
        }
        KeyCommand::Pending { issuer, limit } => {
            let path = format!(
                "/issuers/{}/rotations/pending{}",
                encode(&issuer),
                query(&[("limit", limit.map(|l| l.to_string()))])
            );
            let v = ctx.call(get(path)).await?;
            ctx.print_with(&v, || {
                crate::output::grid(
                    v["devices"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                    &["device_id", "reason", "active_version"],
                    "",
                )
            })?;
        }
    }
    Ok(())
}
