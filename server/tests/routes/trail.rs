//! `/admin/v1/audit`: the trail and its verification.

use axum::http::StatusCode;
use keyward_ca::Role;

use crate::harness::App;

#[tokio::test]
async fn auditors_read_and_verify_the_trail_operators_do_not() {
    let app = App::new().await;
    let carol = app.operator("carol", Role::Auditor).await;
    let recent = app.get(&carol, "/admin/v1/audit?limit=5").await;
    let records = recent.expect(StatusCode::OK)["records"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!records.is_empty() && records.len() <= 5);
    let verified = app.get(&carol, "/admin/v1/audit/verify").await;
    let body = verified.expect(StatusCode::OK);
    assert_eq!(body["ok"], true, "{body}");
    assert!(body["records"].as_u64().unwrap() > 0);
    assert!(app.audited("audit.verify", "success").await);

    let dave = app.operator("dave", Role::Operator).await;
    app.get(&dave, "/admin/v1/audit")
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    app.get(&dave, "/admin/v1/audit/verify")
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
}
