//! The genuine-device check on SoftHSM with the real Keyward CA: challenges,
//! proof of possession, and its refusals.
use std::time::Duration;

use keyward_ca::Serial;
use keyward_device_provisioning::DeviceState;
use keyward_tests::simulator::SimDevice;

use crate::common::*;

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
