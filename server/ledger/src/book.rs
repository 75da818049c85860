//! [`Book`]: the ledger held in memory, moved by the same pure steps the
//! server calls, and [`Book::check`], which lists every violated invariant.
//! The property tests drive it; the server's `ledger verify` can load its
//! rows into one ([`Book::from_parts`]) and ask the same questions.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain::{ChainBreak, ChainHead, chain_hash, verify_chain};
use crate::transfer::{
    check_retry, close_doubtful, credit_external, debit_external, open_pending, post,
    reconcile_late, void,
};
use crate::{
    Account, AccountId, AccountKind, Amount, Balance, Currency, Entry, EntryKind, Payer, Posting,
    Reconciliation, Refusal, Transfer, TransferId, TransferKind, TransferState, VoidReason,
};

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Entries were written.
    Moved,
    /// A retry of a step already done: nothing moved.
    Replayed,
    /// The transfer changed state without entries (a doubtful load closed).
    Marked,
}

/// An invariant that does not hold (issue item 7's numbering; I3, I4, I8
/// and I9 need sequence numbers, permit bytes and clocks and are the
/// server's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// I1: the balances of one currency, the external account included, do
    /// not sum to zero.
    NotConserved { currency: Currency, sum: Balance },
    /// I1: an entry moved value by a route no step takes (e.g. into the
    /// float other than by a post or a re-debit).
    OffRoute {
        transfer: TransferId,
        account: AccountId,
        kind: EntryKind,
    },
    /// I1: the loads-in-flight account does not hold exactly the pending loads.
    InFlightMismatch {
        currency: Currency,
        held: Balance,
        pending: Balance,
    },
    /// I2: a transfer's entries are not the ones its state implies (a second
    /// debit, a credit-back after a post, a re-debit not late-applied, …).
    EntriesDoNotMatchState { transfer: TransferId },
    /// I2: an entry names no known transfer.
    UnknownTransfer { transfer: TransferId },
    /// I5: a customer account is below its floor.
    BelowFloor { account: AccountId },
    /// I6: a stored balance is not the one the entries give.
    BalanceMismatch {
        account: AccountId,
        stored: Balance,
        recomputed: Balance,
    },
    /// I6: entries name an account that is not stored.
    UnknownAccount { account: AccountId },
    /// I1, I6: a sum of balances or entries does not fit a balance.
    Overflow,
    /// I7: the chain does not verify.
    ChainBroken(ChainBreak),
}

impl Violation {
    /// A stable code per kind of violation, for reports and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Violation::NotConserved { .. } => "i1_not_conserved",
            Violation::OffRoute { .. } => "i1_off_route",
            Violation::InFlightMismatch { .. } => "i1_in_flight_mismatch",
            Violation::EntriesDoNotMatchState { .. } => "i2_entries_do_not_match_state",
            Violation::UnknownTransfer { .. } => "i2_unknown_transfer",
            Violation::BelowFloor { .. } => "i5_below_floor",
            Violation::BalanceMismatch { .. } => "i6_balance_mismatch",
            Violation::UnknownAccount { .. } => "i6_unknown_account",
            Violation::Overflow => "overflow",
            Violation::ChainBroken(_) => "i7_chain_broken",
        }
    }
}

/// Every account's balance as the entries give it. The server calls this
/// over its entry rows to check its stored balances (I6).
pub fn recompute<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
) -> Result<BTreeMap<AccountId, Balance>, Refusal> {
    let mut balances: BTreeMap<AccountId, Balance> = BTreeMap::new();
    for e in entries {
        let b = balances.entry(e.account.clone()).or_default();
        *b = b.apply(e.delta)?;
    }
    Ok(balances)
}

/// The entries a transfer in its state must have, as (account, delta, kind).
fn expected_entries(t: &Transfer) -> Result<Vec<Entry>, Refusal> {
    let mut out = Vec::new();
    let mut add = |p: Result<Posting, Refusal>| -> Result<(), Refusal> {
        out.extend(p?.into_entries());
        Ok(())
    };
    let suspense = AccountId::sys(AccountKind::LoadsInFlight, t.currency);
    let posting = |kind, from: &AccountId, to: &AccountId| {
        Posting::transfer(t.id, kind, t.currency, from.clone(), to.clone(), t.amount)
    };
    match t.kind {
        TransferKind::ExternalCredit => {
            add(posting(EntryKind::CreditExternal, &t.debit, &t.credit))?
        }
        TransferKind::ExternalDebit => add(posting(EntryKind::DebitExternal, &t.debit, &t.credit))?,
        TransferKind::Load => {
            add(posting(EntryKind::Open, &t.debit, &suspense))?;
            match t.state {
                TransferState::Pending => {}
                TransferState::Posted => add(posting(EntryKind::Post, &suspense, &t.credit))?,
                TransferState::Voided(_) => add(posting(EntryKind::Void, &suspense, &t.debit))?,
            }
            if let Reconciliation::LateApplied(payer) = t.reconciliation {
                let from = match payer {
                    Payer::Customer => t.debit.clone(),
                    Payer::Receivable => AccountId::sys(AccountKind::Receivable, t.currency),
                };
                add(posting(EntryKind::ReDebit, &from, &t.credit))?;
            }
        }
    }
    Ok(out)
}

/// Whether a transfer's state is one the steps can reach.
fn reachable(t: &Transfer) -> bool {
    matches!(
        (t.kind, t.state, t.reconciliation),
        (
            TransferKind::Load,
            TransferState::Voided(VoidReason::Timeout | VoidReason::BadReport),
            _
        ) | (TransferKind::Load, _, Reconciliation::None)
            | (
                TransferKind::ExternalCredit | TransferKind::ExternalDebit,
                TransferState::Posted,
                Reconciliation::None,
            )
    )
}

/// The ledger in memory: accounts, transfers and the sealed entries.
#[derive(Debug, Clone, Default)]
pub struct Book {
    accounts: BTreeMap<AccountId, Account>,
    transfers: BTreeMap<TransferId, Transfer>,
    /// Entries in sealing order with their chain hashes; seq = index + 1.
    sealed: Vec<(Entry, [u8; 32])>,
}

impl Book {
    pub fn new() -> Self {
        Self::default()
    }

    /// A book from stored rows, for checking them: entries in sealing order
    /// with their stored hashes, from sequence 1.
    pub fn from_parts(
        accounts: impl IntoIterator<Item = Account>,
        transfers: impl IntoIterator<Item = Transfer>,
        sealed: impl IntoIterator<Item = (Entry, [u8; 32])>,
    ) -> Self {
        Self {
            accounts: accounts.into_iter().map(|a| (a.id.clone(), a)).collect(),
            transfers: transfers.into_iter().map(|t| (t.id, t)).collect(),
            sealed: sealed.into_iter().collect(),
        }
    }

    /// Opens a customer account, and its currency's system accounts if new.
    pub fn open_account(&mut self, account: Account) -> Result<(), Refusal> {
        account.check(AccountKind::Customer)?;
        if self.accounts.contains_key(&account.id) {
            return Err(Refusal::AccountExists);
        }
        for kind in AccountKind::SYSTEM {
            let system = Account::system(kind, account.currency)?;
            self.accounts.entry(system.id.clone()).or_insert(system);
        }
        self.accounts.insert(account.id.clone(), account);
        Ok(())
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn transfer(&self, id: &TransferId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.sealed.iter().map(|(e, _)| e)
    }

    /// The chain's head after the last sealed entry.
    pub fn head(&self) -> ChainHead {
        match self.sealed.last() {
            Some((_, hash)) => ChainHead {
                seq: self.sealed.len() as u64,
                hash: *hash,
            },
            None => ChainHead::GENESIS,
        }
    }

    fn get(&self, id: &AccountId) -> Result<&Account, Refusal> {
        self.accounts.get(id).ok_or(Refusal::AccountNotFound)
    }

    fn get_transfer(&self, id: &TransferId) -> Result<&Transfer, Refusal> {
        self.transfers.get(id).ok_or(Refusal::TransferNotFound)
    }

    /// Writes a step's result: balances first (so an overflow writes
    /// nothing), then the transfer and the sealed entries.
    fn commit(&mut self, transfer: Transfer, posting: Posting) -> Result<Applied, Refusal> {
        let mut after = BTreeMap::new();
        for e in posting.entries() {
            let current = match after.get(&e.account) {
                Some(b) => *b,
                None => self.get(&e.account)?.balance,
            };
            after.insert(e.account.clone(), current.apply(e.delta)?);
        }
        for (id, balance) in after {
            if let Some(a) = self.accounts.get_mut(&id) {
                a.balance = balance;
            }
        }
        self.transfers.insert(transfer.id, transfer);
        for e in posting.into_entries() {
            let head = self.head();
            let hash = chain_hash(&head.hash, head.seq + 1, &e);
            self.sealed.push((e, hash));
        }
        Ok(Applied::Moved)
    }

    /// A retry of a transfer's creation: the same request moves nothing.
    fn retry(&self, proposed: &Transfer) -> Option<Result<Applied, Refusal>> {
        let existing = self.transfers.get(&proposed.id)?;
        Some(check_retry(existing, proposed).map(|()| Applied::Replayed))
    }

    /// [`open_pending`] from `customer` into its currency's loads in flight.
    pub fn open_pending(
        &mut self,
        customer: &AccountId,
        id: TransferId,
        amount: Amount,
    ) -> Result<Applied, Refusal> {
        let c = self.get(customer)?;
        if let Some(r) = self.retry(&Transfer::load(id, customer.clone(), c.currency, amount)) {
            return r;
        }
        let suspense = self.get(&AccountId::sys(AccountKind::LoadsInFlight, c.currency))?;
        let (t, p) = open_pending(c, suspense, id, amount)?;
        self.commit(t, p)
    }

    /// [`post`].
    pub fn post(&mut self, id: &TransferId) -> Result<Applied, Refusal> {
        let (t, p) = post(self.get_transfer(id)?)?;
        self.commit(t, p)
    }

    /// [`void`]; expiry is `reason` [`VoidReason::Timeout`].
    pub fn void(&mut self, id: &TransferId, reason: VoidReason) -> Result<Applied, Refusal> {
        let (t, p) = void(self.get_transfer(id)?, reason)?;
        self.commit(t, p)
    }

    /// [`reconcile_late`] against the load's own customer account.
    pub fn reconcile_late(&mut self, id: &TransferId) -> Result<Applied, Refusal> {
        let t = self.get_transfer(id)?;
        let (t, p) = reconcile_late(t, self.get(&t.debit)?)?;
        self.commit(t, p)
    }

    /// [`close_doubtful`].
    pub fn close_doubtful(&mut self, id: &TransferId) -> Result<Applied, Refusal> {
        let t = close_doubtful(self.get_transfer(id)?)?;
        self.transfers.insert(t.id, t);
        Ok(Applied::Marked)
    }

    /// [`credit_external`].
    pub fn credit_external(
        &mut self,
        customer: &AccountId,
        id: TransferId,
        amount: Amount,
    ) -> Result<Applied, Refusal> {
        let c = self.get(customer)?;
        let proposed = Transfer::external_credit(id, customer.clone(), c.currency, amount);
        if let Some(r) = self.retry(&proposed) {
            return r;
        }
        let (t, p) = credit_external(c, id, amount)?;
        self.commit(t, p)
    }

    /// [`debit_external`].
    pub fn debit_external(
        &mut self,
        customer: &AccountId,
        id: TransferId,
        amount: Amount,
    ) -> Result<Applied, Refusal> {
        let c = self.get(customer)?;
        let proposed = Transfer::external_debit(id, customer.clone(), c.currency, amount);
        if let Some(r) = self.retry(&proposed) {
            return r;
        }
        let (t, p) = debit_external(c, id, amount)?;
        self.commit(t, p)
    }

    /// Every invariant the ledger alone can check (I1, I2, I5, I6, I7) that
    /// does not hold; empty when the book is sound.
    pub fn check(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        self.check_conservation(&mut found);
        self.check_transfers(&mut found);
        self.check_balances(&mut found);
        let sealed = self
            .sealed
            .iter()
            .enumerate()
            .map(|(i, (e, h))| (i as u64 + 1, e, *h));
        if let Err(b) = verify_chain(ChainHead::GENESIS, sealed) {
            found.push(Violation::ChainBroken(b));
        }
        found
    }

    /// I1: Σ per currency is zero; every entry takes an allowed route; the
    /// loads in flight hold exactly the pending loads.
    fn check_conservation(&self, found: &mut Vec<Violation>) {
        let currencies: BTreeSet<Currency> = self.accounts.values().map(|a| a.currency).collect();
        for currency in currencies {
            let balances = self.accounts.values().filter(|a| a.currency == currency);
            match exact_sum(balances.map(|a| a.balance.minor_units())) {
                Some(sum) if sum == Balance::ZERO => {}
                Some(sum) => found.push(Violation::NotConserved { currency, sum }),
                None => found.push(Violation::Overflow),
            }
            let held = self
                .accounts
                .get(&AccountId::sys(AccountKind::LoadsInFlight, currency))
                .map_or(Balance::ZERO, |a| a.balance);
            let pending = self.transfers.values().filter(|t| {
                t.currency == currency
                    && t.kind == TransferKind::Load
                    && t.state == TransferState::Pending
            });
            match exact_sum(pending.map(|t| t.amount.minor_units())) {
                Some(pending) if pending == held => {}
                Some(pending) => found.push(Violation::InFlightMismatch {
                    currency,
                    held,
                    pending,
                }),
                None => found.push(Violation::Overflow),
            }
        }
        for e in self.entries() {
            if !e.kind.may_touch(e.account.kind(), !e.delta.is_debit()) {
                found.push(Violation::OffRoute {
                    transfer: e.transfer,
                    account: e.account.clone(),
                    kind: e.kind,
                });
            }
        }
    }

    /// I2: each transfer's entries are exactly those its state implies.
    fn check_transfers(&self, found: &mut Vec<Violation>) {
        let mut by_transfer: BTreeMap<TransferId, Vec<&Entry>> = BTreeMap::new();
        for e in self.entries() {
            by_transfer.entry(e.transfer).or_default().push(e);
        }
        for t in self.transfers.values() {
            let actual = by_transfer.remove(&t.id).unwrap_or_default();
            let matches = reachable(t)
                && expected_entries(t).is_ok_and(|expected| {
                    let mut expected: Vec<_> = expected.iter().map(key).collect();
                    let mut actual: Vec<_> = actual.iter().map(|e| key(e)).collect();
                    expected.sort();
                    actual.sort();
                    expected == actual
                });
            if !matches {
                found.push(Violation::EntriesDoNotMatchState { transfer: t.id });
            }
        }
        for transfer in by_transfer.into_keys() {
            found.push(Violation::UnknownTransfer { transfer });
        }
    }

    /// I5 and I6: customers above their floors; stored = recomputed.
    fn check_balances(&self, found: &mut Vec<Violation>) {
        let recomputed = match recompute(self.entries()) {
            Ok(r) => r,
            Err(_) => {
                found.push(Violation::Overflow);
                return;
            }
        };
        for a in self.accounts.values() {
            if a.kind == AccountKind::Customer && a.balance < a.floor {
                found.push(Violation::BelowFloor {
                    account: a.id.clone(),
                });
            }
            let r = recomputed.get(&a.id).copied().unwrap_or_default();
            if r != a.balance {
                found.push(Violation::BalanceMismatch {
                    account: a.id.clone(),
                    stored: a.balance,
                    recomputed: r,
                });
            }
        }
        for account in recomputed.into_keys() {
            if !self.accounts.contains_key(&account) {
                found.push(Violation::UnknownAccount { account });
            }
        }
    }
}

/// The exact sum, or `None` if it does not fit a balance.
fn exact_sum(values: impl Iterator<Item = i64>) -> Option<Balance> {
    let sum: i128 = values.map(i128::from).sum();
    i64::try_from(sum).ok().map(Balance::new)
}

/// What identifies an entry's effect, for comparing multisets of entries.
fn key(e: &Entry) -> (AccountId, i64, EntryKind, Currency) {
    (e.account.clone(), e.delta.minor_units(), e.kind, e.currency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Delta;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    fn amount(n: i64) -> Amount {
        Amount::new(n).unwrap()
    }

    fn tid(n: u8) -> TransferId {
        TransferId::from_bytes([n; 16])
    }

    fn book() -> (Book, AccountId) {
        let mut b = Book::new();
        let c = Account::customer("C-1".parse().unwrap(), eur(), Balance::new(-10)).unwrap();
        let id = c.id.clone();
        b.open_account(c).unwrap();
        b.credit_external(&id, tid(100), amount(100)).unwrap();
        (b, id)
    }

    fn codes(b: &Book) -> Vec<&'static str> {
        b.check().iter().map(Violation::code).collect()
    }

    #[test]
    fn a_sound_book_has_no_violations() {
        let (mut b, c) = book();
        b.open_pending(&c, tid(1), amount(30)).unwrap();
        b.open_pending(&c, tid(2), amount(30)).unwrap();
        b.open_pending(&c, tid(3), amount(30)).unwrap();
        assert_eq!(b.check(), []);
        b.post(&tid(1)).unwrap();
        b.void(&tid(2), VoidReason::Failure).unwrap();
        b.void(&tid(3), VoidReason::Timeout).unwrap();
        b.reconcile_late(&tid(3)).unwrap();
        // 100 - 30 posted - 30 debited again; the failed one came back.
        assert_eq!(b.account(&c).unwrap().balance, Balance::new(40));
        assert_eq!(b.check(), []);
        assert_eq!(b.head().seq, 2 * 8);
    }

    #[test]
    fn open_account_refuses_twice_and_non_customers() {
        let (mut b, c) = book();
        let again = b.account(&c).unwrap().clone();
        assert_eq!(b.open_account(again), Err(Refusal::AccountExists));
        let float = Account::system(AccountKind::Float, eur()).unwrap();
        assert_eq!(b.open_account(float), Err(Refusal::AccountKindMismatch));
        assert_eq!(b.post(&tid(9)), Err(Refusal::TransferNotFound));
        let nobody = AccountId::Customer("nobody".parse().unwrap());
        assert_eq!(
            b.open_pending(&nobody, tid(9), amount(1)),
            Err(Refusal::AccountNotFound)
        );
    }

    #[test]
    fn retries_move_nothing() {
        let (mut b, c) = book();
        assert_eq!(b.open_pending(&c, tid(1), amount(100)), Ok(Applied::Moved));
        // The balance is now 0: the retry must not be refused for it.
        assert_eq!(
            b.open_pending(&c, tid(1), amount(100)),
            Ok(Applied::Replayed)
        );
        assert_eq!(
            b.open_pending(&c, tid(1), amount(5)),
            Err(Refusal::ExistsWithDifferentAmount)
        );
        assert_eq!(
            b.credit_external(&c, tid(1), amount(100)),
            Err(Refusal::ExistsWithDifferentAccounts)
        );
        assert_eq!(
            b.credit_external(&c, tid(100), amount(100)),
            Ok(Applied::Replayed)
        );
        assert_eq!(b.account(&c).unwrap().balance, Balance::ZERO);
        assert_eq!(b.check(), []);
    }

    /// Each kind of damage is found, under its own code.
    #[test]
    fn check_finds_each_violation() {
        let (mut b, c) = book();
        b.open_pending(&c, tid(1), amount(30)).unwrap();
        b.post(&tid(1)).unwrap();
        let sound = b.clone();

        // A balance changed without entries: I1 and I6.
        b.accounts.get_mut(&c).unwrap().balance = Balance::new(1_000);
        assert_eq!(codes(&b), ["i1_not_conserved", "i6_balance_mismatch"]);

        // A customer below its floor (and the stored balances agreeing).
        let mut b = sound.clone();
        b.debit_external(&c, tid(2), amount(75)).unwrap();
        b.accounts.get_mut(&c).unwrap().floor = Balance::new(0);
        assert_eq!(codes(&b), ["i5_below_floor"]);

        // A posted load credited back as well: I2 (and I1, I6 agree).
        let mut b = sound.clone();
        let t = b.transfers[&tid(1)].clone();
        let mut pending = t.clone();
        pending.state = TransferState::Pending;
        let (_, p) = void(&pending, VoidReason::Failure).unwrap();
        b.commit(t, p).unwrap();
        assert_eq!(
            codes(&b),
            ["i1_in_flight_mismatch", "i2_entries_do_not_match_state"]
        );

        // Value into the float by a route no step takes.
        let mut b = sound.clone();
        let float = AccountId::sys(AccountKind::Float, eur());
        let external = AccountId::sys(AccountKind::External, eur());
        let p = Posting::transfer(
            tid(7),
            EntryKind::CreditExternal,
            eur(),
            external,
            float,
            amount(5),
        )
        .unwrap();
        let t = Transfer::external_credit(tid(7), c.clone(), eur(), amount(5));
        b.commit(t, p).unwrap();
        assert_eq!(codes(&b), ["i1_off_route", "i2_entries_do_not_match_state"]);

        // A re-debit of a load that was not late-applied.
        let mut b = sound.clone();
        let mut t = b.transfers[&tid(1)].clone();
        t.state = TransferState::Voided(VoidReason::Timeout);
        let (_, p) = reconcile_late(&t, &b.accounts[&c].clone()).unwrap();
        let posted = b.transfers[&tid(1)].clone();
        b.commit(posted, p).unwrap();
        assert_eq!(codes(&b), ["i2_entries_do_not_match_state"]);

        // An entry changed after sealing: I7 (and I1, I6 see the change).
        let mut b = sound.clone();
        b.sealed[0].0.delta = Delta::from_minor_units(-99).unwrap();
        assert!(codes(&b).contains(&"i7_chain_broken"));

        // An entry of a transfer nobody stored.
        let mut b = sound.clone();
        b.transfers.remove(&tid(1));
        assert_eq!(codes(&b), ["i2_unknown_transfer"]);

        // Entries on an account nobody stored.
        let mut b = sound;
        b.accounts.remove(&c);
        assert!(codes(&b).contains(&"i6_unknown_account"));
    }

    /// Rows read back into a book check the same as the book that wrote them.
    #[test]
    fn a_book_from_stored_rows_checks_the_same() {
        let (mut b, c) = book();
        b.open_pending(&c, tid(1), amount(30)).unwrap();
        b.void(&tid(1), VoidReason::Timeout).unwrap();
        let rows = Book::from_parts(
            b.accounts().cloned(),
            b.transfers().cloned(),
            b.sealed.iter().cloned(),
        );
        assert_eq!(rows.check(), []);
        assert_eq!(rows.head(), b.head());
        let mut missing = b.sealed.clone();
        missing.remove(2);
        let rows = Book::from_parts(b.accounts().cloned(), b.transfers().cloned(), missing);
        assert!(codes(&rows).contains(&"i7_chain_broken"));
    }

    #[test]
    fn violation_codes_are_distinct() {
        let t = tid(1);
        let a = AccountId::sys(AccountKind::Float, eur());
        let all = [
            Violation::NotConserved {
                currency: eur(),
                sum: Balance::new(1),
            },
            Violation::OffRoute {
                transfer: t,
                account: a.clone(),
                kind: EntryKind::Open,
            },
            Violation::InFlightMismatch {
                currency: eur(),
                held: Balance::ZERO,
                pending: Balance::ZERO,
            },
            Violation::EntriesDoNotMatchState { transfer: t },
            Violation::UnknownTransfer { transfer: t },
            Violation::BelowFloor { account: a.clone() },
            Violation::BalanceMismatch {
                account: a.clone(),
                stored: Balance::ZERO,
                recomputed: Balance::ZERO,
            },
            Violation::UnknownAccount { account: a },
            Violation::Overflow,
            Violation::ChainBroken(ChainBreak::HashMismatch { seq: 1 }),
        ];
        let codes: BTreeSet<&str> = all.iter().map(Violation::code).collect();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn recompute_sums_entries() {
        let (mut b, c) = book();
        b.open_pending(&c, tid(1), amount(30)).unwrap();
        let r = recompute(b.entries()).unwrap();
        assert_eq!(r[&c], Balance::new(70));
        assert_eq!(
            r[&AccountId::sys(AccountKind::LoadsInFlight, eur())],
            Balance::new(30)
        );
        assert_eq!(
            r[&AccountId::sys(AccountKind::External, eur())],
            Balance::new(-100)
        );
    }
}
