//! Original keys: init packages opened by the simulated device, KCV
//! confirmation, reinit, for P-256 and RSA devices.
use keyward_device_provisioning::{DeviceState, InitState};
use keyward_kms::types::{IssuerId, KeyFamily};
use keyward_tests::simulator::SimDevice;

use crate::common::*;

fn dev_kcv() -> keyward_kms::types::Kcv {
    keyward_kms::types::Kcv::parse("KCV-TDES", "000000").unwrap()
}

#[tokio::test]
async fn rsa_device_is_checked_and_initialised() {
    let env = env().await;
    let bank = create_issuer(&env, "bank-r", KeyFamily::Aes).await;
    let mut dev = SimDevice::rsa(dev_id(9)).unwrap();
    import(&env, "RSA-1", &[&dev]).await;
    verify(&env, &dev).await;
    let pkg = env
        .prov
        .init_package(dev.id, &bank, &op("station"))
        .await
        .unwrap();
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
async fn init_package_needs_a_verified_device_and_matching_kcvs() {
    let env = env().await;
    let bank = create_issuer(&env, "bank-a", KeyFamily::Tdes).await;
    let mut dev = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "B1", &[&dev]).await;

    // Not yet verified.
    refused(
        env.prov.init_package(dev.id, &bank, &op("station")).await,
        "device_state",
    );
    verify(&env, &dev).await;
    refused(
        env.prov
            .confirm_init(dev.id, &bank, &[("TMK", dev_kcv())])
            .await,
        "no_pending_init",
    );
    let unknown: IssuerId = "nobody".parse().unwrap();
    refused(
        env.prov
            .init_package(dev.id, &unknown, &op("station"))
            .await,
        "unknown_issuer",
    );

    // The device reports a wrong KCV: refused, recorded, not initialised.
    let pkg = env
        .prov
        .init_package(dev.id, &bank, &op("station"))
        .await
        .unwrap()
        .value;
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
        env.prov.init_package(dev.id, &bank, &op("station")).await,
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
        env.prov.init_package(dev.id, &bank, &op("station")).await,
        "reinit_required",
    );

    // A missing key name is a mismatch too.
    env.prov
        .reinit(dev.id, &bank, &op("dave"), &reason("device reset"))
        .await
        .unwrap();
    let pkg = env
        .prov
        .init_package(dev.id, &bank, &op("station"))
        .await
        .unwrap()
        .value;
    let answer = dev.load_init_package(&pkg).unwrap();
    refused(
        env.prov
            .confirm_init(dev.id, &bank, &answer.kcvs[..1])
            .await,
        "kcv_mismatch",
    );
}
