//! Issuers: their master keys are generated in the HSM and recorded, with
//! their KCVs, in the catalog.

use crate::catalog::{Catalog, IssuerRecord, MasterKeyRecord, MasterKeyRole};
use crate::db::{Tx, now_ms};
use crate::error::{KmsError, Result};
use crate::hsm::{KeySpec, ObjectId};
use crate::keys::{self, IssuerKeys, master_label};
use crate::service::Kms;
use crate::types::{IssuerId, Kcv, KeyFamily};

/// An issuer whose master keys the HSM holds, not recorded yet
/// ([`Kms::prepare_issuer`]).
#[derive(Debug, Clone)]
pub struct NewIssuer {
    record: IssuerRecord,
    /// The keys this attempt made (not adopted ones), destroyed if it fails.
    created: Vec<ObjectId>,
}

impl NewIssuer {
    pub fn record(&self) -> &IssuerRecord {
        &self.record
    }
}

/// A token key made for an existing issuer, not recorded yet
/// ([`Kms::prepare_issuer_key`]); none if the issuer has one of that role.
#[derive(Debug, Clone)]
pub struct NewIssuerKey {
    issuer: IssuerId,
    record: Option<MasterKeyRecord>,
}

impl Kms {
    /// Creates an issuer: its master keys are generated in the HSM as token
    /// objects (sensitive, non-extractable, derive-only; the zone PIN key
    /// encrypt-only) and recorded with their KCVs. A master key left on the token by an interrupted earlier
    /// attempt is adopted rather than duplicated.
    pub async fn create_issuer(&self, id: IssuerId, family: KeyFamily) -> Result<IssuerRecord> {
        let new = self.prepare_issuer(id, family).await?;
        let created = self
            .db()
            .write("create_issuer", |mut tx| {
                let new = &new;
                async move { Self::create_issuer_in(&mut tx, new).await.map(|v| (tx, v)) }
            })
            .await;
        match created {
            Ok(record) => {
                tracing::info!(issuer = %record.id, family = %record.family,
                    "issuer created with HSM master keys");
                Ok(record)
            }
            Err(e) => {
                self.discard_issuer(&new).await;
                Err(self.creation_refused(&new.record.id, e).await)
            }
        }
    }

    /// [`Kms::create_issuer`]'s checks and HSM work: the master keys made
    /// (or adopted) on the token, before the transaction that records them
    /// ([`Kms::create_issuer_in`]); [`Kms::discard_issuer`] if that fails.
    pub async fn prepare_issuer(&self, id: IssuerId, family: KeyFamily) -> Result<NewIssuer> {
        if self.catalog.issuer(&id).await?.is_some() {
            return Err(KmsError::IssuerExists(id));
        }
        self.probe_families(&[family]).await?;
        let roles = MasterKeyRole::ALL;
        let wanted: Vec<(String, MasterKeyRole)> =
            roles.iter().map(|r| (master_label(&id, *r), *r)).collect();
        let generated = self
            .pool
            .run(move |hsm| {
                let mut out = Vec::new();
                for (label, role) in wanted {
                    let (obj, created, kcv) = token_key(hsm, family, &label, role)?;
                    out.push((label, obj, created, kcv));
                }
                Ok(out)
            })
            .await?;
        let record = IssuerRecord {
            id,
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
        let created = generated.iter().filter(|g| g.2).map(|g| g.1).collect();
        Ok(NewIssuer { record, created })
    }

    /// Records a prepared issuer in the caller's transaction.
    pub async fn create_issuer_in(tx: &mut Tx, new: &NewIssuer) -> Result<IssuerRecord> {
        Catalog::create_issuer_in(tx, &new.record).await?;
        Ok(new.record.clone())
    }

    /// After a failed transaction: destroys the master keys
    /// [`Kms::prepare_issuer`] made (adopted ones stay), so a failed
    /// creation leaves none behind; none if the issuer is recorded after
    /// all, or its record cannot be read (the next attempt adopts them).
    pub async fn discard_issuer(&self, new: &NewIssuer) {
        // A commit whose answer was lost may have recorded the issuer: its
        // keys are destroyed only once a read shows it absent.
        if !matches!(self.catalog.issuer(&new.record.id).await, Ok(None)) {
            return;
        }
        let objects = new.created.clone();
        let destroyed = self
            .pool
            .run(move |hsm| {
                for obj in objects {
                    hsm.destroy(obj)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = destroyed {
            tracing::warn!(issuer = %new.record.id, code = e.code(),
                "master keys of a failed issuer creation stay on the token; the next attempt adopts them");
        }
    }

    /// Why creating issuer `id` failed with `e`, a unique violation named
    /// ([`Catalog::creation_refused`]).
    pub async fn creation_refused(&self, id: &IssuerId, e: KmsError) -> KmsError {
        self.catalog.creation_refused(id, e).await
    }

    /// Gives an existing issuer its token key of `role` if it has none (the
    /// zone PIN key of an issuer created before there was one); returns the
    /// issuer as it is now, and whether a key was added.
    pub async fn add_issuer_key(
        &self,
        id: &IssuerId,
        role: MasterKeyRole,
    ) -> Result<(IssuerRecord, bool)> {
        let new = self.prepare_issuer_key(id, role).await?;
        let added = self
            .db()
            .write("add_issuer_key", |mut tx| {
                let new = &new;
                async move { Self::add_issuer_key_in(&mut tx, new).await.map(|v| (tx, v)) }
            })
            .await?;
        Ok((self.issuer(id).await?, added))
    }

    /// [`Kms::add_issuer_key`]'s HSM work: the key made (or adopted) on the
    /// token, before the transaction that records it
    /// ([`Kms::add_issuer_key_in`]). A key left on the token by a failed
    /// transaction is adopted by the next attempt.
    pub async fn prepare_issuer_key(
        &self,
        id: &IssuerId,
        role: MasterKeyRole,
    ) -> Result<NewIssuerKey> {
        let issuer = self.issuer(id).await?;
        if issuer.master_keys.iter().any(|k| k.role == role) {
            return Ok(NewIssuerKey {
                issuer: id.clone(),
                record: None,
            });
        }
        let label = master_label(id, role);
        let family = issuer.family;
        let at = label.clone();
        let (_, _, kcv) = self
            .pool
            .run(move |hsm| token_key(hsm, family, &at, role))
            .await?;
        Ok(NewIssuerKey {
            issuer: id.clone(),
            record: Some(MasterKeyRecord {
                role,
                label,
                kcv: Kcv {
                    method: keys::master_kcv_method(family),
                    value: kcv,
                },
            }),
        })
    }

    /// Records a prepared key in the caller's transaction; false if the
    /// issuer had a key of that role already.
    pub async fn add_issuer_key_in(tx: &mut Tx, new: &NewIssuerKey) -> Result<bool> {
        let Some(record) = &new.record else {
            return Ok(false);
        };
        let added = Catalog::add_master_key_in(tx, &new.issuer, record).await?;
        if added {
            tracing::info!(issuer = %new.issuer, role = %record.role, "issuer token key added");
        }
        Ok(added)
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

/// The token key `label` of `role`: found (left by an interrupted earlier
/// attempt, adopted rather than duplicated) or generated, with its KCV.
fn token_key(
    hsm: &dyn crate::hsm::Hsm,
    family: KeyFamily,
    label: &str,
    role: MasterKeyRole,
) -> Result<(crate::hsm::ObjectId, bool, [u8; 3])> {
    let (obj, created) = match hsm.find_key(label)? {
        Some(obj) => (obj, false),
        None => {
            let spec = KeySpec {
                kind: family.secret_kind(),
                usage: role.usage(),
                token_label: Some(label.to_owned()),
                extractable: false,
            };
            (hsm.generate_key(&spec)?, true)
        }
    };
    let kcv = hsm.check_value(obj)?.ok_or(KmsError::Hsm {
        function: "C_GetAttributeValue",
        problem: "token gave no CKA_CHECK_VALUE",
    })?;
    Ok((obj, created, kcv))
}
