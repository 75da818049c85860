//! Device provisioning end to end on SoftHSM with the real Keyward CA:
//! manufacturing intake of simulated devices, the genuine-device check, the
//! init package opened by the simulator, maker-checker customer registration,
//! binding, the lifecycle, and the refusals (forged CSR, unknown device,
//! failed proof of possession, self-approval, unapproved customer, invalid
//! transitions, …). Runs on SQLite, or PostgreSQL with
//! `KEYWARD_TEST_DATABASE_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyward_ca::{Ca, CertFilter, CertStatus, Profile, Serial};
use keyward_config::CaConfig;
use keyward_device_provisioning::certifier::{BoxFuture, RevokeReason};
use keyward_device_provisioning::{
    Account, Action, Actor, ApplicationState, AuditNote, BatchId, BindRequest, Contact,
    ContactKind, CustomerApplication, CustomerId, DeviceState, InitState, NationalId, OperatorId,
    Outcome, Provisioning, Reason, Refused, RowOutcome, SecureElement,
};
use keyward_device_provisioning::{
    CertificateStatus, CertifierError, DeviceCertificate, DeviceCertifier, DeviceKeyKind,
};
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::Pkcs11Hsm;
use keyward_kms::pool::HsmPool;
use keyward_kms::types::{DeviceId, IssuerId, KeyFamily, MacAlgorithm};
use keyward_kms::{Kms, MacItem};
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::simulator::{SimDevice, forged_csr};
use keyward_tests::softhsm::TestToken;

struct Env {
    prov: Provisioning,
    kms: Kms,
    ca: Ca,
    _db: TestDb,
    _token: TestToken,
}

async fn env() -> Env {
    let token = TestToken::create().unwrap();
    let cfg = token.hsm_config(2);
    let hsm = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), 2, 1000).unwrap();
    let db = test_database().await.unwrap();
    let kms = Kms::new(
        pool,
        Catalog::connect(&db.config).await.unwrap(),
        1000,
        false,
    );
    let (ca, _) = Ca::bootstrap(&kms, kms.catalog(), &CaConfig::default())
        .await
        .unwrap();
    let prov = Provisioning::new(kms.clone(), Arc::new(ca.clone()))
        .await
        .unwrap();
    Env {
        prov,
        kms,
        ca,
        _db: db,
        _token: token,
    }
}

fn op(name: &str) -> OperatorId {
    name.parse().unwrap()
}

fn reason(text: &str) -> Reason {
    text.parse().unwrap()
}

fn dev_id(n: u8) -> DeviceId {
    DeviceId::from_bytes([0x62, 0x22, 0x02, 0x00, 0x00, 0x00, 0x10, n])
}

fn batch(id: &str) -> BatchId {
    id.parse().unwrap()
}

fn manifest(rows: &[String]) -> String {
    format!(
        "# factory run\n{}\n{}\n",
        keyward_device_provisioning::MANIFEST_HEADER,
        rows.join("\n")
    )
}

fn devices_manifest(devs: &[&SimDevice]) -> String {
    manifest(&devs.iter().map(|d| d.manifest_row()).collect::<Vec<_>>())
}

async fn create_issuer(env: &Env, id: &str, family: KeyFamily) -> IssuerId {
    let id: IssuerId = id.parse().unwrap();
    env.kms.create_issuer(id.clone(), family).await.unwrap();
    id
}

/// The refusal of a decision, checking its note says so.
fn refused<T: std::fmt::Debug>(d: Result<T, Box<Refused>>, code: &str) -> AuditNote {
    let r = d.expect_err(&format!("expected refusal {code}"));
    assert_eq!(r.code(), code, "{}", r.error);
    assert!(r.is_client_error(), "{code} should be a client error");
    assert_eq!(r.note.outcome, Outcome::Refused { code: r.code() });
    r.note
}

async fn import(env: &Env, id: &str, devs: &[&SimDevice]) {
    let report = env
        .prov
        .import_batch(&batch(id), &devices_manifest(devs), &op("factory-desk"))
        .await
        .unwrap()
        .value;
    assert!(report.accepted());
}

/// Genuine-device check through the simulator.
async fn verify(env: &Env, dev: &SimDevice) {
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    let sig = dev.sign_challenge(&ch.bytes);
    let done = env.prov.complete_check(dev.id, &sig).await.unwrap();
    assert_eq!(done.note.action, Action::CompleteCheck);
    assert_eq!(done.note.get("to"), Some("verified"));
}

/// Init package opened by the simulator, KCVs confirmed.
async fn initialise(env: &Env, dev: &mut SimDevice, issuer: &IssuerId) {
    let pkg = env.prov.init_package(dev.id, issuer).await.unwrap().value;
    let answer = dev.load_init_package(&pkg).unwrap();
    assert!(answer.accepted);
    env.prov
        .confirm_init(dev.id, issuer, &answer.kcvs)
        .await
        .unwrap();
}

fn application(national_id: &str, accounts: &[&str]) -> CustomerApplication {
    CustomerApplication {
        name: "Li Lei".into(),
        national_id: NationalId::new(national_id).unwrap(),
        accounts: accounts.iter().map(|a| a.parse().unwrap()).collect(),
        contact: Contact::new(ContactKind::Sms, "+8613800138000").unwrap(),
    }
}

/// A customer applied for by alice and approved by bob.
async fn approved_customer(env: &Env, national_id: &str, accounts: &[&str]) -> CustomerId {
    let app = env
        .prov
        .apply(application(national_id, accounts), &op("alice"))
        .await
        .unwrap()
        .value;
    env.prov
        .approve(&app.id, &op("bob"))
        .await
        .unwrap()
        .value
        .id
}

fn accounts(list: &[&str]) -> Vec<Account> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[tokio::test]
async fn device_goes_from_factory_to_issued_and_retired() {
    let env = env().await;
    let bank_a = create_issuer(&env, "bank-a", KeyFamily::Tdes).await;
    let bank_b = create_issuer(&env, "bank-b", KeyFamily::Aes).await;
    let mut d1 = SimDevice::p256(dev_id(1)).unwrap();
    d1.esam = Some("E0000000000000A1".into());
    let d2 = SimDevice::p256(dev_id(2)).unwrap();
    let d3 = SimDevice::p256(dev_id(3)).unwrap();

    // Intake: every row registered with a device certificate from the CA.
    let imported = env
        .prov
        .import_batch(
            &batch("F-2024-07"),
            &devices_manifest(&[&d1, &d2, &d3]),
            &op("factory-desk"),
        )
        .await
        .unwrap();
    assert_eq!(imported.note.action, Action::ImportBatch);
    assert_eq!(imported.note.target, "batch:F-2024-07");
    assert_eq!(imported.note.get("registered"), Some("3"));
    let report = imported.value;
    assert!(report.accepted());
    let RowOutcome::Registered { cert_serial } = &report.rows[0].outcome else {
        panic!("row 1 not registered: {:?}", report.rows[0]);
    };
    let rec = env.prov.device(d1.id).await.unwrap();
    assert_eq!(rec.state, DeviceState::Manufactured);
    assert_eq!(rec.cert_serial.as_deref(), Some(cert_serial.as_str()));
    assert_eq!(
        rec.esam_serial.as_ref().unwrap().as_str(),
        "E0000000000000A1"
    );
    let serial: Serial = cert_serial.parse().unwrap();
    let cert = env.ca.get(&serial).await.unwrap().unwrap();
    assert_eq!(cert.device_id, Some(d1.id));
    assert_eq!(
        env.prov
            .batch(&batch("F-2024-07"))
            .await
            .unwrap()
            .unwrap()
            .device_count,
        3
    );

    // Genuine-device check.
    let begun = env.prov.begin_check(d1.id).await.unwrap();
    assert_eq!(begun.note.actor, Actor::Device(d1.id));
    let sig = d1.sign_challenge(&begun.value.bytes);
    let done = env.prov.complete_check(d1.id, &sig).await.unwrap();
    assert_eq!(done.note.get("cert_serial"), Some(cert_serial.as_str()));
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().state,
        DeviceState::Verified
    );

    // Original keys for bank A: the simulator unwraps and confirms.
    let pkg = env.prov.init_package(d1.id, &bank_a).await.unwrap();
    assert_eq!(pkg.note.get("scheme"), Some("ECDH-P256+AES-KW"));
    assert_eq!(
        env.prov
            .init_record(d1.id, &bank_a)
            .await
            .unwrap()
            .unwrap()
            .state,
        InitState::Pending
    );
    let answer = d1.load_init_package(&pkg.value).unwrap();
    assert!(answer.accepted);
    let confirmed = env
        .prov
        .confirm_init(d1.id, &bank_a, &answer.kcvs)
        .await
        .unwrap();
    assert_eq!(confirmed.note.get("to"), Some("initialised"));
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().state,
        DeviceState::Initialised
    );

    // Customer registration, maker-checker.
    let app = env
        .prov
        .apply(
            application(
                "110101199003071234",
                &["6222020200112233", "6222020200445566"],
            ),
            &op("alice"),
        )
        .await
        .unwrap();
    assert_eq!(app.note.action, Action::Apply);
    let queue = env
        .prov
        .applications(ApplicationState::Submitted, 10)
        .await
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(
        queue[0].application.national_id.expose(),
        "110101199003071234"
    );
    let approved = env.prov.approve(&app.value.id, &op("bob")).await.unwrap();
    assert_eq!(approved.note.actor, Actor::Operator(op("bob")));
    let customer = approved.value.clone();
    assert_eq!(customer.id, app.value.customer_id);

    // Binding: PSAM + ESAM, one account.
    let bound = env
        .prov
        .bind(
            BindRequest {
                device: d1.id,
                customer: customer.id.clone(),
                issuer: bank_a.clone(),
                accounts: accounts(&["6222020200112233"]),
                secure_element: SecureElement::Both,
            },
            &op("carol"),
        )
        .await
        .unwrap();
    assert_eq!(bound.note.get("to"), Some("issued"));
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().state,
        DeviceState::Issued
    );
    assert_eq!(
        env.prov.customer_devices(&customer.id).await.unwrap(),
        vec![d1.id]
    );

    // The issued device works with the online key hierarchy: working keys
    // offered, derived and confirmed by the device, then a MAC verifies.
    let offer = env.kms.offer_working_keys(&bank_a, d1.id).await.unwrap();
    let kcvs = d1.accept_working_keys("bank-a", &offer).unwrap();
    env.kms
        .confirm_working_keys(&bank_a, d1.id, offer.version, &kcvs)
        .await
        .unwrap();
    let msg = b"PAY 100.00 CNY TO 6222020200998877";
    let mac = d1.cmac("bank-a", msg).unwrap();
    let item = MacItem {
        issuer: bank_a.clone(),
        device: d1.id,
        version: offer.version,
        algorithm: MacAlgorithm::CmacTdes,
        padding: None,
        message: msg.to_vec(),
        mac: mac[..8].to_vec(),
    };
    assert!(env.kms.verify_mac(item.clone()).await.unwrap());
    let ch = env.kms.challenge(&bank_a).await.unwrap();
    let resp = d1.auth_response("bank-a", &ch).unwrap();
    assert!(
        env.kms
            .verify_challenge_response(&bank_a, d1.id, &ch, &resp)
            .await
            .unwrap()
    );

    // One device, many issuers: bank B (AES) on the issued device.
    initialise(&env, &mut d1, &bank_b).await;
    assert!(d1.has_keys_for("bank-b"));
    let second = env
        .prov
        .bind(
            BindRequest {
                device: d1.id,
                customer: customer.id.clone(),
                issuer: bank_b.clone(),
                accounts: accounts(&["6222020200445566"]),
                secure_element: SecureElement::Esam,
            },
            &op("carol"),
        )
        .await
        .unwrap();
    assert_eq!(second.note.get("to"), None, "already issued");
    assert_eq!(second.value.psam_serial, None);
    let bindings = env.prov.bindings(d1.id).await.unwrap();
    assert_eq!(bindings.len(), 2);
    assert_eq!(env.prov.init_records(d1.id).await.unwrap().len(), 2);

    // Suspend and resume, then retire: the certificate is revoked.
    let s = env
        .prov
        .transition(
            d1.id,
            DeviceState::Suspended,
            &op("dave"),
            &reason("reported lost"),
        )
        .await
        .unwrap();
    assert_eq!(s.value, DeviceState::Issued);
    assert_eq!(s.note.get("reason"), Some("reported lost"));
    env.prov
        .transition(d1.id, DeviceState::Issued, &op("dave"), &reason("found"))
        .await
        .unwrap();
    assert!(!env.ca.is_revoked(&serial).await.unwrap());
    let retired = env
        .prov
        .transition(
            d1.id,
            DeviceState::Retired,
            &op("dave"),
            &reason("end of life"),
        )
        .await
        .unwrap();
    assert_eq!(
        retired.note.get("revoked_cert_serial"),
        Some(cert_serial.as_str())
    );
    assert!(env.ca.is_revoked(&serial).await.unwrap());
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().state,
        DeviceState::Retired
    );
    // …and its working keys are closed with it: its MACs no longer verify.
    assert_eq!(retired.note.get("key_versions_closed"), Some("1"));
    let err = env.kms.verify_mac(item).await.unwrap_err();
    assert_eq!(err.code(), "key_version_not_usable", "{err}");
    let note = refused(
        env.prov
            .transition(d1.id, DeviceState::Issued, &op("dave"), &reason("undo"))
            .await,
        "invalid_transition",
    );
    assert_eq!(note.get("from"), Some("retired"));

    // Personal data never reaches a note (nor the Debug of what is returned).
    let notes = format!("{app:?} {approved:?}");
    assert!(!notes.contains("1101011990"), "{notes}");
    assert!(!notes.contains("13800138000"), "{notes}");
}

#[tokio::test]
async fn rsa_device_is_checked_and_initialised() {
    let env = env().await;
    let bank = create_issuer(&env, "bank-r", KeyFamily::Aes).await;
    let mut dev = SimDevice::rsa(dev_id(9)).unwrap();
    import(&env, "RSA-1", &[&dev]).await;
    verify(&env, &dev).await;
    let pkg = env.prov.init_package(dev.id, &bank).await.unwrap();
    assert_eq!(pkg.note.get("scheme"), Some("RSA-OAEP-SHA1"));
    let answer = dev.load_init_package(&pkg.value).unwrap();
    assert!(answer.accepted);
    env.prov
        .confirm_init(dev.id, &bank, &answer.kcvs)
        .await
        .unwrap();
    assert_eq!(
        env.prov.device(dev.id).await.unwrap().state,
        DeviceState::Initialised
    );
}

#[tokio::test]
async fn a_batch_with_one_bad_row_registers_nothing() {
    let env = env().await;
    let old = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "OLD", &[&old]).await;

    let good = SimDevice::p256(dev_id(2)).unwrap();
    let forger = SimDevice::p256(dev_id(3)).unwrap();
    let forged = forged_csr(&forger, &good).unwrap();
    let mut corrupt = SimDevice::p256(dev_id(4)).unwrap().csr_der().to_vec();
    corrupt.truncate(corrupt.len() / 2);
    let dup = SimDevice::p256(dev_id(2)).unwrap();
    let mut no_se = SimDevice::p256(dev_id(6)).unwrap();
    no_se.psam = None;
    let rows = vec![
        good.manifest_row(),                   // line 3: valid
        forger.manifest_row_with_csr(&forged), // 4: forged CSR
        "0123456789ABCDEF,P1,,M,1.0".into(),   // 5: 5 fields
        "XYZ,P1,,M,1.0,AAAA".into(),           // 6: bad id
        SimDevice::p256(dev_id(4))
            .unwrap()
            .manifest_row_with_csr(&corrupt), // 7
        dup.manifest_row(),                    // 8: id repeated
        old.manifest_row(),                    // 9: registered
        no_se.manifest_row(),                  // 10: no SE
        format!("{},P77,,M,1.0,!!notbase64!!", dev_id(7)), // 11
    ];
    let r = env
        .prov
        .import_batch(&batch("NEW"), &manifest(&rows), &op("factory-desk"))
        .await
        .unwrap_err();
    assert_eq!(r.code(), "batch_rejected");
    assert_eq!(r.note.get("rejected"), Some("8"));
    let report = r.error.import_report().unwrap();
    let codes: Vec<(usize, &str)> = report
        .rows
        .iter()
        .map(|row| {
            (
                row.line,
                match &row.outcome {
                    RowOutcome::Rejected { code, .. } => *code,
                    RowOutcome::Valid => "valid",
                    RowOutcome::Registered { .. } => "registered",
                },
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (3, "valid"),
            (4, "csr_signature"),
            (5, "malformed"),
            (6, "malformed"),
            (7, "csr_invalid"),
            (8, "duplicate_in_file"),
            (9, "already_registered"),
            (10, "malformed"),
            (11, "malformed"),
        ]
    );
    // Nothing of the refused batch exists.
    assert!(env.prov.batch(&batch("NEW")).await.unwrap().is_none());
    assert_eq!(
        env.prov.device(good.id).await.unwrap_err().code(),
        "unknown_device"
    );
    // The same file without its bad rows goes through; a batch id is used once.
    import(&env, "NEW", &[&good]).await;
    refused(
        env.prov
            .import_batch(
                &batch("NEW"),
                &devices_manifest(&[&forger]),
                &op("factory-desk"),
            )
            .await,
        "batch_exists",
    );
    assert_eq!(
        env.prov
            .import_batch(&batch("EMPTY"), "device_id,psam\n", &op("factory-desk"))
            .await
            .unwrap_err()
            .code(),
        "invalid_input"
    );
}

#[tokio::test]
async fn genuine_device_check_refusals() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    let other = SimDevice::p256(dev_id(2)).unwrap();
    let revoked = SimDevice::p256(dev_id(3)).unwrap();
    import(&env, "B1", &[&dev, &other, &revoked]).await;

    // Unknown device.
    refused(env.prov.begin_check(dev_id(0x77)).await, "unknown_device");
    // No challenge outstanding.
    refused(
        env.prov
            .complete_check(dev.id, &dev.sign_challenge(&[0; 32]))
            .await,
        "challenge_invalid",
    );

    // Failed proof of possession: signed by another key. The challenge is
    // used up, so the right signature afterwards is refused too.
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    let note = refused(
        env.prov
            .complete_check(dev.id, &other.sign_challenge(&ch.bytes))
            .await,
        "proof_of_possession_failed",
    );
    assert_eq!(note.target, format!("device:{}", dev.id));
    refused(
        env.prov
            .complete_check(dev.id, &dev.sign_challenge(&ch.bytes))
            .await,
        "challenge_invalid",
    );
    // A signature over something else, and garbage.
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    refused(
        env.prov.complete_check(dev.id, b"not a signature").await,
        "proof_of_possession_failed",
    );
    let stale = ch.bytes;
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    assert_ne!(stale, ch.bytes, "challenges are fresh HSM randoms");
    refused(
        env.prov
            .complete_check(dev.id, &dev.sign_challenge(&stale))
            .await,
        "proof_of_possession_failed",
    );
    assert_eq!(env.prov.device(dev.id).await.unwrap().check_failures, 5);
    assert_eq!(
        env.prov.device(dev.id).await.unwrap().state,
        DeviceState::Manufactured
    );

    // Expired challenge.
    let quick = env.prov.clone().with_challenge_ttl(Duration::ZERO);
    let ch = quick.begin_check(dev.id).await.unwrap().value;
    refused(
        quick
            .complete_check(dev.id, &dev.sign_challenge(&ch.bytes))
            .await,
        "challenge_invalid",
    );

    // A revoked certificate: the check is refused whatever the signature.
    let rec = env.prov.device(revoked.id).await.unwrap();
    let serial: Serial = rec.cert_serial.unwrap().parse().unwrap();
    env.ca
        .revoke(&serial, keyward_ca::RevocationReason::KeyCompromise)
        .await
        .unwrap();
    let ch = env.prov.begin_check(revoked.id).await.unwrap().value;
    refused(
        env.prov
            .complete_check(revoked.id, &revoked.sign_challenge(&ch.bytes))
            .await,
        "certificate_invalid",
    );

    // Pass, then a second check of the same device is refused: it is no
    // longer `manufactured`.
    verify(&env, &dev).await;
    refused(env.prov.begin_check(dev.id).await, "device_state");
}

#[tokio::test]
async fn init_package_needs_a_verified_device_and_matching_kcvs() {
    let env = env().await;
    let bank = create_issuer(&env, "bank-a", KeyFamily::Tdes).await;
    let mut dev = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "B1", &[&dev]).await;

    // Not yet verified.
    refused(env.prov.init_package(dev.id, &bank).await, "device_state");
    verify(&env, &dev).await;
    refused(
        env.prov
            .confirm_init(dev.id, &bank, &[("TMK", dev_kcv())])
            .await,
        "no_pending_init",
    );
    let unknown: IssuerId = "nobody".parse().unwrap();
    refused(
        env.prov.init_package(dev.id, &unknown).await,
        "unknown_issuer",
    );

    // The device reports a wrong KCV: refused, recorded, not initialised.
    let pkg = env.prov.init_package(dev.id, &bank).await.unwrap().value;
    let mut answer = dev.load_init_package(&pkg).unwrap();
    answer.kcvs[1].1.value[0] ^= 0xFF;
    refused(
        env.prov.confirm_init(dev.id, &bank, &answer.kcvs).await,
        "kcv_mismatch",
    );
    assert_eq!(
        env.prov
            .init_record(dev.id, &bank)
            .await
            .unwrap()
            .unwrap()
            .state,
        InitState::Refused
    );
    assert_eq!(
        env.prov.device(dev.id).await.unwrap().state,
        DeviceState::Verified
    );

    // Another package needs an operator's reinit, used once.
    refused(
        env.prov.init_package(dev.id, &bank).await,
        "reinit_required",
    );
    let r = env
        .prov
        .reinit(dev.id, &bank, &op("dave"), &reason("mismatch investigated"))
        .await
        .unwrap();
    assert_eq!(r.note.get("init_state"), Some("refused"));
    initialise(&env, &mut dev, &bank).await;
    assert_eq!(
        env.prov.device(dev.id).await.unwrap().state,
        DeviceState::Initialised
    );
    let rec = env.prov.init_record(dev.id, &bank).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.packages), (InitState::Initialised, 2));
    refused(
        env.prov.init_package(dev.id, &bank).await,
        "reinit_required",
    );

    // A missing key name is a mismatch too.
    env.prov
        .reinit(dev.id, &bank, &op("dave"), &reason("device reset"))
        .await
        .unwrap();
    let pkg = env.prov.init_package(dev.id, &bank).await.unwrap().value;
    let answer = dev.load_init_package(&pkg).unwrap();
    refused(
        env.prov
            .confirm_init(dev.id, &bank, &answer.kcvs[..1])
            .await,
        "kcv_mismatch",
    );
}

fn dev_kcv() -> keyward_kms::types::Kcv {
    keyward_kms::types::Kcv::parse("KCV-TDES", "000000").unwrap()
}

#[tokio::test]
async fn customer_review_is_maker_checker() {
    let env = env().await;
    let app = env
        .prov
        .apply(
            application("110101199003071234", &["6222020200112233"]),
            &op("alice"),
        )
        .await
        .unwrap()
        .value;

    // The maker cannot decide her own application.
    refused(
        env.prov.approve(&app.id, &op("alice")).await,
        "self_approval",
    );
    refused(
        env.prov
            .reject(&app.id, &op("alice"), &reason("incomplete"))
            .await,
        "self_approval",
    );
    // Rejected, corrected, resubmitted by another maker who then cannot approve.
    let rej = env
        .prov
        .reject(&app.id, &op("bob"), &reason("account number unreadable"))
        .await
        .unwrap();
    assert_eq!(rej.note.get("reason"), Some("account number unreadable"));
    let view = env.prov.review(&app.id).await.unwrap();
    assert_eq!(view.state, ApplicationState::Rejected);
    assert_eq!(view.decided_by.as_deref(), Some("bob"));
    refused(
        env.prov.approve(&app.id, &op("bob")).await,
        "application_state",
    );
    refused(
        env.prov
            .bind(
                bind_req(dev_id(1), &app.customer_id, "bank-a", &["6222020200112233"]),
                &op("carol"),
            )
            .await,
        "customer_not_approved",
    );
    let re = env
        .prov
        .correct_and_resubmit(
            &app.id,
            application("110101199003071234", &["6222020200112234"]),
            &op("carol"),
        )
        .await
        .unwrap()
        .value;
    assert_eq!((re.state, re.revision), (ApplicationState::Submitted, 2));
    refused(
        env.prov.approve(&app.id, &op("carol")).await,
        "self_approval",
    );
    let customer = env.prov.approve(&app.id, &op("alice")).await.unwrap().value;
    assert_eq!(customer.accounts, accounts(&["6222020200112234"]));
    assert_eq!(
        env.prov.customer(&customer.id).await.unwrap().approved_by,
        "alice"
    );
    refused(
        env.prov
            .close(&app.id, &op("bob"), &reason("too late"))
            .await,
        "application_state",
    );

    // One customer per national id.
    let twin = env
        .prov
        .apply(
            application("110101199003071234", &["6222020200999999"]),
            &op("alice"),
        )
        .await
        .unwrap()
        .value;
    refused(
        env.prov.approve(&twin.id, &op("bob")).await,
        "customer_exists",
    );
    // A rejected application may be closed.
    env.prov
        .reject(&twin.id, &op("bob"), &reason("duplicate"))
        .await
        .unwrap();
    let closed = env
        .prov
        .close(&twin.id, &op("alice"), &reason("duplicate customer"))
        .await
        .unwrap();
    assert_eq!(closed.note.get("from"), Some("rejected"));
    assert_eq!(
        env.prov.review(&twin.id).await.unwrap().state,
        ApplicationState::Closed
    );
    refused(
        env.prov
            .correct_and_resubmit(
                &twin.id,
                application("110101199003079999", &["6222020200999999"]),
                &op("alice"),
            )
            .await,
        "application_state",
    );
}

fn bind_req(device: DeviceId, customer: &CustomerId, issuer: &str, accts: &[&str]) -> BindRequest {
    BindRequest {
        device,
        customer: customer.clone(),
        issuer: issuer.parse().unwrap(),
        accounts: accounts(accts),
        secure_element: SecureElement::Psam,
    }
}

#[tokio::test]
async fn binding_refusals() {
    let env = env().await;
    let bank = create_issuer(&env, "bank-a", KeyFamily::Tdes).await;
    let other_bank = create_issuer(&env, "bank-b", KeyFamily::Tdes).await;
    let mut dev = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "B1", &[&dev]).await;
    let customer = approved_customer(&env, "110101199003071234", &["6222020200112233"]).await;
    let stranger = approved_customer(&env, "110101199003075678", &["6222020200445566"]).await;
    let pending = env
        .prov
        .apply(
            application("110101199003070000", &["6222020200777777"]),
            &op("alice"),
        )
        .await
        .unwrap()
        .value;
    let acct = ["6222020200112233"];

    // Device not initialised yet (manufactured, then verified).
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-a", &acct), &op("carol"))
            .await,
        "device_state",
    );
    verify(&env, &dev).await;
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-a", &acct), &op("carol"))
            .await,
        "device_state",
    );
    initialise(&env, &mut dev, &bank).await;

    // Unapproved and unknown customers.
    refused(
        env.prov
            .bind(
                bind_req(
                    dev.id,
                    &pending.customer_id,
                    "bank-a",
                    &["6222020200777777"],
                ),
                &op("carol"),
            )
            .await,
        "customer_not_approved",
    );
    let nobody: CustomerId = "cust-000000000000000000000000".parse().unwrap();
    refused(
        env.prov
            .bind(bind_req(dev.id, &nobody, "bank-a", &acct), &op("carol"))
            .await,
        "unknown_customer",
    );
    // Accounts the customer does not hold; an ESAM the device does not have;
    // an issuer without confirmed keys; an unknown device.
    refused(
        env.prov
            .bind(
                bind_req(dev.id, &customer, "bank-a", &["6222020200445566"]),
                &op("carol"),
            )
            .await,
        "accounts_not_held",
    );
    let mut esam = bind_req(dev.id, &customer, "bank-a", &acct);
    esam.secure_element = SecureElement::Esam;
    refused(
        env.prov.bind(esam, &op("carol")).await,
        "secure_element_missing",
    );
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-b", &acct), &op("carol"))
            .await,
        "issuer_not_initialised",
    );
    refused(
        env.prov
            .bind(
                bind_req(dev_id(0x55), &customer, "bank-a", &acct),
                &op("carol"),
            )
            .await,
        "unknown_device",
    );

    // Bound once; not twice for the issuer, not to another customer.
    env.prov
        .bind(bind_req(dev.id, &customer, "bank-a", &acct), &op("carol"))
        .await
        .unwrap();
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-a", &acct), &op("carol"))
            .await,
        "already_bound",
    );
    initialise(&env, &mut dev, &other_bank).await;
    refused(
        env.prov
            .bind(
                bind_req(dev.id, &stranger, "bank-b", &["6222020200445566"]),
                &op("carol"),
            )
            .await,
        "device_bound_elsewhere",
    );
    // A suspended device takes no new binding.
    env.prov
        .transition(
            dev.id,
            DeviceState::Suspended,
            &op("dave"),
            &reason("fraud check"),
        )
        .await
        .unwrap();
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-b", &acct), &op("carol"))
            .await,
        "device_state",
    );
}

#[tokio::test]
async fn lifecycle_allows_only_its_edges() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    let spare = SimDevice::p256(dev_id(2)).unwrap();
    import(&env, "B1", &[&dev, &spare]).await;
    let who = op("dave");
    let why = reason("test");

    // Evidence edges cannot be taken by an operator.
    let note = refused(
        env.prov
            .transition(dev.id, DeviceState::Verified, &who, &why)
            .await,
        "invalid_transition",
    );
    assert_eq!(note.get("from"), Some("manufactured"));
    assert_eq!(note.get("to"), Some("verified"));
    refused(
        env.prov
            .transition(dev.id, DeviceState::Issued, &who, &why)
            .await,
        "invalid_transition",
    );
    refused(
        env.prov
            .transition(dev.id, DeviceState::Suspended, &who, &why)
            .await,
        "invalid_transition",
    );
    verify(&env, &dev).await;
    refused(
        env.prov
            .transition(dev.id, DeviceState::Initialised, &who, &why)
            .await,
        "invalid_transition",
    );
    refused(
        env.prov
            .transition(dev.id, DeviceState::Manufactured, &who, &why)
            .await,
        "invalid_transition",
    );
    refused(
        env.prov
            .transition(dev_id(0x66), DeviceState::Retired, &who, &why)
            .await,
        "unknown_device",
    );

    // Any state may retire; the certificate is revoked, a retired device
    // can no longer be checked or initialised.
    let serial: Serial = env
        .prov
        .device(spare.id)
        .await
        .unwrap()
        .cert_serial
        .unwrap()
        .parse()
        .unwrap();
    let r = env
        .prov
        .transition(spare.id, DeviceState::Retired, &who, &reason("failed QA"))
        .await
        .unwrap();
    assert_eq!(r.value, DeviceState::Manufactured);
    assert!(env.ca.is_revoked(&serial).await.unwrap());
    refused(env.prov.begin_check(spare.id).await, "device_state");
    env.prov
        .transition(dev.id, DeviceState::Retired, &who, &why)
        .await
        .unwrap();
    let bank = create_issuer(&env, "bank-a", KeyFamily::Tdes).await;
    refused(env.prov.init_package(dev.id, &bank).await, "device_state");
    refused(
        env.prov
            .transition(dev.id, DeviceState::Retired, &who, &why)
            .await,
        "invalid_transition",
    );
}

/// The real CA, except that its `fail_at`-th certification fails as an HSM
/// outage would: fault injection for the import's undo path.
#[derive(Debug)]
struct OutageAt {
    ca: Ca,
    fail_at: usize,
    calls: std::sync::atomic::AtomicUsize,
}

impl DeviceCertifier for OutageAt {
    fn check_csr(&self, csr: &[u8]) -> Result<DeviceKeyKind, CertifierError> {
        DeviceCertifier::check_csr(&self.ca, csr)
    }
    fn certify<'a>(
        &'a self,
        csr: &'a [u8],
        device: DeviceId,
    ) -> BoxFuture<'a, Result<DeviceCertificate, CertifierError>> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.fail_at {
            return Box::pin(async {
                Err(CertifierError::new(
                    "hsm_error",
                    false,
                    "injected HSM outage",
                ))
            });
        }
        DeviceCertifier::certify(&self.ca, csr, device)
    }
    fn certificate<'a>(
        &'a self,
        serial: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<CertificateStatus, CertifierError>> {
        DeviceCertifier::certificate(&self.ca, serial, device)
    }
    fn revoke<'a>(
        &'a self,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), CertifierError>> {
        DeviceCertifier::revoke(&self.ca, serial, reason)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_cut_short_by_the_ca_leaves_no_device_and_no_valid_certificate() {
    let env = env().await;
    let devs: Vec<SimDevice> = (0..6)
        .map(|i| SimDevice::p256(dev_id(0xA0 + i)).unwrap())
        .collect();
    let refs: Vec<&SimDevice> = devs.iter().collect();
    let failing = Provisioning::new(
        env.kms.clone(),
        Arc::new(OutageAt {
            ca: env.ca.clone(),
            fail_at: 4,
            calls: Default::default(),
        }),
    )
    .await
    .unwrap();
    let r = failing
        .import_batch(
            &batch("B-OUTAGE"),
            &devices_manifest(&refs),
            &op("factory-desk"),
        )
        .await
        .expect_err("the CA failed half-way");
    assert_eq!(r.code(), "hsm_error");
    assert!(!r.is_client_error());
    assert!(matches!(r.note.outcome, Outcome::Failed { .. }));

    // Nothing registered, and whatever was certified before the outage is revoked.
    assert!(env.prov.batch(&batch("B-OUTAGE")).await.unwrap().is_none());
    for d in &devs {
        let e = env.prov.device(d.id).await.unwrap_err();
        assert_eq!(e.code(), "unknown_device");
    }
    let issued = env
        .ca
        .list(&CertFilter {
            profile: Some(Profile::Device),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        !issued.is_empty(),
        "some devices were certified before the outage"
    );
    assert!(
        issued.iter().all(|c| c.status == CertStatus::Revoked),
        "{issued:?}"
    );

    // The same file imports cleanly once the CA is back.
    import(&env, "B-OUTAGE", &refs).await;
    assert_eq!(
        env.prov
            .batch_devices(&batch("B-OUTAGE"), 100)
            .await
            .unwrap()
            .len(),
        6
    );
}

/// Issue 9 §4: look-alike operator names and national ids are one identity
/// (or refused), not a second person or a second customer.
#[tokio::test]
async fn look_alike_names_and_national_ids_are_one_identity() {
    let env = env().await;
    // alice + U+200B is not a name at all.
    assert!("alice\u{200B}".parse::<OperatorId>().is_err());
    let app = env
        .prov
        .apply(
            application("110101199003071234", &["6222020200112233"]),
            &op("alice"),
        )
        .await
        .unwrap()
        .value;
    // Fullwidth alice is alice: still her own application.
    refused(
        env.prov.approve(&app.id, &op("ａｌｉｃｅ")).await,
        "self_approval",
    );
    env.prov.approve(&app.id, &op("bob")).await.unwrap();
    // The same national id in fullwidth digits: the same customer.
    let twin = env
        .prov
        .apply(
            application(
                "１１０１０１１９９００３０７１２３４",
                &["6222020200999999"],
            ),
            &op("alice"),
        )
        .await
        .unwrap()
        .value;
    refused(
        env.prov.approve(&twin.id, &op("bob")).await,
        "customer_exists",
    );
    // With a zero-width space it is refused outright.
    assert!(NationalId::new("110101199003071234\u{200B}").is_err());
}
