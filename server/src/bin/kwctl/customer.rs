//! `kwctl customer …`: customer applications under maker-checker review, and
//! the customers they become.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use keyward_device_provisioning::{ApplicationState, ContactKind};
use keyward_server::wire::customers::{ApplicationRequest, Contact, ReasonRequest};

use crate::client::{encode, get, post, post_empty, query};
use crate::{Ctx, one_of};

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
    /// Submit a customer application (you are its maker).
    Apply(Application),
    /// Show an application, for review.
    Review { application_id: String },
    /// The review queue, oldest first.
    List {
        /// Applications in this state (server default: submitted).
        #[arg(long, value_parser = one_of::<ApplicationState>(ApplicationState::ALL.map(ApplicationState::as_str)))]
        state: Option<ApplicationState>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Approve an application (another operator than its maker): the
    /// customer is created.
    Approve { application_id: String },
    /// Send an application back to its maker.
    Reject {
        application_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Correct a rejected application and submit it again.
    Resubmit {
        application_id: String,
        #[command(flatten)]
        application: Application,
    },
    /// Close an application for good.
    Close {
        application_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Show a customer with their devices.
    Show { customer_id: String },
}

/// An application's fields, as options or as a JSON file.
#[derive(Debug, Args)]
pub struct Application {
    /// The customer's name.
    #[arg(long, required_unless_present = "file")]
    name: Option<String>,
    /// The customer's national id.
    #[arg(long, required_unless_present = "file")]
    national_id: Option<String>,
    /// An account the customer holds (repeat for more).
    #[arg(
        long = "account",
        value_name = "ACCOUNT",
        required_unless_present = "file"
    )]
    accounts: Vec<String>,
    /// How to reach the customer.
    #[arg(
        long,
        required_unless_present = "file",
        value_parser = one_of::<ContactKind>(ContactKind::ALL.map(ContactKind::as_str))
    )]
    contact_kind: Option<ContactKind>,
    /// Phone number, e-mail or IM address, as --contact-kind says.
    #[arg(long, required_unless_present = "file")]
    contact: Option<String>,
    /// The application body as JSON: {"name", "national_id", "accounts",
    /// "contact": {"kind", "address"}}.
    #[arg(long, conflicts_with_all = ["name", "national_id", "accounts", "contact_kind", "contact"])]
    file: Option<PathBuf>,
}

impl Application {
    /// The request body.
    fn body(self) -> anyhow::Result<ApplicationRequest> {
        if let Some(path) = self.file {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not an application {{\"name\", \"national_id\", \"accounts\", \"contact\"}}",
                    path.display()
                )
            });
        }
        // clap requires every field without --file.
        let (Some(name), Some(national_id), Some(kind), Some(address)) =
            (self.name, self.national_id, self.contact_kind, self.contact)
        else {
            bail!("give --name, --national-id, --account, --contact-kind and --contact, or --file");
        };
        Ok(ApplicationRequest {
            name,
            national_id,
            accounts: self.accounts,
            contact: Contact {
                kind: kind.as_str().to_owned(),
                address,
            },
        })
    }
}

/// Columns of `customer list` (no national id or contact in a list).
const LIST_COLUMNS: &[&str] = &[
    "application_id",
    "state",
    "name",
    "customer_id",
    "revision",
    "submitted_by",
    "submitted_at_ms",
    "decided_by",
];

fn app_path(id: &str, rest: &str) -> String {
    format!("/applications/{}{rest}", encode(id))
}

pub async fn run(ctx: &Ctx, cmd: CustomerCommand) -> anyhow::Result<()> {
    let call = match cmd {
        CustomerCommand::Apply(application) => post("/applications", application.body()?),
        CustomerCommand::Review { application_id } => get(app_path(&application_id, "")),
        CustomerCommand::List { state, limit } => {
            let q = query(&[
                ("state", state.map(|s| s.as_str().to_owned())),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            ctx.show_list(get(format!("/applications{q}")), LIST_COLUMNS)
                .await?;
            return Ok(());
        }
        CustomerCommand::Approve { application_id } => {
            post_empty(app_path(&application_id, "/approve"))
        }
        CustomerCommand::Reject {
            application_id,
            reason,
        } => post(
            app_path(&application_id, "/reject"),
            ReasonRequest { reason },
        ),
        CustomerCommand::Resubmit {
            application_id,
            application,
        } => post(app_path(&application_id, "/resubmit"), application.body()?),
        CustomerCommand::Close {
            application_id,
            reason,
        } => post(
            app_path(&application_id, "/close"),
            ReasonRequest { reason },
        ),
        CustomerCommand::Show { customer_id } => {
            get(format!("/customers/{}", encode(&customer_id)))
        }
    };
    ctx.show(call).await?;
    Ok(())
}
