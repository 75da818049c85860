//! The bulk encodings (JSON, binary) read into items for kms and answers
//! written back; the byte formats themselves are `wire::macs`, shared with
//! `kwctl` and the tests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::{DeviceId, IssuerId, KeyVersion, MacAlgorithm, Padding};
use keyward_kms::{MacError, MacItem, MacOutcome};

use super::BatchError;
use crate::wire::macs as wire;

/// The encoding of a request and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Binary,
}

impl Encoding {
    /// By `Content-Type` (its media type, without parameters).
    pub fn of_media_type(media_type: &str) -> Result<Self, BatchError> {
        match media_type {
            "application/json" => Ok(Self::Json),
            t if t == wire::BINARY => Ok(Self::Binary),
            _ => Err(BatchError::MediaType),
        }
    }

    /// For the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }

    /// `Content-Type` of the answer, whole or streamed.
    pub fn answer_type(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Self::Json, false) => "application/json",
            (Self::Json, true) => wire::NDJSON,
            (Self::Binary, _) => wire::BINARY,
        }
    }
}

/// A request's items, each ready for kms or its error, with its algorithm
/// when known (a metric label).
#[derive(Debug, Default)]
pub struct Items {
    pub items: Vec<Result<MacItem, MacError>>,
    pub algorithms: Vec<Option<MacAlgorithm>>,
}

impl Items {
    fn with_capacity(n: usize) -> Self {
        Self {
            items: Vec::with_capacity(n),
            algorithms: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, algorithm: Option<MacAlgorithm>, item: Result<MacItem, MacError>) {
        self.algorithms.push(algorithm);
        self.items.push(item);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Cuts a body into items; the count is checked against `max` before any
/// item is read (the binary header is read once, for both).
pub fn decode(body: &[u8], encoding: Encoding, max: usize) -> Result<Items, BatchError> {
    match encoding {
        Encoding::Binary => {
            let count = wire::decode_request_header(body)?;
            if count as usize > max {
                return Err(BatchError::TooLarge {
                    items: count as usize,
                    max,
                });
            }
            let framed = wire::decode_request_items(body, count)?;
            let mut items = Items::with_capacity(framed.len());
            for it in framed {
                let (alg, item) = binary_item(it);
                items.push(alg, item);
            }
            Ok(items)
        }
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let read = serde::de::DeserializeSeed::deserialize(JsonBody { max }, &mut de)
                .and_then(|read| de.end().map(|()| read))
                .map_err(|e| BatchError::Json(e.to_string()))?;
            read.map_err(|items| BatchError::TooLarge { items, max })
        }
    }
}

/// `{"items": [...]}` read as it streams: each item becomes a [`MacItem`]
/// (or its error) as soon as it is parsed, and past `max` the rest is only
/// counted, so a refused body costs memory for `max` items, not for the
/// body's worth of parsed values. `Err(count)` when there are too many.
struct JsonBody {
    max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonBody {
    type Value = Result<Items, usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonBody {
    type Value = Result<Items, usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"an object {"items": [...]}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut read = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "items" {
                return Err(A::Error::unknown_field(&key, &["items"]));
            }
            if read.is_some() {
                return Err(A::Error::duplicate_field("items"));
            }
            read = Some(map.next_value_seed(JsonItems { max: self.max })?);
        }
        read.ok_or_else(|| A::Error::missing_field("items"))
    }
}

struct JsonItems {
    max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for JsonItems {
    type Value = Result<Items, usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonItems {
    type Value = Result<Items, usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Items::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            if items.len() == self.max {
                let mut count = items.len() + 1;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                return Ok(Err(count));
            }
            let (alg, item) = json_item(v);
            items.push(alg, item);
        }
        Ok(Ok(items))
    }
}

fn padding(n: u8) -> Result<Option<Padding>, MacError> {
    match n {
        0 => Ok(None),
        n => Padding::from_number(n)
            .map(Some)
            .map_err(|_| MacError::InvalidPadding),
    }
}

fn issuer(s: &str) -> Result<IssuerId, MacError> {
    s.parse().map_err(|_| MacError::InvalidIssuerId)
}

type Decoded = (Option<MacAlgorithm>, Result<MacItem, MacError>);

fn json_item(v: serde_json::Value) -> Decoded {
    let Ok(it) = serde_json::from_value::<wire::Item>(v) else {
        return (None, Err(MacError::InvalidItem));
    };
    let alg = it
        .algorithm
        .parse::<MacAlgorithm>()
        .map_err(|_| MacError::UnsupportedAlgorithm);
    let known = alg.ok();
    let item = (|| {
        let algorithm = alg?;
        let device: DeviceId = it
            .device_id
            .parse()
            .map_err(|_| MacError::InvalidDeviceId)?;
        let message = B64
            .decode(&it.message)
            .map_err(|_| MacError::InvalidMessage)?;
        // CUP-ECB's MAC is 8 ASCII hex characters; they may come as they are.
        let mac = if algorithm == MacAlgorithm::CupEcb
            && it.mac.len() == 8
            && it.mac.bytes().all(|b| b.is_ascii_hexdigit())
        {
            it.mac.into_bytes()
        } else {
            B64.decode(&it.mac).map_err(|_| MacError::InvalidMac)?
        };
        Ok(MacItem {
            issuer: issuer(&it.issuer_id)?,
            device,
            version: KeyVersion(it.key_version),
            algorithm,
            padding: padding(it.padding.unwrap_or(0))?,
            message,
            mac,
        })
    })();
    (known, item)
}

fn binary_item(it: wire::BinaryItem) -> Decoded {
    let alg = wire::algorithm_of_code(it.algorithm).ok_or(MacError::UnsupportedAlgorithm);
    let known = alg.ok();
    let item = (|| {
        let issuer_text =
            std::str::from_utf8(&it.issuer_id).map_err(|_| MacError::InvalidIssuerId)?;
        Ok(MacItem {
            issuer: issuer(issuer_text)?,
            device: DeviceId::from_bytes(it.device_id),
            version: KeyVersion(it.key_version),
            algorithm: alg?,
            padding: padding(it.padding)?,
            message: it.message,
            mac: it.mac,
        })
    })();
    (known, item)
}

/// The whole answer of `outcomes`, with the batch's `summary`.
pub fn whole_answer(
    encoding: Encoding,
    outcomes: &[MacOutcome],
    summary: wire::Summary,
) -> Vec<u8> {
    match encoding {
        Encoding::Json => {
            let answer = wire::VerifyAnswer {
                count: outcomes.len() as u64,
                summary,
                results: outcomes.iter().map(wire::ItemResult::from).collect(),
            };
            serde_json::to_vec(&answer).unwrap_or_default()
        }
        Encoding::Binary => {
            let mut out = wire::encode_answer_header(outcomes.len() as u32);
            out.reserve(outcomes.len() * 2);
            for o in outcomes {
                wire::encode_outcome(&mut out, o);
            }
            out
        }
    }
}

/// A streamed answer, piece by piece: binary, its header then results;
/// JSON, a line per item then the summary's.
#[derive(Debug)]
pub struct Streamer {
    encoding: Encoding,
    index: u64,
}

impl Streamer {
    pub fn new(encoding: Encoding) -> Self {
        Self { encoding, index: 0 }
    }

    /// What goes before the first results.
    pub fn head(&self, count: usize) -> Option<Vec<u8>> {
        (self.encoding == Encoding::Binary).then(|| wire::encode_answer_header(count as u32))
    }

    /// The next results, in order.
    pub fn results(&mut self, outcomes: &[MacOutcome]) -> Vec<u8> {
        let mut out = Vec::with_capacity(outcomes.len() * 32);
        for o in outcomes {
            match self.encoding {
                Encoding::Binary => wire::encode_outcome(&mut out, o),
                Encoding::Json => {
                    let line = wire::StreamLine {
                        index: Some(self.index),
                        item: Some(o.into()),
                        summary: None,
                    };
                    if serde_json::to_writer(&mut out, &line).is_ok() {
                        out.push(b'\n');
                    }
                }
            }
            self.index += 1;
        }
        out
    }

    /// What follows the last results.
    pub fn tail(&self, summary: wire::Summary) -> Option<Vec<u8>> {
        if self.encoding != Encoding::Json {
            return None;
        }
        let line = wire::StreamLine {
            index: None,
            item: None,
            summary: Some(summary),
        };
        let mut out = serde_json::to_vec(&line).ok()?;
        out.push(b'\n');
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str, max: usize) -> Result<Items, BatchError> {
        decode(body.as_bytes(), Encoding::Json, max)
    }

    #[test]
    fn json_items_past_the_limit_are_only_counted() {
        let body = format!("{{\"items\":[{}0]}}", "0,".repeat(9));
        match json(&body, 3) {
            Err(BatchError::TooLarge { items: 10, max: 3 }) => {}
            other => panic!("{other:?}"),
        }
        let items = json(&body, 10).expect("within the limit");
        assert_eq!(items.len(), 10);
        assert!(
            items
                .items
                .iter()
                .all(|i| matches!(i, Err(MacError::InvalidItem)))
        );
    }

    #[test]
    fn json_body_shape_is_checked() {
        for bad in [
            "{}",
            "[]",
            r#"{"items":[],"more":1}"#,
            r#"{"items":[],"items":[]}"#,
            r#"{"items":[]} x"#,
            r#"{"items":[0,"#,
        ] {
            assert!(matches!(json(bad, 10), Err(BatchError::Json(_))), "{bad}");
        }
        assert!(json(r#" {"items":[]} "#, 10).expect("empty").is_empty());
    }
}
