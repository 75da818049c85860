//! `kwctl device …` and `kwctl bind`: manufacturing batches, the
//! genuine-device check, original keys (init packages), the lifecycle, and
//! binding to a customer.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keyward_device_provisioning::{DeviceState, SecureElement};
use keyward_server::wire::devices as wire;
use serde_json::Value;

use crate::agent::Agent;
use crate::client::{encode, get, post, post_empty, query};
use crate::{Ctx, manifest, one_of};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Import a manufacturing batch from a factory manifest (all or nothing).
    ///
    /// The manifest is the factory's CSV (header
    /// device_id,psam_serial,esam_serial,model,firmware,csr; at most 10000
    /// rows). A csr field `@path` is replaced by the base64 of that file,
    /// read relative to the manifest's directory. If any row is bad the
    /// server refuses the whole batch and kwctl prints the rejected rows.
    Import {
        /// The batch id, e.g. B2026-001.
        #[arg(long)]
        batch_id: String,
        manifest: PathBuf,
    },
    /// Show a manufacturing batch (`device batch ID`), or abort an import of
    /// one whose server died mid-way (`device batch abort ID`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Batch {
        /// The batch to show.
        #[arg(required = true)]
        batch_id: Option<String>,
        #[command(subcommand)]
        action: Option<BatchCommand>,
    },
    /// List devices, by device id.
    List {
        #[arg(long, value_parser = one_of::<DeviceState>(DeviceState::ALL.map(DeviceState::as_str)))]
        state: Option<DeviceState>,
        #[arg(long)]
        batch_id: Option<String>,
        /// At most this many (server default 100, at most 10000).
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u32>,
    },
    /// Show a device with its inits and bindings.
    Show { device_id: String },
    /// The genuine-device check.
    ///
    /// Without options: start a check and print the challenge (its id and
    /// hex bytes) for a station that talks to the device itself. With
    /// --challenge-id and --signature: submit the device's signature over
    /// that challenge. With --agent: both, the agent signing (`AGENT
    /// sign-challenge <device_id> <challenge_hex>` prints the base64 DER
    /// signature).
    Check {
        device_id: String,
        /// The id of the challenge signed (from the challenge printed).
        #[arg(long, requires = "signature", conflicts_with = "agent")]
        challenge_id: Option<String>,
        /// The device's signature over the challenge, base64 of DER.
        #[arg(long, requires = "challenge_id", conflicts_with = "agent")]
        signature: Option<String>,
        /// Device agent command line (split on whitespace, run without a shell).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Load an issuer's original keys into a device (init package).
    ///
    /// Gets a new init package and prints it; with --package-out, writes it
    /// to a file instead; with --agent, loads it through the agent
    /// (`AGENT load-init <device_id>`, package on stdin, confirm body on
    /// stdout) and sends the device's KCVs for confirmation. --confirm alone
    /// sends a confirm body (a file, or literal JSON) without a new package.
    Init {
        device_id: String,
        /// Issuer whose keys to load.
        #[arg(long, required_unless_present = "confirm")]
        issuer: Option<String>,
        /// Device agent command line (split on whitespace, run without a shell).
        #[arg(long, conflicts_with_all = ["package_out", "confirm"])]
        agent: Option<String>,
        /// Write the package (JSON) to this file and stop.
        #[arg(long, conflicts_with = "confirm")]
        package_out: Option<PathBuf>,
        /// Confirm body `{"issuer_id", "kcvs": […]}`: a file, or the JSON itself.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Clear the failed-check counter of a device parked after too many
    /// failed genuine-device checks (audited).
    CheckReset {
        device_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Ask for a certificate for a device's new key; a second operator
    /// approves it with `device recertify-approve`.
    Recertify {
        device_id: String,
        /// The device's new PKCS#10 request (PEM file).
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        reason: String,
    },
    /// Approve another operator's re-certification: the new certificate is
    /// issued and every other certificate of the device revoked.
    RecertifyApprove { device_id: String },
    /// Allow one more init package for an issuer's keys.
    Reinit {
        device_id: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        reason: String,
    },
    /// Suspend an issued device.
    Suspend(Transition),
    /// Resume a suspended device (back to issued).
    Resume(Transition),
    /// Retire a device for good: its certificate is revoked and its working
    /// keys retired at every issuer.
    Retire(Transition),
    /// Lift a login lockout of a device's credential for one issuer (admin
    /// only). Where the lockout revoked the certificate, the device must be
    /// re-certified before it can connect again (`device recertify`).
    Unlock {
        device_id: String,
        #[arg(long)]
        issuer: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// A device's login credential for one issuer: failures, lock.
    Credential {
        device_id: String,
        #[arg(long)]
        issuer: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Show a manufacturing batch (the same as `device batch ID`).
    Show { batch_id: String },
    /// Abort an unfinished import whose lease ran out (its server was
    /// killed): its certificates are revoked and the batch removed, so the
    /// same file can be imported again (audited). Refused while the import
    /// is still running, and for a complete batch. The server also does this
    /// by itself within a lease period (`provisioning.import_lease_ms`).
    Abort { batch_id: String },
}

#[derive(Debug, Args)]
pub struct Transition {
    device_id: String,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    device_id: String,
    /// The customer id (cust-…) of an approved application.
    #[arg(long)]
    customer: String,
    /// Issuer whose keys the device holds (initialised).
    #[arg(long)]
    issuer: String,
    /// Secure element(s) to bind.
    #[arg(long, value_parser = one_of::<SecureElement>(SecureElement::ALL.map(SecureElement::as_str)))]
    element: SecureElement,
    /// Account of the customer the binding serves (repeat for more).
    #[arg(long = "account", value_name = "ACCOUNT", required = true)]
    accounts: Vec<String>,
}

/// Columns of `device list`.
const LIST_COLUMNS: &[&str] = &[
    "device_id",
    "state",
    "batch_id",
    "psam_serial",
    "esam_serial",
    "model",
    "firmware",
    "key_kind",
];

/// How many devices the server lists without --limit.
const SERVER_LIST_LIMIT: usize = 100;

fn device_path(id: &str, rest: &str) -> String {
    format!("/devices/{}{rest}", encode(id))
}

pub async fn run(ctx: &Ctx, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Import { batch_id, manifest } => {
            manifest::import(ctx, &batch_id, &manifest).await?;
        }
        DeviceCommand::Batch { batch_id, action } => match (action, batch_id) {
            (Some(BatchCommand::Abort { batch_id }), _) => {
                ctx.show(post_empty(format!("/batches/{}/abort", encode(&batch_id))))
                    .await?;
            }
            (Some(BatchCommand::Show { batch_id }), _) | (None, Some(batch_id)) => {
                ctx.show(get(format!("/batches/{}", encode(&batch_id))))
                    .await?;
            }
            (None, None) => bail!("give a batch id, or `abort ID`"),
        },
        DeviceCommand::List {
            state,
            batch_id,
            limit,
            offset,
        } => {
            let q = query(&[
                ("state", state.map(|s| s.as_str().to_owned())),
                ("batch_id", batch_id),
                ("limit", limit.map(|l| l.to_string())),
                ("offset", offset.map(|o| o.to_string())),
            ]);
            let v = ctx
                .show_list(get(format!("/devices{q}")), LIST_COLUMNS)
                .await?;
            let shown = v["devices"].as_array().map_or(0, Vec::len);
            if shown > 0 && shown == limit.map_or(SERVER_LIST_LIMIT, |l| l as usize) {
                ctx.note(format!(
                    "{shown} shown: there may be more (--limit, --offset)"
                ));
            }
        }
        DeviceCommand::Show { device_id } => {
            ctx.show(get(device_path(&device_id, ""))).await?;
        }
        DeviceCommand::Check {
            device_id,
            challenge_id,
            signature,
            agent,
        } => {
            let answered = challenge_id.zip(signature);
            check(ctx, &device_id, answered, agent).await?
        }
        DeviceCommand::CheckReset { device_id, reason } => {
            let body = wire::ResetCheckRequest { reason };
            ctx.show(post(device_path(&device_id, "/check/reset"), body))
                .await?;
        }
        DeviceCommand::Recertify {
            device_id,
            csr,
            reason,
        } => {
            let csr_pem = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading {}", csr.display()))?;
            let body = wire::RecertifyRequest { csr_pem, reason };
            ctx.show(post(device_path(&device_id, "/recertify"), body))
                .await?;
        }
        DeviceCommand::RecertifyApprove { device_id } => {
            ctx.show(post_empty(device_path(&device_id, "/recertify/approve")))
                .await?;
        }
        DeviceCommand::Init {
            device_id,
            issuer,
            agent,
            package_out,
            confirm,
        } => match confirm {
            Some(body) => confirm_init(ctx, &device_id, issuer.as_deref(), &body).await?,
            None => init(ctx, &device_id, issuer, agent, package_out).await?,
        },
        DeviceCommand::Reinit {
            device_id,
            issuer,
            reason,
        } => {
            let body = wire::ReinitRequest {
                issuer_id: issuer,
                reason,
            };
            ctx.show(post(device_path(&device_id, "/reinit"), body))
                .await?;
        }
        DeviceCommand::Suspend(t) => transition(ctx, t, "suspended").await?,
        DeviceCommand::Resume(t) => transition(ctx, t, "issued").await?,
        DeviceCommand::Retire(t) => transition(ctx, t, "retired").await?,
        DeviceCommand::Unlock {
            device_id,
            issuer,
            reason,
        } => {
            let path = device_path(
                &device_id,
                &format!("/credentials/{}/unlock", encode(&issuer)),
            );
            let v = ctx
                .show(post(
                    path,
                    keyward_server::wire::login::UnlockRequest { reason },
                ))
                .await?;
            if v["recertification_required"] == true && !ctx.json() {
                eprintln!(
                    "note: the lockout revoked the device certificate; re-certify the device \
                     (kwctl device recertify) before it can log in"
                );
            }
        }
        DeviceCommand::Credential { device_id, issuer } => {
            ctx.show(get(device_path(
                &device_id,
                &format!("/credentials/{}", encode(&issuer)),
            )))
            .await?;
        }
    }
    Ok(())
}

async fn transition(ctx: &Ctx, t: Transition, to: &str) -> anyhow::Result<()> {
    let body = wire::StateRequest {
        to: to.to_owned(),
        reason: t.reason,
    };
    ctx.show(post(device_path(&t.device_id, "/state"), body))
        .await?;
    Ok(())
}

async fn check(
    ctx: &Ctx,
    device_id: &str,
    answered: Option<(String, String)>,
    agent: Option<String>,
) -> anyhow::Result<()> {
    let agent = agent.as_deref().map(Agent::parse).transpose()?;
    let (challenge_id, signature) = match (answered, agent) {
        (Some(answered), _) => answered,
        (None, None) => {
            let challenge = post_empty(device_path(device_id, "/challenge"));
            ctx.show(challenge).await?;
            return Ok(());
        }
        (None, Some(agent)) => {
            let answer = ctx
                .call(post_empty(device_path(device_id, "/challenge")))
                .await?;
            let challenge: wire::ChallengeAnswer =
                serde_json::from_value(answer).context("the challenge answer")?;
            let (id, hex) = (&challenge.device_id, &challenge.challenge);
            ctx.note(format!("challenge {hex} for device {id}: asking the agent"));
            (
                challenge.challenge_id.clone(),
                agent.sign_challenge(id, hex)?,
            )
        }
    };
    let body = wire::CheckRequest {
        challenge_id: challenge_id.trim().to_owned(),
        signature: signature.trim().to_owned(),
    };
    ctx.show(post(device_path(device_id, "/check"), body))
        .await?;
    Ok(())
}

async fn init(
    ctx: &Ctx,
    device_id: &str,
    issuer: Option<String>,
    agent: Option<String>,
    package_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    // clap requires --issuer without --confirm.
    let issuer = issuer.context("--issuer is required")?;
    let agent = agent.as_deref().map(Agent::parse).transpose()?;
    let body = wire::InitRequest { issuer_id: issuer };
    let package = ctx
        .call(post(device_path(device_id, "/init"), body))
        .await?;
    let id = serde_json::from_value::<wire::InitPackage>(package.clone())
        .context("the init package answer")?
        .device_id;
    if let Some(path) = package_out {
        std::fs::write(&path, format!("{package:#}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        ctx.note(format!("wrote the init package to {}", path.display()));
        return ctx.print_with(&package, || summary(&package));
    }
    let Some(agent) = agent else {
        return ctx.print(&package);
    };
    ctx.note(format!(
        "{}\nloading the package into device {id} through the agent",
        summary(&package)
    ));
    let confirm = agent
        .load_init(&id, &package)
        .context("the init package was not loaded (run the command again for a new one)")?;
    ctx.show(post(device_path(device_id, "/init/confirm"), confirm))
        .await?;
    Ok(())
}

/// An init package for people: who, which keys and their KCVs, without the
/// wrapped key material.
fn summary(package: &Value) -> String {
    let mut v = package.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("ephemeral_point");
        if let Some(Value::Array(keys)) = m.get_mut("keys") {
            for key in keys.iter_mut().filter_map(Value::as_object_mut) {
                key.remove("wrapped");
            }
        }
    }
    crate::output::render(&v)
}

/// `--confirm FILE_OR_JSON`: a confirm body sent as it is (its `issuer_id`
/// filled from --issuer when it has none).
async fn confirm_init(
    ctx: &Ctx,
    device_id: &str,
    issuer: Option<&str>,
    arg: &str,
) -> anyhow::Result<()> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    };
    let mut body: Value = serde_json::from_str(&text).context("--confirm is not JSON")?;
    let obj = body
        .as_object_mut()
        .context("--confirm must be a JSON object {\"issuer_id\", \"kcvs\"}")?;
    match (obj.get("issuer_id").and_then(Value::as_str), issuer) {
        (Some(a), Some(b)) if a != b => {
            bail!("--confirm is for issuer {a}, --issuer says {b}")
        }
        (Some(_), _) => {}
        (None, Some(b)) => {
            obj.insert("issuer_id".into(), b.into());
        }
        (None, None) => bail!("--confirm has no issuer_id: give --issuer"),
    }
    ctx.show(post(device_path(device_id, "/init/confirm"), body))
        .await?;
    Ok(())
}

/// `kwctl bind`.
pub async fn bind(ctx: &Ctx, args: BindArgs) -> anyhow::Result<()> {
    let body = wire::BindRequest {
        customer_id: args.customer,
        issuer_id: args.issuer,
        secure_element: args.element.as_str().to_owned(),
        accounts: args.accounts,
    };
    ctx.show(post(device_path(&args.device_id, "/bindings"), body))
        .await?;
    Ok(())
}
