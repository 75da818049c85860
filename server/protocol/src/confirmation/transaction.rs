//! The submitted transaction: kept as received, parsed under the bank's rules.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::text::{self, PayeeCheck, PayeePolicy};
use crate::ProtocolError;

/// A currency this crate knows how to show: its ISO 4217 alphabetic code and
/// its minor-unit exponent (`EUR` 2: 123456 minor units are `1234.56`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// ISO 4217 minor units of the currencies a bank is likely to accept. A
/// currency not here cannot be configured, so it can never be shown with a
/// guessed decimal point.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("RON", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("TND", 3),
    ("USD", 2),
];

impl Currency {
    /// The currency with this exact (upper-case) ISO 4217 code, if this
    /// crate knows its exponent.
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Currency { code, exponent })
    }

    /// The ISO 4217 alphabetic code, e.g. `EUR`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }
}

/// An amount in integer minor units, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

impl Amount {
    /// `None` for zero.
    pub fn new(minor_units: u64) -> Option<Amount> {
        (minor_units > 0).then_some(Amount(minor_units))
    }

    pub fn minor_units(&self) -> u64 {
        self.0
    }

    /// The amount with `exponent` digits after a `.`, no thousands
    /// separators and no locale: `123456` with exponent 2 is `1234.56`,
    /// `5` is `0.05`, with exponent 0 `123456`.
    pub fn format(&self, exponent: u8) -> String {
        let e = usize::from(exponent);
        let digits = format!("{:0>width$}", self.0, width = e + 1);
        let (int, frac) = digits.split_at(digits.len() - e);
        if frac.is_empty() {
            int.to_owned()
        } else {
            format!("{int}.{frac}")
        }
    }
}

/// What a bank accepts in a submitted transaction.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Currencies accepted (ISO 4217, from [`Currency::from_code`]).
    pub currencies: Vec<Currency>,
    /// Largest amount, in minor units of whichever currency (default
    /// 1 000 000 000: 10 million in a currency with two decimals).
    pub max_amount: u64,
    /// Largest transaction, in bytes as sent.
    pub max_transaction_bytes: usize,
    /// Longest payer or payee account (34: an IBAN).
    pub max_account_chars: usize,
    /// Longest payee name (70: a SEPA creditor name).
    pub max_payee_name_chars: usize,
    /// Longest reference (140: SEPA unstructured remittance information).
    pub max_reference_chars: usize,
    /// What a payee name that mixes scripts or looks like a known payee
    /// gets: a warning in the message, or a refusal.
    pub confusable_payee: PayeePolicy,
    /// Payee names whose look-alikes are flagged (the bank's own name, large
    /// billers): a name with the same UTS #39 skeleton that is not the very
    /// same name.
    pub known_payees: Vec<String>,
    /// The message's reference is cut so it takes at most this many SMS
    /// segments (amount, payee, accounts and code are never cut).
    pub sms_max_segments: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            currencies: ["EUR", "USD", "GBP", "CHF", "CNY"]
                .iter()
                .filter_map(|c| Currency::from_code(c))
                .collect(),
            max_amount: 1_000_000_000,
            max_transaction_bytes: 2048,
            max_account_chars: 34,
            max_payee_name_chars: 70,
            max_reference_chars: 140,
            confusable_payee: PayeePolicy::Flag,
            known_payees: Vec::new(),
            sms_max_segments: 3,
        }
    }
}

/// The parsed copy of a submitted transaction.
#[derive(Clone, PartialEq, Eq)]
pub struct Transaction {
    pub payer_account: String,
    pub payee_account: String,
    pub payee_name: String,
    pub amount: Amount,
    pub currency: Currency,
    /// `None` when absent, `null` or empty.
    pub reference: Option<String>,
}

/// Accounts and names are personal data: Debug shows the currency only.
impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("currency", &self.currency.code)
            .finish_non_exhaustive()
    }
}

/// A transaction as the server received it: the bytes exactly as sent, the
/// parsed copy, and the verdict on the payee name. Made only by
/// [`Transaction::parse`], so a `Received` has passed the rules.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    raw: Vec<u8>,
    transaction: Transaction,
    payee_check: PayeeCheck,
    sms_max_segments: usize,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("bytes", &self.raw.len())
            .field("transaction", &self.transaction)
            .field("payee_check", &self.payee_check)
            .finish()
    }
}

impl Received {
    /// The bytes exactly as the client sent them: what the device signs.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn transaction(&self) -> &Transaction {
        &self.transaction
    }

    /// Whether the payee name was flagged (the message carries a warning).
    pub fn payee_check(&self) -> PayeeCheck {
        self.payee_check
    }

    /// Whether `signed_tx` is the received transaction byte for byte (the
    /// same JSON with other white space or key order is not).
    pub fn is_exactly(&self, signed_tx: &[u8]) -> bool {
        self.raw == signed_tx
    }

    pub(crate) fn sms_max_segments(&self) -> usize {
        self.sms_max_segments
    }
}

const PAYER_ACCOUNT: &str = "payer_account";
const PAYEE_ACCOUNT: &str = "payee_account";
const PAYEE_NAME: &str = "payee_name";
const AMOUNT: &str = "amount";
const CURRENCY: &str = "currency";
const REFERENCE: &str = "reference";
const FIELDS: [&str; 6] = [
    PAYER_ACCOUNT,
    PAYEE_ACCOUNT,
    PAYEE_NAME,
    AMOUNT,
    CURRENCY,
    REFERENCE,
];

impl Transaction {
    /// Parses the exact bytes a client submitted, under `rules`.
    ///
    /// The body is one JSON object with the keys `payer_account`,
    /// `payee_account`, `payee_name`, `amount`, `currency` and optionally
    /// `reference`, in any order; each key once (after unescaping: a second
    /// `"amount"`, or `"am\u0061unt"`, is refused rather than silently
    /// winning, as a plain JSON parser would let it); no other key. The
    /// bytes are kept unchanged: white space and key order are the client's
    /// and the device signs them as they are.
    pub fn parse(bytes: &[u8], rules: &Rules) -> Result<Received, ProtocolError> {
        if bytes.len() > rules.max_transaction_bytes {
            return Err(ProtocolError::TooLarge {
                max: rules.max_transaction_bytes,
            });
        }
        std::str::from_utf8(bytes).map_err(|_| ProtocolError::Malformed)?;
        let Entries(entries) =
            serde_json::from_slice(bytes).map_err(|_| ProtocolError::Malformed)?;
        let mut values: [Option<Value>; 6] = Default::default();
        for (key, value) in entries {
            let i = FIELDS
                .iter()
                .position(|f| *f == key)
                .ok_or(ProtocolError::UnknownField)?;
            if values[i].replace(value).is_some() {
                return Err(ProtocolError::DuplicateField(FIELDS[i]));
            }
        }
        let [payer, payee, name, amount, currency, reference] = values;
        let required = |v: Option<Value>, f| v.ok_or(ProtocolError::FieldMissing(f));
        let (payer, payee, name, amount, currency) = (
            required(payer, PAYER_ACCOUNT)?,
            required(payee, PAYEE_ACCOUNT)?,
            required(name, PAYEE_NAME)?,
            required(amount, AMOUNT)?,
            required(currency, CURRENCY)?,
        );

        let payer_account = account(payer, PAYER_ACCOUNT, rules)?;
        let payee_account = account(payee, PAYEE_ACCOUNT, rules)?;
        let payee_name = string(name, PAYEE_NAME)?;
        text::check(&payee_name, PAYEE_NAME, rules.max_payee_name_chars)?;
        let amount = match amount {
            Value::Number(n) => n
                .as_u64()
                .and_then(Amount::new)
                .ok_or(ProtocolError::AmountInvalid)?,
            _ => return Err(ProtocolError::AmountInvalid),
        };
        if amount.0 > rules.max_amount {
            return Err(ProtocolError::AmountOverLimit {
                max: rules.max_amount,
            });
        }
        let currency = match currency {
            Value::String(c) => Currency::from_code(&c)
                .filter(|c| rules.currencies.contains(c))
                .ok_or(ProtocolError::CurrencyUnknown)?,
            _ => return Err(ProtocolError::FieldInvalid(CURRENCY)),
        };
        let reference = match reference {
            None | Some(Value::Null) => None,
            Some(v) => Some(string(v, REFERENCE)?).filter(|r| !r.is_empty()),
        };
        if let Some(r) = &reference {
            text::check(r, REFERENCE, rules.max_reference_chars)?;
        }

        let payee_check = text::check_payee(&payee_name, &rules.known_payees);
        if payee_check != PayeeCheck::Plain && rules.confusable_payee == PayeePolicy::Refuse {
            return Err(ProtocolError::PayeeConfusable);
        }
        let received = Received {
            raw: bytes.to_vec(),
            transaction: Transaction {
                payer_account,
                payee_account,
                payee_name,
                amount,
                currency,
                reference,
            },
            payee_check,
            sms_max_segments: rules.sms_max_segments,
        };
        super::render::check_first_segment(&received)?;
        Ok(received)
    }
}

fn string(v: Value, field: &'static str) -> Result<String, ProtocolError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(ProtocolError::FieldInvalid(field)),
    }
}

/// An account number in its electronic form: upper-case ASCII letters and
/// digits only (an IBAN without spaces, a card or domestic account number),
/// so no character in it can look like another script's.
fn account(v: Value, field: &'static str, rules: &Rules) -> Result<String, ProtocolError> {
    let s = string(v, field)?;
    if s.chars().count() > rules.max_account_chars {
        return Err(ProtocolError::FieldTooLong {
            field,
            max: rules.max_account_chars,
        });
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err(ProtocolError::AccountInvalid(field));
    }
    Ok(s)
}

/// A JSON object's members in order, duplicates included (a map type would
/// keep one of two equal keys and hide the other).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_formatted_with_the_currency_exponent() {
        let a = |n| Amount::new(n).map(|a| a.format(2));
        assert_eq!(a(123456).as_deref(), Some("1234.56"));
        assert_eq!(a(5).as_deref(), Some("0.05"));
        assert_eq!(a(100).as_deref(), Some("1.00"));
        assert_eq!(a(0), None);
        assert_eq!(Amount(123456).format(0), "123456");
        assert_eq!(Amount(1234).format(3), "1.234");
        assert_eq!(Amount(u64::MAX).format(2), "184467440737095516.15");
    }

    #[test]
    fn currencies_come_from_the_table() {
        for (code, _) in CURRENCIES {
            let c = Currency::from_code(code);
            assert_eq!(c.map(|c| c.code()), Some(*code));
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
        }
        assert_eq!(Currency::from_code("JPY").map(|c| c.exponent()), Some(0));
        assert_eq!(Currency::from_code("eur"), None);
        assert_eq!(Currency::from_code("XXX"), None);
        assert_eq!(Rules::default().currencies.len(), 5);
    }

    #[test]
    fn debug_shows_no_personal_data() {
        let rules = Rules::default();
        let body = br#"{"payer_account":"DE02120300000000202051","payee_account":"DE89370400440532013000","payee_name":"Jane Doe","amount":5,"currency":"EUR"}"#;
        let r = Transaction::parse(body, &rules).map_err(|e| e.code());
        let shown = format!("{r:?}");
        assert!(shown.contains("EUR"), "{shown}");
        for secret in ["DE02", "DE89", "Jane"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
