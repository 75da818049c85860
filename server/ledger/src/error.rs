//! One refusal type for every rule in this crate.

/// Why the ledger refused a value or a step. Nothing was moved. Each variant
/// has a stable machine-readable [`code`](Refusal::code) that the server maps
/// once to a status; the messages name rules and limits, never an account
/// number or an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an amount is a positive whole number of minor units")]
    AmountNotPositive,
    #[error("the amount is over the ledger's maximum of 10^15 minor units")]
    AmountExceedsMaximum,
    #[error("a currency is three upper-case ASCII letters (ISO 4217)")]
    CurrencyInvalid,
    #[error("an account id is 1 to 34 of A-Z, a-z, 0-9 and '-', or a system account")]
    AccountIdInvalid,
    #[error("a transfer id is 32 hexadecimal digits")]
    TransferIdInvalid,
    #[error("a balance floor is zero or a negative overdraft")]
    FloorInvalid,
    #[error("the arithmetic would overflow")]
    Overflow,
    #[error("the amount exceeds the balance available above the account's floor")]
    ExceedsBalance,
    #[error("the accounts or the amount are not in the same currency")]
    CurrencyMismatch,
    #[error("the account is not of the kind this step needs")]
    AccountKindMismatch,
    #[error("the account is not the one the transfer names")]
    AccountMismatch,
    #[error("the transfer was already posted")]
    AlreadyPosted,
    #[error("the transfer was already voided")]
    AlreadyVoided,
    #[error("the transfer is not a pending load")]
    NotPending,
    #[error("the transfer is not a load voided by timeout")]
    NotDoubtful,
    #[error("the doubtful load was already reconciled")]
    AlreadyReconciled,
    #[error("a transfer with this id exists with a different amount")]
    ExistsWithDifferentAmount,
    #[error("a transfer with this id exists with different accounts")]
    ExistsWithDifferentAccounts,
    #[error("a posting's entries do not sum to zero")]
    UnbalancedPosting,
    #[error("a posting has no entries")]
    PostingEmpty,
    #[error("a posting's entries belong to different transfers or steps")]
    PostingMixesTransfers,
    #[error("an account with this id exists")]
    AccountExists,
    #[error("no account with this id")]
    AccountNotFound,
    #[error("no transfer with this id")]
    TransferNotFound,
}

impl Refusal {
    /// Every code [`code`](Self::code) can return, for the edge's table.
    pub const CODES: &'static [&'static str] = &[
        "amount_not_positive",
        "amount_exceeds_maximum",
        "currency_invalid",
        "account_id_invalid",
        "transfer_id_invalid",
        "floor_invalid",
        "overflow",
        "exceeds_balance",
        "currency_mismatch",
        "account_kind_mismatch",
        "account_mismatch",
        "already_posted",
        "already_voided",
        "not_pending",
        "not_doubtful",
        "already_reconciled",
        "exists_with_different_amount",
        "exists_with_different_accounts",
        "unbalanced_posting",
        "posting_empty",
        "posting_mixes_transfers",
        "account_exists",
        "account_not_found",
        "transfer_not_found",
    ];

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AmountNotPositive => "amount_not_positive",
            Self::AmountExceedsMaximum => "amount_exceeds_maximum",
            Self::CurrencyInvalid => "currency_invalid",
            Self::AccountIdInvalid => "account_id_invalid",
            Self::TransferIdInvalid => "transfer_id_invalid",
            Self::FloorInvalid => "floor_invalid",
            Self::Overflow => "overflow",
            Self::ExceedsBalance => "exceeds_balance",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::AccountKindMismatch => "account_kind_mismatch",
            Self::AccountMismatch => "account_mismatch",
            Self::AlreadyPosted => "already_posted",
            Self::AlreadyVoided => "already_voided",
            Self::NotPending => "not_pending",
            Self::NotDoubtful => "not_doubtful",
            Self::AlreadyReconciled => "already_reconciled",
            Self::ExistsWithDifferentAmount => "exists_with_different_amount",
            Self::ExistsWithDifferentAccounts => "exists_with_different_accounts",
            Self::UnbalancedPosting => "unbalanced_posting",
            Self::PostingEmpty => "posting_empty",
            Self::PostingMixesTransfers => "posting_mixes_transfers",
            Self::AccountExists => "account_exists",
            Self::AccountNotFound => "account_not_found",
            Self::TransferNotFound => "transfer_not_found",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal as R;

    #[test]
    fn codes_lists_every_code_once() {
        let all = [
            R::AmountNotPositive,
            R::AmountExceedsMaximum,
            R::CurrencyInvalid,
            R::AccountIdInvalid,
            R::TransferIdInvalid,
            R::FloorInvalid,
            R::Overflow,
            R::ExceedsBalance,
            R::CurrencyMismatch,
            R::AccountKindMismatch,
            R::AccountMismatch,
            R::AlreadyPosted,
            R::AlreadyVoided,
            R::NotPending,
            R::NotDoubtful,
            R::AlreadyReconciled,
            R::ExistsWithDifferentAmount,
            R::ExistsWithDifferentAccounts,
            R::UnbalancedPosting,
            R::PostingEmpty,
            R::PostingMixesTransfers,
            R::AccountExists,
            R::AccountNotFound,
            R::TransferNotFound,
        ];
        let codes: Vec<&str> = all.iter().map(R::code).collect();
        assert_eq!(codes, R::CODES);
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert!(all.iter().all(|r| !r.to_string().is_empty()));
    }
}
