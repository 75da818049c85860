//! `/admin/v1/issuers`: creating issuers (their master keys in the HSM) and
//! reading them.

use axum::http::StatusCode;
use keyward_ca::Role;
use serde_json::json;

use crate::harness::App;

#[tokio::test]
async fn an_admin_creates_issuers_everyone_reads_them() {
    let app = App::new().await;
    let created = app
        .post(
            &app.root,
            "/admin/v1/issuers",
            json!({"issuer_id": "bank-a", "family": "aes"}),
        )
        .await;
    let body = created.expect(StatusCode::CREATED).clone();
    assert_eq!(body["issuer_id"], "bank-a");
    assert_eq!(body["family"], "aes");
    let keys = body["master_keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k["kcv"]["method"].is_string()));
    assert!(app.audited("issuer.create", "requested").await);
    assert!(app.audited("issuer.create", "success").await);

    let carol = app.operator("carol", Role::Auditor).await;
    let list = app.get(&carol, "/admin/v1/issuers").await;
    let issuers = list.expect(StatusCode::OK)["issuers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(issuers.len(), 1);
    let show = app.get(&carol, "/admin/v1/issuers/bank-a").await;
    assert_eq!(
        show.expect(StatusCode::OK)["master_keys"],
        body["master_keys"]
    );
}

/// An issuer is recorded with its outcome record, or not at all: with the
/// trail unable to take it, no issuer exists and its master keys are gone
/// from the token; the next attempt creates it.
#[tokio::test]
async fn an_issuer_commits_with_its_outcome_record() {
    let app = App::new().await;
    let secret_keys = || {
        let listed = app.install.token.list_objects("secrkey").unwrap();
        listed.matches("Secret Key Object").count()
    };
    let before = secret_keys();
    let create = json!({"issuer_id": "bank-a", "family": "tdes"});
    app.break_audit_staging().await;
    let cut = app
        .post(&app.root, "/admin/v1/issuers", create.clone())
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("issuer.create", cut.request_id()).await,
        ["requested", "failure"]
    );
    app.get(&app.root, "/admin/v1/issuers/bank-a")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_issuer");
    assert_eq!(secret_keys(), before);

    app.heal_audit_staging().await;
    let done = app.post(&app.root, "/admin/v1/issuers", create).await;
    done.expect(StatusCode::CREATED);
    assert_eq!(
        app.outcomes_of("issuer.create", done.request_id()).await,
        ["requested", "success"]
    );
    assert!(secret_keys() > before);
}

#[tokio::test]
async fn issuer_refusals_are_typed_and_audited() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    app.post(
        &app.root,
        "/admin/v1/issuers",
        json!({"issuer_id": "bank-a", "family": "tdes"}),
    )
    .await
    .refused(StatusCode::CONFLICT, "issuer_exists");
    assert!(app.audited("issuer.create", "failure").await);
    for body in [
        json!({"issuer_id": "Bank A", "family": "tdes"}),
        json!({"issuer_id": "bank-b", "family": "des"}),
        json!({"issuer_id": "bank-b", "family": "tdes", "extra": 1}),
    ] {
        let a = app.post(&app.root, "/admin/v1/issuers", body).await;
        assert!(a.status.is_client_error(), "{}", a.text);
        assert!(
            ["invalid_input", "invalid_request"].contains(&a.code()),
            "{}",
            a.text
        );
    }
    app.get(&app.root, "/admin/v1/issuers/bank-z")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_issuer");
}

/// An issuer made before the zone PIN key existed gets it by
/// `POST …/keys`, recorded with its outcome record or not at all; a second
/// call adds nothing.
#[tokio::test]
async fn a_missing_zone_pin_key_is_added_once_with_its_outcome_record() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    app.exec("DELETE FROM master_keys WHERE issuer_id = 'bank-a' AND role = 'ZPK'")
        .await;
    let roles = || async {
        let shown = app.get(&app.root, "/admin/v1/issuers/bank-a").await;
        let mut roles: Vec<String> = shown.expect(StatusCode::OK)["master_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["role"].as_str().unwrap().to_owned())
            .collect();
        roles.sort();
        roles
    };
    assert_eq!(roles().await, ["IMK-AUTH", "IMK-TMK"]);
    let add = json!({"role": "zpk"});
    app.post(
        &app.root,
        "/admin/v1/issuers/bank-a/keys",
        json!({"role": "imk-tmk"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_input");

    app.break_audit_staging().await;
    let cut = app
        .post(&app.root, "/admin/v1/issuers/bank-a/keys", add.clone())
        .await;
    cut.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(
        app.outcomes_of("issuer.add_key", cut.request_id()).await,
        ["requested", "failure"]
    );
    assert_eq!(roles().await, ["IMK-AUTH", "IMK-TMK"]);

    app.heal_audit_staging().await;
    let added = app
        .post(&app.root, "/admin/v1/issuers/bank-a/keys", add.clone())
        .await;
    added.expect(StatusCode::OK);
    assert_eq!(
        app.outcomes_of("issuer.add_key", added.request_id()).await,
        ["requested", "success"]
    );
    assert_eq!(roles().await, ["IMK-AUTH", "IMK-TMK", "ZPK"]);
    let again = app
        .post(&app.root, "/admin/v1/issuers/bank-a/keys", add)
        .await;
    assert_eq!(again.expect(StatusCode::OK), added.expect(StatusCode::OK));
}
