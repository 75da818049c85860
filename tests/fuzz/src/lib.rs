//! Fuzz targets: one function per parser of outside input, each a property
//! beyond "no panic" where one is cheap (a canonical format decodes and
//! encodes back to the very same bytes). `src/bin/<target>.rs` hands each
//! to AFL++; [`TARGETS`] lists them with their corpus directories.

use std::collections::BTreeMap;
use std::path::Path;

use keyward_protocol::channel::{
    CardKeyExchange, ClientHello, Mode, NewTicket, Record, ResumeHello, ServerFinished, ServerHello,
};
use keyward_protocol::confirmation::evidence::Evidence;
use keyward_protocol::load::{LoadPermit, LoadReport, LoadRequest, PurseStatus};
use keyward_protocol::{Code, Origin, Rules, Transaction, render};
use keyward_server::bulk::codec::{self, Encoding};
use keyward_server::wire::macs;

/// A fuzz target: one input, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory, with its
/// function (the uninstrumented short form, `tests/tests/fuzz_corpus.rs`,
/// runs each through it).
pub const TARGETS: &[(&str, Target)] = &[
    ("load", load),
    ("channel", channel),
    ("confirmation", confirmation),
    ("bulk_json", bulk_json),
    ("bulk_binary", bulk_binary),
    ("csr", csr),
    ("ocsp", ocsp),
    ("manifest", manifest),
    ("config", config),
];

/// Largest bulk batch the targets read (the server's default is larger; a
/// smaller one reaches the "too many items" path sooner).
const MAX_ITEMS: usize = 64;

/// A decoded message must encode to the bytes it was decoded from: the
/// formats are canonical, and the server verifies signatures over the bytes
/// that travelled, so two encodings of one value would be two messages.
fn round_trip<T, E>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    if let Ok(v) = decode(data) {
        assert_eq!(encode(&v), data, "decode then encode changed the bytes");
    }
}

/// The e-purse load messages: KWLR, KWLP, KWLX, KWLS.
pub fn load(data: &[u8]) {
    round_trip(data, LoadRequest::decode, LoadRequest::encode);
    round_trip(data, LoadPermit::decode, LoadPermit::encode);
    round_trip(data, LoadReport::decode, LoadReport::encode);
    round_trip(data, PurseStatus::decode, PurseStatus::encode);
}

/// The secure channel's handshake messages and records.
pub fn channel(data: &[u8]) {
    round_trip(data, ClientHello::decode, ClientHello::encode);
    if let Ok(hello) = ClientHello::decode(data) {
        let _ = hello.negotiate(&[Mode::EcdheP256, Mode::RsaTransport]);
    }
    round_trip(data, ServerHello::decode, ServerHello::encode);
    // The key exchange's layout follows the ServerHello's mode; a
    // resumption has none.
    for mode in [Mode::RsaTransport, Mode::EcdheP256, Mode::Resumption] {
        if let Ok((kx, signed)) = CardKeyExchange::split_in(data, mode) {
            assert_ne!(mode, Mode::Resumption, "a resumption has no key exchange");
            assert_eq!(kx.ephemeral.is_some(), mode == Mode::EcdheP256);
            assert_eq!(kx.encode(), data, "decode then encode changed the bytes");
            assert_eq!(
                kx.signed_part(),
                signed,
                "the signed part is not the bytes sent"
            );
        }
    }
    round_trip(data, ServerFinished::decode, ServerFinished::encode);
    round_trip(data, Record::decode, Record::encode);
    round_trip(data, ResumeHello::decode, ResumeHello::encode);
    if let Ok((rh, bound)) = ResumeHello::split(data) {
        assert_eq!(
            rh.binder_part(),
            bound,
            "the binder's part is not the bytes sent"
        );
    }
    round_trip(data, NewTicket::decode, NewTicket::encode);
}

/// A submitted transaction (JSON) and what is rendered from it, the code as
/// a device sends it, and the confirmation evidence.
pub fn confirmation(data: &[u8]) {
    if let Ok(received) = Transaction::parse(data, &Rules::default()) {
        assert!(received.is_exactly(data));
        let code = Code::parse("12345678").unwrap_or_else(|_| unreachable!());
        let origin = Origin::new("bank.example").unwrap_or_else(|_| unreachable!());
        let rendered = render(&received, &code, &origin);
        assert!(rendered.text().contains(code.as_str()));
        assert!(rendered.text().ends_with("@bank.example #12345678"));
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(code) = Code::parse(s)
    {
        assert_eq!(code.as_str(), s);
    }
    round_trip(data, Evidence::parse, |e| {
        e.encode()
            .unwrap_or_else(|_| panic!("a parsed receipt does not encode"))
    });
}

/// A bulk MAC batch in JSON (`{"items": [...]}`).
pub fn bulk_json(data: &[u8]) {
    if let Ok(items) = codec::decode(data, Encoding::Json, MAX_ITEMS) {
        assert!(items.len() <= MAX_ITEMS);
        assert_eq!(items.items.len(), items.algorithms.len());
    }
}

/// A bulk MAC batch in the binary encoding (`KWMV`).
pub fn bulk_binary(data: &[u8]) {
    if let Ok(items) = codec::decode(data, Encoding::Binary, MAX_ITEMS) {
        assert!(items.len() <= MAX_ITEMS);
    }
    round_trip(data, macs::decode_request, |items| {
        macs::encode_request(items).unwrap_or_else(|_| panic!("a decoded batch does not encode"))
    });
}

/// A certificate signing request, DER or PEM.
pub fn csr(data: &[u8]) {
    let _ = keyward_ca::VerifiedCsr::parse(data);
}

/// The CA certificate the OCSP target's requests are checked against.
const OCSP_ISSUER: &[u8] = include_bytes!("../issuer.der");

/// An OCSP request (DER), classified against a fixed issuer.
pub fn ocsp(data: &[u8]) {
    let _ = keyward_ca::ocsp::classify_request(data, OCSP_ISSUER);
}

/// A device batch manifest (CSV), without the CSR checks (the `csr` target's).
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyward_device_provisioning::intake::check_manifest(text);
    }
}

/// The configuration file (TOML), read and validated.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keyward_config::Config::from_parts(
            text,
            Path::new("fuzz.toml"),
            &BTreeMap::new(),
            Path::new("/var/lib/keyward"),
        );
    }
}
