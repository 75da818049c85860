//! Shared set-up of the provisioning tests (one file per workflow step): a SoftHSM
//! token, the test database, the real Keyward CA and the provisioning
//! service, plus the steps one test file needs from another's workflow
//! (import, check, initialise, an approved customer). Not every test file
//! uses every helper.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keyward_ca::Ca;
use keyward_config::CaConfig;
use keyward_device_provisioning::certifier::{BoxFuture, RevokeReason, SignedDeviceCertificate};
use keyward_device_provisioning::{
    Account, Action, AuditNote, BatchId, BindRequest, Contact, ContactKind, CustomerApplication,
    CustomerId, NationalId, OperatorId, Outcome, Provisioning, Reason, Refused, SecureElement,
};
use keyward_device_provisioning::{
    CertificateStatus, CertifierError, DeviceCertificate, DeviceCertifier, DeviceCsr,
};
use keyward_kms::Kms;
use keyward_kms::catalog::Catalog;
use keyward_kms::db::Tx;
use keyward_kms::hsm::Pkcs11Hsm;
use keyward_kms::pool::HsmPool;
use keyward_kms::types::{DeviceId, IssuerId, KeyFamily};
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;

/// What [`HookedCa`] runs before the `n`th certification (from 1): a
/// fault injected, or a stall.
pub type CertifyHook =
    Box<dyn Fn(usize) -> BoxFuture<'static, Result<(), CertifierError>> + Send + Sync>;

/// The real CA with a hook before each certification; everything else goes
/// straight to the CA.
pub struct HookedCa {
    ca: Ca,
    calls: AtomicUsize,
    hook: CertifyHook,
}

impl HookedCa {
    pub fn new(
        ca: Ca,
        hook: impl Fn(usize) -> BoxFuture<'static, Result<(), CertifierError>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            ca,
            calls: AtomicUsize::new(0),
            hook: Box::new(hook),
        }
    }

    /// Certifications asked for so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for HookedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedCa").finish_non_exhaustive()
    }
}

impl DeviceCertifier for HookedCa {
    fn check_csr(&self, csr: &[u8]) -> Result<DeviceCsr, CertifierError> {
        DeviceCertifier::check_csr(&self.ca, csr)
    }
    fn certify<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<DeviceCertificate, CertifierError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            (self.hook)(n).await?;
            DeviceCertifier::certify(&self.ca, csr, device).await
        })
    }
    fn sign<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<SignedDeviceCertificate, CertifierError>> {
        DeviceCertifier::sign(&self.ca, csr, device)
    }
    fn register_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        signed: &'a SignedDeviceCertificate,
    ) -> BoxFuture<'a, Result<(), CertifierError>> {
        DeviceCertifier::register_in(&self.ca, tx, signed)
    }
    fn certificate<'a>(
        &'a self,
        serial: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<CertificateStatus, CertifierError>> {
        DeviceCertifier::certificate(&self.ca, serial, device)
    }
    fn revoke<'a>(
        &'a self,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), CertifierError>> {
        DeviceCertifier::revoke(&self.ca, serial, reason)
    }
    fn revoke_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<bool, CertifierError>> {
        DeviceCertifier::revoke_in(&self.ca, tx, serial, reason)
    }
    fn valid_certificates<'a>(
        &'a self,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<Vec<String>, CertifierError>> {
        DeviceCertifier::valid_certificates(&self.ca, device)
    }
}

pub struct Env {
    pub prov: Provisioning,
    pub kms: Kms,
    pub ca: Ca,
    _db: TestDb,
    _token: TestToken,
}

pub async fn env() -> Env {
    let token = TestToken::create().unwrap();
    let cfg = token.hsm_config(2);
    let hsm = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), 2, 1000).unwrap();
    let db = test_database().await.unwrap();
    let kms = Kms::new(pool, Catalog::connect(&db.config).await.unwrap(), 1000);
    let (ca, _) = Ca::bootstrap(&kms, kms.db(), &CaConfig::default())
        .await
        .unwrap();
    let prov = Provisioning::new(kms.clone(), Arc::new(ca.clone()))
        .await
        .unwrap();
    Env {
        prov,
        kms,
        ca,
        _db: db,
        _token: token,
    }
}

pub fn op(name: &str) -> OperatorId {
    name.parse().unwrap()
}

pub fn reason(text: &str) -> Reason {
    text.parse().unwrap()
}

pub fn dev_id(n: u8) -> DeviceId {
    DeviceId::from_bytes([0x62, 0x22, 0x02, 0x00, 0x00, 0x00, 0x10, n])
}

pub fn batch(id: &str) -> BatchId {
    id.parse().unwrap()
}

pub fn manifest(rows: &[String]) -> String {
    format!(
        "# factory run\n{}\n{}\n",
        keyward_device_provisioning::MANIFEST_HEADER,
        rows.join("\n")
    )
}

pub fn devices_manifest(devs: &[&SimDevice]) -> String {
    manifest(&devs.iter().map(|d| d.manifest_row()).collect::<Vec<_>>())
}

pub async fn create_issuer(env: &Env, id: &str, family: KeyFamily) -> IssuerId {
    let id: IssuerId = id.parse().unwrap();
    env.kms.create_issuer(id.clone(), family).await.unwrap();
    id
}

/// The refusal of a decision, checking its note says so.
pub fn refused<T: std::fmt::Debug>(d: Result<T, Box<Refused>>, code: &str) -> AuditNote {
    let r = d.expect_err(&format!("expected refusal {code}"));
    assert_eq!(r.code(), code, "{}", r.error);
    assert!(r.is_client_error(), "{code} should be a client error");
    assert_eq!(r.note.outcome, Outcome::Refused { code: r.code() });
    r.note
}

pub async fn import(env: &Env, id: &str, devs: &[&SimDevice]) {
    let report = env
        .prov
        .import_batch(&batch(id), &devices_manifest(devs), &op("factory-desk"))
        .await
        .unwrap()
        .value;
    assert!(report.accepted());
}

/// Genuine-device check through the simulator.
pub async fn verify(env: &Env, dev: &SimDevice) {
    let ch = env.prov.begin_check(dev.id).await.unwrap().value;
    let sig = dev.sign_challenge(&ch.bytes);
    let done = env.prov.complete_check(dev.id, &ch.id, &sig).await.unwrap();
    assert_eq!(done.note.action, Action::CompleteCheck);
    assert_eq!(done.note.get("to"), Some("verified"));
}

/// Init package opened by the simulator, KCVs confirmed.
pub async fn initialise(env: &Env, dev: &mut SimDevice, issuer: &IssuerId) {
    let pkg = env
        .prov
        .init_package(dev.id, issuer, &op("station"))
        .await
        .unwrap()
        .value;
    let answer = dev.load_init_package(&pkg).unwrap();
    assert!(answer.accepted);
    env.prov
        .confirm_init(dev.id, issuer, &answer.kcvs)
        .await
        .unwrap();
}

pub fn application(national_id: &str, accounts: &[&str]) -> CustomerApplication {
    CustomerApplication {
        name: "Li Lei".into(),
        national_id: NationalId::new(national_id).unwrap(),
        accounts: accounts.iter().map(|a| a.parse().unwrap()).collect(),
        contact: Contact::new(ContactKind::Sms, "+8613800138000").unwrap(),
    }
}

/// A customer applied for by alice and approved by bob.
pub async fn approved_customer(env: &Env, national_id: &str, accounts: &[&str]) -> CustomerId {
    let app = env
        .prov
        .apply(application(national_id, accounts), &op("alice"))
        .await
        .unwrap()
        .value;
    env.prov
        .approve(&app.id, &op("bob"))
        .await
        .unwrap()
        .value
        .id
}

pub fn accounts(list: &[&str]) -> Vec<Account> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

pub fn bind_req(
    device: DeviceId,
    customer: &CustomerId,
    issuer: &str,
    accts: &[&str],
) -> BindRequest {
    BindRequest {
        device,
        customer: customer.clone(),
        issuer: issuer.parse().unwrap(),
        accounts: accounts(accts),
        secure_element: SecureElement::Psam,
    }
}
