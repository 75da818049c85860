//! Domain types that the layers above kms speak in. None of them holds key
//! material; all of them validate on construction so a bad value is refused at
//! the edge with a typed error.

use std::fmt;
use std::str::FromStr;

use crate::error::KmsError;

/// A bank / payment system that owns a key family (seed CN101957958A).
/// Lower-case ASCII letters, digits and `-`, 1 to 32 characters: it becomes part
/// of HSM object labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId(String);

impl IssuerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IssuerId {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(KmsError::invalid(
                "issuer",
                "must be 1-32 characters of a-z, 0-9 and '-'",
            ))
        }
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The 8-byte serial of a device's secure element; `D` in docs/protocol.md §2.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 8]);

impl DeviceId {
    pub fn from_bytes(b: [u8; 8]) -> Self {
        Self(b)
    }
    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }
    /// `D || ~D`, the diversification input of docs/protocol.md §3.2.
    pub fn diversification_block(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.0);
        for (o, b) in out[8..].iter_mut().zip(self.0) {
            *o = !b;
        }
        out
    }
}

impl FromStr for DeviceId {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        let bad = || KmsError::invalid("device_id", "must be 16 hex digits");
        if s.len() != 16 {
            return Err(bad());
        }
        let mut b = [0u8; 8];
        hex::decode_to_slice(s, &mut b).map_err(|_| bad())?;
        Ok(Self(b))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// A primary account number: 12 to 19 decimal digits (ISO/IEC 7812; the Luhn
/// digit is the issuer's business, not checked here). `Debug` and `Display`
/// show only the last four digits, so a PAN that reaches a log line or an
/// error is masked; the clear digits come out only through
/// [`Pan::expose_digits`], where the protocol needs them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pan(String);

impl Pan {
    /// The clear digits, for what the protocol binds to the PAN (a PIN
    /// block's translation, the comparison with a binding's accounts).
    pub fn expose_digits(&self) -> &str {
        &self.0
    }

    /// The last four digits, the part that may be shown.
    pub fn last_four(&self) -> &str {
        &self.0[self.0.len() - 4..]
    }
}

impl FromStr for Pan {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        if (12..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(KmsError::invalid("pan", "12 to 19 decimal digits"))
        }
    }
}

impl TryFrom<String> for Pan {
    type Error = KmsError;
    fn try_from(s: String) -> Result<Self, KmsError> {
        s.parse()
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for _ in 4..self.0.len() {
            f.write_str("*")?;
        }
        f.write_str(self.last_four())
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({self})")
    }
}

/// On the wire a PAN is its digits; a malformed one fails deserialisation.
impl serde::Serialize for Pan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Pan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("a PAN is 12 to 19 decimal digits"))
    }
}

/// Version number of a working-key generation for one (issuer, device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(pub u32);

impl KeyVersion {
    /// The version a database column holds: versions start at 1, so 0, a
    /// negative number or one past `u32` is a corrupt record (`None`).
    pub fn from_stored(v: i64) -> Option<Self> {
        u32::try_from(v).ok().filter(|&v| v > 0).map(Self)
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The symmetric key family of an issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// 2-key TDES, 16-byte keys.
    Tdes,
    /// AES-128.
    Aes,
}

impl KeyFamily {
    pub const ALL: [KeyFamily; 2] = [Self::Tdes, Self::Aes];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdes => "tdes",
            Self::Aes => "aes",
        }
    }
    /// Cipher block size in bytes; also the challenge length.
    pub fn block_len(self) -> usize {
        match self {
            Self::Tdes => 8,
            Self::Aes => 16,
        }
    }
    /// The KCV method keys of this family carry.
    pub fn kcv_method(self) -> KcvMethod {
        match self {
            Self::Tdes => KcvMethod::Tdes,
            Self::Aes => KcvMethod::Cmac,
        }
    }
}

impl FromStr for KeyFamily {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        match s {
            "tdes" => Ok(Self::Tdes),
            "aes" => Ok(Self::Aes),
            _ => Err(KmsError::invalid("family", "must be tdes or aes")),
        }
    }
}

impl fmt::Display for KeyFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a key check value was computed. Always stored and sent beside the value:
/// the same key gives different KCVs under different methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KcvMethod {
    /// `KCV-TDES`: `E_K(0^8)[0:3]`.
    Tdes,
    /// `KCV-CMAC`: `AES-CMAC_K(0^16)[0:3]` (X9.24-1:2017).
    Cmac,
    /// `KCV-AES-ECB`: `E_K(0^16)[0:3]`, the legacy AES method and PKCS#11's
    /// `CKA_CHECK_VALUE`; used only for AES master keys, which may not encrypt.
    AesEcb,
}

impl KcvMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tdes => "KCV-TDES",
            Self::Cmac => "KCV-CMAC",
            Self::AesEcb => "KCV-AES-ECB",
        }
    }
}

impl FromStr for KcvMethod {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        match s {
            "KCV-TDES" => Ok(Self::Tdes),
            "KCV-CMAC" => Ok(Self::Cmac),
            "KCV-AES-ECB" => Ok(Self::AesEcb),
            _ => Err(KmsError::invalid(
                "kcv_method",
                "must be KCV-TDES, KCV-CMAC or KCV-AES-ECB",
            )),
        }
    }
}

/// A 3-byte key check value with its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kcv {
    pub method: KcvMethod,
    pub value: [u8; 3],
}

impl Kcv {
    /// Upper-case hex of the value, as it travels.
    pub fn hex(&self) -> String {
        hex::encode_upper(self.value)
    }

    /// Parses a method name and 6 hex digits.
    pub fn parse(method: &str, value: &str) -> Result<Self, KmsError> {
        let method = method.parse()?;
        let mut v = [0u8; 3];
        if value.len() != 6 || hex::decode_to_slice(value, &mut v).is_err() {
            return Err(KmsError::invalid("kcv", "must be 6 hex digits"));
        }
        Ok(Self { method, value: v })
    }

    /// Constant-time comparison (a KCV is not secret, but habits are cheap).
    pub fn matches(&self, other: &Kcv) -> bool {
        use subtle::ConstantTimeEq;
        self.method == other.method && bool::from(self.value.ct_eq(&other.value))
    }
}

impl fmt::Display for Kcv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.method.as_str(), self.hex())
    }
}

/// The role of a working key derived from `TMK_d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkingKeyRole {
    /// PIN encryption key.
    Tpk,
    /// MAC key.
    Tak,
    /// Data encryption key.
    Tdk,
}

impl WorkingKeyRole {
    pub const ALL: [WorkingKeyRole; 3] = [Self::Tpk, Self::Tak, Self::Tdk];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tpk => "TPK",
            Self::Tak => "TAK",
            Self::Tdk => "TDK",
        }
    }
}

impl FromStr for WorkingKeyRole {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        match s {
            "TPK" => Ok(Self::Tpk),
            "TAK" => Ok(Self::Tak),
            "TDK" => Ok(Self::Tdk),
            _ => Err(KmsError::invalid("role", "must be TPK, TAK or TDK")),
        }
    }
}

/// Transaction MAC algorithms of docs/protocol.md §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// ISO 9797-1 algorithm 1, CBC-MAC with 3DES on every block.
    Iso9797M1Tdes,
    /// ISO 9797-1 algorithm 3, ANSI X9.19 retail MAC.
    Iso9797M3,
    CmacTdes,
    CmacAes,
    /// China UnionPay POS "ECB" MAC; the MAC is 8 ASCII hex characters.
    CupEcb,
}

impl MacAlgorithm {
    pub const ALL: [MacAlgorithm; 5] = [
        Self::Iso9797M1Tdes,
        Self::Iso9797M3,
        Self::CmacTdes,
        Self::CmacAes,
        Self::CupEcb,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iso9797M1Tdes => "ISO9797-1-M1-TDES",
            Self::Iso9797M3 => "ISO9797-1-M3",
            Self::CmacTdes => "CMAC-TDES",
            Self::CmacAes => "CMAC-AES",
            Self::CupEcb => "CUP-ECB",
        }
    }
    /// The key family whose `TAK` this algorithm uses.
    pub fn family(self) -> KeyFamily {
        match self {
            Self::CmacAes => KeyFamily::Aes,
            _ => KeyFamily::Tdes,
        }
    }
    /// Whether a MAC of `len` bytes is allowed.
    pub fn allows_len(self, len: usize) -> bool {
        match self {
            Self::CupEcb => len == 8,
            Self::CmacAes => matches!(len, 4 | 8 | 16),
            _ => matches!(len, 4 | 8),
        }
    }
    /// Whether the algorithm takes an ISO 9797-1 padding method (CMAC pads itself,
    /// CUP-ECB zero-pads by definition).
    pub fn takes_padding(self) -> bool {
        matches!(self, Self::Iso9797M1Tdes | Self::Iso9797M3)
    }
}

impl FromStr for MacAlgorithm {
    type Err = KmsError;
    fn from_str(s: &str) -> Result<Self, KmsError> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| KmsError::invalid("algorithm", "unknown MAC algorithm"))
    }
}

impl fmt::Display for MacAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ISO 9797-1 padding method for block-cipher MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Zero bytes up to the block boundary (none if already aligned; one block if empty).
    Method1,
    /// `0x80` then zero bytes.
    Method2,
}

impl Padding {
    pub fn from_number(n: u8) -> Result<Self, KmsError> {
        match n {
            1 => Ok(Self::Method1),
            2 => Ok(Self::Method2),
            _ => Err(KmsError::invalid("padding", "must be 1 or 2")),
        }
    }

    /// The method's number in ISO 9797-1 (and on the wire).
    pub fn number(self) -> u8 {
        match self {
            Self::Method1 => 1,
            Self::Method2 => 2,
        }
    }

    /// Pads `data` to a multiple of `block` bytes.
    pub fn apply(self, data: &[u8], block: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + block);
        out.extend_from_slice(data);
        match self {
            Self::Method1 => {
                if out.is_empty() || !out.len().is_multiple_of(block) {
                    out.resize(out.len().div_ceil(block).max(1) * block, 0);
                }
            }
            Self::Method2 => {
                out.push(0x80);
                out.resize(out.len().div_ceil(block) * block, 0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!("bank-a".parse::<IssuerId>().is_ok());
        assert!("Bank A".parse::<IssuerId>().is_err());
        assert!("".parse::<IssuerId>().is_err());
        let d: DeviceId = "0123456789abcdef".parse().unwrap();
        assert_eq!(d.to_string(), "0123456789ABCDEF");
        assert_eq!(
            hex::encode_upper(d.diversification_block()),
            "0123456789ABCDEFFEDCBA9876543210"
        );
        assert!("0123".parse::<DeviceId>().is_err());
        assert!("0123456789ABCDEG".parse::<DeviceId>().is_err());
    }

    #[test]
    fn mac_algorithm_names_round_trip() {
        for a in MacAlgorithm::ALL {
            assert_eq!(a.as_str().parse::<MacAlgorithm>().unwrap(), a);
        }
        assert!(MacAlgorithm::CmacAes.allows_len(16));
        assert!(!MacAlgorithm::CmacTdes.allows_len(16));
    }

    #[test]
    fn kcv_parse() {
        let k = Kcv::parse("KCV-TDES", "08D7B4").unwrap();
        assert_eq!(k.to_string(), "KCV-TDES:08D7B4");
        assert!(Kcv::parse("KCV-TDES", "08D7B").is_err());
        assert!(Kcv::parse("SHA1", "08D7B4").is_err());
    }

    #[test]
    fn pan_validates_and_masks_all_but_the_last_four() {
        let pan: Pan = "6222020200112233".parse().unwrap();
        assert_eq!(format!("{pan}"), "************2233");
        assert_eq!(format!("{pan:?}"), "Pan(************2233)");
        assert_eq!(pan.expose_digits(), "6222020200112233");
        assert_eq!(pan.last_four(), "2233");
        let twelve: Pan = "123456789012".parse().unwrap();
        assert_eq!(format!("{twelve}"), "********9012");
        assert!("1234567890123456789".parse::<Pan>().is_ok());
        for bad in [
            "12345678901",
            "12345678901234567890",
            "62220202001122AB",
            "",
        ] {
            assert!(bad.parse::<Pan>().is_err(), "{bad}");
        }
        // Inside a struct's derived Debug, too.
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            pan: Pan,
        }
        let shown = format!("{:?}", Holder { pan: pan.clone() });
        assert!(!shown.contains("622202020011"), "{shown}");
        assert!(shown.contains("2233"), "{shown}");
        // A binding's accounts (strings) compare with its digits.
        let bound = ["6222999988887777".to_owned(), "6222020200112233".to_owned()];
        assert!(bound.iter().any(|a| a == pan.expose_digits()));
    }

    #[test]
    fn pan_serde_is_the_digits_and_refuses_a_malformed_one() {
        let pan: Pan = serde_json::from_str("\"6222020200112233\"").unwrap();
        assert_eq!(serde_json::to_string(&pan).unwrap(), "\"6222020200112233\"");
        let refused = serde_json::from_str::<Pan>("\"62220202001122AB\"").unwrap_err();
        assert!(!refused.to_string().contains("6222"), "{refused}");
    }
}
