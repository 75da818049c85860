//! `/admin/v1/applications`, `/admin/v1/customers`: customer review, maker
//! and checker being two people.

use axum::http::StatusCode;
use keyward_ca::Role;
use keyward_server::edge::identity::ClientIdentity;
use serde_json::{Value, json};

use crate::harness::App;

fn application(national_id: &str) -> Value {
    json!({"name": "Han Meimei", "national_id": national_id,
           "accounts": ["6222020200998877"],
           "contact": {"kind": "email", "address": "han@example.com"}})
}

/// An application by `maker`; its id.
async fn apply(app: &App, maker: &ClientIdentity) -> String {
    let applied = app
        .post(
            maker,
            "/admin/v1/applications",
            application("110101198001010011"),
        )
        .await;
    applied.expect(StatusCode::CREATED)["application_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn review_is_maker_checker_through_the_routes() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let id = apply(&app, &alice).await;
    let queue = app
        .get(&bob, "/admin/v1/applications?state=submitted&limit=10")
        .await;
    let queue = queue.expect(StatusCode::OK)["applications"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(queue.len(), 1);
    let review = app.get(&bob, &format!("/admin/v1/applications/{id}")).await;
    assert_eq!(review.expect(StatusCode::OK)["state"], "submitted");

    // The maker may not check.
    app.post(
        &alice,
        &format!("/admin/v1/applications/{id}/approve"),
        json!({}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "self_approval");
    // Rejected, resubmitted, approved by the checker.
    app.post(
        &bob,
        &format!("/admin/v1/applications/{id}/reject"),
        json!({"reason": "blurred scan"}),
    )
    .await
    .expect(StatusCode::OK);
    app.post(
        &alice,
        &format!("/admin/v1/applications/{id}/resubmit"),
        application("110101198001010011"),
    )
    .await
    .expect(StatusCode::OK);
    let approved = app
        .post(
            &bob,
            &format!("/admin/v1/applications/{id}/approve"),
            json!({}),
        )
        .await;
    let customer = approved.expect(StatusCode::OK)["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = app
        .get(&alice, &format!("/admin/v1/customers/{customer}"))
        .await;
    assert_eq!(shown.expect(StatusCode::OK)["approved_by"], "bob");
    assert!(app.audited("customer.approve", "success").await);
    assert!(app.audited("customer.approve", "refused").await);
    // National ids never reach the trail.
    let trail = serde_json::to_string(&app.trail().await).unwrap();
    assert!(!trail.contains("110101198001010011"));
}

#[tokio::test]
async fn closing_and_refusals_are_typed() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let applied = app
        .post(
            &alice,
            "/admin/v1/applications",
            application("110101198001010022"),
        )
        .await;
    let id = applied.expect(StatusCode::CREATED)["application_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &alice,
        &format!("/admin/v1/applications/{id}/close"),
        json!({"reason": "withdrawn by the applicant"}),
    )
    .await
    .expect(StatusCode::OK);
    let a = app
        .post(
            &alice,
            &format!("/admin/v1/applications/{id}/approve"),
            json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    app.get(
        &alice,
        "/admin/v1/applications/app-000000000000000000000000",
    )
    .await
    .refused(StatusCode::NOT_FOUND, "unknown_application");
    app.get(&alice, "/admin/v1/customers/cust-000000000000000000000000")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_customer");
    let mut bad = application("110101198001010044");
    bad["accounts"] = json!(["not-an-account"]);
    let bad = app.post(&alice, "/admin/v1/applications", bad).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let carol = app.operator("carol", Role::Auditor).await;
    app.post(
        &carol,
        "/admin/v1/applications",
        application("110101198001010033"),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "forbidden_role");
}

#[tokio::test]
async fn a_national_id_typed_into_a_reject_reason_is_stored_redacted() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let id = apply(&app, &alice).await;
    // Fullwidth digits and a zero-width space must not slip past the filter.
    let reason =
        "scan shows 110101198001010011, not １１０１０１\u{200B}198001010012; call 138-0013-8000";
    app.post(
        &bob,
        &format!("/admin/v1/applications/{id}/reject"),
        json!({ "reason": reason }),
    )
    .await
    .expect(StatusCode::OK);
    let trail = app.trail().await;
    let rejected = trail
        .iter()
        .find(|r| r["action"] == "customer.reject" && r["outcome"] == "success")
        .expect("a reject record");
    let detail: Value = serde_json::from_str(rejected["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(
        detail["reason"], "scan shows [redacted], not [redacted]; call [redacted]",
        "{detail}"
    );
    let text = serde_json::to_string(&trail).unwrap();
    for digits in [
        "110101198001010011",
        "198001010012",
        "13800138000",
        "0013-8000",
    ] {
        assert!(!text.contains(digits), "{digits} reached the trail");
    }
}
