//! Manufacturing intake: a batch file from the factory becomes registered
//! devices, each with a device certificate from the CA.
//!
//! # The manifest format
//! UTF-8 text, one device per line, comma-separated, no quoting (no field may
//! contain a comma). Blank lines and lines starting with `#` are ignored. The
//! first other line is the header, exactly:
//!
//! ```text
//! device_id,psam_serial,esam_serial,model,firmware,csr
//! ```
//!
//! - `device_id`: 16 hex digits (the secure element's 8-byte serial).
//! - `psam_serial`, `esam_serial`: 1-32 characters of `A-Z 0-9`; either may be
//!   empty, not both. Each serial belongs to one device.
//! - `model`, `firmware`: 1-64 printable characters.
//! - `csr`: the device's PKCS#10 request, base64 (standard alphabet) of its
//!   DER or of its PEM text. The server never reads a path from a manifest;
//!   `kwctl` may expand `@file` names into base64 before sending. A
//!   serialNumber in the CSR's subject, when present, must be the row's
//!   device id (`csr_subject_mismatch`); the CSR's public key must be in no
//!   other row and registered to no device, ever (`public_key_reused`: a
//!   key belongs to at most one device, by the SHA-256 of its SPKI).
//!
//! At most [`MAX_ROWS`] devices per batch.
//!
//! # All or nothing
//! A batch is registered whole or not at all. Every row is checked first
//! (format, duplicates in the file and in the registry, CSR signature and key
//! type) without any side effect; one bad row refuses the batch with a
//! row-by-row [`ImportReport`]
//! ([`ProvisioningError::BatchRejected`]). A partial import would leave the
//! factory, the bank and the audit trail disagreeing about which devices of a
//! batch exist; all-or-nothing keeps one answer per batch, and a corrected
//! file is simply imported again.
//!
//! Then the batch and its devices are reserved in one transaction (state
//! `importing`, so none can be checked yet), the CSRs are certified (as many
//! at once as the HSM pool has workers), and the certificate serials are
//! recorded as the batch becomes `complete`. If certification fails half-way
//! (CA or HSM trouble), the certificates already issued are revoked and the
//! reservation removed: the batch is again absent.
//!
//! # A killed import
//! The reservation carries a lease held by this import attempt (a random
//! `importer` id) and renewed on a timer of its own while certificates are
//! issued, so a stalled HSM does not let it lapse. If the process dies the
//! lease runs out and [`Provisioning::recover_stale_imports`]
//! (`crate::recovery`) takes the batch over: the certificates issued for
//! its devices are revoked and the reservation removed, so the same file
//! imports again under the same batch id. Completing is conditional on still
//! holding the lease; an attempt that lost it stops issuing, revokes what it
//! issued and fails with [`ProvisioningError::ImportAborted`].

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use keyward_kms::types::DeviceId;

use crate::Provisioning;
use crate::audit::{Action, Actor, AuditNote, Decision};
use crate::certifier::{DeviceCsr, RevokeReason};
use crate::error::{CertifierError, ErrorKind, ProvisioningError, Result};
use crate::recovery::{LeaseKeeper, new_importer_id};
use crate::store::{Lease, NewDevice, UniqueColumn, is_unique_violation};
use crate::types::{BatchId, OperatorId, SeSerial};

/// Most devices one batch may hold.
pub const MAX_ROWS: usize = 10_000;
/// The manifest's header line.
pub const MANIFEST_HEADER: &str = "device_id,psam_serial,esam_serial,model,firmware,csr";
/// Largest CSR accepted, decoded.
const MAX_CSR_LEN: usize = 16 * 1024;

/// What happened to one manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Registered, with its device certificate.
    Registered { cert_serial: String },
    /// Nothing wrong with the row, but the batch was refused.
    Valid,
    /// This row refused the batch: `code` is stable, `reason` says what is
    /// wrong without quoting the input.
    Rejected {
        code: &'static str,
        reason: &'static str,
    },
}

/// One row of the report, by its line number in the manifest (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReport {
    pub line: usize,
    /// `None` when the row's device id did not parse.
    pub device_id: Option<DeviceId>,
    pub outcome: RowOutcome,
}

/// Row-by-row result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub batch_id: BatchId,
    pub rows: Vec<RowReport>,
}

impl ImportReport {
    /// Rows that refused the batch.
    pub fn rejected(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.outcome, RowOutcome::Rejected { .. }))
            .count()
    }
    /// Whether every row was registered.
    pub fn accepted(&self) -> bool {
        !self.rows.is_empty()
            && self
                .rows
                .iter()
                .all(|r| matches!(r.outcome, RowOutcome::Registered { .. }))
    }
}

/// A row that passed every check; its CSR was checked once, here, and is
/// certified as it is.
struct GoodRow {
    device: DeviceId,
    psam: Option<SeSerial>,
    esam: Option<SeSerial>,
    model: String,
    firmware: String,
    csr: DeviceCsr,
}

impl GoodRow {
    fn new_device(&self) -> NewDevice<'_> {
        NewDevice {
            device: self.device,
            psam: self.psam.as_ref(),
            esam: self.esam.as_ref(),
            model: &self.model,
            firmware: &self.firmware,
            key_kind: self.csr.key_kind(),
            spki_sha256: self.csr.spki_sha256(),
        }
    }
}

/// A parsed row, before registry checks.
enum Parsed {
    Good(Box<GoodRow>),
    Bad {
        device: Option<DeviceId>,
        code: &'static str,
        reason: &'static str,
    },
}

fn bad(device: Option<DeviceId>, code: &'static str, reason: &'static str) -> Parsed {
    Parsed::Bad {
        device,
        code,
        reason,
    }
}

fn text_field(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control)
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Certificates are being issued; its devices cannot be checked yet.
    Importing,
    Complete,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Importing => "importing",
            Self::Complete => "complete",
        }
    }
}

/// A registered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    pub id: BatchId,
    pub state: BatchState,
    pub device_count: u32,
    pub imported_by: String,
    pub imported_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

impl Provisioning {
    /// Imports a manufacturing batch (format and rules in the module docs).
    /// On success every row is `Registered` and every device is
    /// `manufactured` with a device certificate.
    pub async fn import_batch(
        &self,
        batch_id: &BatchId,
        manifest: &str,
        operator: &OperatorId,
    ) -> Decision<ImportReport> {
        let mut note = AuditNote::new(
            Actor::Operator(operator.clone()),
            Action::ImportBatch,
            format!("batch:{batch_id}"),
        );
        let result = self.import(batch_id, manifest, operator, &mut note).await;
        note.finish(result)
    }

    async fn import(
        &self,
        batch_id: &BatchId,
        manifest: &str,
        operator: &OperatorId,
        note: &mut AuditNote,
    ) -> Result<ImportReport> {
        let lines = manifest_lines(manifest)?;
        note.detail("rows", lines.len());
        if self.batch(batch_id).await?.is_some() {
            return Err(ProvisioningError::BatchExists(batch_id.clone()));
        }

        // 1. Every row on its own (no side effects).
        let mut parsed: Vec<(usize, Parsed)> = lines
            .iter()
            .map(|(line, text)| (*line, self.parse_row(text)))
            .collect();

        // 2. Duplicates inside the file, then against the registry.
        let mut seen_ids = HashSet::new();
        let mut seen_se = HashSet::new();
        let mut seen_keys = HashSet::new();
        for (_, p) in &mut parsed {
            let Parsed::Good(row) = p else { continue };
            if !seen_keys.insert(row.csr.spki_sha256().to_owned()) {
                *p = bad(
                    Some(row.device),
                    "public_key_reused",
                    "the CSR's public key appears earlier in the file",
                );
                continue;
            }
            let dup_id = !seen_ids.insert(row.device);
            let dup_se = [&row.psam, &row.esam]
                .into_iter()
                .flatten()
                .any(|s| !seen_se.insert(s.as_str().to_owned()));
            if dup_id || dup_se {
                *p = bad(
                    Some(row.device),
                    "duplicate_in_file",
                    if dup_id {
                        "device id appears earlier in the file"
                    } else {
                        "secure-element serial appears earlier in the file"
                    },
                );
            }
        }
        let ids: Vec<String> = good(&parsed).map(|r| r.device.to_string()).collect();
        let taken_ids = self.store.existing(UniqueColumn::DeviceId, &ids).await?;
        let ses: Vec<String> = good(&parsed)
            .flat_map(|r| [&r.psam, &r.esam])
            .flatten()
            .map(|s| s.as_str().to_owned())
            .collect();
        let taken_psam = self.store.existing(UniqueColumn::PsamSerial, &ses).await?;
        let taken_esam = self.store.existing(UniqueColumn::EsamSerial, &ses).await?;
        let keys: Vec<String> = good(&parsed)
            .map(|r| r.csr.spki_sha256().to_owned())
            .collect();
        let taken_keys = self.store.existing(UniqueColumn::DeviceKey, &keys).await?;
        for (_, p) in &mut parsed {
            let Parsed::Good(row) = p else { continue };
            let se_taken = [&row.psam, &row.esam]
                .into_iter()
                .flatten()
                .any(|s| taken_psam.contains(s.as_str()) || taken_esam.contains(s.as_str()));
            if taken_ids.contains(&row.device.to_string()) {
                *p = bad(
                    Some(row.device),
                    "already_registered",
                    "device id is already registered",
                );
            } else if se_taken {
                *p = bad(
                    Some(row.device),
                    "already_registered",
                    "secure-element serial is already registered",
                );
            } else if taken_keys.contains(row.csr.spki_sha256()) {
                *p = bad(
                    Some(row.device),
                    "public_key_reused",
                    "the CSR's public key is already registered to a device",
                );
            }
        }

        let refused = parsed.iter().any(|(_, p)| matches!(p, Parsed::Bad { .. }));
        if refused {
            let report = ImportReport {
                batch_id: batch_id.clone(),
                rows: parsed
                    .into_iter()
                    .map(|(line, p)| match p {
                        Parsed::Good(r) => RowReport {
                            line,
                            device_id: Some(r.device),
                            outcome: RowOutcome::Valid,
                        },
                        Parsed::Bad {
                            device,
                            code,
                            reason,
                        } => RowReport {
                            line,
                            device_id: device,
                            outcome: RowOutcome::Rejected { code, reason },
                        },
                    })
                    .collect(),
            };
            note.detail("rejected", report.rejected());
            return Err(ProvisioningError::BatchRejected(Box::new(report)));
        }
        let rows: Vec<(usize, Box<GoodRow>)> = parsed
            .into_iter()
            .filter_map(|(line, p)| match p {
                Parsed::Good(r) => Some((line, r)),
                Parsed::Bad { .. } => None,
            })
            .collect();

        // 3. Reserve (with this attempt's lease), certify while the lease is
        // kept on its own timer, complete only if it is still ours.
        let importer = new_importer_id();
        let lease = Lease {
            importer: &importer,
            ms: self.lease_ms(),
        };
        self.reserve(batch_id, &rows, operator, &lease).await?;
        crate::fault::fault_point!("provisioning.import.reserved");
        note.detail("importer", &importer);
        let keeper = LeaseKeeper::start(
            self.store.clone(),
            batch_id.clone(),
            importer.clone(),
            self.import_lease,
        );
        let serials = match self.certify_all(batch_id, &rows, &keeper).await {
            Ok(serials) => serials,
            Err((issued, e)) => {
                drop(keeper);
                self.abort_import(batch_id, &importer, &issued).await;
                return Err(e);
            }
        };
        crate::fault::fault_point!("provisioning.import.certified");
        let completed = self.complete(batch_id, &importer, &rows, &serials).await;
        drop(keeper);
        match completed {
            Ok(true) => {}
            Ok(false) => {
                // Taken over: whoever holds the batch now revokes its devices'
                // certificates; ours are revoked here too, in case they were
                // issued after its look.
                self.abort_import(batch_id, &importer, &serials).await;
                return Err(ProvisioningError::ImportAborted(batch_id.clone()));
            }
            Err(e) => {
                // The commit may have happened all the same: undo only a batch
                // that is certainly not complete; if that cannot be read, the
                // lease runs out and recovery decides.
                match self.store.batch(batch_id).await {
                    Ok(Some(b)) if b.state == BatchState::Complete => {
                        tracing::warn!(batch = %batch_id, code = e.code(), error = %e,
                            "completing the batch reported an error, but it is complete");
                    }
                    Ok(_) => {
                        self.abort_import(batch_id, &importer, &serials).await;
                        return Err(e);
                    }
                    Err(read) => {
                        tracing::error!(batch = %batch_id, code = read.code(), error = %read,
                            "could not tell whether the batch completed; recovery will decide once its lease runs out");
                        return Err(e);
                    }
                }
            }
        }
        note.detail("registered", rows.len());
        Ok(ImportReport {
            batch_id: batch_id.clone(),
            rows: rows
                .iter()
                .zip(serials)
                .map(|((line, row), cert_serial)| RowReport {
                    line: *line,
                    device_id: Some(row.device),
                    outcome: RowOutcome::Registered { cert_serial },
                })
                .collect(),
        })
    }

    fn parse_row(&self, text: &str) -> Parsed {
        let row = match read_row(text) {
            Ok(row) => row,
            Err((device, reason)) => return bad(device, "malformed", reason),
        };
        let RowFields {
            device,
            psam,
            esam,
            model,
            firmware,
            csr,
        } = row;
        let d = Some(device);
        let csr = match self.certifier.check_csr(&csr) {
            Ok(checked) => checked,
            Err(e) if e.is_client_error() => {
                let code = match e.code() {
                    "csr_signature" => "csr_signature",
                    "unsupported_key" => "unsupported_key",
                    _ => "csr_invalid",
                };
                let reason = match code {
                    "csr_signature" => "CSR signature does not verify",
                    "unsupported_key" => "device keys must be P-256 or RSA of 2048 bits or more",
                    _ => "CSR is malformed",
                };
                return bad(d, code, reason);
            }
            Err(_) => return bad(d, "csr_check_failed", "the CA could not check the CSR"),
        };
        if !csr.names_only(device) {
            return bad(
                d,
                "csr_subject_mismatch",
                "the CSR's subject serialNumber is not the row's device id",
            );
        }
        Parsed::Good(Box::new(GoodRow {
            device,
            psam,
            esam,
            model,
            firmware,
            csr,
        }))
    }

    /// Writes the batch (`importing`) and its devices (`manufactured`, no
    /// certificate yet) in one transaction.
    async fn reserve(
        &self,
        batch_id: &BatchId,
        rows: &[(usize, Box<GoodRow>)],
        operator: &OperatorId,
        lease: &Lease<'_>,
    ) -> Result<()> {
        let devices: Vec<NewDevice<'_>> = rows.iter().map(|(_, r)| r.new_device()).collect();
        match self
            .store
            .reserve_batch(batch_id, &devices, operator, lease)
            .await
        {
            Err(e) if is_unique_violation(&e) => Err(ProvisioningError::Conflict(
                "a device or the batch was registered concurrently; import again for a report",
            )),
            other => other,
        }
    }

    /// Certifies every row, as many at once as the HSM has workers, and
    /// returns the serials in row order. On the first failure, or once the
    /// lease is lost, it starts no more, waits for those in flight, and
    /// returns every serial issued so far with the error, for
    /// [`Self::abort_import`] to revoke.
    async fn certify_all(
        &self,
        batch_id: &BatchId,
        rows: &[(usize, Box<GoodRow>)],
        keeper: &LeaseKeeper,
    ) -> std::result::Result<Vec<String>, (Vec<String>, ProvisioningError)> {
        let parallel = self.kms.hsm_workers().max(1);
        let mut serials: Vec<Option<String>> = vec![None; rows.len()];
        let mut running = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut failure = None;
        loop {
            if failure.is_none() && keeper.lost() {
                failure = Some(ProvisioningError::ImportAborted(batch_id.clone()));
            }
            while failure.is_none() && next < rows.len() && running.len() < parallel {
                let certifier = Arc::clone(&self.certifier);
                let (csr, device) = (rows[next].1.csr.clone(), rows[next].1.device);
                let index = next;
                running.spawn(async move { (index, certifier.certify(&csr, device).await) });
                next += 1;
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            match joined {
                Ok((index, Ok(cert))) => serials[index] = Some(cert.serial),
                Ok((_, Err(e))) => {
                    failure.get_or_insert(e.into());
                }
                Err(task) => {
                    failure.get_or_insert(
                        CertifierError::new("internal_error", ErrorKind::Internal, task).into(),
                    );
                }
            }
        }
        let issued: Vec<String> = serials.iter().flatten().cloned().collect();
        match failure {
            None if issued.len() == rows.len() => Ok(issued),
            None => Err((
                issued,
                CertifierError::new(
                    "internal_error",
                    ErrorKind::Internal,
                    "a certification left no result",
                )
                .into(),
            )),
            Some(e) => Err((issued, e)),
        }
    }

    /// Records the certificate serials and completes the batch if `importer`
    /// still holds it (`false`: taken over, nothing written).
    async fn complete(
        &self,
        batch_id: &BatchId,
        importer: &str,
        rows: &[(usize, Box<GoodRow>)],
        serials: &[String],
    ) -> Result<bool> {
        let certs: Vec<(DeviceId, &str)> = rows
            .iter()
            .zip(serials)
            .map(|((_, row), serial)| (row.device, serial.as_str()))
            .collect();
        self.store.complete_batch(batch_id, importer, &certs).await
    }

    /// Undoes a failed import: revokes what was issued (first: a crash in
    /// between leaves a reservation that recovery finds, not certificates
    /// nothing owns), then removes the reservation if `importer` still holds
    /// it. Best effort; what cannot be undone is logged by serial, and an
    /// unremoved reservation is recovered once its lease runs out.
    async fn abort_import(&self, batch_id: &BatchId, importer: &str, serials: &[String]) {
        let all = self
            .certifier
            .revoke_all(serials, RevokeReason::ImportAborted)
            .await;
        // One by one after all, to name each serial that cannot be revoked.
        for serial in serials.iter().filter(|_| all.is_err()) {
            if let Err(e) = self
                .certifier
                .revoke(serial, RevokeReason::ImportAborted)
                .await
            {
                tracing::error!(batch = %batch_id, serial = %serial, code = e.code(), error = %e,
                    "could not revoke a certificate of an aborted import; revoke it by hand");
            }
        }
        match self.store.remove_reservation(batch_id, importer).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(batch = %batch_id,
                "the aborted import's batch was taken over; its new holder removes it"),
            Err(e) => tracing::error!(batch = %batch_id, code = e.code(), error = %e,
                "could not remove the reservation of an aborted import; recovery removes it once its lease runs out"),
        }
    }

    /// A batch by id.
    pub async fn batch(&self, id: &BatchId) -> Result<Option<BatchRecord>> {
        self.store.batch(id).await
    }
}

/// A row's fields, checked for form only (the CSR is not parsed yet).
struct RowFields {
    device: DeviceId,
    psam: Option<SeSerial>,
    esam: Option<SeSerial>,
    model: String,
    firmware: String,
    csr: Vec<u8>,
}

/// Reads one data line of a manifest: everything `Provisioning::parse_row`
/// checks before it asks the certifier about the CSR (a refusal is always
/// `malformed`, with the device id when it was read).
fn read_row(text: &str) -> std::result::Result<RowFields, (Option<DeviceId>, &'static str)> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let [id, psam, esam, model, firmware, csr] = fields[..] else {
        return Err((None, "expected 6 comma-separated fields"));
    };
    let Ok(device) = id.parse::<DeviceId>() else {
        return Err((None, "device_id must be 16 hex digits"));
    };
    let d = Some(device);
    let se = |s: &str| -> std::result::Result<Option<SeSerial>, ()> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| ())
        }
    };
    let (Ok(psam), Ok(esam)) = (se(psam), se(esam)) else {
        return Err((
            d,
            "secure-element serials are 1-32 characters of A-Z and 0-9",
        ));
    };
    if psam.is_none() && esam.is_none() {
        return Err((d, "a PSAM or an ESAM serial is required"));
    }
    if !text_field(model) || !text_field(firmware) {
        return Err((d, "model and firmware are 1-64 printable characters"));
    }
    let csr = match base64::engine::general_purpose::STANDARD.decode(csr) {
        Ok(b) if !b.is_empty() && b.len() <= MAX_CSR_LEN => b,
        _ => {
            return Err((d, "csr must be base64 of a DER or PEM request"));
        }
    };
    Ok(RowFields {
        device,
        psam,
        esam,
        model: model.to_owned(),
        firmware: firmware.to_owned(),
        csr,
    })
}

/// A data line's number with its device id and CSR bytes, or the reason
/// the line is refused.
pub type ManifestRow = (
    usize,
    std::result::Result<(DeviceId, Vec<u8>), &'static str>,
);

/// Reads a manifest as an import does before any CSR is checked: the whole
/// file refused, or each data line's number with its device id or the
/// reason it is refused. The CSR bytes of a row that passes are returned for
/// the caller to check ([`keyward_ca::VerifiedCsr::parse`]). The manifest's
/// fuzz target calls this.
pub fn check_manifest(manifest: &str) -> Result<Vec<ManifestRow>> {
    Ok(manifest_lines(manifest)?
        .into_iter()
        .map(|(line, text)| {
            let row = read_row(text).map(|r| (r.device, r.csr));
            (line, row.map_err(|(_, reason)| reason))
        })
        .collect())
}

fn good(parsed: &[(usize, Parsed)]) -> impl Iterator<Item = &GoodRow> {
    parsed.iter().filter_map(|(_, p)| match p {
        Parsed::Good(r) => Some(&**r),
        Parsed::Bad { .. } => None,
    })
}

/// The data lines of a manifest with their 1-based line numbers, after the
/// header. A missing or wrong header, no rows, or too many rows refuse the
/// whole file.
fn manifest_lines(manifest: &str) -> Result<Vec<(usize, &str)>> {
    let mut lines = manifest
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let header_ok = lines
        .next()
        .is_some_and(|(_, h)| h.split(',').map(str::trim).eq(MANIFEST_HEADER.split(',')));
    if !header_ok {
        return Err(ProvisioningError::Invalid {
            field: "manifest",
            reason: "the first line must be the header device_id,psam_serial,esam_serial,model,firmware,csr",
        });
    }
    let rows: Vec<(usize, &str)> = lines.collect();
    if rows.is_empty() {
        return Err(ProvisioningError::Invalid {
            field: "manifest",
            reason: "no device rows",
        });
    }
    if rows.len() > MAX_ROWS {
        return Err(ProvisioningError::Invalid {
            field: "manifest",
            reason: "more than 10000 device rows",
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_header_and_limits() {
        assert!(manifest_lines("").is_err());
        assert!(manifest_lines("device_id,psam\n1,2").is_err());
        assert!(manifest_lines(&format!("{MANIFEST_HEADER}\n")).is_err());
        let m = format!("# factory run 7\n\n{MANIFEST_HEADER}\n# a comment\nA,B\n\nC,D\n");
        assert_eq!(manifest_lines(&m).unwrap(), vec![(5, "A,B"), (7, "C,D")]);
    }
}
