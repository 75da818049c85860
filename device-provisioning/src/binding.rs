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

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision, Prepared, Refused};
use crate::error::{ProvisioningError, Result};
use crate::init::InitState;
use crate::store::{Store, is_unique_violation};
use crate::types::{Account, CustomerId, DeviceState, OperatorId, SeSerial, SecureElement};
use keyward_kms::db::{Tx, now_ms};

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
    /// Binds a device's secure element(s) to a customer for an issuer. In a
    /// unit of work of its own; see [`Provisioning::bind_in`].
    pub async fn bind(&self, req: BindRequest, operator: &OperatorId) -> Decision<Binding> {
        let step = self.prepare_bind(req, operator).await?;
        self.commit("bind", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::bind_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::bind`]'s reads and checks, before its transaction:
    /// the binding it will record.
    pub async fn prepare_bind(
        &self,
        req: BindRequest,
        operator: &OperatorId,
    ) -> Result<Prepared<Binding>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Bind,
            format!("device:{}", req.device),
        );
        note.detail("customer_id", &req.customer);
        note.detail("issuer", &req.issuer);
        note.detail("secure_element", req.secure_element.as_str());
        match self.binding_for(req, operator).await {
            Ok(input) => Ok(Prepared { input, note }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The binding recorded in the caller's transaction, if the device's
    /// state and its bindings read there allow it (all of a device's
    /// bindings name one customer, one per issuer); the first moves the
    /// device `initialised → issued`.
    pub async fn bind_in(tx: &mut Tx, step: Prepared<Binding>) -> Decision<Binding> {
        let Prepared {
            input: binding,
            mut note,
        } = step;
        let device = binding.device;
        let r = Store::bind_in(tx, &binding, |state, existing| {
            bind_allowed(device, state)?;
            for (issuer, customer) in existing {
                if *customer != binding.customer {
                    return Err(ProvisioningError::BoundToOtherCustomer(device));
                }
                if *issuer == binding.issuer {
                    return Err(ProvisioningError::AlreadyBound {
                        device,
                        issuer: binding.issuer.clone(),
                    });
                }
            }
            Ok(())
        })
        .await;
        let result = match r {
            Err(e) if is_unique_violation(&e) => Err(ProvisioningError::AlreadyBound {
                device,
                issuer: binding.issuer.clone(),
            }),
            Err(e) => Err(e),
            Ok(from) => {
                if from == DeviceState::Initialised {
                    note.detail("from", from);
                    note.detail("to", DeviceState::Issued);
                }
                Ok(binding)
            }
        };
        note.finish(result)
    }

    /// The binding `req` asks for, checked against the customer, the
    /// device and its keys.
    async fn binding_for(&self, req: BindRequest, operator: &OperatorId) -> Result<Binding> {
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
        Ok(Binding {
            device,
            issuer: req.issuer.clone(),
            customer: req.customer.clone(),
            secure_element: se,
            psam_serial: rec.psam_serial.clone().filter(|_| se.includes_psam()),
            esam_serial: rec.esam_serial.clone().filter(|_| se.includes_esam()),
            accounts: req.accounts.clone(),
            bound_by: operator.as_str().to_owned(),
            bound_at_ms: now_ms(),
        })
    }

    /// Every binding of a device, by issuer.
    pub async fn bindings(&self, device: DeviceId) -> Result<Vec<Binding>> {
        self.store.bindings(device).await
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
