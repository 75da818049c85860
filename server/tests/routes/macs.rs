//! Bulk MAC verification (`POST /admin/v1/macs/verify`)
//! with a device whose working keys came through the real login (offer,
//! confirm), MACs computed by the simulator in software
//! (`tests/src/device.rs`), never by the server; every algorithm, padding
//! and MAC length, in JSON and binary, whole and streamed; malformed
//! frames, an over-limit batch, and who may call.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::BodyExt;
use keyward_ca::Role;
use keyward_server::edge::identity::ClientIdentity;
use keyward_server::wire::macs as wire;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::LoginOptions;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::harness::{App, der_of_pem, identity_of};
use crate::login::{issued, login};

/// The limit the tests configure, so an over-limit batch is small.
const MAX_ITEMS: usize = 60;

/// One test item and the verdict expected for it.
struct Case {
    item: wire::Item,
    /// Binary form; `None` when the item cannot be framed as it is (JSON-only
    /// malformations).
    binary: Option<wire::BinaryItem>,
    expect: wire::Verdict,
}

fn device_bytes(id: &str) -> [u8; 8] {
    let mut b = [0u8; 8];
    hex::decode_to_slice(id, &mut b).unwrap();
    b
}

#[allow(clippy::too_many_arguments)] // one column per item field
fn case(
    device: &str,
    issuer: &str,
    version: u32,
    alg: &str,
    padding: Option<u8>,
    msg: &[u8],
    mac: &[u8],
    expect: wire::Verdict,
) -> Case {
    let item = wire::Item {
        device_id: device.to_owned(),
        issuer_id: issuer.to_owned(),
        key_version: version,
        algorithm: alg.to_owned(),
        padding,
        message: B64.encode(msg),
        mac: B64.encode(mac),
    };
    let binary = wire::BinaryItem {
        device_id: device_bytes(device),
        issuer_id: issuer.as_bytes().to_vec(),
        key_version: version,
        algorithm: wire::algorithm_code(alg).unwrap_or(99),
        padding: padding.unwrap_or(0),
        message: msg.to_vec(),
        mac: mac.to_vec(),
    };
    Case {
        item,
        binary: Some(binary),
        expect,
    }
}

fn err(code: &str) -> wire::Verdict {
    wire::Verdict::Error(code.to_owned())
}

/// A device logged in to a TDES and an AES issuer (keys through the real
/// offer/confirm path), and its working-key versions.
async fn device_with_keys(app: &App) -> (SimDevice, u32, u32) {
    app.issuer("bank-t", "tdes").await;
    app.issuer("bank-a", "aes").await;
    let (mut d, who) = issued(app, 31, &["bank-t", "bank-a"]).await;
    for issuer in ["bank-t", "bank-a"] {
        let (_, a) = login(app, &who, &mut d, issuer, LoginOptions::default()).await;
        a.expect(StatusCode::OK);
    }
    let vt = d.key_version("bank-t").unwrap();
    let va = d.key_version("bank-a").unwrap();
    (d, vt, va)
}

/// Valid and invalid items for every algorithm, padding and MAC length,
/// then items that fail one by one.
fn cases(d: &SimDevice, vt: u32, va: u32) -> Vec<Case> {
    let id = d.id.to_string();
    let mut out = Vec::new();
    // (algorithm, issuer, version, padding, MAC lengths)
    type Variant<'a> = (&'a str, &'a str, u32, Option<u8>, &'a [usize]);
    let variants: &[Variant<'_>] = &[
        ("ISO9797-1-M1-TDES", "bank-t", vt, Some(1), &[4, 8]),
        ("ISO9797-1-M1-TDES", "bank-t", vt, Some(2), &[4, 8]),
        ("ISO9797-1-M3", "bank-t", vt, Some(1), &[4, 8]),
        ("ISO9797-1-M3", "bank-t", vt, Some(2), &[4, 8]),
        ("CMAC-TDES", "bank-t", vt, None, &[4, 8]),
        ("CMAC-AES", "bank-a", va, None, &[4, 8, 16]),
        ("CUP-ECB", "bank-t", vt, None, &[8]),
    ];
    for (n, (alg, issuer, version, padding, lens)) in variants.iter().enumerate() {
        for &len in *lens {
            // Lengths on and off the block boundary, and an empty message.
            let msg: Vec<u8> = match n % 3 {
                0 => format!("0200|6222020200112231|{len}|000000010000").into_bytes(),
                1 => vec![0x5A; 16],
                _ => Vec::new(),
            };
            let full = d
                .transaction_mac(issuer, alg, padding.unwrap_or(0), &msg)
                .unwrap();
            let mac = full[..len].to_vec();
            out.push(case(
                &id,
                issuer,
                *version,
                alg,
                *padding,
                &msg,
                &mac,
                wire::Verdict::Valid,
            ));
            let mut wrong = mac.clone();
            // CUP-ECB's MAC is hex text: keep it hex.
            wrong[0] = if *alg == "CUP-ECB" {
                if wrong[0] == b'0' { b'1' } else { b'0' }
            } else {
                wrong[0] ^ 0x01
            };
            out.push(case(
                &id,
                issuer,
                *version,
                alg,
                *padding,
                &msg,
                &wrong,
                wire::Verdict::Invalid,
            ));
            // The message changed after the MAC was made.
            let mut other = msg.clone();
            other.push(b'!');
            out.push(case(
                &id,
                issuer,
                *version,
                alg,
                *padding,
                &other,
                &mac,
                wire::Verdict::Invalid,
            ));
        }
    }
    let msg = b"0200|6222020200112231|100";
    let good = d.transaction_mac("bank-t", "CMAC-TDES", 0, msg).unwrap();
    // A device the server has never heard of.
    out.push(case(
        "FFFFFFFFFFFFFF01",
        "bank-t",
        vt,
        "CMAC-TDES",
        None,
        msg,
        &good,
        err("unknown_key_version"),
    ));
    // A version never issued.
    out.push(case(
        &id,
        "bank-t",
        vt + 7,
        "CMAC-TDES",
        None,
        msg,
        &good,
        err("unknown_key_version"),
    ));
    // An issuer that does not exist.
    out.push(case(
        &id,
        "bank-x",
        vt,
        "CMAC-TDES",
        None,
        msg,
        &good,
        err("unknown_issuer"),
    ));
    // An algorithm nobody supports.
    out.push(case(
        &id,
        "bank-t",
        vt,
        "HMAC-SHA1",
        None,
        msg,
        &good,
        err("unsupported_algorithm"),
    ));
    // The other family's algorithm.
    out.push(case(
        &id,
        "bank-t",
        vt,
        "CMAC-AES",
        None,
        msg,
        &good,
        err("algorithm_family_mismatch"),
    ));
    // A MAC length outside the table.
    out.push(case(
        &id,
        "bank-t",
        vt,
        "CMAC-TDES",
        None,
        msg,
        &good[..3],
        err("invalid_input"),
    ));
    // ISO 9797-1 without its padding method; padding 3.
    out.push(case(
        &id,
        "bank-t",
        vt,
        "ISO9797-1-M1-TDES",
        None,
        msg,
        &good,
        err("invalid_input"),
    ));
    out.push(case(
        &id,
        "bank-t",
        vt,
        "ISO9797-1-M3",
        Some(3),
        msg,
        &good,
        err("invalid_padding"),
    ));
    // An issuer id with characters no issuer has.
    out.push(case(
        &id,
        "Bank T",
        vt,
        "CMAC-TDES",
        None,
        msg,
        &good,
        err("invalid_issuer_id"),
    ));
    out
}

/// Items that only JSON can get wrong.
fn json_only(d: &SimDevice, vt: u32) -> Vec<(Value, wire::Verdict)> {
    let id = d.id.to_string();
    vec![
        (
            json!({"device_id": "not-hex", "issuer_id": "bank-t", "key_version": vt,
                   "algorithm": "CMAC-TDES", "message": "", "mac": "AAAAAA=="}),
            err("invalid_device_id"),
        ),
        (
            json!({"device_id": id, "issuer_id": "bank-t", "key_version": vt,
                   "algorithm": "CMAC-TDES", "message": "@@@", "mac": "AAAAAA=="}),
            err("invalid_message"),
        ),
        (
            json!({"device_id": id, "issuer_id": "bank-t", "algorithm": "CMAC-TDES"}),
            err("invalid_item"),
        ),
        (json!(42), err("invalid_item")),
    ]
}

/// A raw request to the admin router; status, content type and body bytes.
async fn raw(
    app: &App,
    who: &ClientIdentity,
    path: &str,
    content_type: &str,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", content_type);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let mut req = req.body(Body::from(body)).unwrap();
    req.extensions_mut().insert(who.clone());
    let res = app.admin.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, ct, bytes)
}

const PATH: &str = "/admin/v1/macs/verify";

async fn verify_json(app: &App, who: &ClientIdentity, items: Vec<Value>) -> wire::VerifyAnswer {
    let body = serde_json::to_vec(&json!({ "items": items })).unwrap();
    let (status, _, bytes) = raw(app, who, PATH, "application/json", None, body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// [`verify_json`]'s verdicts, in order.
async fn verdicts_of(app: &App, who: &ClientIdentity, items: Vec<Value>) -> Vec<wire::Verdict> {
    verify_json(app, who, items)
        .await
        .results
        .iter()
        .map(|r| r.verdict())
        .collect()
}

async fn verify_binary(
    app: &App,
    who: &ClientIdentity,
    items: &[wire::BinaryItem],
    path: &str,
) -> Vec<wire::Verdict> {
    let body = wire::encode_request(items).unwrap();
    let (status, ct, bytes) = raw(app, who, path, wire::BINARY, None, body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(ct, wire::BINARY);
    wire::decode_answer(&bytes).unwrap()
}

/// A service certificate issued through `POST /admin/v1/services`.
pub async fn service(app: &App, name: &str) -> ClientIdentity {
    let csr = keyward_tests::simulator::client_csr_pem().unwrap();
    let a = app
        .post(
            &app.root,
            "/admin/v1/services",
            json!({"csr_pem": csr, "name": name}),
        )
        .await;
    let issued: keyward_server::wire::ca::Issued =
        serde_json::from_value(a.expect(StatusCode::CREATED).clone()).unwrap();
    assert_eq!(issued.profile, "service");
    identity_of(&der_of_pem(&issued.certificate_pem))
}

fn app_config(c: &mut keyward_config::Config) {
    c.server.bulk_max_items = MAX_ITEMS;
}

#[tokio::test]
async fn every_algorithm_verifies_in_json_and_binary_whole_and_streamed() {
    let app = App::with_config(app_config).await;
    let (d, vt, va) = device_with_keys(&app).await;
    let switch = service(&app, "switch-1").await;
    let cases = cases(&d, vt, va);
    assert!(cases.len() + 4 <= MAX_ITEMS, "{} cases", cases.len());

    // JSON, as the switch: every case plus the JSON-only malformations.
    let extra = json_only(&d, vt);
    let mut items: Vec<Value> = cases
        .iter()
        .map(|c| serde_json::to_value(&c.item).unwrap())
        .collect();
    items.extend(extra.iter().map(|(v, _)| v.clone()));
    let mut expected: Vec<wire::Verdict> = cases.iter().map(|c| c.expect.clone()).collect();
    expected.extend(extra.iter().map(|(_, v)| v.clone()));
    let answer = verify_json(&app, &switch, items.clone()).await;
    let got: Vec<wire::Verdict> = answer.results.iter().map(|r| r.verdict()).collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "item {i}: {:?}", items[i]);
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(answer.count, expected.len() as u64);
    let valid = expected
        .iter()
        .filter(|v| **v == wire::Verdict::Valid)
        .count() as u64;
    assert_eq!(answer.summary.valid, valid);
    assert_eq!(answer.summary.total(), expected.len() as u64);

    // CUP-ECB's MAC may also travel as its 8 hex characters.
    let cup = cases
        .iter()
        .find(|c| c.item.algorithm == "CUP-ECB" && c.expect == wire::Verdict::Valid)
        .unwrap();
    let mut text = serde_json::to_value(&cup.item).unwrap();
    let mac = B64.decode(cup.item.mac.as_bytes()).unwrap();
    text["mac"] = String::from_utf8(mac).unwrap().into();
    let answer = verify_json(&app, &switch, vec![text]).await;
    assert_eq!(answer.results[0].verdict(), wire::Verdict::Valid);

    // Binary, the same cases (and an unknown algorithm code).
    let bin: Vec<wire::BinaryItem> = cases.iter().filter_map(|c| c.binary.clone()).collect();
    let want: Vec<wire::Verdict> = cases.iter().map(|c| c.expect.clone()).collect();
    assert_eq!(verify_binary(&app, &switch, &bin, PATH).await, want);

    // Streamed binary: the same bytes, chunked.
    let streamed = verify_binary(&app, &switch, &bin, &format!("{PATH}?stream=1")).await;
    assert_eq!(streamed, want);

    // Streamed JSON lines, as an admin-role operator.
    let body = serde_json::to_vec(&json!({ "items": items })).unwrap();
    let (status, ct, bytes) = raw(
        &app,
        &app.root,
        PATH,
        "application/json",
        Some(wire::NDJSON),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, wire::NDJSON);
    let lines: Vec<wire::StreamLine> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), expected.len() + 1);
    for (i, (line, e)) in lines.iter().zip(&expected).enumerate() {
        assert_eq!(line.index, Some(i as u64));
        assert_eq!(&line.item.as_ref().unwrap().verdict(), e, "line {i}");
    }
    let summary = lines.last().unwrap().summary.unwrap();
    assert_eq!(summary.valid, valid);

    // One record per batch, counts only: no message, no MAC.
    let trail = app.trail().await;
    let batches: Vec<&Value> = trail
        .iter()
        .filter(|r| r["action"] == "mac.verify_batch")
        .collect();
    assert_eq!(batches.len(), 5, "{batches:?}");
    let detail: Value =
        serde_json::from_str(batches.last().unwrap()["detail_json"].as_str().unwrap()).unwrap();
    assert_eq!(detail["items"], expected.len() as u64);
    assert_eq!(detail["valid"], valid);
    assert_eq!(detail["encoding"], "json");
    // Newest first: the oldest is the switch's first batch.
    assert!(
        batches.last().unwrap()["actor"]
            .as_str()
            .unwrap()
            .contains("switch-1"),
        "{batches:?}"
    );
    let all = serde_json::to_string(&trail).unwrap();
    assert!(!all.contains(&cases[0].item.mac), "a MAC in the trail");
    assert!(
        !all.contains(&cases[0].item.message),
        "a message in the trail"
    );

    // Metrics: by algorithm and result.
    let (_, text) = app.state.metrics.render();
    assert!(
        text.contains(r#"keyward_mac_verifications_total{algorithm="CUP-ECB",result="valid"}"#),
        "{text}"
    );
    assert!(text.contains("keyward_mac_batch_items_bucket"));
    assert!(text.contains("keyward_mac_batch_hsm_seconds_bucket"));
}

#[tokio::test]
async fn malformed_frames_and_oversized_batches_are_refused_whole() {
    let app = App::with_config(app_config).await;
    let switch = service(&app, "switch-2").await;
    let item = wire::BinaryItem {
        device_id: [1; 8],
        issuer_id: b"bank-t".to_vec(),
        key_version: 1,
        algorithm: 3,
        padding: 0,
        message: b"abc".to_vec(),
        mac: vec![0; 8],
    };
    let good = wire::encode_request(&[item.clone(), item.clone()]).unwrap();
    let mut trailing = good.clone();
    trailing.push(0);
    let mut magic = good.clone();
    magic[..4].copy_from_slice(b"XXXX");
    let mut version = good.clone();
    version[4] = 2;
    let mut count = good.clone();
    count[6..10].copy_from_slice(&3u32.to_be_bytes());
    let mut length = good.clone();
    // The first item's message length (after id 8, issuer 1+6, version 4,
    // algorithm 1, padding 1) claims more than is there.
    let at = wire::HEADER_LEN + 8 + 1 + 6 + 4 + 1 + 1;
    length[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
    for (what, body) in [
        ("truncated", good[..good.len() - 3].to_vec()),
        ("header only", good[..6].to_vec()),
        ("empty", Vec::new()),
        ("trailing", trailing),
        ("magic", magic),
        ("version", version),
        ("count", count),
        ("length prefix", length),
    ] {
        let (status, _, bytes) = raw(&app, &switch, PATH, wire::BINARY, None, body).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["error"]["code"], "malformed_frame", "{what}");
    }

    // One over the limit: 413 in both encodings, nothing verified.
    let many = vec![item.clone(); MAX_ITEMS + 1];
    let body = wire::encode_request(&many).unwrap();
    let (status, _, bytes) = raw(&app, &switch, PATH, wire::BINARY, None, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "batch_too_large");
    let items: Vec<Value> = (0..=MAX_ITEMS).map(|_| json!({})).collect();
    let body = serde_json::to_vec(&json!({ "items": items })).unwrap();
    let (status, _, bytes) = raw(&app, &switch, PATH, "application/json", None, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "batch_too_large");
    assert!(
        app.audited("mac.verify_batch", "refused:batch_too_large")
            .await
            || {
                app.trail().await.iter().any(|r| {
                    r["action"] == "mac.verify_batch"
                        && r["outcome"].as_str().unwrap_or("").contains("refused")
                })
            }
    );

    // Exactly at the limit is fine.
    let body = wire::encode_request(&vec![item; MAX_ITEMS]).unwrap();
    let (status, _, bytes) = raw(&app, &switch, PATH, wire::BINARY, None, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(wire::decode_answer(&bytes).unwrap().len(), MAX_ITEMS);

    // Not JSON of the right shape; another content type.
    let (status, _, bytes) = raw(
        &app,
        &switch,
        PATH,
        "application/json",
        None,
        b"{\"item\": []}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "invalid_request");
    let (status, _, _) = raw(&app, &switch, PATH, "text/csv", None, b"a,b".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn only_services_and_operators_may_verify() {
    let app = App::with_config(app_config).await;
    let (d, vt, _) = device_with_keys(&app).await;
    let device = crate::access::device_identity(&app, &d).await;
    let auditor = app.operator("audrey", Role::Auditor).await;
    let operator = app.operator("otto", Role::Operator).await;
    let switch = service(&app, "switch-3").await;
    let msg = b"0200";
    let mac = d.transaction_mac("bank-t", "CMAC-TDES", 0, msg).unwrap();
    let item = json!({"device_id": d.id.to_string(), "issuer_id": "bank-t", "key_version": vt,
                      "algorithm": "CMAC-TDES", "message": B64.encode(msg),
                      "mac": B64.encode(&mac)});
    let body = serde_json::to_vec(&json!({ "items": [item] })).unwrap();
    for who in [&device, &auditor, &crate::harness::anonymous()] {
        let (status, _, bytes) = raw(&app, who, PATH, "application/json", None, body.clone()).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            matches!(status, StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED),
            "{status} {v}"
        );
        let code = v["error"]["code"].as_str().unwrap();
        assert!(
            matches!(code, "forbidden_role" | "client_certificate_required"),
            "{code}"
        );
    }
    let (status, _, bytes) = raw(&app, &device, PATH, "application/json", None, body.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "forbidden_role");
    assert!(
        app.audited("access.refused", "refused:forbidden_role")
            .await
            || {
                app.trail()
                    .await
                    .iter()
                    .any(|r| r["action"] == "access.refused")
            }
    );
    for who in [&operator, &switch, &app.root] {
        let (status, _, bytes) = raw(&app, who, PATH, "application/json", None, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        let a: wire::VerifyAnswer = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(a.results[0].verdict(), wire::Verdict::Valid);
    }
    // A service certificate is no operator: the rest of the admin API
    // refuses it.
    let a = app.get(&switch, "/admin/v1/whoami").await;
    a.refused(StatusCode::FORBIDDEN, "forbidden_role");
    // And only an admin issues one.
    let csr = keyward_tests::simulator::client_csr_pem().unwrap();
    let a = app
        .post(
            &operator,
            "/admin/v1/services",
            json!({"csr_pem": csr, "name": "switch-9"}),
        )
        .await;
    a.refused(StatusCode::FORBIDDEN, "forbidden_role");
    let a = app
        .post(
            &app.root,
            "/admin/v1/services",
            json!({"csr_pem": csr, "name": "Switch One"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let list = app
        .get(&app.root, "/admin/v1/ca/certificates?profile=service")
        .await;
    let list = list.expect(StatusCode::OK)["certificates"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(list.len(), 1);
    assert!(list[0]["subject"].as_str().unwrap().contains("switch-3"));
}

/// After a rotation the replaced version is still accepted during its grace
/// period (`retiring`), then refused per item once it is over (whether or
/// not the job has marked it retired yet); a revoked service certificate is
/// refused on the next request.
#[tokio::test]
async fn retired_versions_fail_per_item_and_a_revoked_switch_is_refused() {
    let app = App::with_config(|c| {
        app_config(c);
        c.online.rotation_grace_secs = 3;
    })
    .await;
    let (mut d, v1, _) = device_with_keys(&app).await;
    let switch = service(&app, "switch-4").await;
    let msg = b"0200|old key";
    let old = d.transaction_mac("bank-t", "CMAC-TDES", 0, msg).unwrap();
    app.post(
        &app.root,
        "/admin/v1/issuers/bank-t/rotations",
        json!({"device_id": d.id.to_string()}),
    )
    .await
    .expect(StatusCode::OK);
    let who = crate::access::device_identity(&app, &d).await;
    let (_, a) = login(&app, &who, &mut d, "bank-t", LoginOptions::default()).await;
    a.expect(StatusCode::OK);
    let v2 = d.key_version("bank-t").unwrap();
    assert_eq!(v2, v1 + 1);
    let new = d.transaction_mac("bank-t", "CMAC-TDES", 0, msg).unwrap();
    let item = |v: u32, mac: &[u8]| {
        json!({"device_id": d.id.to_string(), "issuer_id": "bank-t", "key_version": v,
               "algorithm": "CMAC-TDES", "message": B64.encode(msg), "mac": B64.encode(mac)})
    };
    let items = vec![item(v1, &old), item(v2, &new), item(v2, &old)];
    let got = verdicts_of(&app, &switch, items.clone()).await;
    assert_eq!(
        got,
        [
            wire::Verdict::Valid,
            wire::Verdict::Valid,
            wire::Verdict::Invalid
        ]
    );
    // The grace period (3 s) ends: v1 is refused at once, and the job
    // then marks it retired.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let got = verdicts_of(&app, &switch, items.clone()).await;
    assert_eq!(got[0], err("key_version_not_usable"));
    assert!(app.state.kms.end_grace_periods().await.unwrap() >= 1);
    let got = verdicts_of(&app, &switch, items).await;
    assert_eq!(
        got,
        [
            err("key_version_not_usable"),
            wire::Verdict::Valid,
            wire::Verdict::Invalid
        ]
    );

    // Revoked: the registry check refuses the next request.
    let serial = switch.cert.as_ref().unwrap().serial.clone();
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        json!({"reason": "keyCompromise"}),
    )
    .await
    .expect(StatusCode::OK);
    let body = serde_json::to_vec(&json!({ "items": [] })).unwrap();
    let (status, _, bytes) = raw(&app, &switch, PATH, "application/json", None, body).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "certificate_revoked");
}
