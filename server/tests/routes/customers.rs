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

/// A checker's decision writes its `requested` record first and commits
/// with its outcome record: when that record cannot be staged the
/// application stays as it was.
#[tokio::test]
async fn review_decisions_commit_with_their_outcome_records() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let id = apply(&app, &alice).await;
    let review = format!("/admin/v1/applications/{id}");
    let state = || async {
        let a = app.get(&bob, &review).await;
        a.expect(StatusCode::OK)["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    app.break_audit_staging().await;
    for (step, body) in [
        ("approve", json!({})),
        ("reject", json!({"reason": "typo"})),
    ] {
        let refused = app.post(&bob, &format!("{review}/{step}"), body).await;
        refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
        assert_eq!(state().await, "submitted", "{step}");
        assert_eq!(
            app.outcomes_of(&format!("customer.{step}"), refused.request_id())
                .await,
            ["requested", "failure"]
        );
    }

    app.heal_audit_staging().await;
    let approved = app
        .post(&bob, &format!("{review}/approve"), json!({}))
        .await;
    approved.expect(StatusCode::OK);
    assert_eq!(state().await, "approved");
    assert_eq!(
        app.outcomes_of("customer.approve", approved.request_id())
            .await,
        ["requested", "success"]
    );
    let closed = app
        .post(&bob, &format!("{review}/close"), json!({"reason": "late"}))
        .await;
    closed.refused(StatusCode::CONFLICT, "application_state");
    assert_eq!(
        app.outcomes_of("customer.close", closed.request_id()).await,
        ["requested", "refused"]
    );
}

/// An application and its resubmission commit with their outcome records:
/// when that record cannot be staged nothing is created or changed.
#[tokio::test]
async fn applications_commit_with_their_outcome_records() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let queue = || async {
        let a = app
            .get(&bob, "/admin/v1/applications?state=submitted")
            .await;
        a.expect(StatusCode::OK)["applications"]
            .as_array()
            .unwrap()
            .len()
    };

    app.break_audit_staging().await;
    let refused = app
        .post(
            &alice,
            "/admin/v1/applications",
            application("110101198001010011"),
        )
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    assert_eq!(queue().await, 0);
    assert_eq!(
        app.outcomes_of("customer.apply", refused.request_id())
            .await,
        ["requested", "failure"]
    );

    app.heal_audit_staging().await;
    let id = apply(&app, &alice).await;
    assert_eq!(queue().await, 1);
    let review = format!("/admin/v1/applications/{id}");
    app.post(&bob, &format!("{review}/reject"), json!({"reason": "typo"}))
        .await
        .expect(StatusCode::OK);

    app.break_audit_staging().await;
    let resubmit = format!("{review}/resubmit");
    let refused = app
        .post(&alice, &resubmit, application("110101198001010011"))
        .await;
    refused.refused(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable");
    let rejected = app.get(&bob, &review).await;
    assert_eq!(rejected.expect(StatusCode::OK)["state"], "rejected");
    assert_eq!(
        app.outcomes_of("customer.resubmit", refused.request_id())
            .await,
        ["requested", "failure"]
    );

    app.heal_audit_staging().await;
    let again = app
        .post(&alice, &resubmit, application("110101198001010011"))
        .await;
    let again = again.expect(StatusCode::OK);
    assert_eq!(
        (again["state"].as_str(), again["revision"].as_u64()),
        (Some("submitted"), Some(2))
    );
    let stale = app
        .post(&alice, &resubmit, application("110101198001010011"))
        .await;
    stale.refused(StatusCode::CONFLICT, "application_state");
    assert_eq!(
        app.outcomes_of("customer.resubmit", stale.request_id())
            .await,
        ["requested", "refused"]
    );
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

/// An application by `maker` for `national_id`; its id, or the refusal.
async fn apply_for(app: &App, maker: &ClientIdentity, national_id: &str) -> Result<String, String> {
    let applied = app
        .post(maker, "/admin/v1/applications", application(national_id))
        .await;
    match applied.status {
        StatusCode::CREATED => Ok(applied.body["application_id"].as_str().unwrap().to_owned()),
        _ => Err(format!("{} {}", applied.status, applied.text)),
    }
}

#[tokio::test]
async fn one_national_id_in_any_form_is_one_customer() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let first = apply_for(&app, &alice, "11010119900307123X").await.unwrap();
    app.post(
        &bob,
        &format!("/admin/v1/applications/{first}/approve"),
        json!({}),
    )
    .await
    .expect(StatusCode::OK);
    // The same id with Arabic-Indic digits, an inner space, hyphens, a
    // lower-case check character: the same customer, refused at approval.
    let arabic: String = "11010119900307123"
        .chars()
        .map(|c| char::from_u32(0x660 + c.to_digit(10).unwrap()).unwrap())
        .chain(['X'])
        .collect();
    for same in [
        arabic.as_str(),
        "110101 19900307123X",
        "110101-1990-0307-123X",
        "11010119900307123x",
    ] {
        let id = apply_for(&app, &alice, same).await.unwrap();
        let review = app.get(&bob, &format!("/admin/v1/applications/{id}")).await;
        assert_eq!(
            review.expect(StatusCode::OK)["national_id"],
            "11010119900307123X",
            "{same:?} is stored canonical"
        );
        app.post(
            &bob,
            &format!("/admin/v1/applications/{id}/approve"),
            json!({}),
        )
        .await
        .refused(StatusCode::CONFLICT, "customer_exists");
    }
    // A Cyrillic Х as the check character is refused outright.
    let refused = apply_for(&app, &alice, "11010119900307123\u{425}").await;
    let refused = refused.unwrap_err();
    assert!(
        refused.starts_with("400") && refused.contains("invalid_input"),
        "{refused}"
    );
}

#[tokio::test]
async fn look_alike_operators_are_one_person_to_maker_checker() {
    let app = App::new().await;
    // Mixed-script names (a Cyrillic а or е in `alice`) get no certificate.
    for look_alike in ["\u{430}lice", "alic\u{435}"] {
        assert!(
            app.try_operator(look_alike, Role::Operator).await.is_err(),
            "{look_alike:?} was issued a certificate"
        );
    }
    // A whole-script look-alike (Cyrillic `соре` for `cope`) is one script,
    // so it may hold a certificate; maker-checker still takes it for the
    // maker.
    let cope = app.operator("cope", Role::Operator).await;
    let cyrillic = app
        .operator("\u{441}\u{43e}\u{440}\u{435}", Role::Operator)
        .await;
    let id = apply_for(&app, &cope, "110101198001010055").await.unwrap();
    app.post(
        &cyrillic,
        &format!("/admin/v1/applications/{id}/approve"),
        json!({}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "self_approval");
    app.post(
        &cyrillic,
        &format!("/admin/v1/applications/{id}/reject"),
        json!({"reason": "looks fine"}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "self_approval");
    // A customer name of two scripts is refused too.
    let mut mixed = application("110101198001010066");
    mixed["name"] = json!("H\u{430}n Meimei");
    let mixed = app.post(&cope, "/admin/v1/applications", mixed).await;
    assert_eq!(mixed.status, StatusCode::BAD_REQUEST, "{}", mixed.text);
}

#[tokio::test]
async fn personal_data_in_a_reason_does_not_reach_the_trail() {
    let app = App::new().await;
    let alice = app.operator("alice", Role::Operator).await;
    let bob = app.operator("bob", Role::Operator).await;
    let id = apply(&app, &alice).await;
    let reason = "Han Meimei (meimei.han@mail.example) showed passport E1234567 \
                  and id 110101,198001,010011; 3 pages, scan of 2024-05-01";
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
        detail["reason"],
        "[redacted] ([redacted]) showed passport [redacted] \
         and id [redacted]; 3 pages, scan of 2024-05-01",
        "{detail}"
    );
    // As whole words: a MAC, hash or timestamp may hold these digits by
    // chance inside a longer run.
    let text = serde_json::to_string(&trail).unwrap();
    let word = |w: &str| {
        text.match_indices(w).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + w.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
    };
    for personal in [
        "Meimei",
        "meimei.han",
        "mail.example",
        "E1234567",
        "110101",
        "198001",
        "010011",
    ] {
        assert!(!word(personal), "{personal} reached the trail");
    }
    // The reviewer still reads the reason as typed, on the application.
    let review = app
        .get(&alice, &format!("/admin/v1/applications/{id}"))
        .await;
    assert_eq!(review.expect(StatusCode::OK)["decision_reason"], reason);
}
