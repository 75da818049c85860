//! A device from the factory to issued and retired, end to end, and the
//! lifecycle's operator edges.
use keyward_ca::Serial;
use keyward_device_provisioning::{
    Action, Actor, ApplicationState, BindRequest, DeviceState, InitState, RowOutcome, SecureElement,
};
use keyward_kms::MacItem;
use keyward_kms::types::{KeyFamily, MacAlgorithm};
use keyward_tests::simulator::SimDevice;

use crate::common::*;

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
    let done = env
        .prov
        .complete_check(d1.id, &begun.value.id, &sig)
        .await
        .unwrap();
    assert_eq!(done.note.get("cert_serial"), Some(cert_serial.as_str()));
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().state,
        DeviceState::Verified
    );

    // Original keys for bank A: the simulator unwraps and confirms.
    let pkg = env
        .prov
        .init_package(d1.id, &bank_a, &op("station"))
        .await
        .unwrap();
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
    refused(
        env.prov.init_package(dev.id, &bank, &op("station")).await,
        "device_state",
    );
    refused(
        env.prov
            .transition(dev.id, DeviceState::Retired, &who, &why)
            .await,
        "invalid_transition",
    );
}

fn status(records: &[keyward_ca::CertRecord], serial: &str) -> keyward_ca::CertStatus {
    records
        .iter()
        .find(|r| r.serial.as_str() == serial)
        .map(|r| r.status)
        .unwrap()
}

/// Retiring revokes every certificate the CA holds for the
/// device id, not only the registered one (a clone minted another way dies
/// with it).
#[tokio::test]
async fn retiring_revokes_every_certificate_of_the_device() {
    let env = env().await;
    let d1 = SimDevice::p256(dev_id(1)).unwrap();
    let clone_key = SimDevice::p256(dev_id(9)).unwrap();
    import(&env, "B1", &[&d1]).await;
    let registered = env.prov.device(d1.id).await.unwrap().cert_serial.unwrap();
    let clone = env
        .ca
        .issue_from_csr(clone_key.csr_der(), keyward_ca::IssueRequest::device(d1.id))
        .await
        .unwrap();
    let retired = env
        .prov
        .transition(d1.id, DeviceState::Retired, &op("ops"), &reason("stolen"))
        .await
        .unwrap();
    assert_eq!(retired.note.get("certificates_revoked"), Some("2"));
    let all = env
        .ca
        .list(&keyward_ca::CertFilter {
            device_id: Some(d1.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status(&all, &registered), keyward_ca::CertStatus::Revoked);
    assert_eq!(
        status(&all, clone.serial.as_str()),
        keyward_ca::CertStatus::Revoked
    );
}

/// Re-certification: maker-checker, a key no device ever had, and every
/// other certificate of the device revoked.
#[tokio::test]
async fn recertification_needs_a_second_operator_and_revokes_the_rest() {
    let env = env().await;
    let d1 = SimDevice::p256(dev_id(1)).unwrap();
    let d2 = SimDevice::p256(dev_id(2)).unwrap();
    import(&env, "B1", &[&d1, &d2]).await;
    let old = env.prov.device(d1.id).await.unwrap().cert_serial.unwrap();
    let renewed = SimDevice::p256(d1.id).unwrap();

    // Another device's key, or a CSR naming another device: refused.
    refused(
        env.prov
            .request_recertify(d1.id, d2.csr_der(), &op("alice"), &reason("new key"))
            .await,
        "public_key_reused",
    );
    let naming_d2 = renewed.csr_with_serial_number(&d2.id.to_string()).unwrap();
    refused(
        env.prov
            .request_recertify(d1.id, &naming_d2, &op("alice"), &reason("new key"))
            .await,
        "csr_subject_mismatch",
    );
    // Approval without a request; the request; one pending at a time.
    refused(
        env.prov.approve_recertify(d1.id, &op("bob")).await,
        "no_pending_recertification",
    );
    let asked = env
        .prov
        .request_recertify(
            d1.id,
            renewed.csr_der(),
            &op("alice"),
            &reason("key rotated"),
        )
        .await
        .unwrap();
    assert_eq!(asked.note.action, Action::RequestRecertify);
    assert!(asked.value.cert_serial.is_none());
    refused(
        env.prov
            .request_recertify(d1.id, renewed.csr_der(), &op("carol"), &reason("again"))
            .await,
        "recertification_pending",
    );
    // The maker cannot approve; a second operator can.
    refused(
        env.prov.approve_recertify(d1.id, &op("alice")).await,
        "self_approval",
    );
    let done = env.prov.approve_recertify(d1.id, &op("bob")).await.unwrap();
    let new = done.value.cert_serial.clone().unwrap();
    assert_eq!(done.value.revoked, vec![old.clone()]);
    assert_eq!(done.note.get("requested_by"), Some("alice"));
    assert_eq!(
        env.prov.device(d1.id).await.unwrap().cert_serial,
        Some(new.clone())
    );
    let all = env
        .ca
        .list(&keyward_ca::CertFilter {
            device_id: Some(d1.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(status(&all, &old), keyward_ca::CertStatus::Revoked);
    assert_eq!(status(&all, &new), keyward_ca::CertStatus::Valid);
    // The new key passes the check; the old one cannot.
    let ch = env.prov.begin_check(d1.id).await.unwrap().value;
    refused(
        env.prov
            .complete_check(d1.id, &ch.id, &d1.sign_challenge(&ch.bytes))
            .await,
        "proof_of_possession_failed",
    );
    let ch = env.prov.begin_check(d1.id).await.unwrap().value;
    env.prov
        .complete_check(d1.id, &ch.id, &renewed.sign_challenge(&ch.bytes))
        .await
        .unwrap();
    // The renewed key is now registered: it cannot be used again, even for
    // the same device.
    let again = env
        .prov
        .request_recertify(d1.id, renewed.csr_der(), &op("alice"), &reason("again"))
        .await;
    refused(again, "public_key_reused");
}
