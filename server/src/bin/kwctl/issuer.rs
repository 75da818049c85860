//! `kwctl issuer …`: card issuers and their master keys.

use clap::Subcommand;
use keyward_kms::types::KeyFamily;
use keyward_server::wire::issuers::CreateIssuer;

use crate::client::{encode, get, post};
use crate::{Ctx, one_of};

#[derive(Debug, Subcommand)]
pub enum IssuerCommand {
    /// Create an issuer and its master keys in the HSM (admin only).
    Create {
        /// Issuer id, e.g. bank-a.
        issuer_id: String,
        /// Key family of the issuer's keys.
        #[arg(long, value_parser = one_of::<KeyFamily>(KeyFamily::ALL.map(KeyFamily::as_str)))]
        family: KeyFamily,
    },
    /// List the issuers.
    List,
    /// Show one issuer with its master keys' KCVs.
    Show { issuer_id: String },
    /// Give an existing issuer a token key it lacks (admin only): `zpk`, the
    /// zone PIN key PIN blocks are translated to.
    AddKey {
        issuer_id: String,
        #[arg(long, value_parser = ["zpk"])]
        key: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: IssuerCommand) -> anyhow::Result<()> {
    match cmd {
        IssuerCommand::Create { issuer_id, family } => {
            let body = CreateIssuer {
                issuer_id,
                family: family.as_str().to_owned(),
            };
            ctx.show(post("/issuers", body)).await?;
        }
        IssuerCommand::List => {
            ctx.show_list(get("/issuers"), &["issuer_id", "family", "created_at_ms"])
                .await?;
        }
        IssuerCommand::AddKey { issuer_id, key } => {
            let body = keyward_server::wire::issuers::AddIssuerKey { role: key };
            ctx.show(post(format!("/issuers/{}/keys", encode(&issuer_id)), body))
                .await?;
        }
        IssuerCommand::Show { issuer_id } => {
            ctx.show(get(format!("/issuers/{}", encode(&issuer_id))))
                .await?;
        }
    }
    Ok(())
}
