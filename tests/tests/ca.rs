//! The Keyward CA on SoftHSM: bootstrap, issuance from CSRs made in software
//! (rcgen), profiles overriding what a CSR asks for, the registry, revocation
//! and CRLs, with chains and CRLs checked by the real `openssl` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use keyward_ca::{
    Ca, CertFilter, CertStatus, IssueRequest, Profile, RevocationReason, Role, Serial,
};
use keyward_config::{CaConfig, CaKeyAlgorithm};
use keyward_kms::Kms;
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{KeyPairKind, Pkcs11Hsm};
use keyward_kms::pool::HsmPool;
use keyward_kms::types::DeviceId;
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::softhsm::TestToken;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_X509_SERIALNUMBER;
use x509_parser::prelude::FromDer;

const ORG: &str = "Keyward Test Bank";

struct Env {
    token: TestToken,
    db: TestDb,
    kms: Kms,
    ca: Ca,
}

fn config(alg: CaKeyAlgorithm) -> CaConfig {
    CaConfig {
        key_algorithm: alg,
        organization: ORG.into(),
        ..CaConfig::default()
    }
}

async fn env_with(cfg: &CaConfig) -> Env {
    let token = TestToken::create().unwrap();
    let hcfg = token.hsm_config(2);
    let hsm = Pkcs11Hsm::open(&hcfg, hcfg.pin().unwrap()).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), 2, 100).unwrap();
    let db = test_database().await.unwrap();
    let kms = Kms::new(pool, Catalog::connect(&db.config).await.unwrap(), 100);
    let (ca, report) = Ca::bootstrap(&kms, kms.db(), cfg).await.unwrap();
    assert!(
        report.root_key_created && report.issuing_key_created,
        "{report}"
    );
    assert!(
        report.root_cert_created && report.issuing_cert_created,
        "{report}"
    );
    assert!(report.crl_created, "{report}");
    Env { token, db, kms, ca }
}

async fn env() -> Env {
    env_with(&config(CaKeyAlgorithm::P256)).await
}

fn device(n: u8) -> DeviceId {
    DeviceId::from_bytes([0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, n])
}

/// A CSR made in software that asks for everything a device must not get:
/// CA:true, keyCertSign, serverAuth, a SAN and its own subject.
fn greedy_csr(key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "I am a CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serialize_request(key).unwrap().der().to_vec()
}

fn plain_csr(key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "device");
    params.serialize_request(key).unwrap().der().to_vec()
}

fn p256_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn rsa2048_key() -> KeyPair {
    KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn crl_number_by_openssl(dir: &Path, file: &str) -> u64 {
    let (ok, text) = openssl(&["crl", "-in", file, "-noout", "-text"], dir);
    assert!(ok, "{text}");
    let mut lines = text.lines();
    lines.find(|l| l.contains("X509v3 CRL Number")).unwrap();
    lines.next().unwrap().trim().parse().unwrap()
}

fn verify(dir: &Path, leaf: &str, crl: bool) -> (bool, String) {
    let mut args = vec!["verify", "-CAfile", "root.pem", "-untrusted", "issuing.pem"];
    if crl {
        args.extend(["-crl_check", "-CRLfile", "crl.pem"]);
    }
    args.push(leaf);
    openssl(&args, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_is_idempotent_and_fails_closed() {
    let cfg = config(CaKeyAlgorithm::P256);
    let e = env_with(&cfg).await;
    let crl1 = e.ca.crl().await.unwrap();

    // Same process, and a "restart" on a fresh catalog connection.
    for db in [
        e.kms.db().clone(),
        e.db.catalog().await.unwrap().db().clone(),
    ] {
        let (again, report) = Ca::bootstrap(&e.kms, &db, &cfg).await.unwrap();
        assert!(!report.created_anything(), "{report}");
        assert_eq!(again.root_pem(), e.ca.root_pem());
        assert_eq!(again.issuing_pem(), e.ca.issuing_pem());
        assert_eq!(again.chain_pem(), e.ca.chain_pem());
        // The CRL was fresh: not re-signed, same number.
        assert_eq!(again.crl().await.unwrap(), crl1);
    }

    // The CA certificates as an auditor reads them.
    let (_, root) = X509Certificate::from_der(e.ca.root_der()).unwrap();
    let (_, issuing) = X509Certificate::from_der(e.ca.issuing_der()).unwrap();
    assert_eq!(
        root.subject().to_string(),
        format!("O={ORG}, CN={ORG} Root CA")
    );
    assert_eq!(
        issuing.subject().to_string(),
        format!("O={ORG}, CN={ORG} Device Issuing CA")
    );
    let bc = root.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(1));
    let bc = issuing.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
    for c in [&root, &issuing] {
        let ku = c.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(!ku.value.digital_signature());
        assert_eq!(c.raw_serial().len(), 16);
    }
    issuing.verify_signature(Some(root.public_key())).unwrap();
    root.verify_signature(None).unwrap();

    // Another algorithm than the keys in the HSM: refused, naming the key.
    let err = Ca::bootstrap(&e.kms, e.kms.db(), &config(CaKeyAlgorithm::Rsa3072))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ca_config", "{err}");
    assert!(err.to_string().contains("ca.key_algorithm"));

    // A stored certificate that is not the HSM key's: the CA does not start.
    sqlx::query(
        "UPDATE ca_authorities SET pem = (SELECT pem FROM ca_authorities WHERE name = 'issuing') \
         WHERE name = 'root'",
    )
    .execute(e.kms.db().pool())
    .await
    .unwrap();
    let err = Ca::bootstrap(&e.kms, e.kms.db(), &cfg).await.unwrap_err();
    assert_eq!(err.code(), "ca_key_mismatch", "{err}");
    assert!(!err.is_client_error());
}

#[tokio::test(flavor = "multi_thread")]
async fn device_certificates_from_csrs_follow_the_profile() {
    let e = env().await;
    let (_, issuing) = X509Certificate::from_der(e.ca.issuing_der()).unwrap();

    let ec = p256_key();
    let rsa = rsa2048_key();
    let csrs = [
        (
            "p256",
            greedy_csr(&ec),
            ec.subject_public_key_info(),
            device(1),
        ),
        (
            "rsa2048",
            greedy_csr(&rsa),
            rsa.subject_public_key_info(),
            device(2),
        ),
    ];
    let mut serials = Vec::new();
    for (what, csr, spki, id) in csrs {
        let issued =
            e.ca.issue_from_csr(&csr, IssueRequest::device(id))
                .await
                .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(issued.profile, Profile::Device);
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        // Signed by the issuing CA, for the CSR's key.
        cert.verify_signature(Some(issuing.public_key())).unwrap();
        assert_eq!(cert.issuer().as_raw(), issuing.subject().as_raw());
        assert_eq!(cert.public_key().raw, spki.as_slice(), "{what}");
        // The profile, not the CSR: CA:false, digitalSignature, clientAuth.
        assert!(!cert.is_ca(), "{what}");
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        assert!(!ku.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        // Subject: CN and serialNumber are the device id, O the bank.
        let attr = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            it.next().unwrap().as_str().unwrap().to_owned()
        };
        assert_eq!(attr(&mut cert.subject().iter_common_name()), id.to_string());
        assert_eq!(
            attr(&mut cert.subject().iter_by_oid(&OID_X509_SERIALNUMBER)),
            id.to_string()
        );
        assert_eq!(attr(&mut cert.subject().iter_organization()), ORG);
        // Serial: 16 bytes, positive; validity from the config.
        assert_eq!(cert.raw_serial().len(), 16);
        assert!(cert.raw_serial()[0] & 0x80 == 0);
        assert_eq!(
            Serial::from_bytes(cert.raw_serial()).unwrap(),
            issued.serial
        );
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(
            na - nb,
            i64::from(CaConfig::default().device_validity_days) * 86_400 + 300
        );
        assert_eq!(issued.not_before_ms, nb * 1000);

        // The registry agrees.
        let rec = e.ca.get(&issued.serial).await.unwrap().unwrap();
        assert_eq!(rec.status, CertStatus::Valid);
        assert_eq!(rec.device_id, Some(id));
        assert_eq!(rec.profile, Profile::Device);
        assert_eq!(rec.pem, issued.pem);
        assert_eq!(rec.not_after_ms, issued.not_after_ms);
        assert!(!e.ca.is_revoked(&issued.serial).await.unwrap());
        assert_eq!(
            e.ca.device_certificate(id).await.unwrap().unwrap().serial,
            issued.serial
        );
        serials.push(issued.serial);
    }
    assert_ne!(serials[0], serials[1]);

    // PEM CSRs are accepted too; a newer certificate becomes the device's current one.
    let key = p256_key();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "x");
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let newer =
        e.ca.issue_from_csr(pem.as_bytes(), IssueRequest::device(device(1)))
            .await
            .unwrap();
    assert_eq!(
        e.ca.device_certificate(device(1))
            .await
            .unwrap()
            .unwrap()
            .serial,
        newer.serial
    );
    assert!(e.ca.device_certificate(device(9)).await.unwrap().is_none());

    // A broken signature, garbage, a missing device id.
    let mut broken = plain_csr(&p256_key());
    let n = broken.len();
    broken[n - 2] ^= 0x01;
    let err =
        e.ca.issue_from_csr(&broken, IssueRequest::device(device(3)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "csr_signature", "{err}");
    assert!(err.is_client_error());
    let err =
        e.ca.issue_from_csr(b"not a csr", IssueRequest::device(device(3)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), "csr_invalid", "{err}");
    let mut no_id = IssueRequest::device(device(3));
    no_id.device_id = None;
    let err =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), no_id)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "profile_requirements", "{err}");
    let mut mixed = IssueRequest::device(device(3));
    mixed.dns_names = vec!["a.example".into()];
    let err =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), mixed)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "profile_requirements", "{err}");

    let devices =
        e.ca.list(&CertFilter {
            profile: Some(Profile::Device),
            ..CertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[0].serial, newer.serial, "newest first");
    let only_two =
        e.ca.list(&CertFilter {
            device_id: Some(device(2)),
            ..CertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(only_two.len(), 1);
    assert!(
        e.ca.list(&CertFilter {
            status: Some(CertStatus::Revoked),
            ..CertFilter::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_verifies_chains_and_sees_revocations() {
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("root.pem"), e.ca.root_pem()).unwrap();
    std::fs::write(d.join("issuing.pem"), e.ca.issuing_pem()).unwrap();

    let a =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), IssueRequest::device(device(1)))
            .await
            .unwrap();
    let b =
        e.ca.issue_from_csr(&plain_csr(&rsa2048_key()), IssueRequest::device(device(2)))
            .await
            .unwrap();
    std::fs::write(d.join("a.pem"), &a.pem).unwrap();
    std::fs::write(d.join("b.pem"), &b.pem).unwrap();
    for leaf in ["a.pem", "b.pem"] {
        let (ok, text) = verify(d, leaf, false);
        assert!(ok && text.contains(": OK"), "{text}");
    }
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing.pem",
            "-purpose",
            "sslclient",
            "a.pem",
        ],
        d,
    );
    assert!(ok, "{text}");

    let crl0 = e.ca.crl().await.unwrap();
    std::fs::write(d.join("crl.pem"), &crl0.pem).unwrap();
    let n0 = crl_number_by_openssl(d, "crl.pem");
    assert_eq!(n0, crl0.number);
    let (ok, text) = verify(d, "a.pem", true);
    assert!(ok, "{text}");

    e.ca.revoke(&a.serial, RevocationReason::KeyCompromise)
        .await
        .unwrap();
    assert!(e.ca.is_revoked(&a.serial).await.unwrap());
    assert!(!e.ca.is_revoked(&b.serial).await.unwrap());
    let rec = e.ca.get(&a.serial).await.unwrap().unwrap();
    assert_eq!(rec.status, CertStatus::Revoked);
    assert_eq!(rec.reason, Some(RevocationReason::KeyCompromise));
    assert!(rec.revoked_at_ms.is_some());
    assert!(e.ca.device_certificate(device(1)).await.unwrap().is_none());

    // The revocation re-signed the CRL; crl() serves that one.
    let crl1 = e.ca.crl().await.unwrap();
    assert!(crl1.number > crl0.number);
    std::fs::write(d.join("crl.pem"), &crl1.pem).unwrap();
    let n1 = crl_number_by_openssl(d, "crl.pem");
    assert!(n1 > n0, "{n1} > {n0}");
    let (_, text) = openssl(&["crl", "-in", "crl.pem", "-noout", "-text"], d);
    assert!(text.contains(&a.serial.to_string()), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(!text.contains(&b.serial.to_string()), "{text}");
    let (ok, text) = openssl(
        &["crl", "-in", "crl.pem", "-noout", "-CAfile", "issuing.pem"],
        d,
    );
    assert!(ok && text.contains("verify OK"), "{text}");

    let (ok, text) = verify(d, "a.pem", true);
    assert!(!ok, "{text}");
    assert!(text.contains("certificate revoked"), "{text}");
    let (ok, text) = verify(d, "b.pem", true);
    assert!(ok && text.contains(": OK"), "{text}");

    // Nothing due right after signing; a forced refresh keeps counting up.
    assert!(e.ca.refresh_crl_if_due().await.unwrap().is_none());
    e.ca.revoke(&b.serial, RevocationReason::CessationOfOperation)
        .await
        .unwrap();
    let crl2 = e.ca.crl().await.unwrap();
    assert!(crl2.number > crl1.number);
    std::fs::write(d.join("crl.pem"), &crl2.pem).unwrap();
    assert!(crl_number_by_openssl(d, "crl.pem") > n1);
    let (ok, text) = verify(d, "b.pem", true);
    assert!(!ok && text.contains("certificate revoked"), "{text}");

    // A restart (new bootstrap on a new connection) never goes back.
    let (again, _) = Ca::bootstrap(
        &e.kms,
        e.db.catalog().await.unwrap().db(),
        &config(CaKeyAlgorithm::P256),
    )
    .await
    .unwrap();
    assert_eq!(again.crl().await.unwrap().number, crl2.number);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_operator_and_permit_profiles() {
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("root.pem"), e.ca.root_pem()).unwrap();
    std::fs::write(d.join("issuing.pem"), e.ca.issuing_pem()).unwrap();

    // The server's TLS key lives in the HSM: certified from its public key.
    for (label, kind) in [
        ("keyward/tls/server-ec", KeyPairKind::P256),
        ("keyward/tls/server-rsa", KeyPairKind::Rsa(2048)),
    ] {
        let (tls_key, _) = e.kms.ensure_signing_key(label, kind).await.unwrap();
        let issued =
            e.ca.issue_for_public_key(
                tls_key.public_key(),
                IssueRequest::server_tls(["Keyward.Bank.Example", "127.0.0.1", "::1"]),
            )
            .await
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(s) => s.to_string(),
                GeneralName::IPAddress(ip) => format!("ip:{}", ip.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, ["keyward.bank.example", "ip:4", "ip:16"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature());
        assert_eq!(ku.key_encipherment(), matches!(kind, KeyPairKind::Rsa(_)));
        std::fs::write(d.join("server.pem"), &issued.pem).unwrap();
        let (ok, text) = openssl(
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "keyward.bank.example",
                "server.pem",
            ],
            d,
        );
        assert!(ok, "{text}");
        let (ok, text) = openssl(
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "-verify_ip",
                "127.0.0.1",
                "server.pem",
            ],
            d,
        );
        assert!(ok, "{text}");
    }
    let err =
        e.ca.issue_from_csr(
            &plain_csr(&p256_key()),
            IssueRequest::server_tls(["bad name!"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "profile_requirements");
    let err =
        e.ca.issue_from_csr(
            &plain_csr(&p256_key()),
            IssueRequest::server_tls(Vec::<String>::new()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "profile_requirements");

    // Operators: CN = name, OU = role, clientAuth.
    let op =
        e.ca.issue_from_csr(
            &plain_csr(&p256_key()),
            IssueRequest::operator("Li Na", Role::Auditor),
        )
        .await
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&op.der).unwrap();
    let first = |mut it: Box<
        dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_,
    >| { it.next().unwrap().as_str().unwrap().to_owned() };
    assert_eq!(first(Box::new(cert.subject().iter_common_name())), "Li Na");
    assert_eq!(
        first(Box::new(cert.subject().iter_organizational_unit())),
        "auditor"
    );
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .client_auth
    );
    let rec = e.ca.get(&op.serial).await.unwrap().unwrap();
    assert_eq!(rec.operator_role, Some(Role::Auditor));
    assert_eq!(rec.device_id, None);

    // The load-permit key: digitalSignature only, no EKU.
    let (permit_key, _) = e
        .kms
        .ensure_signing_key("keyward/permit", KeyPairKind::P256)
        .await
        .unwrap();
    let permit =
        e.ca.issue_for_public_key(permit_key.public_key(), IssueRequest::load_permit(None))
            .await
            .unwrap();
    let (_, cert) = X509Certificate::from_der(&permit.der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
    assert!(cert.extended_key_usage().unwrap().is_none());
    assert!(!cert.is_ca());
    assert_eq!(
        first(Box::new(cert.subject().iter_common_name())),
        format!("{ORG} Load Permit")
    );

    let all = e.ca.list(&CertFilter::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    let ops =
        e.ca.list(&CertFilter {
            profile: Some(Profile::Operator),
            ..CertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ops.len(), 1);
}

/// The secure channel's key: RSA, keyEncipherment only, no EKU, stored and
/// listed under its own profile (the widened CHECK on both backends).
#[tokio::test(flavor = "multi_thread")]
async fn channel_profile_is_key_encipherment_only() {
    let e = env().await;
    let label = keyward_kms::service::CHANNEL_KEY_LABEL;
    let (public, _) = e.kms.ensure_channel_key(label).await.unwrap();
    let issued =
        e.ca.issue_for_public_key(&public, IssueRequest::channel(None))
            .await
            .unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_encipherment());
    assert!(!ku.digital_signature() && !ku.non_repudiation() && !ku.key_cert_sign());
    assert!(!ku.data_encipherment() && !ku.key_agreement() && !ku.crl_sign());
    assert!(cert.extended_key_usage().unwrap().is_none());
    assert!(!cert.is_ca());
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cn, format!("{ORG} Secure Channel"));
    let listed =
        e.ca.list(&CertFilter {
            profile: Some(Profile::Channel),
            ..CertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].serial, issued.serial);
    assert_eq!("channel".parse::<Profile>().unwrap(), Profile::Channel);

    // An EC key is not a channel key; a device id does not belong in one.
    let (ec, _) = e
        .kms
        .ensure_signing_key("keyward/not-channel", KeyPairKind::P256)
        .await
        .unwrap();
    assert!(
        e.ca.issue_for_public_key(ec.public_key(), IssueRequest::channel(None))
            .await
            .is_err()
    );
    let mut with_device = IssueRequest::channel(None);
    with_device.device_id = Some(device(1));
    assert!(
        e.ca.issue_for_public_key(&public, with_device)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_errors_are_typed() {
    let e = env().await;
    let unknown: Serial = "0123456789ABCDEF0123456789ABCDEF".parse().unwrap();
    let err =
        e.ca.revoke(&unknown, RevocationReason::Unspecified)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "unknown_serial");
    assert!(err.is_client_error());
    assert_eq!(
        e.ca.is_revoked(&unknown).await.unwrap_err().code(),
        "unknown_serial"
    );
    assert!(e.ca.get(&unknown).await.unwrap().is_none());

    let issued =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), IssueRequest::device(device(7)))
            .await
            .unwrap();
    let before = e.ca.crl().await.unwrap().number;
    e.ca.revoke(&issued.serial, RevocationReason::Superseded)
        .await
        .unwrap();
    let after = e.ca.crl().await.unwrap().number;
    assert!(after > before);
    let err =
        e.ca.revoke(&issued.serial, RevocationReason::KeyCompromise)
            .await
            .unwrap_err();
    assert_eq!(err.code(), "already_revoked");
    // The refused second revocation changed nothing: same reason, same CRL.
    let rec = e.ca.get(&issued.serial).await.unwrap().unwrap();
    assert_eq!(rec.reason, Some(RevocationReason::Superseded));
    assert_eq!(e.ca.crl().await.unwrap().number, after);
    assert!("not hex".parse::<Serial>().is_err());
    assert!("certificateHold".parse::<RevocationReason>().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa3072_ca_issues_verifiable_chains() {
    let e = env_with(&config(CaKeyAlgorithm::Rsa3072)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("root.pem"), e.ca.root_pem()).unwrap();
    std::fs::write(d.join("issuing.pem"), e.ca.issuing_pem()).unwrap();
    let leaf =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), IssueRequest::device(device(1)))
            .await
            .unwrap();
    std::fs::write(d.join("leaf.pem"), &leaf.pem).unwrap();
    let (ok, text) = verify(d, "leaf.pem", false);
    assert!(ok, "{text}");
    e.ca.revoke(&leaf.serial, RevocationReason::AffiliationChanged)
        .await
        .unwrap();
    std::fs::write(d.join("crl.pem"), e.ca.crl().await.unwrap().pem).unwrap();
    let (ok, text) = verify(d, "leaf.pem", true);
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (_, text) = openssl(&["x509", "-in", "issuing.pem", "-noout", "-text"], d);
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_private_keys_stay_in_the_hsm() {
    let e = env().await;
    let text = e.token.list_objects("privkey").unwrap();
    let blocks: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{text}");
    for label in [keyward_ca::ROOT_KEY_LABEL, keyward_ca::ISSUING_KEY_LABEL] {
        let b = blocks
            .iter()
            .find(|b| b.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("{label} missing: {text}"));
        assert!(b.contains("Usage:      sign"), "{b}");
        assert!(!b.contains("decrypt") && !b.contains("unwrap"), "{b}");
        assert!(
            b.contains("sensitive") && b.contains("never extractable"),
            "{b}"
        );
    }
}

/// An OCSP request made by `openssl ocsp` (with its default nonce unless
/// `no_nonce`) for `serial` under the issuing CA.
fn ocsp_request(e: &Env, dir: &Path, serial: &Serial, no_nonce: bool) -> Vec<u8> {
    std::fs::write(dir.join("issuing.pem"), e.ca.issuing_pem()).unwrap();
    let serial = format!("0x{serial}");
    let mut args = vec![
        "ocsp",
        "-issuer",
        "issuing.pem",
        "-serial",
        &serial,
        "-reqout",
        "req.der",
    ];
    if no_nonce {
        args.push("-no_nonce");
    }
    let (ok, text) = openssl(&args, dir);
    assert!(ok, "{text}");
    std::fs::read(dir.join("req.der")).unwrap()
}

fn ocsp_text(dir: &Path, der: &[u8]) -> String {
    std::fs::write(dir.join("resp.der"), der).unwrap();
    let (_, text) = openssl(
        &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
        dir,
    );
    text
}

/// An anonymous OCSP request does not cost an HSM signature each
/// time. Answers are signed once, served from the cache (nonce or not) until
/// a revocation changes the registry, and cache misses beyond the signing
/// budget are `tryLater`.
#[tokio::test]
async fn ocsp_answers_are_cached_until_the_registry_changes() {
    use keyward_ca::{OcspLimits, OcspResponder, OcspSource};
    let e = env().await;
    let dir = tempfile::tempdir().unwrap();
    let cert =
        e.ca.issue_from_csr(&plain_csr(&p256_key()), IssueRequest::device(device(9)))
            .await
            .unwrap();
    let ocsp = OcspResponder::new(
        e.ca.clone(),
        OcspLimits {
            cache_entries: 100,
            signatures_per_second: 1000,
        },
    )
    .unwrap();
    let first = ocsp
        .respond(&ocsp_request(&e, dir.path(), &cert.serial, false))
        .await
        .unwrap();
    assert_eq!(first.source, OcspSource::Signed);
    assert!(ocsp_text(dir.path(), &first.der).contains("Cert Status: good"));
    // Another nonce, or none: the same signed answer, no signature.
    for no_nonce in [false, true] {
        let again = ocsp
            .respond(&ocsp_request(&e, dir.path(), &cert.serial, no_nonce))
            .await
            .unwrap();
        assert_eq!(again.source, OcspSource::Cached);
        assert_eq!(again.der, first.der);
    }
    // A revocation invalidates the cache.
    e.ca.revoke(&cert.serial, RevocationReason::KeyCompromise)
        .await
        .unwrap();
    let after = ocsp
        .respond(&ocsp_request(&e, dir.path(), &cert.serial, true))
        .await
        .unwrap();
    assert_eq!(after.source, OcspSource::Signed);
    assert!(ocsp_text(dir.path(), &after.der).contains("Cert Status: revoked"));

    // The signing budget: one a second here; the next miss is tryLater.
    let tight = OcspResponder::new(
        e.ca.clone(),
        OcspLimits {
            cache_entries: 100,
            signatures_per_second: 1,
        },
    )
    .unwrap();
    let unknown: Serial = "0123456789ABCDEF".parse().unwrap();
    let other: Serial = "0123456789ABCDEE".parse().unwrap();
    let a = tight
        .respond(&ocsp_request(&e, dir.path(), &unknown, true))
        .await
        .unwrap();
    assert_eq!(a.source, OcspSource::Signed);
    let b = tight
        .respond(&ocsp_request(&e, dir.path(), &other, true))
        .await
        .unwrap();
    assert_eq!(b.source, OcspSource::Throttled);
    let t = ocsp_text(dir.path(), &b.der);
    assert!(t.to_ascii_lowercase().contains("trylater"), "{t}");
    // The cached answer is still served.
    let c = tight
        .respond(&ocsp_request(&e, dir.path(), &unknown, true))
        .await
        .unwrap();
    assert_eq!(c.source, OcspSource::Cached);
}
