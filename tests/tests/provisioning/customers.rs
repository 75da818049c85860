//! Customer registration with maker-checker review.
use std::sync::Arc;

use keyward_device_provisioning::{
    ApplicationId, ApplicationState, NationalId, OperatorId, Provisioning,
};

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

/// A row written before national ids were canonical, straight into the
/// table; its application id.
async fn legacy_row(env: &Env, state: &str, national_id: &str) -> ApplicationId {
    let id = format!("app-{}", hex::encode(rand::random::<[u8; 12]>()));
    let customer = format!("cust-{}", hex::encode(rand::random::<[u8; 12]>()));
    let decided = state != "submitted";
    sqlx::query(
        "INSERT INTO prov_applications (id, customer_id, state, name, national_id, accounts, \
         contact_kind, contact_address, revision, submitted_by, submitted_at_ms, decided_by, \
         decided_at_ms) VALUES ($1, $2, $3, 'Li Lei', $4, '6222020200112233', 'sms', \
         '+8613800138000', 1, 'alice', 1, $5, $6)",
    )
    .bind(&id)
    .bind(&customer)
    .bind(state)
    .bind(national_id)
    .bind(decided.then_some("bob"))
    .bind(decided.then_some(2_i64))
    .execute(env.kms.db().pool())
    .await
    .unwrap();
    id.parse().unwrap()
}

/// National ids stored before the canonical form are rewritten to it once,
/// so one customer per national id holds on old rows too; what cannot be
/// rewritten is left for an operator and cannot be approved.
#[tokio::test]
async fn national_ids_stored_before_the_canonical_form_are_rewritten_once() {
    let env = env().await;
    approved_customer(&env, "110101199003071234", &["6222020200112233"]).await;
    let hyphens = legacy_row(&env, "approved", "110101-19900307-5678").await;
    let spaced_twin = legacy_row(&env, "approved", "110101 199003071234").await;
    let submitted = legacy_row(&env, "submitted", "110101 199003079999").await;
    let cyrillic = legacy_row(&env, "submitted", "11010119900307123\u{425}").await;
    sqlx::query("DELETE FROM prov_backfills")
        .execute(env.kms.db().pool())
        .await
        .unwrap();
    let stored = |id: ApplicationId| {
        let pool = env.kms.db().pool().clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT national_id FROM prov_applications WHERE id = $1",
            )
            .bind(id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let prov = Provisioning::new(env.kms.clone(), Arc::new(env.ca.clone()))
        .await
        .unwrap();
    assert_eq!(stored(hyphens.clone()).await, "110101199003075678");
    assert_eq!(stored(submitted.clone()).await, "110101199003079999");
    // Two approved customers with one id: left as stored, for review.
    assert_eq!(stored(spaced_twin).await, "110101 199003071234");
    // No canonical form: left, read back as stored, not approvable.
    assert_eq!(stored(cyrillic.clone()).await, "11010119900307123\u{425}");
    let view = prov.review(&cyrillic).await.unwrap();
    assert!(!view.application.national_id.is_canonical());
    refused(prov.approve(&cyrillic, &op("bob")).await, "invalid_input");
    // Once: a row written afterwards the old way is not touched again.
    let late = legacy_row(&env, "submitted", "110101-199003070000").await;
    Provisioning::new(env.kms.clone(), Arc::new(env.ca.clone()))
        .await
        .unwrap();
    assert_eq!(stored(late).await, "110101-199003070000");
}
