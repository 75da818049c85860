use proptest::prelude::*;

use super::*;

fn request() -> LoadRequest {
    LoadRequest {
        device: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        sequence: 7,
        last_applied: 6,
        wallet_balance: 1_500,
        amount: Amount::new(10_000).unwrap(),
        currency: Currency::from_code("CNY").unwrap(),
        key_version: 1,
        algorithm: Algorithm::EcdsaP256Sha256,
        nonce: [0xAA; 16],
        customer: "cust-0123456789abcdef01234567".into(),
        account: "6222020200112233".into(),
    }
}

fn permit(req: &[u8]) -> LoadPermit {
    LoadPermit {
        request: RequestId::of(req),
        load: [0x11; 16],
        sequence: 7,
        nonce: [0xAA; 16],
        amount: Amount::new(10_000).unwrap(),
        currency: Currency::from_code("CNY").unwrap(),
        host_time_ms: 1_796_601_600_000,
    }
}

/// The worked example of `docs/protocol.md` §13, byte for byte.
#[test]
fn worked_example_in_the_docs() {
    let bytes = request().encode();
    assert_eq!(
        hex::encode(&bytes),
        concat!(
            "4b574c52",
            "01",
            "0102030405060708",
            "0000000000000007",
            "0000000000000006",
            "00000000000005dc",
            "0000000000002710",
            "434e59",
            "00000001",
            "01",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "1d",
            "637573742d303132333435363738396162636465663031323334353637",
            "10",
            "36323232303230323030313132323333",
        )
    );
    assert_eq!(bytes.len(), 116);
    let p = permit(&bytes).encode();
    assert_eq!(p.len(), 96);
    assert_eq!(&p[..5], b"KWLP\x01");
    assert_eq!(
        RequestId::of(&bytes).to_string(),
        hex::encode(sha2::Sha256::digest(&bytes))
    );
}

/// The permit, the report and the status of `docs/protocol.md` §13.4,
/// byte for byte: the answers to the request of the worked example.
#[test]
fn worked_example_permit_report_and_status_in_the_docs() {
    let req = request().encode();
    assert_eq!(
        RequestId::of(&req).to_string(),
        "6d2f576007a6042d88ba4889d83e6fd1f71c8c38b01cf62b97b07874ae2cd3ad"
    );
    let p = permit(&req).encode();
    assert_eq!(
        hex::encode(&p),
        concat!(
            "4b574c50",
            "01",
            "6d2f576007a6042d88ba4889d83e6fd1f71c8c38b01cf62b97b07874ae2cd3ad",
            "11111111111111111111111111111111",
            "0000000000000007",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0000000000002710",
            "434e59",
            "000001a24dccd800",
        )
    );
    let report = LoadReport {
        load: [0x11; 16],
        request: RequestId::of(&req),
        sequence: 7,
        outcome: Outcome::Applied,
        wallet_balance: 11_500,
    }
    .encode();
    assert_eq!(
        hex::encode(&report),
        concat!(
            "4b574c58",
            "01",
            "11111111111111111111111111111111",
            "6d2f576007a6042d88ba4889d83e6fd1f71c8c38b01cf62b97b07874ae2cd3ad",
            "0000000000000007",
            "01",
            "00",
            "0000000000002cec",
        )
    );
    let status = PurseStatus {
        device: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        sequence: 8,
        last_applied: 7,
        wallet_balance: 11_500,
        currency: Currency::from_code("CNY").unwrap(),
        nonce: [0xBB; 16],
    }
    .encode();
    assert_eq!(
        hex::encode(&status),
        concat!(
            "4b574c53",
            "01",
            "0102030405060708",
            "0000000000000008",
            "0000000000000007",
            "0000000000002cec",
            "434e59",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        )
    );
    assert_eq!((p.len(), report.len(), status.len()), (96, 71, 56));
}

#[test]
fn every_message_round_trips() {
    let req = request();
    let bytes = req.encode();
    assert_eq!(LoadRequest::decode(&bytes).unwrap(), req);
    let p = permit(&bytes);
    assert_eq!(LoadPermit::decode(&p.encode()).unwrap(), p);
    assert!(p.answers(&bytes, &req));
    for outcome in [Outcome::Applied, Outcome::Failed { reason: 3 }] {
        let r = LoadReport {
            load: [0x11; 16],
            request: RequestId::of(&bytes),
            sequence: 7,
            outcome,
            wallet_balance: 11_500,
        };
        assert_eq!(LoadReport::decode(&r.encode()).unwrap(), r);
    }
    let s = PurseStatus {
        device: req.device,
        sequence: 8,
        last_applied: 7,
        wallet_balance: 11_500,
        currency: req.currency,
        nonce: [0xBB; 16],
    };
    assert_eq!(PurseStatus::decode(&s.encode()).unwrap(), s);
}

#[test]
fn a_permit_answers_only_its_own_request() {
    let req = request();
    let bytes = req.encode();
    let p = permit(&bytes);
    let mut other = req.clone();
    other.amount = Amount::new(10_001).unwrap();
    assert!(!p.answers(&other.encode(), &other));
    other = req.clone();
    other.nonce[0] ^= 1;
    assert!(!p.answers(&other.encode(), &other));
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let bytes = request().encode();
    for n in 0..bytes.len() {
        assert!(LoadRequest::decode(&bytes[..n]).is_err(), "{n} bytes");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        LoadRequest::decode(&longer),
        Err(ProtocolError::LoadMalformed("request"))
    );
}

#[test]
fn a_wrong_magic_version_or_field_is_refused_by_name() {
    let bytes = request().encode();
    let mut b = bytes.clone();
    b[4] = 2;
    assert_eq!(LoadRequest::decode(&b), Err(ProtocolError::LoadVersion));
    // A permit is not a request, though both are load messages.
    let p = permit(&bytes).encode();
    assert_eq!(
        LoadRequest::decode(&p),
        Err(ProtocolError::LoadMalformed("request"))
    );
    let mut b = bytes.clone();
    b[37..45].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(LoadRequest::decode(&b), Err(ProtocolError::AmountInvalid));
    let mut b = bytes.clone();
    b[45..48].copy_from_slice(b"XXX");
    assert_eq!(LoadRequest::decode(&b), Err(ProtocolError::CurrencyUnknown));
    let mut b = bytes.clone();
    b[52] = 9;
    assert_eq!(
        LoadRequest::decode(&b),
        Err(ProtocolError::FieldInvalid("algorithm"))
    );
    let mut r = request();
    r.last_applied = r.sequence;
    assert_eq!(
        LoadRequest::decode(&r.encode()),
        Err(ProtocolError::FieldInvalid("last_applied"))
    );
    let mut b = bytes.clone();
    let at = b.len() - 1;
    b[at] = b'a';
    assert_eq!(
        LoadRequest::decode(&b),
        Err(ProtocolError::AccountInvalid("account"))
    );
}

#[test]
fn a_failure_report_needs_a_reason_and_success_none() {
    let r = LoadReport {
        load: [0; 16],
        request: RequestId([0; 32]),
        sequence: 1,
        outcome: Outcome::Applied,
        wallet_balance: 0,
    };
    let mut b = r.encode();
    b[62] = 4;
    assert_eq!(
        LoadReport::decode(&b),
        Err(ProtocolError::FieldInvalid("outcome"))
    );
    b[61] = 2;
    b[62] = 0;
    assert_eq!(
        LoadReport::decode(&b),
        Err(ProtocolError::FieldInvalid("outcome"))
    );
}

#[test]
fn debug_never_shows_the_account() {
    let shown = format!("{:?}", request());
    assert!(!shown.contains("6222020200112233"));
}

proptest! {
    #[test]
    fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = LoadRequest::decode(&bytes);
        let _ = LoadPermit::decode(&bytes);
        let _ = LoadReport::decode(&bytes);
        let _ = PurseStatus::decode(&bytes);
    }

    #[test]
    fn any_request_round_trips(
        seq in 1u64..u64::MAX, wallet in any::<u64>(), amount in 1u64.., key in any::<u32>(),
        nonce in any::<[u8; 16]>(), account in "[A-Z0-9]{6,34}",
    ) {
        let mut r = request();
        r.sequence = seq;
        r.last_applied = seq - 1;
        r.wallet_balance = wallet;
        r.amount = Amount::new(amount).unwrap();
        r.key_version = key;
        r.nonce = nonce;
        r.account = account;
        prop_assert_eq!(LoadRequest::decode(&r.encode()).unwrap(), r);
    }
}
