//! The secure channel's ECDHE-P256 mode on the public router
//! (docs/protocol.md §14.1): the server prefers it; the ephemeral waits
//! wrapped in the handshake's row and any replica takes the key exchange;
//! a login travels in it; a tampered ephemeral is the one refusal (or,
//! not being a point at all, malformed); a ticket from an ECDHE channel
//! resumes; every ECDHE refusal is one answer in one time.

use axum::Router;
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_config::ChannelMode;
use keyward_protocol::channel::{CardKeyExchange, EphemeralKey, Mode, ServerHello};
use keyward_tests::channel::{CardHello, Channel, Ticket};
use keyward_tests::terminal::{self, Caller, LoginOptions};
use serde_json::json;

use crate::channel::{
    Card, InChannel, card, finished, handshakes, key_exchange, ping, random, replica, resume,
};
use crate::harness::{App, call};

/// A hello offering `modes`: the card, the channel id and the ServerHello.
async fn hello(router: &Router, c: &Card, modes: &[Mode]) -> (CardHello, String, Vec<u8>) {
    let hello = CardHello::offering(c.d.id, random(), modes);
    let a = call(
        router,
        &c.who,
        Method::POST,
        "/v1/channel/hello",
        Some(json!({"client_hello": B64.encode(hello.client_hello())})),
    )
    .await;
    let b = a.expect(StatusCode::OK);
    let id = b["channel_id"].as_str().unwrap().to_owned();
    let sh = B64.decode(b["server_hello"].as_str().unwrap()).unwrap();
    (hello, id, sh)
}

/// The card's key exchange to `sh` (good unless the test changes it).
fn exchange(app: &App, c: &Card, hello: &CardHello, sh: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cke) = hello
        .key_exchange(
            sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    let (_, signed) = CardKeyExchange::split_in(&cke, Mode::EcdheP256).unwrap();
    let at = signed.len() - EphemeralKey::LEN;
    (cke.clone(), cke[at..signed.len()].to_vec())
}

/// An ECDHE opening: the open channel and its ticket.
async fn open_ecdhe(app: &App, hs: &Router, kx: &Router, c: &Card) -> (Channel, Ticket) {
    let (h, id, sh) = hello(hs, c, &[Mode::EcdheP256, Mode::RsaTransport]).await;
    assert_eq!(ServerHello::decode(&sh).unwrap().mode, Mode::EcdheP256);
    let (wait, cke) = h
        .key_exchange(
            &sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    finished(kx, &c.who, c, &id, wait, &cke).await
}

fn opened_in(app: &App, mode: &str) -> u64 {
    app.state
        .metrics
        .channel_handshake_modes
        .with_label_values(&[mode])
        .get()
}

/// A point on P-256 other than any party's.
fn other_point() -> Vec<u8> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let k = p256::SecretKey::random(&mut rand::thread_rng());
    k.public_key().to_encoded_point(false).as_bytes().to_vec()
}

async fn stored_ephemeral(app: &App, id: &str) -> Option<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT server_ephemeral FROM channel_handshakes WHERE id = $1")
        .bind(id)
        .fetch_optional(app.state.kms.db().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_ecdhe_hello_on_one_replica_opens_on_another_and_carries_a_login() {
    let app = App::new().await;
    let mut c = card(&app, 91).await;
    let other = replica(&app).await;
    let (h, id, sh) = hello(&app.public, &c, &[Mode::EcdheP256, Mode::RsaTransport]).await;
    let parsed = ServerHello::decode(&sh).unwrap();
    assert_eq!(parsed.mode, Mode::EcdheP256);
    // The ephemeral waits wrapped in the row, not as the public key.
    let wrapped = stored_ephemeral(&app, &id).await.unwrap().unwrap();
    assert!(wrapped.len() > 64);
    let public = parsed.ephemeral.unwrap();
    assert!(
        !wrapped
            .windows(16)
            .any(|w| public.as_bytes().windows(16).any(|p| p == w))
    );

    // The other replica takes the key exchange; the row goes with it.
    let (wait, cke) = h
        .key_exchange(
            &sh,
            app.state.ca.root_pem(),
            &c.d,
            &c.cert,
            &random(),
            &mut rand::thread_rng(),
        )
        .unwrap();
    let (mut ch, _) = finished(&other, &c.who, &c, &id, wait, &cke).await;
    assert_eq!(stored_ephemeral(&app, &id).await, None);
    ping(&app.public, &c, &mut ch).await;
    ping(&other, &c, &mut ch).await;
    let mut via = InChannel {
        router: &app.public,
        who: &c.who.clone(),
        ch: &mut ch,
    };
    let login = terminal::login_over(&mut via, &mut c.d, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    let token = login.answer().unwrap().session_token;
    let r = via
        .request(Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(r.body["device_id"], c.d.id.to_string(), "{}", r.body);

    // On one replica, the counter says which mode opened.
    open_ecdhe(&app, &app.public, &app.public, &c).await;
    assert_eq!(opened_in(&app, "ecdhe-p256"), 1);
    assert_eq!(opened_in(&app, "rsa-transport"), 0);
    assert!(app.audited("channel.open", "success").await);
}

#[tokio::test]
async fn the_server_picks_its_preferred_mode_among_the_cards() {
    // Default: ECDHE first, RSA transport for a card that offers only it.
    let app = App::new().await;
    let c = card(&app, 92).await;
    for (offer, chosen) in [
        (vec![Mode::RsaTransport, Mode::EcdheP256], Mode::EcdheP256),
        (vec![Mode::RsaTransport], Mode::RsaTransport),
        (vec![Mode::EcdheP256], Mode::EcdheP256),
    ] {
        let (_, id, sh) = hello(&app.public, &c, &offer).await;
        let sh = ServerHello::decode(&sh).unwrap();
        assert_eq!(sh.mode, chosen);
        assert_eq!(sh.ephemeral.is_some(), chosen == Mode::EcdheP256);
        assert_eq!(
            stored_ephemeral(&app, &id).await.unwrap().is_some(),
            chosen == Mode::EcdheP256
        );
    }
}

/// (Its own test: one process sees only the SoftHSM tokens that existed
/// when it first opened the module.)
#[tokio::test]
async fn a_server_configured_for_rsa_transport_never_runs_ecdhe() {
    let app = App::with_config(|c| c.channel.modes = vec![ChannelMode::RsaTransport]).await;
    let c = card(&app, 93).await;
    let (_, _, sh) = hello(&app.public, &c, &[Mode::EcdheP256, Mode::RsaTransport]).await;
    assert_eq!(ServerHello::decode(&sh).unwrap().mode, Mode::RsaTransport);
    let only = CardHello::offering(c.d.id, random(), &[Mode::EcdheP256]);
    call(
        &app.public,
        &c.who,
        Method::POST,
        "/v1/channel/hello",
        Some(json!({"client_hello": B64.encode(only.client_hello())})),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "channel_unsupported");
}

#[tokio::test]
async fn a_tampered_ephemeral_is_the_one_refusal_and_no_point_is_malformed() {
    let app = App::new().await;
    let c = card(&app, 94).await;
    let both = [Mode::EcdheP256, Mode::RsaTransport];
    let mut answers = Vec::new();

    // The server's ephemeral replaced in transit: the card signs the hello
    // it saw, the server checks the one it sent.
    let (h, id, sh) = hello(&app.public, &c, &both).await;
    let mut swapped = ServerHello::decode(&sh).unwrap();
    swapped.ephemeral = EphemeralKey::from_bytes(&other_point());
    let (cke, _) = exchange(&app, &c, &h, &swapped.encode());
    answers.push(key_exchange(&app.public, &c, &id, &cke).await);

    // The card's ephemeral replaced after its signature.
    let (h, id, sh) = hello(&app.public, &c, &both).await;
    let (cke, point) = exchange(&app, &c, &h, &sh);
    let at = cke.windows(65).position(|w| w == point).unwrap();
    let mut altered = cke.clone();
    altered[at..at + 65].copy_from_slice(&other_point());
    answers.push(key_exchange(&app.public, &c, &id, &altered).await);
    for a in &answers {
        a.refused(StatusCode::FORBIDDEN, "channel_refused");
        assert_eq!(
            a.body["error"]["message"],
            answers[0].body["error"]["message"]
        );
    }
    assert_eq!(handshakes(&app, "refused"), 2);
    assert_eq!(opened_in(&app, "ecdhe-p256"), 0);

    // Not a point: off the curve, the all-zero "identity", compressed; or
    // the RSA-transport layout for an ECDHE hello. Malformed, and the
    // handshake waits for a good key exchange.
    let (h, id, sh) = hello(&app.public, &c, &both).await;
    let (good, point) = exchange(&app, &c, &h, &sh);
    let at = good.windows(65).position(|w| w == point).unwrap();
    let mut off = point.clone();
    off[64] ^= 1;
    let mut zero = vec![0u8; 65];
    zero[0] = 4;
    let mut compressed = point.clone();
    compressed[0] = 2 | (point[64] & 1);
    for bad in [off, zero, compressed] {
        let mut cke = good.clone();
        cke[at..at + 65].copy_from_slice(&bad);
        key_exchange(&app.public, &c, &id, &cke)
            .await
            .refused(StatusCode::BAD_REQUEST, "channel_malformed");
    }
    let rsa_layout = {
        let (cke, _) = CardKeyExchange::split_in(&good, Mode::EcdheP256).unwrap();
        CardKeyExchange {
            ephemeral: None,
            ..cke
        }
        .encode()
    };
    key_exchange(&app.public, &c, &id, &rsa_layout)
        .await
        .refused(StatusCode::BAD_REQUEST, "channel_malformed");
    key_exchange(&app.public, &c, &id, &good)
        .await
        .expect(StatusCode::OK);
    assert_eq!(opened_in(&app, "ecdhe-p256"), 1);
}

#[tokio::test]
async fn a_ticket_from_an_ecdhe_channel_resumes_on_either_replica() {
    let app = App::new().await;
    let c = card(&app, 95).await;
    let other = replica(&app).await;
    let (mut first, ticket) = open_ecdhe(&app, &app.public, &other, &c).await;
    ping(&other, &c, &mut first).await;
    let (mut ch, next) = resume(&other, &c, &ticket).await;
    ping(&app.public, &c, &mut ch).await;
    let (mut third, _) = resume(&app.public, &c, &next).await;
    ping(&other, &c, &mut third).await;
}

/// The card's ECDHE key exchange with the pre-master ciphertext, its point
/// and signature chosen by the test: the signature is over the transcript
/// with `signed_point` (the point sent unless given), or `signature`.
fn forged_ecdhe(
    hello: &CardHello,
    sh: &[u8],
    c: &Card,
    epms: Vec<u8>,
    point: EphemeralKey,
    signed_point: Option<EphemeralKey>,
    signature: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut cke = CardKeyExchange {
        certificate: c.cert.clone(),
        encrypted_pre_master: epms,
        ephemeral: Some(signed_point.unwrap_or(point)),
        signature: Vec::new(),
    };
    cke.signature = signature.unwrap_or_else(|| {
        c.d.sign_challenge(&keyward_protocol::channel::card_signature_input(
            hello.client_hello(),
            sh,
            &cke.signed_part(),
        ))
    });
    cke.ephemeral = Some(point);
    cke.encode()
}

/// The RSA mode's timing method (channel_attack.rs) over the ECDHE mode's
/// refusals: bad padding, a good pre-master of the wrong length, a
/// signature over another transcript, the card's point swapped after its
/// signature. Each runs the ECDH step; the p-values are printed, and judged
/// from `KEYWARD_TIMING_N` = 20,000 on. Every refusal's bytes are the same.
#[tokio::test]
async fn every_ecdhe_refusal_is_one_answer_in_one_time() {
    use keyward_tests::channel::encrypt_to_server;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;

    use crate::channel_attack::{env_u64, refusal_bytes, stats};

    const CLASSES: [&str; 4] = [
        "BadPadding",
        "ValidThenWrongLength",
        "BadSignature",
        "SwappedPoint",
    ];
    let seed = env_u64("KEYWARD_TIMING_SEED").unwrap_or_else(rand::random);
    let n = env_u64("KEYWARD_TIMING_N").unwrap_or(100) as usize;
    let warm_up = 10;
    println!("ecdhe timing: seed {seed}, {n} key exchanges per class");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let app = App::new().await;
    let c = card(&app, 96).await;
    let root = app.state.ca.root_pem().to_owned();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); CLASSES.len()];
    let mut first: Option<String> = None;
    for block in 0..warm_up + n {
        let mut order: Vec<usize> = (0..CLASSES.len()).collect();
        order.shuffle(&mut rng);
        for k in order {
            let (h, id, sh) = hello(&app.public, &c, &[Mode::EcdheP256]).await;
            let good = |plain: &[u8]| {
                encrypt_to_server(&sh, &root, plain, &mut rand::thread_rng()).unwrap()
            };
            let point = EphemeralKey::from_bytes(&other_point()).unwrap();
            let cke = match CLASSES[k] {
                "BadPadding" => {
                    let mut b = random::<256>();
                    b[0] = 0;
                    forged_ecdhe(&h, &sh, &c, b.to_vec(), point, None, None)
                }
                "ValidThenWrongLength" => {
                    forged_ecdhe(&h, &sh, &c, good(&random::<48>()), point, None, None)
                }
                "BadSignature" => forged_ecdhe(
                    &h,
                    &sh,
                    &c,
                    good(&random::<32>()),
                    point,
                    None,
                    Some(c.d.sign_challenge(b"another transcript")),
                ),
                _ => forged_ecdhe(
                    &h,
                    &sh,
                    &c,
                    good(&random::<32>()),
                    point,
                    EphemeralKey::from_bytes(&other_point()),
                    None,
                ),
            };
            let t = std::time::Instant::now();
            let a = key_exchange(&app.public, &c, &id, &cke).await;
            let took = t.elapsed().as_secs_f64() * 1e6;
            let bytes = refusal_bytes(&a);
            let first = first.get_or_insert_with(|| bytes.clone());
            assert_eq!(&bytes, first, "{} answers differently", CLASSES[k]);
            if block >= warm_up {
                samples[k].push(took);
            }
        }
    }
    assert!(first.is_some_and(|f| f.contains("channel_refused")));
    let report = stats::report(&CLASSES.map(String::from), &samples);
    println!("{}", report.text);
    if n >= 20_000 {
        assert!(
            report.significant.is_empty(),
            "timing differs: {:?}",
            report.significant
        );
    }
}
