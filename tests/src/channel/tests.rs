use std::fmt::Write as _;

use rsa::pkcs8::DecodePrivateKey as _;

use super::*;
use crate::purse::pems;

const ROOT: &str = include_str!("../../vectors/channel/root.pem");
const CHAIN: &str = include_str!("../../vectors/channel/chain.pem");
const CHANNEL_KEY: &str = include_str!("../../vectors/channel/channel-key.pem");
const CARD: &str = include_str!("../../vectors/channel/card.pem");

const DEVICE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// `00 01 02 …` from `start`: the trace's fixed "random" values.
fn counting<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

/// The card's fixed P-256 key of the trace: SHA-256 of a label.
fn card_device() -> SimDevice {
    use sha2::Digest as _;
    let scalar = sha2::Sha256::digest(b"keyward channel trace card key");
    let sk = p256::ecdsa::SigningKey::from_slice(&scalar).unwrap();
    SimDevice::p256_with_key(DeviceId::from_bytes(DEVICE), sk).unwrap()
}

fn server() -> SoftServer {
    SoftServer {
        key: rsa::RsaPrivateKey::from_pkcs8_pem(CHANNEL_KEY).unwrap(),
        chain: pems(CHAIN).unwrap(),
        oaep: OaepHash::Sha256,
    }
}

/// Hands out given bytes as "random" ones: the OAEP seed of the trace.
struct Fixed(Vec<u8>);

impl RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_be_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_be_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert!(dest.len() <= self.0.len(), "the fixed bytes ran out");
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Fixed {}

/// Both sides of one handshake, in software.
struct Run {
    ch: Vec<u8>,
    sh: Vec<u8>,
    cke: Vec<u8>,
    fin: Vec<u8>,
    keys: Keys,
    card: Channel,
    server: Channel,
}

fn handshake(pms: [u8; 32], rng: &mut (impl RngCore + CryptoRng)) -> Run {
    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    let srv = server();
    let hello = CardHello::new(dev.id, counting(0x00));
    let ch = hello.client_hello().to_vec();
    let sh = srv.hello(counting(0x20), ChannelId(counting(0x40)));
    let (wait, cke) = hello
        .key_exchange(&sh, ROOT, &dev, &card_cert, &pms, rng)
        .unwrap();
    let (keys, fin) = srv.finish(&ch, &sh, &cke).unwrap();
    assert_eq!(keys.h, wait.keys.h);
    let id = wait.channel;
    let card = wait.finish(&fin).unwrap();
    let server = Channel::server(id, &keys);
    Run {
        ch,
        sh,
        cke,
        fin,
        keys,
        card,
        server,
    }
}

/// The trace's fixed ephemeral P-256 keys: SHA-256 of a label each.
fn trace_ephemeral(label: &str) -> p256::SecretKey {
    use sha2::Digest as _;
    p256::SecretKey::from_slice(&sha2::Sha256::digest(label.as_bytes())).unwrap()
}

/// Both sides of one ECDHE handshake, in software, with the server's
/// ephemeral `eph` (the card's is drawn from `rng` after the OAEP seed).
fn ecdhe_handshake(
    pms: [u8; 32],
    eph: &p256::SecretKey,
    rng: &mut (impl RngCore + CryptoRng),
) -> Run {
    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    let srv = server();
    let hello = CardHello::offering(
        dev.id,
        counting(0x00),
        &[Mode::EcdheP256, Mode::RsaTransport],
    );
    let ch = hello.client_hello().to_vec();
    let sh = srv.hello_with(counting(0x20), ChannelId(counting(0x40)), Some(eph));
    let (wait, cke) = hello
        .key_exchange(&sh, ROOT, &dev, &card_cert, &pms, rng)
        .unwrap();
    let (keys, fin) = srv.finish_with(&ch, &sh, &cke, Some(eph)).unwrap();
    assert_eq!(keys.h, wait.keys.h);
    let id = wait.channel;
    let card = wait.finish(&fin).unwrap();
    let server = Channel::server(id, &keys);
    Run {
        ch,
        sh,
        cke,
        fin,
        keys,
        card,
        server,
    }
}

/// The ECDHE mode opens a channel whose master is not RSA transport's
/// under the same pre-master and transcript shape; a card that offered
/// only RSA transport refuses an ECDHE hello; a server ephemeral altered
/// in transit leaves the card with other keys, so the Finished fails.
#[test]
fn an_ecdhe_handshake_opens_a_channel_salted_by_both_ephemerals() {
    let eph = p256::SecretKey::random(&mut rand::thread_rng());
    let mut run = ecdhe_handshake([9; 32], &eph, &mut rand::thread_rng());
    let up = run.card.seal(b"ping").unwrap().remove(0);
    assert_eq!(
        run.server.open(&up).unwrap(),
        Received::Data(b"ping".to_vec())
    );
    assert_eq!(ServerHello::decode(&run.sh).unwrap().mode, Mode::EcdheP256);
    let (cke, _) = CardKeyExchange::split_in(&run.cke, Mode::EcdheP256).unwrap();
    let card_point = cke.ephemeral.unwrap();
    assert_ne!(run.keys.master, Keys::derive(&[9; 32], &run.keys.h).master);
    // The hybrid master from its parts.
    let z = ecdh(&eph, &card_point).unwrap().1;
    assert_eq!(
        run.keys.master,
        prf(
            &[9; 32],
            &channel::hybrid_master_input(&ecdhe_salt(&z, &run.keys.h), &run.keys.h)
        )
    );

    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    let rsa_only = CardHello::new(dev.id, counting(0));
    assert!(
        rsa_only
            .key_exchange(
                &run.sh,
                ROOT,
                &dev,
                &card_cert,
                &[9; 32],
                &mut rand::thread_rng()
            )
            .is_err()
    );

    let other = p256::SecretKey::random(&mut rand::thread_rng());
    let hello = CardHello::offering(dev.id, counting(0), &[Mode::EcdheP256]);
    let sh = server().hello_with(counting(0x20), ChannelId(counting(0x40)), Some(&eph));
    let swapped = server().hello_with(counting(0x20), ChannelId(counting(0x40)), Some(&other));
    let (wait, cke) = hello
        .key_exchange(
            &swapped,
            ROOT,
            &dev,
            &card_cert,
            &[9; 32],
            &mut rand::thread_rng(),
        )
        .unwrap();
    // The server, with its own hello and ephemeral, verifies the signature
    // over its hello: the swap is refused there; and were it not, the
    // Finished under the real ephemeral fails at the card.
    assert!(
        server()
            .finish_with(hello.client_hello(), &sh, &cke, Some(&eph))
            .is_err()
    );
    let (_, fin) = server()
        .finish_with(hello.client_hello(), &swapped, &cke, Some(&eph))
        .unwrap();
    assert!(wait.finish(&fin).is_err());
}

fn random_run() -> Run {
    let mut pms = [0; 32];
    rand::thread_rng().fill_bytes(&mut pms);
    handshake(pms, &mut rand::thread_rng())
}

/// FIPS-197 C.3 (AES-256) for the PRF's block, SP 800-38B D.3 for CMAC.
#[test]
fn the_primitives_match_their_published_vectors() {
    let key: [u8; 32] = counting(0);
    let mut input = [0u8; 32];
    input[..16].copy_from_slice(&hex::decode("00112233445566778899aabbccddeeff").unwrap());
    input[16..].copy_from_slice(&hex::decode("00112233445566778899aabbccddeeff").unwrap());
    assert_eq!(
        hex::encode(prf(&key, &input)),
        "8ea2b7ca516745bfeafc49904b496089".repeat(2)
    );
    let k: [u8; 32] =
        hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap()
            .try_into()
            .unwrap();
    assert_eq!(
        hex::encode(cmac(&k, &[])),
        "028962f61b7bf89efc6b551f4667d983"
    );
}

#[test]
fn a_handshake_opens_a_channel_both_ways() {
    let mut run = random_run();
    assert_eq!(
        run.card.exporter("/v1/login/start"),
        run.server.exporter("/v1/login/start")
    );
    assert_ne!(
        run.card.exporter("/v1/login/start"),
        run.card.exporter("/v1/loads")
    );
    for i in 0..5u8 {
        let up = run.card.seal(&[i; 40]).unwrap();
        assert_eq!(up.len(), 1);
        assert_eq!(
            run.server.open(&up[0]).unwrap(),
            Received::Data(vec![i; 40])
        );
        let down = run.server.seal(&[]).unwrap();
        assert_eq!(run.card.open(&down[0]).unwrap(), Received::Data(vec![]));
    }
    let close = run.card.close().unwrap();
    assert_eq!(run.server.open(&close).unwrap(), Received::Closed);
    assert!(run.card.is_closed() && run.server.is_closed());
    assert!(run.card.seal(b"late").is_err());
}

#[test]
fn the_card_encrypts_with_the_oaep_hash_the_server_hello_names() {
    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    for hash in [OaepHash::Sha1, OaepHash::Sha256, OaepHash::Pkcs1v15] {
        let srv = SoftServer {
            oaep: hash,
            ..server()
        };
        let hello = CardHello::new(dev.id, counting(0));
        let sh = srv.hello(counting(0x20), ChannelId([7; 16]));
        let (_, cke) = hello
            .key_exchange(
                &sh,
                ROOT,
                &dev,
                &card_cert,
                &[9; 32],
                &mut rand::thread_rng(),
            )
            .unwrap();
        assert!(srv.finish(hello.client_hello(), &sh, &cke).is_ok());
        let (cke, _) = CardKeyExchange::split(&cke).unwrap();
        // Under any other encryption the ciphertext does not decrypt to
        // the pre-master.
        for other in [OaepHash::Sha1, OaepHash::Sha256, OaepHash::Pkcs1v15] {
            if other != hash {
                let got = decrypt_pre_master(&srv.key, other, &cke.encrypted_pre_master);
                assert!(got.map_or(true, |p| p != [9; 32]), "{hash:?} as {other:?}");
            }
        }
    }
}

#[test]
fn a_finished_under_another_key_or_for_another_channel_is_refused() {
    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    let srv = server();
    for bad in 0..3 {
        let hello = CardHello::new(dev.id, counting(0));
        let sh = srv.hello(counting(0x20), ChannelId([7; 16]));
        let (wait, cke) = hello
            .key_exchange(
                &sh,
                ROOT,
                &dev,
                &card_cert,
                &[9; 32],
                &mut rand::thread_rng(),
            )
            .unwrap();
        let (_, fin) = srv.finish(hello.client_hello(), &sh, &cke).unwrap();
        let mut f = ServerFinished::decode(&fin).unwrap();
        match bad {
            0 => f.mac[15] ^= 1,
            1 => f.channel.0[0] ^= 1,
            _ => {
                // The server saw another transcript (a changed hello).
                let mut other = hello.client_hello().to_vec();
                other[5] ^= 1;
                f.mac = Keys::derive(&[9; 32], &channel::handshake_hash(&other, &sh, &cke))
                    .finished_mac();
            }
        }
        assert!(wait.finish(&f.encode()).is_err(), "case {bad}");
    }
}

#[test]
fn the_card_refuses_a_chain_that_is_not_a_channel_key_of_the_keyward_root() {
    let dev = card_device();
    let card_cert = pems(CARD).unwrap().remove(0);
    let chain = pems(CHAIN).unwrap();
    let hello = CardHello::new(dev.id, counting(0));
    let try_chain = |chain: Vec<Vec<u8>>, root: &str| {
        let sh = ServerHello {
            server_random: [0; 32],
            channel: ChannelId([1; 16]),
            mode: Mode::RsaTransport,
            oaep: OaepHash::Sha256,
            chain,
            ephemeral: None,
        }
        .encode();
        hello
            .key_exchange(
                &sh,
                root,
                &dev,
                &card_cert,
                &[1; 32],
                &mut rand::thread_rng(),
            )
            .map(drop)
    };
    assert!(try_chain(chain.clone(), ROOT).is_ok());
    // The root itself may travel at the chain's end.
    let root = pems(ROOT).unwrap().remove(0);
    assert!(try_chain([chain.clone(), vec![root]].concat(), ROOT).is_ok());
    let other_root = crate::webhook::test_ca().ca_pem;
    assert!(try_chain(chain.clone(), &other_root).is_err());
    // The card's own certificate: same CA, but a P-256 signing key.
    assert!(try_chain(vec![card_cert.clone(), chain[1].clone()], ROOT).is_err());
    // The leaf alone (its issuer missing).
    assert!(try_chain(vec![chain[0].clone()], ROOT).is_err());
    // An ECDHE answer to an RSA-only hello.
    let sh = ServerHello {
        server_random: [0; 32],
        channel: ChannelId([1; 16]),
        mode: Mode::EcdheP256,
        oaep: OaepHash::Sha256,
        chain,
        ephemeral: EphemeralKey::from_bytes(
            &[
                vec![4],
                hex::decode("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296")
                    .unwrap(),
                hex::decode("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5")
                    .unwrap(),
            ]
            .concat(),
        ),
    }
    .encode();
    assert!(
        hello
            .key_exchange(
                &sh,
                ROOT,
                &dev,
                &card_cert,
                &[1; 32],
                &mut rand::thread_rng()
            )
            .is_err()
    );
}

#[test]
fn the_server_refuses_a_signature_over_another_transcript() {
    let run = random_run();
    let srv = server();
    let mut other_ch = run.ch.clone();
    other_ch[5] ^= 1;
    assert!(srv.finish(&other_ch, &run.sh, &run.cke).is_err());
    let mut cke = CardKeyExchange::decode(&run.cke).unwrap();
    let n = cke.signature.len();
    cke.signature[n - 1] ^= 1;
    assert!(srv.finish(&run.ch, &run.sh, &cke.encode()).is_err());
    assert!(srv.finish(&run.ch, &run.sh, &run.cke).is_ok());
}

/// Replayed, reordered, altered, truncated, foreign records, and any record
/// after close: each closes the channel with the one error.
#[test]
fn any_record_but_the_next_intact_one_closes_the_channel() {
    let mut other = random_run();
    let foreign = other.card.seal(b"x").unwrap().remove(0);
    type Mutate = fn(&mut Vec<Vec<u8>>, &[u8]) -> Vec<u8>;
    let cases: [(&str, Mutate); 7] = [
        ("replayed", |sent, _| sent[0].clone()),
        ("reordered", |sent, _| sent[2].clone()),
        ("altered", |sent, _| {
            let mut r = sent[1].clone();
            let n = r.len();
            r[n - 20] ^= 1;
            r
        }),
        ("header altered", |sent, _| {
            let mut r = sent[1].clone();
            r[21] = RecordType::Close as u8;
            r
        }),
        ("truncated", |sent, _| {
            let r = &sent[1];
            r[..r.len() - 1].to_vec()
        }),
        ("tag cut", |sent, _| {
            let mut r = Record::decode(&sent[1]).unwrap();
            r.ciphertext.truncate(r.ciphertext.len() - 16);
            r.ciphertext.extend_from_slice(&[0; 16]);
            r.encode()
        }),
        ("foreign", |_, foreign| foreign.to_vec()),
    ];
    for (what, mutate) in cases {
        let mut run = random_run();
        let mut sent: Vec<Vec<u8>> = (0..3)
            .map(|i| run.card.seal(&[i; 24]).unwrap().remove(0))
            .collect();
        assert!(run.server.open(&sent[0]).is_ok());
        let bad = mutate(&mut sent, &foreign);
        let e = run.server.open(&bad).unwrap_err();
        assert_eq!(e.to_string(), "the channel is closed", "{what}");
        assert!(run.server.is_closed(), "{what}");
        // Closed for good: even the genuine next record is refused now.
        assert!(run.server.open(&sent[1]).is_err(), "{what}");
    }
    let mut run = random_run();
    let close = run.card.close().unwrap();
    run.server.open(&close).unwrap();
    let late = run.server.seal(b"x");
    assert!(late.is_err());
}

#[test]
fn each_direction_rekeys_on_its_own() {
    let mut run = random_run();
    let first = run.card.seal(b"a").unwrap();
    run.server.open(&first[0]).unwrap();
    let update = run.card.update_key().unwrap();
    assert_eq!(run.card.send_state(), (1, 0));
    assert_eq!(run.server.open(&update).unwrap(), Received::KeyUpdated);
    let after = run.card.seal(b"b").unwrap();
    assert_eq!(Record::decode(&after[0]).unwrap().sequence, 0);
    assert_eq!(
        run.server.open(&after[0]).unwrap(),
        Received::Data(b"b".to_vec())
    );
    // The server's direction is still on generation 0.
    assert_eq!(run.server.send_state(), (0, 0));
    let down = run.server.seal(b"c").unwrap();
    assert_eq!(
        run.card.open(&down[0]).unwrap(),
        Received::Data(b"c".to_vec())
    );
    // A key past its age: seal sends the update first.
    run.server.max_key_age = Duration::ZERO;
    let two = run.server.seal(b"d").unwrap();
    assert_eq!(two.len(), 2);
    assert_eq!(run.card.open(&two[0]).unwrap(), Received::KeyUpdated);
    assert_eq!(
        run.card.open(&two[1]).unwrap(),
        Received::Data(b"d".to_vec())
    );
    // A record under the old key once the peer moved on is refused, even
    // with the sequence number the receiver expects.
    let mut run = random_run();
    let mut old = run.card.clone();
    let update = run.card.update_key().unwrap();
    run.server.open(&update).unwrap();
    let stale = old.seal(b"e").unwrap().remove(0);
    assert_eq!(Record::decode(&stale).unwrap().sequence, 0);
    assert!(run.server.open(&stale).is_err());
}

/// A ticket from one channel resumes into a new one whose keys both sides
/// share; a wrong binder (another secret) is refused; the resumed channel
/// gives its own next ticket with a different secret.
#[test]
fn a_ticket_resumes_into_a_new_channel() {
    let run = random_run();
    let srv = server();
    let dev = DeviceId::from_bytes(DEVICE);
    let nt = NewTicket {
        channel: run.card.id,
        ticket: [7; 16],
        lifetime: 60,
    }
    .encode();
    let ticket = run.card.ticket(&nt, dev).unwrap();
    assert_eq!(ticket.secret, run.keys.resumption);
    let resume = CardResume::new(&ticket, counting(0x10));
    let (sh, keys, fin) = srv
        .resume(
            &run.keys.resumption,
            resume.resume_hello(),
            counting(0x30),
            ChannelId([9; 16]),
        )
        .unwrap();
    assert!(
        srv.resume(
            &[1; 32],
            resume.resume_hello(),
            counting(0x30),
            ChannelId([9; 16])
        )
        .is_err()
    );
    let mut card = resume.finish(&sh, &fin).unwrap();
    let mut server = Channel::server(ChannelId([9; 16]), &keys);
    let up = card.seal(b"resumed").unwrap().remove(0);
    assert_eq!(
        server.open(&up).unwrap(),
        Received::Data(b"resumed".to_vec())
    );
    assert_ne!(keys.resumption, run.keys.resumption);
    assert_ne!(keys.c2s, run.keys.c2s);
    // A ticket of another channel, and a Finished of another transcript.
    let other = NewTicket {
        channel: ChannelId([1; 16]),
        ticket: [7; 16],
        lifetime: 60,
    }
    .encode();
    assert!(run.card.ticket(&other, dev).is_err());
    let resume = CardResume::new(&ticket, counting(0x11));
    assert!(resume.finish(&sh, &fin).is_err());
}

/// The worked trace of docs/protocol.md §14.6: one whole handshake with
/// fixed inputs, every intermediate value, one record each way. The doc
/// must contain this text exactly.
#[test]
fn worked_trace_in_the_docs() {
    let pms: [u8; 32] = counting(0x50);
    let seed: [u8; 32] = counting(0x70);
    let mut run = handshake(pms, &mut Fixed(seed.to_vec()));
    let k = &run.keys;
    let h = k.h;
    let mut t = String::new();
    let mut line = |name: &str, bytes: &[u8]| {
        let hex = hex::encode(bytes);
        let mut chunks = hex.as_bytes().chunks(64);
        let first = std::str::from_utf8(chunks.next().unwrap_or_default()).unwrap();
        writeln!(t, "{name:<22}{first}").unwrap();
        for c in chunks {
            writeln!(t, "{:<22}{}", "", std::str::from_utf8(c).unwrap()).unwrap();
        }
    };
    line("client_random", &counting::<32>(0x00));
    line("server_random", &counting::<32>(0x20));
    line("channel_id", &counting::<16>(0x40));
    line("pre_master (PMS)", &pms);
    line("oaep_seed", &seed);
    line("ClientHello", &run.ch);
    line("ServerHello", &run.sh);
    let (cke, signed) = CardKeyExchange::split(&run.cke).unwrap();
    line("encrypted_pre_master", &cke.encrypted_pre_master);
    let sig_input = channel::card_signature_input(&run.ch, &run.sh, signed);
    line("card_signature_input", &sig_input);
    line("card_signature", &cke.signature);
    line("CardKeyExchange", &run.cke);
    line("H", &h);
    line("D_ms", &channel::master_input(&h));
    line("MS", &k.master);
    for (l, key) in [
        (Label::C2sKey, &k.c2s),
        (Label::S2cKey, &k.s2c),
        (Label::Finished, &k.finished),
        (Label::Exporter, &k.exporter),
        (Label::Resumption, &k.resumption),
    ] {
        line(&format!("D[{}]", l.as_str()), &channel::label_input(l, &h));
        line(&format!("K[{}]", l.as_str()), key);
    }
    line("iv_c2s", &k.iv_c2s);
    line("iv_s2c", &k.iv_s2c);
    line("ServerFinished", &run.fin);
    let up = run.card.seal(b"{\"ping\":1}").unwrap().remove(0);
    line("c2s record 0 nonce", &channel::nonce(&k.iv_c2s, 0));
    line("c2s record 0", &up);
    assert_eq!(
        run.server.open(&up).unwrap(),
        Received::Data(b"{\"ping\":1}".to_vec())
    );
    let down = run.server.seal(b"{\"pong\":1}").unwrap().remove(0);
    line("s2c record 0 nonce", &channel::nonce(&k.iv_s2c, 0));
    line("s2c record 0", &down);
    assert_eq!(
        run.card.open(&down).unwrap(),
        Received::Data(b"{\"pong\":1}".to_vec())
    );
    line(
        "exporter_context",
        &channel::exporter_context("/v1/login/start"),
    );
    line("E(/v1/login/start)", &run.card.exporter("/v1/login/start"));
    line("rekey_input(1)", &channel::rekey_input(1));
    line("K[c2s key] gen 1", &prf(&k.c2s, &channel::rekey_input(1)));

    // Resumption with this channel's ticket.
    let ticket_handle: [u8; 16] = counting(0x90);
    let nt = NewTicket {
        channel: run.card.id,
        ticket: ticket_handle,
        lifetime: 86_400,
    }
    .encode();
    line("NewTicket", &nt);
    let ticket = run.card.ticket(&nt, DeviceId::from_bytes(DEVICE)).unwrap();
    line("r.client_random", &counting::<32>(0xa0));
    line("r.server_random", &counting::<32>(0xc0));
    line("r.channel_id", &counting::<16>(0xe0));
    line("D_binder", &channel::binder_input());
    line("K_binder", &prf(&k.resumption, &channel::binder_input()));
    let resume = CardResume::new(&ticket, counting(0xa0));
    line("ResumeHello", resume.resume_hello());
    let (rsh, rk, rfin) = server()
        .resume(
            &k.resumption,
            resume.resume_hello(),
            counting(0xc0),
            ChannelId(counting(0xe0)),
        )
        .unwrap();
    line("r.ServerHello", &rsh);
    line("r.H", &rk.h);
    line("r.D_ms", &channel::resumption_master_input(&rk.h));
    line("r.MS", &rk.master);
    for (l, key) in [
        (Label::C2sKey, &rk.c2s),
        (Label::S2cKey, &rk.s2c),
        (Label::Finished, &rk.finished),
        (Label::Exporter, &rk.exporter),
        (Label::Resumption, &rk.resumption),
    ] {
        line(&format!("r.K[{}]", l.as_str()), key);
    }
    line("r.iv_c2s", &rk.iv_c2s);
    line("r.iv_s2c", &rk.iv_s2c);
    line("r.ServerFinished", &rfin);
    resume.finish(&rsh, &rfin).unwrap();

    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
    )
    .unwrap();
    let block = format!("```text\n{t}```\n");
    if !doc.contains(&block) {
        let out = std::env::temp_dir().join("keyward-channel-trace.txt");
        std::fs::write(&out, &block).unwrap();
        panic!(
            "docs/protocol.md §14.6 does not hold the trace; the trace is in {}",
            out.display()
        );
    }
}

/// The worked trace of the ECDHE mode (docs/protocol.md §14.6, second
/// block): the same fixtures and "random" inputs, and two fixed ephemeral
/// keys; every value the mode adds, then the schedule to the Finished.
#[test]
fn worked_ecdhe_trace_in_the_docs() {
    let pms: [u8; 32] = counting(0x50);
    let seed: [u8; 32] = counting(0x70);
    let server_eph = trace_ephemeral("keyward channel trace server ephemeral");
    let card_eph = trace_ephemeral("keyward channel trace card ephemeral");
    let rng = [seed.as_slice(), card_eph.to_bytes().as_slice()].concat();
    let run = ecdhe_handshake(pms, &server_eph, &mut Fixed(rng));
    let k = &run.keys;
    let h = k.h;
    let mut t = String::new();
    let mut line = |name: &str, bytes: &[u8]| {
        let hex = hex::encode(bytes);
        let mut chunks = hex.as_bytes().chunks(64);
        let first = std::str::from_utf8(chunks.next().unwrap_or_default()).unwrap();
        writeln!(t, "{name:<22}{first}").unwrap();
        for c in chunks {
            writeln!(t, "{:<22}{}", "", std::str::from_utf8(c).unwrap()).unwrap();
        }
    };
    line("pre_master (PMS)", &pms);
    line("oaep_seed", &seed);
    line("server_ephemeral_key", &server_eph.to_bytes());
    line("card_ephemeral_key", &card_eph.to_bytes());
    line("ClientHello", &run.ch);
    line("ServerHello", &run.sh);
    let (cke, signed) = CardKeyExchange::split_in(&run.cke, Mode::EcdheP256).unwrap();
    let sh = ServerHello::decode(&run.sh).unwrap();
    line("server_ephemeral", sh.ephemeral.unwrap().as_bytes());
    line("card_ephemeral", cke.ephemeral.unwrap().as_bytes());
    line("encrypted_pre_master", &cke.encrypted_pre_master);
    line(
        "card_signature_input",
        &channel::card_signature_input(&run.ch, &run.sh, signed),
    );
    line("card_signature", &cke.signature);
    line("CardKeyExchange", &run.cke);
    let (_, z) = ecdh(&server_eph, &cke.ephemeral.unwrap()).unwrap();
    assert_eq!(ecdh(&card_eph, &sh.ephemeral.unwrap()).unwrap().1, z);
    line("Z (ECDH x)", &z);
    line("H", &h);
    line("D_ms", &channel::master_input(&h));
    let c = ecdhe_salt(&z, &h);
    line("C", &c);
    line("D_hybrid", &channel::hybrid_master_input(&c, &h));
    line("MS", &k.master);
    for (l, key) in [
        (Label::C2sKey, &k.c2s),
        (Label::S2cKey, &k.s2c),
        (Label::Finished, &k.finished),
        (Label::Exporter, &k.exporter),
        (Label::Resumption, &k.resumption),
    ] {
        line(&format!("K[{}]", l.as_str()), key);
    }
    line("iv_c2s", &k.iv_c2s);
    line("iv_s2c", &k.iv_s2c);
    line("ServerFinished", &run.fin);

    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
    )
    .unwrap();
    let block = format!("<!-- channel-trace-ecdhe -->\n```text\n{t}```\n");
    if !doc.contains(&block) {
        let out = std::env::temp_dir().join("keyward-channel-trace-ecdhe.txt");
        std::fs::write(&out, &block).unwrap();
        panic!(
            "docs/protocol.md §14.6 does not hold the ECDHE trace; it is in {}",
            out.display()
        );
    }
}

/// Writes the certificates and the channel key of the worked trace (test
/// only, never a real key): `cargo test -p keyward-tests --lib
/// write_channel_fixtures -- --ignored`. Regenerating them changes the
/// trace, so docs/protocol.md §14.6 with it.
#[test]
#[ignore = "regenerates tests/vectors/channel/"]
fn write_channel_fixtures() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rsa::pkcs8::EncodePrivateKey as _;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors/channel");
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let root = CertifiedIssuer::self_signed(
        ca("Keyward Test Root (channel trace)"),
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let issuing_key = KeyPair::generate().unwrap();
    let issuing = CertifiedIssuer::signed_by(
        ca("Keyward Test Issuing CA (channel trace)"),
        issuing_key,
        &root,
    )
    .unwrap();

    let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let pkcs8 = rsa_key.to_pkcs8_der().unwrap();
    let leaf_key =
        KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_bytes().into(), &rcgen::PKCS_RSA_SHA256)
            .unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "keyward channel (trace)");
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let leaf = p.signed_by(&leaf_key, &issuing).unwrap();

    let dev = card_device();
    let card_key = KeyPair::from_pkcs8_der_and_sign_algo(
        &dev.private_key_pkcs8().unwrap().as_slice().into(),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, dev.id.to_string());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let card = p.signed_by(&card_key, &issuing).unwrap();

    std::fs::write(dir.join("root.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), leaf.pem() + &issuing.pem()).unwrap();
    std::fs::write(
        dir.join("channel-key.pem"),
        rsa_key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .as_str(),
    )
    .unwrap();
    std::fs::write(dir.join("card.pem"), card.pem()).unwrap();
}
