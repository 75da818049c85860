//! Revocation and CRLs: the CRL is signed by the issuing CA key, its number
//! taken from the registry (it never goes backwards, across restarts and
//! replicas), re-signed after every revocation and when half its validity
//! has passed.

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams, SerialNumber,
};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{Ca, blocking, from_ms, ms, now_s, pem_encode};
use crate::error::{CaError, Result};
use crate::registry::{RevocationReason, Serial};
use crate::store::{Store, StoredCrl};
use keyward_kms::db::{Tx, now_ms};

/// A CRL signed by the issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub der: Vec<u8>,
    pub pem: String,
    /// The cRLNumber: increases with every CRL, across restarts and replicas.
    pub number: u64,
    pub this_update_ms: i64,
    pub next_update_ms: i64,
}

impl Crl {
    fn from_stored(s: StoredCrl) -> Result<Self> {
        Ok(Self {
            pem: pem_encode("X509 CRL", &s.der),
            number: u64::try_from(s.number).map_err(|_| CaError::CorruptRecord("ca_crl.number"))?,
            this_update_ms: s.this_update_ms,
            next_update_ms: s.next_update_ms,
            der: s.der,
        })
    }
}

/// See [`Ca::revocation_marker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationMarker {
    /// Counts revocations.
    pub revision: i64,
    /// The newest CRL stored, if any.
    pub crl_number: Option<i64>,
}

impl Ca {
    /// Revokes a certificate for good, then re-signs the CRL.
    /// [`CaError::UnknownSerial`] or [`CaError::AlreadyRevoked`] otherwise.
    ///
    /// The revocation is committed before the CRL is signed; if signing then
    /// fails (HSM busy or down) the revocation still stands, the error is
    /// logged, and the next [`Ca::crl`] or [`Ca::refresh_crl_if_due`] signs a
    /// CRL that includes it (the stored CRL is known to be stale).
    pub async fn revoke(&self, serial: &Serial, reason: RevocationReason) -> Result<()> {
        self.inner.store.revoke(serial, reason, ms(now_s())).await?;
        tracing::info!(serial = %serial, reason = %reason, "certificate revoked");
        if let Err(e) = self.generate_crl().await {
            tracing::error!(
                serial = %serial,
                code = e.code(),
                error = %e,
                "CRL not re-signed after a revocation; it will be on the next refresh"
            );
        }
        Ok(())
    }

    /// The registry's half of [`Ca::revoke`] in the caller's transaction, for
    /// a step that revokes with rows of its own. The CRL is not re-signed
    /// here (no HSM call inside a transaction): the revision this bumps makes
    /// the next [`Ca::crl`] or [`Ca::refresh_crl_if_due`] sign a fresh one.
    pub async fn revoke_in(
        tx: &mut Tx,
        serial: &Serial,
        reason: RevocationReason,
        at_ms: i64,
    ) -> Result<()> {
        Store::revoke_in(tx, serial, reason, at_ms).await
    }

    /// The revocation time of a revocation made now (whole seconds, as the
    /// CRL states it), for [`Ca::revoke_in`].
    pub fn revocation_time_ms() -> i64 {
        ms(now_s())
    }

    /// Revokes several certificates for good, then re-signs the CRL once:
    /// undoing an import revokes hundreds, and a CRL for each would take
    /// minutes. Already revoked ones are skipped (retries are safe); returns
    /// how many this call revoked. On an error the revocations made stand and
    /// the stored CRL is known to be stale, as after [`Ca::revoke`].
    pub async fn revoke_all(&self, serials: &[Serial], reason: RevocationReason) -> Result<usize> {
        let at = ms(now_s());
        let mut revoked = 0;
        for serial in serials {
            match self.inner.store.revoke(serial, reason, at).await {
                Ok(()) => revoked += 1,
                Err(CaError::AlreadyRevoked(_)) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(revoked, reason = %reason, "certificates revoked");
        if revoked > 0
            && let Err(e) = self.generate_crl().await
        {
            tracing::error!(
                revoked,
                code = e.code(),
                error = %e,
                "CRL not re-signed after revocations; it will be on the next refresh"
            );
        }
        Ok(revoked)
    }

    /// The current CRL: the latest stored one while it covers every
    /// revocation and has not passed its nextUpdate, else a freshly signed one.
    pub async fn crl(&self) -> Result<Crl> {
        let state = self.inner.store.crl_state().await?;
        match state.latest {
            Some(latest)
                if latest.covers_revision >= state.revision && now_ms() < latest.next_update_ms =>
            {
                Crl::from_stored(latest)
            }
            _ => self.generate_crl().await,
        }
    }

    /// What changes when any replica revokes or signs a CRL: the revocation
    /// revision and the latest CRL number. One small read, for replicas to
    /// poll and for cached OCSP answers to be keyed under.
    pub async fn revocation_marker(&self) -> Result<RevocationMarker> {
        let (revision, crl_number) = self.inner.store.crl_generation().await?;
        Ok(RevocationMarker {
            revision,
            crl_number,
        })
    }

    /// For a schedule: re-signs the CRL when half its validity has passed or a
    /// revocation is not in it yet. Returns the new CRL, or `None` if the
    /// stored one is still good.
    pub async fn refresh_crl_if_due(&self) -> Result<Option<Crl>> {
        let state = self.inner.store.crl_state().await?;
        let due = match &state.latest {
            None => true,
            Some(l) => {
                let half = l.this_update_ms + (l.next_update_ms - l.this_update_ms) / 2;
                l.covers_revision < state.revision || now_ms() >= half
            }
        };
        if due {
            self.generate_crl().await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Takes the next CRL number and the revoked list, signs, self-checks and
    /// stores. If another replica stored a higher number meanwhile, that one
    /// is returned instead (it lists at least as much).
    pub(super) async fn generate_crl(&self) -> Result<Crl> {
        let inner = &self.inner;
        let now = now_s();
        let snapshot = inner.store.allocate_crl(ms(now)).await?;
        let next_update = now + time::Duration::hours(i64::from(inner.cfg.crl_validity_hours));
        let revoked_certs = snapshot
            .revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial.to_bytes()),
                    revocation_time: from_ms(r.revoked_at_ms)?,
                    reason_code: r.reason.crl_reason(),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let number = u64::try_from(snapshot.number)
            .map_err(|_| CaError::CorruptRecord("ca_crl.last_number"))?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from_slice(&minimal_be(number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(inner.issuing.ski.clone()),
        };
        let ca_der = inner.issuing.der.clone();
        let key = inner.issuing.key.for_operation();
        let der = blocking(move || {
            let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), key.clone())
                .map_err(CaError::Encoding)?;
            let crl = params.signed_by(&issuer).map_err(|e| key.rcgen_error(e))?;
            let der = crl.der().to_vec();
            check_crl(&der, &key.public().spki_der())?;
            Ok(der)
        })
        .await?;
        let stored = StoredCrl {
            number: snapshot.number,
            covers_revision: snapshot.revision,
            this_update_ms: ms(now),
            next_update_ms: ms(next_update),
            der,
        };
        if inner.store.publish_crl(&stored).await? {
            tracing::info!(number, revoked = snapshot.revoked.len(), "CRL signed");
            return Crl::from_stored(stored);
        }
        // A replica published a higher number while this one was signing.
        match inner.store.crl_state().await?.latest {
            Some(latest) => Crl::from_stored(latest),
            None => Err(CaError::CorruptRecord("ca_crl")),
        }
    }
}

fn check_crl(der: &[u8], issuer_spki: &[u8]) -> Result<()> {
    let bad = || CaError::SelfCheck("CRL");
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|_| bad())?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(issuer_spki).map_err(|_| bad())?;
    crl.verify_signature(&spki).map_err(|_| bad())
}

fn minimal_be(n: u64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
    b[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_are_minimal_big_endian() {
        assert_eq!(minimal_be(0), vec![0]);
        assert_eq!(minimal_be(1), vec![1]);
        assert_eq!(minimal_be(0x1_0000), vec![1, 0, 0]);
    }
}
