//! One error type for every format in this crate.

/// Why input was refused. Each variant has a stable machine-readable
/// [`code`](ProtocolError::code). The messages name fields and limits, never
/// the refused value: a value may be an account number, a name or a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the transaction is not a UTF-8 JSON object")]
    Malformed,
    #[error("the transaction is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("field `{0}` appears more than once")]
    DuplicateField(&'static str),
    #[error("the transaction has a field that is not part of the format")]
    UnknownField,
    #[error("field `{0}` is missing")]
    FieldMissing(&'static str),
    #[error("field `{0}` has the wrong JSON type, is empty, or starts or ends with a space")]
    FieldInvalid(&'static str),
    #[error("field `{field}` is longer than {max} characters")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("the amount must be a positive JSON integer of minor units")]
    AmountInvalid,
    #[error("the amount is over the limit of {max} minor units")]
    AmountOverLimit { max: u64 },
    #[error("the currency is not one this bank accepts")]
    CurrencyUnknown,
    #[error("field `{0}` must be 1 to the configured maximum of A-Z and 0-9")]
    AccountInvalid(&'static str),
    #[error("field `{field}` contains a forbidden character (U+{code_point:04X})")]
    ForbiddenCharacter {
        field: &'static str,
        code_point: u32,
    },
    #[error("field `{0}` is not in Unicode normalization form C")]
    NotNfc(&'static str),
    #[error("the payee name mixes scripts or looks like another payee")]
    PayeeConfusable,
    #[error("amount, payee and code do not fit in the first SMS segment")]
    PayeeLineTooLong,
    #[error("a confirmation code is exactly 8 ASCII digits")]
    CodeMalformed,
    #[error("an origin is a lower-case ASCII host name")]
    OriginInvalid,
    #[error("the load {0} message is truncated, too long or not that message")]
    LoadMalformed(&'static str),
    #[error("the load message is of a format version this server does not speak")]
    LoadVersion,
    #[error("an evidence receipt is not in its canonical form")]
    EvidenceMalformed,
    /// One code for every malformed channel message: the server answers
    /// every bad handshake with one refusal, so finer codes would only help
    /// an attacker tell its failures apart.
    #[error("the channel {0} message is truncated, too long or not that message")]
    ChannelMalformed(&'static str),
}

impl ProtocolError {
    /// Every code [`code`](Self::code) can return, for the edge's table.
    pub const CODES: &'static [&'static str] = &[
        "transaction_malformed",
        "transaction_too_large",
        "duplicate_field",
        "unknown_field",
        "field_missing",
        "field_invalid",
        "field_too_long",
        "amount_invalid",
        "amount_over_limit",
        "currency_unknown",
        "account_invalid",
        "text_forbidden_character",
        "text_not_nfc",
        "payee_confusable",
        "payee_line_too_long",
        "code_malformed",
        "origin_invalid",
        "load_malformed",
        "load_version",
        "evidence_malformed",
        "channel_malformed",
    ];

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "transaction_malformed",
            Self::TooLarge { .. } => "transaction_too_large",
            Self::DuplicateField(_) => "duplicate_field",
            Self::UnknownField => "unknown_field",
            Self::FieldMissing(_) => "field_missing",
            Self::FieldInvalid(_) => "field_invalid",
            Self::FieldTooLong { .. } => "field_too_long",
            Self::AmountInvalid => "amount_invalid",
            Self::AmountOverLimit { .. } => "amount_over_limit",
            Self::CurrencyUnknown => "currency_unknown",
            Self::AccountInvalid(_) => "account_invalid",
            Self::ForbiddenCharacter { .. } => "text_forbidden_character",
            Self::NotNfc(_) => "text_not_nfc",
            Self::PayeeConfusable => "payee_confusable",
            Self::PayeeLineTooLong => "payee_line_too_long",
            Self::CodeMalformed => "code_malformed",
            Self::OriginInvalid => "origin_invalid",
            Self::LoadMalformed(_) => "load_malformed",
            Self::LoadVersion => "load_version",
            Self::EvidenceMalformed => "evidence_malformed",
            Self::ChannelMalformed(_) => "channel_malformed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProtocolError as E;

    #[test]
    fn codes_lists_every_code_once() {
        let all = [
            E::Malformed,
            E::TooLarge { max: 1 },
            E::DuplicateField("amount"),
            E::UnknownField,
            E::FieldMissing("amount"),
            E::FieldInvalid("payee_name"),
            E::FieldTooLong {
                field: "reference",
                max: 1,
            },
            E::AmountInvalid,
            E::AmountOverLimit { max: 1 },
            E::CurrencyUnknown,
            E::AccountInvalid("payee_account"),
            E::ForbiddenCharacter {
                field: "payee_name",
                code_point: 0x202E,
            },
            E::NotNfc("payee_name"),
            E::PayeeConfusable,
            E::PayeeLineTooLong,
            E::CodeMalformed,
            E::OriginInvalid,
            E::LoadMalformed("request"),
            E::LoadVersion,
            E::EvidenceMalformed,
            E::ChannelMalformed("record"),
        ];
        let codes: Vec<&str> = all.iter().map(E::code).collect();
        assert_eq!(codes, E::CODES);
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(
            all[11].to_string(),
            "field `payee_name` contains a forbidden character (U+202E)"
        );
    }
}
