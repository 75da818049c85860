//! Bulk MAC verification throughput: the raw PKCS#11 loop, the
//! same items through `Kms::verify_macs`, and `POST /admin/v1/macs/verify`
//! of a real `keyward serve` over mutual TLS, every figure printed with its
//! ratio to the raw loop of the same run.
//!
//! 1. `raw`: a tight native loop of the PKCS#11 calls one verification
//!    needs (`keyward_kms::mac::compute` on cached session keys, a key and a
//!    session per thread from the module's session pool; for CMAC-TDES
//!    `C_SignInit` + `C_Sign`), 1 and 2 threads, 64-byte messages. The
//!    baseline of a table is the better of the two.
//! 2. An installation is made in this process through the library
//!    (`bootstrap::open` + `init_opened` on a fresh SoftHSM token and a
//!    SQLite database), a TDES issuer created and a fleet of devices given
//!    working keys through the real code paths (`Kms::init_package`, the
//!    device unwrapping its TMK in software, `Kms::offer_working_keys`,
//!    `Kms::confirm_working_keys` with the device's KCVs), from many tasks.
//! 3. `keyward serve` is spawned on that database and token (this bench
//!    binary re-executed as the `keyward` CLI, as in the login bench;
//!    `KEYWARD_BIN=path` runs another binary) and driven by a load client
//!    holding the admin operator certificate, over keep-alive HTTP/1.1 on
//!    mTLS connections to the admin listener, batches of 1 … 100 000
//!    CMAC-TDES items, JSON and binary (`application/vnd.keyward.macs.v1`).
//!    Request bodies are encoded before the window; answers are decoded and
//!    every item checked `valid` (the MACs are the simulator's, computed in
//!    software from the device's own keys).
//! 4. For each fleet size (`KW_BENCH_FLEETS`, default `1000`; the fleet
//!    grows in place, so `1000,10000` adds 9 000 devices after the first
//!    table) the items of a batch are spread over the whole fleet (item `j`
//!    is device `j * 7919 mod n`), and consecutive batches start at
//!    different offsets.
//! 5. Then every algorithm (`KW_BENCH_ALGORITHMS=0` skips it): 10 000-item
//!    batches over the last TDES fleet and a 1 000-device AES fleet, kms
//!    and e2e binary and JSON, each against the raw loop of its own calls.
//!
//! Run with `cargo bench -p keyward-tests --bench mac_verify` (needs
//! SoftHSM). Knobs: `KW_BENCH_FLEETS=1000,10000,100000`, `KW_BENCH_SECS`
//! (window per row, default 3), `KW_BENCH_BATCHES=1,100,1000,10000,100000`,
//! `KW_BENCH_HSM_SESSIONS` (default 2), `KW_BENCH_BULK_NICE` (the bulk
//! workers' `hsm.bulk_nice`), `KW_BENCH_CACHE` (the server's
//! `hsm.derived_key_cache`; default 4 × the largest fleet + 4 000, so every
//! device's keys stay held). It prints figures and asserts nothing about
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::{cpu_secs, env_list, env_usize, rss_mib, spawn_serve, toml_str};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use keyward_config::Config;
use keyward_kms::Kms;
use keyward_kms::hsm::{Hsm, KeySpec, MacMechanism, ObjectId, Pkcs11Hsm, SecretKind, Usage};
use keyward_kms::mac::{self, MacKeys};
use keyward_kms::types::{DeviceId, IssuerId, Kcv, KeyFamily, KeyVersion, MacAlgorithm, Padding};
use keyward_kms::{MacItem, MacOutcome};
use keyward_server::bootstrap;
use keyward_server::edge::startup;
use keyward_server::metrics::Metrics;
use keyward_server::wire::macs as wire;
use keyward_tests::db::{TestDb, sqlite};
use keyward_tests::device::{self, Family};
use keyward_tests::softhsm::TestToken;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const ISSUER: &str = "bench-tdes";
/// Tasks making the fleet's working keys.
const SETUP_TASKS: usize = 8;
/// Item `j` of the spread is device `j * STRIDE mod n` (a prime: every
/// device is hit before one repeats, unless it divides `n`).
const STRIDE: usize = 7919;

fn msg_of(i: usize) -> Vec<u8> {
    let s = format!("0200 4000000000000123 000000010000 156 20261122 {i:010} TERM.");
    let mut m = s.into_bytes();
    m.resize(64, b' ');
    m
}

// ---- raw ---------------------------------------------------------------------

fn raw_loop(hsm: &Arc<Pkcs11Hsm>, threads: usize, alg: MacAlgorithm, window: Duration) -> f64 {
    let (kind, usage) = match alg.family() {
        KeyFamily::Tdes => (
            SecretKind::Des2,
            Usage {
                sign: true,
                ..Usage::ENCRYPT
            },
        ),
        KeyFamily::Aes => (
            SecretKind::Aes(16),
            Usage {
                sign: true,
                ..Usage::NONE
            },
        ),
    };
    // Each thread its own cached key(s), as each HSM worker checks other
    // devices' MACs.
    let keys: Vec<MacKeys> = (0..threads)
        .map(|_| MacKeys {
            tak: hsm.generate_key(&KeySpec::session(kind, usage)).unwrap(),
            k1k1: Some(hsm.generate_key(&KeySpec::session(kind, usage)).unwrap()),
        })
        .collect();
    let (padding, msg) = (padding_of(alg), msg_of(0));
    let rate = calls_per_second(threads, window, |t| {
        let (hsm, keys, msg) = (hsm.clone(), keys[t], msg.clone());
        move || {
            mac::compute(&*hsm, &keys, alg, padding, &msg).unwrap();
        }
    });
    for k in keys {
        let _ = hsm.destroy(k.tak);
        let _ = k.k1k1.map(|k| hsm.destroy(k));
    }
    rate
}

/// Runs `make(t)()` in a loop on `threads` threads for `window`; calls per
/// second over all of them.
fn calls_per_second<F: FnMut() + Send + 'static>(
    threads: usize,
    window: Duration,
    make: impl Fn(usize) -> F,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, count, mut call) = (stop.clone(), count.clone(), make(t));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    call();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The raw CMAC-TDES loop on `threads` threads, each walking `keys` (every
/// thread the whole set, from its own offset, in steps of [`STRIDE`]): the
/// same calls as [`raw_loop`], against as many different key objects as a
/// batch spread over that many devices touches. SoftHSM finds an object by
/// its handle in a tree of every object in the process, so the per-call
/// cost depends on how many objects there are and how they are visited.
fn raw_spread(
    hsm: &Arc<Pkcs11Hsm>,
    threads: usize,
    keys: &Arc<Vec<ObjectId>>,
    window: Duration,
) -> f64 {
    calls_per_second(threads, window, |t| {
        let (hsm, keys, msg) = (hsm.clone(), keys.clone(), msg_of(0));
        let mut j = t * keys.len() / threads.max(1);
        move || {
            let key = keys[j.wrapping_mul(STRIDE) % keys.len()];
            hsm.mac(key, MacMechanism::Des3Cmac, &msg).unwrap();
            j += 1;
        }
    })
}

/// The raw loop on 1 and 2 threads; the baseline is the better of the two
/// (SoftHSM does not always gain from a second thread).
fn raw_rows(hsm: &Arc<Pkcs11Hsm>, alg: MacAlgorithm, window: Duration) -> (f64, f64, f64) {
    let raw1 = raw_loop(hsm, 1, alg, window);
    let raw2 = raw_loop(hsm, 2, alg, window);
    (raw1, raw2, raw1.max(raw2))
}

fn print_raw_rows(raw1: f64, raw2: f64, base: f64) {
    let r = Row {
        items_per_s: raw1,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
        refused: 0,
        server_cores: 0.0,
        client_cores: 1.0,
    };
    print_row("raw PKCS#11 loop, 1 thread", 1, 1, &r, base, false);
    let r = Row {
        items_per_s: raw2,
        client_cores: 2.0,
        ..r
    };
    print_row("raw PKCS#11 loop, 2 threads", 1, 2, &r, base, false);
}

/// The padding the bench uses with `alg` (ISO 9797-1 method 2 for the
/// CBC-MACs, none for the others).
fn padding_of(alg: MacAlgorithm) -> Option<Padding> {
    match alg {
        MacAlgorithm::Iso9797M1Tdes | MacAlgorithm::Iso9797M3 => {
            Some(Padding::from_number(2).unwrap())
        }
        _ => None,
    }
}

/// The device's MAC of `msg` under `tak`, computed in software (the
/// simulator's code, never the server's).
fn device_mac(alg: MacAlgorithm, tak: &[u8; 16], msg: &[u8]) -> Vec<u8> {
    match alg {
        MacAlgorithm::Iso9797M1Tdes => device::mac_m1_tdes(tak, msg, 2).to_vec(),
        MacAlgorithm::Iso9797M3 => device::mac_x919(tak, msg, 2).to_vec(),
        MacAlgorithm::CmacTdes => device::cmac_tdes(tak, msg).to_vec(),
        MacAlgorithm::CmacAes => device::cmac_aes(tak, msg).to_vec(),
        MacAlgorithm::CupEcb => device::mac_cup_ecb(tak, msg).to_vec(),
    }
}

// ---- the fleet ---------------------------------------------------------------

/// One device of the fleet as the bench knows it: its working-key version
/// and its TAK (the device's own copy, for its MACs).
#[derive(Clone)]
struct Dev {
    id: DeviceId,
    version: KeyVersion,
    tak: [u8; 16],
}

/// Device `i` of a fleet; `fleet` keeps the ids of two fleets apart.
fn dev_id(fleet: u8, i: usize) -> DeviceId {
    let n = u32::try_from(i).unwrap().to_be_bytes();
    DeviceId::from_bytes([0x62, 0x22, 0xbf, fleet, n[0], n[1], n[2], n[3]])
}

/// Retries `f` (a busy SQLite write lock is an error after its timeout).
async fn retried<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = keyward_kms::Result<T>>,
{
    for attempt in 1.. {
        match f().await {
            Ok(v) => return v,
            Err(e) if attempt < 20 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    unreachable!()
}

/// Device `i`: its TMK (init package, unwrapped in software as the device
/// would), then working keys offered and confirmed with its KCVs.
async fn make_device(kms: &Kms, issuer: &IssuerId, family: Family, i: usize) -> Dev {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let device = dev_id(matches!(family, Family::Aes) as u8, i);
    let secret = p256::SecretKey::random(&mut rand::thread_rng());
    let point = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let pkg = retried("init package", || {
        kms.init_package(
            issuer,
            device,
            keyward_kms::hsm::PublicKey::P256(point.clone()),
        )
    })
    .await;
    let eph = p256::PublicKey::from_sec1_bytes(pkg.ephemeral_point.as_ref().unwrap()).unwrap();
    let kek: [u8; 32] = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine())
        .raw_secret_bytes()
        .as_slice()
        .try_into()
        .unwrap();
    let tmk: [u8; 16] = device::aes_kw_unwrap(&kek, &pkg.keys[0].wrapped)
        .unwrap()
        .try_into()
        .unwrap();
    let offer = retried("offer", || kms.offer_working_keys(issuer, device)).await;
    let kcvs: Vec<_> = offer
        .keys
        .iter()
        .map(|k| {
            let key = device::diversify(family, &tmk, &k.r);
            (
                k.role,
                Kcv {
                    method: k.kcv.method,
                    value: device::kcv(family, &key),
                },
            )
        })
        .collect();
    retried("confirm", || {
        kms.confirm_working_keys(issuer, device, offer.version, &kcvs)
    })
    .await;
    Dev {
        id: device,
        version: offer.version,
        tak: device::diversify(family, &tmk, &offer.keys[1].r),
    }
}

/// Devices `from..to`, `SETUP_TASKS` at a time.
async fn grow_fleet(kms: &Kms, issuer: &IssuerId, family: Family, fleet: &mut Vec<Dev>, to: usize) {
    let from = fleet.len();
    let next = Arc::new(AtomicU64::new(from as u64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..SETUP_TASKS {
        let (kms, issuer, next) = (kms.clone(), issuer.clone(), next.clone());
        set.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= to {
                    break;
                }
                made.push((i, make_device(&kms, &issuer, family, i).await));
            }
            made
        });
    }
    let mut made = Vec::new();
    while let Some(r) = set.join_next().await {
        made.extend(r.unwrap());
    }
    made.sort_by_key(|(i, _)| *i);
    fleet.extend(made.into_iter().map(|(_, d)| d));
}

/// Item `j` of the spread over the fleet, as kms takes it.
fn mac_item(fleet: &[Dev], issuer: &IssuerId, alg: MacAlgorithm, j: usize) -> MacItem {
    let i = (j.wrapping_mul(STRIDE)) % fleet.len();
    let d = &fleet[i];
    let message = msg_of(i);
    MacItem {
        issuer: issuer.clone(),
        device: d.id,
        version: d.version,
        algorithm: alg,
        padding: padding_of(alg),
        mac: device_mac(alg, &d.tak, &message),
        message,
    }
}

/// The batch of `len` items starting at item `start` of the spread.
fn batch(
    fleet: &[Dev],
    issuer: &IssuerId,
    alg: MacAlgorithm,
    start: usize,
    len: usize,
) -> Vec<MacItem> {
    (start..start + len)
        .map(|j| mac_item(fleet, issuer, alg, j))
        .collect()
}

fn bodies_of(batches: &[Vec<MacItem>], binary: bool) -> Vec<Bytes> {
    batches
        .iter()
        .map(|it| {
            if binary {
                binary_body(it)
            } else {
                json_body(it)
            }
        })
        .collect()
}

fn json_body(items: &[MacItem]) -> Bytes {
    let req = wire::VerifyRequest {
        items: items
            .iter()
            .map(|it| wire::Item {
                device_id: hex::encode(it.device.bytes()),
                issuer_id: it.issuer.to_string(),
                key_version: it.version.0,
                algorithm: it.algorithm.as_str().to_owned(),
                padding: it.padding.map(|p| p.number()),
                message: B64.encode(&it.message),
                mac: if it.algorithm == MacAlgorithm::CupEcb {
                    String::from_utf8(it.mac.clone()).unwrap()
                } else {
                    B64.encode(&it.mac)
                },
            })
            .collect(),
    };
    Bytes::from(serde_json::to_vec(&req).unwrap())
}

fn binary_body(items: &[MacItem]) -> Bytes {
    let items: Vec<wire::BinaryItem> = items
        .iter()
        .map(|it| wire::BinaryItem {
            device_id: it.device.bytes(),
            issuer_id: it.issuer.to_string().into_bytes(),
            key_version: it.version.0,
            algorithm: wire::code_of_algorithm(it.algorithm),
            padding: it.padding.map_or(0, |p| p.number()),
            message: it.message.clone(),
            mac: it.mac.clone(),
        })
        .collect();
    Bytes::from(wire::encode_request(&items).unwrap())
}

// ---- the server --------------------------------------------------------------

fn write_config(
    dir: &Path,
    token: &TestToken,
    db: &TestDb,
    sessions: usize,
    cache: usize,
) -> PathBuf {
    let hsm = token.hsm_config(sessions);
    let config = dir.join("keyward.toml");
    let text = format!(
        r#"data_dir = {data}

[hsm]
module = {module}
token_label = {label}
pin_file = {pin}
sessions = {sessions}
derived_key_cache = {cache}
{bulk_nice}
[database]
url = {url}

[server]
public_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_names = ["localhost", "127.0.0.1"]
"#,
        data = toml_str(&dir.join("data").display().to_string()),
        module = toml_str(&hsm.module.display().to_string()),
        label = toml_str(&hsm.token_label),
        pin = toml_str(&hsm.pin_file.as_ref().unwrap().display().to_string()),
        url = toml_str(&db.config.url),
        bulk_nice = common::bulk_nice_line(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

// ---- the load client ---------------------------------------------------------

/// An mTLS client of the admin listener with the admin operator's
/// certificate; each worker keeps one keep-alive connection.
#[derive(Clone)]
struct Client {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    fn new(admin: &str, operators: &Path) -> Self {
        let read = |f: &str| std::fs::read(operators.join(f)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read("ca.pem")) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read("admin.pem"))
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&read("admin.key")).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        let (host, port) = admin.rsplit_once(':').unwrap();
        Self {
            host: host.to_owned(),
            port: port.parse().unwrap(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    async fn connect(&self) -> Sender {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from(self.host.clone()).unwrap();
        let tls = self.connector.connect(name, tcp).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// One bulk request; checks that all `n` items came back `valid`.
    /// `false`: a 503 (not performed: e.g. the audit record not written in
    /// time under SQLite's write lock), which the caller retries.
    async fn verify(&self, sender: &mut Sender, binary: bool, body: Bytes, n: usize) -> bool {
        sender.ready().await.unwrap();
        let ct = if binary {
            wire::BINARY
        } else {
            "application/json"
        };
        let req = hyper::Request::post("/admin/v1/macs/verify")
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, ct)
            .body(Full::new(body))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let raw = resp.into_body().collect().await.unwrap().to_bytes();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return false;
        }
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&raw));
        if binary {
            let v = wire::decode_answer(&raw).unwrap();
            assert_eq!(v.len(), n);
            assert!(
                v.iter().all(|v| *v == wire::Verdict::Valid),
                "not all valid"
            );
        } else {
            let a: wire::VerifyAnswer = serde_json::from_slice(&raw).unwrap();
            assert_eq!(a.summary.valid, n as u64, "{:?}", a.summary);
        }
        true
    }
}

/// What one row measured.
struct Row {
    items_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
    /// Requests answered 503 (retried; not in the rate).
    refused: usize,
    server_cores: f64,
    client_cores: f64,
}

fn percentile(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    if lat.is_empty() {
        return f64::NAN;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1000.0
}

/// `conc` workers, each with its own connection, send the pre-encoded
/// `bodies` (of `n` items each) back to back: one un-timed request each,
/// then all start together and run until the window is over and each has
/// finished at least one timed request.
async fn e2e_row(
    client: &Client,
    server_pid: u32,
    conc: usize,
    binary: bool,
    bodies: Arc<Vec<Bytes>>,
    n: usize,
    window: Duration,
) -> Row {
    let barrier = Arc::new(tokio::sync::Barrier::new(conc + 1));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conc {
        let (client, bodies, barrier) = (client.clone(), bodies.clone(), barrier.clone());
        set.spawn(async move {
            let mut sender = client.connect().await;
            let mut k = w;
            while !client
                .verify(&mut sender, binary, bodies[k % bodies.len()].clone(), n)
                .await
            {}
            barrier.wait().await;
            let t0 = Instant::now();
            let mut lat = Vec::new();
            let mut refused = 0;
            while lat.is_empty() || t0.elapsed() < window {
                k += conc;
                let s = Instant::now();
                if client
                    .verify(&mut sender, binary, bodies[k % bodies.len()].clone(), n)
                    .await
                {
                    lat.push(s.elapsed());
                } else {
                    refused += 1;
                }
            }
            (lat, refused, Instant::now())
        });
    }
    barrier.wait().await;
    let t0 = Instant::now();
    let (s0, c0) = (cpu_secs(server_pid), cpu_secs(std::process::id()));
    let mut lat = Vec::new();
    let mut refused = 0;
    let mut end = t0;
    while let Some(r) = set.join_next().await {
        let (l, f, e) = r.unwrap();
        lat.extend(l);
        refused += f;
        end = end.max(e);
    }
    let secs = (end - t0).as_secs_f64();
    let (s1, c1) = (cpu_secs(server_pid), cpu_secs(std::process::id()));
    Row {
        items_per_s: (lat.len() * n) as f64 / secs,
        p50_ms: percentile(&mut lat, 0.50),
        p99_ms: percentile(&mut lat, 0.99),
        requests: lat.len(),
        refused,
        server_cores: (s1 - s0) / secs,
        client_cores: (c1 - c0) / secs,
    }
}

/// `Kms::verify_macs` in this process on the rotating batches, `conc`
/// callers.
async fn kms_row(kms: &Kms, batches: Arc<Vec<Vec<MacItem>>>, conc: usize, window: Duration) -> Row {
    let c0 = cpu_secs(std::process::id());
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conc {
        let (kms, batches) = (kms.clone(), batches.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut k = w;
            while lat.is_empty() || t0.elapsed() < window {
                let b = batches[k % batches.len()].clone();
                let n = b.len();
                let s = Instant::now();
                let out = kms.verify_macs(b).await.unwrap();
                lat.push(s.elapsed());
                assert_eq!(out.len(), n);
                assert!(out.iter().all(|o| *o == MacOutcome::Valid), "not all valid");
                k += conc;
            }
            (lat, Instant::now())
        });
    }
    let mut lat = Vec::new();
    let mut end = t0;
    while let Some(r) = set.join_next().await {
        let (l, e) = r.unwrap();
        lat.extend(l);
        end = end.max(e);
    }
    let secs = (end - t0).as_secs_f64();
    let n = batches[0].len();
    Row {
        items_per_s: (lat.len() * n) as f64 / secs,
        p50_ms: percentile(&mut lat, 0.50),
        p99_ms: percentile(&mut lat, 0.99),
        requests: lat.len(),
        refused: 0,
        server_cores: 0.0,
        client_cores: (cpu_secs(std::process::id()) - c0) / secs,
    }
}

/// Every batch once, one after another: what the first sight of these
/// devices costs (their keys derived and their records read), before the
/// steady-state rows.
async fn first_pass_kms(kms: &Kms, batches: &[Vec<MacItem>]) -> Row {
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for b in batches {
        let s = Instant::now();
        let out = kms.verify_macs(b.clone()).await.unwrap();
        assert!(out.iter().all(|o| *o == MacOutcome::Valid), "not all valid");
        lat.push(s.elapsed());
    }
    pass_row(lat, batches[0].len(), t0)
}

/// [`first_pass_kms`] through the server, one connection.
async fn first_pass_e2e(client: &Client, binary: bool, bodies: &[Bytes], n: usize) -> Row {
    let mut sender = client.connect().await;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for body in bodies {
        let s = Instant::now();
        while !client.verify(&mut sender, binary, body.clone(), n).await {}
        lat.push(s.elapsed());
    }
    pass_row(lat, n, t0)
}

fn pass_row(mut lat: Vec<Duration>, n: usize, t0: Instant) -> Row {
    let secs = t0.elapsed().as_secs_f64();
    Row {
        items_per_s: (lat.len() * n) as f64 / secs,
        p50_ms: percentile(&mut lat, 0.50),
        p99_ms: percentile(&mut lat, 0.99),
        requests: lat.len(),
        refused: 0,
        server_cores: 0.0,
        client_cores: f64::NAN,
    }
}

fn header() {
    println!(
        "{:<44} {:>6} {:>4} {:>10} {:>6} {:>8} {:>8} {:>8} {:>5} {:>4} {:>6} {:>6}",
        "what",
        "batch",
        "conc",
        "items/s",
        "vs raw",
        "µs/item",
        "p50 ms",
        "p99 ms",
        "reqs",
        "503",
        "server",
        "client"
    );
}

fn print_row(what: &str, batch: usize, conc: usize, r: &Row, raw: f64, server: bool) {
    let srv = if server {
        format!("{:.2}", r.server_cores)
    } else {
        "-".into()
    };
    println!(
        "{:<44} {:>6} {:>4} {:>10.0} {:>5.0}% {:>8.1} {:>8.2} {:>8.2} {:>5} {:>4} {:>6} {:>6.2}",
        what,
        batch,
        conc,
        r.items_per_s,
        r.items_per_s / raw * 100.0,
        1e6 / r.items_per_s,
        r.p50_ms,
        r.p99_ms,
        r.requests,
        r.refused,
        srv,
        r.client_cores
    );
}

// ---- main --------------------------------------------------------------------

fn main() -> ExitCode {
    if let Some(code) = common::keyward_if_reexecuted() {
        return code;
    }
    let fleets = env_list("KW_BENCH_FLEETS", "1000");
    let batches = env_list("KW_BENCH_BATCHES", "1,100,1000,10000,100000");
    let window = Duration::from_secs(env_usize("KW_BENCH_SECS", 3) as u64);
    let sessions = env_usize("KW_BENCH_HSM_SESSIONS", 2);
    // Derived keys held: the whole fleet's by default, so the cost per item
    // stays flat as it grows (docs/performance.md): per device its TMK and
    // its TAK for CMAC (sign), plus, for the table of every algorithm, the
    // TAK for the CBC-MACs (encrypt) and K1K1, and the AES fleet's.
    let cache = env_usize(
        "KW_BENCH_CACHE",
        fleets.iter().copied().max().unwrap_or(1000) * 4 + 4000,
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // The token must exist before the PKCS#11 module is first loaded.
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "== Bulk MAC verification, CMAC-TDES, 64-byte messages, SoftHSM, SQLite, {sessions} HSM \
         sessions, {cores} cores, window {}s per row, derived_key_cache {cache}",
        window.as_secs()
    );

    // 1. The raw loop.
    let cfg = token.hsm_config(sessions);
    let hsm = Arc::new(Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap());
    let (raw1, raw2, _) = raw_rows(&hsm, MacAlgorithm::CmacTdes, window);
    println!(
        "raw PKCS#11 loop (C_SignInit + C_Sign, a cached DES2 key per thread): 1 thread \
         {raw1:.0}/s ({:.1} µs), 2 threads {raw2:.0}/s ({:.1} µs); ratios below are to the \
         better of the two, measured again before each table",
        1e6 / raw1,
        1e6 / raw2
    );

    // The raw loop over many keys (KW_BENCH_RAW_KEYS, default 1000,40000:
    // the devices a 10 000-item table of this bench touches).
    let spreads: Vec<usize> = env_list("KW_BENCH_RAW_KEYS", "1000,40000")
        .into_iter()
        .filter(|n| *n > 0)
        .collect();
    if !spreads.is_empty() {
        let sign = KeySpec::session(
            SecretKind::Des2,
            Usage {
                sign: true,
                ..Usage::NONE
            },
        );
        let mut keys = Vec::new();
        for &n in &spreads {
            while keys.len() < n {
                keys.push(hsm.generate_key(&sign).unwrap());
            }
            let set = Arc::new(keys[..n].to_vec());
            let one = raw_spread(&hsm, 1, &set, window);
            let two = raw_spread(&hsm, 2, &set, window);
            println!(
                "raw PKCS#11 loop over {n} keys (CMAC-TDES, a different key each call): 1 thread \
                 {one:.0}/s ({:.1} µs), 2 threads {two:.0}/s ({:.1} µs)",
                1e6 / one,
                1e6 / two
            );
        }
        for k in keys {
            let _ = hsm.destroy(k);
        }
    }

    let db = sqlite().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("keyward-macbench-")
        .tempdir()
        .unwrap();
    let config_path = write_config(dir.path(), &token, &db, sessions, cache);
    let data = dir.path().join("data");

    rt.block_on(async {
        // 2. The installation, in process.
        let mut config = Config::load(&config_path).unwrap();
        config.database.acquire_timeout_ms = keyward_tests::db::TEST_ACQUIRE_TIMEOUT_MS;
        let metrics = Metrics::new().unwrap();
        let opened = bootstrap::open(&config, Some(metrics.clone()))
            .await
            .unwrap();
        bootstrap::init_opened(&config, &opened).await.unwrap();
        let state = startup::state_from(config, opened, metrics).await.unwrap();
        let kms = state.kms.clone();
        let issuer: IssuerId = ISSUER.parse().unwrap();
        kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
            .await
            .unwrap();

        // 3. The server.
        let server = spawn_serve(&config_path, &dir.path().join("serve.log"), &[]);
        let server_pid = server.child.id();
        let client = Client::new(&server.admin, &data.join("operators"));

        let mut fleet: Vec<Dev> = Vec::new();
        for &n in &fleets {
            let t = Instant::now();
            let before = fleet.len();
            grow_fleet(&kms, &issuer, Family::Tdes, &mut fleet, n).await;
            let secs = t.elapsed().as_secs_f64();
            println!();
            println!(
                "-- fleet of {n} devices ({} made in {secs:.1}s, {:.0}/s from {SETUP_TASKS} \
                 tasks: init package + offer + confirm; not timed below)",
                n - before,
                (n - before) as f64 / secs
            );
            header();
            let (raw1, raw2, raw) = raw_rows(&hsm, MacAlgorithm::CmacTdes, window);
            print_raw_rows(raw1, raw2, raw);
            let mut start = 0usize;
            for &b in &batches {
                // Enough bodies to walk the fleet, at most 64 (4 for 10 000
                // items, 1 for 100 000: memory, and the devices held).
                let most = match b {
                    100_000.. => 1,
                    10_000.. => 4,
                    _ => 64,
                };
                let count = n.div_ceil(b).clamp(1, most);
                let items: Vec<Vec<MacItem>> = (0..count)
                    .map(|k| batch(&fleet, &issuer, MacAlgorithm::CmacTdes, start + k * b, b))
                    .collect();
                start += count * b;
                if b == 10_000 || (b == *batches.iter().max().unwrap() && b < 10_000) {
                    let r = first_pass_kms(&kms, &items).await;
                    print_row("kms verify_macs, first pass", b, 1, &r, raw, false);
                    let all = Arc::new(items.clone());
                    let r = kms_row(&kms, all.clone(), 1, window).await;
                    print_row("kms verify_macs, 1 caller", b, 1, &r, raw, false);
                    let r = kms_row(&kms, all, 2, window).await;
                    print_row("kms verify_macs, 2 callers", b, 2, &r, raw, false);
                }
                let concs: &[usize] = match b {
                    0..=9 => &[16],
                    10..=999 => &[4],
                    1_000..=9_999 => &[2],
                    _ => &[1, 2],
                };
                for binary in [true, false] {
                    let bodies = Arc::new(bodies_of(&items, binary));
                    if binary && b >= 1_000 {
                        let r = first_pass_e2e(&client, binary, &bodies, b).await;
                        print_row("e2e mTLS bulk, binary, first pass", b, 1, &r, raw, false);
                    }
                    for &conc in concs {
                        let r =
                            e2e_row(&client, server_pid, conc, binary, bodies.clone(), b, window)
                                .await;
                        let what =
                            format!("e2e mTLS bulk, {}", if binary { "binary" } else { "JSON" });
                        print_row(&what, b, conc, &r, raw, true);
                    }
                }
            }
            println!(
                "(fleet {n}: keyward serve resident memory {:.0} MiB, bench process {:.0} MiB)",
                rss_mib(server_pid),
                rss_mib(std::process::id())
            );
        }

        // 5. Every algorithm, 10 000-item batches over the last fleet (an
        // AES issuer and fleet of 1 000 for CMAC-AES), each against the raw
        // loop of its own PKCS#11 calls.
        if !env_list("KW_BENCH_ALGORITHMS", "1").contains(&0) {
            let aes: IssuerId = "bench-aes".parse().unwrap();
            kms.create_issuer(aes.clone(), KeyFamily::Aes).await.unwrap();
            let mut aes_fleet = Vec::new();
            grow_fleet(&kms, &aes, Family::Aes, &mut aes_fleet, 1000).await;
            println!();
            println!(
                "-- every algorithm: 10 000-item batches, 64-byte messages (ISO 9797-1 padding \
                 method 2 for the CBC-MACs), over {} TDES devices / 1000 AES devices; vs raw: \
                 the better raw loop of that algorithm's own PKCS#11 calls",
                fleet.len()
            );
            header();
            for alg in MacAlgorithm::ALL {
                let (set, who) = match alg.family() {
                    KeyFamily::Tdes => (&fleet, &issuer),
                    KeyFamily::Aes => (&aes_fleet, &aes),
                };
                let (raw1, raw2, raw) = raw_rows(&hsm, alg, window);
                let name = alg.as_str();
                for (threads, v) in [(1, raw1), (2, raw2)] {
                    let r = Row {
                        items_per_s: v,
                        p50_ms: f64::NAN,
                        p99_ms: f64::NAN,
                        requests: 0,
                        refused: 0,
                        server_cores: 0.0,
                        client_cores: threads as f64,
                    };
                    print_row(&format!("{name}: raw, {threads} thread(s)"), 1, threads, &r, raw, false);
                }
                let items: Vec<Vec<MacItem>> = (0..4)
                    .map(|k| batch(set, who, alg, k * 10_000, 10_000))
                    .collect();
                // Steady state: the first passes (keys of this usage derived)
                // are not shown here.
                first_pass_kms(&kms, &items).await;
                let r = kms_row(&kms, Arc::new(items.clone()), 2, window).await;
                print_row(&format!("{name}: kms verify_macs"), 10_000, 2, &r, raw, false);
                for binary in [true, false] {
                    let bodies = Arc::new(bodies_of(&items, binary));
                    if binary {
                        first_pass_e2e(&client, binary, &bodies, 10_000).await;
                    }
                    let r = e2e_row(&client, server_pid, 2, binary, bodies, 10_000, window).await;
                    let enc = if binary { "binary" } else { "JSON" };
                    print_row(&format!("{name}: e2e mTLS, {enc}"), 10_000, 2, &r, raw, true);
                }
            }
        }
        println!();
        println!(
            "(vs raw: items/s over the table's raw baseline, the better of 1 and 2 threads; \
             µs/item: 1/items/s; \
             503: requests refused as not performed, retried, not in the rate; server, client: CPU cores used by `keyward serve` and by this process — load client \
             or in-process kms — in the window)"
        );
        drop(server);
        drop(state);
    });
    drop(rt);
    drop(hsm);
    bootstrap::close_hsm();
    drop(db);
    drop(token);
    ExitCode::SUCCESS
}
