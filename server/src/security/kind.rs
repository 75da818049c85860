//! The kinds of intrusion signal: a leaf the audit trail (its records) and
//! the metrics (their labels) name without depending on how a signal is
//! raised.

/// What was detected; [`SecurityKind::as_str`] is the stable name (the
/// audit action's suffix and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityKind {
    /// A device reported key check values that differ from those of the keys
    /// it was sent (seed CN102004977A: the keys may have been intercepted
    /// or replaced).
    KcvMismatch,
    /// A device signed a transaction other than the one the server received
    /// for it (seed CN101184107A: the PC altered what it passed on).
    TransactionTampered,
    /// A device's load report did not verify, named another load, or its
    /// wallet balance did not add up (seed CN101211451A): the load is
    /// voided as doubtful and settled by what the purse proves next.
    LoadReportInvalid,
}

impl SecurityKind {
    pub const ALL: [SecurityKind; 3] = [
        Self::KcvMismatch,
        Self::TransactionTampered,
        Self::LoadReportInvalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KcvMismatch => "kcv_mismatch",
            Self::TransactionTampered => "transaction_tampered",
            Self::LoadReportInvalid => "load_report_invalid",
        }
    }
}
