//! `kwctl`: the operators' command line. It talks only to Keyward's admin API
//! over mutual TLS with an operator certificate — never to the database or the
//! HSM — so every action it takes is authorised by role and audited by the
//! server.
//!
//! Modules by noun: [`ca`] (certificates, operators), [`audit`], [`issuer`],
//! [`device`] (devices, batches, bindings; the manifest upload in
//! [`manifest`], device agents in [`agent`]; login credentials), [`key`]
//! (working-key versions and rotation), [`customer`], [`service`]
//! (back-end systems' certificates), [`mac`] (bulk MAC verification). The admin API
//! client is [`client`]; everything printed goes through [`output`].

mod agent;
mod audit;
mod ca;
mod channel;
mod client;
mod confirmation;
mod customer;
mod device;
mod issuer;
mod key;
mod ledger;
mod mac;
mod manifest;
mod output;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use crate::client::{Call, Client, Refused};
use crate::output::Output;

const LONG_ABOUT: &str = "\
Operate a Keyward server through its admin API.

kwctl talks only to the admin API, over mutual TLS with an operator
certificate (--cert, --key); the server authorises every action by the
certificate's role and records it in its audit trail.

Output: `-o table` (the default) prints aligned columns for lists and
`key: value` lines for single objects, with progress and notes on stderr.
`-o json` prints the server's JSON document on stdout (on a refusal, its
`error` object) and nothing on stderr but errors.

Exit status:
  0  done.
  1  the server answered with an error status: a refusal (4xx: the code says
     why, e.g. forbidden_role, device_state, batch_rejected) or trouble on its
     side (5xx: hsm_busy, timeout, ...). The status, code, message and request
     id are on stderr (with -o json: the error object on stdout).
  2  the request was not answered: bad usage, a local file, manifest or
     device agent problem, or a connection or TLS failure.";

#[derive(Debug, Parser)]
#[command(
    name = "kwctl",
    version,
    about = "Operate a Keyward server through its admin API",
    long_about = LONG_ABOUT
)]
struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        env = "KWCTL_SERVER",
        default_value = "https://127.0.0.1:9443",
        global = true,
        help_heading = "Global options"
    )]
    server: String,
    /// CA certificate (PEM) that issued the server's TLS certificate.
    #[arg(
        long,
        env = "KWCTL_CA_CERT",
        default_value = "var/operators/ca.pem",
        global = true,
        help_heading = "Global options"
    )]
    ca_cert: PathBuf,
    /// Operator certificate (PEM).
    #[arg(
        long,
        env = "KWCTL_CERT",
        default_value = "var/operators/admin.pem",
        global = true,
        help_heading = "Global options"
    )]
    cert: PathBuf,
    /// Operator private key (PEM).
    #[arg(
        long,
        env = "KWCTL_KEY",
        default_value = "var/operators/admin.key",
        global = true,
        help_heading = "Global options"
    )]
    key: PathBuf,
    /// Output for scripts (json) or people (table).
    #[arg(
        long,
        short,
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = "Global options"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the operator identity and role the server sees.
    Whoami,
    /// Certificates issued by Keyward's CA.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Operator (admin client) certificates.
    #[command(subcommand)]
    Operator(ca::OperatorCommand),
    /// Service (back-end system) client certificates.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Bulk transaction-MAC verification.
    #[command(subcommand)]
    Mac(mac::MacCommand),
    /// Card issuers and their master keys.
    #[command(subcommand)]
    Issuer(issuer::IssuerCommand),
    /// The card-to-server secure channel: its RSA key.
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// Devices: batch import, genuine-device check, init, lifecycle.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Working-key versions and rotation.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Bind a device's secure element(s) to an approved customer.
    Bind(device::BindArgs),
    /// Customer applications (maker-checker) and customers.
    #[command(subcommand)]
    Customer(customer::CustomerCommand),
    /// Transaction confirmations over a second channel.
    #[command(subcommand)]
    Confirmation(confirmation::ConfirmationCommand),
    /// Ledger accounts: open, credit, statements.
    #[command(subcommand)]
    Account(ledger::AccountCommand),
    /// E-purse loads.
    #[command(subcommand)]
    Load(ledger::LoadCommand),
    /// The ledger as a whole.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "kwctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let output = cli.output;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    match e.downcast_ref::<Refused>() {
        Some(refused) => match output::refusal(output, refused) {
            Ok(()) => ExitCode::from(1),
            Err(e) => {
                eprintln!("kwctl: {e:#}");
                ExitCode::from(2)
            }
        },
        None => {
            eprintln!("kwctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        client: Client::new(&cli.server, &cli.ca_cert, &cli.cert, &cli.key)?,
        output: cli.output,
    };
    match cli.command {
        Command::Completions { .. } => Ok(()),
        Command::Whoami => ctx.show(client::get("/whoami")).await.map(drop),
        Command::Ca(cmd) => ca::run(&ctx, cmd).await,
        Command::Operator(cmd) => ca::run_operator(&ctx, cmd).await,
        Command::Service(cmd) => service::run(&ctx, cmd).await,
        Command::Mac(cmd) => mac::run(&ctx, cmd).await,
        Command::Issuer(cmd) => issuer::run(&ctx, cmd).await,
        Command::Channel(cmd) => channel::run(&ctx, cmd).await,
        Command::Device(cmd) => device::run(&ctx, cmd).await,
        Command::Key(cmd) => key::run(&ctx, cmd).await,
        Command::Bind(args) => device::bind(&ctx, args).await,
        Command::Customer(cmd) => customer::run(&ctx, cmd).await,
        Command::Confirmation(cmd) => confirmation::run(&ctx, cmd).await,
        Command::Account(cmd) => ledger::run_account(&ctx, cmd).await,
        Command::Load(cmd) => ledger::run_load(&ctx, cmd).await,
        Command::Ledger(cmd) => ledger::run_ledger(&ctx, cmd).await,
        Command::Audit(cmd) => audit::run(&ctx, cmd).await,
    }
}

/// What every command works with: the admin API and the output mode.
#[derive(Debug)]
pub struct Ctx {
    client: Client,
    output: Output,
}

impl Ctx {
    /// One call; a 2xx answer's JSON, or a [`Refused`] error.
    pub async fn call(&self, call: Call) -> anyhow::Result<Value> {
        self.client.call(call).await
    }

    /// One call, its answer printed (JSON, or the automatic table).
    pub async fn show(&self, call: Call) -> anyhow::Result<Value> {
        let v = self.call(call).await?;
        self.print(&v)?;
        Ok(v)
    }

    /// One list call (`{"<key>": [rows]}`), printed with these columns in a
    /// table.
    pub async fn show_list(&self, call: Call, cols: &[&str]) -> anyhow::Result<Value> {
        let v = self.call(call).await?;
        self.print_with(&v, || {
            output::grid(output::list_of(&v).unwrap_or_default(), cols, "")
        })?;
        Ok(v)
    }

    /// Prints an answer: JSON, or the automatic table.
    pub fn print(&self, v: &Value) -> anyhow::Result<()> {
        self.print_with(v, || output::render(v))
    }

    /// Prints an answer: JSON, or the table `table` makes.
    pub fn print_with(&self, v: &Value, table: impl FnOnce() -> String) -> anyhow::Result<()> {
        match self.output {
            Output::Json => output::stdout(&output::json(v)),
            Output::Table => output::stdout(&table()),
        }
    }

    /// Whether output is for scripts (then stderr carries errors only).
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// A note for people on stderr (progress, files written); none in
    /// `-o json`.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.json() {
            eprintln!("{msg}");
        }
    }
}

/// A flag taking one of a domain type's values: the names go to `--help`
/// and completions, and the domain type parses them, so kwctl speaks the
/// server's vocabulary instead of a copy of it.
pub fn one_of<T>(
    names: impl IntoIterator<Item = &'static str>,
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(names).try_map(|s: String| s.parse::<T>())
}
