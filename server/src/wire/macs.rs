//! Bulk MAC verification (`POST /admin/v1/macs/verify`, docs/admin-api.md
//! "MAC verification", docs/protocol.md §6.6): the JSON bodies and the
//! compact binary encoding, encoder and decoder both, so the server, `kwctl`
//! and the tests read and write the same bytes.
//!
//! The binary decoder only checks structure (lengths, magic, no trailing
//! bytes): a frame it cannot cut into items is refused whole. What an item
//! *says* (an unknown algorithm code, a bad issuer id) is the server's to
//! judge per item.

use keyward_kms::types::MacAlgorithm;
use keyward_kms::{MacError, MacOutcome};
use serde::{Deserialize, Serialize};

/// `Content-Type` of the binary encoding, request and answer.
pub const BINARY: &str = "application/vnd.keyward.macs.v1";
/// `Accept` for a streamed JSON answer: one line per item, then a summary.
pub const NDJSON: &str = "application/x-ndjson";
/// First bytes of a binary request.
pub const REQUEST_MAGIC: [u8; 4] = *b"KWMV";
/// First bytes of a binary answer.
pub const ANSWER_MAGIC: [u8; 4] = *b"KWMA";
/// The binary encoding's version byte.
pub const VERSION: u8 = 1;
/// Header: magic, version, flags (0), u32 item count.
pub const HEADER_LEN: usize = 10;

/// The algorithm of binary code `code` (docs/protocol.md §6.6).
pub fn algorithm_of_code(code: u8) -> Option<MacAlgorithm> {
    Some(match code {
        1 => MacAlgorithm::Iso9797M1Tdes,
        2 => MacAlgorithm::Iso9797M3,
        3 => MacAlgorithm::CmacTdes,
        4 => MacAlgorithm::CmacAes,
        5 => MacAlgorithm::CupEcb,
        _ => return None,
    })
}

/// The binary code of `algorithm`.
pub fn code_of_algorithm(algorithm: MacAlgorithm) -> u8 {
    match algorithm {
        MacAlgorithm::Iso9797M1Tdes => 1,
        MacAlgorithm::Iso9797M3 => 2,
        MacAlgorithm::CmacTdes => 3,
        MacAlgorithm::CmacAes => 4,
        MacAlgorithm::CupEcb => 5,
    }
}

/// The binary code of the algorithm named `name`, for clients that hold
/// names (`kwctl`'s JSON-shaped input).
pub fn algorithm_code(name: &str) -> Option<u8> {
    name.parse().ok().map(code_of_algorithm)
}

/// One item of a JSON request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// 16 hex digits.
    pub device_id: String,
    pub issuer_id: String,
    pub key_version: u32,
    /// `ISO9797-1-M1-TDES`, `ISO9797-1-M3`, `CMAC-TDES`, `CMAC-AES`, `CUP-ECB`.
    pub algorithm: String,
    /// ISO 9797-1 padding method 1 or 2; only for the ISO 9797-1 algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<u8>,
    /// The message, base64.
    pub message: String,
    /// The MAC, base64; for `CUP-ECB` also the 8 ASCII hex characters as
    /// they are (`E267B6E2`).
    pub mac: String,
}

/// A JSON request. The server reads each item on its own, so one malformed
/// item is an error for that item only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub items: Vec<Item>,
}

/// One item of a binary request, as framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryItem {
    pub device_id: [u8; 8],
    pub issuer_id: Vec<u8>,
    pub key_version: u32,
    /// [`algorithm_of_code`]; anything else is an error for the item.
    pub algorithm: u8,
    /// 0 for none, 1 or 2.
    pub padding: u8,
    pub message: Vec<u8>,
    pub mac: Vec<u8>,
}

/// The answer for one item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Valid,
    Invalid,
    /// The item could not be checked; a stable code says why.
    Error(String),
}

impl Verdict {
    /// `valid`, `invalid` or `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Error(_) => "error",
        }
    }
    fn code(&self) -> Option<&str> {
        match self {
            Self::Error(c) => Some(c),
            _ => None,
        }
    }
}

/// One result as JSON: `{"result": "valid"}`, `{"result": "error", "code": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl From<&Verdict> for ItemResult {
    fn from(v: &Verdict) -> Self {
        Self {
            result: v.as_str().to_owned(),
            code: v.code().map(str::to_owned),
        }
    }
}

impl From<&MacOutcome> for ItemResult {
    fn from(o: &MacOutcome) -> Self {
        let (result, code) = outcome_parts(o);
        Self {
            result: result.to_owned(),
            code: code.map(|e| e.code().to_owned()),
        }
    }
}

/// `valid`, `invalid` or `error`, and the error.
fn outcome_parts(o: &MacOutcome) -> (&'static str, Option<MacError>) {
    match o {
        MacOutcome::Valid => ("valid", None),
        MacOutcome::Invalid => ("invalid", None),
        MacOutcome::Error(e) => ("error", Some(*e)),
    }
}

impl ItemResult {
    pub fn verdict(&self) -> Verdict {
        match (self.result.as_str(), &self.code) {
            ("valid", _) => Verdict::Valid,
            ("invalid", _) => Verdict::Invalid,
            (_, Some(c)) => Verdict::Error(c.clone()),
            (other, None) => Verdict::Error(other.to_owned()),
        }
    }
}

/// Counts by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub valid: u64,
    pub invalid: u64,
    pub error: u64,
}

impl Summary {
    pub fn add(&mut self, v: &Verdict) {
        match v {
            Verdict::Valid => self.valid += 1,
            Verdict::Invalid => self.invalid += 1,
            Verdict::Error(_) => self.error += 1,
        }
    }
    pub fn add_outcome(&mut self, o: &MacOutcome) {
        match o {
            MacOutcome::Valid => self.valid += 1,
            MacOutcome::Invalid => self.invalid += 1,
            MacOutcome::Error(_) => self.error += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.valid + self.invalid + self.error
    }
}

/// The JSON answer: results in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyAnswer {
    pub count: u64,
    pub summary: Summary,
    pub results: Vec<ItemResult>,
}

/// One line of a streamed JSON answer: an item (`index`, `result`, `code`)
/// or, last, the `summary`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub item: Option<ItemResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// Why a binary frame was refused; `offset` is where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame at byte {offset}: {reason}")]
pub struct FrameError {
    pub offset: usize,
    pub reason: &'static str,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let Some(end) = end else {
            return Err(FrameError {
                offset: self.at,
                reason: what,
            });
        };
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The smallest item: device id, issuer length, version, algorithm, padding,
/// message length, MAC length.
const MIN_ITEM_LEN: usize = 8 + 1 + 4 + 1 + 1 + 4 + 1;

/// Reads the header of a binary request: the item count.
pub fn decode_request_header(buf: &[u8]) -> Result<u32, FrameError> {
    let mut r = Reader { buf, at: 0 };
    header(&mut r, REQUEST_MAGIC)
}

fn header(r: &mut Reader<'_>, magic: [u8; 4]) -> Result<u32, FrameError> {
    if r.take(4, "truncated header")? != magic {
        return Err(FrameError {
            offset: 0,
            reason: "wrong magic",
        });
    }
    if r.u8("truncated header")? != VERSION {
        return Err(FrameError {
            offset: 4,
            reason: "unsupported version",
        });
    }
    if r.u8("truncated header")? != 0 {
        return Err(FrameError {
            offset: 5,
            reason: "flags must be 0",
        });
    }
    r.u32("truncated header")
}

/// Decodes a whole binary request (docs/protocol.md §6.6).
pub fn decode_request(buf: &[u8]) -> Result<Vec<BinaryItem>, FrameError> {
    let count = decode_request_header(buf)?;
    decode_request_items(buf, count)
}

/// Decodes the items of a binary request whose header
/// ([`decode_request_header`]) said `count`; the header is not read again.
pub fn decode_request_items(buf: &[u8], count: u32) -> Result<Vec<BinaryItem>, FrameError> {
    let count = count as usize;
    let mut r = Reader {
        buf,
        at: HEADER_LEN,
    };
    // The count is checked against the bytes there before anything is
    // allocated for it.
    if count > buf.len().saturating_sub(HEADER_LEN) / MIN_ITEM_LEN {
        return Err(FrameError {
            offset: 6,
            reason: "count larger than the frame holds",
        });
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let mut device_id = [0u8; 8];
        device_id.copy_from_slice(r.take(8, "truncated item: device id")?);
        let n = r.u8("truncated item: issuer length")? as usize;
        let issuer_id = r.take(n, "truncated item: issuer id")?.to_vec();
        let key_version = r.u32("truncated item: key version")?;
        let algorithm = r.u8("truncated item: algorithm")?;
        let padding = r.u8("truncated item: padding")?;
        let n = r.u32("truncated item: message length")? as usize;
        let message = r.take(n, "truncated item: message")?.to_vec();
        let n = r.u8("truncated item: MAC length")? as usize;
        let mac = r.take(n, "truncated item: MAC")?.to_vec();
        items.push(BinaryItem {
            device_id,
            issuer_id,
            key_version,
            algorithm,
            padding,
            message,
            mac,
        });
    }
    if r.at != buf.len() {
        return Err(FrameError {
            offset: r.at,
            reason: "trailing bytes after the last item",
        });
    }
    Ok(items)
}

/// Why an item cannot be put in a binary frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item {index}: {reason}")]
pub struct EncodeError {
    pub index: usize,
    pub reason: &'static str,
}

/// Encodes a binary request.
pub fn encode_request(items: &[BinaryItem]) -> Result<Vec<u8>, EncodeError> {
    let count = u32::try_from(items.len()).map_err(|_| EncodeError {
        index: 0,
        reason: "more than 2^32-1 items",
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + items.len() * 64);
    out.extend_from_slice(&REQUEST_MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&count.to_be_bytes());
    for (index, it) in items.iter().enumerate() {
        let bad = |reason| EncodeError { index, reason };
        out.extend_from_slice(&it.device_id);
        out.push(u8::try_from(it.issuer_id.len()).map_err(|_| bad("issuer id over 255 bytes"))?);
        out.extend_from_slice(&it.issuer_id);
        out.extend_from_slice(&it.key_version.to_be_bytes());
        out.push(it.algorithm);
        out.push(it.padding);
        let n = u32::try_from(it.message.len()).map_err(|_| bad("message over 4 GiB"))?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&it.message);
        out.push(u8::try_from(it.mac.len()).map_err(|_| bad("MAC over 255 bytes"))?);
        out.extend_from_slice(&it.mac);
    }
    Ok(out)
}

/// The header of a binary answer of `count` items.
pub fn encode_answer_header(count: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&ANSWER_MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&count.to_be_bytes());
    out
}

/// Appends one result of a binary answer: u8 result (0 valid, 1 invalid,
/// 2 error), u8 code length, code (ASCII).
pub fn encode_verdict(out: &mut Vec<u8>, v: &Verdict) {
    match v {
        Verdict::Valid => out.extend_from_slice(&[0, 0]),
        Verdict::Invalid => out.extend_from_slice(&[1, 0]),
        Verdict::Error(code) => {
            let code = &code.as_bytes()[..code.len().min(255)];
            out.push(2);
            out.push(code.len() as u8);
            out.extend_from_slice(code);
        }
    }
}

/// Appends one result of a binary answer, as [`encode_verdict`].
pub fn encode_outcome(out: &mut Vec<u8>, o: &MacOutcome) {
    match o {
        MacOutcome::Valid => out.extend_from_slice(&[0, 0]),
        MacOutcome::Invalid => out.extend_from_slice(&[1, 0]),
        MacOutcome::Error(e) => {
            let code = e.code().as_bytes();
            let code = &code[..code.len().min(255)];
            out.push(2);
            out.push(code.len() as u8);
            out.extend_from_slice(code);
        }
    }
}

/// Decodes a whole binary answer.
pub fn decode_answer(buf: &[u8]) -> Result<Vec<Verdict>, FrameError> {
    let mut d = AnswerDecoder::default();
    let out = d.push(buf)?;
    d.finish()?;
    Ok(out)
}

/// Decodes a binary answer as it arrives (a streamed answer comes in
/// pieces cut anywhere): [`AnswerDecoder::push`] each piece, then
/// [`AnswerDecoder::finish`].
#[derive(Debug, Default)]
pub struct AnswerDecoder {
    /// Bytes of an incomplete header or result.
    pending: Vec<u8>,
    /// Offset of `pending[0]` in the whole answer.
    offset: usize,
    count: Option<u32>,
    seen: u32,
}

impl AnswerDecoder {
    /// The item count of the header, once it has arrived.
    pub fn count(&self) -> Option<u32> {
        self.count
    }

    /// The results completed by `bytes`, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Verdict>, FrameError> {
        self.pending.extend_from_slice(bytes);
        let mut r = Reader {
            buf: &self.pending,
            at: 0,
        };
        let count = match self.count {
            Some(c) => c,
            None if r.buf.len() < HEADER_LEN => return Ok(Vec::new()),
            None => {
                let c = header(&mut r, ANSWER_MAGIC)?;
                self.count = Some(c);
                c
            }
        };
        let mut out = Vec::new();
        while self.seen < count {
            let at = r.at;
            let (Some(&result), Some(&n)) = (r.buf.get(at), r.buf.get(at + 1)) else {
                break;
            };
            let Ok(code) = Reader {
                buf: r.buf,
                at: at + 2,
            }
            .take(n as usize, "") else {
                break;
            };
            r.at = at + 2 + n as usize;
            out.push(match (result, n) {
                (0, 0) => Verdict::Valid,
                (1, 0) => Verdict::Invalid,
                (2, _) => Verdict::Error(String::from_utf8_lossy(code).into_owned()),
                _ => {
                    return Err(FrameError {
                        offset: self.offset + at,
                        reason: "unknown result byte",
                    });
                }
            });
            self.seen += 1;
        }
        if self.seen == count && r.at != r.buf.len() {
            return Err(FrameError {
                offset: self.offset + r.at,
                reason: "trailing bytes after the last result",
            });
        }
        let used = r.at;
        self.pending.drain(..used);
        self.offset += used;
        Ok(out)
    }

    /// Errors unless the whole answer has arrived.
    pub fn finish(self) -> Result<(), FrameError> {
        match self.count {
            None => Err(FrameError {
                offset: self.offset,
                reason: "truncated header",
            }),
            Some(c) if self.seen < c => Err(FrameError {
                offset: self.offset,
                reason: "truncated result",
            }),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> BinaryItem {
        BinaryItem {
            device_id: [1, 2, 3, 4, 5, 6, 7, 8],
            issuer_id: b"bank-a".to_vec(),
            key_version: 3,
            algorithm: 4,
            padding: 0,
            message: b"hello".to_vec(),
            mac: vec![9; 16],
        }
    }

    #[test]
    fn request_round_trips_and_refuses_bad_frames() {
        let items = vec![item(), item()];
        let buf = encode_request(&items).unwrap();
        assert_eq!(decode_request(&buf).unwrap(), items);
        assert_eq!(decode_request_header(&buf).unwrap(), 2);
        // Truncated anywhere, one trailing byte, a wrong magic or count.
        for cut in 0..buf.len() {
            assert!(decode_request(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(
            decode_request(&long).unwrap_err().reason,
            "trailing bytes after the last item"
        );
        let mut magic = buf.clone();
        magic[0] = b'X';
        assert_eq!(decode_request(&magic).unwrap_err().reason, "wrong magic");
        let mut count = buf.clone();
        count[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_request(&count).is_err());
    }

    #[test]
    fn algorithm_codes_decode_to_the_enum() {
        for alg in MacAlgorithm::ALL {
            let code = code_of_algorithm(alg);
            assert_eq!(algorithm_of_code(code), Some(alg));
            assert_eq!(algorithm_code(alg.as_str()), Some(code));
        }
        assert_eq!(algorithm_of_code(0), None);
        assert_eq!(algorithm_of_code(6), None);
    }

    #[test]
    fn answer_round_trips() {
        let vs = vec![
            Verdict::Valid,
            Verdict::Invalid,
            Verdict::Error("unknown_key_version".into()),
        ];
        let mut buf = encode_answer_header(3);
        for v in &vs {
            encode_verdict(&mut buf, v);
        }
        assert_eq!(decode_answer(&buf).unwrap(), vs);
        for cut in 0..buf.len() {
            assert!(decode_answer(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(
            decode_answer(&long).unwrap_err().reason,
            "trailing bytes after the last result"
        );
        // Streamed: the same results whatever the pieces.
        for size in 1..buf.len() {
            let mut d = AnswerDecoder::default();
            let mut got = Vec::new();
            for piece in buf.chunks(size) {
                got.extend(d.push(piece).unwrap());
            }
            d.finish().unwrap();
            assert_eq!(got, vs, "pieces of {size}");
        }
    }
}
