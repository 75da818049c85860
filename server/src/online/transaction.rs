//! A device's transaction (docs/protocol.md §10.5, seed CN102004977A step
//! 4): over a session, the transaction message with its MAC, account fields
//! encrypted under `TDK` and a PIN block under `TPK`.
//!
//! Order: everything that can be refused without a key is checked first
//! (field formats, the PIN block's format and length, its PAN among the
//! binding's accounts); then the MAC is verified in the HSM with the version
//! the device names (active, or the replaced one inside its grace period);
//! only a valid MAC gets its account fields decrypted (in the HSM, checked
//! against the binding, never echoed) and its PIN block translated to the
//! issuer's zone PIN key inside the HSM — which a token without a
//! PIN-translation mechanism (SoftHSM) refuses with `501
//! hsm_mechanism_missing`; a PIN block is never decrypted on the host.
//!
//! A MAC failure is answered `invalid` (200), audited, counted, and counted
//! per credential: the failure that makes a streak of
//! [`MAC_FAILURE_STREAK`] raises `keyward_transaction_mac_failure_streaks_total
//! {issuer}` and an audit record an alert can use without a device label.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::{KeyVersion, MacAlgorithm, Padding};
use keyward_kms::{MacItem, PinBlock, PinFormat};

use crate::audit::{AuditEvent, Outcome};
use crate::online::{Device, Online, OnlineError, OnlineEvent, Refusal, Session};
use crate::wire::transactions as wire;

type Result<T> = std::result::Result<T, OnlineError>;

/// Consecutive MAC failures of one credential that make an alert-worthy
/// streak.
pub const MAC_FAILURE_STREAK: u32 = 5;
/// Most account fields one transaction carries.
pub const MAX_ACCOUNT_FIELDS: usize = 8;

fn b64(field: &'static str, value: &str) -> Result<Vec<u8>> {
    B64.decode(value).map_err(|_| {
        OnlineError::from(Refusal::InvalidInput(match field {
            "message" => "message is not base64",
            "mac" => "mac is not base64",
            "iv" => "an account iv is not base64",
            "data" => "an account field is not base64",
            _ => "pin_block.block is not base64",
        }))
    })
}

fn field_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Online {
    /// `POST /v1/transactions`.
    pub async fn transaction(
        &self,
        device: &Device,
        session: &Session,
        req: &wire::TransactionRequest,
    ) -> Result<wire::TransactionAnswer> {
        let issuer = &session.issuer;
        let algorithm: MacAlgorithm = req.algorithm.parse()?;
        let padding = req.padding.map(Padding::from_number).transpose()?;
        let version = KeyVersion(req.key_version);
        let message = b64("message", &req.message)?;
        let mac = b64("mac", &req.mac)?;
        if req.accounts.len() > MAX_ACCOUNT_FIELDS
            || req.accounts.iter().any(|a| !field_name_ok(&a.name))
        {
            return Err(OnlineError::from(Refusal::InvalidInput(
                "at most 8 account fields, each named with 1-32 of a-z, 0-9, _",
            )));
        }
        let accounts = req
            .accounts
            .iter()
            .map(|a| Ok((a.name.clone(), b64("iv", &a.iv)?, b64("data", &a.data)?)))
            .collect::<Result<Vec<_>>>()?;
        let bound: Vec<String> = self
            .provisioning
            .bindings(device.device_id)
            .await?
            .into_iter()
            .filter(|b| &b.issuer == issuer)
            .flat_map(|b| b.accounts.into_iter().map(|a| a.as_str().to_owned()))
            .collect();
        let pin = match &req.pin_block {
            None => None,
            Some(p) => {
                let pin = PinBlock {
                    format: PinFormat::from_number(p.format)?,
                    block: b64("block", &p.block)?,
                    pan: p.pan.clone(),
                };
                pin.check(self.kms.issuer(issuer).await?.family)?;
                if !bound.iter().any(|a| a == pin.pan.expose_digits()) {
                    return Err(OnlineError::from(Refusal::PanNotBound));
                }
                Some(pin)
            }
        };

        let item = MacItem {
            issuer: issuer.clone(),
            device: device.device_id,
            version,
            algorithm,
            padding,
            message,
            mac,
        };
        let valid = self.kms.verify_mac(item).await?;
        self.metrics
            .transaction_macs
            .with_label_values(&[algorithm.as_str(), if valid { "valid" } else { "invalid" }])
            .inc();
        if !valid {
            self.mac_failure(device, session, algorithm, version)
                .await?;
            return Ok(wire::TransactionAnswer {
                result: "invalid".into(),
                code: "mac_invalid".into(),
                key_version: version.0,
                accounts: Vec::new(),
                pin_block: None,
            });
        }
        self.store
            .clear_mac_failures(issuer, device.device_id)
            .await?;

        let mut checks = Vec::with_capacity(accounts.len());
        for (name, iv, data) in accounts {
            let clear = self
                .kms
                .decrypt_account_field(issuer, device.device_id, version, &iv, &data)
                .await?;
            let value = String::from_utf8(clear)
                .map_err(|_| keyward_kms::KmsError::AccountFieldNotUtf8)?
                .to_ascii_uppercase();
            checks.push(wire::AccountCheck {
                bound: bound.contains(&value),
                name,
            });
        }
        let pin_block = match pin {
            None => None,
            Some(pin) => Some(
                B64.encode(
                    self.kms
                        .translate_pin(issuer, device.device_id, version, &pin)
                        .await?,
                ),
            ),
        };
        Ok(wire::TransactionAnswer {
            result: "valid".into(),
            code: "mac_valid".into(),
            key_version: version.0,
            accounts: checks,
            pin_block,
        })
    }

    /// A wrong MAC: audited, and counted towards the credential's streak.
    async fn mac_failure(
        &self,
        device: &Device,
        session: &Session,
        algorithm: MacAlgorithm,
        version: KeyVersion,
    ) -> Result<()> {
        let streak = self
            .store
            .record_mac_failure(&session.issuer, device.device_id)
            .await?;
        let event = AuditEvent::from(OnlineEvent::MacFailure {
            device: device.device_id,
            issuer: session.issuer.clone(),
            algorithm,
            version,
            streak,
        });
        self.audit
            .append(
                &device.actor,
                &event,
                Outcome::Refused {
                    code: "mac_invalid",
                },
                &device.request_id,
            )
            .await?;
        if streak == MAC_FAILURE_STREAK {
            self.metrics
                .mac_failure_streaks
                .with_label_values(&[session.issuer.as_str()])
                .inc();
        }
        Ok(())
    }
}
