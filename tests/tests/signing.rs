//! Token key pairs (CA, TLS, permit keys): generated in SoftHSM, signatures
//! checked in software with the public key only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyward_kms::Kms;
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{KeyPairKind, Pkcs11Hsm, PublicKey, SignMechanism};
use keyward_kms::pool::HsmPool;
use keyward_tests::db::test_database;
use keyward_tests::softhsm::TestToken;

#[tokio::test(flavor = "multi_thread")]
async fn p256_and_rsa_keys_sign_in_the_hsm() {
    let token = TestToken::create().unwrap();
    let cfg = token.hsm_config(2);
    let hsm = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), 2, 100).unwrap();
    let db = test_database().await.unwrap();
    let kms = Kms::new(pool, Catalog::connect(&db.config).await.unwrap(), 100);

    let (ec, created) = kms
        .ensure_signing_key("ca/root", KeyPairKind::P256)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = kms
        .ensure_signing_key("ca/root", KeyPairKind::P256)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.public_key(), ec.public_key());
    let PublicKey::P256(point) = ec.public_key() else {
        panic!("not EC")
    };
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    let sig = ec
        .sign(SignMechanism::EcdsaSha256, b"to be signed")
        .await
        .unwrap();
    let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
    use p256::ecdsa::signature::Verifier;
    vk.verify(b"to be signed", &sig).unwrap();
    assert!(vk.verify(b"to be signed!", &sig).is_err());
    // Synchronous callers (rcgen, rustls) go through the same pool.
    let blocking =
        tokio::task::block_in_place(|| ec.sign_blocking(SignMechanism::EcdsaSha256, b"x")).unwrap();
    vk.verify(b"x", &p256::ecdsa::Signature::from_der(&blocking).unwrap())
        .unwrap();

    let (rsa_key, _) = kms
        .ensure_signing_key("tls/server", KeyPairKind::Rsa(2048))
        .await
        .unwrap();
    assert_eq!(rsa_key.kind(), KeyPairKind::Rsa(2048));
    let PublicKey::Rsa { modulus, exponent } = rsa_key.public_key() else {
        panic!("not RSA")
    };
    let pk = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
    )
    .unwrap();
    use sha2::Digest;
    let digest = sha2::Sha256::digest(b"hello");
    let sig = rsa_key
        .sign(SignMechanism::RsaPkcs1Sha256, b"hello")
        .await
        .unwrap();
    pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &sig)
        .unwrap();
    let sig = rsa_key
        .sign(SignMechanism::RsaPssSha256, b"hello")
        .await
        .unwrap();
    pk.verify(rsa::Pss::new::<sha2::Sha256>(), &digest, &sig)
        .unwrap();

    assert_eq!(
        kms.signing_key("nope").await.unwrap_err().code(),
        "key_missing"
    );

    // What an auditor sees: private keys sensitive, never extractable, sign-only.
    let text = token.list_objects("privkey").unwrap();
    let blocks: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{text}");
    for b in blocks {
        assert!(b.contains("Usage:      sign"), "{b}");
        assert!(!b.contains("decrypt") && !b.contains("unwrap"), "{b}");
        assert!(
            b.contains("sensitive") && b.contains("never extractable"),
            "{b}"
        );
    }
}
