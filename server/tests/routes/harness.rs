//! An installation opened in this process — SoftHSM token, test database,
//! `init` — with both routers built on its [`AppState`], driven with
//! `tower::ServiceExt::oneshot`. Requests carry the [`ClientIdentity`] the
//! TLS layer would have put there; the certificates behind them are real
//! ones from the installation's CA, so the per-request registry check runs.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use keyward_ca::{IssueRequest, Role};
use keyward_config::Config;
use keyward_kms::hsm::PublicKey;
use keyward_server::edge::identity::{ClientIdentity, PeerCertificate};
use keyward_server::edge::startup;
use keyward_server::metrics::Metrics;
use keyward_server::{AppState, admin_app, bootstrap, public_app};
use keyward_tests::simulator::SimDevice;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::Server;

/// One installation and its routers.
pub struct App {
    /// Config file, token, database and data dir (nothing spawned).
    pub install: Server,
    pub state: AppState,
    pub admin: Router,
    pub public: Router,
    /// The first admin operator `init` made.
    pub root: ClientIdentity,
}

/// What a route answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// The stable error code of a refusal.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The request id the answer carries (the audit records' `request_id`).
    pub fn request_id(&self) -> &str {
        self.headers["x-request-id"].to_str().unwrap()
    }

    /// Asserts the status and returns the body.
    pub fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        &self.body
    }

    /// Asserts a refusal: status and code.
    pub fn refused(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        assert!(
            self.body["error"]["request_id"].is_string(),
            "no request id: {}",
            self.text
        );
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

/// The first certificate of a PEM text, as DER.
pub fn der_of_pem(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The identity of a client presenting `der`.
pub fn identity_of(der: &[u8]) -> ClientIdentity {
    ClientIdentity {
        peer: peer(),
        cert: Some(PeerCertificate::from_der(der).expect("a certificate")),
    }
}

/// A client without a certificate (the admin listener allows the TLS
/// handshake for health, metrics and OCSP).
pub fn anonymous() -> ClientIdentity {
    ClientIdentity {
        peer: peer(),
        cert: None,
    }
}

impl App {
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// An installation whose configuration `edit` changes before it opens.
    pub async fn with_config(edit: impl FnOnce(&mut Config)) -> Self {
        let install = Server::new().await;
        let mut config = Config::load(&install.config).unwrap();
        edit(&mut config);
        let metrics = Metrics::new().unwrap();
        let opened = bootstrap::open(&config, Some(metrics.clone()))
            .await
            .unwrap();
        bootstrap::init_opened(&config, &opened).await.unwrap();
        let state = startup::state_from(config, opened, metrics).await.unwrap();
        let pem = std::fs::read_to_string(install.data.join("operators/admin.pem")).unwrap();
        Self {
            admin: admin_app(state.clone()),
            public: public_app(state.clone()),
            root: identity_of(&der_of_pem(&pem)),
            state,
            install,
        }
    }

    /// A new operator with `role`, certified by the installation's CA.
    pub async fn operator(&self, name: &str, role: Role) -> ClientIdentity {
        self.try_operator(name, role).await.unwrap()
    }

    /// An operator certificate for `name`, or the CA's refusal.
    pub async fn try_operator(
        &self,
        name: &str,
        role: Role,
    ) -> Result<ClientIdentity, keyward_ca::CaError> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let point = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let cert = self
            .state
            .ca
            .issue_for_public_key(&PublicKey::P256(point), IssueRequest::operator(name, role))
            .await?;
        Ok(identity_of(&cert.der))
    }

    /// One request to the admin router as `who`.
    pub async fn admin(
        &self,
        who: &ClientIdentity,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        call(&self.admin, who, method, path, body).await
    }

    pub async fn get(&self, who: &ClientIdentity, path: &str) -> Answer {
        self.admin(who, Method::GET, path, None).await
    }

    pub async fn post(&self, who: &ClientIdentity, path: &str, body: Value) -> Answer {
        self.admin(who, Method::POST, path, Some(body)).await
    }

    /// Creates issuer `id` (`tdes` or `aes`) as the root admin.
    pub async fn issuer(&self, id: &str, family: &str) {
        self.post(
            &self.root,
            "/admin/v1/issuers",
            json!({"issuer_id": id, "family": family}),
        )
        .await
        .expect(StatusCode::CREATED);
    }

    /// Imports `devices` as batch `batch` as the root admin.
    pub async fn import(&self, batch: &str, devices: &[&SimDevice]) -> Answer {
        let mut manifest = format!("{}\n", keyward_device_provisioning::MANIFEST_HEADER);
        for d in devices {
            manifest.push_str(&d.manifest_row());
            manifest.push('\n');
        }
        self.post(
            &self.root,
            "/admin/v1/batches",
            json!({"batch_id": batch, "manifest": manifest}),
        )
        .await
    }

    /// The trail's most recent records, newest first.
    pub async fn trail(&self) -> Vec<Value> {
        let a = self.get(&self.root, "/admin/v1/audit?limit=500").await;
        a.expect(StatusCode::OK)["records"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether the trail holds a record with `action` and `outcome`.
    pub async fn audited(&self, action: &str, outcome: &str) -> bool {
        self.trail()
            .await
            .iter()
            .any(|r| r["action"] == action && r["outcome"] == outcome)
    }

    /// The outcomes of `action`'s records for `request_id`, oldest first.
    pub async fn outcomes_of(&self, action: &str, request_id: &str) -> Vec<String> {
        let mut outcomes: Vec<String> = self
            .trail()
            .await
            .iter()
            .filter(|r| r["action"] == action && r["request_id"] == request_id)
            .map(|r| r["outcome"].as_str().unwrap_or("").to_owned())
            .collect();
        outcomes.reverse();
        outcomes
    }

    /// Makes every audit staging fail, as a trail that cannot take the
    /// outcome record of an effect, until [`App::heal_audit_staging`].
    pub async fn break_audit_staging(&self) {
        let sql = match self.state.kms.db().kind() {
            keyward_config::DatabaseKind::Sqlite => {
                "CREATE TRIGGER kw_audit_down BEFORE INSERT ON audit_staged \
                 BEGIN SELECT RAISE(ABORT, 'audit down'); END"
            }
            keyward_config::DatabaseKind::Postgres => {
                "CREATE FUNCTION kw_audit_down() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'audit down'; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER kw_audit_down BEFORE INSERT ON audit_staged \
                 FOR EACH ROW EXECUTE FUNCTION kw_audit_down()"
            }
        };
        self.exec(sql).await;
    }

    /// Undoes [`App::break_audit_staging`].
    pub async fn heal_audit_staging(&self) {
        let sql = match self.state.kms.db().kind() {
            keyward_config::DatabaseKind::Sqlite => "DROP TRIGGER kw_audit_down",
            keyward_config::DatabaseKind::Postgres => {
                "DROP TRIGGER kw_audit_down ON audit_staged; DROP FUNCTION kw_audit_down()"
            }
        };
        self.exec(sql).await;
    }

    /// The rows of `table`.
    pub async fn rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_one(self.state.kms.db().pool())
            .await
            .unwrap()
    }

    /// Runs `sql` (one or more statements) on the app's database.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.state.kms.db().pool())
            .await
            .unwrap();
    }
}

/// `req` to `router` as `who`.
pub async fn send(router: &Router, who: &ClientIdentity, mut req: Request<Body>) -> Answer {
    req.extensions_mut().insert(who.clone());
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// One request to `router` as `who`.
pub async fn call(
    router: &Router,
    who: &ClientIdentity,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    send(router, who, req.body(body).unwrap()).await
}
