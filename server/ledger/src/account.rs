//! Accounts: customer accounts by account number, and one system account of
//! each [`AccountKind`] per currency.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Balance, Currency, Refusal};

/// What an account is for; it decides which steps may touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// A customer's account, linked to provisioning's customer by number.
    Customer,
    /// Suspense: what pending loads hold between debit and post or void.
    LoadsInFlight,
    /// The e-purse float: value loaded onto purses.
    Float,
    /// What customers owe after a late-applied load they could not pay.
    Receivable,
    /// Where money enters or leaves the ledger (external credits and debits).
    External,
}

impl AccountKind {
    /// The kinds that are system accounts, one per currency.
    pub const SYSTEM: [AccountKind; 4] = [
        AccountKind::LoadsInFlight,
        AccountKind::Float,
        AccountKind::Receivable,
        AccountKind::External,
    ];

    /// The name in a system account id (`sys:<name>:<CUR>`) and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::LoadsInFlight => "loads_in_flight",
            AccountKind::Float => "float",
            AccountKind::Receivable => "receivable",
            AccountKind::External => "external",
        }
    }
}

/// A customer's account number: 1 to 34 of `A-Z a-z 0-9 -` (an IBAN fits).
/// It is personal data: `Debug` does not show it; `Display` does, for
/// storage and for the operator who asked.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountNumber(String);

impl AccountNumber {
    pub const MAX_LEN: usize = 34;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountNumber {
    type Err = Refusal;
    fn from_str(s: &str) -> Result<Self, Refusal> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Refusal::AccountIdInvalid)
        }
    }
}

impl fmt::Debug for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountNumber(..)")
    }
}

impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account's id. A customer account is its number; a system account is
/// rendered `sys:<kind>:<CUR>`. A number has no `:`, so the two never
/// collide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AccountId {
    Customer(AccountNumber),
    System {
        kind: AccountKind,
        currency: Currency,
    },
}

impl AccountId {
    /// The system account of `kind` in `currency`; [`AccountKind::Customer`]
    /// is refused.
    pub fn system(kind: AccountKind, currency: Currency) -> Result<Self, Refusal> {
        if kind == AccountKind::Customer {
            return Err(Refusal::AccountKindMismatch);
        }
        Ok(Self::System { kind, currency })
    }

    /// The kind the id itself names.
    pub fn kind(&self) -> AccountKind {
        match self {
            AccountId::Customer(_) => AccountKind::Customer,
            AccountId::System { kind, .. } => *kind,
        }
    }

    pub(crate) fn sys(kind: AccountKind, currency: Currency) -> Self {
        Self::System { kind, currency }
    }
}

const SYSTEM_PREFIX: &str = "sys:";

impl FromStr for AccountId {
    type Err = Refusal;
    fn from_str(s: &str) -> Result<Self, Refusal> {
        let Some(rest) = s.strip_prefix(SYSTEM_PREFIX) else {
            return s.parse().map(AccountId::Customer);
        };
        let (name, currency) = rest.split_once(':').ok_or(Refusal::AccountIdInvalid)?;
        let kind = AccountKind::SYSTEM
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or(Refusal::AccountIdInvalid)?;
        let currency = currency.parse().map_err(|_| Refusal::AccountIdInvalid)?;
        Ok(Self::System { kind, currency })
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::Customer(n) => fmt::Display::fmt(n, f),
            AccountId::System { kind, currency } => {
                write!(f, "{SYSTEM_PREFIX}{}:{currency}", kind.as_str())
            }
        }
    }
}

impl TryFrom<String> for AccountId {
    type Error = Refusal;
    fn try_from(s: String) -> Result<Self, Refusal> {
        s.parse()
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> String {
        id.to_string()
    }
}

/// An account as the server stores it. The fields are public so the server
/// can build one from its row; every operation checks that `kind` and
/// `currency` agree with `id` ([`Account::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub kind: AccountKind,
    pub currency: Currency,
    /// Zero or minus the overdraft; enforced for customer accounts only.
    pub floor: Balance,
    pub balance: Balance,
}

impl Account {
    /// A new customer account, empty. `floor` is zero or negative.
    pub fn customer(
        number: AccountNumber,
        currency: Currency,
        floor: Balance,
    ) -> Result<Self, Refusal> {
        if floor > Balance::ZERO {
            return Err(Refusal::FloorInvalid);
        }
        Ok(Self {
            id: AccountId::Customer(number),
            kind: AccountKind::Customer,
            currency,
            floor,
            balance: Balance::ZERO,
        })
    }

    /// A new system account, empty; system accounts have no floor.
    pub fn system(kind: AccountKind, currency: Currency) -> Result<Self, Refusal> {
        Ok(Self {
            id: AccountId::system(kind, currency)?,
            kind,
            currency,
            floor: Balance::ZERO,
            balance: Balance::ZERO,
        })
    }

    /// Refuses an account whose fields disagree with its id, or whose kind
    /// is not `expected`.
    pub fn check(&self, expected: AccountKind) -> Result<(), Refusal> {
        if self.kind != expected || self.id.kind() != expected {
            return Err(Refusal::AccountKindMismatch);
        }
        match &self.id {
            AccountId::System { currency, .. } if *currency != self.currency => {
                Err(Refusal::CurrencyMismatch)
            }
            AccountId::Customer(_) if self.floor > Balance::ZERO => Err(Refusal::FloorInvalid),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    #[test]
    fn account_numbers() {
        for ok in ["1", "DE89370400440532013000", "acct-7", &"9".repeat(34)] {
            assert!(ok.parse::<AccountNumber>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"9".repeat(35),
            "a b",
            "a:b",
            "sys:float:EUR",
            "é",
            "a_b",
            "a\n",
        ] {
            assert_eq!(bad.parse::<AccountNumber>(), Err(Refusal::AccountIdInvalid));
        }
        let n: AccountNumber = "SECRET-1".parse().unwrap();
        assert!(!format!("{n:?}").contains("SECRET"));
        let id = AccountId::Customer(n);
        assert!(!format!("{id:?}").contains("SECRET"));
        assert_eq!(id.to_string(), "SECRET-1");
    }

    #[test]
    fn ids_render_and_parse_back_without_collision() {
        for kind in AccountKind::SYSTEM {
            let id = AccountId::system(kind, eur()).unwrap();
            let text = id.to_string();
            assert!(text.starts_with("sys:") && text.ends_with(":EUR"));
            assert_eq!(text.parse::<AccountId>(), Ok(id.clone()));
            assert_eq!(id.kind(), kind);
        }
        assert_eq!(
            "sys:loads_in_flight:EUR".parse::<AccountId>(),
            Ok(AccountId::sys(AccountKind::LoadsInFlight, eur()))
        );
        for bad in [
            "sys:customer:EUR",
            "sys:float",
            "sys:float:eur",
            "sys:bogus:EUR",
            "sys::EUR",
        ] {
            assert_eq!(
                bad.parse::<AccountId>(),
                Err(Refusal::AccountIdInvalid),
                "{bad}"
            );
        }
        assert_eq!(
            AccountId::system(AccountKind::Customer, eur()),
            Err(Refusal::AccountKindMismatch)
        );
    }

    #[test]
    fn accounts_check_their_fields() {
        let n: AccountNumber = "A1".parse().unwrap();
        assert_eq!(
            Account::customer(n.clone(), eur(), Balance::new(1)),
            Err(Refusal::FloorInvalid)
        );
        let c = Account::customer(n, eur(), Balance::new(-500)).unwrap();
        assert_eq!(c.check(AccountKind::Customer), Ok(()));
        assert_eq!(
            c.check(AccountKind::Float),
            Err(Refusal::AccountKindMismatch)
        );
        let mut lying = c.clone();
        lying.kind = AccountKind::Float;
        assert_eq!(
            lying.check(AccountKind::Float),
            Err(Refusal::AccountKindMismatch)
        );
        let mut f = Account::system(AccountKind::Float, eur()).unwrap();
        assert_eq!(f.check(AccountKind::Float), Ok(()));
        f.currency = "USD".parse().unwrap();
        assert_eq!(f.check(AccountKind::Float), Err(Refusal::CurrencyMismatch));
    }
}
