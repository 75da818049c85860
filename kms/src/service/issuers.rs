//! Issuers: their master keys are generated in the HSM and recorded, with
//! their KCVs, in the catalog.

use crate::catalog::{IssuerRecord, MasterKeyRecord, MasterKeyRole};
use crate::db::now_ms;
use crate::error::{KmsError, Result};
use crate::hsm::{KeySpec, Usage};
use crate::keys::{self, IssuerKeys, master_label};
use crate::service::Kms;
use crate::types::{IssuerId, Kcv, KeyFamily};

impl Kms {
    /// Creates an issuer: its master keys are generated in the HSM as token
    /// objects (sensitive, non-extractable, derive-only) and recorded with
    /// their KCVs. A master key left on the token by an interrupted earlier
    /// attempt is adopted rather than duplicated.
    pub async fn create_issuer(&self, id: IssuerId, family: KeyFamily) -> Result<IssuerRecord> {
        if self.catalog.issuer(&id).await?.is_some() {
            return Err(KmsError::IssuerExists(id));
        }
        self.probe_families(&[family]).await?;
        let roles = [MasterKeyRole::ImkTmk, MasterKeyRole::ImkAuth];
        let labels: Vec<String> = roles.iter().map(|r| master_label(&id, *r)).collect();
        let generated = self
            .pool
            .run(move |hsm| {
                let mut out = Vec::new();
                for label in labels {
                    let (obj, created) = match hsm.find_key(&label)? {
                        Some(obj) => (obj, false),
                        None => {
                            let spec = KeySpec {
                                kind: family.secret_kind(),
                                usage: Usage::DERIVE,
                                token_label: Some(label.clone()),
                                extractable: false,
                            };
                            (hsm.generate_key(&spec)?, true)
                        }
                    };
                    let kcv = hsm.check_value(obj)?.ok_or(KmsError::Hsm {
                        function: "C_GetAttributeValue",
                        problem: "token gave no CKA_CHECK_VALUE",
                    })?;
                    out.push((label, obj, created, kcv));
                }
                Ok(out)
            })
            .await?;
        let record = IssuerRecord {
            id: id.clone(),
            family,
            master_keys: roles
                .iter()
                .zip(&generated)
                .map(|(role, (label, _, _, kcv))| MasterKeyRecord {
                    role: *role,
                    label: label.clone(),
                    kcv: Kcv {
                        method: keys::master_kcv_method(family),
                        value: *kcv,
                    },
                })
                .collect(),
            created_at_ms: now_ms(),
        };
        if let Err(e) = self.catalog.create_issuer(&record).await {
            // Leave no orphan master keys behind that this call created.
            let created: Vec<_> = generated.iter().filter(|g| g.2).map(|g| g.1).collect();
            let _ = self
                .pool
                .run(move |hsm| {
                    for obj in created {
                        hsm.destroy(obj)?;
                    }
                    Ok(())
                })
                .await;
            return Err(e);
        }
        tracing::info!(issuer = %id, family = %family, "issuer created with HSM master keys");
        Ok(record)
    }

    /// An issuer or [`KmsError::UnknownIssuer`].
    pub async fn issuer(&self, id: &IssuerId) -> Result<IssuerRecord> {
        self.catalog
            .issuer(id)
            .await?
            .ok_or_else(|| KmsError::UnknownIssuer(id.clone()))
    }

    /// All issuers with their master keys, ordered by id.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>> {
        self.catalog.issuers().await
    }

    pub(crate) async fn issuer_keys(&self, id: &IssuerId) -> Result<IssuerKeys> {
        if let Some(ik) = self
            .issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(ik.clone());
        }
        let rec = self.issuer(id).await?;
        let ik = IssuerKeys {
            id: rec.id,
            family: rec.family,
        };
        self.issuers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), ik.clone());
        Ok(ik)
    }
}
