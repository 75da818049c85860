//! A device transaction's encrypted parts (docs/protocol.md §6.7, §8.1):
//! account fields under the data key `TDK`, decrypted in the HSM, and the
//! PIN block under `TPK`, translated to the issuer's zone PIN key inside the
//! HSM or refused — never decrypted on the host.

use std::str::FromStr;

use crate::catalog::MasterKeyRole;
use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, PinTranslation, Usage};
use crate::keys::{master_label, with_fresh_handles};
use crate::service::Kms;
use crate::types::{DeviceId, IssuerId, KeyFamily, KeyVersion, Pan, WorkingKeyRole};

/// Largest encrypted account field, in bytes.
pub const MAX_ACCOUNT_FIELD: usize = 256;

/// ISO 9564-1 PIN block formats a device may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFormat {
    /// Format 0: PIN field XOR PAN field, 8 bytes (TDES).
    Iso0,
    /// Format 3: format 0 with random fill, 8 bytes (TDES).
    Iso3,
    /// Format 4: the AES format, 16 bytes, two blocks bound to the PAN.
    Iso4,
}

impl PinFormat {
    pub fn number(self) -> u8 {
        match self {
            Self::Iso0 => 0,
            Self::Iso3 => 3,
            Self::Iso4 => 4,
        }
    }

    /// The family of the key a block of this format is encrypted under.
    pub fn family(self) -> KeyFamily {
        match self {
            Self::Iso0 | Self::Iso3 => KeyFamily::Tdes,
            Self::Iso4 => KeyFamily::Aes,
        }
    }

    /// The encrypted block's length.
    pub fn block_len(self) -> usize {
        match self {
            Self::Iso0 | Self::Iso3 => 8,
            Self::Iso4 => 16,
        }
    }

    pub fn from_number(n: u8) -> Result<Self> {
        match n {
            0 => Ok(Self::Iso0),
            3 => Ok(Self::Iso3),
            4 => Ok(Self::Iso4),
            _ => Err(KmsError::invalid("pin_format", "ISO 9564 format 0, 3 or 4")),
        }
    }
}

impl FromStr for PinFormat {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self> {
        s.parse::<u8>()
            .map_err(|_| KmsError::invalid("pin_format", "ISO 9564 format 0, 3 or 4"))
            .and_then(Self::from_number)
    }
}

/// A PIN block as a device sends it, checked for what can be checked without
/// opening it: the format is the issuer family's, the block has the format's
/// length (the PAN's 12 to 19 digits are its type's). Its `Debug` shows the
/// PAN masked and the block's bytes left out (an encrypted PIN block is
/// not logged either).
#[derive(Clone, PartialEq, Eq)]
pub struct PinBlock {
    pub format: PinFormat,
    pub block: Vec<u8>,
    pub pan: Pan,
}

impl std::fmt::Debug for PinBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinBlock")
            .field("format", &self.format)
            .field("block", &format_args!("<{} bytes>", self.block.len()))
            .field("pan", &self.pan)
            .finish()
    }
}

impl PinBlock {
    pub fn check(&self, family: KeyFamily) -> Result<()> {
        if self.format.family() != family {
            return Err(KmsError::invalid(
                "pin_format",
                "formats 0 and 3 go with tdes issuers, format 4 with aes issuers",
            ));
        }
        if self.block.len() != self.format.block_len() {
            return Err(KmsError::invalid(
                "pin_block",
                "8 bytes for formats 0 and 3, 16 bytes for format 4",
            ));
        }
        Ok(())
    }
}

/// A decrypted, unpadded account field as text: account numbers are ASCII,
/// so bytes that are not UTF-8 are the device's error, refused with a code of
/// their own rather than compared as an empty string.
fn account_text(field: Vec<u8>) -> Result<Vec<u8>> {
    match std::str::from_utf8(&field) {
        Ok(_) => Ok(field),
        Err(_) => Err(KmsError::AccountFieldNotUtf8),
    }
}

/// Strips ISO/IEC 9797-1 padding method 2 (`0x80` then zeros).
fn unpad_method2(mut data: Vec<u8>) -> Result<Vec<u8>> {
    while data.last() == Some(&0) {
        data.pop();
    }
    match data.pop() {
        Some(0x80) => Ok(data),
        _ => Err(KmsError::invalid(
            "account",
            "the decrypted field is not padded with ISO/IEC 9797-1 method 2",
        )),
    }
}

impl Kms {
    /// Decrypts one account field the device encrypted under its `TDK` of
    /// `version`: CBC (3DES or AES by the issuer's family) with the device's
    /// IV over the field padded with ISO/IEC 9797-1 method 2. The field
    /// returned is UTF-8 ([`KmsError::AccountFieldNotUtf8`] otherwise).
    pub async fn decrypt_account_field(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>> {
        let ik = self.issuer_keys(issuer).await?;
        let block = ik.family.block_len();
        if iv.len() != block {
            return Err(KmsError::invalid(
                "iv",
                "one cipher block of the issuer's family",
            ));
        }
        if data.is_empty() || !data.len().is_multiple_of(block) || data.len() > MAX_ACCOUNT_FIELD {
            return Err(KmsError::invalid(
                "account",
                "a non-empty multiple of the block size, at most 256 bytes",
            ));
        }
        let tdk = self
            .usable_working_key(issuer, device, version, WorkingKeyRole::Tdk)
            .await?;
        let cipher = match ik.family {
            KeyFamily::Tdes => Cipher::Des3Cbc(
                iv.try_into()
                    .map_err(|_| KmsError::invalid("iv", "8 bytes"))?,
            ),
            KeyFamily::Aes => Cipher::AesCbc(
                iv.try_into()
                    .map_err(|_| KmsError::invalid("iv", "16 bytes"))?,
            ),
        };
        let data = data.to_vec();
        let cache = self.cache.clone();
        let clear = self
            .pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let key = cache.working(hsm, &ik, device, tdk.r, Usage::DECRYPT)?;
                    hsm.decrypt(key, cipher, &data)
                })
            })
            .await?;
        account_text(unpad_method2(clear)?)
    }

    /// Translates a PIN block from the device's `TPK` of `version` to the
    /// issuer's zone PIN key, inside the HSM. The block is checked first
    /// ([`PinBlock::check`]); then a token without a PIN-translation
    /// mechanism ([`crate::hsm::Capabilities::pin_translate`]) refuses with
    /// [`KmsError::Unsupported`] before any key is derived.
    pub async fn translate_pin(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        pin: &PinBlock,
    ) -> Result<Vec<u8>> {
        let ik = self.issuer_keys(issuer).await?;
        pin.check(ik.family)?;
        if !self.pool.capabilities().pin_translate {
            return Err(KmsError::Unsupported {
                operation: "translate a PIN block",
                reason: "no PIN-translation mechanism is configured \
                         (hsm.mechanisms.pin_translate); SoftHSM has none",
            });
        }
        let tpk = self
            .usable_working_key(issuer, device, version, WorkingKeyRole::Tpk)
            .await?;
        let request = PinTranslation {
            from_format: pin.format.number(),
            to_format: pin.format.number(),
            pan: pin.pan.clone(),
            block: pin.block.clone(),
        };
        let zpk_label = master_label(issuer, MasterKeyRole::Zpk);
        let cache = self.cache.clone();
        self.pool
            .run(move |hsm| {
                with_fresh_handles(&cache, || {
                    let from = cache.working(hsm, &ik, device, tpk.r, Usage::DECRYPT)?;
                    let to = cache.master(hsm, &zpk_label)?;
                    hsm.translate_pin(from, to, &request)
                })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_blocks_debug_shows_neither_block_nor_pan() {
        let pin = PinBlock {
            format: PinFormat::from_number(0).unwrap(),
            block: vec![0xAB; 8],
            pan: "6222020200112233".parse().unwrap(),
        };
        let shown = format!("{pin:?}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
        assert!(!shown.contains("622202020011"), "{shown}");
        assert!(shown.contains("<8 bytes>"), "{shown}");
    }

    #[test]
    fn pin_block_rules() {
        let ok = PinBlock {
            format: PinFormat::Iso0,
            block: vec![0; 8],
            pan: "6222020200112233".parse().unwrap(),
        };
        ok.check(KeyFamily::Tdes).unwrap();
        assert!(
            ok.check(KeyFamily::Aes).is_err(),
            "format 0 under an AES key"
        );
        let short = PinBlock {
            block: vec![0; 7],
            ..ok.clone()
        };
        assert!(short.check(KeyFamily::Tdes).is_err());
        let iso4 = PinBlock {
            format: PinFormat::Iso4,
            block: vec![0; 16],
            ..ok.clone()
        };
        iso4.check(KeyFamily::Aes).unwrap();
        let shown = format!("{ok:?}");
        assert!(!shown.contains("622202020011"), "{shown}");
        assert!("1".parse::<PinFormat>().is_err());
        assert_eq!("3".parse::<PinFormat>().unwrap(), PinFormat::Iso3);
    }

    #[test]
    fn method2_padding_is_stripped_or_refused() {
        assert_eq!(unpad_method2(b"1234\x80\0\0\0".to_vec()).unwrap(), b"1234");
        assert!(unpad_method2(b"1234\0\0\0\0".to_vec()).is_err());
    }

    #[test]
    fn an_account_field_that_is_not_utf8_is_refused_with_its_code() {
        assert_eq!(
            account_text(b"6222020200112233".to_vec()).unwrap(),
            b"6222020200112233"
        );
        let e = account_text(vec![0x36, 0xFF, 0xFE, 0x32]).unwrap_err();
        assert!(matches!(e, KmsError::AccountFieldNotUtf8), "{e:?}");
        assert_eq!(e.code(), "account_field_not_utf8");
        assert_eq!(e.kind(), crate::ErrorKind::Invalid);
    }
}
