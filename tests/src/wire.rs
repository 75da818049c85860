//! The device side of the provisioning wire formats: the simulator's answers
//! as `keyward_server::wire` bodies, and the init package it receives checked
//! and turned into the kms type it opens.

use anyhow::{Context, Result};
use keyward_kms::wrap::InitPackage;
use keyward_server::wire::devices::{self as wire, ConfirmRequest, NamedKcv};

use crate::simulator::InitAnswer;

/// Parses and checks the init package JSON of `POST /admin/v1/devices/{id}/init`.
pub fn init_package_from_json(v: &serde_json::Value) -> Result<InitPackage> {
    let pkg: wire::InitPackage =
        serde_json::from_value(v.clone()).context("init package: not the documented shape")?;
    Ok(InitPackage::try_from(&pkg)?)
}

/// The body of `POST /admin/v1/devices/{id}/init/confirm`: the KCVs the
/// device computed, in the order it computed them.
pub fn confirm_body(issuer: &str, answer: &InitAnswer) -> ConfirmRequest {
    ConfirmRequest {
        issuer_id: issuer.to_owned(),
        kcvs: answer
            .kcvs
            .iter()
            .map(|(name, kcv)| NamedKcv {
                name: name.clone(),
                method: kcv.method.as_str().to_owned(),
                value: kcv.hex(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use keyward_kms::types::{Kcv, KeyFamily};
    use keyward_kms::wrap::{WrapScheme, WrappedKey};
    use serde_json::{Value, json};

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
            serde_json::to_value(confirm_body("bank-a", &answer)).unwrap(),
            json!({"issuer_id": "bank-a", "kcvs": [
                {"name": "TMK", "method": "KCV-TDES", "value": "A1B2C3"},
                {"name": "AUTH", "method": "KCV-TDES", "value": "0A0B0C"},
            ]})
        );
    }
}
