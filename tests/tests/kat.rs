//! Known-answer tests of `keyward_kms::mac` (MACs, KCVs) and of in-HSM
//! diversification, run through SoftHSM with the published vectors of
//! `tests/vectors/vectors.json` (vendored; see `tests/vectors/README.md`).
//!
//! Each HSM test makes its own token and opens one `Pkcs11Hsm` (1 session);
//! known keys are imported as session objects, test-only. Vectors are looked up
//! by id: a missing id fails the test. `every_vector_is_accounted_for` lists
//! what is skipped and why, so a new vector in the file is never ignored
//! silently.
//!
//! Run: `cargo nextest run -p keyward-tests --test kat`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use des::cipher::{BlockEncrypt, KeyInit};
use keyward_kms::KmsError;
use keyward_kms::hsm::{Derivation, Hsm, KeySpec, ObjectId, Pkcs11Hsm, SecretKind, Usage};
use keyward_kms::mac::{self, MacKeys};
use keyward_kms::types::{KcvMethod, MacAlgorithm, Padding};
use keyward_tests::softhsm::TestToken;
use keyward_tests::vectors::{Vector, Vectors};

// ---- the vectors each test uses (ids; a missing id fails) -----------------

const KCV_TDES: &[&str] = &["kcv-tdes-1", "kcv-tdes-2", "kcv-tdes-3", "kcv-tdes-4"];
const KCV_AES: &[&str] = &["kcv-aes-cmac-1", "kcv-aes-legacy-3F41"];
const ALG1_DES: &[&str] = &[
    "iso9797-alg1-des-p1-24",
    "iso9797-alg1-des-p2-24",
    "iso9797-alg1-des-p1-22",
    "iso9797-alg1-des-p2-22",
];
const ALG1_TDES: &[&str] = &["iso9797-alg1-tdes-p1-68656C", "iso9797-alg1-tdes-p2-68656C"];
const ALG3: &[&str] = &[
    "iso9797-alg3-p1-24",
    "iso9797-alg3-p2-24",
    "iso9797-alg3-p1-22",
    "iso9797-alg3-p2-22",
];
const CUP: &[&str] = &["cup-ecb-mac-1", "cup-ecb-mac-2", "cup-ecb-mac-3"];
const AES_CMAC: &[&str] = &[
    "aes-cmac-rfc4493-0",
    "aes-cmac-rfc4493-16",
    "aes-cmac-rfc4493-40",
    "aes192-cmac-0",
    "aes256-cmac-0",
];
/// `kcv-tdes-cmac-1` is a TDES-CMAC of 0^8 (kms has no KCV method for it, but
/// it is one more CMAC-TDES known answer: compare its 5 bytes).
const TDES_CMAC: &[&str] = &[
    "tdes2k-cmac-0",
    "tdes2k-cmac-16",
    "tdes2k-cmac-20",
    "kcv-tdes-cmac-1",
];
const PADDING: &[&str] = &[
    "iso9797-pad1-1234",
    "iso9797-pad1-empty",
    "iso9797-pad2-1234",
];
/// DES3_ECB_ENCRYPT_DATA over 16 bytes: PBOC `D || ~D` (docs/protocol.md §3.2), EMV
/// option A (`Y || ~Y`, the same construction) and the EMV common session key.
const DIVERSIFICATION: &[&str] = &[
    "pboc-div-1234567890123456",
    "emv-optA-4567-01",
    "emv-optA-1234-45",
    "emv-csk-1",
];

/// Vectors not run here, by id prefix, with the reason.
const SKIPPED: &[(&str, &str)] = &[
    ("iso9797-alg1-des-p3-", "padding method 3 is not offered"),
    ("iso9797-alg1-tdes-p3-", "padding method 3 is not offered"),
    ("iso9797-alg3-p3-", "padding method 3 is not offered"),
    ("iso9797-pad3-", "padding method 3 is not offered"),
    (
        "aes-cmac-rfc4493-subkeys",
        "CMAC subkeys stay inside the HSM's CKM_AES_CMAC",
    ),
    ("tdes3k-cmac-", "3-key TDES: Keyward uses DES2 keys only"),
    ("dukpt-", "DUKPT is not implemented by kms"),
    ("pin-iso", "PIN blocks are not part of keyward_kms::mac"),
    ("tr31-", "TR-31 key blocks are not implemented by kms"),
];

// ---- helpers ---------------------------------------------------------------

/// A fresh token and an HSM on it. Field order: the HSM closes its sessions
/// before the token is deleted.
struct Kat {
    hsm: Pkcs11Hsm,
    _token: TestToken,
    v: Vectors,
}

fn setup() -> Kat {
    let v = Vectors::load().expect("loading vectors.json");
    let token = TestToken::create().expect("creating a SoftHSM token");
    let config = token.hsm_config(1);
    let hsm = Pkcs11Hsm::open(&config, config.pin().expect("test PIN")).expect("opening SoftHSM");
    Kat {
        hsm,
        _token: token,
        v,
    }
}

const SIGN: Usage = Usage {
    sign: true,
    ..Usage::NONE
};

/// 8 bytes `K` → `K || K` (single DES as DES2); 16 bytes as they are.
fn as_des2(key: &[u8]) -> Vec<u8> {
    match key.len() {
        8 => [key, key].concat(),
        16 => key.to_vec(),
        n => panic!("not a DES or DES2 key length: {n}"),
    }
}

fn import(hsm: &dyn Hsm, kind: SecretKind, usage: Usage, key: &[u8]) -> ObjectId {
    hsm.import_key(&KeySpec::session(kind, usage), key)
        .expect("importing a test key")
}

/// TAK for a TDES algorithm, with only the usage `kms::service::verify` grants: sign for
/// CMAC, encrypt otherwise; plus K1K1 for the ISO9797-1-M3 emulation.
fn tdes_keys(hsm: &dyn Hsm, alg: MacAlgorithm, key: &[u8]) -> MacKeys {
    let key = as_des2(key);
    let usage = if alg == MacAlgorithm::CmacTdes {
        SIGN
    } else {
        Usage::ENCRYPT
    };
    let tak = import(hsm, SecretKind::Des2, usage, &key);
    let k1k1 = (alg == MacAlgorithm::Iso9797M3).then(|| {
        let k1 = &key[..8];
        import(hsm, SecretKind::Des2, Usage::ENCRYPT, &[k1, k1].concat())
    });
    MacKeys { tak, k1k1 }
}

fn aes_keys(hsm: &dyn Hsm, key: &[u8]) -> MacKeys {
    MacKeys {
        tak: import(hsm, SecretKind::Aes(key.len()), SIGN, key),
        k1k1: None,
    }
}

fn padding(v: &Vector) -> Padding {
    Padding::from_number(v.input_u64("padding").unwrap() as u8).unwrap()
}

fn check_mac(hsm: &dyn Hsm, v: &Vector, alg: MacAlgorithm, keys: &MacKeys, pad: Option<Padding>) {
    let data = v
        .input_hex("data")
        .or_else(|_| v.input_hex("message"))
        .unwrap();
    let expected = v.expected_hex().unwrap();
    let got = mac::compute(hsm, keys, alg, pad, &data).unwrap_or_else(|e| panic!("{}: {e}", v.id));
    assert!(got.len() >= expected.len(), "{}: MAC too short", v.id);
    assert_eq!(
        hex::encode_upper(&got[..expected.len()]),
        hex::encode_upper(&expected),
        "{} ({alg})",
        v.id
    );
}

/// Software 2-key TDES encryption of one block (test reference only).
fn tdes_block(key: &[u8], block: [u8; 8]) -> [u8; 8] {
    let c = des::TdesEde2::new_from_slice(key).unwrap();
    let mut b = block.into();
    c.encrypt_block(&mut b);
    b.into()
}

fn odd_parity(key: &[u8]) -> Vec<u8> {
    key.iter()
        .map(|b| if b.count_ones() % 2 == 1 { *b } else { b ^ 1 })
        .collect()
}

fn invert(d: &[u8]) -> Vec<u8> {
    d.iter().map(|b| !b).collect()
}

// ---- key check values ------------------------------------------------------

#[test]
fn kcv_tdes() {
    let k = setup();
    for id in KCV_TDES {
        let v = k.v.get(id).unwrap();
        let key = import(
            &k.hsm,
            SecretKind::Des2,
            Usage::ENCRYPT,
            &v.input_hex("key").unwrap(),
        );
        let kcv = mac::kcv(&k.hsm, key, KcvMethod::Tdes).unwrap();
        assert_eq!(kcv.method, KcvMethod::Tdes);
        assert_eq!(kcv.value.to_vec(), v.expected_hex().unwrap(), "{id}");
    }
}

#[test]
fn kcv_aes_cmac_and_legacy() {
    let k = setup();
    // X9.24-1:2017 KCV: AES-CMAC of 0^16; the vector gives 5 bytes, kms keeps 3.
    let v = k.v.get(KCV_AES[0]).unwrap();
    let key = import(
        &k.hsm,
        SecretKind::Aes(16),
        SIGN,
        &v.input_hex("key").unwrap(),
    );
    let kcv = mac::kcv(&k.hsm, key, KcvMethod::Cmac).unwrap();
    assert_eq!(
        kcv.value.to_vec(),
        v.expected_hex().unwrap()[..3],
        "{}",
        v.id
    );
    assert_eq!(kcv.to_string(), "KCV-CMAC:08793E");

    // Legacy AES-ECB KCV of the same key: a different value (method matters).
    let v = k.v.get(KCV_AES[1]).unwrap();
    let key = import(
        &k.hsm,
        SecretKind::Aes(16),
        Usage::ENCRYPT,
        &v.input_hex("key").unwrap(),
    );
    let legacy = mac::kcv(&k.hsm, key, KcvMethod::AesEcb).unwrap();
    assert_eq!(legacy.value.to_vec(), v.expected_hex().unwrap(), "{}", v.id);
    assert_ne!(legacy.value, kcv.value);
}

// ---- ISO 9797-1 ------------------------------------------------------------

#[test]
fn iso9797_alg1_single_des() {
    let k = setup();
    for id in ALG1_DES {
        let v = k.v.get(id).unwrap();
        let alg = MacAlgorithm::Iso9797M1Tdes;
        let keys = tdes_keys(&k.hsm, alg, &v.input_hex("key").unwrap());
        check_mac(&k.hsm, v, alg, &keys, Some(padding(v)));
    }
}

#[test]
fn iso9797_alg1_tdes() {
    let k = setup();
    for id in ALG1_TDES {
        let v = k.v.get(id).unwrap();
        let alg = MacAlgorithm::Iso9797M1Tdes;
        let keys = tdes_keys(&k.hsm, alg, &v.input_hex("key").unwrap());
        check_mac(&k.hsm, v, alg, &keys, Some(padding(v)));
    }
}

#[test]
fn iso9797_alg3_retail_mac() {
    let k = setup();
    for id in ALG3 {
        let v = k.v.get(id).unwrap();
        let alg = MacAlgorithm::Iso9797M3;
        let keys = tdes_keys(&k.hsm, alg, &v.input_hex("key").unwrap());
        check_mac(&k.hsm, v, alg, &keys, Some(padding(v)));
    }
}

#[test]
fn iso9797_padding_methods() {
    let v = Vectors::load().unwrap();
    for id in PADDING {
        let v = v.get(id).unwrap();
        let p = if id.starts_with("iso9797-pad1-") {
            Padding::Method1
        } else {
            Padding::Method2
        };
        let block = v.input_u64("block_size").unwrap() as usize;
        let out = p.apply(&v.input_hex("data").unwrap(), block);
        assert_eq!(out, v.expected_hex().unwrap(), "{id}");
    }
}

// ---- CMAC ------------------------------------------------------------------

#[test]
fn aes_cmac() {
    let k = setup();
    for id in AES_CMAC {
        let v = k.v.get(id).unwrap();
        let keys = aes_keys(&k.hsm, &v.input_hex("key").unwrap());
        check_mac(&k.hsm, v, MacAlgorithm::CmacAes, &keys, None);
    }
}

#[test]
fn tdes_cmac_two_key() {
    let k = setup();
    for id in TDES_CMAC {
        let v = k.v.get(id).unwrap();
        let alg = MacAlgorithm::CmacTdes;
        let keys = tdes_keys(&k.hsm, alg, &v.input_hex("key").unwrap());
        if *id == "kcv-tdes-cmac-1" {
            let got = mac::compute(&k.hsm, &keys, alg, None, &[0u8; 8]).unwrap();
            assert_eq!(got[..5].to_vec(), v.expected_hex().unwrap(), "{id}");
        } else {
            check_mac(&k.hsm, v, alg, &keys, None);
        }
    }
}

// ---- CUP-ECB ---------------------------------------------------------------

#[test]
fn cup_ecb_mac() {
    let k = setup();
    for id in CUP {
        let v = k.v.get(id).unwrap();
        let alg = MacAlgorithm::CupEcb;
        let keys = tdes_keys(&k.hsm, alg, &v.input_hex("mak").unwrap());
        let got = mac::compute(&k.hsm, &keys, alg, None, &v.input_hex("mab").unwrap()).unwrap();
        assert_eq!(got, v.expected_str("mac_ascii").unwrap().as_bytes(), "{id}");
        assert_eq!(got, v.expected_field_hex("mac_field_hex").unwrap(), "{id}");
    }
}

// ---- diversification inside the HSM ---------------------------------------

#[test]
fn des3_diversification_by_kcv() {
    let k = setup();
    for id in DIVERSIFICATION {
        let v = k.v.get(id).unwrap();
        let (base, data, odd) = match *id {
            id if id.starts_with("pboc-div-") => {
                let d = v.input_hex("data").unwrap();
                let odd = v.note_hex("odd-parity form = ").unwrap();
                // The notes' form is the expected key with parity forced.
                assert_eq!(odd, odd_parity(&v.expected_hex().unwrap()), "{id}");
                (
                    v.input_hex("key").unwrap(),
                    [d.clone(), invert(&d)].concat(),
                    odd,
                )
            }
            id if id.starts_with("emv-optA-") => {
                let y = v.input_hex("Y").unwrap();
                let data = [y.clone(), invert(&y)].concat();
                (v.input_hex("imk").unwrap(), data, v.expected_hex().unwrap())
            }
            _ => {
                let r = v.input_hex("R").unwrap();
                let (mut left, mut right) = (r.clone(), r);
                left[2] = 0xF0;
                right[2] = 0x0F;
                let data = [left, right].concat();
                (
                    v.input_hex("icc_mk").unwrap(),
                    data,
                    v.expected_hex().unwrap(),
                )
            }
        };
        let base = import(&k.hsm, SecretKind::Des2, Usage::DERIVE, &base);
        let spec = KeySpec::session(SecretKind::Des2, Usage::ENCRYPT);
        let derived = k
            .hsm
            .derive_key(base, Derivation::Des3Ecb, &data, &spec)
            .unwrap();
        let kcv = mac::kcv(&k.hsm, derived, KcvMethod::Tdes).unwrap();
        let soft = tdes_block(&odd, [0; 8]);
        assert_eq!(kcv.value, soft[..3], "{id}");
        // Informational: SoftHSM 2.6.1 stores a wrong value on derived DES2 keys.
        if let Ok(Some(attr)) = k.hsm.check_value(derived)
            && attr != kcv.value
        {
            eprintln!("{id}: SoftHSM CKA_CHECK_VALUE of the derived key disagrees");
        }
    }
}

// ---- verify ----------------------------------------------------------------

#[test]
fn verify_accepts_truncations_and_rejects_a_flipped_bit() {
    let k = setup();
    let cases: &[(&str, MacAlgorithm, &[usize])] = &[
        (
            "iso9797-alg1-tdes-p2-68656C",
            MacAlgorithm::Iso9797M1Tdes,
            &[4, 8],
        ),
        ("iso9797-alg3-p1-24", MacAlgorithm::Iso9797M3, &[4, 8]),
        ("tdes2k-cmac-20", MacAlgorithm::CmacTdes, &[4, 8]),
        ("aes-cmac-rfc4493-40", MacAlgorithm::CmacAes, &[4, 8, 16]),
        ("cup-ecb-mac-3", MacAlgorithm::CupEcb, &[8]),
    ];
    for (id, alg, lens) in cases {
        let v = k.v.get(id).unwrap();
        let (keys, pad, msg, full) = match alg {
            MacAlgorithm::CmacAes => (
                aes_keys(&k.hsm, &v.input_hex("key").unwrap()),
                None,
                v.input_hex("message").unwrap(),
                v.expected_hex().unwrap(),
            ),
            MacAlgorithm::CupEcb => (
                tdes_keys(&k.hsm, *alg, &v.input_hex("mak").unwrap()),
                None,
                v.input_hex("mab").unwrap(),
                v.expected_str("mac_ascii").unwrap().as_bytes().to_vec(),
            ),
            MacAlgorithm::CmacTdes => (
                tdes_keys(&k.hsm, *alg, &v.input_hex("key").unwrap()),
                None,
                v.input_hex("message").unwrap(),
                v.expected_hex().unwrap(),
            ),
            _ => (
                tdes_keys(&k.hsm, *alg, &v.input_hex("key").unwrap()),
                Some(padding(v)),
                v.input_hex("data").unwrap(),
                v.expected_hex().unwrap(),
            ),
        };
        for &len in *lens {
            let good = &full[..len];
            assert!(
                mac::verify(&k.hsm, &keys, *alg, pad, &msg, good).unwrap(),
                "{id}: {len}-byte MAC refused"
            );
            for bit in [0, len * 8 - 1] {
                let mut bad = good.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !mac::verify(&k.hsm, &keys, *alg, pad, &msg, &bad).unwrap(),
                    "{id}: {len}-byte MAC with bit {bit} flipped accepted"
                );
            }
            // The message matters too.
            let mut other = msg.clone();
            other.push(0x01);
            assert!(!mac::verify(&k.hsm, &keys, *alg, pad, &other, good).unwrap());
        }
        for len in [0, 3, 5, 7, 9, 17] {
            let mac = vec![0u8; len];
            let err = mac::verify(&k.hsm, &keys, *alg, pad, &msg, &mac).unwrap_err();
            assert!(
                matches!(err, KmsError::Invalid { field: "mac", .. }),
                "{id}: {len}-byte MAC: {err}"
            );
        }
    }
}

// ---- errors and edge cases -------------------------------------------------

#[test]
fn input_rules_through_the_hsm() {
    let k = setup();
    let v = k.v.get("iso9797-alg3-p1-24").unwrap();
    let key = v.input_hex("key").unwrap();
    let m3 = tdes_keys(&k.hsm, MacAlgorithm::Iso9797M3, &key);
    let data = v.input_hex("data").unwrap();

    // No padding for an ISO 9797-1 algorithm; padding for CMAC / CUP.
    let err = mac::compute(&k.hsm, &m3, MacAlgorithm::Iso9797M3, None, &data).unwrap_err();
    assert!(matches!(
        err,
        KmsError::Invalid {
            field: "padding",
            ..
        }
    ));
    let cmac = tdes_keys(&k.hsm, MacAlgorithm::CmacTdes, &key);
    for alg in [MacAlgorithm::CmacTdes, MacAlgorithm::CupEcb] {
        let err = mac::compute(&k.hsm, &cmac, alg, Some(Padding::Method1), &data).unwrap_err();
        assert!(matches!(
            err,
            KmsError::Invalid {
                field: "padding",
                ..
            }
        ));
    }

    // Too long.
    let long = vec![0u8; mac::MAX_MESSAGE_LEN + 1];
    let err = mac::compute(&k.hsm, &cmac, MacAlgorithm::CmacTdes, None, &long).unwrap_err();
    assert!(matches!(err, KmsError::MessageTooLong { .. }));
    assert!(
        mac::compute(
            &k.hsm,
            &m3,
            MacAlgorithm::Iso9797M3,
            Some(Padding::Method1),
            &long[1..]
        )
        .is_ok()
    );

    // The M3 emulation needs K1K1 for more than one block, not for one.
    let no_half = MacKeys {
        tak: m3.tak,
        k1k1: None,
    };
    let err = mac::compute(
        &k.hsm,
        &no_half,
        MacAlgorithm::Iso9797M3,
        Some(Padding::Method1),
        &data,
    )
    .unwrap_err();
    assert!(matches!(err, KmsError::KeyMissing(_)));
    let one = mac::compute(
        &k.hsm,
        &no_half,
        MacAlgorithm::Iso9797M3,
        Some(Padding::Method1),
        b"12345678",
    )
    .unwrap();
    let with_half = mac::compute(
        &k.hsm,
        &m3,
        MacAlgorithm::Iso9797M3,
        Some(Padding::Method1),
        b"12345678",
    )
    .unwrap();
    assert_eq!(one, with_half);

    // A vendor X9.19 mechanism configured (a capability of the module) that
    // the token does not offer: the token refuses it, and the seam says so.
    let mut retail_config = k._token.hsm_config(1);
    retail_config.mechanisms.des3_retail_mac = Some(0x8000_0150);
    let retail = Pkcs11Hsm::open(&retail_config, retail_config.pin().expect("test PIN"))
        .expect("opening SoftHSM");
    assert!(retail.capabilities().vendor_retail_mac);
    let retail_keys = MacKeys {
        tak: import(&retail, SecretKind::Des2, SIGN, &as_des2(&key)),
        k1k1: None,
    };
    let err = mac::compute(
        &retail,
        &retail_keys,
        MacAlgorithm::Iso9797M3,
        Some(Padding::Method1),
        &data,
    )
    .unwrap_err();
    assert_eq!(err.code(), "hsm_mechanism_missing", "{err}");

    // No error message carries key or MAC bytes.
    let msg = err.to_string().to_uppercase();
    assert!(!msg.contains(&hex::encode_upper(&key[..4])), "{msg}");
}

/// Every length 0..=40 and both paddings against a software reference (the
/// RustCrypto `des`/`aes`/`cmac` crates), for the block-boundary cases the
/// published vectors do not reach (e.g. a one-block retail MAC).
#[test]
fn software_cross_check_all_lengths() {
    use cmac::Mac;
    let k = setup();
    let tdes_key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
    let aes_key = hex::decode("2B7E151628AED2A6ABF7158809CF4F3C").unwrap();
    let m1 = tdes_keys(&k.hsm, MacAlgorithm::Iso9797M1Tdes, &tdes_key);
    let m3 = tdes_keys(&k.hsm, MacAlgorithm::Iso9797M3, &tdes_key);
    let ct = tdes_keys(&k.hsm, MacAlgorithm::CmacTdes, &tdes_key);
    let ca = aes_keys(&k.hsm, &aes_key);
    let k1k1 = [&tdes_key[..8], &tdes_key[..8]].concat();

    let cbc = |key: &[u8], iv: [u8; 8], data: &[u8]| -> [u8; 8] {
        let mut h = iv;
        for block in data.chunks(8) {
            let mut x = [0u8; 8];
            for i in 0..8 {
                x[i] = h[i] ^ block[i];
            }
            h = tdes_block(key, x);
        }
        h
    };

    for len in 0..=40usize {
        let msg: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        for pad in [Padding::Method1, Padding::Method2] {
            let padded = pad.apply(&msg, 8);
            let want1 = cbc(&tdes_key, [0; 8], &padded);
            let got =
                mac::compute(&k.hsm, &m1, MacAlgorithm::Iso9797M1Tdes, Some(pad), &msg).unwrap();
            assert_eq!(got, want1, "M1 len {len} {pad:?}");

            let split = padded.len() - 8;
            let h = cbc(&k1k1, [0; 8], &padded[..split]);
            let want3 = cbc(&tdes_key, h, &padded[split..]);
            let got = mac::compute(&k.hsm, &m3, MacAlgorithm::Iso9797M3, Some(pad), &msg).unwrap();
            assert_eq!(got, want3, "M3 len {len} {pad:?}");
        }

        let mut c = <cmac::Cmac<des::TdesEde2> as KeyInit>::new_from_slice(&tdes_key).unwrap();
        c.update(&msg);
        let got = mac::compute(&k.hsm, &ct, MacAlgorithm::CmacTdes, None, &msg).unwrap();
        assert_eq!(
            got,
            c.finalize().into_bytes().to_vec(),
            "CMAC-TDES len {len}"
        );

        let mut c = <cmac::Cmac<aes::Aes128> as KeyInit>::new_from_slice(&aes_key).unwrap();
        c.update(&msg);
        let got = mac::compute(&k.hsm, &ca, MacAlgorithm::CmacAes, None, &msg).unwrap();
        assert_eq!(
            got,
            c.finalize().into_bytes().to_vec(),
            "CMAC-AES len {len}"
        );

        // CUP-ECB: XOR of zero-padded blocks, hex, E, XOR, E, first 8 hex chars.
        let mut x = [0u8; 8];
        for block in msg.chunks(8) {
            for (a, b) in x.iter_mut().zip(block) {
                *a ^= b;
            }
        }
        let hx = hex::encode_upper(x).into_bytes();
        let e1 = tdes_block(&tdes_key, hx[..8].try_into().unwrap());
        let mut t = [0u8; 8];
        for i in 0..8 {
            t[i] = e1[i] ^ hx[8 + i];
        }
        let want = hex::encode_upper(tdes_block(&tdes_key, t)).as_bytes()[..8].to_vec();
        let got = mac::compute(&k.hsm, &m1, MacAlgorithm::CupEcb, None, &msg).unwrap();
        assert_eq!(got, want, "CUP-ECB len {len}");
    }
}

// ---- bookkeeping -------------------------------------------------------------

#[test]
fn every_vector_is_accounted_for() {
    let v = Vectors::load().unwrap();
    let covered: Vec<&str> = [
        KCV_TDES,
        KCV_AES,
        ALG1_DES,
        ALG1_TDES,
        ALG3,
        CUP,
        AES_CMAC,
        TDES_CMAC,
        PADDING,
        DIVERSIFICATION,
    ]
    .concat();
    for id in &covered {
        v.get(id).unwrap();
    }
    let mut unknown = Vec::new();
    for vector in v.all() {
        let id = vector.id.as_str();
        let skipped = SKIPPED.iter().any(|(p, _)| id.starts_with(p));
        let used = covered.contains(&id);
        assert!(!(skipped && used), "{id} is both covered and skipped");
        if !skipped && !used {
            unknown.push(id.to_owned());
        }
    }
    assert!(
        unknown.is_empty(),
        "vectors neither tested nor skipped with a reason: {unknown:?}"
    );
    for (prefix, _) in SKIPPED {
        v.with_prefix(prefix).unwrap();
    }
}
