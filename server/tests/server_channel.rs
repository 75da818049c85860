//! The card-to-server secure channel end to end (docs/protocol.md §14):
//! `kwsim channel` is the card (D2) behind a terminal (D1, its own mutual
//! TLS) talking to the real `keyward serve` over real TLS: the handshake, a
//! carried ping that the server answers as the card, a route the channel
//! does not carry, a carried login (start, finish, first key update) on one
//! replica, the transaction MAC, a key update and the close on a second
//! replica (another `keyward serve` on the same database and token), a
//! record after the close, and the opening's ticket resuming on the second
//! replica (no RSA operation there) with a ping carried in the new
//! channel; then a card certificate that is not the card's (a look-alike
//! under another CA, another device's) refused. The first run is the ECDHE
//! mode (kwsim's default, the server's preference); the same card then
//! opens in RSA transport; the whole again with PKCS#1 v1.5 key transport.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Output;

use common::station::{D1, D2, Station};
use common::{Options, Server, sample};
use serde_json::Value;

/// `kwsim channel D2 --terminal D1 …` with the card's certificate chain
/// `card` to the public listener `public`: its exit and lines.
fn channel(st: &Station<'_>, public: &str, card: &Path, args: &[&str]) -> (Output, Vec<Value>) {
    let dir = st.s.dir.path();
    let terminal = dir.join("terminal.pem");
    std::fs::write(&terminal, st.chain(D1)).unwrap();
    let server = format!("https://{public}");
    let ca = st.s.ca_pem();
    let mut all = vec!["channel", D2, "--issuer", "bank-a", "--server", &server];
    all.extend([
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        card.to_str().unwrap(),
    ]);
    all.extend([
        "--terminal",
        D1,
        "--terminal-cert",
        terminal.to_str().unwrap(),
    ]);
    all.extend_from_slice(args);
    let out = st.kwsim(&all);
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, lines)
}

/// The line of `step` (the first one).
fn step<'v>(lines: &'v [Value], name: &str) -> &'v Value {
    lines
        .iter()
        .find(|l| l["step"] == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:?}"))
}

/// The card's own key and certificate serial, certified by another CA.
fn lookalike(st: &Station<'_>, card_pem: &str) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
    };
    let (_, real) = x509_parser::pem::parse_x509_pem(card_pem.as_bytes()).unwrap();
    let real = real.parse_x509().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &st.device(D2).private_key_pkcs8().unwrap().as_slice().into(),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, D2);
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 5]), D2);
    p.serial_number = Some(SerialNumber::from_slice(real.raw_serial()));
    p.signed_by(&key, &other).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_card_behind_a_terminal_logs_in_and_pays_through_the_channel_on_two_replicas() {
    two_replicas(Options::default()).await;
}

/// The same run with `channel.padding = "pkcs1v15"` on both replicas: the
/// card encrypts its pre-master with PKCS#1 v1.5 (the ServerHello's byte
/// `03`), and the server logged at start what its module does with bad
/// padding.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_with_pkcs1_v15_key_transport() {
    let s = two_replicas(Options {
        extra: "[channel]\npadding = \"pkcs1v15\"\n".into(),
        ..Options::default()
    })
    .await;
    let log = s.log();
    assert!(
        log.contains("the module answers bad PKCS#1 v1.5 padding with"),
        "{log}"
    );
}

async fn two_replicas(opts: Options) -> Server {
    let s = Server::started_with(opts).await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let card = s.dir.path().join("card.pem");
    let card_pem = st.chain(D2);
    std::fs::write(&card, &card_pem).unwrap();
    let replica = s.replica("b");

    let (out, lines) = channel(
        &st,
        &s.public,
        &card,
        &[
            "--transaction",
            "pay 100.00 CNY to 6222020200112233",
            "--continue-on",
            &format!("https://{}", replica.public),
            "--carry",
            "/v1/channel/hello",
            "--after-close",
            "--resume-on",
            &format!("https://{}", replica.public),
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let hs = step(&lines, "handshake");
    assert_eq!(hs["status"], 200, "{lines:?}");
    assert_eq!(hs["channel_id"].as_str().unwrap().len(), 32);
    assert_eq!(hs["mode"], "ecdhe", "{lines:?}");
    // The server sees the card, not the terminal relaying it.
    let ping = step(&lines, "ping");
    assert_eq!(
        (ping["kind"].as_str(), ping["device_id"].as_str()),
        (Some("device"), Some(D2))
    );
    let carry = step(&lines, "carry");
    assert_eq!(
        (carry["status"].as_i64(), carry["code"].as_str()),
        (Some(403), Some("channel_not_carried")),
        "{lines:?}"
    );
    let login = step(&lines, "login");
    assert_eq!(login["status"], 200, "{lines:?}");
    assert_eq!(
        login["offered_version"], 1,
        "the first key update: {lines:?}"
    );
    let tx = step(&lines, "transaction");
    assert_eq!(
        (tx["status"].as_i64(), tx["result"].as_str()),
        (Some(200), Some("valid"))
    );
    assert_eq!(step(&lines, "key_update")["generation"], 1);
    let pings: Vec<_> = lines.iter().filter(|l| l["step"] == "ping").collect();
    assert_eq!(pings.len(), 2);
    assert_eq!(
        pings[1]["status"], 200,
        "a ping under the next key: {lines:?}"
    );
    assert_eq!(step(&lines, "close")["closed"], true);
    let after = step(&lines, "after_close");
    assert_eq!(
        (after["status"].as_i64(), after["code"].as_str()),
        (Some(403), Some("channel_closed")),
        "{lines:?}"
    );

    // The opening's ticket resumes on the second replica (which never
    // saw the key exchange): a new channel that carries a ping as the card.
    let resumed = step(&lines, "resume");
    assert_eq!(resumed["status"], 200, "{lines:?}");
    assert_ne!(resumed["channel_id"], hs["channel_id"]);
    let ping = step(&lines, "resumed_ping");
    assert_eq!(
        (ping["status"].as_i64(), ping["device_id"].as_str()),
        (Some(200), Some(D2)),
        "{lines:?}"
    );

    // The login ran on the first replica, the transaction, key update and
    // close on the second.
    let first = s.metrics();
    let second = s.curl(&replica.admin, "/metrics", &[]).body;
    let public = |m: &str, route: &str| {
        sample(
            m,
            &format!("keyward_http_requests_total{{listener=\"public\",route=\"{route}\",status=\"200\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(public(&first, "/v1/login/finish"), 1.0, "{first}");
    assert_eq!(public(&second, "/v1/login/finish"), 0.0);
    assert_eq!(public(&second, "/v1/transactions"), 1.0, "{second}");
    assert_eq!(public(&first, "/v1/transactions"), 0.0);
    let records = |m: &str, outcome: &str| {
        sample(
            m,
            &format!("keyward_channel_records_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(records(&second, "key_update"), 1.0);
    assert_eq!(records(&second, "close"), 1.0);
    assert_eq!(
        records(&second, "refused"),
        1.0,
        "the record after the close"
    );
    assert_eq!(records(&first, "data") + records(&second, "data"), 7.0);
    let handshakes = |m: &str, outcome: &str| {
        sample(
            m,
            &format!("keyward_channel_handshakes_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (handshakes(&first, "opened"), handshakes(&first, "resumed")),
        (1.0, 0.0)
    );
    assert_eq!(
        (
            handshakes(&second, "opened"),
            handshakes(&second, "resumed")
        ),
        (0.0, 1.0)
    );
    // The resumption took no RSA operation: the second replica never
    // unwrapped a pre-master.
    let unwraps = |m: &str| {
        sample(
            m,
            "keyward_hsm_operation_duration_seconds_count{operation=\"channel_unwrap_premaster\",outcome=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    assert_eq!((unwraps(&first), unwraps(&second)), (1.0, 0.0));

    // The same card in RSA transport (what a card without ECDHE offers),
    // on the second replica.
    let (out, lines) = channel(
        &st,
        &replica.public,
        &card,
        &["--mode", "rsa", "--no-login"],
    );
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    assert_eq!(step(&lines, "handshake")["mode"], "rsa", "{lines:?}");
    assert_eq!(step(&lines, "ping")["status"], 200, "{lines:?}");
    let modes = |m: &str, mode: &str| {
        sample(
            m,
            &format!("keyward_channel_handshake_modes_total{{mode=\"{mode}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    let second = s.curl(&replica.admin, "/metrics", &[]).body;
    assert_eq!(modes(&first, "ecdhe-p256"), 1.0, "{first}");
    assert_eq!(modes(&first, "rsa-transport"), 0.0);
    assert_eq!(modes(&second, "rsa-transport"), 1.0, "{second}");
    assert_eq!(modes(&second, "ecdhe-p256"), 0.0);

    // Not the card's certificate: a look-alike of it under another CA, and
    // the terminal's own. One refusal, the same bytes for both.
    let forged = s.dir.path().join("lookalike.pem");
    std::fs::write(&forged, lookalike(&st, &card_pem)).unwrap();
    let other = s.dir.path().join("other.pem");
    std::fs::write(&other, st.chain(D1)).unwrap();
    let mut refusals = Vec::new();
    for cert in [&forged, &other] {
        let (out, lines) = channel(&st, &s.public, cert, &["--no-login"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let hs = step(&lines, "handshake").clone();
        assert_eq!(
            (hs["status"].as_i64(), hs["code"].as_str()),
            (Some(403), Some("channel_refused")),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 1, "nothing after a refused handshake");
        refusals.push(hs);
    }
    assert_eq!(refusals[0], refusals[1]);
    let m = s.metrics();
    assert_eq!(
        sample(&m, "keyward_channel_handshakes_total{outcome=\"refused\"}"),
        Some(2.0)
    );
    s
}
