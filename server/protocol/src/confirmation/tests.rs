use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::render::units;
use super::*;
use crate::ProtocolError;

const SAMPLE: &[u8] = br#"{"payer_account":"DE02120300000000202051","payee_account":"DE89370400440532013000","payee_name":"ACME GmbH","amount":123456,"currency":"EUR","reference":"Invoice 2026-117"}"#;

fn origin() -> Origin {
    Origin::new("bank.example").unwrap_or_else(|_| unreachable!())
}

/// Random bytes whose first candidate, 0xFB2C6211 = 4 213 989 905, is at or
/// above the bound and rejected; the second, 0xBFF4A6C7 = 3 220 481 735,
/// gives 20481735.
const RANDOM: [u8; 8] = [0xFB, 0x2C, 0x62, 0x11, 0xBF, 0xF4, 0xA6, 0xC7];

fn code() -> Code {
    Code::from_random(&RANDOM).unwrap_or_else(|| unreachable!())
}

fn parse(body: &[u8]) -> Result<Received, &'static str> {
    Transaction::parse(body, &Rules::default()).map_err(|e| e.code())
}

/// The sample with one member's value replaced by `value` (raw JSON), or the
/// member removed (`None`).
fn with(field: &str, value: Option<&str>) -> Vec<u8> {
    let mut members = vec![
        ("payer_account", r#""DE02120300000000202051""#.to_owned()),
        ("payee_account", r#""DE89370400440532013000""#.to_owned()),
        ("payee_name", r#""ACME GmbH""#.to_owned()),
        ("amount", "123456".to_owned()),
        ("currency", r#""EUR""#.to_owned()),
        ("reference", r#""Invoice 2026-117""#.to_owned()),
    ];
    members.retain(|(k, _)| *k != field);
    if let Some(v) = value {
        members.push((field_name(field), v.to_owned()));
    }
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

fn field_name(f: &str) -> &'static str {
    [
        "payer_account",
        "payee_account",
        "payee_name",
        "amount",
        "currency",
        "reference",
        "extra",
    ]
    .into_iter()
    .find(|n| *n == f)
    .unwrap_or("extra")
}

#[test]
fn the_sample_parses_and_keeps_its_bytes() {
    let r = parse(SAMPLE).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(r.raw(), SAMPLE);
    let tx = r.transaction();
    assert_eq!(tx.payer_account, "DE02120300000000202051");
    assert_eq!(tx.payee_account, "DE89370400440532013000");
    assert_eq!(tx.payee_name, "ACME GmbH");
    assert_eq!(tx.amount.minor_units(), 123456);
    assert_eq!(tx.currency.code(), "EUR");
    assert_eq!(tx.reference.as_deref(), Some("Invoice 2026-117"));
    assert_eq!(r.payee_check(), PayeeCheck::Plain);
    assert!(r.is_exactly(SAMPLE));
}

#[test]
fn white_space_and_key_order_are_kept_and_tell_the_bytes_apart() {
    let spaced = [SAMPLE, b" \n"].concat();
    let reordered = with("payer_account", Some(r#""DE02120300000000202051""#));
    for other in [spaced.as_slice(), reordered.as_slice()] {
        let a = parse(SAMPLE).unwrap_or_else(|e| unreachable!("{e}"));
        let b = parse(other).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.transaction(), b.transaction());
        assert_eq!(b.raw(), other);
        assert!(!a.is_exactly(other));
        assert_ne!(
            signed_message(a.raw(), &code()),
            signed_message(b.raw(), &code())
        );
    }
}

#[test]
fn refusals_have_their_codes() {
    let long = |n| format!("\"{}\"", "a".repeat(n));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // Not JSON, not an object, not UTF-8, too large.
        (b"".to_vec(), "transaction_malformed"),
        (b"[1,2]".to_vec(), "transaction_malformed"),
        ([SAMPLE, b"}"].concat(), "transaction_malformed"),
        ([b"\xEF\xBB\xBF", SAMPLE].concat(), "transaction_malformed"),
        (
            with("payee_name", Some("\"ACME \u{FF}\""))
                .iter()
                .map(|&b| if b == 0xC3 { 0xFF } else { b })
                .collect(),
            "transaction_malformed",
        ),
        (vec![b' '; 2049], "transaction_too_large"),
        // Keys.
        (
            [&SAMPLE[..SAMPLE.len() - 1], br#","amount":1}"#].concat(),
            "duplicate_field",
        ),
        (
            [&SAMPLE[..SAMPLE.len() - 1], br#","am\u006funt":1}"#].concat(),
            "duplicate_field",
        ),
        (with("extra", Some("1")), "unknown_field"),
        (
            [&SAMPLE[..SAMPLE.len() - 1], br#","Amount":1}"#].concat(),
            "unknown_field",
        ),
        (with("payee_name", None), "field_missing"),
        (with("amount", None), "field_missing"),
        // Amounts.
        (with("amount", Some("1234.56")), "amount_invalid"),
        (with("amount", Some("100.0")), "amount_invalid"),
        (with("amount", Some("1e3")), "amount_invalid"),
        (with("amount", Some("1E3")), "amount_invalid"),
        (with("amount", Some("\"100\"")), "amount_invalid"),
        (with("amount", Some("-5")), "amount_invalid"),
        (with("amount", Some("0")), "amount_invalid"),
        (with("amount", Some("-0")), "amount_invalid"),
        (with("amount", Some("null")), "amount_invalid"),
        (
            with("amount", Some("18446744073709551616")),
            "amount_invalid",
        ),
        (with("amount", Some("1000000001")), "amount_over_limit"),
        (with("amount", Some("0100")), "transaction_malformed"),
        // Currencies.
        (with("currency", Some("\"XXX\"")), "currency_unknown"),
        (with("currency", Some("\"JPY\"")), "currency_unknown"),
        (with("currency", Some("\"eur\"")), "currency_unknown"),
        (with("currency", Some("978")), "field_invalid"),
        // Accounts.
        (
            with("payee_account", Some("\"DE89 3704\"")),
            "account_invalid",
        ),
        (
            with("payee_account", Some("\"de89370400440532013000\"")),
            "account_invalid",
        ),
        (with("payee_account", Some("\"\"")), "account_invalid"),
        (
            with("payer_account", Some("\"DE8937040044053201300\\u0000\"")),
            "account_invalid",
        ),
        // JSON has no raw control characters in strings.
        (
            with("payer_account", Some("\"DE8937040044053201300\u{0}\"")),
            "transaction_malformed",
        ),
        (with("payer_account", Some(&long(35))), "field_too_long"),
        // Text.
        (with("payee_name", Some(&long(71))), "field_too_long"),
        (with("reference", Some(&long(141))), "field_too_long"),
        (with("payee_name", Some("\"\"")), "field_invalid"),
        (with("payee_name", Some("42")), "field_invalid"),
        (with("payee_name", Some("\"ACME GmbH \"")), "field_invalid"),
        (
            with("payee_name", Some("\"ACME\\u202EHbmG\"")),
            "text_forbidden_character",
        ),
        (
            with("payee_name", Some("\"ACME\u{2067}GmbH\"")),
            "text_forbidden_character",
        ),
        (
            with("payee_name", Some("\"AC\u{200B}ME GmbH\"")),
            "text_forbidden_character",
        ),
        (
            with("payee_name", Some("\"ACME\\u00a0GmbH\"")),
            "text_forbidden_character",
        ),
        (
            with("reference", Some("\"Invoice\\nPay EUR 1.00 to ACME\"")),
            "text_forbidden_character",
        ),
        (
            with("reference", Some("\"Invoice\u{061C}42\"")),
            "text_forbidden_character",
        ),
        (with("payee_name", Some("\"Cafe\u{301}\"")), "text_not_nfc"),
        // A lone surrogate is not a character.
        (
            with("payee_name", Some("\"\\ud800\"")),
            "transaction_malformed",
        ),
    ];
    for (body, expected) in cases {
        let got = parse(&body).map(|_| ());
        assert_eq!(got, Err(expected), "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn optional_reference() {
    for body in [
        with("reference", None),
        with("reference", Some("null")),
        with("reference", Some("\"\"")),
    ] {
        let r = parse(&body).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.transaction().reference, None);
    }
}

#[test]
fn a_confusable_payee_is_flagged_or_refused() {
    let body = with("payee_name", Some("\"\u{410}CME GmbH\""));
    let r = parse(&body).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(r.payee_check(), PayeeCheck::MixedScript);
    let text = render(&r, &code(), &origin());
    assert!(
        text.text()
            .starts_with("(!) Pay EUR 1234.56 to \u{410}CME GmbH"),
        "{}",
        text.text()
    );
    assert!(
        text.text().contains("\n(!) Check the payee name"),
        "{}",
        text.text()
    );

    let refuse = Rules {
        confusable_payee: PayeePolicy::Refuse,
        ..Rules::default()
    };
    let err = Transaction::parse(&body, &refuse).map(|_| ());
    assert_eq!(err, Err(ProtocolError::PayeeConfusable));
    let known = Rules {
        known_payees: vec!["ACME GmbH".to_owned()],
        ..refuse
    };
    assert!(Transaction::parse(SAMPLE, &known).is_ok());
    let whole_cyrillic = with("payee_name", Some("\"\u{410}\u{421}\u{41C}\u{415}\""));
    let lookalike = Rules {
        known_payees: vec!["ACME".to_owned()],
        ..Rules::default()
    };
    let r = Transaction::parse(&whole_cyrillic, &lookalike).map(|r| r.payee_check());
    assert_eq!(r, Ok(PayeeCheck::LooksLikeKnownPayee));
}

#[test]
fn a_payee_line_that_cannot_fit_the_first_segment_is_refused() {
    // 40 Cyrillic letters: UCS-2, whose first segment holds 67 units.
    let name = format!("\"{}\"", "Ж".repeat(40));
    assert_eq!(
        parse(&with("payee_name", Some(&name))).map(|_| ()),
        Err("payee_line_too_long")
    );
    let name = format!("\"{}\"", "Ж".repeat(20));
    assert!(parse(&with("payee_name", Some(&name))).is_ok());
    // 70 Latin letters fit GSM 03.38's 153 septets.
    let name = format!("\"{}\"", "A".repeat(70));
    assert!(parse(&with("payee_name", Some(&name))).is_ok());
}

#[test]
fn the_sample_renders() {
    let r = parse(SAMPLE).unwrap_or_else(|e| unreachable!("{e}"));
    let m = render(&r, &code(), &origin());
    assert_eq!(
        m.text(),
        "Pay EUR 1234.56 to ACME GmbH (DE89..3000)\n\
         Code 20481735\n\
         To DE89370400440532013000 from DE02..2051\n\
         Ref Invoice 2026-117\n\
         @bank.example #20481735"
    );
    assert_eq!(
        (m.encoding(), m.segments(), m.reference_cut()),
        (SmsEncoding::Gsm7, 1, false)
    );
    assert_eq!(
        format!("{m:?}"),
        "Rendered { encoding: Gsm7, segments: 1, reference_cut: false, .. }"
    );
}

#[test]
fn the_reference_is_cut_never_the_rest() {
    // One character outside GSM 03.38 would make the whole message UCS-2,
    // whose first segment (67 units) is shorter than this payee line: the
    // reference is cut before it.
    let name = "ACME Industrial Holdings GmbH & Co KG";
    let body = String::from_utf8_lossy(&with("reference", Some("\"Invoice 2026-117 \u{5F20}\"")))
        .replace("ACME GmbH", name);
    let r = parse(body.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
    let m = render(&r, &code(), &origin());
    assert!(m.reference_cut());
    assert_eq!(m.encoding(), SmsEncoding::Gsm7);
    assert!(
        m.text()
            .contains("\nRef Invoice 2026-117 ...\n@bank.example #20481735"),
        "{}",
        m.text()
    );

    // A long reference is cut to the segment limit.
    let body = with("reference", Some(&format!("\"{}\"", "x".repeat(140))));
    let rules = Rules {
        sms_max_segments: 1,
        ..Rules::default()
    };
    let r = Transaction::parse(&body, &rules).unwrap_or_else(|e| unreachable!("{e}"));
    let m = render(&r, &code(), &origin());
    assert_eq!((m.segments(), m.reference_cut()), (1, true));
    assert!(
        m.text().ends_with("x...\n@bank.example #20481735"),
        "{}",
        m.text()
    );
    assert_eq!(units(m.text()).1, 160);
}

#[test]
fn amounts_use_the_currency_exponent() {
    let rules = Rules {
        currencies: ["JPY", "KWD"]
            .iter()
            .filter_map(|c| Currency::from_code(c))
            .collect(),
        ..Rules::default()
    };
    for (currency, shown) in [("JPY", "Pay JPY 123456 to"), ("KWD", "Pay KWD 123.456 to")] {
        let body = with("currency", Some(&format!("\"{currency}\"")));
        let r = Transaction::parse(&body, &rules).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(render(&r, &code(), &origin()).text().starts_with(shown));
    }
}

#[test]
fn the_signed_message_is_tx_then_code() {
    let m = signed_message(b"{}", &code());
    assert_eq!(m, b"{}20481735");
}

/// Upper-case hex, 16 bytes a line, as `docs/protocol.md` shows it.
fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn upper_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// How the documentation states a message's size.
fn summary(m: &Rendered) -> String {
    format!(
        "`{:?}`, {} units, segments: {}",
        m.encoding(),
        units(m.text()).1,
        m.segments()
    )
}

/// The worked example of `docs/protocol.md` §11, recomputed: each block the
/// documentation shows must be in it verbatim. Run with `--nocapture` to see
/// the blocks after a deliberate change.
#[test]
fn worked_example_in_the_docs() {
    let doc = include_str!("../../../../docs/protocol.md");
    let r = parse(SAMPLE).unwrap_or_else(|e| unreachable!("{e}"));
    let code = code();
    let signed = signed_message(r.raw(), &code);
    let m = render(&r, &code, &origin());
    let flagged = parse(&with("payee_name", Some("\"\u{410}CME GmbH\"")))
        .unwrap_or_else(|e| unreachable!("{e}"));
    let flagged = render(&flagged, &code, &origin());
    let blocks = [
        format!("```json\n{}\n```", String::from_utf8_lossy(SAMPLE)),
        format!("```text\n{}\n```", hex_lines(r.raw())),
        format!("```text\n{}\n```", hex_lines(&RANDOM)),
        format!("```text\n{}\n```", hex_lines(code.as_bytes())),
        format!("```text\n{}\n```", hex_lines(&signed)),
        format!("`{}`", upper_hex(&Sha256::digest(&signed))),
        format!("```text\n{}\n```", m.text()),
        format!("`{}`", upper_hex(&m.sha256())),
        format!("```text\n{}\n```", flagged.text()),
        summary(&m),
        summary(&flagged),
    ];
    for b in &blocks {
        println!("{b}\n");
    }
    for b in &blocks {
        assert!(doc.contains(b.as_str()), "docs/protocol.md §11 lacks:\n{b}");
    }
}

/// An accepted transaction of arbitrary fields (most candidates are refused;
/// the property holds for those that pass).
fn any_transaction() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        "[A-Za-z &.-]{1,70}",
        "[А-Яа-я ]{1,40}",
        "[\u{4E00}-\u{4E80}]{1,30}",
        "[A-Za-z\u{410}-\u{44F}€\u{4E00}-\u{4E10}ÄÖÜäöüéè ]{1,70}",
        any::<String>(),
    ];
    (
        "[A-Z0-9]{1,34}",
        "[A-Z0-9]{1,34}",
        text.clone(),
        1u64..=1_000_000_000,
        prop_oneof![Just("EUR"), Just("USD"), Just("CNY")],
        proptest::option::of(text),
    )
        .prop_map(|(payer, payee, name, amount, currency, reference)| {
            let mut v = serde_json::json!({
                "payer_account": payer, "payee_account": payee, "payee_name": name,
                "amount": amount, "currency": currency,
            });
            if let (Some(r), Some(o)) = (reference, v.as_object_mut()) {
                o.insert("reference".to_owned(), r.into());
            }
            v.to_string().into_bytes()
        })
}

proptest! {
    // About a third of the generated transactions pass the rules; of those,
    // more than half are UCS-2 and about one in eight has its reference cut.
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Transaction::parse(&bytes, &Rules::default());
    }

    #[test]
    fn parse_never_panics_on_near_json(s in r#"\{("[a-z_]{1,14}":("[^"]{0,20}"|-?[0-9.eE+]{1,8}|null|\[\]),?){0,8}\}"#) {
        let _ = Transaction::parse(s.as_bytes(), &Rules::default());
    }

    #[test]
    fn accepted_transactions_keep_amount_payee_and_code_in_the_first_segment(
        body in any_transaction(),
        candidate in 0..Code::CANDIDATE_BOUND,
        segments in 1usize..4,
    ) {
        let rules = Rules { sms_max_segments: segments, ..Rules::default() };
        if let Ok(r) = Transaction::parse(&body, &rules) {
            let code = Code::from_u32_candidates([candidate]).unwrap_or_else(|| unreachable!());
            let m = render(&r, &code, &origin());
            let tx = r.transaction();
            let head_end = m.text().find("\nTo ").unwrap_or(0);
            let head = &m.text()[..head_end];
            let amount = format!("Pay {} {} to {} (", tx.currency.code(), tx.amount.format(2), tx.payee_name);
            prop_assert!(head.contains(&amount), "{}", m.text());
            let code_line = format!("\nCode {}", code.as_str());
            prop_assert!(head.ends_with(&code_line), "{}", m.text());
            let (encoding, total) = units(m.text());
            let (head_encoding, head_units) = units(head);
            prop_assert!(head_encoding == encoding || head_encoding == SmsEncoding::Gsm7);
            let cap = if total <= encoding.single() { encoding.single() } else { encoding.multi() };
            prop_assert!(units_in(head, encoding) <= cap, "{} > {cap}", head_units);
            let last = format!("\n@bank.example #{}", code.as_str());
            prop_assert!(m.text().ends_with(&last), "{}", m.text());
            prop_assert!(m.segments() <= segments || !m.text().contains("\nRef "));
        }
    }

    #[test]
    fn codes_come_from_the_first_candidate_below_the_bound(
        candidates in proptest::collection::vec(any::<u32>(), 0..6),
    ) {
        let used = candidates.iter().copied().find(|&c| c < Code::CANDIDATE_BOUND);
        let code = Code::from_u32_candidates(candidates.iter().copied());
        prop_assert_eq!(code.is_some(), used.is_some());
        if let (Some(code), Some(c)) = (code, used) {
            prop_assert_eq!(code.as_str().parse::<u32>().ok(), Some(c % 100_000_000));
            prop_assert!(code.as_bytes().iter().all(u8::is_ascii_digit));
            prop_assert!(Code::parse(code.as_str()) == Ok(code));
        }
    }
}

/// Units of `s` in `encoding` (GSM characters count 1 or 2 septets).
fn units_in(s: &str, encoding: SmsEncoding) -> usize {
    match encoding {
        SmsEncoding::Gsm7 => units(s).1,
        SmsEncoding::Ucs2 => s.encode_utf16().count(),
    }
}

/// The evidence receipt of the worked example (docs/protocol.md §11.6): the
/// transaction of §11.3, the message of §11.4; the device signature is the
/// smallest DER `Ecdsa-Sig-Value` (r = 1, s = 2), to keep the example short.
fn evidence_example() -> Evidence {
    let r = parse(SAMPLE).unwrap_or_else(|e| unreachable!("{e}"));
    let m = render(&r, &code(), &origin());
    Evidence {
        confirmation_id: "3f6c2a1e-8d4b-4c1e-9a57-0b2f7d9e6c41".to_owned(),
        device_id: "00A1B2C3D4E5F601".to_owned(),
        transaction_sha256: evidence::sha256(r.raw()),
        message_sha256: m.sha256(),
        device_signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02],
        device_certificate_serial: "1CF5A0B7D2E94C3F8A6B1D0E7F2C9A45".to_owned(),
        device_certificate_sha256: evidence::sha256(b"device certificate DER"),
        code_mac_key: "keyward/confirmation/code-mac".to_owned(),
        code_mac_id: evidence::sha256(&[0x5A; 32]),
        delivery_message_id: "7b0e4c2a-51f3-4d8e-b9a6-2c7d1e0f3a58".to_owned(),
        delivery_receipt_id: Some("msg_2Lh9bT0QxW".to_owned()),
        submitted_at_ms: 1_765_000_000_000,
        sent_at_ms: Some(1_765_000_000_041),
        delivered_at_ms: Some(1_765_000_002_310),
        confirmed_at_ms: 1_765_000_031_877,
        signer_certificate_serial: "4E21B9C07A3D5F1826E0C4B9A17D3F02".to_owned(),
    }
}

#[test]
fn evidence_round_trips_and_is_in_the_docs() {
    let doc = include_str!("../../../../docs/protocol.md");
    let e = evidence_example();
    let bytes = e.encode().unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(Evidence::parse(&bytes), Ok(e.clone()));
    let text = String::from_utf8(bytes.clone()).unwrap_or_default();
    let block = format!("```text\n{text}```");
    println!("{block}\n`{}`", upper_hex(&Sha256::digest(&bytes)));
    assert!(
        doc.contains(&block),
        "docs/protocol.md §11.6 lacks:\n{block}"
    );
    // The hashes a checker compares are the ones the earlier sections show.
    assert!(text.contains(
        "message_sha256=8513486108d564574da1b5c9abd838e110a07316f1b8423c885ddb9ff5cd25d1\n"
    ));

    let none = Evidence {
        delivery_receipt_id: None,
        sent_at_ms: None,
        delivered_at_ms: None,
        ..e
    };
    let bytes = none.encode().unwrap_or_else(|e| unreachable!("{e}"));
    assert!(String::from_utf8_lossy(&bytes).contains("\ndelivery_receipt_id=-\n"));
    assert_eq!(Evidence::parse(&bytes), Ok(none));
}

/// One receipt, one encoding: anything the encoder would not have written
/// is refused, and no value can forge a line.
#[test]
fn evidence_is_canonical() {
    let good = evidence_example()
        .encode()
        .unwrap_or_else(|e| unreachable!("{e}"));
    let text = String::from_utf8(good).unwrap_or_default();
    let variants = [
        text.replace('\n', "\r\n"),
        text.trim_end().to_owned(),
        format!("{text}\n"),
        format!("{text}extra=1\n"),
        text.replace("evidence/v1", "evidence/v2"),
        text.replace("confirmation_id=", "confirmation_id= "),
        text.replace("=8513486108d5", "=8513486108D5"),
        text.replace(
            "submitted_at_ms=1765000000000",
            "submitted_at_ms=01765000000000",
        ),
        text.replace(
            "submitted_at_ms=1765000000000",
            "submitted_at_ms=+1765000000000",
        ),
        text.replace("sent_at_ms=1765000000041\n", ""),
        // Two lines swapped.
        text.replace(
            "sent_at_ms=1765000000041\ndelivered_at_ms=1765000002310",
            "delivered_at_ms=1765000002310\nsent_at_ms=1765000000041",
        ),
    ];
    for v in &variants {
        assert_eq!(
            Evidence::parse(v.as_bytes()),
            Err(ProtocolError::EvidenceMalformed),
            "{v}"
        );
    }
    for bad in ["", "a b", "id\nforged=1", "é"] {
        let e = Evidence {
            delivery_receipt_id: Some(bad.to_owned()),
            ..evidence_example()
        };
        assert_eq!(e.encode(), Err(ProtocolError::EvidenceMalformed), "{bad:?}");
    }
}
