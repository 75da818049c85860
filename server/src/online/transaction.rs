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
//! A MAC failure is answered `invalid` (200), audited within the device's
//! refusal window (the first of a window in full, then a count; a device
//! that keeps failing is answered 429 `too_many_refusals` until the window
//! ends, before any HSM work), counted, and counted per credential: the failure that makes a streak of
//! [`MAC_FAILURE_STREAK`] raises `keyward_transaction_mac_failure_streaks_total
//! {issuer}` and an audit record an alert can use without a device label.

use keyward_kms::types::{KeyVersion, MacAlgorithm, Padding};
use keyward_kms::{MacItem, PinBlock};

use crate::online::{Device, Online, OnlineError, OnlineEvent, Refusal, Session};

type Result<T> = std::result::Result<T, OnlineError>;

/// Consecutive MAC failures of one credential that make an alert-worthy
/// streak.
pub const MAC_FAILURE_STREAK: u32 = 5;
/// Most account fields one transaction carries.
pub const MAX_ACCOUNT_FIELDS: usize = 8;

/// A device's transaction, as the route read it.
#[derive(Debug, Clone)]
pub struct TransactionRequest {
    pub version: KeyVersion,
    pub algorithm: MacAlgorithm,
    pub padding: Option<Padding>,
    pub message: Vec<u8>,
    pub mac: Vec<u8>,
    /// Account fields: name, IV and the encrypted field.
    pub accounts: Vec<(String, Vec<u8>, Vec<u8>)>,
    pub pin_block: Option<PinBlock>,
}

/// What the server answers a transaction. Its `Debug` leaves the PIN block
/// out.
#[derive(Clone, PartialEq, Eq)]
pub struct TransactionVerdict {
    /// Whether the MAC verified; nothing else is checked when it did not.
    pub mac_valid: bool,
    pub version: KeyVersion,
    /// Each account field by name: whether it is one of the binding's.
    pub accounts: Vec<(String, bool)>,
    /// The PIN block under the issuer's zone PIN key.
    pub pin_block: Option<Vec<u8>>,
}

fn field_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl std::fmt::Debug for TransactionVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionVerdict")
            .field("mac_valid", &self.mac_valid)
            .field("version", &self.version)
            .field("accounts", &self.accounts)
            .field("pin_block", &self.pin_block.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Online {
    /// `POST /v1/transactions`.
    pub async fn transaction(
        &self,
        device: &Device,
        session: &Session,
        req: TransactionRequest,
    ) -> Result<TransactionVerdict> {
        self.check_throttle(device, "transaction.mac").await?;
        let issuer = &session.issuer;
        let TransactionRequest {
            version,
            algorithm,
            padding,
            message,
            mac,
            accounts,
            pin_block,
        } = req;
        if accounts.len() > MAX_ACCOUNT_FIELDS || accounts.iter().any(|a| !field_name_ok(&a.0)) {
            return Err(OnlineError::from(Refusal::InvalidInput(
                "at most 8 account fields, each named with 1-32 of a-z, 0-9, _",
            )));
        }
        let bound: Vec<String> = self
            .provisioning
            .bindings(device.device_id)
            .await?
            .into_iter()
            .filter(|b| &b.issuer == issuer)
            .flat_map(|b| b.accounts.into_iter().map(|a| a.as_str().to_owned()))
            .collect();
        let pin = match pin_block {
            None => None,
            Some(pin) => {
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
            return Ok(TransactionVerdict {
                mac_valid: false,
                version,
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
            checks.push((name, bound.contains(&value)));
        }
        let pin_block = match pin {
            None => None,
            Some(pin) => Some(
                self.kms
                    .translate_pin(issuer, device.device_id, version, &pin)
                    .await?,
            ),
        };
        Ok(TransactionVerdict {
            mac_valid: true,
            version,
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
        let event = OnlineEvent::MacFailure {
            device: device.device_id,
            issuer: session.issuer.clone(),
            algorithm,
            version,
            streak,
        };
        // The failure that makes a streak is kept whole (alerts use it).
        self.refusal_recorded(device, event, "mac_invalid", streak == MAC_FAILURE_STREAK)
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
