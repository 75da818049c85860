//! `GET /openapi.json`: the document the admin listener serves (without a
//! client certificate) describes exactly the routes of both routers — read
//! from their source, and each one answered live — and live answers, errors
//! included, validate against the schemas it gives for their status.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use keyward_server::wire::login as wire;
use keyward_tests::terminal::{self, LoginOptions};
use serde_json::{Value, json};

use crate::harness::{Answer, App, anonymous, call, send};
use crate::login::{finish, issued, session, start, start_body};

const ADMIN_ROUTER: &str = include_str!("../../src/admin/mod.rs");
const PUBLIC_ROUTER: &str = include_str!("../../src/public/mod.rs");
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every `.route(path, handlers)` in a router's source,
/// axum's wildcard `{*name}` written as OpenAPI's `{name}`.
fn routes_in(src: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut rest = src;
    while let Some(at) = rest.find(".route(") {
        let open = at + ".route(".len();
        let (mut depth, mut end) = (1, open);
        for (i, c) in rest[open..].char_indices() {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            if depth == 0 {
                end = open + i;
                break;
            }
        }
        let args = &rest[open..end];
        let q1 = args.find('"').expect("a path literal");
        let q2 = q1 + 1 + args[q1 + 1..].find('"').expect("its end");
        let path = args[q1 + 1..q2].replace("{*", "{");
        let handlers = &args[q2 + 1..];
        for m in METHODS {
            let call = format!("{m}(");
            let mut from = 0;
            while let Some(p) = handlers[from..].find(&call) {
                let i = from + p;
                let before = handlers[..i].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    out.insert((m.to_owned(), path.clone()));
                }
                from = i + call.len();
            }
        }
        rest = &rest[end..];
    }
    out
}

/// The served document, and checks against it.
struct Doc(Value);

impl Doc {
    async fn served(app: &App) -> Self {
        let a = call(&app.admin, &anonymous(), Method::GET, "/openapi.json", None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.headers["content-type"], "application/json");
        assert!(a.body.is_object(), "not JSON: {}", a.text);
        assert_eq!(a.body["openapi"], "3.1.0");
        Self(a.body.clone())
    }

    /// Every documented `(method, path)`.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.0["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    /// The JSON schema documented for `status` of `method path` (the exact
    /// status, else its range `4XX`, else `default`).
    fn schema_for(&self, method: &Method, path: &str, status: StatusCode) -> Value {
        let op = &self.0["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let responses = &op["responses"];
        let code = status.as_u16();
        let mut r = [
            code.to_string(),
            format!("{}XX", code / 100),
            "default".into(),
        ]
        .iter()
        .find_map(|k| responses.get(k))
        .unwrap_or_else(|| panic!("{method} {path}: no response documented for {code}"))
        .clone();
        if let Some(name) = r["$ref"].as_str() {
            let name = name.trim_start_matches("#/components/responses/");
            r = self.0["components"]["responses"][name].clone();
        }
        let schema = r["content"]["application/json"]["schema"].clone();
        assert!(
            schema.is_object(),
            "{method} {path} {code}: no application/json schema"
        );
        schema
    }

    /// Asserts that `answer` to `method path` (the documented template)
    /// validates against the schema documented for its status.
    fn check(&self, method: Method, path: &str, answer: &Answer) {
        let schema = self.schema_for(&method, path, answer.status);
        // `$ref`s are `#/components/schemas/…`: resolve them in a root that
        // carries the document's components.
        let root = json!({"components": self.0["components"], "allOf": [schema]});
        let validator = jsonschema::draft202012::new(&root).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(&answer.body)
            .map(|e| format!("{e} (at {})", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {}: {errors:#?}\n{}",
            answer.status,
            answer.text
        );
    }
}

/// `path` with every `{param}` filled in.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("0102030405060708");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn the_document_describes_every_route_of_both_routers() {
    let app = App::new().await;
    let doc = Doc::served(&app).await;

    let admin = routes_in(ADMIN_ROUTER);
    let public = routes_in(PUBLIC_ROUTER);
    assert!(
        admin.len() > 40 && public.len() >= 5,
        "{admin:?} {public:?}"
    );
    assert!(admin.contains(&("get".into(), "/openapi.json".into())));
    let routed: BTreeSet<_> = admin.union(&public).cloned().collect();
    let documented = doc.operations();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes not in docs/openapi.json: {missing:?}"
    );
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");

    // Each operation answers on its listener (no 404/405: the route is
    // there), and the answer, an anonymous caller's, is what the document
    // says for its status.
    for (method, path) in &documented {
        let item = &doc.0["paths"][path];
        let tag = item[method]["tags"][0].as_str().unwrap_or_default();
        let on_public = public.contains(&(method.clone(), path.clone()));
        assert_eq!(tag == "public", on_public, "{method} {path}: tag {tag}");
        let server = item["servers"][0]["url"].as_str().unwrap_or_default();
        assert_eq!(
            server.ends_with(":8443"),
            on_public,
            "{method} {path}: {server}"
        );

        let router = if on_public { &app.public } else { &app.admin };
        let m: Method = method.to_uppercase().parse().unwrap();
        let a = call(router, &anonymous(), m.clone(), &concrete(path), None).await;
        assert!(
            a.status != StatusCode::NOT_FOUND && a.status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            a.status,
            a.text
        );
        if path.starts_with("/admin/v1/") || on_public {
            a.refused(StatusCode::UNAUTHORIZED, "client_certificate_required");
        }
        let json = a.headers.get("content-type").is_some_and(|v| {
            v.to_str()
                .unwrap_or_default()
                .starts_with("application/json")
        });
        if json && path != "/openapi.json" {
            doc.check(m, path, &a);
        }
    }

    // The security schemes OpenAPI 3.1 has for these listeners.
    let schemes = &doc.0["components"]["securitySchemes"];
    assert_eq!(schemes["operatorCertificate"]["type"], "mutualTLS");
    assert_eq!(schemes["deviceCertificate"]["type"], "mutualTLS");
    assert_eq!(schemes["sessionToken"]["scheme"], "bearer");
}

#[tokio::test]
async fn live_answers_match_the_documented_schemas() {
    let app = App::new().await;
    let doc = Doc::served(&app).await;
    let root = app.root.clone();

    for path in ["/live", "/ready"] {
        let a = call(&app.admin, &anonymous(), Method::GET, path, None).await;
        doc.check(Method::GET, path, &a);
    }
    let a = app.get(&root, "/admin/v1/whoami").await;
    a.expect(StatusCode::OK);
    doc.check(Method::GET, "/admin/v1/whoami", &a);

    let a = app
        .post(
            &root,
            "/admin/v1/issuers",
            json!({"issuer_id": "bank-a", "family": "tdes"}),
        )
        .await;
    a.expect(StatusCode::CREATED);
    doc.check(Method::POST, "/admin/v1/issuers", &a);
    let a = app
        .post(
            &root,
            "/admin/v1/issuers",
            json!({"issuer_id": "bank-a", "family": "tdes"}),
        )
        .await;
    a.refused(StatusCode::CONFLICT, "issuer_exists");
    doc.check(Method::POST, "/admin/v1/issuers", &a);
    let a = app.get(&root, "/admin/v1/issuers").await;
    a.expect(StatusCode::OK);
    doc.check(Method::GET, "/admin/v1/issuers", &a);
    let a = app.get(&root, "/admin/v1/issuers/bank-z").await;
    a.refused(StatusCode::NOT_FOUND, "unknown_issuer");
    doc.check(Method::GET, "/admin/v1/issuers/{id}", &a);
    // An unrouted path: the bare 404 of the fallback, in the same envelope.
    let a = app.get(&root, "/admin/v1/nowhere").await;
    a.refused(StatusCode::NOT_FOUND, "not_found");
    doc.check(Method::GET, "/admin/v1/issuers/{id}", &a);

    // A device from the factory to issued, then its login.
    let (mut d, who) = issued(&app, 7, &["bank-a"]).await;
    let id = d.id.to_string();
    let a = call(&app.public, &who, Method::GET, "/v1/ping", None).await;
    a.expect(StatusCode::OK);
    doc.check(Method::GET, "/v1/ping", &a);

    let a = start(&app, &who, start_body(&d, "bank-a")).await;
    a.expect(StatusCode::CREATED);
    doc.check(Method::POST, "/v1/login/start", &a);
    let c: wire::LoginChallenge = serde_json::from_value(a.body.clone()).unwrap();
    assert!(
        c.key_update.is_some(),
        "a first login takes keys: {}",
        a.text
    );
    let confirmation = c
        .key_update
        .as_ref()
        .map(|u| terminal::confirm_update(&mut d, "bank-a", u).unwrap().0);
    let body =
        terminal::finish_body(&d, "bank-a", &c, confirmation, LoginOptions::default()).unwrap();
    let a = finish(&app, &who, serde_json::to_value(body).unwrap()).await;
    a.expect(StatusCode::OK);
    doc.check(Method::POST, "/v1/login/finish", &a);
    let token = a.body["session_token"].as_str().unwrap().to_owned();

    let a = session(&app, &who, &token).await;
    a.expect(StatusCode::OK);
    doc.check(Method::GET, "/v1/session", &a);
    let a = session(&app, &who, "not-a-token").await;
    assert!(a.status.is_client_error(), "{}", a.text);
    doc.check(Method::GET, "/v1/session", &a);
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/v1/session")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&app.public, &who, req).await.status,
        StatusCode::NO_CONTENT
    );

    // A second start: no key update this time (`key_update: null`).
    let a = start(&app, &who, start_body(&d, "bank-a")).await;
    a.expect(StatusCode::CREATED);
    doc.check(Method::POST, "/v1/login/start", &a);
    // A finish with a wrong answer: a typed refusal.
    let c: wire::LoginChallenge = serde_json::from_value(a.body.clone()).unwrap();
    let wrong = LoginOptions {
        wrong_response: true,
    };
    let body = terminal::finish_body(&d, "bank-a", &c, None, wrong).unwrap();
    let a = finish(&app, &who, serde_json::to_value(body).unwrap()).await;
    assert!(a.status.is_client_error(), "{}", a.text);
    doc.check(Method::POST, "/v1/login/finish", &a);

    // The operators' reads of what that made.
    for (path, concrete) in [
        ("/admin/v1/devices", "/admin/v1/devices".to_owned()),
        ("/admin/v1/devices/{id}", format!("/admin/v1/devices/{id}")),
        (
            "/admin/v1/devices/{id}/keys",
            format!("/admin/v1/devices/{id}/keys?issuer_id=bank-a"),
        ),
        (
            "/admin/v1/devices/{id}/credentials/{issuer}",
            format!("/admin/v1/devices/{id}/credentials/bank-a"),
        ),
        (
            "/admin/v1/issuers/{id}/rotations/pending",
            "/admin/v1/issuers/bank-a/rotations/pending".to_owned(),
        ),
        (
            "/admin/v1/applications",
            "/admin/v1/applications?state=approved".to_owned(),
        ),
        (
            "/admin/v1/ca/certificates",
            "/admin/v1/ca/certificates".to_owned(),
        ),
        ("/admin/v1/audit", "/admin/v1/audit?limit=20".to_owned()),
        (
            "/admin/v1/audit/verify",
            "/admin/v1/audit/verify".to_owned(),
        ),
        (
            "/admin/v1/audit/checkpoint",
            "/admin/v1/audit/checkpoint".to_owned(),
        ),
    ] {
        let a = app.get(&root, &concrete).await;
        a.expect(StatusCode::OK);
        doc.check(Method::GET, path, &a);
    }
    let a = app.get(&root, &format!("/admin/v1/devices/{id}")).await;
    let detail = a.expect(StatusCode::OK);
    assert_eq!(
        detail["inits"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.text
    );
    assert_eq!(
        detail["bindings"].as_array().map(Vec::len),
        Some(1),
        "{}",
        a.text
    );
    let serial = detail["cert_serial"].as_str().unwrap().to_owned();
    let a = app
        .get(&root, &format!("/admin/v1/ca/certificates/{serial}"))
        .await;
    a.expect(StatusCode::OK);
    doc.check(Method::GET, "/admin/v1/ca/certificates/{serial}", &a);
}
