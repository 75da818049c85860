//! The secure channel with PKCS#1 v1.5 key transport
//! (`channel.padding = "pkcs1v15"`, docs/security.md §1): the ServerHello
//! names byte `03`, a card opens a channel and carries a ping and a login;
//! every ciphertext that does not give a 32-byte pre-master (bad padding, a
//! 31- or 34-byte plaintext, a wrong length, a value ≥ the modulus) is
//! answered as a good one is — a ServerFinished, which the card cannot
//! verify — and the channel then refuses the card's record with the bytes
//! of any other record refusal. A bad signature or certificate is still the
//! one `channel_refused`.

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_config::ChannelPadding;
use keyward_protocol::channel::{self, OaepHash, ServerHello};
use keyward_tests::channel::{AwaitFinished, Keys, encrypt_to_server};
use keyward_tests::terminal::{self, Caller as _, LoginOptions};
use serde_json::Value;

use crate::channel::{
    Card, InChannel, card, forged, handshakes, key_exchange, lookalike, open, ping, random,
    say_hello, send,
};
use crate::harness::{Answer, App};

pub(crate) async fn pkcs1_app() -> App {
    App::with_config(|c| c.channel.padding = ChannelPadding::Pkcs1v15).await
}

/// What a key exchange the server took looks like, whatever its
/// pre-master: the fields, and the length of each value.
pub(crate) fn shape(a: &Answer) -> Vec<(String, usize)> {
    let b = a.expect(StatusCode::OK);
    let mut out: Vec<(String, usize)> = b
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let len = match v {
                Value::String(s) => B64.decode(s).map_or(s.len(), |d| d.len()),
                other => other.to_string().len(),
            };
            (k.clone(), len)
        })
        .collect();
    out.sort();
    out
}

/// The refusal's bytes without its request id.
fn refusal_bytes(a: &Answer) -> String {
    let mut b = a.body.clone();
    if let Some(e) = b.get_mut("error").and_then(|e| e.as_object_mut()) {
        e.remove("request_id");
    }
    format!("{} {b}", a.status)
}

#[tokio::test]
async fn a_pkcs1_v15_channel_opens_and_carries_a_ping_and_a_login() {
    let app = pkcs1_app().await;
    let mut c = card(&app, 91).await;
    let (_, _, sh) = say_hello(&app.public, &c).await;
    assert_eq!(sh[55], 3, "the encryption byte");
    assert_eq!(ServerHello::decode(&sh).unwrap().oaep, OaepHash::Pkcs1v15);

    let mut ch = open(&app, &app.public, &app.public, &c).await;
    ping(&app.public, &c, &mut ch).await;
    let mut via = InChannel {
        router: &app.public,
        who: &c.who,
        ch: &mut ch,
    };
    let login = terminal::login_over(&mut via, &mut c.d, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    assert_eq!(login.finish.status, StatusCode::OK, "{}", login.finish.body);
    let token = login.answer().unwrap().session_token;
    let r = via
        .request(Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(r.body["device_id"], c.d.id.to_string(), "{}", r.body);
    assert!(app.audited("channel.open", "success").await);
}

/// The ciphertext classes of PKCS#1 v1.5 that must not tell the server's
/// checks apart (shared with the timing test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum V15 {
    /// A good ciphertext of a 32-byte pre-master.
    Valid,
    /// Random bytes below the modulus: bad padding.
    BadPadding,
    /// Good padding around 31 bytes.
    Plaintext31,
    /// Good padding around a TLS-style 34-byte pre-master (version bytes
    /// `03 03` first): a wrong length here.
    BadVersion34,
    /// 255 bytes for a 256-byte modulus.
    WrongLength,
    /// All ones: not below the modulus.
    AboveModulus,
}

pub(crate) const V15_CLASSES: [V15; 6] = [
    V15::Valid,
    V15::BadPadding,
    V15::Plaintext31,
    V15::BadVersion34,
    V15::WrongLength,
    V15::AboveModulus,
];

/// A key exchange of `class` for the handshake `sh`, properly signed, and
/// what the card would expect of the ServerFinished: the keys of the
/// pre-master it meant (for the 34-byte plaintext, its last 32 bytes).
pub(crate) fn v15_key_exchange(
    app: &App,
    c: &Card,
    hello: &keyward_tests::channel::CardHello,
    sh: &[u8],
    class: V15,
) -> (AwaitFinished, Vec<u8>) {
    let root = app.state.ca.root_pem();
    let pms = random::<32>();
    let enc = |plain: &[u8]| encrypt_to_server(sh, root, plain, &mut rand::thread_rng()).unwrap();
    let epms = match class {
        V15::Valid => enc(&pms),
        V15::BadPadding => {
            let mut b = random::<256>();
            b[0] = 0;
            b.to_vec()
        }
        V15::Plaintext31 => enc(&pms[..31]),
        V15::BadVersion34 => enc(&[&[3, 3][..], &pms[..]].concat()),
        V15::WrongLength => random::<255>().to_vec(),
        V15::AboveModulus => vec![0xff; 256],
    };
    let cke = forged(hello, sh, &c.d, c.cert.clone(), epms, None);
    let h = channel::handshake_hash(hello.client_hello(), sh, &cke);
    let wait = AwaitFinished {
        channel: ServerHello::decode(sh).unwrap().channel,
        keys: Keys::derive(&pms, &h),
    };
    (wait, cke)
}

async fn v15_round(app: &App, c: &Card, class: V15) -> (Answer, Option<Answer>) {
    let (hello, id, sh) = say_hello(&app.public, c).await;
    let (wait, cke) = v15_key_exchange(app, c, &hello, &sh, class);
    let a = key_exchange(&app.public, c, &id, &cke).await;
    let fin = B64
        .decode(
            a.expect(StatusCode::OK)["server_finished"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    if class == V15::Valid {
        assert!(wait.finish(&fin).is_ok(), "a good v1.5 pre-master");
        return (a, None);
    }
    // The card cannot verify the ServerFinished; a record it sends anyway
    // (under the keys it meant) is refused and closes the channel.
    let keys = wait.keys.clone();
    let channel = wait.channel;
    assert!(
        wait.finish(&fin).is_err(),
        "{class:?}: the Finished verified"
    );
    let mut ch = keyward_tests::channel::Channel::card(channel, &keys);
    let up = ch.seal(&crate::channel::ping_of(&ch)).unwrap().remove(0);
    let r = send(&app.public, c, &up).await;
    (a, Some(r))
}

#[tokio::test]
async fn every_bad_pkcs1_v15_ciphertext_is_answered_as_a_good_one_then_refused_as_any_record() {
    let app = pkcs1_app().await;
    let c = card(&app, 92).await;
    let mut shapes = Vec::new();
    let mut refusals = Vec::new();
    for class in V15_CLASSES {
        let (a, r) = v15_round(&app, &c, class).await;
        shapes.push((class, shape(&a)));
        if let Some(r) = r {
            r.refused(StatusCode::FORBIDDEN, "channel_closed");
            refusals.push((class, refusal_bytes(&r)));
        }
    }
    for (class, s) in &shapes {
        assert_eq!(s, &shapes[0].1, "{class:?} is answered differently");
    }
    // A record refused on a channel that opened with the card's keys: the
    // same bytes as after a bad ciphertext.
    let mut ch = open(&app, &app.public, &app.public, &c).await;
    let up = ch.seal(&crate::channel::ping_of(&ch)).unwrap().remove(0);
    let mut bad = up.clone();
    *bad.last_mut().unwrap() ^= 1;
    let r = send(&app.public, &c, &bad).await;
    let reference = refusal_bytes(&r);
    for (class, bytes) in &refusals {
        assert_eq!(bytes, &reference, "{class:?}");
    }
    assert_eq!(handshakes(&app, "opened"), V15_CLASSES.len() as u64 + 1);
    assert_eq!(handshakes(&app, "refused"), 0);
}

/// The card's signature and certificate are checked as with OAEP: one
/// refusal, the same bytes, whatever the ciphertext.
#[tokio::test]
async fn a_bad_signature_or_certificate_is_still_the_one_refusal() {
    let app = pkcs1_app().await;
    let c = card(&app, 93).await;
    let mut answers = Vec::new();
    for ciphertext in [V15::Valid, V15::BadPadding] {
        let (hello, id, sh) = say_hello(&app.public, &c).await;
        let (_, good) = v15_key_exchange(&app, &c, &hello, &sh, ciphertext);
        let epms = keyward_protocol::channel::CardKeyExchange::decode(&good)
            .unwrap()
            .encrypted_pre_master;
        let bad_sig = forged(
            &hello,
            &sh,
            &c.d,
            c.cert.clone(),
            epms.clone(),
            Some(c.d.sign_challenge(b"another transcript")),
        );
        answers.push(key_exchange(&app.public, &c, &id, &bad_sig).await);
        let (hello, id, sh) = say_hello(&app.public, &c).await;
        let other = forged(&hello, &sh, &c.d, lookalike(&c), epms, None);
        answers.push(key_exchange(&app.public, &c, &id, &other).await);
    }
    for a in &answers {
        a.refused(StatusCode::FORBIDDEN, "channel_refused");
        assert_eq!(refusal_bytes(a), refusal_bytes(&answers[0]));
    }
    assert_eq!(handshakes(&app, "refused"), 4);
}

/// SoftHSM pads a key of 25 to 31 bytes with zeros before RFC 3394 key
/// wrap, so the wrap's length alone took such a pre-master for 32 bytes and
/// the key schedule then failed (`501 hsm_mechanism_missing`): an answer of
/// its own for those lengths, with OAEP as with PKCS#1 v1.5. Every length
/// but 32 is now the one refusal.
#[tokio::test]
async fn an_oaep_pre_master_of_any_length_but_32_is_the_one_refusal() {
    let app = App::new().await;
    let c = card(&app, 94).await;
    let mut refusals = Vec::new();
    for len in [31usize, 30, 25, 24, 16, 33, 40] {
        let (hello, id, sh) = say_hello(&app.public, &c).await;
        let plain = vec![7u8; len];
        let root = app.state.ca.root_pem();
        let epms = encrypt_to_server(&sh, root, &plain, &mut rand::thread_rng()).unwrap();
        let cke = forged(&hello, &sh, &c.d, c.cert.clone(), epms, None);
        let a = key_exchange(&app.public, &c, &id, &cke).await;
        a.refused(StatusCode::FORBIDDEN, "channel_refused");
        refusals.push(refusal_bytes(&a));
    }
    assert!(refusals.iter().all(|r| r == &refusals[0]));
}
