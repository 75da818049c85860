//! `kwctl account …`, `kwctl load …`, `kwctl ledger verify`: the ledger and
//! the e-purse loads (docs/admin-api.md, "Ledger and loads"). Every answer
//! that moves money carries the balance after it.

use clap::Subcommand;
use keyward_server::wire::loads as wire;

use crate::Ctx;
use crate::client::{encode, get, post, post_empty, query};

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Open a customer's account in the ledger.
    Create {
        /// The account number (provisioning's, 6-34 of A-Z and 0-9).
        account: String,
        #[arg(long)]
        customer: String,
        /// ISO 4217 alphabetic code.
        #[arg(long)]
        currency: String,
        /// How far below zero the balance may go, minor units.
        #[arg(long, default_value_t = 0)]
        overdraft: i64,
    },
    /// The account and its balance (system accounts: `sys:float:CNY`, …).
    Show { account: String },
    /// Credit money from outside the ledger; above the configured amount
    /// it waits for a second operator (`kwctl account approve`).
    Credit {
        account: String,
        /// Minor units.
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        reference: String,
    },
    /// Approve another operator's pending credit.
    Approve { credit_id: String },
    /// Entries with the running balance, and the balance at a point in
    /// time (`--at-ms`).
    Statement {
        account: String,
        #[arg(long)]
        at_ms: Option<i64>,
        #[arg(long)]
        limit: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Loads, newest first, optionally in one state (pending, posted,
    /// voided, doubtful, late_applied, not_applied).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Loads voided without the purse's proof, awaiting its next contact.
    Doubtful,
    /// One load: its permit, report, entries and why it is in its state.
    Show { load_id: String },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every balance from the entries, verify the hash chain,
    /// its signed checkpoints and the permits; list every violation.
    Verify,
}

const LOAD_COLUMNS: &[&str] = &[
    "load_id",
    "device_id",
    "sequence",
    "amount_minor",
    "currency",
    "state",
    "reason",
    "flagged",
];

pub async fn run_account(ctx: &Ctx, cmd: AccountCommand) -> anyhow::Result<()> {
    let call = match cmd {
        AccountCommand::Create {
            account,
            customer,
            currency,
            overdraft,
        } => post(
            "/accounts",
            wire::NewAccount {
                account,
                customer_id: customer,
                currency,
                overdraft_minor: overdraft,
            },
        ),
        AccountCommand::Show { account } => get(format!("/accounts/{}", encode(&account))),
        AccountCommand::Credit {
            account,
            amount,
            reference,
        } => post(
            format!("/accounts/{}/credits", encode(&account)),
            wire::CreditRequest {
                amount_minor: amount,
                reference,
            },
        ),
        AccountCommand::Approve { credit_id } => {
            post_empty(format!("/credits/{}/approve", encode(&credit_id)))
        }
        AccountCommand::Statement {
            account,
            at_ms,
            limit,
        } => get(format!(
            "/accounts/{}/statement{}",
            encode(&account),
            query(&[
                ("at_ms", at_ms.map(|v| v.to_string())),
                ("limit", limit.map(|v| v.to_string())),
            ])
        )),
    };
    ctx.show(call).await.map(drop)
}

pub async fn run_load(ctx: &Ctx, cmd: LoadCommand) -> anyhow::Result<()> {
    match cmd {
        LoadCommand::List { state, limit } => {
            let q = query(&[("state", state), ("limit", limit.map(|v| v.to_string()))]);
            ctx.show_list(get(format!("/loads{q}")), LOAD_COLUMNS).await
        }
        LoadCommand::Doubtful => {
            ctx.show_list(get("/loads?state=doubtful"), LOAD_COLUMNS)
                .await
        }
        LoadCommand::Show { load_id } => {
            ctx.show(get(format!("/loads/{}", encode(&load_id)))).await
        }
    }
    .map(drop)
}

pub async fn run_ledger(ctx: &Ctx, cmd: LedgerCommand) -> anyhow::Result<()> {
    match cmd {
        LedgerCommand::Verify => {
            let report = ctx.show(get("/ledger/verify")).await?;
            if report["ok"] != true {
                anyhow::bail!("the ledger does not verify");
            }
            Ok(())
        }
    }
}
