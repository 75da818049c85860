//! The card-to-server secure channel on the public router (docs/protocol.md
//! §14), driven by the card's side in software (`keyward_tests::channel`):
//! a whole handshake with one carried ping and a close; one refusal for a
//! bad signature, a look-alike certificate from another CA and a garbage
//! pre-master; a replayed or altered record closes the channel; the key
//! exchange and the records taken by a second replica on the same database
//! and token; a login and a transaction carried for a card behind another
//! terminal, run as the card; a record raced to two replicas runs once.

use axum::Router;
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_config::Config;
use keyward_protocol::channel::{self, CardKeyExchange};
use keyward_server::edge::identity::ClientIdentity;
use keyward_server::edge::startup;
use keyward_server::metrics::Metrics;
use keyward_server::{bootstrap, public_app};
use keyward_tests::channel::{AwaitFinished, CardHello, Channel, Received};
use keyward_tests::simulator::SimDevice;
use rand::RngCore;
use serde_json::{Value, json};

use keyward_server::wire::channel::{Carried, CarriedAnswer};
use keyward_tests::terminal::{self, Caller, LoginOptions, Reply};

use crate::harness::{Answer, App, call, der_of_pem};
use crate::login::issued;

const PING: &[u8] = br#"{"method":"GET","path":"/v1/ping"}"#;

/// A carried answer: the route's status and body.
fn answer(down: &[u8], ch: &mut Channel) -> CarriedAnswer {
    let Received::Data(plain) = ch.open(down).unwrap() else {
        panic!("not a data record");
    };
    serde_json::from_slice(&plain).unwrap()
}

/// An issued card (it is also the terminal relaying, by its device
/// certificate) and its certificate's DER.
struct Card {
    d: SimDevice,
    who: ClientIdentity,
    cert: Vec<u8>,
}

async fn card(app: &App, n: u8) -> Card {
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
    let (d, who) = issued(app, n, &["bank-a"]).await;
    let serial = app
        .state
        .provisioning
        .device(d.id)
        .await
        .unwrap()
        .cert_serial
        .unwrap()
        .parse()
        .unwrap();
    let rec = app.state.ca.get(&serial).await.unwrap().unwrap();
    Card {
        d,
        who,
        cert: der_of_pem(&rec.pem),
    }
}

async fn post(router: &Router, who: &ClientIdentity, path: &str, body: Value) -> Answer {
    call(router, who, Method::POST, path, Some(body)).await
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A ClientHello answered: the card, the channel id and the ServerHello.
async fn say_hello(router: &Router, c: &Card) -> (CardHello, String, Vec<u8>) {
    let hello = CardHello::new(c.d.id, random());
    let a = post(
        router,
        &c.who,
        "/v1/channel/hello",
        json!({"client_hello": B64.encode(hello.client_hello())}),
    )
    .await;
    let b = a.expect(StatusCode::OK);
    let id = b["channel_id"].as_str().unwrap().to_owned();
    let sh = B64.decode(b["server_hello"].as_str().unwrap()).unwrap();
    (hello, id, sh)
}

async fn key_exchange(router: &Router, c: &Card, id: &str, cke: &[u8]) -> Answer {
    post(
        router,
        &c.who,
        "/v1/channel/key-exchange",
        json!({"channel_id": id, "key_exchange": B64.encode(cke)}),
    )
    .await
}

async fn send(router: &Router, c: &Card, record: &[u8]) -> Answer {
    post(
        router,
        &c.who,
        "/v1/channel/records",
        json!({"record": B64.encode(record)}),
    )
    .await
}

/// A whole handshake: the card's open channel.
async fn open(app: &App, hs: &Router, kx: &Router, c: &Card) -> Channel {
    let (hello, id, sh) = say_hello(hs, c).await;
    let (wait, cke) = hello
        .key_exchange(
            &sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    finish(kx, c, &id, wait, &cke).await
}

async fn finish(router: &Router, c: &Card, id: &str, wait: AwaitFinished, cke: &[u8]) -> Channel {
    let a = key_exchange(router, c, id, cke).await;
    let fin = B64
        .decode(
            a.expect(StatusCode::OK)["server_finished"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    wait.finish(&fin).unwrap()
}

/// A carried ping, answered in a record the card opens.
async fn ping(router: &Router, c: &Card, ch: &mut Channel) {
    let up = ch.seal(PING).unwrap().remove(0);
    let a = send(router, c, &up).await;
    let b = a.expect(StatusCode::OK);
    assert_eq!(b["closed"], false);
    let down = B64.decode(b["record"].as_str().unwrap()).unwrap();
    let a = answer(&down, ch);
    assert_eq!(a.status, 200);
    assert_eq!(a.body["pong"], true);
    assert_eq!(a.body["client"]["device_id"], c.d.id.to_string());
}

fn handshakes(app: &App, outcome: &str) -> u64 {
    app.state
        .metrics
        .channel_handshakes
        .with_label_values(&[outcome])
        .get()
}

fn records(app: &App, outcome: &str) -> u64 {
    app.state
        .metrics
        .channel_records
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test]
async fn a_card_opens_a_channel_carries_a_ping_and_closes_it() {
    let app = App::new().await;
    let c = card(&app, 71).await;
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    assert_eq!(handshakes(&app, "opened"), 1);
    for _ in 0..3 {
        ping(&app.public, &c, &mut ch).await;
    }
    // The card's key update: the next record is under generation 1.
    let update = ch.update_key().unwrap();
    let a = send(&app.public, &c, &update).await;
    assert_eq!(a.expect(StatusCode::OK)["record"], Value::Null);
    assert_eq!(ch.send_state(), (1, 0));
    ping(&app.public, &c, &mut ch).await;
    // The channel's own routes are not carried: a typed error, sealed.
    let up = ch
        .seal(br#"{"method":"POST","path":"/v1/channel/hello","body":{}}"#)
        .unwrap()
        .remove(0);
    let a = send(&app.public, &c, &up).await;
    let down = B64
        .decode(a.expect(StatusCode::OK)["record"].as_str().unwrap())
        .unwrap();
    let a = answer(&down, &mut ch);
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (403, Some("channel_not_carried"))
    );
    assert_eq!(records(&app, "data"), 5);
    assert_eq!(records(&app, "key_update"), 1);

    let close = ch.close().unwrap();
    let a = send(&app.public, &c, &close).await;
    assert_eq!(a.expect(StatusCode::OK)["closed"], true);
    assert_eq!(records(&app, "close"), 1);
    // A closed channel takes nothing more, not even its own close again.
    send(&app.public, &c, &close)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    assert!(app.audited("channel.open", "success").await);
    assert!(app.audited("channel.close", "success").await);
}

/// The card's key exchange with its certificate, pre-master ciphertext and
/// signature chosen by the test (the signature over the real transcript
/// unless given).
fn forged(
    hello: &CardHello,
    sh: &[u8],
    d: &SimDevice,
    cert: Vec<u8>,
    epms: Vec<u8>,
    signature: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut cke = CardKeyExchange {
        certificate: cert,
        encrypted_pre_master: epms,
        signature: Vec::new(),
    };
    cke.signature = signature.unwrap_or_else(|| {
        d.sign_challenge(&channel::card_signature_input(
            hello.client_hello(),
            sh,
            &cke.signed_part(),
        ))
    });
    cke.encode()
}

/// The card's own key and serial under another CA: a look-alike of its
/// Keyward certificate.
fn lookalike(c: &Card) -> Vec<u8> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
    };
    let (_, real) = x509_parser::parse_x509_certificate(&c.cert).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &c.d.private_key_pkcs8().unwrap().as_slice().into(),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, c.d.id.to_string());
    p.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 5]), c.d.id.to_string());
    p.serial_number = Some(SerialNumber::from_slice(real.raw_serial()));
    p.signed_by(&key, &other).unwrap().der().to_vec()
}

#[tokio::test]
async fn a_bad_signature_a_foreign_certificate_and_a_garbage_pre_master_are_one_refusal() {
    let app = App::new().await;
    let c = card(&app, 72).await;
    let root = app.state.ca.root_pem().to_owned();
    let mut answers = Vec::new();

    // A signature over another transcript.
    let (hello, id, sh) = say_hello(&app.public, &c).await;
    let (_, good) = hello
        .key_exchange(
            &sh,
            &root,
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    let epms = CardKeyExchange::decode(&good).unwrap().encrypted_pre_master;
    let bad_sig = forged(
        &hello,
        &sh,
        &c.d,
        c.cert.clone(),
        epms,
        Some(c.d.sign_challenge(b"another transcript")),
    );
    answers.push(key_exchange(&app.public, &c, &id, &bad_sig).await);
    // The handshake is spent: even the good key exchange is too late now.
    key_exchange(&app.public, &c, &id, &good)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    // The card's key and serial, certified by another CA.
    let (hello, id, sh) = say_hello(&app.public, &c).await;
    let other = lookalike(&c);
    let (_, cke) = hello
        .key_exchange(&sh, &root, &c.d, &other, &random(), &mut rand::thread_rng())
        .unwrap();
    answers.push(key_exchange(&app.public, &c, &id, &cke).await);

    // Random bytes for a pre-master, properly signed.
    let (hello, id, sh) = say_hello(&app.public, &c).await;
    let cke = forged(
        &hello,
        &sh,
        &c.d,
        c.cert.clone(),
        random::<256>().to_vec(),
        None,
    );
    answers.push(key_exchange(&app.public, &c, &id, &cke).await);

    for a in &answers {
        a.refused(StatusCode::FORBIDDEN, "channel_refused");
        assert_eq!(
            a.body["error"]["message"],
            answers[0].body["error"]["message"]
        );
    }
    assert_eq!(handshakes(&app, "refused"), 3);
    assert_eq!(handshakes(&app, "opened"), 0);
    let refused = app
        .trail()
        .await
        .iter()
        .filter(|r| r["action"] == "channel.open" && r["outcome"] == "refused")
        .count();
    assert_eq!(refused, 3);

    // Another terminal cannot take over a handshake it did not open.
    let t = card(&app, 76).await;
    let (hello, id, sh) = say_hello(&app.public, &c).await;
    let (_, cke) = hello
        .key_exchange(
            &sh,
            &root,
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    key_exchange(&app.public, &t, &id, &cke)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    // A garbled key exchange is malformed, not refused.
    let (_, id, _) = say_hello(&app.public, &c).await;
    key_exchange(&app.public, &c, &id, b"KWC3\x01")
        .await
        .refused(StatusCode::BAD_REQUEST, "channel_malformed");
}

#[tokio::test]
async fn a_replayed_or_altered_record_closes_the_channel() {
    let app = App::new().await;
    let c = card(&app, 73).await;

    // Replayed.
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    let up = ch.seal(PING).unwrap().remove(0);
    send(&app.public, &c, &up).await.expect(StatusCode::OK);
    send(&app.public, &c, &up)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    // The card's next, intact record comes too late: the channel is closed.
    let next = ch.seal(PING).unwrap().remove(0);
    send(&app.public, &c, &next)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    // Altered (one ciphertext bit), then the intact original.
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    let up = ch.seal(PING).unwrap().remove(0);
    let mut bad = up.clone();
    *bad.last_mut().unwrap() ^= 1;
    send(&app.public, &c, &bad)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    send(&app.public, &c, &up)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    // Reordered: the second record first.
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    let _first = ch.seal(PING).unwrap().remove(0);
    let second = ch.seal(PING).unwrap().remove(0);
    send(&app.public, &c, &second)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    assert_eq!(records(&app, "refused"), 5);
    let closed = app
        .trail()
        .await
        .iter()
        .filter(|r| r["action"] == "channel.close" && r["outcome"] == "refused")
        .count();
    assert_eq!(closed, 3, "one closing per channel");
}

/// A second replica: its own HSM sessions and state, the same token and
/// database.
async fn replica(app: &App) -> Router {
    let config = Config::load(&app.install.config).unwrap();
    let metrics = Metrics::new().unwrap();
    let opened = bootstrap::open(&config, Some(metrics.clone()))
        .await
        .unwrap();
    public_app(startup::state_from(config, opened, metrics).await.unwrap())
}

#[tokio::test]
async fn another_replica_takes_the_key_exchange_and_the_records() {
    let app = App::new().await;
    let c = card(&app, 74).await;
    let other = replica(&app).await;
    let mut ch = open(&app, &app.public, &other, &c).await;
    ping(&other, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
    ping(&other, &c, &mut ch).await;
}

/// The card's requests carried through `router` by the terminal `who`.
struct InChannel<'a> {
    router: &'a Router,
    who: &'a ClientIdentity,
    ch: &'a mut Channel,
}

impl Caller for InChannel<'_> {
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let carried = Carried {
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            headers: session
                .map(|t| [("authorization".to_owned(), format!("Bearer {t}"))].into())
                .unwrap_or_default(),
            body: body.cloned(),
        };
        let up = self.ch.seal(&serde_json::to_vec(&carried)?)?.remove(0);
        let a = post(
            self.router,
            self.who,
            "/v1/channel/records",
            json!({"record": B64.encode(up)}),
        )
        .await;
        anyhow::ensure!(a.status == StatusCode::OK, "{}", a.text);
        let down = B64.decode(a.body["record"].as_str().unwrap_or_default())?;
        let a = answer(&down, self.ch);
        Ok(Reply {
            status: StatusCode::from_u16(a.status)?,
            body: a.body,
        })
    }
}

/// The card `c`'s channel, its handshake relayed by the terminal `relay`.
async fn open_relayed(app: &App, c: &Card, relay: &ClientIdentity) -> Channel {
    let hello = CardHello::new(c.d.id, random());
    let a = post(
        &app.public,
        relay,
        "/v1/channel/hello",
        json!({"client_hello": B64.encode(hello.client_hello())}),
    )
    .await;
    let b = a.expect(StatusCode::OK);
    let id = b["channel_id"].as_str().unwrap().to_owned();
    let sh = B64.decode(b["server_hello"].as_str().unwrap()).unwrap();
    let (wait, cke) = hello
        .key_exchange(
            &sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    let a = post(
        &app.public,
        relay,
        "/v1/channel/key-exchange",
        json!({"channel_id": id, "key_exchange": B64.encode(cke)}),
    )
    .await;
    let fin = B64
        .decode(
            a.expect(StatusCode::OK)["server_finished"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    wait.finish(&fin).unwrap()
}

#[tokio::test]
async fn a_login_and_a_transaction_travel_in_the_channel_as_the_card() {
    let app = App::new().await;
    let t = card(&app, 81).await;
    let mut c = card(&app, 82).await;
    let mut ch = open_relayed(&app, &c, &t.who).await;
    let mut via = InChannel {
        router: &app.public,
        who: &t.who,
        ch: &mut ch,
    };
    // The server sees the card, not the terminal that relays it.
    let ping = via
        .request(Method::GET, "/v1/ping", None, None)
        .await
        .unwrap();
    assert_eq!(ping.body["client"]["device_id"], c.d.id.to_string());
    let card_serial = c.who.cert.as_ref().unwrap().serial.clone();
    assert_eq!(ping.body["client"]["serial"], card_serial);

    // A whole login (with its first key update) and a transaction.
    let login = terminal::login_over(&mut via, &mut c.d, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    let token = login.answer().unwrap().session_token;
    let tx = terminal::transaction_body(&c.d, "bank-a", "pay 100 to 42").unwrap();
    let r = via
        .request(Method::POST, "/v1/transactions", Some(&tx), Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (r.status, &r.body["result"]),
        (StatusCode::OK, &json!("valid")),
        "{}",
        r.body
    );
    let r = via
        .request(Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(r.body["device_id"], c.d.id.to_string(), "{}", r.body);
    // Another header, a method the channel does not know: refused inside.
    let up = via
        .ch
        .seal(br#"{"method":"GET","path":"/v1/ping","headers":{"x-forwarded-for":"1.2.3.4"}}"#)
        .unwrap()
        .remove(0);
    let a = send(&app.public, &t, &up).await;
    let down = B64
        .decode(a.expect(StatusCode::OK)["record"].as_str().unwrap())
        .unwrap();
    let a = answer(&down, via.ch);
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (400, Some("invalid_input"))
    );

    // The session is the card's certificate's: the terminal cannot use it.
    let direct = crate::login::session(&app, &t.who, &token).await;
    assert!(direct.status.is_client_error(), "{}", direct.text);
    // The audit trail names the card as the actor of the login's key
    // activation.
    let trail = app.trail().await;
    let activated = trail
        .iter()
        .rev()
        .find(|r| r["action"] == "key.activate")
        .expect("a key.activate record");
    assert!(activated.to_string().contains(&card_serial), "{activated}");
    assert!(
        !activated
            .to_string()
            .contains(&t.who.cert.as_ref().unwrap().serial)
    );

    // Revoked: the card's next carried request is refused inside the channel.
    app.post(
        &app.root,
        &format!("/admin/v1/ca/certificates/{card_serial}/revoke"),
        json!({"reason": "keyCompromise"}),
    )
    .await
    .expect(StatusCode::OK);
    let r = via
        .request(Method::GET, "/v1/ping", None, None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("certificate_revoked")),
        "{}",
        r.body
    );
}

fn pings_run(metrics: &Metrics) -> u64 {
    metrics
        .http_requests
        .with_label_values(&["public", "/v1/ping", "200"])
        .get()
}

#[tokio::test]
async fn a_record_raced_to_two_replicas_runs_once() {
    let app = App::new().await;
    let c = card(&app, 83).await;
    let config = Config::load(&app.install.config).unwrap();
    let metrics = Metrics::new().unwrap();
    let opened = bootstrap::open(&config, Some(metrics.clone()))
        .await
        .unwrap();
    let other = public_app(
        startup::state_from(config, opened, metrics.clone())
            .await
            .unwrap(),
    );
    for _ in 0..5 {
        let mut ch = open(&app, &app.public, &app.public, &c).await;
        let before = pings_run(&app.state.metrics) + pings_run(&metrics);
        let up = ch.seal(PING).unwrap().remove(0);
        let (a, b) = tokio::join!(send(&app.public, &c, &up), send(&other, &c, &up));
        let ok = [&a, &b]
            .iter()
            .filter(|x| x.status == StatusCode::OK)
            .count();
        assert_eq!(ok, 1, "{} / {}", a.text, b.text);
        for x in [&a, &b] {
            if x.status != StatusCode::OK {
                x.refused(StatusCode::FORBIDDEN, "channel_closed");
            }
        }
        let after = pings_run(&app.state.metrics) + pings_run(&metrics);
        assert_eq!(after - before, 1, "the carried ping ran once");
    }
}
