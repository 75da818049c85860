//! Customer registration with maker-checker review.
use keyward_device_provisioning::{ApplicationState, NationalId, OperatorId};

use crate::common::*;

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

/// Look-alike operator names and national ids are one identity
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
