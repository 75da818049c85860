use proptest::prelude::*;

use super::*;

fn client_hello() -> ClientHello {
    ClientHello {
        client_random: [0xc1; 32],
        versions: vec![1],
        modes: vec![1, 2],
        device: [1, 2, 3, 4, 5, 6, 7, 8],
    }
}

fn server_hello() -> ServerHello {
    ServerHello {
        server_random: [0x5e; 32],
        channel: ChannelId([0xcd; 16]),
        mode: Mode::RsaTransport,
        oaep: OaepHash::Sha256,
        chain: vec![vec![0x30, 0x01], vec![0x30, 0x02, 0x03]],
        ephemeral: None,
    }
}

fn card_key_exchange() -> CardKeyExchange {
    CardKeyExchange {
        certificate: vec![0x30; 3],
        encrypted_pre_master: vec![0xee; 4],
        ephemeral: None,
        signature: vec![0x51; 2],
    }
}

fn record() -> Record {
    Record {
        channel: ChannelId([0xcd; 16]),
        kind: RecordType::Data,
        sequence: 7,
        ciphertext: vec![0xab; 20],
    }
}

fn malformed(what: &'static str) -> Result<(), ProtocolError> {
    Err(ProtocolError::ChannelMalformed(what))
}

/// Every message of a small example, byte for byte.
#[test]
fn layouts_byte_for_byte() {
    assert_eq!(
        hex::encode(client_hello().encode()),
        concat!(
            "4b574331",
            "01",
            "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1",
            "0101",
            "020102",
            "0102030405060708",
        )
    );
    assert_eq!(
        hex::encode(server_hello().encode()),
        concat!(
            "4b574332",
            "01",
            "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "01",
            "01",
            "02",
            "0002",
            "00023001",
            "0003300203",
        )
    );
    let cke = card_key_exchange();
    assert_eq!(
        hex::encode(cke.encode()),
        concat!("4b574333", "01", "0003303030", "0004eeeeeeee", "00025151")
    );
    assert_eq!(
        hex::encode(cke.signed_part()),
        "4b574333010003303030".to_owned() + "0004eeeeeeee"
    );
    let fin = ServerFinished {
        channel: ChannelId([0xcd; 16]),
        mac: [0xf1; 16],
    };
    assert_eq!(
        hex::encode(fin.encode()),
        concat!(
            "4b574334",
            "01",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1"
        )
    );
    let r = record();
    assert_eq!(
        hex::encode(r.aad()),
        concat!(
            "4b574352",
            "01",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "01",
            "0000000000000007"
        )
    );
    assert_eq!(
        hex::encode(r.encode()),
        hex::encode(r.aad()) + "00000014" + &"ab".repeat(20)
    );
}

#[test]
fn every_message_round_trips() {
    let ch = client_hello();
    assert_eq!(ClientHello::decode(&ch.encode()), Ok(ch));
    let sh = server_hello();
    assert_eq!(ServerHello::decode(&sh.encode()), Ok(sh));
    let cke = card_key_exchange();
    let bytes = cke.encode();
    let (decoded, signed) = CardKeyExchange::split(&bytes).unwrap();
    assert_eq!(decoded, cke);
    assert_eq!(signed, cke.signed_part().as_slice());
    let fin = ServerFinished {
        channel: ChannelId([9; 16]),
        mac: [8; 16],
    };
    assert_eq!(ServerFinished::decode(&fin.encode()), Ok(fin));
    let r = record();
    assert_eq!(Record::decode(&r.encode()), Ok(r));
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    type Decode = fn(&[u8]) -> Result<(), ProtocolError>;
    let cases: [(Vec<u8>, Decode, &str); 5] = [
        (
            client_hello().encode(),
            |b| ClientHello::decode(b).map(drop),
            "client hello",
        ),
        (
            server_hello().encode(),
            |b| ServerHello::decode(b).map(drop),
            "server hello",
        ),
        (
            card_key_exchange().encode(),
            |b| CardKeyExchange::decode(b).map(drop),
            "card key exchange",
        ),
        (
            ServerFinished {
                channel: ChannelId([0; 16]),
                mac: [0; 16],
            }
            .encode(),
            |b| ServerFinished::decode(b).map(drop),
            "server finished",
        ),
        (record().encode(), |b| Record::decode(b).map(drop), "record"),
    ];
    for (bytes, decode, what) in cases {
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{what}: {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), malformed(what), "{what}");
        let mut magic = bytes.clone();
        magic[3] ^= 0x20;
        assert!(decode(&magic).is_err(), "{what}");
        let mut version = bytes.clone();
        version[4] = 2;
        assert!(decode(&version).is_err(), "{what}");
    }
}

#[test]
fn one_code_for_every_malformed_message() {
    let mut b = record().encode();
    b[4] = 2;
    let e = Record::decode(&b).unwrap_err();
    assert_eq!(e.code(), "channel_malformed");
    assert_eq!(
        ServerHello::decode(&client_hello().encode())
            .unwrap_err()
            .code(),
        "channel_malformed"
    );
}

#[test]
fn hello_lists_are_strict_but_keep_unknown_values() {
    let mut ch = client_hello();
    ch.versions = vec![1, 9];
    ch.modes = vec![7, 1];
    let back = ClientHello::decode(&ch.encode()).unwrap();
    assert_eq!(
        back.negotiate(&[Mode::RsaTransport]),
        Some(Mode::RsaTransport)
    );
    assert_eq!(back.negotiate(&[Mode::EcdheP256]), None);
    ch.versions = vec![2];
    assert_eq!(ch.negotiate(&[Mode::RsaTransport]), None);

    let bytes = client_hello().encode();
    // Versions: count 0, count 9, a zero value, a repeated value.
    for (at, v) in [(37, 0u8), (37, 9), (38, 0)] {
        let mut b = bytes.clone();
        b[at] = v;
        assert_eq!(ClientHello::decode(&b).map(drop), malformed("client hello"));
    }
    let mut b = bytes.clone();
    b[41] = 1; // modes [1, 1]
    assert_eq!(ClientHello::decode(&b).map(drop), malformed("client hello"));
}

#[test]
fn a_server_hello_names_version_1_a_known_mode_and_hash_and_one_to_four_certificates() {
    let bytes = server_hello().encode();
    assert_eq!(bytes[55], 2);
    for (at, v) in [
        (53, 2u8),
        (54, 0),
        (54, 3),
        (55, 0),
        (55, 4),
        (57, 0),
        (57, 5),
    ] {
        let mut b = bytes.clone();
        b[at] = v;
        assert_eq!(
            ServerHello::decode(&b).map(drop),
            malformed("server hello"),
            "{at}"
        );
    }
    // An empty certificate.
    let mut b = bytes[..58].to_vec();
    b[57] = 1;
    b.extend_from_slice(&[0, 0]);
    assert_eq!(ServerHello::decode(&b).map(drop), malformed("server hello"));
}

#[test]
fn a_record_has_a_known_type_and_at_least_a_tag() {
    let bytes = record().encode();
    for t in [0u8, 4, 255] {
        let mut b = bytes.clone();
        b[21] = t;
        assert_eq!(Record::decode(&b).map(drop), malformed("record"));
    }
    let mut short = record();
    short.ciphertext.truncate(TAG_LEN);
    assert!(Record::decode(&short.encode()).is_ok());
    let mut b = short.encode();
    b.pop();
    b[33] = 15;
    assert_eq!(Record::decode(&b).map(drop), malformed("record"));
    let mut max = record();
    max.ciphertext = vec![0; MAX_PLAINTEXT + TAG_LEN];
    assert_eq!(max.encode().len(), MAX_RECORD);
    assert!(Record::decode(&max.encode()).is_ok());
}

#[test]
fn debug_shows_lengths_not_bytes() {
    let shown = format!("{:?} {:?}", card_key_exchange(), record());
    assert!(!shown.contains("238") && !shown.contains("171"), "{shown}");
    assert!(shown.contains("ciphertext_len: 20"));
}

/// The schedule's inputs for `H` = 32 bytes of 0x11, checked against an
/// independent SHA-256 (Python's hashlib).
#[test]
fn schedule_inputs_are_the_documented_hashes() {
    let h = [0x11; 32];
    assert_eq!(
        hex::encode(master_input(&h)),
        "a26975c81ae837a836f1296123471e8fd5876f72c3f93f9bce1e611192dba415"
    );
    let expected = [
        "1356391b34cd9fc7c1cefccea5c693ed8ae8d27be5333383b473d9951f2faff9",
        "a2c35d1989ccd0772dd0c624ecd0b80b791714af9d25584ed8accfc3340b702e",
        "a2b86d18677ae90acf72a6b5df9b383924bcd7a710eea6ba75dd8c89aafecbe9",
        "53d6db889c1d006e417745f7d8ccada2adbcc75a93cdfe2666d3a0d14d03a31d",
        "c4cfdb50ce2b8304f123566c8da230b52ad8c79ee73506c55e29dd823a10fea1",
    ];
    for (l, e) in Label::ALL.into_iter().zip(expected) {
        assert_eq!(hex::encode(label_input(l, &h)), e, "{l:?}");
    }
    assert_eq!(
        hex::encode(iv(Direction::C2s, &h)),
        "efb3034a23e84c413c769fa5"
    );
    assert_eq!(
        hex::encode(iv(Direction::S2c, &h)),
        "fa17434dbf0352425b59cd5a"
    );
    assert_eq!(
        hex::encode(rekey_input(1)),
        "9ca4fc4ccd8c3d6cccd85aa03dcfa1a2ec4f7bbb3d981e84a876d83e6c3bc5b2"
    );
    assert_eq!(
        hex::encode(card_signature_input(b"CH", b"SH", b"SP")),
        concat!(
            "6b657977617264206368616e6e656c2076312063617264207369676e617475726500",
            "2259d868f1dac3c18a61f04402a486ef3e091d69134769f0e7604bbd3c6df75b"
        )
    );
    assert_eq!(
        exporter_context("/v1/login/start"),
        b"keyward channel v1 exporter/v1/login/start"
    );
    assert_eq!(
        handshake_hash(b"a", b"b", b"c"),
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(b"abc"))
    );
}

#[test]
fn the_nonce_is_the_iv_xor_the_sequence_in_its_last_8_bytes() {
    let iv = [0xff; 12];
    assert_eq!(nonce(&iv, 0), iv);
    assert_eq!(
        hex::encode(nonce(&iv, 0x0102_0304_0506_0708)),
        "fffffffffefdfcfbfaf9f8f7"
    );
    assert_eq!(
        hex::encode(nonce(&[0; 12], u64::MAX)),
        "00000000ffffffffffffffff"
    );
}

proptest! {
    #[test]
    fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ClientHello::decode(&bytes);
        let _ = ServerHello::decode(&bytes);
        let _ = CardKeyExchange::decode(&bytes);
        let _ = ServerFinished::decode(&bytes);
        let _ = Record::decode(&bytes);
    }

    /// Layouts are canonical: whatever decodes re-encodes to the same bytes,
    /// so the signed part the card computed is the prefix the server reads.
    #[test]
    fn whatever_decodes_re_encodes_to_the_same_bytes(
        cert in proptest::collection::vec(any::<u8>(), 1..600),
        epms in proptest::collection::vec(any::<u8>(), 1..512),
        sig in proptest::collection::vec(any::<u8>(), 1..512),
        seq in any::<u64>(),
        ct in proptest::collection::vec(any::<u8>(), 16..100),
    ) {
        let cke = CardKeyExchange { certificate: cert, encrypted_pre_master: epms, ephemeral: None, signature: sig };
        let bytes = cke.encode();
        let (back, signed) = CardKeyExchange::split(&bytes).unwrap();
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(signed, &bytes[..cke.signed_part().len()]);
        let r = Record { channel: ChannelId([3; 16]), kind: RecordType::KeyUpdate, sequence: seq, ciphertext: ct };
        prop_assert_eq!(Record::decode(&r.encode()).unwrap().encode(), r.encode());
    }
}

fn resume_hello() -> ResumeHello {
    ResumeHello {
        client_random: [0xc1; 32],
        versions: vec![1],
        device: [1, 2, 3, 4, 5, 6, 7, 8],
        ticket: [0x7a; 16],
        binder: [0xb1; 16],
    }
}

fn new_ticket() -> NewTicket {
    NewTicket {
        channel: ChannelId([0xcd; 16]),
        ticket: [0x7a; 16],
        lifetime: 86_400,
    }
}

#[test]
fn resumption_messages_byte_for_byte_and_strict() {
    let rh = resume_hello();
    assert_eq!(
        hex::encode(rh.encode()),
        concat!(
            "4b574335",
            "01",
            "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1",
            "0101",
            "0102030405060708",
            "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a",
            "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1",
        )
    );
    let bytes = rh.encode();
    let (back, bound) = ResumeHello::split(&bytes).unwrap();
    assert_eq!(back, rh);
    assert_eq!(bound, &bytes[..bytes.len() - 16]);
    assert_eq!(bound, rh.binder_part().as_slice());
    assert_eq!(
        hex::encode(new_ticket().encode()),
        concat!(
            "4b574336",
            "01",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a",
            "00015180",
        )
    );
    assert_eq!(NewTicket::decode(&new_ticket().encode()), Ok(new_ticket()));
    type Decode = fn(&[u8]) -> Result<(), ProtocolError>;
    let cases: [(Vec<u8>, Decode, &str); 2] = [
        (
            rh.encode(),
            |b| ResumeHello::decode(b).map(drop),
            "resume hello",
        ),
        (
            new_ticket().encode(),
            |b| NewTicket::decode(b).map(drop),
            "new ticket",
        ),
    ];
    for (bytes, decode, what) in cases {
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{what}: {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), malformed(what), "{what}");
    }
    // A lifetime of 0 or over a day.
    for l in [0u32, 86_401] {
        let mut b = new_ticket().encode();
        b[37..].copy_from_slice(&l.to_be_bytes());
        assert_eq!(NewTicket::decode(&b).map(drop), malformed("new ticket"));
    }
    // The ticket is not printed.
    assert!(!format!("{rh:?}{:?}", new_ticket()).contains("7a"));
}

#[test]
fn a_resumption_server_hello_has_no_chain_and_others_need_one() {
    let mut sh = server_hello();
    sh.mode = Mode::Resumption;
    sh.chain = Vec::new();
    let bytes = sh.encode();
    assert_eq!(&bytes[54..], &[3, 2, 0, 0]);
    assert_eq!(ServerHello::decode(&bytes), Ok(sh));
    // Mode 3 with a chain, mode 1 without one.
    let mut b = server_hello().encode();
    b[54] = 3;
    assert_eq!(ServerHello::decode(&b).map(drop), malformed("server hello"));
    let mut b = bytes.clone();
    b[54] = 1;
    assert_eq!(ServerHello::decode(&b).map(drop), malformed("server hello"));
}

#[test]
fn resumption_inputs_are_the_documented_hashes() {
    let h = [0x11; 32];
    assert_eq!(
        hex::encode(resumption_master_input(&h)),
        "0a7d48696b579d0a44ea79af231a1d0c1230ae0726b51e600b80ba08fb60d5d8"
    );
    assert_eq!(
        hex::encode(binder_input()),
        "bbaa5a82768e0b6611f3e854a26ddb8c45261dc3555ae585b021f28ac34000c4"
    );
    assert_eq!(
        resumption_hash(b"a", b"b"),
        <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(b"ab"))
    );
}

/// The encryption byte at offset 55: `03` is PKCS#1 v1.5; `00` and `04`
/// are no encryption this layout knows.
#[test]
fn the_server_hello_names_pkcs1_v15_as_byte_3() {
    let sh = ServerHello {
        oaep: OaepHash::Pkcs1v15,
        ..server_hello()
    };
    let bytes = sh.encode();
    assert_eq!(bytes[55], 3);
    assert_eq!(ServerHello::decode(&bytes), Ok(sh));
    for b in [0u8, 4] {
        let mut bad = bytes.clone();
        bad[55] = b;
        assert!(ServerHello::decode(&bad).is_err(), "{b}");
    }
}

/// The P-256 generator, uncompressed: a valid ephemeral key.
const G: &str = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";

fn point() -> EphemeralKey {
    EphemeralKey::from_bytes(&hex::decode(G).unwrap()).unwrap()
}

/// The ECDHE mode's layouts: the server's key after the chain, the card's
/// after the encrypted pre-master and inside the signed part.
#[test]
fn ecdhe_layouts_carry_both_ephemerals() {
    let sh = ServerHello {
        mode: Mode::EcdheP256,
        ephemeral: Some(point()),
        ..server_hello()
    };
    let bytes = sh.encode();
    let plain = server_hello().encode();
    assert_eq!(bytes[54], 2);
    assert_eq!(&bytes[..54], &plain[..54]);
    assert_eq!(&bytes[55..plain.len()], &plain[55..]);
    assert_eq!(hex::encode(&bytes[plain.len()..]), format!("0041{G}"));
    assert_eq!(ServerHello::decode(&bytes).unwrap(), sh);

    let cke = CardKeyExchange {
        ephemeral: Some(point()),
        ..card_key_exchange()
    };
    let bytes = cke.encode();
    let (back, signed) = CardKeyExchange::split_in(&bytes, Mode::EcdheP256).unwrap();
    assert_eq!(back, cke);
    assert_eq!(signed, cke.signed_part().as_slice());
    assert!(hex::encode(signed).ends_with(&format!("0041{G}")));
    assert_eq!(&bytes[signed.len()..], &[0, 2, 0x51, 0x51]);
    // Each layout only in its mode.
    assert!(CardKeyExchange::split(&bytes).is_err());
    assert!(CardKeyExchange::split_in(&card_key_exchange().encode(), Mode::EcdheP256).is_err());
    assert!(CardKeyExchange::split_in(&card_key_exchange().encode(), Mode::Resumption).is_err());
    let mut rsa_with_key = server_hello().encode();
    rsa_with_key.extend_from_slice(&hex::decode(format!("0041{G}")).unwrap());
    assert!(ServerHello::decode(&rsa_with_key).is_err());
    let mut ecdhe = sh.encode();
    ecdhe.truncate(plain.len());
    assert!(ServerHello::decode(&ecdhe).is_err());
}

/// Only an uncompressed point on the curve is an ephemeral key: not off
/// the curve, not compressed, not the identity, no other length.
#[test]
fn an_ephemeral_key_is_an_uncompressed_point_on_the_curve() {
    let g = hex::decode(G).unwrap();
    let mut off = g.clone();
    off[64] ^= 1;
    let mut compressed = vec![0x03];
    compressed.extend_from_slice(&g[1..33]);
    let mut hybrid = g.clone();
    hybrid[0] = 0x07;
    let zero = {
        let mut z = vec![0u8; 65];
        z[0] = 4;
        z
    };
    for bad in [
        &off,
        &compressed,
        &hybrid,
        &zero,
        &vec![0u8],
        &g[..64].to_vec(),
    ] {
        assert!(
            EphemeralKey::from_bytes(bad).is_none(),
            "{}",
            hex::encode(bad)
        );
    }
    // The same refusals inside a message are the one malformed code.
    for bad in [&off, &hybrid, &zero] {
        let mut bytes = server_hello().encode();
        bytes[54] = 2;
        bytes.extend_from_slice(&[0, 65]);
        bytes.extend_from_slice(bad);
        assert_eq!(
            ServerHello::decode(&bytes).map(|_| ()),
            malformed("server hello")
        );
        let mut bytes = CardKeyExchange {
            ephemeral: Some(point()),
            ..card_key_exchange()
        }
        .encode();
        let at = bytes.len() - 4 - 65;
        bytes[at..at + 65].copy_from_slice(bad);
        assert_eq!(
            CardKeyExchange::split_in(&bytes, Mode::EcdheP256).map(|_| ()),
            malformed("card key exchange")
        );
    }
    assert!(!format!("{:?}", point()).contains(&G[20..]));
}

#[test]
#[should_panic]
fn an_ephemeral_key_outside_the_ecdhe_mode_is_a_callers_bug() {
    ServerHello {
        ephemeral: Some(point()),
        ..server_hello()
    }
    .encode();
}

/// The hybrid master's input is its own label over C then H.
#[test]
fn hybrid_master_input_is_labelled_c_then_h() {
    use sha2::{Digest, Sha256};
    let (c, h) = ([0xcc; 32], [0x11; 32]);
    let want: [u8; 32] = Sha256::new()
        .chain_update(b"keyward channel v1 hybrid master")
        .chain_update(c)
        .chain_update(h)
        .finalize()
        .into();
    assert_eq!(hybrid_master_input(&c, &h), want);
    assert_ne!(hybrid_master_input(&c, &h), master_input(&h));
}
