//! Binding (seed CN102004977A: on approval the bank binds the device's PSAM
//! and/or ESAM to the customer and issues the device).
//!
//! [`Provisioning::bind`] needs an approved customer, a subset of that
//! customer's accounts, a device that is `initialised` (or already `issued`,
//! for a further issuer — seed CN101957958A), confirmed original keys for the
//! issuer, and the chosen secure element(s) present on the device. All of a
//! device's bindings name the same customer, one per issuer. The first
//! binding moves the device `initialised → issued`.

use keyward_kms::types::{DeviceId, IssuerId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision};
use crate::customers::split_accounts;
use crate::error::{ProvisioningError, Result};
use crate::init::InitState;
use crate::store::is_unique_violation;
use crate::types::{Account, CustomerId, DeviceState, OperatorId, SeSerial, SecureElement};
use keyward_kms::db::{now_ms, parse_col, parse_opt};

/// What [`Provisioning::bind`] is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    pub device: DeviceId,
    pub customer: CustomerId,
    pub issuer: IssuerId,
    /// A non-empty subset of the customer's accounts.
    pub accounts: Vec<Account>,
    pub secure_element: SecureElement,
}

/// A device bound to a customer for one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub customer: CustomerId,
    pub secure_element: SecureElement,
    pub psam_serial: Option<SeSerial>,
    pub esam_serial: Option<SeSerial>,
    pub accounts: Vec<Account>,
    pub bound_by: String,
    pub bound_at_ms: i64,
}

impl Provisioning {
    /// Binds a device's secure element(s) to a customer for an issuer.
    pub async fn bind(&self, req: BindRequest, operator: &OperatorId) -> Decision<Binding> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Bind,
            format!("device:{}", req.device),
        );
        note.detail("customer_id", &req.customer);
        note.detail("issuer", &req.issuer);
        note.detail("secure_element", req.secure_element.as_str());
        let result = self.bind_inner(req, operator, &mut note).await;
        note.finish(result)
    }

    async fn bind_inner(
        &self,
        req: BindRequest,
        operator: &OperatorId,
        note: &mut AuditNote,
    ) -> Result<Binding> {
        let customer = self.customer(&req.customer).await?;
        if req.accounts.is_empty() {
            return Err(ProvisioningError::Invalid {
                field: "accounts",
                reason: "at least one account",
            });
        }
        for (i, a) in req.accounts.iter().enumerate() {
            if req.accounts[..i].contains(a) {
                return Err(ProvisioningError::Invalid {
                    field: "accounts",
                    reason: "an account is listed twice",
                });
            }
            if !customer.accounts.contains(a) {
                return Err(ProvisioningError::AccountsNotHeld);
            }
        }
        let device = req.device;
        let rec = self.checkable(device).await?;
        bind_allowed(device, rec.state)?;
        let se = req.secure_element;
        if se.includes_psam() && rec.psam_serial.is_none() {
            return Err(ProvisioningError::SecureElementMissing(SecureElement::Psam));
        }
        if se.includes_esam() && rec.esam_serial.is_none() {
            return Err(ProvisioningError::SecureElementMissing(SecureElement::Esam));
        }
        let initialised = self
            .init_record(device, &req.issuer)
            .await?
            .is_some_and(|i| i.state == InitState::Initialised);
        if !initialised {
            return Err(ProvisioningError::IssuerNotInitialised {
                device,
                issuer: req.issuer.clone(),
            });
        }
        let binding = Binding {
            device,
            issuer: req.issuer.clone(),
            customer: req.customer.clone(),
            secure_element: se,
            psam_serial: rec.psam_serial.clone().filter(|_| se.includes_psam()),
            esam_serial: rec.esam_serial.clone().filter(|_| se.includes_esam()),
            accounts: req.accounts.clone(),
            bound_by: operator.as_str().to_owned(),
            bound_at_ms: now_ms(),
        };
        let r = self
            .store
            .retrying(|| async {
                let mut tx = self.store.begin_write().await?;
                let state: DeviceState =
                    match sqlx::query("SELECT state FROM prov_devices WHERE device_id = $1")
                        .bind(device.to_string())
                        .fetch_optional(&mut *tx)
                        .await?
                    {
                        Some(row) => parse_col(&row, "state", "prov_devices.state")?,
                        None => return Err(ProvisioningError::UnknownDevice(device)),
                    };
                bind_allowed(device, state)?;
                let existing = sqlx::query(
                    "SELECT issuer_id, customer_id FROM prov_bindings WHERE device_id = $1",
                )
                .bind(device.to_string())
                .fetch_all(&mut *tx)
                .await?;
                for row in &existing {
                    let customer: String = row.try_get("customer_id")?;
                    if customer != req.customer.as_str() {
                        return Err(ProvisioningError::BoundToOtherCustomer(device));
                    }
                    let issuer: String = row.try_get("issuer_id")?;
                    if issuer == req.issuer.as_str() {
                        return Err(ProvisioningError::AlreadyBound {
                            device,
                            issuer: req.issuer.clone(),
                        });
                    }
                }
                sqlx::query(
                    "INSERT INTO prov_bindings (device_id, issuer_id, customer_id, secure_element, \
                     psam_serial, esam_serial, accounts, bound_by, bound_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(device.to_string())
                .bind(binding.issuer.as_str())
                .bind(binding.customer.as_str())
                .bind(se.as_str())
                .bind(binding.psam_serial.as_ref().map(|s| s.as_str().to_owned()))
                .bind(binding.esam_serial.as_ref().map(|s| s.as_str().to_owned()))
                .bind(
                    binding
                        .accounts
                        .iter()
                        .map(Account::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                )
                .bind(binding.bound_by.as_str())
                .bind(binding.bound_at_ms)
                .execute(&mut *tx)
                .await?;
                if state == DeviceState::Initialised {
                    sqlx::query(
                        "UPDATE prov_devices SET state = 'issued', state_changed_at_ms = $2 \
                         WHERE device_id = $1 AND state = 'initialised'",
                    )
                    .bind(device.to_string())
                    .bind(binding.bound_at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(state)
            })
            .await;
        let from = match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(ProvisioningError::AlreadyBound {
                    device,
                    issuer: req.issuer,
                });
            }
            other => other?,
        };
        if from == DeviceState::Initialised {
            note.detail("from", from);
            note.detail("to", DeviceState::Issued);
        }
        Ok(binding)
    }

    /// Every binding of a device, by issuer.
    pub async fn bindings(&self, device: DeviceId) -> Result<Vec<Binding>> {
        let rows = sqlx::query(
            "SELECT device_id, issuer_id, customer_id, secure_element, psam_serial, esam_serial, \
             accounts, bound_by, bound_at_ms FROM prov_bindings WHERE device_id = $1 \
             ORDER BY issuer_id",
        )
        .bind(device.to_string())
        .fetch_all(&self.store.pool)
        .await?;
        rows.iter().map(binding_from_row).collect()
    }
}

fn bind_allowed(device: DeviceId, state: DeviceState) -> Result<()> {
    match state {
        DeviceState::Initialised | DeviceState::Issued => Ok(()),
        _ => Err(ProvisioningError::DeviceState {
            device,
            state,
            needed: "initialised (or issued, for a further issuer)",
        }),
    }
}

fn binding_from_row(row: &AnyRow) -> Result<Binding> {
    let accounts: String = row.try_get("accounts")?;
    Ok(Binding {
        device: parse_col(row, "device_id", "prov_bindings.device_id")?,
        issuer: parse_col(row, "issuer_id", "prov_bindings.issuer_id")?,
        customer: parse_col(row, "customer_id", "prov_bindings.customer_id")?,
        secure_element: parse_col(row, "secure_element", "prov_bindings.secure_element")?,
        psam_serial: parse_opt(row, "psam_serial", "prov_bindings.psam_serial")?,
        esam_serial: parse_opt(row, "esam_serial", "prov_bindings.esam_serial")?,
        accounts: split_accounts(&accounts, "prov_bindings.accounts")?,
        bound_by: row.try_get("bound_by")?,
        bound_at_ms: row.try_get("bound_at_ms")?,
    })
}
