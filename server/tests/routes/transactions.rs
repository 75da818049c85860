//! `POST /v1/transactions` after a real login — MACs of every
//! algorithm computed by the simulator, account fields decrypted in the HSM,
//! PIN blocks refused with 501 on SoftHSM after their format checks.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_server::edge::identity::ClientIdentity;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::LoginOptions;
use serde_json::{Value, json};

use crate::harness::{Answer, App, send};
use crate::login::{issued, login};

async fn transact(app: &App, who: &ClientIdentity, token: Option<&str>, body: Value) -> Answer {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/transactions")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(
        &app.public,
        who,
        req.body(Body::from(body.to_string())).unwrap(),
    )
    .await
}

/// A device of `issuer` logged in with its first keys: (device, identity,
/// session token, account bound to it).
async fn logged_in(app: &App, n: u8, issuer: &str) -> (SimDevice, ClientIdentity, String, String) {
    let (mut d, who) = issued(app, n, &[issuer]).await;
    let (_, a) = login(app, &who, &mut d, issuer, LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    (d, who, token, format!("62220202001122{n:02}"))
}

fn body(
    d: &SimDevice,
    issuer: &str,
    algorithm: &str,
    padding: Option<u8>,
    len: usize,
    msg: &[u8],
) -> Value {
    let mac = d.mac(issuer, algorithm, padding, msg, len).unwrap();
    json!({"key_version": d.key_version(issuer).unwrap(), "algorithm": algorithm,
           "padding": padding, "message": B64.encode(msg), "mac": B64.encode(mac)})
}

#[tokio::test]
async fn every_tdes_algorithm_verifies_and_a_wrong_mac_is_invalid() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (d, who, token, account) = logged_in(&app, 21, "bank-a").await;
    let msg = b"0200|6222020200112233|000000012345|20261202";
    for (algorithm, padding, len) in [
        ("ISO9797-1-M1-TDES", Some(1), 8),
        ("ISO9797-1-M1-TDES", Some(2), 4),
        ("ISO9797-1-M3", Some(1), 8),
        ("ISO9797-1-M3", Some(2), 4),
        ("CMAC-TDES", None, 8),
        ("CMAC-TDES", None, 4),
        ("CUP-ECB", None, 8),
    ] {
        let ok = body(&d, "bank-a", algorithm, padding, len, msg);
        let a = transact(&app, &who, Some(&token), ok.clone()).await;
        assert_eq!(
            a.expect(StatusCode::OK)["result"],
            "valid",
            "{algorithm} {padding:?}"
        );
        let mut bad = ok;
        bad["message"] = json!(B64.encode(b"0200|tampered"));
        let a = transact(&app, &who, Some(&token), bad).await;
        let a = a.expect(StatusCode::OK);
        assert_eq!(
            (a["result"].as_str(), a["code"].as_str()),
            (Some("invalid"), Some("mac_invalid"))
        );
    }
    assert!(app.audited("transaction.mac", "refused").await);

    // Account fields: decrypted in the HSM, checked against the binding.
    let iv = [7u8; 8];
    let mut t = body(&d, "bank-a", "CMAC-TDES", None, 8, msg);
    t["accounts"] = json!([
        {"name": "payer", "iv": B64.encode(iv),
         "data": B64.encode(d.encrypt_field("bank-a", &iv, account.as_bytes()).unwrap())},
        {"name": "payee", "iv": B64.encode(iv),
         "data": B64.encode(d.encrypt_field("bank-a", &iv, b"6222999988887777").unwrap())},
    ]);
    let a = transact(&app, &who, Some(&token), t).await;
    assert_eq!(
        a.expect(StatusCode::OK)["accounts"],
        json!([{"name": "payer", "bound": true}, {"name": "payee", "bound": false}])
    );
    // A field that decrypts to bytes that are not text: refused with its
    // own code, not compared as an empty string.
    let mut t = body(&d, "bank-a", "CMAC-TDES", None, 8, msg);
    t["accounts"] = json!([
        {"name": "payer", "iv": B64.encode(iv),
         "data": B64.encode(d.encrypt_field("bank-a", &iv, &[0x36, 0xFF, 0xFE, 0x32]).unwrap())},
    ]);
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "account_field_not_utf8");
    // Six wrong MACs in a row: one streak of five counted (the valid MACs
    // above reset every shorter one).
    for _ in 0..6 {
        let mut bad = body(&d, "bank-a", "CMAC-TDES", None, 8, msg);
        bad["mac"] = json!(B64.encode([0u8; 8]));
        transact(&app, &who, Some(&token), bad)
            .await
            .expect(StatusCode::OK);
    }
    let metrics = app.state.metrics.render().1;
    assert!(
        metrics
            .contains("keyward_transaction_macs_total{algorithm=\"CUP-ECB\",result=\"invalid\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyward_transaction_mac_failure_streaks_total{issuer=\"bank-a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cmac_aes_takes_16_8_and_4_byte_macs() {
    let app = App::new().await;
    app.issuer("bank-x", "aes").await;
    let (d, who, token, _) = logged_in(&app, 22, "bank-x").await;
    for len in [16, 8, 4] {
        let a = transact(
            &app,
            &who,
            Some(&token),
            body(&d, "bank-x", "CMAC-AES", None, len, b"x"),
        )
        .await;
        assert_eq!(a.expect(StatusCode::OK)["result"], "valid", "{len}");
    }
    // A TDES algorithm with an AES issuer's key.
    let mut t = body(&d, "bank-x", "CMAC-AES", None, 8, b"x");
    t["algorithm"] = json!("CMAC-TDES");
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "algorithm_family_mismatch");
}

#[tokio::test]
async fn transaction_refusals_are_typed() {
    let app = App::with_config(|c| c.online.rotation_grace_secs = 0).await;
    app.issuer("bank-a", "tdes").await;
    let (mut d, who, token, account) = logged_in(&app, 23, "bank-a").await;
    let (_, other_who, other_token, _) = logged_in(&app, 24, "bank-a").await;
    let ok = body(&d, "bank-a", "CMAC-TDES", None, 8, b"m");

    transact(&app, &who, None, ok.clone())
        .await
        .refused(StatusCode::FORBIDDEN, "session_required");
    transact(&app, &who, Some(&other_token), ok.clone())
        .await
        .refused(StatusCode::FORBIDDEN, "session_device_mismatch");
    let _ = other_who;
    let mut t = ok.clone();
    t["algorithm"] = json!("HMAC-SHA1");
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_input");
    let mut t = ok.clone();
    t["padding"] = json!(3);
    assert_eq!(
        transact(&app, &who, Some(&token), t).await.status,
        StatusCode::BAD_REQUEST
    );
    let mut t = ok.clone();
    t["key_version"] = json!(99);
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::CONFLICT, "unknown_key_version");
    let mut t = ok.clone();
    t["message"] = json!(B64.encode(vec![0u8; 70_000]));
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "message_too_long");
    let mut t = ok.clone();
    t["mac"] = json!("***");
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_input");

    // PIN blocks: format rules and the PAN binding first, then the HSM's
    // refusal (SoftHSM has no PIN translation): never a host decryption.
    let pin = |format: u8, len: usize, pan: &str| {
        let mut t = ok.clone();
        t["pin_block"] =
            json!({"format": format, "block": B64.encode(vec![0x5Au8; len]), "pan": pan});
        t
    };
    transact(&app, &who, Some(&token), pin(0, 8, &account))
        .await
        .refused(StatusCode::NOT_IMPLEMENTED, "hsm_mechanism_missing");
    transact(&app, &who, Some(&token), pin(3, 8, &account))
        .await
        .refused(StatusCode::NOT_IMPLEMENTED, "hsm_mechanism_missing");
    transact(&app, &who, Some(&token), pin(0, 16, &account))
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_input");
    transact(&app, &who, Some(&token), pin(4, 16, &account))
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_input");
    transact(&app, &who, Some(&token), pin(1, 8, &account))
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_input");
    transact(&app, &who, Some(&token), pin(0, 8, "6222999988887777"))
        .await
        .refused(StatusCode::FORBIDDEN, "pan_not_bound");
    // A PAN that is not 12-19 digits does not fit the body's schema.
    for pan in ["12345678901", "62220202001122AB"] {
        transact(&app, &who, Some(&token), pin(0, 8, pan))
            .await
            .refused(StatusCode::BAD_REQUEST, "invalid_request");
    }

    // A MAC by a retired version: rotate (grace 0), end the grace period.
    let v1 = d.key_version("bank-a").unwrap();
    app.post(
        &app.root,
        "/admin/v1/issuers/bank-a/rotations",
        json!({"device_id": d.id.to_string()}),
    )
    .await
    .expect(StatusCode::OK);
    let (_, a) = login(&app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(app.state.kms.end_grace_periods().await.unwrap() >= 1);
    let mut t = ok.clone();
    t["key_version"] = json!(v1);
    transact(&app, &who, Some(&token), t)
        .await
        .refused(StatusCode::BAD_REQUEST, "key_version_not_usable");
    let fresh = body(&d, "bank-a", "CMAC-TDES", None, 8, b"m");
    let a = transact(&app, &who, Some(&token), fresh).await;
    assert_eq!(a.expect(StatusCode::OK)["result"], "valid");
}

#[tokio::test]
async fn wrong_macs_from_one_device_are_counted_and_then_throttled() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let (d, who, token, _) = logged_in(&app, 31, "bank-a").await;
    let msg = b"transfer 100";
    let mut results = Vec::new();
    for _ in 0..150 {
        let mut bad = body(&d, "bank-a", "CMAC-TDES", None, 8, msg);
        bad["mac"] = json!(B64.encode([0u8; 8]));
        results.push(transact(&app, &who, Some(&token), bad).await);
    }
    // A hundred answered `invalid`, then 429 before any HSM work.
    let invalid = results
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    assert_eq!(invalid, 100);
    for a in &results[100..] {
        a.refused(StatusCode::TOO_MANY_REQUESTS, "too_many_refusals");
        assert!(a.headers.contains_key("retry-after"));
    }
    app.state.online.close_refusal_windows(true).await;
    let target = format!("device:{}", d.id);
    let trail: Vec<Value> = app
        .trail()
        .await
        .into_iter()
        .filter(|r| r["target"] == target.as_str())
        .collect();
    let detail =
        |r: &Value| -> Value { serde_json::from_str(r["detail_json"].as_str().unwrap()).unwrap() };
    let whole: Vec<Value> = trail
        .iter()
        .filter(|r| r["action"] == "transaction.mac")
        .map(detail)
        .collect();
    let counted: u64 = trail
        .iter()
        .filter(|r| r["action"] == "refusal.window")
        .map(|r| detail(r)["counted"].as_u64().unwrap())
        .sum();
    // The first, the streak-making fifth and the hundredth are whole.
    let streaks: Vec<u64> = whole
        .iter()
        .map(|w| w["consecutive_failures"].as_u64().unwrap())
        .collect();
    assert_eq!(streaks, [100, 5, 1], "{trail:#?}");
    assert_eq!(whole.len() as u64 + counted, 150);
    assert!(
        trail
            .iter()
            .any(|r| r["action"] == "refusal.throttle" && r["outcome"] == "refused")
    );
}
