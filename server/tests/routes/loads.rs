//! The e-purse load on the public router (docs/protocol.md §13): request →
//! permit (signed by the HSM key, the account debited in the same
//! transaction) → report (posted or voided), the sweeper's timeout, the
//! lost report settled by the purse's `last_applied`, and bad input typed
//! with nothing moved. `ledger verify` holds after each.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::hsm::PublicKey;
use keyward_protocol::confirmation::{Amount, Currency};
use keyward_protocol::load::{
    Algorithm, LoadPermit, LoadReport, LoadRequest, Outcome, PurseStatus, RequestId,
};
use keyward_server::edge::identity::ClientIdentity;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::LoginOptions;
use serde_json::{Value, json};

use crate::harness::{Answer, App, send};
use crate::login::{issued, login};

/// A logged-in device with a purse, its customer's account opened in the
/// ledger and credited with `funds`.
pub(crate) struct Purse {
    pub(crate) d: SimDevice,
    pub(crate) who: ClientIdentity,
    pub(crate) token: String,
    pub(crate) customer: String,
    pub(crate) account: String,
    sequence: u64,
    last_applied: u64,
    wallet: u64,
}

pub(crate) async fn purse(app: &App, n: u8, funds: i64) -> Purse {
    // The issuer, once per installation.
    let issuer = app
        .post(
            &app.root,
            "/admin/v1/issuers",
            json!({"issuer_id": "bank-a", "family": "tdes"}),
        )
        .await;
    assert!(
        issuer.status == StatusCode::CREATED || issuer.code() == "issuer_exists",
        "{}",
        issuer.text
    );
    let (mut d, who) = issued(app, n, &["bank-a"]).await;
    let (_, a) = login(app, &who, &mut d, "bank-a", LoginOptions::default()).await;
    let token = a.expect(StatusCode::OK)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let binding = app
        .state
        .provisioning
        .bindings(d.id)
        .await
        .unwrap()
        .remove(0);
    let account = format!("62220202001122{n:02}");
    app.post(
        &app.root,
        "/admin/v1/accounts",
        json!({"account": account, "customer_id": binding.customer.to_string(), "currency": "CNY"}),
    )
    .await
    .expect(StatusCode::CREATED);
    if funds > 0 {
        let c = app
            .post(
                &app.root,
                &format!("/admin/v1/accounts/{account}/credits"),
                json!({"amount_minor": funds, "reference": "opening deposit"}),
            )
            .await;
        assert_eq!(c.expect(StatusCode::CREATED)["balance_after_minor"], funds);
    }
    Purse {
        d,
        who,
        token,
        customer: binding.customer.to_string(),
        account,
        sequence: 0,
        last_applied: 0,
        wallet: 0,
    }
}

impl Purse {
    /// The next request for `amount`, as the purse builds it.
    pub(crate) fn request(&mut self, amount: u64) -> LoadRequest {
        self.sequence += 1;
        LoadRequest {
            device: self.d.id.bytes(),
            sequence: self.sequence,
            last_applied: self.last_applied,
            wallet_balance: self.wallet,
            amount: Amount::new(amount).unwrap(),
            currency: Currency::from_code("CNY").unwrap(),
            key_version: 1,
            algorithm: Algorithm::EcdsaP256Sha256,
            nonce: rand::random(),
            customer: self.customer.clone(),
            account: self.account.clone(),
        }
    }

    pub(crate) fn signed(&self, payload: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "payload": B64.encode(payload),
            "signature": B64.encode(self.d.sign_challenge(payload)),
        }))
        .unwrap()
    }

    async fn post(&self, app: &App, path: &str, body: Vec<u8>) -> Answer {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::from(body))
            .unwrap();
        send(&app.public, &self.who, req).await
    }

    pub(crate) async fn send_request(&self, app: &App, req: &LoadRequest) -> Answer {
        self.post(app, "/v1/loads", self.signed(&req.encode()))
            .await
    }

    /// The report of `permit`, as the purse makes it after applying it
    /// (or failing to).
    pub(crate) fn report(
        &self,
        req: &LoadRequest,
        permit: &LoadPermit,
        outcome: Outcome,
        wallet: u64,
    ) -> Vec<u8> {
        LoadReport {
            load: permit.load,
            request: RequestId::of(&req.encode()),
            sequence: req.sequence,
            outcome,
            wallet_balance: wallet,
        }
        .encode()
    }

    pub(crate) async fn send_report(&self, app: &App, load_id: &str, report: &[u8]) -> Answer {
        let path = format!("/v1/loads/{load_id}/report");
        self.post(app, &path, self.signed(report)).await
    }
}

/// The permit in an answer, its signature checked with the HSM key's
/// public half, as the purse checks it.
pub(crate) async fn permit_of(
    app: &App,
    a: &Value,
    req: &LoadRequest,
) -> (String, LoadPermit, Vec<u8>) {
    use p256::ecdsa::signature::Verifier;
    let bytes = B64.decode(a["permit"].as_str().unwrap()).unwrap();
    let sig = B64.decode(a["signature"].as_str().unwrap()).unwrap();
    let key = app
        .state
        .kms
        .signing_key(keyward_server::load::PERMIT_KEY_LABEL)
        .await
        .unwrap();
    let PublicKey::P256(point) = key.public_key() else {
        panic!("the permit key is P-256")
    };
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    vk.verify(&bytes, &p256::ecdsa::Signature::from_der(&sig).unwrap())
        .expect("the permit verifies");
    let permit = LoadPermit::decode(&bytes).unwrap();
    assert!(permit.answers(&req.encode(), req));
    (a["load_id"].as_str().unwrap().to_owned(), permit, bytes)
}

async fn balance(app: &App, account: &str) -> i64 {
    app.get(&app.root, &format!("/admin/v1/accounts/{account}"))
        .await
        .expect(StatusCode::OK)["balance_minor"]
        .as_i64()
        .unwrap()
}

async fn load_state(app: &App, id: &str) -> String {
    app.get(&app.root, &format!("/admin/v1/loads/{id}"))
        .await
        .expect(StatusCode::OK)["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `ledger verify` finds nothing wrong (after sealing what is new).
async fn verified(app: &App) {
    app.state.ledger.seal().await.unwrap();
    let r = app.get(&app.root, "/admin/v1/ledger/verify").await;
    let r = r.expect(StatusCode::OK);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["violations"], json!([]), "{r}");
}

#[tokio::test]
async fn a_load_is_permitted_then_posted_once() {
    let app = App::new().await;
    let mut p = purse(&app, 61, 50_000).await;
    let req = p.request(10_000);
    let a = p.send_request(&app, &req).await;
    let a = a.expect(StatusCode::CREATED).clone();
    assert_eq!(a["balance_after_minor"], 40_000);
    let (id, permit, bytes) = permit_of(&app, &a, &req).await;
    assert_eq!(permit.amount.minor_units(), 10_000);
    // As a purse checks it: under the load-permit certificate, whose chain
    // leads to the Keyward root.
    keyward_tests::purse::verify_chain_signature(
        a["certificate_chain"].as_str().unwrap(),
        app.state.ca.root_pem(),
        &bytes,
        &B64.decode(a["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    // A retry of the same request: the same permit, byte for byte, and no
    // second debit.
    let again = p.send_request(&app, &req).await;
    let again = again.expect(StatusCode::CREATED);
    assert_eq!(
        B64.decode(again["permit"].as_str().unwrap()).unwrap(),
        bytes
    );
    assert_eq!(balance(&app, &p.account).await, 40_000);
    assert_eq!(load_state(&app, &id).await, "pending");
    // The purse applies it and reports.
    p.wallet += 10_000;
    p.last_applied = req.sequence;
    let report = p.report(&req, &permit, Outcome::Applied, p.wallet);
    let r = p.send_report(&app, &id, &report).await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "posted");
    // The same report again is answered the same; nothing moves.
    let r = p.send_report(&app, &id, &report).await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "posted");
    assert_eq!(balance(&app, &p.account).await, 40_000);
    assert_eq!(balance(&app, "sys:float:CNY").await, 10_000);
    assert_eq!(balance(&app, "sys:loads_in_flight:CNY").await, 0);
    assert!(app.audited("load.permit", "success").await);
    assert!(app.audited("load.settle", "success").await);
    let view = app.get(&app.root, &format!("/admin/v1/loads/{id}")).await;
    let view = view.expect(StatusCode::OK);
    assert_eq!(view["entries"].as_array().unwrap().len(), 4);
    verified(&app).await;
}

#[tokio::test]
async fn a_failure_report_gives_the_money_back() {
    let app = App::new().await;
    let mut p = purse(&app, 62, 20_000).await;
    let req = p.request(5_000);
    let a = p
        .send_request(&app, &req)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, permit, _) = permit_of(&app, &a, &req).await;
    assert_eq!(balance(&app, &p.account).await, 15_000);
    let report = p.report(&req, &permit, Outcome::Failed { reason: 3 }, p.wallet);
    let r = p.send_report(&app, &id, &report).await;
    assert_eq!(r.expect(StatusCode::OK)["state"], "voided");
    assert_eq!(balance(&app, &p.account).await, 20_000);
    // Decided: an applied report for it now is a conflict, nothing moves.
    let late = p.report(&req, &permit, Outcome::Applied, p.wallet + 5_000);
    p.send_report(&app, &id, &late)
        .await
        .refused(StatusCode::CONFLICT, "load_finished");
    assert_eq!(balance(&app, &p.account).await, 20_000);
    verified(&app).await;
}

/// The hole no ledger closes: the purse applied the load, the report was
/// lost, the sweeper reversed it. The next request's `last_applied` proves
/// it was applied: re-debited once, no money created.
#[tokio::test]
async fn a_lost_report_is_settled_by_the_next_request() {
    let app = App::with_config(|c| c.load.report_timeout_secs = 1).await;
    let mut p = purse(&app, 63, 30_000).await;
    let req = p.request(10_000);
    let a = p
        .send_request(&app, &req)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, _, _) = permit_of(&app, &a, &req).await;
    // Applied by the purse; its report never arrives.
    p.wallet += 10_000;
    p.last_applied = req.sequence;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(app.state.loads.sweep().await.unwrap(), 1);
    assert_eq!(load_state(&app, &id).await, "doubtful");
    assert_eq!(balance(&app, &p.account).await, 30_000, "the reversal");
    assert!(app.audited("load.timeout", "success").await);
    verified(&app).await;
    // The next request carries last_applied: re-debited, then the new load.
    let next = p.request(1_000);
    let a = p.send_request(&app, &next).await;
    a.expect(StatusCode::CREATED);
    assert_eq!(load_state(&app, &id).await, "late_applied");
    assert_eq!(balance(&app, &p.account).await, 30_000 - 10_000 - 1_000);
    assert_eq!(balance(&app, "sys:float:CNY").await, 10_000);
    verified(&app).await;
}

/// A timed-out load the purse never applied: its status at the next
/// contact closes it; the reversal stands.
#[tokio::test]
async fn a_timed_out_load_the_purse_never_applied_stays_reversed() {
    let app = App::with_config(|c| c.load.report_timeout_secs = 1).await;
    let mut p = purse(&app, 64, 30_000).await;
    let req = p.request(10_000);
    let a = p
        .send_request(&app, &req)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, _, _) = permit_of(&app, &a, &req).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    app.state.loads.sweep().await.unwrap();
    p.sequence += 1;
    let status = PurseStatus {
        device: p.d.id.bytes(),
        sequence: p.sequence,
        last_applied: p.last_applied,
        wallet_balance: p.wallet,
        currency: Currency::from_code("CNY").unwrap(),
        nonce: rand::random(),
    };
    let r = p
        .post(&app, "/v1/loads/status", p.signed(&status.encode()))
        .await;
    let r = r.expect(StatusCode::OK);
    assert_eq!(r["settled"][0]["state"], "not_applied");
    assert_eq!(load_state(&app, &id).await, "not_applied");
    assert_eq!(balance(&app, &p.account).await, 30_000);
    // The status's sequence number is spent: a replay is refused.
    p.post(&app, "/v1/loads/status", p.signed(&status.encode()))
        .await
        .refused(StatusCode::CONFLICT, "load_sequence_stale");
    verified(&app).await;
}

#[tokio::test]
async fn a_report_that_does_not_add_up_is_doubtful_and_a_security_event() {
    let app = App::new().await;
    let mut p = purse(&app, 65, 30_000).await;
    let req = p.request(10_000);
    let a = p
        .send_request(&app, &req)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, permit, _) = permit_of(&app, &a, &req).await;
    // "Applied", with a balance 1 minor unit off.
    let report = p.report(&req, &permit, Outcome::Applied, 10_001);
    p.send_report(&app, &id, &report)
        .await
        .refused(StatusCode::FORBIDDEN, "load_report_mismatch");
    assert_eq!(load_state(&app, &id).await, "doubtful");
    assert_eq!(balance(&app, &p.account).await, 30_000);
    assert!(app.audited("security.load_report_invalid", "refused").await);
    // Reported by verify as flagged (I9), not as a broken ledger.
    app.state.ledger.seal().await.unwrap();
    let r = app.get(&app.root, "/admin/v1/ledger/verify").await;
    let r = r.expect(StatusCode::OK);
    assert_eq!(r["ok"], true);
    assert_eq!(r["violations"], json!([format!("i9_flagged: {id}")]));
}

#[tokio::test]
async fn bad_requests_are_typed_and_move_nothing() {
    let app = App::with_config(|c| c.load.max_amount_minor = 50_000).await;
    let mut p = purse(&app, 66, 20_000).await;
    let ok = p.request(1_000);
    let a = p
        .send_request(&app, &ok)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, permit, _) = permit_of(&app, &a, &ok).await;
    p.wallet += 1_000;
    p.last_applied = ok.sequence;
    let report = p.report(&ok, &permit, Outcome::Applied, p.wallet);
    p.send_report(&app, &id, &report)
        .await
        .expect(StatusCode::OK);
    assert_eq!(balance(&app, &p.account).await, 19_000);
    // The same sequence number with other bytes (another nonce).
    let mut replay = ok.clone();
    replay.nonce = rand::random();
    p.send_request(&app, &replay)
        .await
        .refused(StatusCode::CONFLICT, "load_sequence_conflict");
    // A sequence number not greater than the last taken.
    p.sequence = 5;
    let fifth = p.request(100);
    let a = p
        .send_request(&app, &fifth)
        .await
        .expect(StatusCode::CREATED)
        .clone();
    let (id, permit, _) = permit_of(&app, &a, &fifth).await;
    let report = p.report(&fifth, &permit, Outcome::Failed { reason: 1 }, p.wallet);
    p.send_report(&app, &id, &report)
        .await
        .expect(StatusCode::OK);
    p.sequence = 3;
    let older = p.request(100);
    p.send_request(&app, &older)
        .await
        .refused(StatusCode::CONFLICT, "load_sequence_stale");
    p.sequence = 6;
    // Over the balance, over the per-load limit.
    let big = p.request(19_001);
    p.send_request(&app, &big)
        .await
        .refused(StatusCode::CONFLICT, "exceeds_balance");
    let huge = p.request(50_001);
    p.send_request(&app, &huge)
        .await
        .refused(StatusCode::UNPROCESSABLE_ENTITY, "amount_over_limit");
    // An account that is not the device's customer's.
    let mut foreign = p.request(100);
    foreign.account = "6222020200119999".into();
    p.send_request(&app, &foreign)
        .await
        .refused(StatusCode::FORBIDDEN, "payer_account_not_held");
    // Signed over other bytes: altered after signing.
    let mut altered = p.request(100);
    let signed = altered.encode();
    altered.amount = Amount::new(200).unwrap();
    let body = serde_json::to_vec(&json!({
        "payload": B64.encode(altered.encode()),
        "signature": B64.encode(p.d.sign_challenge(&signed)),
    }))
    .unwrap();
    p.post(&app, "/v1/loads", body)
        .await
        .refused(StatusCode::FORBIDDEN, "load_signature_invalid");
    // Signed, but not a request; and not base64.
    p.post(&app, "/v1/loads", p.signed(b"KWLR\x01 too short"))
        .await
        .refused(StatusCode::BAD_REQUEST, "load_malformed");
    p.post(
        &app,
        "/v1/loads",
        br#"{"payload":"!!","signature":""}"#.to_vec(),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_input");
    // Another device's key signing this device's request.
    let other = SimDevice::p256("0A0B0C0D0E0F1077".parse().unwrap()).unwrap();
    let req = p.request(100);
    let body = serde_json::to_vec(&json!({
        "payload": B64.encode(req.encode()),
        "signature": B64.encode(other.sign_challenge(&req.encode())),
    }))
    .unwrap();
    p.post(&app, "/v1/loads", body)
        .await
        .refused(StatusCode::FORBIDDEN, "load_signature_invalid");
    // A report for an unknown load.
    p.send_report(&app, "00112233445566778899aabbccddeeff", b"x")
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_load");
    // Nothing moved.
    assert_eq!(balance(&app, &p.account).await, 19_000);
    assert!(app.audited("load.request", "refused").await);
    verified(&app).await;
}

/// 500 debits at once on one account never take it below its floor: the
/// database's guarded update is the last word, whatever the rules read.
#[tokio::test]
async fn parallel_debits_never_overdraw_an_account() {
    let app = App::new().await;
    let p = purse(&app, 67, 10_000).await;
    let currency: keyward_ledger::Currency = "CNY".parse().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let db = app.state.kms.db().clone();
        let account = p.account.clone();
        let customer = p.customer.clone();
        tasks.push(tokio::spawn(async move {
            let id = keyward_ledger::TransferId::from_bytes(rand::random());
            let amount = keyward_ledger::Amount::new(50).unwrap();
            db.write_in_turn("test.debit", keyward_server::ledger::TURN, |mut tx| {
                let (account, customer) = (account.clone(), customer.clone());
                async move {
                    let r =
                        keyward_server::ledger::open_load_in::<keyward_server::load::LoadError>(
                            &mut tx, &customer, &account, currency, id, amount, 1,
                        )
                        .await;
                    r.map(|_| (tx, ()))
                }
            })
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.code(), "exceeds_balance", "{e}"),
        }
    }
    assert_eq!(ok, 200);
    assert_eq!(balance(&app, &p.account).await, 0);
    assert_eq!(balance(&app, "sys:loads_in_flight:CNY").await, 10_000);
}

/// Money enters only through an operator's credit: above the configured
/// amount it waits for a second operator (not the same person under a
/// look-alike name), and the answer carries the balance after it; an
/// account opens only for the customer provisioning approved it for; the
/// statement gives the balance at a point in time.
#[tokio::test]
async fn credits_need_a_second_operator_above_the_limit() {
    use keyward_ca::Role;
    let app = App::with_config(|c| c.load.dual_control_above_minor = 10_000).await;
    let p = purse(&app, 68, 5_000).await;
    let carol = app.operator("carol", Role::Operator).await;
    let dave = app.operator("dave", Role::Operator).await;
    let path = format!("/admin/v1/accounts/{}/credits", p.account);
    let big = app
        .post(
            &carol,
            &path,
            json!({"amount_minor": 20_000, "reference": "wire 42"}),
        )
        .await;
    let big = big.expect(StatusCode::ACCEPTED).clone();
    assert_eq!(big["state"], "pending");
    assert_eq!(balance(&app, &p.account).await, 5_000);
    let approve = format!(
        "/admin/v1/credits/{}/approve",
        big["credit_id"].as_str().unwrap()
    );
    app.post(&carol, &approve, json!({}))
        .await
        .refused(StatusCode::FORBIDDEN, "self_approval");
    let done = app.post(&dave, &approve, json!({})).await;
    assert_eq!(done.expect(StatusCode::OK)["balance_after_minor"], 25_000);
    app.post(&dave, &approve, json!({}))
        .await
        .refused(StatusCode::NOT_FOUND, "unknown_credit");
    assert!(app.audited("ledger.credit_approve", "success").await);
    // A reference is short printable text; an amount positive.
    app.post(
        &carol,
        &path,
        json!({"amount_minor": 1, "reference": "x\u{202E}y"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "field_invalid");
    app.post(
        &carol,
        &path,
        json!({"amount_minor": 0, "reference": "zero"}),
    )
    .await
    .refused(StatusCode::UNPROCESSABLE_ENTITY, "amount_not_positive");
    // Another customer's account number is not opened for this one.
    app.post(
        &app.root,
        "/admin/v1/accounts",
        json!({"account": "6222020200119999", "customer_id": p.customer, "currency": "CNY"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "accounts_not_held");
    // The statement: every entry with the balance after it, and the
    // balance at a point in time before the second credit.
    let st = app
        .get(
            &app.root,
            &format!("/admin/v1/accounts/{}/statement", p.account),
        )
        .await;
    let st = st.expect(StatusCode::OK).clone();
    let entries = st["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["balance_after_minor"], 25_000);
    let at = entries[0]["created_at_ms"].as_i64().unwrap();
    let then = app
        .get(
            &app.root,
            &format!("/admin/v1/accounts/{}/statement?at_ms={at}", p.account),
        )
        .await;
    assert_eq!(then.expect(StatusCode::OK)["balance_at_minor"], 5_000);
    verified(&app).await;
}

/// The lost-report drill: 1 000 loads by 10 devices, one report in ten lost
/// after the purse applied the load; the sweeper reverses those (the
/// timeout elapses: their expiry is moved to now), and each device's next
/// request, or its status at the end, proves the purse applied them. Money
/// created: none; every such load `late_applied`.
#[tokio::test]
async fn lost_report_drill_creates_no_money() {
    use keyward_tests::purse::Purse as DevicePurse;
    use rand::{Rng, SeedableRng};
    let app = App::new().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut fleet = Vec::new();
    for n in 0..10u8 {
        let p = purse(&app, 70 + n, 1_000_000).await;
        let dp = DevicePurse::new(p.d.id, &p.customer, &p.account, "CNY");
        fleet.push((p, dp));
    }
    let db = app.state.kms.db().pool().clone();
    let mut lost = Vec::new();
    for _round in 0..100 {
        for (p, dp) in fleet.iter_mut() {
            let req = dp.request(&p.d, 100).unwrap();
            let a = p
                .post(&app, "/v1/loads", serde_json::to_vec(&req.body).unwrap())
                .await;
            let a = a.expect(StatusCode::CREATED).clone();
            let permit = dp.check_permit(&a, app.state.ca.root_pem()).unwrap();
            let id = a["load_id"].as_str().unwrap().to_owned();
            let report = dp.apply(&p.d, &permit).unwrap();
            if rng.gen_range(0..10) == 0 {
                lost.push(id);
                continue;
            }
            let r = p
                .post(
                    &app,
                    &format!("/v1/loads/{id}/report"),
                    serde_json::to_vec(&report.body).unwrap(),
                )
                .await;
            assert_eq!(r.expect(StatusCode::OK)["state"], "posted");
        }
        // The reports lost this round time out: the sweeper reverses them.
        sqlx::query("UPDATE loads SET expires_at_ms = 0 WHERE state = 'pending'")
            .execute(&db)
            .await
            .unwrap();
        app.state.loads.sweep().await.unwrap();
    }
    // The last round's lost reports: the purses' statuses settle them.
    for (p, dp) in fleet.iter_mut() {
        let s = dp.status(&p.d).unwrap();
        p.post(
            &app,
            "/v1/loads/status",
            serde_json::to_vec(&s.body).unwrap(),
        )
        .await
        .expect(StatusCode::OK);
    }
    assert!(lost.len() > 50, "{} reports lost", lost.len());
    for id in &lost {
        assert_eq!(load_state(&app, id).await, "late_applied", "{id}");
    }
    // Money created: the float holds exactly what the purses hold.
    let on_purses: i64 = fleet.iter().map(|(_, dp)| dp.balance as i64).sum();
    assert_eq!(on_purses, 1_000 * 100);
    assert_eq!(balance(&app, "sys:float:CNY").await, on_purses);
    for (p, dp) in &fleet {
        assert_eq!(
            balance(&app, &p.account).await,
            1_000_000 - dp.balance as i64
        );
    }
    verified(&app).await;
}
