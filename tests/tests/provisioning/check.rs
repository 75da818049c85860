//! The genuine-device check on SoftHSM with the real Keyward CA: challenges
//! by id, proof of possession, its refusals, the attempt limit; and the
//! challenge mechanism itself (bounded, single use, concurrent answers).
use std::time::Duration;

use keyward_ca::Serial;
use keyward_device_provisioning::{ChallengeId, ChallengePurpose, DeviceState};
use keyward_tests::simulator::SimDevice;

use crate::common::*;

fn unknown_id() -> ChallengeId {
    "00112233445566778899AABBCCDDEEFF".parse().unwrap()
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
    // No such challenge: invalid, not a failed proof, and not counted.
    refused(
        env.prov
            .complete_check(dev.id, &unknown_id(), &dev.sign_challenge(&[0; 32]))
            .await,
        "challenge_invalid",
    );

    // Failed proof of possession: signed by another key. The challenge is
    // used up, so the right signature afterwards is refused too.
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    let note = refused(
        env.prov
            .complete_check(dev.id, &ch.id, &other.sign_challenge(&ch.bytes))
            .await,
        "proof_of_possession_failed",
    );
    assert_eq!(note.target, format!("device:{}", dev.id));
    assert_eq!(note.get("check_failures"), Some("1"));
    refused(
        env.prov
            .complete_check(dev.id, &ch.id, &dev.sign_challenge(&ch.bytes))
            .await,
        "challenge_invalid",
    );
    // Garbage, and a signature over another challenge's bytes.
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    refused(
        env.prov
            .complete_check(dev.id, &ch.id, b"not a signature")
            .await,
        "proof_of_possession_failed",
    );
    let stale = ch.bytes;
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    assert_ne!(stale, ch.bytes, "challenges are fresh HSM randoms");
    refused(
        env.prov
            .complete_check(dev.id, &ch.id, &dev.sign_challenge(&stale))
            .await,
        "proof_of_possession_failed",
    );
    // Another device's challenge id does not answer for this one.
    let theirs = env.prov.begin_check(other.id).await.unwrap().value;
    refused(
        env.prov
            .complete_check(dev.id, &theirs.id, &dev.sign_challenge(&theirs.bytes))
            .await,
        "challenge_invalid",
    );
    assert_eq!(env.prov.device(dev.id).await.unwrap().check_failures, 3);
    assert_eq!(
        env.prov.device(dev.id).await.unwrap().state,
        DeviceState::Manufactured
    );

    // Expired challenge.
    let quick = env.prov.clone().with_challenge_ttl(Duration::ZERO);
    let ch = quick.begin_check(dev.id).await.unwrap().value;
    refused(
        quick
            .complete_check(dev.id, &ch.id, &dev.sign_challenge(&ch.bytes))
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
            .complete_check(revoked.id, &ch.id, &revoked.sign_challenge(&ch.bytes))
            .await,
        "certificate_invalid",
    );

    // Pass, then a second check of the same device is refused: it is no
    // longer `manufactured`.
    verify(&env, &dev).await;
    refused(env.prov.begin_check(dev.id).await, "device_state");
}

/// A second challenge does not replace the first; either
/// answered correctly passes.
#[tokio::test]
async fn two_outstanding_challenges_answered_in_either_order_both_pass() {
    let env = env().await;
    let a = SimDevice::p256(dev_id(1)).unwrap();
    let b = SimDevice::p256(dev_id(2)).unwrap();
    import(&env, "B1", &[&a, &b]).await;

    // The mechanism: both answered, newest first, then oldest first.
    let ch = env.prov.challenges();
    for newest_first in [true, false] {
        let one = ch
            .issue(
                a.id,
                ChallengePurpose::GenuineDevice,
                &[1; 32],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let two = ch
            .issue(
                a.id,
                ChallengePurpose::GenuineDevice,
                &[2; 32],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let order = if newest_first {
            [&two, &one]
        } else {
            [&one, &two]
        };
        for c in order {
            let bytes = ch
                .answer(&c.id, a.id, ChallengePurpose::GenuineDevice)
                .await
                .unwrap();
            assert_eq!(bytes, if c == &one { [1; 32] } else { [2; 32] });
        }
    }

    // The check: the first of two outstanding challenges still passes (it
    // was replaced before), and so would the second (for device b).
    let first = env.prov.begin_check(a.id).await.unwrap().value;
    let second = env.prov.begin_check(a.id).await.unwrap().value;
    env.prov
        .complete_check(a.id, &first.id, &a.sign_challenge(&first.bytes))
        .await
        .unwrap();
    // a is verified now: its other challenge is consumed, refused by state.
    refused(
        env.prov
            .complete_check(a.id, &second.id, &a.sign_challenge(&second.bytes))
            .await,
        "device_state",
    );
    let first = env.prov.begin_check(b.id).await.unwrap().value;
    let second = env.prov.begin_check(b.id).await.unwrap().value;
    env.prov
        .complete_check(b.id, &second.id, &b.sign_challenge(&second.bytes))
        .await
        .unwrap();
    assert_ne!(first.id, second.id);
}

/// A wrong answer consumes only its own challenge and counts one attempt.
#[tokio::test]
async fn a_wrong_answer_uses_up_only_its_own_challenge() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    let thief = SimDevice::p256(dev_id(2)).unwrap();
    import(&env, "B1", &[&dev]).await;
    let mine = env.prov.begin_check(dev.id).await.unwrap().value;
    let theirs = env.prov.begin_check(dev.id).await.unwrap().value;
    refused(
        env.prov
            .complete_check(dev.id, &theirs.id, &thief.sign_challenge(&theirs.bytes))
            .await,
        "proof_of_possession_failed",
    );
    assert_eq!(env.prov.device(dev.id).await.unwrap().check_failures, 1);
    env.prov
        .complete_check(dev.id, &mine.id, &dev.sign_challenge(&mine.bytes))
        .await
        .unwrap();
}

/// At most four outstanding per device: the fifth evicts the oldest.
#[tokio::test]
async fn outstanding_challenges_are_bounded_oldest_evicted() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "B1", &[&dev]).await;
    let ch = env.prov.challenges();
    let mut issued = Vec::new();
    for n in 0..5u8 {
        issued.push(
            ch.issue(
                dev.id,
                ChallengePurpose::GenuineDevice,
                &[n; 32],
                Duration::from_secs(60),
            )
            .await
            .unwrap(),
        );
        // Distinct creation times, so "oldest" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let evicted = ch
        .answer(&issued[0].id, dev.id, ChallengePurpose::GenuineDevice)
        .await
        .unwrap_err();
    assert_eq!(evicted.code(), "challenge_invalid");
    for c in &issued[1..] {
        ch.answer(&c.id, dev.id, ChallengePurpose::GenuineDevice)
            .await
            .unwrap();
    }
}

/// Concurrent answers to one challenge: at most one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_to_one_challenge_succeed_at_most_once() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    import(&env, "B1", &[&dev]).await;
    let ch = env.prov.challenges().clone();
    for round in 0..10u8 {
        let c = ch
            .issue(
                dev.id,
                ChallengePurpose::GenuineDevice,
                &[round; 32],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let (ch, id, device) = (ch.clone(), c.id.clone(), dev.id);
                tokio::spawn(async move {
                    ch.answer(&id, device, ChallengePurpose::GenuineDevice)
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(bytes) => {
                    assert_eq!(bytes, [round; 32]);
                    won += 1;
                }
                Err(e) => assert_eq!(e.code(), "challenge_invalid"),
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

/// After the limit of failed checks the device is parked until
/// an operator resets it; both are audited.
#[tokio::test]
async fn failed_checks_park_the_device_until_an_operator_resets_it() {
    let env = env().await;
    let dev = SimDevice::p256(dev_id(1)).unwrap();
    let thief = SimDevice::p256(dev_id(2)).unwrap();
    import(&env, "B1", &[&dev]).await;
    let prov = env.prov.clone().with_check_attempt_limit(3);
    let spare = prov.begin_check(dev.id).await.unwrap().value;
    for n in 1..=3 {
        let ch = prov.begin_check(dev.id).await.unwrap().value;
        let note = refused(
            prov.complete_check(dev.id, &ch.id, &thief.sign_challenge(&ch.bytes))
                .await,
            "proof_of_possession_failed",
        );
        assert_eq!(note.get("locked"), (n == 3).then_some("true"));
    }
    // Parked: no new challenge, and an outstanding one is refused too.
    refused(prov.begin_check(dev.id).await, "check_locked");
    refused(
        prov.complete_check(dev.id, &spare.id, &dev.sign_challenge(&spare.bytes))
            .await,
        "check_locked",
    );
    // The default limit is 5 (this device has 3 failures: not parked there).
    env.prov.begin_check(dev.id).await.unwrap();

    let reset = prov
        .reset_check(dev.id, &op("supervisor"), &reason("verified by phone"))
        .await
        .unwrap();
    assert_eq!(reset.value, 3);
    assert_eq!(reset.note.get("check_failures"), Some("3"));
    assert_eq!(prov.device(dev.id).await.unwrap().check_failures, 0);
    let ch = prov.begin_check(dev.id).await.unwrap().value;
    prov.complete_check(dev.id, &ch.id, &dev.sign_challenge(&ch.bytes))
        .await
        .unwrap();
}
