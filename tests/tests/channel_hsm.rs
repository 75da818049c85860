//! The HSM side of the secure channel against SoftHSM, checked against the
//! card side computed in software (`rsa`, `aes`, `cmac` and a small GCM):
//! the channel key, the pre-master unwrap and its one refusal, the PRF key
//! schedule, Finished and exporter MACs, records both ways, rekey, and
//! state wrapped on one replica and resumed on another.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::Aes256;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use cmac::{Cmac, Mac};
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{KeyPairKind, OaepHash, Pkcs11Hsm, PublicKey, SignMechanism};
use keyward_kms::pool::HsmPool;
use keyward_kms::service::{CHANNEL_KEY_LABEL, ChannelKeyUse, ChannelSchedule, ChannelSecret};
use keyward_kms::{ErrorKind, Kms, KmsError};
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::softhsm::TestToken;
use rand::RngCore;
use sha2::{Digest, Sha256};

const LABELS: [&str; 5] = ["c2s key", "s2c key", "finished", "exporter", "resumption"];
/// What each of [`LABELS`] is for.
const USES: [ChannelKeyUse; 5] = [
    ChannelKeyUse::Traffic,
    ChannelKeyUse::Traffic,
    ChannelKeyUse::Mac,
    ChannelKeyUse::Mac,
    ChannelKeyUse::Resumption,
];

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The spec's PRF: AES-256 of the two 16-byte blocks of `data` under `key`.
fn prf(key: &[u8; 32], data: &[u8; 32]) -> [u8; 32] {
    let c = Aes256::new(GenericArray::from_slice(key));
    let mut out = *data;
    for block in out.chunks_exact_mut(16) {
        c.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

fn cmac(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let mut m = <Cmac<Aes256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

/// GF(2^128) multiplication of GCM (NIST SP 800-38D, algorithm 1).
fn gmul(x: u128, y: u128) -> u128 {
    let r = 0xE1u128 << 120;
    let (mut z, mut v) = (0u128, y);
    for i in 0..128 {
        if (x >> (127 - i)) & 1 == 1 {
            z ^= v;
        }
        v = if v & 1 == 1 { (v >> 1) ^ r } else { v >> 1 };
    }
    z
}

/// AES-256-GCM with a 12-byte nonce: ciphertext ‖ tag (encrypt), or the
/// plaintext when the tag verifies (decrypt). The card side of the test.
fn gcm(
    key: &[u8; 32],
    nonce: &[u8; 12],
    aad: &[u8],
    data: &[u8],
    encrypt: bool,
) -> Option<Vec<u8>> {
    let c = Aes256::new(GenericArray::from_slice(key));
    let e = |b: [u8; 16]| {
        let mut b = GenericArray::from(b);
        c.encrypt_block(&mut b);
        u128::from_be_bytes(b.into())
    };
    let h = e([0; 16]);
    let counter = |i: u32| {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(nonce);
        b[12..].copy_from_slice(&i.to_be_bytes());
        b
    };
    let (body, tag) = if encrypt {
        (data, None)
    } else {
        let (b, t) = data.split_at(data.len().checked_sub(16)?);
        (b, Some(t))
    };
    let mut out = Vec::with_capacity(body.len());
    for (i, chunk) in body.chunks(16).enumerate() {
        let ks = e(counter(i as u32 + 2)).to_be_bytes();
        out.extend(chunk.iter().zip(ks).map(|(a, k)| a ^ k));
    }
    let ct: &[u8] = if encrypt { &out } else { body };
    let mut x = 0u128;
    for part in [aad, ct] {
        for chunk in part.chunks(16) {
            let mut b = [0u8; 16];
            b[..chunk.len()].copy_from_slice(chunk);
            x = gmul(x ^ u128::from_be_bytes(b), h);
        }
    }
    let lens = ((aad.len() as u128 * 8) << 64) | (ct.len() as u128 * 8);
    x = gmul(x ^ lens, h);
    let t = (x ^ e(counter(1))).to_be_bytes();
    match tag {
        None => {
            out.extend_from_slice(&t);
            Some(out)
        }
        Some(given) => (given == t).then_some(out),
    }
}

#[test]
fn software_gcm_meets_the_nist_vectors() {
    // SP 800-38D / McGrew-Viega test cases 13 and 14 (AES-256, zero key and IV).
    let (k, n) = ([0u8; 32], [0u8; 12]);
    assert_eq!(
        hex::encode(gcm(&k, &n, &[], &[], true).unwrap()),
        "530f8afbc74536b9a963b4f1c4cb738b"
    );
    let sealed = gcm(&k, &n, &[], &[0u8; 16], true).unwrap();
    assert_eq!(
        hex::encode(&sealed),
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
    );
    assert_eq!(gcm(&k, &n, &[], &sealed, false).unwrap(), [0u8; 16]);
    let mut bad = sealed.clone();
    bad[3] ^= 1;
    assert!(gcm(&k, &n, &[], &bad, false).is_none());
}

fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (a, b) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *a ^= b;
    }
    n
}

fn iv(h: &[u8; 32], dir: &str) -> [u8; 12] {
    let label = format!("keyward channel v1 {dir} iv");
    sha(&[label.as_bytes(), h])[..12].try_into().unwrap()
}

/// A record header as the AAD: magic, version, channel id, type, sequence.
fn aad(channel: &[u8; 16], seq: u64) -> Vec<u8> {
    [b"KWCR".as_slice(), &[1], channel, &[1], &seq.to_be_bytes()].concat()
}

fn replica(token: &TestToken, db: &TestDb) -> impl std::future::Future<Output = Kms> {
    let cfg = token.hsm_config(2);
    let config = db.config.clone();
    async move {
        let hsm = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap();
        let pool = HsmPool::start(Arc::new(hsm), 2, 1000).unwrap();
        Kms::new(pool, Catalog::connect(&config).await.unwrap(), 100)
    }
}

fn rsa_public(p: &PublicKey) -> rsa::RsaPublicKey {
    let PublicKey::Rsa { modulus, exponent } = p else {
        panic!("channel key is not RSA")
    };
    rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
    )
    .unwrap()
}

/// The card's RSA-OAEP encryption of a pre-master, with the hash the
/// server's module unwraps with.
fn encrypt_pms(pk: &rsa::RsaPublicKey, hash: OaepHash, pms: &[u8]) -> Vec<u8> {
    let padding = match hash {
        OaepHash::Sha1 => rsa::Oaep::new::<sha1::Sha1>(),
        OaepHash::Sha256 => rsa::Oaep::new::<Sha256>(),
    };
    pk.encrypt(&mut rand::thread_rng(), padding, pms).unwrap()
}

/// The server's schedule for transcript hash `h`: MS, then the five keys.
async fn schedule(kms: &Kms, pms: &ChannelSecret, h: &[u8; 32]) -> Vec<ChannelSecret> {
    let d_ms = sha(&[b"keyward channel v1 master", h]);
    let ms = kms
        .channel_derive(pms, d_ms, ChannelKeyUse::Secret)
        .await
        .unwrap();
    let items = LABELS
        .iter()
        .zip(USES)
        .map(|(l, u)| (sha(&[b"keyward channel v1 ", l.as_bytes(), h]), u))
        .collect();
    kms.channel_derive_all(&ms, items).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_handshake_records_and_resumption_in_the_hsm() {
    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let kms = replica(&token, &db).await;

    // The channel key: RSA-2048, unwrap only, made once.
    let (public, created) = kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    assert!(created);
    let (again, created) = kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    assert!(!created);
    assert_eq!(public, again);
    let PublicKey::Rsa { modulus, .. } = &public else {
        panic!("not RSA")
    };
    assert_eq!(modulus.len(), 256);
    assert!(kms.ensure_channel_state_kek().await.unwrap());
    assert!(!kms.ensure_channel_state_kek().await.unwrap());
    // It cannot sign, and the auditor's listing shows what it is.
    let as_signer = kms.signing_key(CHANNEL_KEY_LABEL).await.unwrap();
    assert!(
        as_signer
            .sign(SignMechanism::RsaPkcs1Sha256, b"x")
            .await
            .is_err()
    );
    let listing = token.list_objects("privkey").unwrap();
    let entry = listing
        .split("Private Key Object")
        .find(|e| e.contains(CHANNEL_KEY_LABEL))
        .unwrap();
    assert!(entry.contains("Usage:      unwrap"), "{entry}");
    assert!(
        !entry.contains("sign") && !entry.contains("decrypt"),
        "{entry}"
    );
    assert!(entry.contains("never extractable"), "{entry}");
    let kek = token.list_objects("secrkey").unwrap();
    let kek = kek
        .split("Secret Key Object")
        .find(|e| e.contains("keyward/channel/state-kek"))
        .unwrap();
    assert!(kek.contains("Usage:      wrap, unwrap"), "{kek}");
    assert!(kek.contains("never extractable"), "{kek}");

    // The card: a pre-master encrypted to the channel key.
    let pk = rsa_public(&public);
    let hash = kms.channel_oaep_hash(CHANNEL_KEY_LABEL).await.unwrap();
    println!("the module unwraps RSA-OAEP with {hash:?}");
    let mut pms = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut pms);
    let h = sha(&[b"ClientHello ServerHello CardKeyExchange"]);
    let hsm_pms = kms
        .unwrap_premaster(CHANNEL_KEY_LABEL, encrypt_pms(&pk, hash, &pms))
        .await
        .unwrap();
    assert!(!format!("{hsm_pms:?}").contains(&hex::encode(pms)[..8]));
    let keys = schedule(&kms, &hsm_pms, &h).await;
    let [c2s, s2c, finished, exporter, resumption]: [ChannelSecret; 5] = keys.try_into().unwrap();

    // The card's schedule in software.
    let ms = prf(&pms, &sha(&[b"keyward channel v1 master", &h]));
    let card: Vec<[u8; 32]> = LABELS
        .iter()
        .map(|l| prf(&ms, &sha(&[b"keyward channel v1 ", l.as_bytes(), &h])))
        .collect();

    // ServerFinished: the same CMAC, verified in constant time.
    let fin = kms.channel_cmac(&finished, h.to_vec()).await.unwrap();
    assert_eq!(fin, cmac(&card[2], &h));
    assert!(
        kms.channel_cmac_verify(&finished, h.to_vec(), &fin)
            .await
            .unwrap()
    );
    let mut wrong = fin;
    wrong[15] ^= 1;
    assert!(
        !kms.channel_cmac_verify(&finished, h.to_vec(), &wrong)
            .await
            .unwrap()
    );
    assert!(
        !kms.channel_cmac_verify(&finished, h.to_vec(), &fin[..8])
            .await
            .unwrap()
    );
    // The exporter value of a carried request.
    let ctx = [b"keyward channel v1 exporter".as_slice(), b"/v1/login"].concat();
    assert_eq!(
        kms.channel_cmac(&exporter, ctx.clone()).await.unwrap(),
        cmac(&card[3], &ctx)
    );
    // The server's whole opening in one HSM job (the master made and
    // destroyed in it) gives the same Finished MAC, and its wrapped keys
    // unwrap to the card's.
    let again = kms
        .unwrap_premaster(CHANNEL_KEY_LABEL, encrypt_pms(&pk, hash, &pms))
        .await
        .unwrap();
    let input = |l: &str| sha(&[b"keyward channel v1 ", l.as_bytes(), &h]);
    let made = kms
        .channel_establish(
            again,
            ChannelSchedule {
                master_input: sha(&[b"keyward channel v1 master", &h]),
                c2s: input(LABELS[0]),
                s2c: input(LABELS[1]),
                finished: input(LABELS[2]),
                exporter: input(LABELS[3]),
                resumption: input(LABELS[4]),
                finished_data: h.to_vec(),
            },
        )
        .await
        .unwrap();
    assert_eq!(made.finished_mac, fin);
    let back = kms
        .channel_unwrap_state(made.exporter.clone(), ChannelKeyUse::Mac)
        .await
        .unwrap();
    assert_eq!(
        kms.channel_cmac(&back, ctx.clone()).await.unwrap(),
        cmac(&card[3], &ctx)
    );
    for (w, key_use) in [
        (&made.c2s, ChannelKeyUse::Traffic),
        (&made.s2c, ChannelKeyUse::Traffic),
        (&made.resumption, ChannelKeyUse::Resumption),
    ] {
        kms.channel_unwrap_state(w.clone(), key_use).await.unwrap();
    }
    assert!(kms.channel_wrap_state(&hsm_pms).await.is_err());

    // Records, card to server and back, with nonce = iv XOR sequence.
    let channel_id = [7u8; 16];
    let (iv_c2s, iv_s2c) = (iv(&h, "c2s"), iv(&h, "s2c"));
    let sealed = gcm(
        &card[0],
        &nonce(&iv_c2s, 0),
        &aad(&channel_id, 0),
        b"login request",
        true,
    )
    .unwrap();
    let opened = kms
        .channel_open(&c2s, nonce(&iv_c2s, 0), aad(&channel_id, 0), sealed.clone())
        .await
        .unwrap();
    assert_eq!(opened, b"login request");
    let answer = kms
        .channel_seal(
            &s2c,
            nonce(&iv_s2c, 0),
            aad(&channel_id, 0),
            b"login answer".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(answer.len(), b"login answer".len() + 16);
    assert_eq!(
        gcm(
            &card[1],
            &nonce(&iv_s2c, 0),
            &aad(&channel_id, 0),
            &answer,
            false
        )
        .unwrap(),
        b"login answer"
    );
    // Altered, replayed under another sequence, foreign, wrong-direction,
    // truncated: each the one refusal.
    let mut flipped = sealed.clone();
    flipped[2] ^= 0x80;
    let refusals = [
        (&c2s, nonce(&iv_c2s, 0), aad(&channel_id, 0), flipped),
        (&c2s, nonce(&iv_c2s, 1), aad(&channel_id, 1), sealed.clone()),
        (&c2s, nonce(&iv_c2s, 0), aad(&[8u8; 16], 0), sealed.clone()),
        (&s2c, nonce(&iv_c2s, 0), aad(&channel_id, 0), sealed.clone()),
        (
            &c2s,
            nonce(&iv_c2s, 0),
            aad(&channel_id, 0),
            sealed[..sealed.len() - 1].to_vec(),
        ),
        (
            &c2s,
            nonce(&iv_c2s, 0),
            aad(&channel_id, 0),
            sealed[..15].to_vec(),
        ),
    ];
    for (key, n, a, ct) in refusals {
        let e = kms.channel_open(key, n, a, ct).await.unwrap_err();
        assert!(matches!(e, KmsError::ChannelRefused), "{e:?}");
    }
    // A key does only its own job.
    assert!(kms.channel_cmac(&c2s, h.to_vec()).await.is_err());
    assert!(
        kms.channel_seal(&finished, [0; 12], vec![], vec![1])
            .await
            .is_err()
    );
    assert!(kms.channel_wrap_state(&hsm_pms).await.is_err());

    // Rekey: K' = PRF(K, SHA-256("keyward channel v1 rekey" ‖ generation)).
    let d_rekey = sha(&[b"keyward channel v1 rekey", &1u64.to_be_bytes()]);
    let c2s_1 = kms
        .channel_derive(&c2s, d_rekey, ChannelKeyUse::Traffic)
        .await
        .unwrap();
    let card_c2s_1 = prf(&card[0], &d_rekey);
    let sealed = gcm(
        &card_c2s_1,
        &nonce(&iv_c2s, 0),
        &aad(&channel_id, 0),
        b"after rekey",
        true,
    )
    .unwrap();
    assert_eq!(
        kms.channel_open(&c2s_1, nonce(&iv_c2s, 0), aad(&channel_id, 0), sealed)
            .await
            .unwrap(),
        b"after rekey"
    );

    // State wrapped for the database; the handles go; another replica on
    // the same token resumes the channel.
    let wrapped_s2c = kms.channel_wrap_state(&s2c).await.unwrap();
    let wrapped_c2s = kms.channel_wrap_state(&c2s_1).await.unwrap();
    let wrapped_exp = kms.channel_wrap_state(&exporter).await.unwrap();
    let wrapped_res = kms.channel_wrap_state(&resumption).await.unwrap();
    assert_eq!(wrapped_s2c.len(), 40);
    assert!(
        !wrapped_s2c
            .windows(8)
            .any(|w| card[1].windows(8).any(|k| k == w))
    );
    let before = kms
        .channel_seal(
            &s2c,
            nonce(&iv_s2c, 1),
            aad(&channel_id, 1),
            b"sealed before".to_vec(),
        )
        .await
        .unwrap();
    for k in [s2c, c2s_1, exporter, c2s, finished] {
        kms.channel_forget(k).await.unwrap();
    }
    drop((resumption, hsm_pms));

    let other = replica(&token, &db).await;
    let s2c_b = other
        .channel_unwrap_state(wrapped_s2c.clone(), ChannelKeyUse::Traffic)
        .await
        .unwrap();
    assert_eq!(
        other
            .channel_open(&s2c_b, nonce(&iv_s2c, 1), aad(&channel_id, 1), before)
            .await
            .unwrap(),
        b"sealed before"
    );
    let after = other
        .channel_seal(
            &s2c_b,
            nonce(&iv_s2c, 2),
            aad(&channel_id, 2),
            b"sealed after".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        gcm(
            &card[1],
            &nonce(&iv_s2c, 2),
            &aad(&channel_id, 2),
            &after,
            false
        )
        .unwrap(),
        b"sealed after"
    );
    let c2s_b = other
        .channel_unwrap_state(wrapped_c2s, ChannelKeyUse::Traffic)
        .await
        .unwrap();
    let sealed = gcm(
        &card_c2s_1,
        &nonce(&iv_c2s, 1),
        &aad(&channel_id, 1),
        b"on replica b",
        true,
    )
    .unwrap();
    assert_eq!(
        other
            .channel_open(&c2s_b, nonce(&iv_c2s, 1), aad(&channel_id, 1), sealed)
            .await
            .unwrap(),
        b"on replica b"
    );
    let exp_b = other
        .channel_unwrap_state(wrapped_exp, ChannelKeyUse::Mac)
        .await
        .unwrap();
    assert_eq!(
        other.channel_cmac(&exp_b, ctx.clone()).await.unwrap(),
        cmac(&card[3], &ctx)
    );
    let res_b = other
        .channel_unwrap_state(wrapped_res, ChannelKeyUse::Resumption)
        .await
        .unwrap();
    let d = sha(&[b"resumption check"]);
    let probe = other
        .channel_derive(&res_b, d, ChannelKeyUse::Mac)
        .await
        .unwrap();
    assert_eq!(
        other.channel_cmac(&probe, h.to_vec()).await.unwrap(),
        cmac(&prf(&card[4], &d), &h)
    );
    // Tampered or foreign state does not unwrap.
    let mut tampered = wrapped_s2c.clone();
    tampered[20] ^= 1;
    for bad in [tampered, vec![], vec![0u8; 40], vec![0u8; 4096]] {
        let e = other
            .channel_unwrap_state(bad, ChannelKeyUse::Traffic)
            .await
            .unwrap_err();
        assert!(matches!(e, KmsError::CorruptRecord(_)), "{e:?}");
    }
    assert!(
        other
            .channel_unwrap_state(wrapped_s2c, ChannelKeyUse::Secret)
            .await
            .is_err()
    );
    other.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_premaster_is_the_one_refusal() {
    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let kms = replica(&token, &db).await;
    let (public, _) = kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    kms.ensure_channel_state_kek().await.unwrap();
    let pk = rsa_public(&public);
    let hash = kms.channel_oaep_hash(CHANNEL_KEY_LABEL).await.unwrap();
    println!("the module unwraps RSA-OAEP with {hash:?}");
    let mut rng = rand::thread_rng();
    let good = encrypt_pms(&pk, hash, &[0x42; 32]);
    let other = match hash {
        OaepHash::Sha1 => OaepHash::Sha256,
        OaepHash::Sha256 => OaepHash::Sha1,
    };

    let mut flipped = good.clone();
    flipped[100] ^= 1;
    let mut garbage = vec![0u8; 256];
    rng.fill_bytes(&mut garbage);
    // PKCS#1 v1.5 padding of the right length is not OAEP.
    let v15 = pk
        .encrypt(&mut rng, rsa::Pkcs1v15Encrypt, &[0x42; 32])
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte", flipped),
        ("garbage", garbage),
        ("value above the modulus", vec![0xFF; 256]),
        ("short", good[..255].to_vec()),
        ("long", [good.as_slice(), &[0]].concat()),
        ("empty", vec![]),
        ("oversized", vec![1; 4096]),
        ("PKCS#1 v1.5", v15),
        ("16-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 16])),
        ("48-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 48])),
        ("24-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 24])),
        // SoftHSM pads these for RFC 3394: the wrap alone took them.
        ("31-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 31])),
        ("25-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 25])),
        ("40-byte pre-master", encrypt_pms(&pk, hash, &[0x42; 40])),
        ("1-byte pre-master", encrypt_pms(&pk, hash, &[0x42])),
        ("empty pre-master", encrypt_pms(&pk, hash, &[])),
        ("the other OAEP hash", encrypt_pms(&pk, other, &[0x42; 32])),
    ];
    for (what, ct) in cases {
        let e = kms
            .unwrap_premaster(CHANNEL_KEY_LABEL, ct)
            .await
            .unwrap_err();
        assert!(matches!(e, KmsError::ChannelRefused), "{what}: {e:?}");
        assert_eq!(e.code(), "channel_refused");
        assert_eq!(e.kind(), ErrorKind::Forbidden);
        assert_eq!(e.to_string(), "secure channel refused", "{what}");
    }
    // The good one still works; an unknown key label is not a refusal.
    kms.unwrap_premaster(CHANNEL_KEY_LABEL, good.clone())
        .await
        .unwrap();
    assert!(matches!(
        kms.unwrap_premaster("keyward/channel/none", good.clone())
            .await,
        Err(KmsError::KeyMissing(_))
    ));
    // A signing key under a channel label is a misconfiguration (a 500),
    // not a card's refusal.
    kms.ensure_signing_key("keyward/channel/signer", KeyPairKind::Rsa(2048))
        .await
        .unwrap();
    let e = kms
        .unwrap_premaster("keyward/channel/signer", good)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "{e:?}");
    kms.shutdown();
}

/// PKCS#1 v1.5 behind implicit rejection: a good ciphertext gives the
/// card's pre-master; every bad one gives the substitute — never an error,
/// the same for the same ciphertext, another for another.
#[tokio::test(flavor = "multi_thread")]
async fn pkcs1_v15_gives_the_pre_master_or_the_substitute_never_a_refusal() {
    use keyward_kms::service::Pkcs1BadPadding;

    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let kms = replica(&token, &db).await;
    let (public, _) = kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    kms.ensure_channel_state_kek().await.unwrap();
    // No implicit-rejection key: the probe says so, no unwrap runs.
    assert!(matches!(
        kms.probe_channel_pkcs1(CHANNEL_KEY_LABEL).await,
        Err(KmsError::KeyMissing(_))
    ));
    assert!(kms.ensure_channel_implicit_rejection_key().await.unwrap());
    assert!(!kms.ensure_channel_implicit_rejection_key().await.unwrap());
    let probed = kms.probe_channel_pkcs1(CHANNEL_KEY_LABEL).await.unwrap();
    println!("bad PKCS#1 v1.5 padding: the module answers {probed:?}");
    assert!(matches!(
        probed,
        Pkcs1BadPadding::Error | Pkcs1BadPadding::Value
    ));
    let pk = rsa_public(&public);
    let mut rng = rand::thread_rng();
    let v15 = |plain: &[u8]| {
        pk.encrypt(&mut rand::thread_rng(), rsa::Pkcs1v15Encrypt, plain)
            .unwrap()
    };
    // What a secret gives: a MAC under PRF(secret, d).
    let d = sha(&[b"fingerprint"]);
    let fingerprint = |ct: Vec<u8>| {
        let kms = kms.clone();
        async move {
            let s = kms
                .unwrap_premaster_pkcs1(CHANNEL_KEY_LABEL, ct)
                .await
                .unwrap();
            let k = kms.channel_derive(&s, d, ChannelKeyUse::Mac).await.unwrap();
            kms.channel_cmac(&k, b"x".to_vec()).await.unwrap()
        }
    };
    let pms = [0x42; 32];
    let good = v15(&pms);
    assert_eq!(fingerprint(good.clone()).await, cmac(&prf(&pms, &d), b"x"));

    let mut flipped = good.clone();
    flipped[100] ^= 1;
    let mut garbage = vec![0u8; 256];
    rng.fill_bytes(&mut garbage);
    garbage[0] = 0;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte", flipped),
        ("garbage", garbage),
        ("value above the modulus", vec![0xFF; 256]),
        ("short", good[..255].to_vec()),
        ("31-byte pre-master", v15(&pms[..31])),
        (
            "34-byte pre-master with version bytes",
            v15(&[&[3, 3], &pms[..]].concat()),
        ),
        ("16-byte pre-master", v15(&pms[..16])),
        ("OAEP", encrypt_pms(&pk, OaepHash::Sha1, &pms)),
    ];
    let mut seen = vec![fingerprint(good).await];
    for (what, ct) in cases {
        let first = fingerprint(ct.clone()).await;
        assert_eq!(fingerprint(ct).await, first, "{what}: not the same twice");
        assert!(!seen.contains(&first), "{what}: seen before");
        seen.push(first);
    }
    kms.shutdown();
}

/// HSM time of a handshake's server side: the unwrap, the master secret,
/// the five keys and the Finished MAC (printed, not asserted).
#[tokio::test(flavor = "multi_thread")]
async fn handshake_hsm_time() {
    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let kms = replica(&token, &db).await;
    let (public, _) = kms.ensure_channel_key(CHANNEL_KEY_LABEL).await.unwrap();
    kms.ensure_channel_state_kek().await.unwrap();
    let pk = rsa_public(&public);
    let hash = kms.channel_oaep_hash(CHANNEL_KEY_LABEL).await.unwrap();
    println!("the module unwraps RSA-OAEP with {hash:?}");
    let n = 200;
    let inputs: Vec<Vec<u8>> = (0..n).map(|_| encrypt_pms(&pk, hash, &[9; 32])).collect();
    let h = sha(&[b"transcript"]);
    let (mut unwrap_t, mut total_t) = (Vec::new(), Vec::new());
    for ct in inputs {
        let t0 = Instant::now();
        let pms = kms.unwrap_premaster(CHANNEL_KEY_LABEL, ct).await.unwrap();
        let t1 = Instant::now();
        let keys = schedule(&kms, &pms, &h).await;
        kms.channel_cmac(&keys[2], h.to_vec()).await.unwrap();
        total_t.push(t0.elapsed());
        unwrap_t.push(t1 - t0);
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        (mean, v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (um, up50, up99) = stats(unwrap_t);
    let (tm, tp50, tp99) = stats(total_t);
    println!(
        "channel handshake HSM time over {n} (one caller, SoftHSM): unwrap mean {um:?} p50 {up50:?} p99 {up99:?}; \
         unwrap + MS + 5 keys + Finished mean {tm:?} p50 {tp50:?} p99 {tp99:?}"
    );
    kms.shutdown();
}

/// The ECDHE mode's HSM steps: SoftHSM wraps the ephemeral P-256 private
/// key under the state KEK (AES key wrap with padding) and unwraps it on
/// another replica as a derive-only key; its ECDH secret salts the master
/// exactly as the card computes it in software; the objects are gone after
/// each step; a wrapped value altered at rest does not unwrap.
#[tokio::test(flavor = "multi_thread")]
async fn ecdhe_ephemeral_is_wrapped_at_rest_and_salts_the_master_on_any_replica() {
    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let (a, b) = (replica(&token, &db).await, replica(&token, &db).await);
    assert!(a.ensure_channel_state_kek().await.unwrap());
    let before = token.list_objects("privkey").unwrap();

    let (point, wrapped) = a.channel_ephemeral().await.unwrap();
    assert_eq!(point[0], 4);
    assert!(
        wrapped.len() > 64 && wrapped.len() % 8 == 0,
        "{}",
        wrapped.len()
    );
    assert_eq!(
        token.list_objects("privkey").unwrap(),
        before,
        "object left"
    );

    // The card's ephemeral and its view of C = PRF(x(Z), D_ms).
    let card = p256::SecretKey::random(&mut rand::thread_rng());
    let card_point: [u8; 65] =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&card.public_key(), false)
            .as_bytes()
            .try_into()
            .unwrap();
    let server = p256::PublicKey::from_sec1_bytes(&point).unwrap();
    let z = p256::ecdh::diffie_hellman(card.to_nonzero_scalar(), server.as_affine());
    let d_ms = sha(&[b"keyward channel v1 master", b"H"]);
    let expected = prf(z.raw_secret_bytes().as_ref(), &d_ms);

    // The other replica unwraps it and computes the same C.
    let c = b
        .channel_ecdhe_salt(wrapped.clone(), card_point, d_ms)
        .await
        .unwrap();
    assert_eq!(c, expected);
    assert_eq!(
        token.list_objects("privkey").unwrap(),
        before,
        "object left"
    );

    let mut altered = wrapped.clone();
    altered[20] ^= 1;
    assert!(matches!(
        b.channel_ecdhe_salt(altered, card_point, d_ms).await,
        Err(KmsError::CorruptRecord(_))
    ));
    assert!(matches!(
        b.channel_ecdhe_salt(wrapped[..40].to_vec(), card_point, d_ms)
            .await,
        Err(KmsError::CorruptRecord(_))
    ));
}

/// HSM time the ECDHE mode adds to a handshake: the hello's ephemeral
/// (generate, wrap, destroy) and the key exchange's salt (unwrap, ECDH,
/// one AES block pair, destroy); printed, not asserted.
#[tokio::test(flavor = "multi_thread")]
async fn ecdhe_hsm_time() {
    let token = TestToken::create().unwrap();
    let db = test_database().await.unwrap();
    let kms = replica(&token, &db).await;
    kms.ensure_channel_state_kek().await.unwrap();
    let card = p256::SecretKey::random(&mut rand::thread_rng());
    let point: [u8; 65] =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&card.public_key(), false)
            .as_bytes()
            .try_into()
            .unwrap();
    let n = 200;
    let (mut hello_t, mut kx_t) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t0 = Instant::now();
        let (_, wrapped) = kms.channel_ephemeral().await.unwrap();
        let t1 = Instant::now();
        kms.channel_ecdhe_salt(wrapped, point, [7; 32])
            .await
            .unwrap();
        kx_t.push(t1.elapsed());
        hello_t.push(t1 - t0);
    }
    let stats = |mut v: Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        (mean, v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (hm, hp50, hp99) = stats(hello_t);
    let (km, kp50, kp99) = stats(kx_t);
    println!(
        "ECDHE HSM time over {n} (one caller, SoftHSM): hello's ephemeral mean {hm:?} p50 {hp50:?} p99 {hp99:?}; \
         key exchange's salt mean {km:?} p50 {kp50:?} p99 {kp99:?}"
    );
    kms.shutdown();
}
