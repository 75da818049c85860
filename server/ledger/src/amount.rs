//! Money as types: [`Amount`] (what moves), [`Delta`] (one entry's signed
//! change), [`Balance`] (what an account holds) and [`Currency`]. All
//! arithmetic is checked; none of them converts from a bare `i64` without
//! its rule being checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Refusal;

/// A strictly positive whole number of minor units, at most
/// [`Amount::MAX`]. The bound leaves an `i64` balance room for millions of
/// maximal amounts, so a sum of them cannot silently wrap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    /// The largest amount the ledger moves in one step: 10^15 minor units.
    pub const MAX: i64 = 1_000_000_000_000_000;

    /// Refuses zero, negatives and anything over [`Amount::MAX`].
    pub fn new(minor_units: i64) -> Result<Self, Refusal> {
        if minor_units <= 0 {
            Err(Refusal::AmountNotPositive)
        } else if minor_units > Self::MAX {
            Err(Refusal::AmountExceedsMaximum)
        } else {
            Ok(Self(minor_units))
        }
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }

    /// The sum, refused over [`Amount::MAX`].
    pub fn checked_add(self, other: Amount) -> Result<Amount, Refusal> {
        let sum = self.0.checked_add(other.0).ok_or(Refusal::Overflow)?;
        Amount::new(sum)
    }
}

impl TryFrom<i64> for Amount {
    type Error = Refusal;
    fn try_from(v: i64) -> Result<Self, Refusal> {
        Amount::new(v)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One entry's signed change to an account: never zero, its size an
/// [`Amount`]. Debits are negative, credits positive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Delta(i64);

impl Delta {
    /// `-amount`: the account gives.
    pub fn debit(amount: Amount) -> Self {
        Self(-amount.0)
    }

    /// `+amount`: the account receives.
    pub fn credit(amount: Amount) -> Self {
        Self(amount.0)
    }

    /// For deltas read back from storage: the size must be an [`Amount`].
    pub fn from_minor_units(minor_units: i64) -> Result<Self, Refusal> {
        let size = Amount::new(minor_units.checked_abs().ok_or(Refusal::Overflow)?)?;
        Ok(if minor_units < 0 {
            Self::debit(size)
        } else {
            Self::credit(size)
        })
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }

    /// The size of the change.
    pub fn amount(self) -> Amount {
        Amount(self.0.abs())
    }

    pub fn is_debit(self) -> bool {
        self.0 < 0
    }
}

impl TryFrom<i64> for Delta {
    type Error = Refusal;
    fn try_from(v: i64) -> Result<Self, Refusal> {
        Delta::from_minor_units(v)
    }
}

impl From<Delta> for i64 {
    fn from(d: Delta) -> i64 {
        d.0
    }
}

impl fmt::Debug for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Delta({:+})", self.0)
    }
}

/// What an account holds, in minor units; negative for accounts that give
/// (the external account, the receivable, a customer in overdraft).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub struct Balance(i64);

impl Balance {
    pub const ZERO: Balance = Balance(0);

    pub fn new(minor_units: i64) -> Self {
        Self(minor_units)
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, amount: Amount) -> Result<Balance, Refusal> {
        self.0
            .checked_add(amount.0)
            .map(Balance)
            .ok_or(Refusal::Overflow)
    }

    pub fn checked_sub(self, amount: Amount) -> Result<Balance, Refusal> {
        self.0
            .checked_sub(amount.0)
            .map(Balance)
            .ok_or(Refusal::Overflow)
    }

    /// The balance after one entry.
    pub fn apply(self, delta: Delta) -> Result<Balance, Refusal> {
        self.0
            .checked_add(delta.0)
            .map(Balance)
            .ok_or(Refusal::Overflow)
    }
}

impl From<i64> for Balance {
    fn from(v: i64) -> Self {
        Self(v)
    }
}

impl From<Balance> for i64 {
    fn from(b: Balance) -> i64 {
        b.0
    }
}

impl fmt::Debug for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Balance({})", self.0)
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An ISO 4217 alphabetic code: exactly three upper-case ASCII letters.
/// Which currencies a bank accepts is configuration, not this type's rule.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    pub fn as_bytes(&self) -> [u8; 3] {
        self.0
    }
}

impl FromStr for Currency {
    type Err = Refusal;
    fn from_str(s: &str) -> Result<Self, Refusal> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(Refusal::CurrencyInvalid),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = Refusal;
    fn try_from(s: String) -> Result<Self, Refusal> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_is_positive_and_bounded() {
        assert_eq!(Amount::new(0), Err(Refusal::AmountNotPositive));
        assert_eq!(Amount::new(-1), Err(Refusal::AmountNotPositive));
        assert_eq!(Amount::new(i64::MIN), Err(Refusal::AmountNotPositive));
        assert_eq!(
            Amount::new(Amount::MAX + 1),
            Err(Refusal::AmountExceedsMaximum)
        );
        assert_eq!(
            Amount::new(Amount::MAX).map(Amount::minor_units),
            Ok(Amount::MAX)
        );
        assert_eq!(Amount::new(1).map(Amount::minor_units), Ok(1));
        let max = Amount::new(Amount::MAX).unwrap();
        assert_eq!(max.checked_add(max), Err(Refusal::AmountExceedsMaximum));
    }

    #[test]
    fn delta_is_never_zero_and_sized_by_amount() {
        assert_eq!(Delta::from_minor_units(0), Err(Refusal::AmountNotPositive));
        assert_eq!(Delta::from_minor_units(i64::MIN), Err(Refusal::Overflow));
        assert_eq!(
            Delta::from_minor_units(-Amount::MAX - 1),
            Err(Refusal::AmountExceedsMaximum)
        );
        let d = Delta::from_minor_units(-7).unwrap();
        assert!(d.is_debit());
        assert_eq!(d.amount().minor_units(), 7);
    }

    #[test]
    fn balance_arithmetic_is_checked() {
        let one = Amount::new(1).unwrap();
        assert_eq!(
            Balance::new(i64::MAX).checked_add(one),
            Err(Refusal::Overflow)
        );
        assert_eq!(
            Balance::new(i64::MIN).checked_sub(one),
            Err(Refusal::Overflow)
        );
        assert_eq!(Balance::ZERO.checked_sub(one), Ok(Balance::new(-1)));
        assert_eq!(
            Balance::new(i64::MIN).apply(Delta::debit(one)),
            Err(Refusal::Overflow)
        );
    }

    #[test]
    fn currency_is_three_upper_case_letters() {
        assert_eq!(
            "EUR".parse::<Currency>().map(|c| c.to_string()),
            Ok("EUR".into())
        );
        for bad in ["", "EU", "EURO", "eur", "E1R", "ÉUR", "EU "] {
            assert_eq!(
                bad.parse::<Currency>(),
                Err(Refusal::CurrencyInvalid),
                "{bad}"
            );
        }
    }
}
