//! The key hierarchy end to end through SoftHSM and the catalog: issuer master
//! keys, the init package unwrapped by a software device, working-key offer
//! and KCV confirmation, MAC verification (single and bulk), challenge/response,
//! and the refusals on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyward_kms::catalog::{Catalog, KeyState};
use keyward_kms::hsm::{Pkcs11Hsm, PublicKey};
use keyward_kms::pool::HsmPool;
use keyward_kms::types::{
    DeviceId, IssuerId, Kcv, KeyFamily, KeyVersion, MacAlgorithm, Padding, WorkingKeyRole,
};
use keyward_kms::wrap::WrapScheme;
use keyward_kms::{ErrorKind, Kms, KmsError, MAX_BULK_ITEMS, MacError, MacItem, MacOutcome};
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::device::{self, Family};
use keyward_tests::softhsm::TestToken;
use p256::elliptic_curve::sec1::ToEncodedPoint;

struct Fixture {
    kms: Kms,
    pool: HsmPool,
    db: TestDb,
    _token: TestToken,
}

async fn fixture(sessions: usize) -> Fixture {
    let token = TestToken::create().unwrap();
    let cfg = token.hsm_config(sessions);
    let pin = cfg.pin().unwrap();
    let hsm = Pkcs11Hsm::open(&cfg, pin).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), sessions, 4096).unwrap();
    let db = test_database().await.unwrap();
    let catalog = Catalog::connect(&db.config).await.unwrap();
    let kms = Kms::new(pool.clone(), catalog, 1000).with_rotation_grace(Duration::from_secs(60));
    Fixture {
        kms,
        pool,
        db,
        _token: token,
    }
}

/// A software device holding the keys its init package delivered.
struct SimDevice {
    id: DeviceId,
    family: Family,
    tmk: [u8; 16],
    auth: [u8; 16],
}

fn fam(f: KeyFamily) -> Family {
    match f {
        KeyFamily::Tdes => Family::Tdes,
        KeyFamily::Aes => Family::Aes,
    }
}

fn kcv_of(family: KeyFamily, key: &[u8; 16]) -> Kcv {
    Kcv {
        method: family.kcv_method(),
        value: device::kcv(fam(family), key),
    }
}

/// Initialises a P-256 device through the init package, checking its KCVs.
async fn init_device(kms: &Kms, issuer: &IssuerId, family: KeyFamily, id: &str) -> SimDevice {
    let id: DeviceId = id.parse().unwrap();
    let secret = p256::SecretKey::random(&mut rand::thread_rng());
    let point = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let pkg = kms
        .init_package(issuer, id, PublicKey::P256(point))
        .await
        .unwrap();
    assert_eq!(pkg.scheme, WrapScheme::EcdhP256AesKw);
    let eph = p256::PublicKey::from_sec1_bytes(pkg.ephemeral_point.as_ref().unwrap()).unwrap();
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine());
    let kek: [u8; 32] = shared.raw_secret_bytes().as_slice().try_into().unwrap();
    let mut keys = Vec::new();
    for wk in &pkg.keys {
        let clear: [u8; 16] = device::aes_kw_unwrap(&kek, &wk.wrapped)
            .unwrap()
            .try_into()
            .unwrap();
        assert!(kcv_of(family, &clear).matches(&wk.kcv), "{} KCV", wk.name);
        keys.push(clear);
    }
    SimDevice {
        id,
        family: fam(family),
        tmk: keys[0],
        auth: keys[1],
    }
}

/// Offers, derives on the device, confirms; returns the version and the TAK.
async fn rotate(kms: &Kms, issuer: &IssuerId, dev: &SimDevice) -> (KeyVersion, [u8; 16]) {
    let offer = kms.offer_working_keys(issuer, dev.id).await.unwrap();
    let mut kcvs = Vec::new();
    let mut tak = [0u8; 16];
    for k in &offer.keys {
        let key = device::diversify(dev.family, &dev.tmk, &k.r);
        let kcv = Kcv {
            method: k.kcv.method,
            value: device::kcv(dev.family, &key),
        };
        assert!(kcv.matches(&k.kcv), "working key {:?} KCV", k.role);
        if k.role == WorkingKeyRole::Tak {
            tak = key;
        }
        kcvs.push((k.role, kcv));
    }
    kms.confirm_working_keys(issuer, dev.id, offer.version, &kcvs)
        .await
        .unwrap();
    (offer.version, tak)
}

fn item(
    issuer: &IssuerId,
    dev: &SimDevice,
    version: KeyVersion,
    algorithm: MacAlgorithm,
    padding: Option<u8>,
    message: &[u8],
    mac: Vec<u8>,
) -> MacItem {
    MacItem {
        issuer: issuer.clone(),
        device: dev.id,
        version,
        algorithm,
        padding: padding.map(|p| Padding::from_number(p).unwrap()),
        message: message.to_vec(),
        mac,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tdes_issuer_end_to_end() {
    let f = fixture(2).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-a".parse().unwrap();
    let rec = kms
        .create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    // IMK-TMK, IMK-AUTH and the zone PIN key.
    assert_eq!(rec.master_keys.len(), 3);
    assert!(matches!(
        kms.create_issuer(issuer.clone(), KeyFamily::Tdes).await,
        Err(KmsError::IssuerExists(_))
    ));

    let dev = init_device(kms, &issuer, KeyFamily::Tdes, "0123456789ABCDEF").await;
    let (v1, tak) = rotate(kms, &issuer, &dev).await;
    assert_eq!(v1, KeyVersion(1));

    let msg = b"0200 4000000000000123 000000010000 156 20261122";
    let cases: Vec<(MacAlgorithm, Option<u8>, Vec<u8>)> = vec![
        (
            MacAlgorithm::Iso9797M1Tdes,
            Some(1),
            device::mac_m1_tdes(&tak, msg, 1).to_vec(),
        ),
        (
            MacAlgorithm::Iso9797M1Tdes,
            Some(2),
            device::mac_m1_tdes(&tak, msg, 2)[..4].to_vec(),
        ),
        (
            MacAlgorithm::Iso9797M3,
            Some(1),
            device::mac_x919(&tak, msg, 1).to_vec(),
        ),
        (
            MacAlgorithm::Iso9797M3,
            Some(2),
            device::mac_x919(&tak, msg, 2)[..4].to_vec(),
        ),
        (
            MacAlgorithm::CmacTdes,
            None,
            device::cmac_tdes(&tak, msg).to_vec(),
        ),
        (
            MacAlgorithm::CupEcb,
            None,
            device::mac_cup_ecb(&tak, msg).to_vec(),
        ),
    ];
    for (alg, pad, mac) in &cases {
        let good = item(&issuer, &dev, v1, *alg, *pad, msg, mac.clone());
        assert!(kms.verify_mac(good.clone()).await.unwrap(), "{alg} valid");
        let mut bad = good.clone();
        bad.message[3] ^= 1;
        assert!(
            !kms.verify_mac(bad).await.unwrap(),
            "{alg} tampered message"
        );
        let mut bad = good;
        bad.mac[0] ^= 0x10;
        assert!(!kms.verify_mac(bad).await.unwrap(), "{alg} tampered MAC");
    }

    // Wrong family, wrong length, unknown version: typed errors.
    let wrong_family = item(
        &issuer,
        &dev,
        v1,
        MacAlgorithm::CmacAes,
        None,
        msg,
        vec![0; 8],
    );
    assert!(matches!(
        kms.verify_mac(wrong_family).await,
        Err(KmsError::AlgorithmFamily { .. })
    ));
    let wrong_len = item(
        &issuer,
        &dev,
        v1,
        MacAlgorithm::CmacTdes,
        None,
        msg,
        vec![0; 5],
    );
    assert_eq!(
        kms.verify_mac(wrong_len).await.unwrap_err().code(),
        "invalid_input"
    );
    let unknown = item(
        &issuer,
        &dev,
        KeyVersion(9),
        MacAlgorithm::CmacTdes,
        None,
        msg,
        vec![0; 8],
    );
    assert!(matches!(
        kms.verify_mac(unknown).await,
        Err(KmsError::UnknownKeyVersion { .. })
    ));
    let too_long = item(
        &issuer,
        &dev,
        v1,
        MacAlgorithm::CmacTdes,
        None,
        &vec![0u8; 70_000],
        vec![0; 8],
    );
    assert_eq!(
        kms.verify_mac(too_long).await.unwrap_err().code(),
        "message_too_long"
    );

    // Challenge / response with AUTH_d.
    let challenge = kms.challenge(&issuer).await.unwrap();
    assert_eq!(challenge.len(), 8);
    let response = device::tdes_encrypt_block(&dev.auth, challenge.clone().try_into().unwrap());
    assert!(
        kms.verify_challenge_response(&issuer, dev.id, &challenge, &response)
            .await
            .unwrap()
    );
    let mut wrong = response;
    wrong[7] ^= 1;
    assert!(
        !kms.verify_challenge_response(&issuer, dev.id, &challenge, &wrong)
            .await
            .unwrap()
    );

    // Rotation: v2 active, v1 still valid during its grace period.
    let (v2, tak2) = rotate(kms, &issuer, &dev).await;
    assert_eq!(v2, KeyVersion(2));
    let versions = kms.key_versions(&issuer, dev.id).await.unwrap();
    assert_eq!(versions[0].state, KeyState::Active);
    assert_eq!(versions[1].state, KeyState::Retiring);
    let m2 = device::cmac_tdes(&tak2, msg).to_vec();
    assert!(
        kms.verify_mac(item(
            &issuer,
            &dev,
            v2,
            MacAlgorithm::CmacTdes,
            None,
            msg,
            m2
        ))
        .await
        .unwrap()
    );
    let m1 = device::cmac_tdes(&tak, msg).to_vec();
    assert!(
        kms.verify_mac(item(
            &issuer,
            &dev,
            v1,
            MacAlgorithm::CmacTdes,
            None,
            msg,
            m1
        ))
        .await
        .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kcv_mismatch_rejects_the_version() {
    let f = fixture(1).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-b".parse().unwrap();
    kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    let dev = init_device(kms, &issuer, KeyFamily::Tdes, "1111222233334444").await;
    let offer = kms.offer_working_keys(&issuer, dev.id).await.unwrap();
    let mut kcvs: Vec<(WorkingKeyRole, Kcv)> = offer.keys.iter().map(|k| (k.role, k.kcv)).collect();
    kcvs[1].1.value[0] ^= 1;
    let err = kms
        .confirm_working_keys(&issuer, dev.id, offer.version, &kcvs)
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::KcvMismatch(_)));
    let versions = kms.key_versions(&issuer, dev.id).await.unwrap();
    assert_eq!(versions[0].state, KeyState::Rejected);
    // A rejected version can never be confirmed or used afterwards.
    let good: Vec<(WorkingKeyRole, Kcv)> = offer.keys.iter().map(|k| (k.role, k.kcv)).collect();
    assert!(
        kms.confirm_working_keys(&issuer, dev.id, offer.version, &good)
            .await
            .is_err()
    );
    let m = item(
        &issuer,
        &dev,
        offer.version,
        MacAlgorithm::CmacTdes,
        None,
        b"x",
        vec![0; 8],
    );
    assert_eq!(
        kms.verify_mac(m).await.unwrap_err().code(),
        "key_version_not_usable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aes_issuer_end_to_end() {
    let f = fixture(2).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-aes".parse().unwrap();
    let rec = kms
        .create_issuer(issuer.clone(), KeyFamily::Aes)
        .await
        .unwrap();
    assert_eq!(rec.master_keys[0].kcv.method.as_str(), "KCV-AES-ECB");
    let dev = init_device(kms, &issuer, KeyFamily::Aes, "A0A1A2A3A4A5A6A7").await;
    let (v, tak) = rotate(kms, &issuer, &dev).await;
    let msg = b"load 100.00 EUR";
    for len in [4usize, 8, 16] {
        let mac = device::cmac_aes(&tak, msg)[..len].to_vec();
        assert!(
            kms.verify_mac(item(
                &issuer,
                &dev,
                v,
                MacAlgorithm::CmacAes,
                None,
                msg,
                mac
            ))
            .await
            .unwrap()
        );
    }
    let challenge = kms.challenge(&issuer).await.unwrap();
    assert_eq!(challenge.len(), 16);
    let response = device::aes_encrypt_block(&dev.auth, challenge.clone().try_into().unwrap());
    assert!(
        kms.verify_challenge_response(&issuer, dev.id, &challenge, &response)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_device_gets_an_oaep_package() {
    use rsa::traits::PublicKeyParts;
    let f = fixture(1).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-rsa".parse().unwrap();
    kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let public = PublicKey::Rsa {
        modulus: private.n().to_bytes_be(),
        exponent: private.e().to_bytes_be(),
    };
    let id: DeviceId = "5555666677778888".parse().unwrap();
    let pkg = kms.init_package(&issuer, id, public).await.unwrap();
    assert_eq!(pkg.scheme, WrapScheme::RsaOaepSha1);
    for wk in &pkg.keys {
        let clear = private
            .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &wk.wrapped)
            .unwrap();
        let clear: [u8; 16] = clear.try_into().unwrap();
        assert!(kcv_of(KeyFamily::Tdes, &clear).matches(&wk.kcv));
    }
    // Short RSA keys are refused before the HSM is asked.
    let small = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let err = kms
        .init_package(
            &issuer,
            id,
            PublicKey::Rsa {
                modulus: small.n().to_bytes_be(),
                exponent: small.e().to_bytes_be(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input");
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_verify_answers_in_order() {
    let f = fixture(2).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-bulk".parse().unwrap();
    kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    let mut devices = Vec::new();
    for i in 0..4u8 {
        let dev = init_device(
            kms,
            &issuer,
            KeyFamily::Tdes,
            &format!("00000000000000{i:02X}"),
        )
        .await;
        let (v, tak) = rotate(kms, &issuer, &dev).await;
        devices.push((dev, v, tak));
    }
    let mut items = Vec::new();
    let mut expected = Vec::new();
    for n in 0..2000usize {
        let (dev, v, tak) = &devices[n % devices.len()];
        let msg = format!("txn {n}").into_bytes();
        let mut mac = device::mac_x919(tak, &msg, 2).to_vec();
        let (version, want) = match n % 5 {
            0 => {
                mac[2] ^= 4;
                (*v, MacOutcome::Invalid)
            }
            1 => (
                KeyVersion(77),
                MacOutcome::Error(MacError::UnknownKeyVersion),
            ),
            _ => (*v, MacOutcome::Valid),
        };
        items.push(item(
            &issuer,
            dev,
            version,
            MacAlgorithm::Iso9797M3,
            Some(2),
            &msg,
            mac,
        ));
        expected.push(want);
    }
    items.push(MacItem {
        issuer: "nobody".parse().unwrap(),
        ..items[2].clone()
    });
    expected.push(MacOutcome::Error(MacError::UnknownIssuer));
    let outcomes = kms.verify_macs(items).await.unwrap();
    assert_eq!(outcomes, expected);
    assert!(kms.stats().cache_hits > 1000);
}

/// Each `Kms` holds working-key records in memory; a change made through
/// another one (another replica: its own catalog connections and records)
/// holds on this one from its next call, and a grace period ends on time
/// whether or not the retirement job has run.
#[tokio::test(flavor = "multi_thread")]
async fn records_in_memory_follow_changes_made_by_another_replica() {
    let f = fixture(2).await;
    let a = &f.kms;
    let catalog = Catalog::connect(&f.db.config).await.unwrap();
    let b = Kms::new(f.pool.clone(), catalog, 1000).with_rotation_grace(Duration::from_millis(400));
    let issuer: IssuerId = "bank-replicas".parse().unwrap();
    a.create_issuer(issuer.clone(), KeyFamily::Aes)
        .await
        .unwrap();
    let dev = init_device(a, &issuer, KeyFamily::Aes, "00000000000000A1").await;
    let (v1, tak1) = rotate(a, &issuer, &dev).await;
    let msg = b"replica txn".to_vec();
    let mac_item = |version, tak: &[u8; 16]| {
        item(
            &issuer,
            &dev,
            version,
            MacAlgorithm::CmacAes,
            None,
            &msg,
            device::cmac_aes(tak, &msg).to_vec(),
        )
    };
    // A holds v1 now.
    assert!(a.verify_mac(mac_item(v1, &tak1)).await.unwrap());
    assert_eq!(
        a.verify_macs(vec![mac_item(v1, &tak1)]).await.unwrap(),
        vec![MacOutcome::Valid]
    );

    // B rotates with a 400 ms grace: v1 is still good on A, then not, with
    // no job run in between.
    let (v2, tak2) = rotate(&b, &issuer, &dev).await;
    assert!(a.verify_mac(mac_item(v1, &tak1)).await.unwrap());
    assert!(a.verify_mac(mac_item(v2, &tak2)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.verify_macs(vec![mac_item(v1, &tak1), mac_item(v2, &tak2)])
            .await
            .unwrap(),
        vec![
            MacOutcome::Error(MacError::KeyVersionNotUsable),
            MacOutcome::Valid
        ]
    );
    let err = a.verify_mac(mac_item(v1, &tak1)).await.unwrap_err();
    assert!(
        matches!(err, KmsError::KeyVersionNotUsable { .. }),
        "{err:?}"
    );

    // B retires the device: A, which holds v2, refuses it on its next call.
    assert!(b.retire_device_keys(dev.id).await.unwrap() >= 1);
    assert_eq!(
        a.verify_macs(vec![mac_item(v2, &tak2)]).await.unwrap(),
        vec![MacOutcome::Error(MacError::KeyVersionNotUsable)]
    );
    let err = a.verify_mac(mac_item(v2, &tak2)).await.unwrap_err();
    assert!(
        matches!(err, KmsError::KeyVersionNotUsable { .. }),
        "{err:?}"
    );

    // The change log is pruned by age only: nothing this young goes.
    assert_eq!(a.prune_key_changes().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_verify_refuses_a_batch_over_the_limit() {
    let f = fixture(1).await;
    let kms = &f.kms;
    let issuer: IssuerId = "bank-limit".parse().unwrap();
    kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    let dev = init_device(kms, &issuer, KeyFamily::Tdes, "00000000000000AA").await;
    let (v, tak) = rotate(kms, &issuer, &dev).await;
    let one = item(
        &issuer,
        &dev,
        v,
        MacAlgorithm::Iso9797M3,
        Some(2),
        b"txn",
        device::mac_x919(&tak, b"txn", 2).to_vec(),
    );

    let over = vec![one.clone(); MAX_BULK_ITEMS + 1];
    let before = kms.stats().hsm_completed;
    let err = kms.verify_macs(over).await.unwrap_err();
    assert!(
        matches!(err, KmsError::TooManyItems { len, max } if len == MAX_BULK_ITEMS + 1 && max == MAX_BULK_ITEMS),
        "{err}"
    );
    assert_eq!(err.code(), "too_many_items");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    // Nothing was checked: no HSM job ran for the refused batch.
    assert_eq!(kms.stats().hsm_completed, before);

    // At the limit is fine.
    let at = vec![one; MAX_BULK_ITEMS];
    let outcomes = kms.verify_macs(at).await.unwrap();
    assert_eq!(outcomes.len(), MAX_BULK_ITEMS);
    assert!(outcomes.iter().all(|o| *o == MacOutcome::Valid));
}

#[tokio::test(flavor = "multi_thread")]
async fn master_keys_are_locked_down_on_the_token() {
    let f = fixture(1).await;
    let issuer: IssuerId = "bank-c".parse().unwrap();
    f.kms
        .create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    // pkcs11-tool (opensc) shows what an auditor would see.
    let text = f._token.list_objects("secrkey").unwrap();
    assert!(text.contains("keyward/bank-c/IMK-TMK"), "{text}");
    assert!(text.contains("keyward/bank-c/IMK-AUTH"), "{text}");
    assert!(text.contains("keyward/bank-c/ZPK"), "{text}");
    for block in text.split("Secret Key Object").skip(1) {
        if block.contains("keyward/bank-c/ZPK") {
            // The zone PIN key only encrypts (PIN blocks translated to it);
            // nothing may decrypt under it or derive from it.
            assert!(block.contains("encrypt"), "{block}");
            assert!(
                !block.contains("decrypt") && !block.contains("derive"),
                "{block}"
            );
        } else {
            assert!(
                block.contains("Usage:") && block.contains("derive"),
                "{block}"
            );
            assert!(
                !block.contains("encrypt"),
                "master key must not encrypt: {block}"
            );
        }
        assert!(
            block.contains("Access:") && block.contains("sensitive"),
            "{block}"
        );
        assert!(block.contains("never extractable"), "{block}");
    }
    // The probe names a missing mechanism instead of failing later.
    let hsm_ok = f
        .kms
        .probe_families(&[KeyFamily::Tdes, KeyFamily::Aes])
        .await;
    assert!(hsm_ok.is_ok());
}
