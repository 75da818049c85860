//! Binding a device's secure element(s) to an approved customer, and its
//! refusals.
use keyward_device_provisioning::{CustomerId, DeviceState, SecureElement};
use keyward_kms::types::KeyFamily;
use keyward_tests::simulator::SimDevice;

use crate::common::*;

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
    // A suspended device takes no new binding. The reason reaches the trail
    // without the personal data of the device's customer.
    let suspended = env
        .prov
        .transition(
            dev.id,
            DeviceState::Suspended,
            &op("dave"),
            &reason("fraud check: li lei called from +8613800138000"),
        )
        .await
        .unwrap();
    assert_eq!(
        suspended.note.get("reason"),
        Some("fraud check: [redacted] called from [redacted]")
    );
    refused(
        env.prov
            .bind(bind_req(dev.id, &customer, "bank-b", &acct), &op("carol"))
            .await,
        "device_state",
    );
}
