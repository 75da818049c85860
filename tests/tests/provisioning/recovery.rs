//! An import whose process dies leaves no certificate nothing
//! owns. The "crash" is the import's future dropped half-way (its lease
//! keeper goes with it) while the CA stalls; recovery then takes the batch
//! over once the lease has run out. Also: a stalled but live import keeps
//! its lease, a taken-over import stops and fails, and OCSP never calls an
//! orphan `good`. SQLite, or PostgreSQL with `KEYWARD_TEST_DATABASE_URL`.
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_ca::{
    CertFilter, CertStatus, OcspLimits, OcspResponder, Profile, Serial, ocsp::CertStanding,
};
use keyward_device_provisioning::{Action, BatchState, Outcome, Provisioning};
use keyward_tests::simulator::SimDevice;
use tokio::sync::Semaphore;

use crate::common::*;

const LEASE: Duration = Duration::from_millis(400);

/// The CA, but certifications after the first `pass` wait for the gate (an
/// HSM stall, or a process about to be killed).
fn stalling(env: &Env, pass: usize) -> (Arc<HookedCa>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let certifier = Arc::new(HookedCa::new(env.ca.clone(), move |n| {
        let gate = held.clone();
        Box::pin(async move {
            if n > pass {
                let _permit = gate.acquire().await;
            }
            Ok(())
        })
    }));
    (certifier, gate)
}

async fn valid_device_certs(env: &Env) -> Vec<Serial> {
    env.ca
        .list(&CertFilter {
            profile: Some(Profile::Device),
            status: Some(CertStatus::Valid),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.serial)
        .collect()
}

/// Waits until `n` device certificates are valid in the registry.
async fn until_issued(env: &Env, n: usize) -> Vec<Serial> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let valid = valid_device_certs(env).await;
        if valid.len() >= n {
            return valid;
        }
        assert!(Instant::now() < deadline, "only {} issued", valid.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The OCSP `Cert Status` line of the responder's answer for `serial`.
async fn ocsp_status(env: &Env, ocsp: &OcspResponder, dir: &Path, serial: &Serial) -> String {
    std::fs::write(dir.join("issuing.pem"), env.ca.issuing_pem()).unwrap();
    let serial = format!("0x{serial}");
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            &serial,
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
        dir,
    );
    let answer = ocsp
        .respond(&std::fs::read(dir.join("req.der")).unwrap())
        .await
        .unwrap();
    std::fs::write(dir.join("resp.der"), &answer.der).unwrap();
    let text = openssl(
        &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
        dir,
    );
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Cert Status: "))
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_import_is_recovered_and_its_file_imports_again() {
    let env = env().await;
    let prov = env.prov.clone().with_import_lease(LEASE);
    let dir = tempfile::tempdir().unwrap();
    let ocsp = OcspResponder::new(
        env.ca.clone(),
        OcspLimits {
            cache_entries: 100,
            signatures_per_second: 1000,
        },
    )
    .unwrap()
    .with_standing(Arc::new(prov.clone()));
    let devs: Vec<SimDevice> = (0..8)
        .map(|i| SimDevice::p256(dev_id(0xC0 + i)).unwrap())
        .collect();
    let refs: Vec<&SimDevice> = devs.iter().collect();
    let file = devices_manifest(&refs);

    let (certifier, gate) = stalling(&env, 3);
    let importing = Provisioning::new(env.kms.clone(), certifier)
        .await
        .unwrap()
        .with_import_lease(LEASE);
    let (b, f) = (batch("B-KILLED"), file.clone());
    let task = tokio::spawn(async move {
        importing
            .import_batch(&b, &f, &op("factory-desk"))
            .await
            .map(|d| d.value)
    });
    let orphans = until_issued(&env, 3).await;
    assert_eq!(orphans.len(), 3);

    // Stalled but alive: the lease is kept on its own timer, so neither
    // recovery nor an operator can roll the import back.
    tokio::time::sleep(LEASE * 2).await;
    assert!(prov.recover_stale_imports().await.unwrap().is_empty());
    refused(
        prov.abort_batch(&batch("B-KILLED"), &op("alice")).await,
        "import_running",
    );
    let b = prov.batch(&batch("B-KILLED")).await.unwrap().unwrap();
    assert_eq!(b.state, BatchState::Importing);

    // Meanwhile an issued certificate is no credential: OCSP says unknown,
    // every time (not cached), and so does the standing check.
    for serial in &orphans {
        assert_eq!(
            ocsp_status(&env, &ocsp, dir.path(), serial).await,
            "unknown"
        );
        assert_eq!(
            ocsp_status(&env, &ocsp, dir.path(), serial).await,
            "unknown"
        );
        let rec = env.ca.get(serial).await.unwrap().unwrap();
        let stands = CertStanding::device_certificate_stands(&prov, rec.device_id.unwrap(), serial)
            .await
            .unwrap();
        assert!(!stands);
    }

    // The crash: the import's future is gone mid-way, its lease keeper too.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    drop(gate);
    let killed = Instant::now();
    let notes = loop {
        let notes = prov.recover_stale_imports().await.unwrap();
        if !notes.is_empty() {
            break notes;
        }
        assert!(killed.elapsed() < LEASE * 10, "never recovered");
        tokio::time::sleep(LEASE / 8).await;
    };
    let recovered_after = killed.elapsed();
    assert!(recovered_after >= LEASE / 2, "{recovered_after:?}");
    assert_eq!(notes.len(), 1);
    let note = &notes[0];
    assert_eq!(note.action, Action::RecoverImport);
    assert_eq!(note.target, "batch:B-KILLED");
    assert_eq!(note.outcome, Outcome::Success);
    assert_eq!(note.get("devices"), Some("8"));
    assert_eq!(note.get("revoked"), Some("3"));
    println!("recovered {recovered_after:?} after the kill (lease {LEASE:?})");

    // Nothing left: no batch, no device, no valid device certificate.
    assert!(prov.batch(&batch("B-KILLED")).await.unwrap().is_none());
    for d in &devs {
        assert_eq!(
            prov.device(d.id).await.unwrap_err().code(),
            "unknown_device"
        );
        assert!(
            env.prov
                .certifier()
                .valid_certificates(d.id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(valid_device_certs(&env).await.is_empty());
    for serial in &orphans {
        assert_eq!(
            ocsp_status(&env, &ocsp, dir.path(), serial).await,
            "revoked"
        );
    }
    // A second run finds nothing; aborting the gone batch is a 404.
    assert!(prov.recover_stale_imports().await.unwrap().is_empty());
    let gone = prov
        .abort_batch(&batch("B-KILLED"), &op("alice"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), "unknown_batch");

    // The same file imports again under the same batch id, and its
    // certificates are good.
    let report = prov
        .import_batch(&batch("B-KILLED"), &file, &op("factory-desk"))
        .await
        .unwrap()
        .value;
    assert!(report.accepted());
    let good = valid_device_certs(&env).await;
    assert_eq!(good.len(), 8);
    assert_eq!(ocsp_status(&env, &ocsp, dir.path(), &good[0]).await, "good");
    refused(
        prov.abort_batch(&batch("B-KILLED"), &op("alice")).await,
        "batch_complete",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_taken_over_stops_revokes_its_own_and_cannot_complete() {
    let env = env().await;
    let prov = env.prov.clone().with_import_lease(LEASE);
    let devs: Vec<SimDevice> = (0..6)
        .map(|i| SimDevice::p256(dev_id(0xD0 + i)).unwrap())
        .collect();
    let refs: Vec<&SimDevice> = devs.iter().collect();
    let file = devices_manifest(&refs);
    let (certifier, gate) = stalling(&env, 2);
    let importing = Provisioning::new(env.kms.clone(), certifier.clone())
        .await
        .unwrap()
        .with_import_lease(LEASE);
    let (b, f) = (batch("B-TAKEN"), file.clone());
    let task = tokio::spawn(async move {
        importing
            .import_batch(&b, &f, &op("factory-desk"))
            .await
            .map(|d| d.value)
    });
    until_issued(&env, 2).await;

    // Another attempt holds the batch now (as a recovery that claimed it).
    sqlx::query("UPDATE prov_batches SET importer = 'someone-else' WHERE id = 'B-TAKEN'")
        .execute(env.kms.db().pool())
        .await
        .unwrap();
    // The keeper notices on its next renewal; then the stalled
    // certifications finish, and the import stops.
    tokio::time::sleep(LEASE / 2).await;
    gate.add_permits(100);
    let r = task.await.unwrap().expect_err("taken over");
    assert_eq!(r.code(), "import_aborted");
    assert!(r.is_client_error());
    assert!(matches!(r.note.outcome, Outcome::Refused { .. }));
    assert!(certifier.calls() < devs.len(), "it stopped issuing");
    // It did not complete, and revoked what it issued itself.
    let b = prov.batch(&batch("B-TAKEN")).await.unwrap().unwrap();
    assert_eq!(b.state, BatchState::Importing);
    assert!(valid_device_certs(&env).await.is_empty());

    // Once the other holder's lease runs out, recovery removes the batch.
    sqlx::query("UPDATE prov_batches SET lease_until_ms = 0 WHERE id = 'B-TAKEN'")
        .execute(env.kms.db().pool())
        .await
        .unwrap();
    let done = prov
        .abort_batch(&batch("B-TAKEN"), &op("alice"))
        .await
        .unwrap();
    assert_eq!(done.note.action, Action::AbortImport);
    assert_eq!(done.value.devices, 6);
    assert_eq!(done.value.revoked, 0);
    assert!(prov.batch(&batch("B-TAKEN")).await.unwrap().is_none());
    import(&env, "B-TAKEN", &refs).await;
}
