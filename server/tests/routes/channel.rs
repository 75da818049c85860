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
use keyward_tests::channel::{AwaitFinished, CardHello, CardResume, Channel, Received, Ticket};
use keyward_tests::simulator::SimDevice;
use rand::RngCore;
use serde_json::{Value, json};

use keyward_server::wire::channel::{Carried, CarriedAnswer};
use keyward_tests::terminal::{self, Caller, LoginOptions, Reply};

use crate::harness::{Answer, App, call, der_of_pem};
use crate::login::issued;

/// A carried answer: the route's status and body.
fn answer(down: &[u8], ch: &mut Channel) -> CarriedAnswer {
    let Received::Data(plain) = ch.open(down).unwrap() else {
        panic!("not a data record");
    };
    serde_json::from_slice(&plain).unwrap()
}

/// A carried `GET /v1/ping`, bound to `ch` by its exporter value.
pub(crate) fn ping_of(ch: &Channel) -> Vec<u8> {
    ch.carried("GET", "/v1/ping", None, None)
}

/// An issued card (it is also the terminal relaying, by its device
/// certificate) and its certificate's DER.
pub(crate) struct Card {
    pub d: SimDevice,
    pub who: ClientIdentity,
    pub cert: Vec<u8>,
}

pub(crate) async fn card(app: &App, n: u8) -> Card {
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

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A ClientHello answered: the card, the channel id and the ServerHello.
pub(crate) async fn say_hello(router: &Router, c: &Card) -> (CardHello, String, Vec<u8>) {
    hello_via(router, &c.who, c).await
}

/// [`say_hello`] relayed by the terminal `relay`.
async fn hello_via(
    router: &Router,
    relay: &ClientIdentity,
    c: &Card,
) -> (CardHello, String, Vec<u8>) {
    let hello = CardHello::new(c.d.id, random());
    let a = post(
        router,
        relay,
        "/v1/channel/hello",
        json!({"client_hello": B64.encode(hello.client_hello())}),
    )
    .await;
    let b = a.expect(StatusCode::OK);
    let id = b["channel_id"].as_str().unwrap().to_owned();
    let sh = B64.decode(b["server_hello"].as_str().unwrap()).unwrap();
    (hello, id, sh)
}

pub(crate) async fn key_exchange(router: &Router, c: &Card, id: &str, cke: &[u8]) -> Answer {
    key_exchange_via(router, &c.who, id, cke).await
}

async fn key_exchange_via(router: &Router, relay: &ClientIdentity, id: &str, cke: &[u8]) -> Answer {
    post(
        router,
        relay,
        "/v1/channel/key-exchange",
        json!({"channel_id": id, "key_exchange": B64.encode(cke)}),
    )
    .await
}

pub(crate) async fn send(router: &Router, c: &Card, record: &[u8]) -> Answer {
    post(
        router,
        &c.who,
        "/v1/channel/records",
        json!({"record": B64.encode(record)}),
    )
    .await
}

/// A whole handshake: the card's open channel.
pub(crate) async fn open(app: &App, hs: &Router, kx: &Router, c: &Card) -> Channel {
    handshake(app, hs, kx, c, &c.who).await.0
}

/// A whole handshake of the card `c` relayed by the terminal `relay`, its
/// hello to `hs` and its key exchange to `kx`: the open channel and the
/// card's ticket.
async fn handshake(
    app: &App,
    hs: &Router,
    kx: &Router,
    c: &Card,
    relay: &ClientIdentity,
) -> (Channel, Ticket) {
    let (hello, id, sh) = hello_via(hs, relay, c).await;
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
    finished(kx, relay, c, &id, wait, &cke).await
}

pub(crate) async fn finish(
    router: &Router,
    c: &Card,
    id: &str,
    wait: AwaitFinished,
    cke: &[u8],
) -> Channel {
    finished(router, &c.who, c, id, wait, cke).await.0
}

fn b64_field(b: &Value, name: &str) -> Vec<u8> {
    B64.decode(b[name].as_str().unwrap()).unwrap()
}

/// The key exchange answered: the open channel and the card's ticket.
pub(crate) async fn finished(
    router: &Router,
    relay: &ClientIdentity,
    c: &Card,
    id: &str,
    wait: AwaitFinished,
    cke: &[u8],
) -> (Channel, Ticket) {
    let a = key_exchange_via(router, relay, id, cke).await;
    let b = a.expect(StatusCode::OK);
    let ch = wait.finish(&b64_field(b, "server_finished")).unwrap();
    let ticket = ch.ticket(&b64_field(b, "ticket"), c.d.id).unwrap();
    (ch, ticket)
}

/// A carried ping, answered in a record the card opens.
pub(crate) async fn ping(router: &Router, c: &Card, ch: &mut Channel) {
    let up = ch.seal(&ping_of(ch)).unwrap().remove(0);
    let a = send(router, c, &up).await;
    let b = a.expect(StatusCode::OK);
    assert_eq!(b["closed"], false);
    let down = B64.decode(b["record"].as_str().unwrap()).unwrap();
    let a = answer(&down, ch);
    assert_eq!(a.status, 200);
    assert_eq!(a.body["pong"], true);
    assert_eq!(a.body["client"]["device_id"], c.d.id.to_string());
}

pub(crate) fn handshakes(app: &App, outcome: &str) -> u64 {
    app.state
        .metrics
        .channel_handshakes
        .with_label_values(&[outcome])
        .get()
}

pub(crate) fn records(app: &App, outcome: &str) -> u64 {
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
        .seal(&ch.carried("POST", "/v1/channel/hello", None, Some(&json!({}))))
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
pub(crate) fn forged(
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
        ephemeral: None,
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
pub(crate) fn lookalike(c: &Card) -> Vec<u8> {
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
    let up = ch.seal(&ping_of(&ch)).unwrap().remove(0);
    send(&app.public, &c, &up).await.expect(StatusCode::OK);
    send(&app.public, &c, &up)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    // The card's next, intact record comes too late: the channel is closed.
    let next = ch.seal(&ping_of(&ch)).unwrap().remove(0);
    send(&app.public, &c, &next)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");

    // Altered (one ciphertext bit), then the intact original.
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    let up = ch.seal(&ping_of(&ch)).unwrap().remove(0);
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
    let _first = ch.seal(&ping_of(&ch)).unwrap().remove(0);
    let second = ch.seal(&ping_of(&ch)).unwrap().remove(0);
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
pub(crate) async fn replica(app: &App) -> Router {
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
    // Each replica's row of its own last claim is now behind the database:
    // the record is decided on the row read, and the channel stays open.
    ping(&other, &c, &mut ch).await;
    ping(&other, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
}

async fn resume_with(router: &Router, relay: &Card, hello: &[u8]) -> Answer {
    post(
        router,
        &relay.who,
        "/v1/channel/resume",
        json!({"resume_hello": B64.encode(hello)}),
    )
    .await
}

/// A resumption answered: the new channel and the next ticket.
pub(crate) async fn resume(router: &Router, c: &Card, ticket: &Ticket) -> (Channel, Ticket) {
    let r = CardResume::new(ticket, random());
    let a = resume_with(router, c, r.resume_hello()).await;
    let b = a.expect(StatusCode::OK);
    let ch = r
        .finish(
            &b64_field(b, "server_hello"),
            &b64_field(b, "server_finished"),
        )
        .unwrap();
    assert_eq!(ch.id.to_string(), b["channel_id"]);
    let next = ch.ticket(&b64_field(b, "ticket"), c.d.id).unwrap();
    (ch, next)
}

fn resume_refusals(trail: &[Value]) -> usize {
    trail
        .iter()
        .filter(|r| r["action"] == "channel.resume" && r["outcome"] == "refused")
        .count()
}

#[tokio::test]
async fn a_ticket_resumes_on_the_other_replica_once_and_chains() {
    let app = App::new().await;
    let c = card(&app, 77).await;
    let (mut first, ticket) = handshake(&app, &app.public, &app.public, &c, &c.who).await;
    ping(&app.public, &c, &mut first).await;
    // The other replica has never loaded the channel key or its chain.
    let other = replica(&app).await;
    let (mut ch, next) = resume(&other, &c, &ticket).await;
    ping(&other, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
    // The first channel is untouched by the resumption.
    ping(&app.public, &c, &mut first).await;
    assert!(app.audited("channel.resume", "success").await);

    // Single use: the same ticket again (a replay of a fresh hello, or the
    // very same bytes) is refused.
    let again = CardResume::new(&ticket, random());
    resume_with(&app.public, &c, again.resume_hello())
        .await
        .refused(StatusCode::FORBIDDEN, "channel_refused");
    // The resumed channel's ticket resumes in turn, and the new channel
    // carries records like any other.
    let (mut third, _) = resume(&app.public, &c, &next).await;
    ping(&app.public, &c, &mut third).await;
    let close = third.close().unwrap();
    assert_eq!(
        send(&app.public, &c, &close).await.expect(StatusCode::OK)["closed"],
        true
    );
    assert_eq!(handshakes(&app, "resumed"), 1, "this replica's");
    assert_eq!(resume_refusals(&app.trail().await), 1);
    // The ticket's secret is stored wrapped, never the secret itself.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret FROM channel_tickets")
        .fetch_all(app.state.kms.db().pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|s| s.as_slice() != ticket.secret));
}

#[tokio::test]
async fn a_ticket_of_another_card_expired_revoked_or_with_a_wrong_binder_is_one_refusal() {
    let app = App::new().await;
    let a = card(&app, 78).await;
    let b = card(&app, 79).await;
    let mut answers = Vec::new();

    // Card b presents card a's ticket as its own (its device id, a's
    // handle; it cannot know a's secret, so its own channel's).
    let (_, ta) = handshake(&app, &app.public, &app.public, &a, &a.who).await;
    let (_, tb) = handshake(&app, &app.public, &app.public, &b, &b.who).await;
    let stolen = Ticket {
        handle: ta.handle,
        ..tb.clone()
    };
    answers.push(
        resume_with(
            &app.public,
            &b,
            CardResume::new(&stolen, random()).resume_hello(),
        )
        .await,
    );
    // Even a's own device id with the handle but b's secret.
    let (_, ta) = handshake(&app, &app.public, &app.public, &a, &a.who).await;
    let wrong_binder = Ticket {
        secret: tb.secret,
        ..ta.clone()
    };
    answers.push(
        resume_with(
            &app.public,
            &a,
            CardResume::new(&wrong_binder, random()).resume_hello(),
        )
        .await,
    );
    // The wrong binder spent the ticket: the right one is too late.
    answers.push(
        resume_with(
            &app.public,
            &a,
            CardResume::new(&ta, random()).resume_hello(),
        )
        .await,
    );

    // Expired.
    let (_, ta) = handshake(&app, &app.public, &app.public, &a, &a.who).await;
    sqlx::query("UPDATE channel_tickets SET expires_at_ms = 1 WHERE id = $1")
        .bind(hex::encode(ta.handle))
        .execute(app.state.kms.db().pool())
        .await
        .unwrap();
    answers.push(
        resume_with(
            &app.public,
            &a,
            CardResume::new(&ta, random()).resume_hello(),
        )
        .await,
    );

    // Unknown.
    let unknown = Ticket {
        handle: random(),
        ..ta.clone()
    };
    answers.push(
        resume_with(
            &app.public,
            &a,
            CardResume::new(&unknown, random()).resume_hello(),
        )
        .await,
    );

    // The card's certificate revoked after the ticket was given.
    let (_, tb) = handshake(&app, &app.public, &app.public, &b, &b.who).await;
    let serial = app
        .state
        .provisioning
        .device(b.d.id)
        .await
        .unwrap()
        .cert_serial
        .unwrap()
        .parse()
        .unwrap();
    app.state
        .ca
        .revoke(&serial, keyward_ca::RevocationReason::KeyCompromise)
        .await
        .unwrap();
    // Relayed by card a's terminal: b's own certificate no longer opens
    // the public listener.
    answers.push(
        resume_with(
            &app.public,
            &a,
            CardResume::new(&tb, random()).resume_hello(),
        )
        .await,
    );

    for x in &answers {
        x.refused(StatusCode::FORBIDDEN, "channel_refused");
        assert_eq!(
            x.body["error"]["message"],
            answers[0].body["error"]["message"]
        );
    }
    assert_eq!(handshakes(&app, "resumed"), 0);
    assert_eq!(handshakes(&app, "refused"), answers.len() as u64);
    assert_eq!(resume_refusals(&app.trail().await), answers.len());
    let channels: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM channels")
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap();
    assert_eq!(channels, 5, "the full handshakes' only");

    // A garbled or version-less hello is malformed or unsupported.
    resume_with(&app.public, &a, b"KWC5\x01")
        .await
        .refused(StatusCode::BAD_REQUEST, "channel_malformed");
    let mut v2 = CardResume::new(&ta, random()).resume_hello().to_vec();
    v2[38] = 2;
    resume_with(&app.public, &a, &v2)
        .await
        .refused(StatusCode::BAD_REQUEST, "channel_unsupported");
}

/// The channel certificate a ServerHello carries.
fn leaf(sh: &[u8]) -> Vec<u8> {
    channel::ServerHello::decode(sh).unwrap().chain.remove(0)
}

#[tokio::test]
async fn a_rotated_key_serves_new_handshakes_everywhere_and_old_ones_finish() {
    let app = App::new().await;
    let c = card(&app, 80).await;
    let other = replica(&app).await;
    let root = app.state.ca.root_pem().to_owned();
    // Both replicas have loaded the first key; a handshake is under way.
    let (_, _, before) = say_hello(&other, &c).await;
    let (pending, pending_id, pending_sh) = say_hello(&app.public, &c).await;
    assert_eq!(leaf(&before), leaf(&pending_sh));

    // Operators may not rotate; an admin may.
    let op = app.operator("olga", keyward_ca::Role::Operator).await;
    app.post(&op, "/admin/v1/channel/keys", json!({}))
        .await
        .refused(StatusCode::FORBIDDEN, "forbidden_role");
    let a = app
        .post(&app.root, "/admin/v1/channel/keys", json!({}))
        .await;
    let b = a.expect(StatusCode::CREATED);
    assert_eq!(b["previous"], "keyward/channel/rsa");
    let label = b["label"].as_str().unwrap().to_owned();
    assert!(label.starts_with("keyward/channel/rsa/"));
    assert!(app.audited("channel.rotate_key", "success").await);
    let serial = b["cert_serial"].as_str().unwrap().parse().unwrap();
    let issued = der_of_pem(&app.state.ca.get(&serial).await.unwrap().unwrap().pem);

    // The handshake begun under the old key finishes under it.
    let (wait, cke) = pending
        .key_exchange(
            &pending_sh,
            &root,
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    let mut ch = finish(&app.public, &c, &pending_id, wait, &cke).await;
    ping(&app.public, &c, &mut ch).await;

    // New hellos on either replica carry the new certificate, and the new
    // key opens channels; the other replica learnt of it from the database.
    for router in [&other, &app.public] {
        let (hello, id, sh) = say_hello(router, &c).await;
        assert_ne!(leaf(&sh), leaf(&before));
        assert_eq!(leaf(&sh), issued);
        let (wait, cke) = hello
            .key_exchange(
                &sh,
                &root,
                &c.d,
                &c.cert,
                &random(),
                &mut rand::thread_rng(),
            )
            .unwrap();
        let mut ch = finish(router, &c, &id, wait, &cke).await;
        ping(router, &c, &mut ch).await;
    }
}

#[tokio::test]
async fn the_sweep_removes_what_can_no_longer_be_used_and_answers_stay_the_same() {
    let app = App::new().await;
    let c = card(&app, 81).await;
    let swept = |kind: &str| {
        app.state
            .metrics
            .channel_swept
            .with_label_values(&[kind])
            .get()
    };
    // A closed channel, a spent ticket (its successor live), an expired
    // handshake, and one open channel that stays.
    let (mut closed, ticket) = handshake(&app, &app.public, &app.public, &c, &c.who).await;
    let close = closed.close().unwrap();
    send(&app.public, &c, &close).await.expect(StatusCode::OK);
    let (mut open, _) = resume(&app.public, &c, &ticket).await;
    let (hello, id, sh) = say_hello(&app.public, &c).await;
    let db = app.state.kms.db().pool();
    sqlx::query("UPDATE channel_handshakes SET expires_at_ms = 1 WHERE id = $1")
        .bind(&id)
        .execute(db)
        .await
        .unwrap();
    let (_, live_id, _) = say_hello(&app.public, &c).await;

    let s = app.state.channels.sweep().await.unwrap();
    assert_eq!((s.handshakes, s.channels, s.tickets), (1, 1, 1));
    assert_eq!(
        (swept("handshakes"), swept("channels"), swept("tickets")),
        (1, 1, 1)
    );
    assert_eq!(app.state.metrics.channels_open.get(), 1);
    // A second sweep finds nothing more.
    assert_eq!(
        app.state.channels.sweep().await.unwrap(),
        Default::default()
    );

    // What was live still is.
    ping(&app.public, &c, &mut open).await;
    // The same answers as before the sweep (the stale record last: a record
    // of no open channel closes every channel its terminal relays).
    send(&app.public, &c, &close)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    let (_, cke) = hello
        .key_exchange(
            &sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    key_exchange(&app.public, &c, &id, &cke)
        .await
        .refused(StatusCode::FORBIDDEN, "channel_closed");
    resume_with(
        &app.public,
        &c,
        CardResume::new(&ticket, random()).resume_hello(),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "channel_refused");
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM channel_handshakes WHERE id = $1")
        .bind(&live_id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(live, 1);
    // The job runs once across replicas.
    let jobs = keyward_server::jobs::server_jobs(&app.state).await;
    let job = jobs.iter().find(|j| j.name == "channel.sweep").unwrap();
    assert!(job.once_across_replicas);
}

#[tokio::test]
async fn the_server_rekeys_its_direction_before_its_last_sequence_number() {
    let app = App::new().await;
    let c = card(&app, 82).await;
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    ping(&app.public, &c, &mut ch).await;
    // Jump the server's counter to the last number of generation 0.
    let last = channel::REKEY_AFTER_RECORDS - 1;
    let db = app.state.kms.db().pool();
    sqlx::query("UPDATE channels SET s2c_sequence = $1 WHERE id = $2")
        .bind(last as i64)
        .bind(ch.id.to_string())
        .execute(db)
        .await
        .unwrap();
    ch.skip_received(last - 1);
    assert_eq!(ch.recv_state(), (0, last));

    let up = ch.seal(&ping_of(&ch)).unwrap().remove(0);
    let a = send(&app.public, &c, &up).await;
    let b = a.expect(StatusCode::OK);
    // The key update (its last number, old key), then the answer under the
    // next key at sequence 0.
    let update = b64_field(b, "key_update");
    let r = channel::Record::decode(&update).unwrap();
    assert_eq!((r.kind, r.sequence), (channel::RecordType::KeyUpdate, last));
    assert_eq!(ch.open(&update).unwrap(), Received::KeyUpdated);
    let down = b64_field(b, "record");
    assert_eq!(channel::Record::decode(&down).unwrap().sequence, 0);
    let a = answer(&down, &mut ch);
    assert_eq!((a.status, &a.body["pong"]), (200, &Value::Bool(true)));
    assert_eq!(ch.recv_state(), (1, 1));
    assert_eq!(records(&app, "server_key_update"), 1);
    let (generation, sequence): (i64, i64) =
        sqlx::query_as("SELECT s2c_generation, s2c_sequence FROM channels WHERE id = $1")
            .bind(ch.id.to_string())
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!((generation, sequence), (1, 1));
    // The channel goes on under generation 1, with no further update.
    ping(&app.public, &c, &mut ch).await;
    assert_eq!(ch.recv_state(), (1, 2));
    assert_eq!(records(&app, "server_key_update"), 1);
}

/// The card's requests carried through `router` by the terminal `who`.
pub(crate) struct InChannel<'a> {
    pub router: &'a Router,
    pub who: &'a ClientIdentity,
    pub ch: &'a mut Channel,
}

impl Caller for InChannel<'_> {
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let carried = self.ch.carried(method.as_str(), path, session, body);
        let up = self.ch.seal(&carried)?.remove(0);
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

#[tokio::test]
async fn a_login_and_a_transaction_travel_in_the_channel_as_the_card() {
    let app = App::new().await;
    let t = card(&app, 81).await;
    let mut c = card(&app, 82).await;
    let (mut ch, _) = handshake(&app, &app.public, &app.public, &c, &t.who).await;
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
    let carried = Carried {
        method: "GET".into(),
        path: "/v1/ping".into(),
        headers: [("x-forwarded-for".to_owned(), "1.2.3.4".to_owned())].into(),
        body: None,
        exporter: B64.encode(via.ch.exporter("/v1/ping")),
    };
    let up = via
        .ch
        .seal(&serde_json::to_vec(&carried).unwrap())
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
        let up = ch.seal(&ping_of(&ch)).unwrap().remove(0);
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

/// The channel's state and `c2s_sequence` in the database.
async fn channel_row(app: &App, ch: &Channel) -> (String, i64) {
    sqlx::query_as("SELECT state, c2s_sequence FROM channels WHERE id = $1")
        .bind(ch.id.to_string())
        .fetch_one(app.state.kms.db().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_carried_request_runs_only_with_its_channels_exporter_value() {
    let app = App::new().await;
    let c = card(&app, 84).await;
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    ping(&app.public, &c, &mut ch).await;
    // No exporter value: not the documented request, answered inside.
    let up = ch
        .seal(br#"{"method":"GET","path":"/v1/ping"}"#)
        .unwrap()
        .remove(0);
    let a = send(&app.public, &c, &up).await;
    let a = answer(&b64_field(a.expect(StatusCode::OK), "record"), &mut ch);
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (400, Some("invalid_input"))
    );
    ping(&app.public, &c, &mut ch).await;

    // Another path's value, then another channel's for this path: each
    // closes its channel before the record is claimed (nothing runs).
    let other = open(&app, &app.public, &app.public, &c).await;
    let wrong = [ch.exporter("/v1/session"), other.exporter("/v1/ping")];
    let mut closed = 0;
    for value in wrong {
        let mut ch = open(&app, &app.public, &app.public, &c).await;
        ping(&app.public, &c, &mut ch).await;
        let carried = Carried {
            method: "GET".into(),
            path: "/v1/ping".into(),
            headers: Default::default(),
            body: None,
            exporter: B64.encode(value),
        };
        let up = ch
            .seal(&serde_json::to_vec(&carried).unwrap())
            .unwrap()
            .remove(0);
        send(&app.public, &c, &up)
            .await
            .refused(StatusCode::FORBIDDEN, "channel_closed");
        closed += 1;
        let (state, sequence) = channel_row(&app, &ch).await;
        assert_eq!(
            (state.as_str(), sequence),
            ("closed", 1),
            "closed, not claimed"
        );
    }
    assert_eq!(records(&app, "refused"), closed);
    let audited = app
        .trail()
        .await
        .iter()
        .filter(|r| r["action"] == "channel.close" && r["outcome"] == "refused")
        .count();
    assert_eq!(audited as u64, closed, "one closing per channel");
}

#[tokio::test]
async fn a_replica_uses_a_kept_key_only_for_the_generation_the_row_names() {
    let app = App::new().await;
    let c = card(&app, 85).await;
    let other = replica(&app).await;
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    // Both replicas keep generation 0 of both directions.
    ping(&app.public, &c, &mut ch).await;
    ping(&other, &c, &mut ch).await;
    // The card's direction moves on at the other replica.
    let update = ch.update_key().unwrap();
    let a = send(&other, &c, &update).await;
    assert_eq!(a.expect(StatusCode::OK)["record"], Value::Null);
    ping(&app.public, &c, &mut ch).await;
    // The server's direction moves on at this one, then the other answers.
    let last = channel::REKEY_AFTER_RECORDS - 1;
    sqlx::query("UPDATE channels SET s2c_sequence = $1 WHERE id = $2")
        .bind(last as i64)
        .bind(ch.id.to_string())
        .execute(app.state.kms.db().pool())
        .await
        .unwrap();
    let (_, received) = ch.recv_state();
    ch.skip_received(last - received);
    let up = ch.seal(&ping_of(&ch)).unwrap().remove(0);
    let b = send(&app.public, &c, &up).await;
    let b = b.expect(StatusCode::OK);
    assert_eq!(
        ch.open(&b64_field(b, "key_update")).unwrap(),
        Received::KeyUpdated
    );
    assert_eq!(answer(&b64_field(b, "record"), &mut ch).status, 200);
    ping(&other, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
    assert_eq!(ch.recv_state(), (1, 3));
    assert_eq!(records(&app, "refused"), 0);
}

#[tokio::test]
async fn kept_keys_are_unwrapped_again_after_the_hsm_reconnects() {
    let app = App::new().await;
    let c = card(&app, 86).await;
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    ping(&app.public, &c, &mut ch).await;
    app.state.kms.drop_hsm_sessions(false).await.unwrap();
    ping(&app.public, &c, &mut ch).await;
    ping(&app.public, &c, &mut ch).await;
}
