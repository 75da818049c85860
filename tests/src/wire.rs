//! The JSON wire formats of device provisioning, written from
//! `docs/admin-api.md` ("Provisioning", "Devices") alone and sharing no code
//! with the server, so an end-to-end test that feeds the server's answers
//! through here checks the documented format, not the server against itself.
//!
//! - [`init_package_from_json`]: the `201` answer of
//!   `POST /admin/v1/devices/{id}/init`.
//! - [`confirm_body`]: the body of `POST /admin/v1/devices/{id}/init/confirm`.
//!
//! Every documented field is required and checked (types, ids, base64, KCV
//! syntax, scheme against the ephemeral point, exactly one `TMK` and one
//! `AUTH`); fields the document does not name are ignored. Whether a KCV's
//! method fits the family is left to the device, which compares the KCVs.

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::{DeviceId, IssuerId, Kcv, KeyFamily};
use keyward_kms::wrap::{InitPackage, WrapScheme, WrappedKey};
use serde_json::{Map, Value, json};

use crate::simulator::InitAnswer;

/// Names of the keys an init package carries, as `&'static str`.
const KEY_NAMES: [&str; 2] = ["TMK", "AUTH"];

fn field<'a>(obj: &'a Map<String, Value>, name: &str, what: &str) -> Result<&'a Value> {
    obj.get(name)
        .with_context(|| format!("{what}: missing field {name:?}"))
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str, what: &str) -> Result<&'a str> {
    field(obj, name, what)?
        .as_str()
        .with_context(|| format!("{what}: field {name:?} must be a string"))
}

fn b64_field(obj: &Map<String, Value>, name: &str, what: &str) -> Result<Vec<u8>> {
    B64.decode(str_field(obj, name, what)?)
        .with_context(|| format!("{what}: field {name:?} is not base64"))
}

fn parse_scheme(s: &str) -> Result<WrapScheme> {
    [WrapScheme::EcdhP256AesKw, WrapScheme::RsaOaepSha1]
        .into_iter()
        .find(|w| w.as_str() == s)
        .ok_or_else(|| anyhow!("init package: unknown scheme {s:?}"))
}

fn parse_kcv(v: &Value, what: &str) -> Result<Kcv> {
    let obj = v
        .as_object()
        .with_context(|| format!("{what}: \"kcv\" must be an object"))?;
    let method = str_field(obj, "method", what)?;
    let value = str_field(obj, "value", what)?;
    Kcv::parse(method, value).with_context(|| format!("{what}: bad kcv"))
}

/// Parses the init package JSON of `POST /admin/v1/devices/{id}/init`.
pub fn init_package_from_json(v: &Value) -> Result<InitPackage> {
    const WHAT: &str = "init package";
    let obj = v.as_object().context("init package: not a JSON object")?;
    let device: DeviceId = str_field(obj, "device_id", WHAT)?
        .parse()
        .context("init package: bad device_id")?;
    let issuer: IssuerId = str_field(obj, "issuer_id", WHAT)?
        .parse()
        .context("init package: bad issuer_id")?;
    let family: KeyFamily = str_field(obj, "family", WHAT)?
        .parse()
        .context("init package: bad family")?;
    let scheme = parse_scheme(str_field(obj, "scheme", WHAT)?)?;
    let ephemeral_point = match field(obj, "ephemeral_point", WHAT)? {
        Value::Null => None,
        Value::String(s) => Some(
            B64.decode(s)
                .context("init package: ephemeral_point is not base64")?,
        ),
        _ => bail!("init package: ephemeral_point must be a string or null"),
    };
    match (scheme, &ephemeral_point) {
        (WrapScheme::EcdhP256AesKw, Some(p)) => ensure!(
            p.len() == 65 && p[0] == 0x04,
            "init package: ephemeral_point must be an uncompressed P-256 point (65 bytes, 04||X||Y)"
        ),
        (WrapScheme::EcdhP256AesKw, None) => {
            bail!("init package: scheme ECDH-P256+AES-KW needs an ephemeral_point")
        }
        (WrapScheme::RsaOaepSha1, Some(_)) => {
            bail!("init package: scheme RSA-OAEP-SHA1 has \"ephemeral_point\": null")
        }
        (WrapScheme::RsaOaepSha1, None) => {}
    }
    let list = field(obj, "keys", WHAT)?
        .as_array()
        .context("init package: \"keys\" must be an array")?;
    let mut keys: Vec<WrappedKey> = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let what = format!("init package: keys[{i}]");
        let ko = k
            .as_object()
            .with_context(|| format!("{what}: not an object"))?;
        let given = str_field(ko, "name", &what)?;
        let name = KEY_NAMES
            .into_iter()
            .find(|n| *n == given)
            .with_context(|| format!("{what}: unknown key name {given:?} (TMK or AUTH)"))?;
        ensure!(
            keys.iter().all(|k| k.name != name),
            "{what}: key {name} appears twice"
        );
        let wrapped = b64_field(ko, "wrapped", &what)?;
        ensure!(!wrapped.is_empty(), "{what}: \"wrapped\" is empty");
        let kcv = parse_kcv(field(ko, "kcv", &what)?, &what)?;
        keys.push(WrappedKey { name, wrapped, kcv });
    }
    for name in KEY_NAMES {
        ensure!(
            keys.iter().any(|k| k.name == name),
            "init package: key {name} is missing"
        );
    }
    Ok(InitPackage {
        issuer,
        device,
        family,
        scheme,
        ephemeral_point,
        keys,
    })
}

/// The body of `POST /admin/v1/devices/{id}/init/confirm`: the KCVs the
/// device computed, in the order it computed them.
pub fn confirm_body(issuer: &str, answer: &InitAnswer) -> Value {
    json!({
        "issuer_id": issuer,
        "kcvs": answer.kcvs.iter().map(|(name, kcv)| json!({
            "name": name,
            "method": kcv.method.as_str(),
            "value": kcv.hex(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init package as the server documents it, to make test cases.
    fn init_package_to_json(pkg: &InitPackage) -> Value {
        json!({
            "device_id": pkg.device.to_string(),
            "issuer_id": pkg.issuer.as_str(),
            "family": pkg.family.as_str(),
            "scheme": pkg.scheme.as_str(),
            "ephemeral_point": pkg.ephemeral_point.as_ref().map(|p| B64.encode(p)),
            "keys": pkg.keys.iter().map(|k| json!({
                "name": k.name,
                "wrapped": B64.encode(&k.wrapped),
                "kcv": {"method": k.kcv.method.as_str(), "value": k.kcv.hex()},
            })).collect::<Vec<_>>(),
        })
    }

    use keyward_kms::types::KcvMethod;

    fn by_hand(scheme: WrapScheme) -> InitPackage {
        InitPackage {
            issuer: "bank-a".parse().unwrap(),
            device: "0102030405060708".parse().unwrap(),
            family: KeyFamily::Tdes,
            scheme,
            ephemeral_point: match scheme {
                WrapScheme::EcdhP256AesKw => {
                    let mut p = vec![0x04];
                    p.extend(1..=64u8);
                    Some(p)
                }
                WrapScheme::RsaOaepSha1 => None,
            },
            keys: vec![
                WrappedKey {
                    name: "TMK",
                    wrapped: (0..24).collect(),
                    kcv: Kcv::parse("KCV-TDES", "A1B2C3").unwrap(),
                },
                WrappedKey {
                    name: "AUTH",
                    wrapped: (100..124).collect(),
                    kcv: Kcv::parse("KCV-TDES", "0D0E0F").unwrap(),
                },
            ],
        }
    }

    fn assert_same(a: &InitPackage, b: &InitPackage) {
        assert_eq!(a.issuer, b.issuer);
        assert_eq!(a.device, b.device);
        assert_eq!(a.family, b.family);
        assert_eq!(a.scheme, b.scheme);
        assert_eq!(a.ephemeral_point, b.ephemeral_point);
        assert_eq!(a.keys, b.keys);
    }

    #[test]
    fn init_package_round_trips() {
        for scheme in [WrapScheme::EcdhP256AesKw, WrapScheme::RsaOaepSha1] {
            let pkg = by_hand(scheme);
            let v = init_package_to_json(&pkg);
            assert_same(&init_package_from_json(&v).unwrap(), &pkg);
            // Through text too, as it travels.
            let text = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_same(&init_package_from_json(&back).unwrap(), &pkg);
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let point = B64.encode([[0x04u8].as_slice(), &[7u8; 64]].concat());
        let v = json!({
            "device_id": "0102030405060708", "issuer_id": "bank-a", "family": "aes",
            "scheme": "ECDH-P256+AES-KW", "ephemeral_point": point,
            "keys": [
                {"name": "AUTH", "wrapped": B64.encode([2u8; 24]), "kcv": {"method": "KCV-CMAC", "value": "a1b2c3"}},
                {"name": "TMK", "wrapped": B64.encode([1u8; 24]), "kcv": {"method": "KCV-CMAC", "value": "A1B2C4"}},
            ],
            "extra": "ignored",
        });
        let pkg = init_package_from_json(&v).unwrap();
        assert_eq!(pkg.device.to_string(), "0102030405060708");
        assert_eq!(pkg.issuer.as_str(), "bank-a");
        assert_eq!(pkg.family, KeyFamily::Aes);
        assert_eq!(pkg.scheme, WrapScheme::EcdhP256AesKw);
        assert_eq!(pkg.keys[0].name, "AUTH");
        assert_eq!(pkg.keys[0].wrapped, vec![2u8; 24]);
        assert_eq!(pkg.keys[0].kcv.method, KcvMethod::Cmac);
        assert_eq!(pkg.keys[0].kcv.hex(), "A1B2C3");
        assert_eq!(pkg.keys[1].name, "TMK");
    }

    #[test]
    fn refuses_malformed_packages() {
        let good = init_package_to_json(&by_hand(WrapScheme::EcdhP256AesKw));
        let rsa = init_package_to_json(&by_hand(WrapScheme::RsaOaepSha1));
        let edit = |base: &Value, f: &dyn Fn(&mut Value)| {
            let mut v = base.clone();
            f(&mut v);
            v
        };
        let bad = [
            json!("not an object"),
            edit(&good, &|v| {
                v.as_object_mut().unwrap().remove("device_id");
            }),
            edit(&good, &|v| v["device_id"] = json!("0102")),
            edit(&good, &|v| v["issuer_id"] = json!("Bank A")),
            edit(&good, &|v| v["family"] = json!("des")),
            edit(&good, &|v| v["scheme"] = json!("ECDH")),
            edit(&good, &|v| v["ephemeral_point"] = Value::Null),
            edit(&good, &|v| v["ephemeral_point"] = json!("!!")),
            edit(&good, &|v| {
                v["ephemeral_point"] = json!(B64.encode([4u8; 33]))
            }),
            edit(&good, &|v| {
                v.as_object_mut().unwrap().remove("ephemeral_point");
            }),
            edit(&rsa, &|v| {
                v["ephemeral_point"] = good["ephemeral_point"].clone()
            }),
            edit(&good, &|v| v["keys"] = json!({})),
            edit(&good, &|v| v["keys"][0]["name"] = json!("TPK")),
            edit(&good, &|v| v["keys"][1]["name"] = json!("TMK")),
            edit(&good, &|v| {
                v["keys"].as_array_mut().unwrap().pop();
            }),
            edit(&good, &|v| v["keys"][0]["wrapped"] = json!("%%%")),
            edit(&good, &|v| v["keys"][0]["wrapped"] = json!("")),
            edit(&good, &|v| v["keys"][0]["kcv"]["method"] = json!("KCV-X")),
            edit(&good, &|v| v["keys"][0]["kcv"]["value"] = json!("A1B2")),
            edit(&good, &|v| v["keys"][0]["kcv"] = json!("KCV-TDES:A1B2C3")),
        ];
        for (i, v) in bad.iter().enumerate() {
            assert!(init_package_from_json(v).is_err(), "case {i} accepted: {v}");
        }
    }

    #[test]
    fn confirm_body_is_the_documented_one() {
        let answer = InitAnswer {
            kcvs: vec![
                ("TMK".into(), Kcv::parse("KCV-TDES", "A1B2C3").unwrap()),
                ("AUTH".into(), Kcv::parse("KCV-TDES", "0a0b0c").unwrap()),
            ],
            accepted: true,
        };
        assert_eq!(
            confirm_body("bank-a", &answer),
            json!({"issuer_id": "bank-a", "kcvs": [
                {"name": "TMK", "method": "KCV-TDES", "value": "A1B2C3"},
                {"name": "AUTH", "method": "KCV-TDES", "value": "0A0B0C"},
            ]})
        );
    }
}
