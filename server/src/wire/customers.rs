//! Customer review bodies (docs/admin-api.md "Customers"). National ids and
//! contact addresses travel here (to operators over mTLS), never into the
//! audit trail or logs.

use keyward_device_provisioning::{
    ApplicationView, Customer as DomainCustomer, CustomerApplication,
};
use keyward_kms::types::DeviceId;
use serde::{Deserialize, Serialize};

/// What an applicant gives (apply and resubmit).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationRequest {
    pub name: String,
    pub national_id: String,
    pub accounts: Vec<String>,
    pub contact: Contact,
}

/// How the bank reaches the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// `sms`, `im` or `email`.
    pub kind: String,
    pub address: String,
}

/// An operator's reason (reject, close).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRequest {
    pub reason: String,
}

/// An application as the review queue shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    pub application_id: String,
    pub customer_id: String,
    pub state: String,
    pub revision: u32,
    pub submitted_by: String,
    pub submitted_at_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub decision_reason: Option<String>,
    pub name: String,
    pub national_id: String,
    pub accounts: Vec<String>,
    pub contact: Contact,
}

fn contact(a: &keyward_device_provisioning::Contact) -> Contact {
    Contact {
        kind: a.kind.as_str().to_owned(),
        address: a.address().to_owned(),
    }
}

fn accounts(list: &[keyward_device_provisioning::Account]) -> Vec<String> {
    list.iter().map(|x| x.as_str().to_owned()).collect()
}

impl From<&ApplicationView> for Application {
    fn from(a: &ApplicationView) -> Self {
        let person: &CustomerApplication = &a.application;
        Self {
            application_id: a.id.as_str().to_owned(),
            customer_id: a.customer_id.as_str().to_owned(),
            state: a.state.as_str().to_owned(),
            revision: a.revision,
            submitted_by: a.submitted_by.clone(),
            submitted_at_ms: a.submitted_at_ms,
            decided_by: a.decided_by.clone(),
            decided_at_ms: a.decided_at_ms,
            decision_reason: a.decision_reason.clone(),
            name: person.name.clone(),
            national_id: person.national_id.expose().to_owned(),
            accounts: accounts(&person.accounts),
            contact: contact(&person.contact),
        }
    }
}

/// `GET /admin/v1/applications`: the review queue, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplicationList {
    pub applications: Vec<Application>,
}

/// An approved customer and the devices bound to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub application_id: String,
    pub name: String,
    pub national_id: String,
    pub accounts: Vec<String>,
    pub contact: Contact,
    pub approved_by: String,
    pub approved_at_ms: i64,
    pub devices: Vec<String>,
}

impl Customer {
    /// `c` with the devices bound to them.
    pub fn new(c: &DomainCustomer, devices: &[DeviceId]) -> Self {
        Self {
            customer_id: c.id.as_str().to_owned(),
            application_id: c.application_id.as_str().to_owned(),
            name: c.name.clone(),
            national_id: c.national_id.expose().to_owned(),
            accounts: accounts(&c.accounts),
            contact: contact(&c.contact),
            approved_by: c.approved_by.clone(),
            approved_at_ms: c.approved_at_ms,
            devices: devices.iter().map(ToString::to_string).collect(),
        }
    }
}
