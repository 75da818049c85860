//! Manufacturing intake on SoftHSM with the real Keyward CA: all-or-nothing
//! batches with a row-by-row report, and an import cut short by the CA (an
//! HSM busy) undone. SQLite, or PostgreSQL with `KEYWARD_TEST_DATABASE_URL`.
use std::sync::Arc;

use keyward_ca::CaError;
use keyward_ca::{CertFilter, CertStatus, Profile};
use keyward_device_provisioning::ErrorKind;
use keyward_device_provisioning::{Outcome, Provisioning, RowOutcome};
use keyward_kms::KmsError;
use keyward_tests::simulator::{SimDevice, forged_csr};

use crate::common::*;

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

#[tokio::test(flavor = "multi_thread")]
async fn an_import_cut_short_by_the_ca_leaves_no_device_and_no_valid_certificate() {
    let env = env().await;
    let devs: Vec<SimDevice> = (0..6)
        .map(|i| SimDevice::p256(dev_id(0xA0 + i)).unwrap())
        .collect();
    let refs: Vec<&SimDevice> = devs.iter().collect();
    let failing = Provisioning::new(
        env.kms.clone(),
        // The CA answers the 4th certification as an HSM outage would.
        Arc::new(HookedCa::new(env.ca.clone(), |n| {
            Box::pin(async move {
                if n == 4 {
                    Err(CaError::Kms(KmsError::Busy).into())
                } else {
                    Ok(())
                }
            })
        })),
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
    // The HSM busy keeps its kind through CaError and CertifierError (the
    // server answers it with 503 and retry-after, not 500).
    assert_eq!(r.code(), "hsm_busy");
    assert_eq!(r.error.kind(), ErrorKind::Busy);
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

fn row_codes(r: &keyward_device_provisioning::Refused) -> Vec<(usize, &'static str)> {
    r.error
        .import_report()
        .unwrap()
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
        .collect()
}

/// A CSR naming another device, a key in two rows, a key
/// already registered to any device: each refused with its own code, so
/// one key can never pass two devices' checks.
#[tokio::test]
async fn one_key_one_device_and_the_csr_names_only_its_device() {
    let env = env().await;
    let a = SimDevice::p256(dev_id(1)).unwrap();
    let b = SimDevice::p256(dev_id(2)).unwrap();
    let c = SimDevice::p256(dev_id(3)).unwrap();
    let d = SimDevice::p256(dev_id(4)).unwrap();
    // B's genuine CSR (naming B) in A's row; C's CSR naming C itself is fine;
    // D's key in D's row and again in E's row.
    let e = SimDevice::p256(dev_id(5)).unwrap();
    let rows = vec![
        a.manifest_row_with_csr(&b.csr_with_serial_number(&b.id.to_string()).unwrap()), // 3
        c.manifest_row_with_csr(&c.csr_with_serial_number(&c.id.to_string()).unwrap()), // 4
        d.manifest_row(),                                                               // 5
        e.manifest_row_with_csr(d.csr_der()),                                           // 6
    ];
    let r = env
        .prov
        .import_batch(&batch("B-KEYS"), &manifest(&rows), &op("factory-desk"))
        .await
        .unwrap_err();
    assert_eq!(
        row_codes(&r),
        vec![
            (3, "csr_subject_mismatch"),
            (4, "valid"),
            (5, "valid"),
            (6, "public_key_reused"),
        ]
    );

    // Across batches: D's key registered, then offered again for another
    // device (and B's own key, without a serialNumber, in A's row).
    import(&env, "B-1", &[&d, &b]).await;
    let rows = vec![
        e.manifest_row_with_csr(d.csr_der()), // 3
        a.manifest_row_with_csr(b.csr_der()), // 4
        c.manifest_row(),                     // 5
    ];
    let r = env
        .prov
        .import_batch(&batch("B-2"), &manifest(&rows), &op("factory-desk"))
        .await
        .unwrap_err();
    assert_eq!(
        row_codes(&r),
        vec![
            (3, "public_key_reused"),
            (4, "public_key_reused"),
            (5, "valid")
        ]
    );
    // Even after its device is retired, a key stays its device's.
    env.prov
        .transition(
            d.id,
            keyward_device_provisioning::DeviceState::Retired,
            &op("ops"),
            &reason("scrapped"),
        )
        .await
        .unwrap();
    let r = env
        .prov
        .import_batch(
            &batch("B-3"),
            &manifest(&[e.manifest_row_with_csr(d.csr_der())]),
            &op("factory-desk"),
        )
        .await
        .unwrap_err();
    assert_eq!(row_codes(&r), vec![(3, "public_key_reused")]);
}
