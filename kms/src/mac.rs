//! Transaction MACs and key check values, computed with HSM primitives.
//!
//! Pure functions over [`Hsm`]: no caching, no catalog. The key hierarchy above
//! decides which HSM objects to pass in ([`MacKeys`]); the caller also checks
//! that the algorithm's key family matches the key's.
//!
//! | algorithm | HSM calls | host side |
//! |---|---|---|
//! | `ISO9797-1-M1-TDES` | `DES3_CBC` (IV 0) over the padded message under TAK | padding; keep the last block |
//! | `ISO9797-1-M3` | vendor X9.19 mechanism, or `DES3_CBC` under K1K1 over blocks 1..n-1, then `DES3_CBC` of block n under TAK with that IV | padding; the chaining value |
//! | `CMAC-TDES`, `CMAC-AES` | `DES3_CMAC`, `AES_CMAC` | none |
//! | `CUP-ECB` | two `DES3_ECB` blocks under TAK | XOR of the zero-padded blocks, hex encoding, one XOR |
//!
//! SoftHSM (and PKCS#11 generally) has no DES3 CBC-MAC mechanism and no retail
//! MAC; the chaining values of the emulations pass through host memory, which
//! is the accepted cost of the emulation. Key bytes never do.
//!
//! Must not: put key or MAC bytes in an error; compare MACs in variable time.

use subtle::ConstantTimeEq;

use crate::error::{KmsError, Result};
use crate::hsm::{Cipher, Hsm, MacMechanism, ObjectId};
use crate::types::{Kcv, KcvMethod, MacAlgorithm, Padding};

/// Largest message a MAC is computed over.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

const DES_BLOCK: usize = 8;
const ZERO_IV: [u8; 8] = [0; 8];

/// HSM objects a MAC needs. For `ISO9797-1-M3` without a vendor mechanism the
/// server holds `TAK` (K1‖K2) and `K1K1` (a DES2 key whose halves are both K1,
/// i.e. single DES); every other algorithm uses `tak` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacKeys {
    pub tak: ObjectId,
    pub k1k1: Option<ObjectId>,
}

/// The full-length MAC of `msg`: 8 bytes (16 for `CMAC-AES`); `CUP-ECB` gives
/// its 8 ASCII hex characters.
///
/// `padding` is required (method 1 or 2) for the ISO 9797-1 algorithms and
/// refused for the others. A token with a vendor X9.19 mechanism
/// ([`crate::hsm::Capabilities::vendor_retail_mac`]) computes `ISO9797-1-M3`
/// with it instead of the two-key emulation.
pub fn compute(
    hsm: &dyn Hsm,
    keys: &MacKeys,
    alg: MacAlgorithm,
    padding: Option<Padding>,
    msg: &[u8],
) -> Result<Vec<u8>> {
    let input = prepare(alg, padding, msg)?;
    match alg {
        MacAlgorithm::Iso9797M1Tdes => {
            let out = hsm.encrypt(keys.tak, Cipher::Des3Cbc(ZERO_IV), &input)?;
            Ok(last_block(&out, input.len(), "C_Encrypt")?.to_vec())
        }
        MacAlgorithm::Iso9797M3 if hsm.capabilities().vendor_retail_mac => {
            let out = hsm.mac(keys.tak, MacMechanism::Des3RetailVendor, &input)?;
            Ok(leading(&out, DES_BLOCK, "C_Sign")?.to_vec())
        }
        MacAlgorithm::Iso9797M3 => retail_emulated(hsm, keys, &input),
        MacAlgorithm::CmacTdes => {
            let out = hsm.mac(keys.tak, MacMechanism::Des3Cmac, &input)?;
            Ok(leading(&out, DES_BLOCK, "C_Sign")?.to_vec())
        }
        MacAlgorithm::CmacAes => {
            let out = hsm.mac(keys.tak, MacMechanism::AesCmac, &input)?;
            Ok(leading(&out, 16, "C_Sign")?.to_vec())
        }
        MacAlgorithm::CupEcb => {
            // `input` is the 16 hex ASCII bytes of the XORed blocks.
            let (first, second) = input.split_at(DES_BLOCK);
            let e1 = hsm.encrypt(keys.tak, Cipher::Des3Ecb, first)?;
            let e1 = block8(leading(&e1, DES_BLOCK, "C_Encrypt")?);
            let temp = xor8(&e1, &block8(second));
            let e2 = hsm.encrypt(keys.tak, Cipher::Des3Ecb, &temp)?;
            let e2 = block8(leading(&e2, DES_BLOCK, "C_Encrypt")?);
            Ok(cup_mac_field(&e2).to_vec())
        }
    }
}

/// Whether `mac` is the (possibly truncated, leftmost bytes) MAC of `msg`.
/// Lengths follow [`MacAlgorithm::allows_len`]; the comparison is constant-time.
pub fn verify(
    hsm: &dyn Hsm,
    keys: &MacKeys,
    alg: MacAlgorithm,
    padding: Option<Padding>,
    msg: &[u8],
    mac: &[u8],
) -> Result<bool> {
    if !alg.allows_len(mac.len()) {
        return Err(KmsError::invalid(
            "mac",
            format!("{} bytes is not an allowed length for {alg}", mac.len()),
        ));
    }
    let full = compute(hsm, keys, alg, padding, msg)?;
    Ok(truncated_eq(&full, mac))
}

/// The key check value of `key` by `method`, computed by the HSM (never read
/// from `CKA_CHECK_VALUE`: SoftHSM 2.6.1 gets it wrong on derived DES2 keys).
///
/// - `KCV-TDES`: `DES3_ECB(0^8)[0:3]` (the key needs `encrypt`);
/// - `KCV-CMAC`: `AES_CMAC(0^16)[0:3]` (the key needs `sign`);
/// - `KCV-AES-ECB`: `AES_ECB(0^16)[0:3]` (the key needs `encrypt`).
pub fn kcv(hsm: &dyn Hsm, key: ObjectId, method: KcvMethod) -> Result<Kcv> {
    let (out, function) = match method {
        KcvMethod::Tdes => (hsm.encrypt(key, Cipher::Des3Ecb, &[0u8; 8])?, "C_Encrypt"),
        KcvMethod::Cmac => (hsm.mac(key, MacMechanism::AesCmac, &[0u8; 16])?, "C_Sign"),
        KcvMethod::AesEcb => (hsm.encrypt(key, Cipher::AesEcb, &[0u8; 16])?, "C_Encrypt"),
    };
    let head = leading(&out, 3, function)?;
    let mut value = [0u8; 3];
    value.copy_from_slice(head);
    Ok(Kcv { method, value })
}

/// ISO 9797-1 algorithm 3 without a vendor mechanism: single-DES CBC-MAC
/// under K1K1 over blocks 1..n-1, then 3DES-CBC of block n under TAK with that
/// chaining value as IV (= E_K1(D_K2(E_K1(H ⊕ B_n)))).
fn retail_emulated(hsm: &dyn Hsm, keys: &MacKeys, padded: &[u8]) -> Result<Vec<u8>> {
    let split = padded.len().saturating_sub(DES_BLOCK);
    let (head, last) = padded.split_at(split);
    let iv = if head.is_empty() {
        ZERO_IV
    } else {
        let k1k1 = keys.k1k1.ok_or_else(|| {
            KmsError::KeyMissing("K1K1 half-key of the TAK (ISO9797-1-M3 emulation)".into())
        })?;
        let out = hsm.encrypt(k1k1, Cipher::Des3Cbc(ZERO_IV), head)?;
        block8(last_block(&out, head.len(), "C_Encrypt")?)
    };
    let out = hsm.encrypt(keys.tak, Cipher::Des3Cbc(iv), last)?;
    Ok(leading(&out, DES_BLOCK, "C_Encrypt")?.to_vec())
}

/// Validates the request and gives the bytes the HSM operations start from:
/// the padded message (ISO 9797-1), the message itself (CMAC) or the 16 hex
/// ASCII bytes of the XORed blocks (CUP-ECB).
fn prepare(alg: MacAlgorithm, padding: Option<Padding>, msg: &[u8]) -> Result<Vec<u8>> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(KmsError::MessageTooLong {
            len: msg.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    match (alg.takes_padding(), padding) {
        (true, Some(p)) => Ok(p.apply(msg, DES_BLOCK)),
        (true, None) => Err(KmsError::invalid(
            "padding",
            format!("{alg} needs ISO 9797-1 padding method 1 or 2"),
        )),
        (false, Some(_)) => Err(KmsError::invalid(
            "padding",
            format!("{alg} takes no padding method"),
        )),
        (false, None) if alg == MacAlgorithm::CupEcb => Ok(cup_block(msg).to_vec()),
        (false, None) => Ok(msg.to_vec()),
    }
}

/// CUP-ECB host steps 1-2: XOR every 8-byte block of the zero-padded message
/// (an empty message is one zero block), then write the result as 16
/// upper-case hex ASCII bytes.
fn cup_block(msg: &[u8]) -> [u8; 16] {
    let mut acc = [0u8; 8];
    for chunk in msg.chunks(DES_BLOCK) {
        for (a, b) in acc.iter_mut().zip(chunk) {
            *a ^= b;
        }
    }
    hex_upper(&acc)
}

/// CUP-ECB last step: the first 8 upper-case hex characters of the final block.
fn cup_mac_field(block: &[u8; 8]) -> [u8; 8] {
    let hex = hex_upper(block);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hex[..8]);
    out
}

fn hex_upper(b: &[u8; 8]) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; 16];
    for (pair, byte) in out.chunks_exact_mut(2).zip(b) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0F)];
    }
    out
}

fn xor8(a: &[u8; 8], b: &[u8; 8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// The first 8 bytes of `b` (callers pass slices checked to be 8 long).
fn block8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, x) in out.iter_mut().zip(b) {
        *o = *x;
    }
    out
}

/// Constant-time comparison of `mac` with the leftmost bytes of `full`.
fn truncated_eq(full: &[u8], mac: &[u8]) -> bool {
    match full.get(..mac.len()) {
        Some(head) if !mac.is_empty() => bool::from(head.ct_eq(mac)),
        _ => false,
    }
}

/// The first `len` bytes of an HSM output, or an error naming the call if the
/// HSM returned less (never the bytes themselves).
fn leading<'a>(out: &'a [u8], len: usize, function: &'static str) -> Result<&'a [u8]> {
    out.get(..len).ok_or_else(|| short_output(function))
}

/// The last 8-byte block of a CBC ciphertext that must be exactly `expected` long.
fn last_block<'a>(out: &'a [u8], expected: usize, function: &'static str) -> Result<&'a [u8]> {
    if out.len() != expected || expected < DES_BLOCK {
        return Err(short_output(function));
    }
    Ok(&out[expected - DES_BLOCK..])
}

fn short_output(function: &'static str) -> KmsError {
    KmsError::Hsm {
        function,
        problem: "unexpected output length",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn cup_block_xors_and_hex_encodes() {
        // vectors.json cup-ecb-mac-1 intermediates: XOR = B9F9B96AA4FDB57F.
        let b = cup_block(&h("1234567890ABCDEFABCDEF1234567890"));
        assert_eq!(&b, b"B9F9B96AA4FDB57F");
        assert_eq!(
            b.to_vec(),
            h("42394639423936414134464442353746"),
            "hex-ASCII intermediate"
        );
        // cup-ecb-mac-2: the blocks cancel out.
        let m = h("3230313630393133323031363039313332303136303931333230313630393133");
        assert_eq!(&cup_block(&m), b"0000000000000000");
    }

    #[test]
    fn cup_block_zero_pads_the_tail() {
        assert_eq!(&cup_block(&[]), b"0000000000000000");
        assert_eq!(&cup_block(&[0xAB]), b"AB00000000000000");
        assert_eq!(
            &cup_block(&[1, 2, 3, 4, 5, 6, 7, 8, 0xF0]),
            b"F102030405060708"
        );
    }

    #[test]
    fn cup_middle_and_final_steps() {
        // cup-ecb-mac-1: E(first8) = 9FDE90A34CF73B2E →
        // temp = DEEAD6E70EC20C68; E(temp) = E267B6E21913D339 → "E267B6E2".
        let e1 = block8(&h("9FDE90A34CF73B2E"));
        // The second half of the hex-ASCII block is "A4FDB57F".
        let temp = xor8(&e1, &block8(b"A4FDB57F"));
        assert_eq!(temp.to_vec(), h("DEEAD6E70EC20C68"));
        let e2 = block8(&h("E267B6E21913D339"));
        assert_eq!(&cup_mac_field(&e2), b"E267B6E2");
    }

    #[test]
    fn prepare_checks_padding_and_length() {
        let m = b"abc";
        for alg in [MacAlgorithm::Iso9797M1Tdes, MacAlgorithm::Iso9797M3] {
            assert_eq!(prepare(alg, None, m).unwrap_err().code(), "invalid_input");
            assert_eq!(
                prepare(alg, Some(Padding::Method2), m).unwrap(),
                h("6162638000000000")
            );
        }
        for alg in [
            MacAlgorithm::CmacTdes,
            MacAlgorithm::CmacAes,
            MacAlgorithm::CupEcb,
        ] {
            let err = prepare(alg, Some(Padding::Method1), m).unwrap_err();
            assert!(matches!(
                err,
                KmsError::Invalid {
                    field: "padding",
                    ..
                }
            ));
        }
        assert_eq!(prepare(MacAlgorithm::CmacAes, None, m).unwrap(), m.to_vec());
        let long = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            prepare(MacAlgorithm::CmacAes, None, &long),
            Err(KmsError::MessageTooLong { .. })
        ));
        assert!(prepare(MacAlgorithm::CmacAes, None, &long[1..]).is_ok());
    }

    #[test]
    fn truncated_comparison() {
        let full = h("A1C72E74EA3FA9B6");
        assert!(truncated_eq(&full, &full));
        assert!(truncated_eq(&full, &full[..4]));
        assert!(!truncated_eq(&full, &h("A1C72E75")));
        assert!(!truncated_eq(&full, &[]));
        assert!(!truncated_eq(&full[..4], &full));
    }

    #[test]
    fn output_length_checks() {
        assert!(leading(&[1, 2], 3, "C_Sign").is_err());
        assert_eq!(last_block(&[0u8; 16], 16, "x").unwrap(), &[0u8; 8]);
        assert!(last_block(&[0u8; 8], 16, "x").is_err());
        // The error names the call, never bytes.
        let e = leading(&[0xAB; 2], 3, "C_Sign").unwrap_err().to_string();
        assert!(!e.contains("AB") && !e.contains("ab"), "{e}");
    }
}
