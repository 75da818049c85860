//! The bad-input corpus (`bad_inputs.json`): requests to every route that
//! are malformed, oversize, replayed, forged, re-ordered, from the wrong
//! device, for the wrong issuer or with a revoked or foreign certificate.
//! Each must get the status and stable code the file gives (never a 5xx)
//! and change nothing: every table but the audit trail (which records the
//! refusals) and the throttles' bookkeeping is the same row for row after
//! it, and the trail gains no `success`.
//!
//! `KEYWARD_BAD_INPUTS_RECORD=1` rewrites the file's `status` and `code`
//! from what the server answers (review the diff: a new answer is a
//! decision, not a formality).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_ca::Role;
use keyward_config::DatabaseKind;
use keyward_server::edge::identity::ClientIdentity;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Column, Row};

use crate::harness::{App, anonymous, identity_of, send};
use crate::loads::{Purse, permit_of, purse};
use crate::login::issued;

const CORPUS: &str = include_str!("bad_inputs.json");

/// Tables a refusal may change by design: the audit trail (it records the
/// refusal) and the throttles' and background jobs' bookkeeping.
const CHANGING: &[&str] = &["audit_log", "audit_head", "audit_staged", "audit_incidents"];

/// One request of the corpus.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Case {
    name: String,
    /// `admin` or `public`.
    listener: String,
    /// Who presents which certificate (see [`World::identity`]).
    #[serde(rename = "as")]
    who: String,
    method: String,
    /// With `{placeholders}` of [`World::vars`].
    path: String,
    /// A JSON body, placeholders substituted in its strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    /// A raw body (placeholders substituted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    /// A raw body given in hex (invalid UTF-8 and the like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
    /// A JSON body of this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oversize: Option<usize>,
    /// `Content-Type` when not `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    /// More headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    /// Session token: `own`, `other` (another device's), `forged`, `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// The answer's status and stable code.
    #[serde(default)]
    status: u16,
    /// A 2xx is the right answer: a replay answered with what the first
    /// request got, or a refusal carried in the body (OCSP's
    /// `malformedRequest`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    answered: bool,
    #[serde(default)]
    code: String,
}

/// The installation the corpus runs against: two devices with purses and
/// sessions, one completed load, operators of each role, a revoked
/// operator, a revoked device and a certificate from another CA.
struct World {
    one: Purse,
    two: Purse,
    identities: BTreeMap<&'static str, ClientIdentity>,
    vars: BTreeMap<&'static str, String>,
}

impl World {
    async fn new(app: &App) -> Self {
        let mut one = purse(app, 1, 100_000).await;
        let two = purse(app, 2, 0).await;
        let mut vars = BTreeMap::new();
        // One completed load: its request and report are replayed.
        let req = one.request(2_500);
        let a = one.send_request(app, &req).await;
        let (load, permit, _) = permit_of(app, &a.body, &req).await;
        let report = one.report(
            &req,
            &permit,
            keyward_protocol::load::Outcome::Applied,
            2_500,
        );
        one.send_report(app, &load, &report)
            .await
            .expect(axum::http::StatusCode::OK);
        vars.insert(
            "load_request",
            String::from_utf8(one.signed(&req.encode())).unwrap(),
        );
        vars.insert(
            "load_report",
            String::from_utf8(one.signed(&report)).unwrap(),
        );
        // The next request, signed by the other device's key (forged), and
        // sent for the other device's account (wrong device).
        let next = one.request(1_000);
        vars.insert(
            "load_request_forged",
            String::from_utf8(two.signed(&next.encode())).unwrap(),
        );
        let mut theirs = next.clone();
        theirs.account.clone_from(&two.account);
        theirs.customer.clone_from(&two.customer);
        vars.insert(
            "load_request_wrong_account",
            String::from_utf8(one.signed(&theirs.encode())).unwrap(),
        );
        let mut too_much = next.clone();
        too_much.amount = keyward_protocol::confirmation::Amount::new(10_000_000).unwrap();
        vars.insert(
            "load_request_overdraw",
            String::from_utf8(one.signed(&too_much.encode())).unwrap(),
        );
        let mut euro = next.clone();
        euro.currency = keyward_protocol::confirmation::Currency::from_code("EUR").unwrap();
        vars.insert(
            "load_request_wrong_currency",
            String::from_utf8(one.signed(&euro.encode())).unwrap(),
        );
        vars.insert("load", load);
        vars.insert("dev", one.d.id.to_string());
        vars.insert("dev2", two.d.id.to_string());
        vars.insert("customer", one.customer.clone());
        vars.insert("account", one.account.clone());
        vars.insert("account2", two.account.clone());
        let serial = app
            .state
            .provisioning
            .device(one.d.id)
            .await
            .unwrap()
            .cert_serial
            .unwrap();
        vars.insert("dev_serial", serial);

        let mut identities = BTreeMap::new();
        identities.insert("root", app.root.clone());
        identities.insert("auditor", app.operator("carol", Role::Auditor).await);
        identities.insert("operator", app.operator("dave", Role::Operator).await);
        identities.insert("anonymous", anonymous());
        identities.insert("device", one.who.clone());
        identities.insert("device2", two.who.clone());
        let revoked = app.operator("mallory", Role::Operator).await;
        revoke(app, &revoked).await;
        identities.insert("revoked", revoked);
        let (_, lost) = issued(app, 3, &["bank-a"]).await;
        revoke(app, &lost).await;
        identities.insert("revoked_device", lost);
        identities.insert("foreign", foreign());
        identities.insert("service", service(app).await);
        Self {
            one,
            two,
            identities,
            vars,
        }
    }

    fn fill(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn fill_json(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.fill(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), self.fill_json(v)))
                    .collect(),
            ),
            v => v.clone(),
        }
    }

    fn request(&self, c: &Case) -> Request<Body> {
        let mut req = Request::builder()
            .method(Method::from_bytes(c.method.as_bytes()).unwrap())
            .uri(self.fill(&c.path));
        let body: Option<Vec<u8>> = if let Some(n) = c.oversize {
            let mut b = br#"{"pad":""#.to_vec();
            b.resize(n.saturating_sub(2), b'a');
            b.extend_from_slice(b"\"}");
            Some(b)
        } else if let Some(h) = &c.raw_hex {
            Some(hex::decode(h).unwrap())
        } else if let Some(r) = &c.raw {
            Some(self.fill(r).into_bytes())
        } else {
            c.body
                .as_ref()
                .map(|v| self.fill_json(v).to_string().into_bytes())
        };
        if body.is_some() {
            let ct = c.content_type.as_deref().unwrap_or("application/json");
            req = req.header("content-type", ct);
        }
        let token = match c.token.as_deref() {
            Some("own") => Some(self.one.token.clone()),
            Some("other") => Some(self.two.token.clone()),
            Some("forged") => Some(B64.encode([7u8; 32])),
            _ => None,
        };
        for (k, v) in &c.headers {
            req = req.header(k.as_str(), self.fill(v));
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap()
    }
}

/// Revokes the certificate `who` presents, as the root admin.
async fn revoke(app: &App, who: &ClientIdentity) {
    let serial = &who.cert.as_ref().unwrap().serial;
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        json!({"reason": "keyCompromise"}),
    )
    .await
    .expect(axum::http::StatusCode::OK);
}

/// A back-end system's certificate (profile `service`).
async fn service(app: &App) -> ClientIdentity {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let cert = app
        .state
        .ca
        .issue_for_public_key(
            &keyward_kms::hsm::PublicKey::P256(point),
            keyward_ca::IssueRequest::service("gateway".to_owned()),
        )
        .await
        .unwrap();
    identity_of(&cert.der)
}

/// A well-formed operator-looking certificate from a CA Keyward never saw.
fn foreign() -> ClientIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "admin");
    let cert = params.self_signed(&key).unwrap();
    identity_of(cert.der())
}

/// The snapshot's entry counting successful audit records.
const SUCCESSES: &str = "audit_log successes";

/// Every table's rows (as text, sorted; on PostgreSQL their hash) but
/// [`CHANGING`]'s, and the count of successful audit records.
async fn snapshot(app: &App) -> BTreeMap<String, Vec<String>> {
    let db = app.state.kms.db();
    let tables_sql = match db.kind() {
        DatabaseKind::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name NOT LIKE '_sqlx%'"
        }
        DatabaseKind::Postgres => {
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%'"
        }
    };
    let tables: Vec<String> = sqlx::query_scalar(tables_sql)
        .fetch_all(db.pool())
        .await
        .unwrap();
    let tables: Vec<String> = tables
        .into_iter()
        .filter(|t| !CHANGING.contains(&t.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    if db.kind() == DatabaseKind::Postgres {
        // One round trip: each table's rows as text, hashed in the server.
        let sql = tables
            .iter()
            .map(|t| {
                format!(
                    "SELECT '{t}', md5(COALESCE(string_agg(x::text, '|' ORDER BY x::text), '')) \
                     FROM {t} x"
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(db.pool())
            .await
            .unwrap();
        for (t, hash) in rows {
            out.insert(t, vec![hash]);
        }
    } else {
        for t in tables {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {t}")))
                .fetch_all(db.pool())
                .await
                .unwrap();
            let mut text: Vec<String> = rows.iter().map(row_text).collect();
            text.sort();
            out.insert(t, text);
        }
    }
    let ok: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE outcome = 'success'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    out.insert(SUCCESSES.into(), vec![ok.to_string()]);
    out
}

fn row_text(row: &sqlx::any::AnyRow) -> String {
    (0..row.columns().len())
        .map(|i| {
            let name = row.columns()[i].name();
            let v = if let Ok(v) = row.try_get::<Option<String>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
                format!("{v:?}")
            } else if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
                format!("{:?}", v.map(hex::encode))
            } else {
                "?".to_owned()
            };
            format!("{name}={v}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What changed between two snapshots, table by table; for a read (whose
/// permitted access is audited as a success) not the count of successes.
fn changes(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
    read: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (t, rows) in after {
        if read && t == SUCCESSES {
            continue;
        }
        let old = before.get(t).cloned().unwrap_or_default();
        if &old != rows {
            let gone: Vec<_> = old.iter().filter(|r| !rows.contains(r)).collect();
            let new: Vec<_> = rows.iter().filter(|r| !old.contains(r)).collect();
            out.push(format!("{t}: -{gone:?} +{new:?}"));
        }
    }
    out
}

#[tokio::test]
async fn every_bad_input_is_refused_and_changes_nothing() {
    let mut cases: Vec<Case> = serde_json::from_str(CORPUS).unwrap();
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let record = std::env::var_os("KEYWARD_BAD_INPUTS_RECORD").is_some();
    let app = App::new().await;
    let world = World::new(&app).await;
    let mut failures = Vec::new();
    // Each request's "after" is the next one's "before".
    let mut before = snapshot(&app).await;
    for c in &mut cases {
        let who = world
            .identities
            .get(c.who.as_str())
            .unwrap_or_else(|| panic!("{}: no identity {}", c.name, c.who));
        let router = match c.listener.as_str() {
            "admin" => &app.admin,
            "public" => &app.public,
            l => panic!("{}: no listener {l}", c.name),
        };
        let a = send(router, who, world.request(c)).await;
        let after = snapshot(&app).await;
        let status = a.status.as_u16();
        if status >= 500 || (!c.answered && (200..300).contains(&status)) {
            failures.push(format!("{}: {} {}", c.name, status, a.text));
        }
        let changed = changes(&before, &after, c.method == "GET");
        before = after;
        if !changed.is_empty() {
            failures.push(format!("{}: changed {changed:?}", c.name));
        }
        if record {
            c.status = status;
            c.code = a.code().to_owned();
        } else if (c.status, c.code.as_str()) != (status, a.code()) {
            failures.push(format!(
                "{}: expected {} {}, got {} {}",
                c.name, c.status, c.code, status, a.text
            ));
        }
    }
    if record {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/routes/bad_inputs.json");
        std::fs::write(path, serde_json::to_string_pretty(&cases).unwrap() + "\n").unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
