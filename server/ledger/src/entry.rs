//! Entries and postings: double entry. An entry is immutable once written;
//! a [`Posting`] is the entries of one step of one transfer and sums to zero.

use serde::{Deserialize, Serialize};

use crate::{AccountId, Currency, Delta, Refusal, TransferId};

/// The step an entry was written by. With the account's kind and the
/// delta's sign it says where the value came from ([`EntryKind::may_touch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A load's debit: customer → loads in flight.
    Open,
    /// A load's completion: loads in flight → float.
    Post,
    /// A load's reversal: loads in flight → customer.
    Void,
    /// A late-applied load paid again: customer or receivable → float.
    ReDebit,
    /// Money entering: external → customer.
    CreditExternal,
    /// Money leaving: customer → external.
    DebitExternal,
}

impl EntryKind {
    pub const ALL: [EntryKind; 6] = [
        EntryKind::Open,
        EntryKind::Post,
        EntryKind::Void,
        EntryKind::ReDebit,
        EntryKind::CreditExternal,
        EntryKind::DebitExternal,
    ];

    /// The byte in the chain encoding; stable, never reused.
    pub fn tag(self) -> u8 {
        match self {
            EntryKind::Open => 1,
            EntryKind::Post => 2,
            EntryKind::Void => 3,
            EntryKind::ReDebit => 4,
            EntryKind::CreditExternal => 5,
            EntryKind::DebitExternal => 6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Open => "open",
            EntryKind::Post => "post",
            EntryKind::Void => "void",
            EntryKind::ReDebit => "re_debit",
            EntryKind::CreditExternal => "credit_external",
            EntryKind::DebitExternal => "debit_external",
        }
    }

    /// Whether this step may move value into (`credit`) or out of an account
    /// of `kind`. Every route money may take is one line here, so value can
    /// reach the float only through a posted load or a late re-debit.
    pub fn may_touch(self, kind: crate::AccountKind, credit: bool) -> bool {
        use crate::AccountKind as A;
        matches!(
            (self, kind, credit),
            (EntryKind::Open, A::Customer, false)
                | (EntryKind::Open, A::LoadsInFlight, true)
                | (EntryKind::Post, A::LoadsInFlight, false)
                | (EntryKind::Post, A::Float, true)
                | (EntryKind::Void, A::LoadsInFlight, false)
                | (EntryKind::Void, A::Customer, true)
                | (EntryKind::ReDebit, A::Customer | A::Receivable, false)
                | (EntryKind::ReDebit, A::Float, true)
                | (EntryKind::CreditExternal, A::External, false)
                | (EntryKind::CreditExternal, A::Customer, true)
                | (EntryKind::DebitExternal, A::Customer, false)
                | (EntryKind::DebitExternal, A::External, true)
        )
    }
}

/// One immutable line of the ledger: `delta` applied to `account` by a step
/// (`kind`) of `transfer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub transfer: TransferId,
    pub account: AccountId,
    pub currency: Currency,
    pub delta: Delta,
    pub kind: EntryKind,
}

/// The entries of one step of one transfer. Built only through
/// [`Posting::new`], so every posting sums to zero in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Posting(Vec<Entry>);

impl Posting {
    /// Refuses an empty posting, entries of different transfers or steps,
    /// mixed currencies, and deltas that do not sum to zero.
    pub fn new(entries: Vec<Entry>) -> Result<Self, Refusal> {
        let first = entries.first().ok_or(Refusal::PostingEmpty)?;
        if entries
            .iter()
            .any(|e| e.transfer != first.transfer || e.kind != first.kind)
        {
            return Err(Refusal::PostingMixesTransfers);
        }
        if entries.iter().any(|e| e.currency != first.currency) {
            return Err(Refusal::CurrencyMismatch);
        }
        let mut sum: i64 = 0;
        for e in &entries {
            sum = sum
                .checked_add(e.delta.minor_units())
                .ok_or(Refusal::Overflow)?;
        }
        if sum != 0 {
            return Err(Refusal::UnbalancedPosting);
        }
        Ok(Self(entries))
    }

    /// Two entries: `amount` from `from` to `to`.
    pub(crate) fn transfer(
        transfer: TransferId,
        kind: EntryKind,
        currency: Currency,
        from: AccountId,
        to: AccountId,
        amount: crate::Amount,
    ) -> Result<Self, Refusal> {
        let entry = |account, delta| Entry {
            transfer,
            account,
            currency,
            delta,
            kind,
        };
        Self::new(vec![
            entry(from, Delta::debit(amount)),
            entry(to, Delta::credit(amount)),
        ])
    }

    pub fn entries(&self) -> &[Entry] {
        &self.0
    }

    pub fn into_entries(self) -> Vec<Entry> {
        self.0
    }

    /// `account`'s balance after this posting: what the server stores and
    /// reports as "the balance after it".
    pub fn balance_after(&self, account: &crate::Account) -> Result<crate::Balance, Refusal> {
        self.0
            .iter()
            .filter(|e| e.account == account.id)
            .try_fold(account.balance, |b, e| b.apply(e.delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Account, AccountKind, Balance};

    fn entry(transfer: u8, account: &str, currency: &str, delta: i64) -> Entry {
        Entry {
            transfer: TransferId::from_bytes([transfer; 16]),
            account: account.parse().unwrap(),
            currency: currency.parse().unwrap(),
            delta: Delta::from_minor_units(delta).unwrap(),
            kind: EntryKind::Open,
        }
    }

    #[test]
    fn a_posting_sums_to_zero_in_one_currency() {
        assert_eq!(Posting::new(vec![]), Err(Refusal::PostingEmpty));
        assert_eq!(
            Posting::new(vec![
                entry(1, "A", "EUR", -5),
                entry(1, "sys:float:EUR", "EUR", 4)
            ]),
            Err(Refusal::UnbalancedPosting)
        );
        assert_eq!(
            Posting::new(vec![entry(1, "A", "EUR", -5), entry(1, "B", "USD", 5)]),
            Err(Refusal::CurrencyMismatch)
        );
        assert_eq!(
            Posting::new(vec![entry(1, "A", "EUR", -5), entry(2, "B", "EUR", 5)]),
            Err(Refusal::PostingMixesTransfers)
        );
        let mut other_step = entry(1, "B", "EUR", 5);
        other_step.kind = EntryKind::Void;
        assert_eq!(
            Posting::new(vec![entry(1, "A", "EUR", -5), other_step]),
            Err(Refusal::PostingMixesTransfers)
        );
        let p = Posting::new(vec![entry(1, "A", "EUR", -5), entry(1, "B", "EUR", 5)]).unwrap();
        let mut a =
            Account::customer("A".parse().unwrap(), "EUR".parse().unwrap(), Balance::ZERO).unwrap();
        a.balance = Balance::new(7);
        assert_eq!(p.balance_after(&a), Ok(Balance::new(2)));
        a.id = "C".parse().unwrap();
        assert_eq!(p.balance_after(&a), Ok(Balance::new(7)));
    }

    #[test]
    fn routes() {
        let allowed: usize = EntryKind::ALL
            .iter()
            .map(|k| {
                [
                    AccountKind::Customer,
                    AccountKind::LoadsInFlight,
                    AccountKind::Float,
                    AccountKind::Receivable,
                    AccountKind::External,
                ]
                .iter()
                .flat_map(|a| [(*a, true), (*a, false)])
                .filter(|(a, c)| k.may_touch(*a, *c))
                .count()
            })
            .sum();
        assert_eq!(allowed, 13);
        assert!(!EntryKind::Open.may_touch(AccountKind::Float, true));
        assert!(!EntryKind::Void.may_touch(AccountKind::Float, true));
        assert!(!EntryKind::CreditExternal.may_touch(AccountKind::Float, true));
    }
}
