//! The device side of docs/protocol.md in software: what a PSAM/ESAM computes.
//!
//! Written from docs/protocol.md alone, with RustCrypto primitives, and sharing no
//! code path with the server, so a test that has the server (HSM) and this
//! module agree checks interoperability, not one implementation against itself.

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use anyhow::{Result, bail, ensure};
use cmac::{Cmac, Mac};
use des::TdesEde2;

/// Key family, as the device knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Tdes,
    Aes,
}

fn tdes(key: &[u8; 16]) -> TdesEde2 {
    TdesEde2::new(GenericArray::from_slice(key))
}

fn aes(key: &[u8; 16]) -> Aes128 {
    Aes128::new(GenericArray::from_slice(key))
}

/// 3DES-ECB of one block.
pub fn tdes_encrypt_block(key: &[u8; 16], block: [u8; 8]) -> [u8; 8] {
    let mut b = GenericArray::from(block);
    tdes(key).encrypt_block(&mut b);
    b.into()
}

/// AES-128-ECB of one block.
pub fn aes_encrypt_block(key: &[u8; 16], block: [u8; 16]) -> [u8; 16] {
    let mut b = GenericArray::from(block);
    aes(key).encrypt_block(&mut b);
    b.into()
}

fn odd_parity(mut k: [u8; 16]) -> [u8; 16] {
    for b in &mut k {
        let ones = (*b >> 1).count_ones();
        *b = (*b & 0xFE) | u8::from(ones % 2 == 0);
    }
    k
}

/// `DIV(K, data)` / `DIV'(K, data)` of docs/protocol.md §3.2.
pub fn diversify(family: Family, key: &[u8; 16], data: &[u8; 16]) -> [u8; 16] {
    match family {
        Family::Tdes => {
            let mut out = [0u8; 16];
            for half in 0..2 {
                let mut block = [0u8; 8];
                block.copy_from_slice(&data[half * 8..half * 8 + 8]);
                out[half * 8..half * 8 + 8].copy_from_slice(&tdes_encrypt_block(key, block));
            }
            odd_parity(out)
        }
        Family::Aes => aes_encrypt_block(key, *data),
    }
}

/// `D || ~D`.
pub fn div_block(device: [u8; 8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&device);
    for i in 0..8 {
        out[8 + i] = !device[i];
    }
    out
}

/// KCV of a key the way docs/protocol.md §3.4 names it for the family.
pub fn kcv(family: Family, key: &[u8; 16]) -> [u8; 3] {
    let full: Vec<u8> = match family {
        Family::Tdes => tdes_encrypt_block(key, [0; 8]).to_vec(),
        Family::Aes => cmac_aes(key, &[0u8; 16]).to_vec(),
    };
    [full[0], full[1], full[2]]
}

/// AES-128-CMAC.
pub fn cmac_aes(key: &[u8; 16], msg: &[u8]) -> [u8; 16] {
    let mut m = <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(key));
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// 2-key TDES CMAC.
pub fn cmac_tdes(key: &[u8; 16], msg: &[u8]) -> [u8; 8] {
    let mut m = <Cmac<TdesEde2> as KeyInit>::new(GenericArray::from_slice(key));
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// ISO 9797-1 padding method 1 or 2 to 8-byte blocks.
pub fn pad(msg: &[u8], method: u8) -> Vec<u8> {
    let mut v = msg.to_vec();
    if method == 2 {
        v.push(0x80);
    }
    while v.is_empty() || !v.len().is_multiple_of(8) {
        v.push(0);
    }
    v
}

/// ISO 9797-1 algorithm 1 with 3DES on every block.
pub fn mac_m1_tdes(key: &[u8; 16], msg: &[u8], padding: u8) -> [u8; 8] {
    let mut h = [0u8; 8];
    for block in pad(msg, padding).chunks(8) {
        for i in 0..8 {
            h[i] ^= block[i];
        }
        h = tdes_encrypt_block(key, h);
    }
    h
}

/// ISO 9797-1 algorithm 3 (ANSI X9.19): single DES under K1, final 3DES.
pub fn mac_x919(key: &[u8; 16], msg: &[u8], padding: u8) -> [u8; 8] {
    let mut k1k1 = [0u8; 16];
    k1k1[..8].copy_from_slice(&key[..8]);
    k1k1[8..].copy_from_slice(&key[..8]);
    let padded = pad(msg, padding);
    let n = padded.len() / 8;
    let mut h = [0u8; 8];
    for (i, block) in padded.chunks(8).enumerate() {
        for j in 0..8 {
            h[j] ^= block[j];
        }
        h = if i + 1 == n {
            tdes_encrypt_block(key, h)
        } else {
            tdes_encrypt_block(&k1k1, h)
        };
    }
    h
}

/// China UnionPay POS "ECB" MAC: 8 ASCII hex characters.
pub fn mac_cup_ecb(key: &[u8; 16], msg: &[u8]) -> [u8; 8] {
    let mut x = [0u8; 8];
    for block in pad(msg, 1).chunks(8) {
        for i in 0..8 {
            x[i] ^= block[i];
        }
    }
    let hex = hex::encode_upper(x).into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hex[..8]);
    let mut t = tdes_encrypt_block(key, first);
    for i in 0..8 {
        t[i] ^= hex[8 + i];
    }
    let e = tdes_encrypt_block(key, t);
    let mut out = [0u8; 8];
    out.copy_from_slice(&hex::encode_upper(e).as_bytes()[..8]);
    out
}

/// RFC 3394 AES key unwrap (AES-256 KEK), for keys of 16 or 24 bytes.
pub fn aes_kw_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        wrapped.len().is_multiple_of(8) && wrapped.len() >= 24,
        "bad wrapped length"
    );
    let cipher = aes::Aes256::new(GenericArray::from_slice(kek));
    let n = wrapped.len() / 8 - 1;
    let mut a = [0u8; 8];
    a.copy_from_slice(&wrapped[..8]);
    let mut r: Vec<[u8; 8]> = wrapped[8..]
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            b
        })
        .collect();
    for j in (0..6).rev() {
        for i in (0..n).rev() {
            let t = (n * j + i + 1) as u64;
            let mut block = [0u8; 16];
            for (k, byte) in t.to_be_bytes().iter().enumerate() {
                block[k] = a[k] ^ byte;
            }
            block[8..].copy_from_slice(&r[i]);
            let mut b = GenericArray::from(block);
            cipher.decrypt_block(&mut b);
            a.copy_from_slice(&b[..8]);
            r[i].copy_from_slice(&b[8..]);
        }
    }
    if a != [0xA6; 8] {
        bail!("AES key unwrap integrity check failed");
    }
    Ok(r.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_matches_published_x919() {
        let key: [u8; 16] = hex::decode("0123456789ABCDEFFEDCBA9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            hex::encode_upper(mac_x919(&key, b"Now is the time for all ", 1)),
            "A1C72E74EA3FA9B6"
        );
    }

    #[test]
    fn software_matches_published_pboc_div() {
        let key: [u8; 16] = hex::decode("0123456789ABCDEFFEDCBA9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        let d: [u8; 8] = hex::decode("1234567890123456").unwrap().try_into().unwrap();
        assert_eq!(
            hex::encode_upper(diversify(Family::Tdes, &key, &div_block(d))),
            "A82FD66425830BD068D91F7FC4F8FB68"
        );
    }
}
