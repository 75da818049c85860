//! `kwctl ca …` and `kwctl operator …`: certificates of Keyward's CA.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use keyward_server::wire::ca as wire;
use serde_json::Value;

use crate::Ctx;
use crate::client::{encode, get, post, query};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// List certificates, newest first.
    List {
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u32>,
    },
    /// Show one certificate.
    Show { serial: String },
    /// Issue a certificate for a CSR under a profile.
    Issue {
        /// PKCS#10 request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// server-tls. `device` is refused by the server
        /// (`device_certificates_by_provisioning`): device certificates come
        /// from `device import` or `device recertify`; `load-permit`,
        /// `channel` and `evidence` (`profile_reserved`) only from
        /// `keyward init`, for the server's own HSM keys.
        #[arg(long)]
        profile: String,
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        #[arg(long)]
        common_name: Option<String>,
        /// Write the certificate PEM here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate.
    Revoke {
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fetch the current CRL (PEM).
    Crl {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Certify a new operator's CSR with a role (admin only).
    Issue {
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        name: String,
        /// admin, operator or auditor.
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke an operator certificate (not the one kwctl calls with: the
    /// server refuses that with `self_revocation`; another admin revokes it).
    Revoke {
        serial: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::List {
            profile,
            status,
            device_id,
            limit,
            offset,
        } => {
            let q = query(&[
                ("profile", profile),
                ("status", status),
                ("device_id", device_id),
                ("limit", limit.map(|l| l.to_string())),
                ("offset", offset.map(|o| o.to_string())),
            ]);
            ctx.show(get(format!("/ca/certificates{q}"))).await?;
        }
        CaCommand::Show { serial } => {
            ctx.show(get(format!("/ca/certificates/{}", encode(&serial))))
                .await?;
        }
        CaCommand::Issue {
            csr,
            profile,
            device_id,
            dns_names,
            common_name,
            out,
        } => {
            let body = wire::IssueRequest {
                csr_pem: read_pem(&csr)?,
                profile,
                device_id,
                dns_names,
                common_name,
            };
            let v = ctx.call(post("/ca/certificates", body)).await?;
            save_pem(ctx, &v, out.as_deref())?;
            ctx.print(&v)?;
        }
        CaCommand::Revoke { serial, reason } => revoke(ctx, &serial, reason).await?,
        CaCommand::Crl { out } => {
            let v = ctx.call(get("/ca/crl")).await?;
            save_pem(ctx, &v, out.as_deref())?;
            ctx.print(&v)?;
        }
    }
    Ok(())
}

pub async fn run_operator(ctx: &Ctx, cmd: OperatorCommand) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::Issue {
            csr,
            name,
            role,
            out,
        } => {
            let body = wire::OperatorRequest {
                csr_pem: read_pem(&csr)?,
                name,
                role,
            };
            let v = ctx.call(post("/operators", body)).await?;
            save_pem(ctx, &v, out.as_deref())?;
            ctx.print(&v)?;
        }
        OperatorCommand::Revoke { serial, reason } => revoke(ctx, &serial, reason).await?,
    }
    Ok(())
}

async fn revoke(ctx: &Ctx, serial: &str, reason: Option<String>) -> anyhow::Result<()> {
    let path = format!("/ca/certificates/{}/revoke", encode(serial));
    ctx.show(post(path, wire::RevokeRequest { reason })).await?;
    Ok(())
}

pub fn read_pem(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes the PEM of an answer: an issued certificate followed by its chain
/// (issuing CA, root), which is what a TLS client sends; or the CRL.
pub fn save_pem(ctx: &Ctx, v: &Value, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = out else { return Ok(()) };
    let pem = match (v["certificate_pem"].as_str(), v.as_str()) {
        (Some(cert), _) => format!("{cert}{}", v["chain_pem"].as_str().unwrap_or_default()),
        (None, Some(text)) if text.contains("-----BEGIN") => text.to_owned(),
        _ => anyhow::bail!("the response carries no PEM to write"),
    };
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    ctx.note(format!("wrote {}", path.display()));
    Ok(())
}
