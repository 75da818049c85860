//! `kwctl service …`: client certificates for back-end systems (the bank's
//! transaction switch), which only the bulk MAC route admits.

use std::path::PathBuf;

use clap::Subcommand;
use keyward_server::wire::ca as wire;

use crate::Ctx;
use crate::ca::{read_pem, save_pem};
use crate::client::{get, post};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Certify a service's CSR (admin only): profile `service`, CN = name.
    Issue {
        /// a-z, 0-9, '-', '.', '_' (e.g. switch-1).
        #[arg(long)]
        name: String,
        #[arg(long)]
        csr: PathBuf,
        /// Write the certificate and its chain here (PEM).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List service certificates, newest first.
    List,
}

pub async fn run(ctx: &Ctx, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Issue { name, csr, out } => {
            let body = wire::ServiceRequest {
                csr_pem: read_pem(&csr)?,
                name,
            };
            let v = ctx.call(post("/services", body)).await?;
            save_pem(ctx, &v, out.as_deref())?;
            ctx.print(&v)?;
        }
        ServiceCommand::List => {
            ctx.show_list(
                get("/ca/certificates?profile=service"),
                &["serial", "subject", "status", "not_after_ms"],
            )
            .await?;
        }
    }
    Ok(())
}
