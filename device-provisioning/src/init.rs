//! Original keys (seed CN102004977A, "generate its original key information"
//! → "initialise the device"), per (device, issuer).
//!
//! [`Provisioning::init_package`] wraps `TMK_d` and `AUTH_d` to the public key
//! of the device's certificate (re-checked with the CA: a revoked
//! certificate gets nothing) and records the package's KCVs as `pending`.
//! [`Provisioning::confirm_init`] takes the device's KCVs: all match →
//! `initialised` (and the device `verified → initialised`); any mismatch →
//! `refused`, recorded, and [`ProvisioningError::KcvMismatch`].
//!
//! A package is served when the device is `verified`, or when it is already
//! `initialised`/`issued` and this issuer is new to it (one device, many
//! issuers: seed CN101957958A). Once an issuer's keys were confirmed or
//! refused, another package needs an operator's [`Provisioning::reinit`],
//! which the next package consumes. A package still `pending` may be fetched
//! again (it is wrapped to the device's key and carries the same keys).

use keyward_kms::db::Tx;
use keyward_kms::types::{DeviceId, IssuerId, Kcv};
use keyward_kms::wrap::InitPackage;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Audited, Decision, Kept, Prepared, Refused};
use crate::error::{ProvisioningError, Result};
use crate::store::Store;
use crate::types::{DeviceState, OperatorId, Reason};

/// Where an issuer's original keys for a device are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitState {
    /// A package was delivered; the device has not confirmed its KCVs.
    Pending,
    /// The device confirmed every KCV.
    Initialised,
    /// The device reported a KCV mismatch (an intrusion signal).
    Refused,
}

impl InitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Initialised => "initialised",
            Self::Refused => "refused",
        }
    }
}

impl std::str::FromStr for InitState {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s {
            "pending" => Ok(Self::Pending),
            "initialised" => Ok(Self::Initialised),
            "refused" => Ok(Self::Refused),
            _ => Err(()),
        }
    }
}

/// The original-key record of one (device, issuer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRecord {
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub state: InitState,
    pub tmk_kcv: Kcv,
    pub auth_kcv: Kcv,
    /// Packages delivered so far.
    pub packages: u32,
    pub packaged_at_ms: i64,
    pub confirmed_at_ms: Option<i64>,
    /// An operator's reinit waiting to be used by the next package.
    pub reinit_by: Option<String>,
}

/// The package's key names, in the order docs/protocol.md §5.2 lists them.
const KEY_NAMES: [&str; 2] = ["TMK", "AUTH"];

/// A confirmation compared against the pending package, to settle.
#[derive(Debug, Clone)]
pub struct ConfirmInit {
    device: DeviceId,
    issuer: IssuerId,
    packages: u32,
    matched: bool,
}

/// What an operator's reinit allows (see [`Provisioning::prepare_reinit`]).
#[derive(Debug, Clone)]
pub struct Reinit {
    device: DeviceId,
    issuer: IssuerId,
    operator: OperatorId,
    reason: Reason,
}

impl Provisioning {
    /// Builds the init package for `device` under `issuer` (rules in the
    /// module docs) and records it as pending. `operator` is the one at the
    /// provisioning station who asked for it (the audit note's subject).
    /// In a unit of work of its own; see [`Provisioning::init_package_in`].
    pub async fn init_package(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        operator: &OperatorId,
    ) -> Decision<InitPackage> {
        let step = self.prepare_init_package(device, issuer, operator).await?;
        self.commit("record_package", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::init_package_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::init_package`]'s reads, checks and HSM work (the keys
    /// made and wrapped to the device), before its transaction.
    pub async fn prepare_init_package(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        operator: &OperatorId,
    ) -> Result<Prepared<InitPackage>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::InitPackage,
            format!("device:{device}"),
        );
        note.detail("issuer", issuer);
        match self.package(device, issuer, &mut note).await {
            Ok(input) => Ok(Prepared { input, note }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// Records the package ([`Provisioning::prepare_init_package`]) as the
    /// pending one of (device, issuer) in the caller's transaction, the
    /// device's state checked again there.
    pub async fn init_package_in(
        tx: &mut Tx,
        step: Prepared<InitPackage>,
    ) -> Decision<InitPackage> {
        let Prepared { input, note } = step;
        let (device, issuer) = (input.device, input.issuer.clone());
        let result = async {
            let (tmk, auth) = package_kcvs(&input)?;
            let written = Store::record_package_in(tx, device, &issuer, tmk, auth, |state| {
                package_allowed(device, state)
            })
            .await?;
            if written {
                Ok(input)
            } else {
                Err(ProvisioningError::ReinitRequired { device, issuer })
            }
        }
        .await;
        note.finish(result)
    }

    async fn package(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        note: &mut AuditNote,
    ) -> Result<InitPackage> {
        let rec = self.checkable(device).await?;
        package_allowed(device, rec.state)?;
        if let Some(init) = self.init_record(device, issuer).await?
            && init.state != InitState::Pending
            && init.reinit_by.is_none()
        {
            return Err(ProvisioningError::ReinitRequired {
                device,
                issuer: issuer.clone(),
            });
        }
        let serial = rec
            .cert_serial
            .as_deref()
            .ok_or(ProvisioningError::CertificateInvalid(
                "no certificate recorded",
            ))?;
        let cert = self.good_certificate(serial, device).await?;
        let pkg = self
            .kms
            .init_package(issuer, device, cert.public_key)
            .await?;
        let (tmk, auth) = package_kcvs(&pkg)?;
        note.detail("scheme", pkg.scheme.as_str());
        note.detail("tmk_kcv", tmk);
        note.detail("auth_kcv", auth);
        Ok(pkg)
    }

    /// An operator allows one more init package for (device, issuer) after
    /// its keys were confirmed or refused (a device reset, a replaced secure
    /// element, a mismatch investigated and cleared). In a unit of work of
    /// its own; see [`Provisioning::reinit_in`].
    pub async fn reinit(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Decision<()> {
        let step = self
            .prepare_reinit(device, issuer, operator, reason)
            .await?;
        self.commit("reinit", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::reinit_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await
    }

    /// [`Provisioning::reinit`]'s reads and checks, before its transaction.
    pub async fn prepare_reinit(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        operator: &OperatorId,
        reason: &Reason,
    ) -> Result<Prepared<Reinit>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::Reinit,
            format!("device:{device}"),
        );
        note.detail("issuer", issuer);
        self.note_device_reason(&mut note, device, reason).await;
        let read = async {
            let rec = self.device(device).await?;
            package_allowed(device, rec.state)?;
            let init = self.init_record(device, issuer).await?.ok_or(
                ProvisioningError::NoPendingInit {
                    device,
                    issuer: issuer.clone(),
                },
            )?;
            note.detail("init_state", init.state.as_str());
            Ok(())
        }
        .await;
        match read {
            Ok(()) => Ok(Prepared {
                input: Reinit {
                    device,
                    issuer: issuer.clone(),
                    operator: operator.clone(),
                    reason: reason.clone(),
                },
                note,
            }),
            Err(e) => Err(note.refused(e)),
        }
    }

    /// The reinit allowed in the caller's transaction.
    pub async fn reinit_in(tx: &mut Tx, step: Prepared<Reinit>) -> Decision<()> {
        let Prepared { input: r, note } = step;
        let result =
            match Store::allow_reinit_in(tx, r.device, &r.issuer, &r.operator, &r.reason).await {
                Ok(true) => Ok(()),
                // Pending: the device can fetch the package again without a reinit.
                Ok(false) => Err(ProvisioningError::Invalid {
                    field: "reinit",
                    reason: "the package is still pending; no reinit is needed",
                }),
                Err(e) => Err(e),
            };
        note.finish(result)
    }

    /// The device's KCVs for the pending package, by key name (`TMK`,
    /// `AUTH`). Every one must match, each name once and no other: then the
    /// issuer's keys are `initialised` and a `verified` device becomes
    /// `initialised`. Otherwise the record becomes `refused` (kept, an
    /// intrusion signal) and [`ProvisioningError::KcvMismatch`] is returned.
    /// One unit of work of its own; see [`Provisioning::confirm_init_in`].
    pub async fn confirm_init<S: AsRef<str>>(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        kcvs: &[(S, Kcv)],
    ) -> Decision<()> {
        let step = self.prepare_confirm_init(device, issuer, kcvs).await?;
        self.commit("confirm_init", step.note(), |mut tx| {
            let step = step.clone();
            async move {
                let done = Self::confirm_init_in(&mut tx, step).await;
                (tx, done)
            }
        })
        .await?
        .answer()
    }

    /// [`Provisioning::confirm_init`]'s reads and its comparison of the
    /// KCVs, before its transaction. Every comparison runs, whatever the
    /// earlier ones gave.
    pub async fn prepare_confirm_init<S: AsRef<str>>(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        kcvs: &[(S, Kcv)],
    ) -> Result<Prepared<ConfirmInit>, Box<Refused>> {
        let mut note = AuditNote::new(
            Actor::Device(device),
            Action::ConfirmInit,
            format!("device:{device}"),
        );
        note.detail("issuer", issuer);
        let init = match self.init_record(device, issuer).await {
            Ok(Some(i)) if i.state == InitState::Pending => i,
            Ok(_) => {
                return Err(note.refused(ProvisioningError::NoPendingInit {
                    device,
                    issuer: issuer.clone(),
                }));
            }
            Err(e) => return Err(note.refused(e)),
        };
        let mut matched = kcvs.len() == KEY_NAMES.len();
        for (name, expected) in KEY_NAMES.iter().zip([&init.tmk_kcv, &init.auth_kcv]) {
            let mut found = 0usize;
            for (n, k) in kcvs {
                if n.as_ref() == *name {
                    found += 1;
                    matched &= k.matches(expected);
                }
            }
            matched &= found == 1;
        }
        Ok(Prepared {
            input: ConfirmInit {
                device,
                issuer: issuer.clone(),
                packages: init.packages,
                matched,
            },
            note,
        })
    }

    /// The confirmation settled in the caller's transaction. A match
    /// initialises the keys (and a `verified` device). A mismatch refuses
    /// the package for good, and that is kept: the decision commits, its
    /// note records the refusal, and its value is the error to answer.
    pub async fn confirm_init_in(
        tx: &mut Tx,
        step: Prepared<ConfirmInit>,
    ) -> Result<Kept<()>, Box<Refused>> {
        let Prepared { input: c, mut note } = step;
        let outcome = if c.matched {
            InitState::Initialised
        } else {
            InitState::Refused
        };
        match Store::settle_package_in(tx, c.device, &c.issuer, outcome, c.packages).await {
            Err(e) => Err(note.refused(e)),
            Ok(moved) if c.matched => {
                if moved {
                    note.detail("from", DeviceState::Verified);
                    note.detail("to", DeviceState::Initialised);
                }
                Ok(Audited {
                    value: Ok(()),
                    note,
                })
            }
            Ok(_) => {
                tracing::warn!(device = %c.device, issuer = %c.issuer,
                    "device reported init-package KCVs that do not match: intrusion signal, keys refused");
                Ok(note.kept(ProvisioningError::KcvMismatch {
                    device: c.device,
                    issuer: c.issuer,
                }))
            }
        }
    }

    /// The original-key record of (device, issuer), if any.
    pub async fn init_record(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
    ) -> Result<Option<InitRecord>> {
        self.store.init_record(device, issuer).await
    }

    /// Every issuer's original-key record of a device.
    pub async fn init_records(&self, device: DeviceId) -> Result<Vec<InitRecord>> {
        self.store.init_records(device).await
    }
}

/// Device states in which an init package may be served.
fn package_allowed(device: DeviceId, state: DeviceState) -> Result<()> {
    match state {
        DeviceState::Verified | DeviceState::Initialised | DeviceState::Issued => Ok(()),
        _ => Err(ProvisioningError::DeviceState {
            device,
            state,
            needed: "verified, initialised or issued",
        }),
    }
}

/// The TMK and AUTH KCVs a package announces.
fn package_kcvs(pkg: &InitPackage) -> Result<(Kcv, Kcv)> {
    let find = |name: &str| {
        pkg.keys
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.kcv)
            .ok_or_else(|| {
                ProvisioningError::Kms(keyward_kms::KmsError::Hsm {
                    function: "init_package",
                    problem: "package lacks a key",
                })
            })
    };
    Ok((find(KEY_NAMES[0])?, find(KEY_NAMES[1])?))
}
