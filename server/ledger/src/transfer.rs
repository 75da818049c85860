//! Transfers and the steps that move them: each step is a pure function
//! from the values the server read to the new transfer and the [`Posting`]
//! to write, or a [`Refusal`]. The checks run in a fixed order, one named
//! result each, as in TigerBeetle's state machine.
//!
//! A load is two-phase: [`open_pending`] reserves the amount in the
//! loads-in-flight account; [`post`] moves it to the float, or [`void`]
//! gives it back, each at most once. Expiry is [`void`] with
//! [`VoidReason::Timeout`], which leaves the load *doubtful*: the purse may
//! have applied it and its report been lost (so does a void on a report
//! that did not verify or add up, [`VoidReason::BadReport`]). [`reconcile_late`] then debits
//! it again exactly once, or [`close_doubtful`] lets the reversal stand.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Account, AccountId, AccountKind, Amount, Currency, EntryKind, Posting, Refusal};

/// A transfer's id: 16 bytes chosen by the caller (the server derives it
/// from the request), rendered as 32 lower-case hex digits. A retry carries
/// the same id ([`check_retry`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TransferId([u8; 16]);

impl TransferId {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for TransferId {
    type Err = Refusal;
    fn from_str(s: &str) -> Result<Self, Refusal> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Refusal::TransferIdInvalid)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransferId({self})")
    }
}

impl TryFrom<String> for TransferId {
    type Error = Refusal;
    fn try_from(s: String) -> Result<Self, Refusal> {
        s.parse()
    }
}

impl From<TransferId> for String {
    fn from(id: TransferId) -> String {
        id.to_string()
    }
}

/// What a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// An e-purse load, two-phase: customer → (loads in flight) → float.
    Load,
    /// Money entering: external → customer, posted at once.
    ExternalCredit,
    /// Money leaving: customer → external, posted at once.
    ExternalDebit,
}

/// Why a pending load was voided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoidReason {
    /// The purse reported that the load failed.
    Failure,
    /// The report did not verify, was for another load, or its wallet
    /// balance did not add up.
    BadReport,
    /// No report within the timeout: the load becomes doubtful.
    Timeout,
    /// An operator voided it.
    Operator,
}

/// Where a transfer stands. Pending → Posted | Voided, each at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    Pending,
    Posted,
    Voided(VoidReason),
}

impl TransferState {
    /// Voided without the purse's proof: by timeout, or on a report that
    /// did not verify or add up. The purse may still have applied it, so
    /// such a load is doubtful until its next contact settles it.
    pub fn is_unproven_void(self) -> bool {
        matches!(
            self,
            TransferState::Voided(VoidReason::Timeout | VoidReason::BadReport)
        )
    }
}

/// Who paid a late-applied load the second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payer {
    /// The customer's account had room above its floor.
    Customer,
    /// It did not: the receivable carries the debt, visible to operators.
    Receivable,
}

/// The outcome of a doubtful load (voided by timeout), at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconciliation {
    /// Not reconciled (or not doubtful).
    None,
    /// The purse had applied it: debited again, from `Payer`.
    LateApplied(Payer),
    /// The purse had not applied it: the reversal stands.
    Closed,
}

/// A transfer as the server stores it. For a load, `debit` is the customer
/// and `credit` the float: where the money ends when posted; the
/// loads-in-flight account of `currency` holds it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    pub id: TransferId,
    pub kind: TransferKind,
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    pub state: TransferState,
    pub reconciliation: Reconciliation,
}

impl Transfer {
    /// A new load from `customer`, pending, before any balance check: what
    /// a retry is compared with ([`check_retry`]).
    pub fn load(id: TransferId, customer: AccountId, currency: Currency, amount: Amount) -> Self {
        Self::new(
            id,
            TransferKind::Load,
            customer,
            AccountId::sys(AccountKind::Float, currency),
            currency,
            amount,
            TransferState::Pending,
        )
    }

    /// A new external credit to `customer`.
    pub fn external_credit(
        id: TransferId,
        customer: AccountId,
        currency: Currency,
        amount: Amount,
    ) -> Self {
        let external = AccountId::sys(AccountKind::External, currency);
        Self::new(
            id,
            TransferKind::ExternalCredit,
            external,
            customer,
            currency,
            amount,
            TransferState::Posted,
        )
    }

    /// A new external debit from `customer`.
    pub fn external_debit(
        id: TransferId,
        customer: AccountId,
        currency: Currency,
        amount: Amount,
    ) -> Self {
        let external = AccountId::sys(AccountKind::External, currency);
        Self::new(
            id,
            TransferKind::ExternalDebit,
            customer,
            external,
            currency,
            amount,
            TransferState::Posted,
        )
    }

    fn new(
        id: TransferId,
        kind: TransferKind,
        debit: AccountId,
        credit: AccountId,
        currency: Currency,
        amount: Amount,
        state: TransferState,
    ) -> Self {
        Self {
            id,
            kind,
            debit,
            credit,
            amount,
            currency,
            state,
            reconciliation: Reconciliation::None,
        }
    }

    /// Voided without the purse's word (no report in time, or a report
    /// that could not be trusted) and not yet reconciled: the purse may
    /// hold the value.
    pub fn is_doubtful(&self) -> bool {
        self.kind == TransferKind::Load
            && self.state.is_unproven_void()
            && self.reconciliation == Reconciliation::None
    }

    /// Refuses a transfer (read back from storage) whose accounts are not
    /// the ones its kind implies, so that no step sends money where the
    /// rules do not.
    pub fn check_shape(&self) -> Result<(), Refusal> {
        let external = AccountId::sys(AccountKind::External, self.currency);
        let ok = match self.kind {
            TransferKind::Load => {
                self.debit.kind() == AccountKind::Customer
                    && self.credit == AccountId::sys(AccountKind::Float, self.currency)
            }
            TransferKind::ExternalCredit => {
                self.debit == external && self.credit.kind() == AccountKind::Customer
            }
            TransferKind::ExternalDebit => {
                self.debit.kind() == AccountKind::Customer && self.credit == external
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Refusal::AccountKindMismatch)
        }
    }

    fn suspense(&self) -> AccountId {
        AccountId::sys(AccountKind::LoadsInFlight, self.currency)
    }

    fn posting(&self, kind: EntryKind, from: AccountId, to: AccountId) -> Result<Posting, Refusal> {
        Posting::transfer(self.id, kind, self.currency, from, to, self.amount)
    }
}

/// Refuses a debit that would take `account` below its floor.
fn check_room(account: &Account, amount: Amount) -> Result<(), Refusal> {
    let after = account.balance.checked_sub(amount)?;
    if after < account.floor {
        return Err(Refusal::ExceedsBalance);
    }
    Ok(())
}

/// Refuses an amount's currency that is not the account's.
fn check_currency(account: &Account, currency: Currency) -> Result<(), Refusal> {
    if account.currency != currency {
        return Err(Refusal::CurrencyMismatch);
    }
    Ok(())
}

/// Debits `customer` and holds the amount in `suspense`: a pending load.
/// The server calls this inside the transaction that read `customer`'s
/// balance, after [`check_retry`] found no transfer with `id`.
pub fn open_pending(
    customer: &Account,
    suspense: &Account,
    id: TransferId,
    amount: Amount,
) -> Result<(Transfer, Posting), Refusal> {
    customer.check(AccountKind::Customer)?;
    suspense.check(AccountKind::LoadsInFlight)?;
    check_currency(suspense, customer.currency)?;
    check_room(customer, amount)?;
    let transfer = Transfer::load(id, customer.id.clone(), customer.currency, amount);
    let posting = transfer.posting(EntryKind::Open, customer.id.clone(), transfer.suspense())?;
    Ok((transfer, posting))
}

/// Refuses anything but a pending load, naming what it is instead.
fn check_pending(transfer: &Transfer) -> Result<(), Refusal> {
    transfer.check_shape()?;
    match (transfer.kind, transfer.state) {
        (TransferKind::Load, TransferState::Pending) => Ok(()),
        (TransferKind::Load, TransferState::Posted) => Err(Refusal::AlreadyPosted),
        (TransferKind::Load, TransferState::Voided(_)) => Err(Refusal::AlreadyVoided),
        _ => Err(Refusal::NotPending),
    }
}

/// Completes a pending load: loads in flight → float.
pub fn post(transfer: &Transfer) -> Result<(Transfer, Posting), Refusal> {
    check_pending(transfer)?;
    let posting = transfer.posting(
        EntryKind::Post,
        transfer.suspense(),
        transfer.credit.clone(),
    )?;
    let mut next = transfer.clone();
    next.state = TransferState::Posted;
    Ok((next, posting))
}

/// Reverses a pending load: loads in flight → customer. With
/// [`VoidReason::Timeout`] (expiry) the load is then doubtful.
pub fn void(transfer: &Transfer, reason: VoidReason) -> Result<(Transfer, Posting), Refusal> {
    check_pending(transfer)?;
    let posting = transfer.posting(EntryKind::Void, transfer.suspense(), transfer.debit.clone())?;
    let mut next = transfer.clone();
    next.state = TransferState::Voided(reason);
    Ok((next, posting))
}

/// Refuses anything but a doubtful load.
fn check_doubtful(transfer: &Transfer) -> Result<(), Refusal> {
    transfer.check_shape()?;
    if transfer.kind != TransferKind::Load || !transfer.state.is_unproven_void() {
        return Err(Refusal::NotDoubtful);
    }
    if transfer.reconciliation != Reconciliation::None {
        return Err(Refusal::AlreadyReconciled);
    }
    Ok(())
}

/// A doubtful load the purse did apply: debits it again, once, into the
/// float: from `customer` if it has room above its floor, else from the
/// receivable (the customer owes it). The load is then `late_applied`.
pub fn reconcile_late(
    transfer: &Transfer,
    customer: &Account,
) -> Result<(Transfer, Posting), Refusal> {
    check_doubtful(transfer)?;
    customer.check(AccountKind::Customer)?;
    if customer.id != transfer.debit {
        return Err(Refusal::AccountMismatch);
    }
    check_currency(customer, transfer.currency)?;
    let (payer, from) = match check_room(customer, transfer.amount) {
        Ok(()) => (Payer::Customer, customer.id.clone()),
        Err(Refusal::ExceedsBalance) => (
            Payer::Receivable,
            AccountId::sys(AccountKind::Receivable, transfer.currency),
        ),
        Err(other) => return Err(other),
    };
    let posting = transfer.posting(EntryKind::ReDebit, from, transfer.credit.clone())?;
    let mut next = transfer.clone();
    next.reconciliation = Reconciliation::LateApplied(payer);
    Ok((next, posting))
}

/// A doubtful load the purse did not apply: the reversal stands. No entries.
pub fn close_doubtful(transfer: &Transfer) -> Result<Transfer, Refusal> {
    check_doubtful(transfer)?;
    let mut next = transfer.clone();
    next.reconciliation = Reconciliation::Closed;
    Ok(next)
}

/// Money entering the ledger: external → `customer`, posted at once.
pub fn credit_external(
    customer: &Account,
    id: TransferId,
    amount: Amount,
) -> Result<(Transfer, Posting), Refusal> {
    customer.check(AccountKind::Customer)?;
    let t = Transfer::external_credit(id, customer.id.clone(), customer.currency, amount);
    let posting = t.posting(EntryKind::CreditExternal, t.debit.clone(), t.credit.clone())?;
    Ok((t, posting))
}

/// Money leaving the ledger: `customer` → external, posted at once, only
/// down to the customer's floor.
pub fn debit_external(
    customer: &Account,
    id: TransferId,
    amount: Amount,
) -> Result<(Transfer, Posting), Refusal> {
    customer.check(AccountKind::Customer)?;
    check_room(customer, amount)?;
    let t = Transfer::external_debit(id, customer.id.clone(), customer.currency, amount);
    let posting = t.posting(EntryKind::DebitExternal, t.debit.clone(), t.credit.clone())?;
    Ok((t, posting))
}

/// A request arrived with the id of an existing transfer. `Ok` means it is
/// the same request: answer as the first time and move nothing. Anything
/// else is a conflict, never a second transfer. `proposed` is built with
/// [`Transfer::load`] (or the external constructors) before any balance
/// check, since the first attempt has already changed the balance.
pub fn check_retry(existing: &Transfer, proposed: &Transfer) -> Result<(), Refusal> {
    if existing.kind != proposed.kind
        || existing.debit != proposed.debit
        || existing.credit != proposed.credit
        || existing.currency != proposed.currency
    {
        return Err(Refusal::ExistsWithDifferentAccounts);
    }
    if existing.amount != proposed.amount {
        return Err(Refusal::ExistsWithDifferentAmount);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Balance, Entry};

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    fn amount(n: i64) -> Amount {
        Amount::new(n).unwrap()
    }

    fn tid(n: u8) -> TransferId {
        TransferId::from_bytes([n; 16])
    }

    fn customer(balance: i64, floor: i64) -> Account {
        let mut a = Account::customer("C-1".parse().unwrap(), eur(), Balance::new(floor)).unwrap();
        a.balance = Balance::new(balance);
        a
    }

    fn sys(kind: AccountKind) -> Account {
        Account::system(kind, eur()).unwrap()
    }

    fn pending(balance: i64, n: i64) -> Transfer {
        open_pending(
            &customer(balance, 0),
            &sys(AccountKind::LoadsInFlight),
            tid(1),
            amount(n),
        )
        .unwrap()
        .0
    }

    fn deltas(p: &Posting) -> Vec<(String, i64, EntryKind)> {
        p.entries()
            .iter()
            .map(|e: &Entry| (e.account.to_string(), e.delta.minor_units(), e.kind))
            .collect()
    }

    #[test]
    fn transfer_ids_are_hex() {
        let id = TransferId::from_bytes([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.to_string().parse(), Ok(id));
        assert_eq!("AB".repeat(16).parse(), Ok(id));
        for bad in ["", "ab", &"ab".repeat(17), &"zz".repeat(16)] {
            assert_eq!(bad.parse::<TransferId>(), Err(Refusal::TransferIdInvalid));
        }
    }

    #[test]
    fn a_load_debits_the_customer_into_suspense_then_posts_to_the_float() {
        let c = customer(100, 0);
        let (t, p) =
            open_pending(&c, &sys(AccountKind::LoadsInFlight), tid(1), amount(100)).unwrap();
        assert_eq!(t.state, TransferState::Pending);
        assert_eq!(t.credit.to_string(), "sys:float:EUR");
        assert_eq!(
            deltas(&p),
            [
                ("C-1".into(), -100, EntryKind::Open),
                ("sys:loads_in_flight:EUR".into(), 100, EntryKind::Open)
            ]
        );
        assert_eq!(p.balance_after(&c), Ok(Balance::ZERO));
        let (posted, p) = post(&t).unwrap();
        assert_eq!(posted.state, TransferState::Posted);
        assert_eq!(
            deltas(&p),
            [
                ("sys:loads_in_flight:EUR".into(), -100, EntryKind::Post),
                ("sys:float:EUR".into(), 100, EntryKind::Post)
            ]
        );
        assert_eq!(post(&posted), Err(Refusal::AlreadyPosted));
        assert_eq!(
            void(&posted, VoidReason::Failure),
            Err(Refusal::AlreadyPosted)
        );
    }

    #[test]
    fn open_pending_refusals() {
        let s = sys(AccountKind::LoadsInFlight);
        assert_eq!(
            open_pending(&customer(99, 0), &s, tid(1), amount(100)),
            Err(Refusal::ExceedsBalance)
        );
        assert!(open_pending(&customer(0, -100), &s, tid(1), amount(100)).is_ok());
        assert_eq!(
            open_pending(&customer(0, -99), &s, tid(1), amount(100)),
            Err(Refusal::ExceedsBalance)
        );
        assert_eq!(
            open_pending(&customer(i64::MIN + 1, i64::MIN), &s, tid(1), amount(2)),
            Err(Refusal::Overflow)
        );
        let usd = Account::system(AccountKind::LoadsInFlight, "USD".parse().unwrap()).unwrap();
        assert_eq!(
            open_pending(&customer(100, 0), &usd, tid(1), amount(1)),
            Err(Refusal::CurrencyMismatch)
        );
        assert_eq!(
            open_pending(
                &customer(100, 0),
                &sys(AccountKind::Float),
                tid(1),
                amount(1)
            ),
            Err(Refusal::AccountKindMismatch)
        );
        assert_eq!(
            open_pending(&sys(AccountKind::Float), &s, tid(1), amount(1)),
            Err(Refusal::AccountKindMismatch)
        );
    }

    #[test]
    fn void_gives_back_once_and_a_timeout_makes_it_doubtful() {
        let t = pending(100, 40);
        let (v, p) = void(&t, VoidReason::Failure).unwrap();
        assert_eq!(
            deltas(&p),
            [
                ("sys:loads_in_flight:EUR".into(), -40, EntryKind::Void),
                ("C-1".into(), 40, EntryKind::Void)
            ]
        );
        assert!(!v.is_doubtful());
        assert_eq!(void(&v, VoidReason::Failure), Err(Refusal::AlreadyVoided));
        assert_eq!(post(&v), Err(Refusal::AlreadyVoided));
        assert_eq!(
            reconcile_late(&v, &customer(0, 0)),
            Err(Refusal::NotDoubtful)
        );
        assert_eq!(close_doubtful(&v), Err(Refusal::NotDoubtful));
        let (timed_out, _) = void(&t, VoidReason::Timeout).unwrap();
        assert!(timed_out.is_doubtful());
        assert_eq!(
            reconcile_late(&t, &customer(0, 0)),
            Err(Refusal::NotDoubtful)
        );
    }

    #[test]
    fn a_late_applied_load_is_debited_again_once() {
        let (t, _) = void(&pending(100, 40), VoidReason::Timeout).unwrap();
        let (late, p) = reconcile_late(&t, &customer(100, 0)).unwrap();
        assert_eq!(
            late.reconciliation,
            Reconciliation::LateApplied(Payer::Customer)
        );
        assert_eq!(
            deltas(&p),
            [
                ("C-1".into(), -40, EntryKind::ReDebit),
                ("sys:float:EUR".into(), 40, EntryKind::ReDebit)
            ]
        );
        assert!(!late.is_doubtful());
        assert_eq!(
            reconcile_late(&late, &customer(100, 0)),
            Err(Refusal::AlreadyReconciled)
        );
        assert_eq!(close_doubtful(&late), Err(Refusal::AlreadyReconciled));

        let (short, p) = reconcile_late(&t, &customer(39, 0)).unwrap();
        assert_eq!(
            short.reconciliation,
            Reconciliation::LateApplied(Payer::Receivable)
        );
        assert_eq!(
            deltas(&p),
            [
                ("sys:receivable:EUR".into(), -40, EntryKind::ReDebit),
                ("sys:float:EUR".into(), 40, EntryKind::ReDebit)
            ]
        );

        let closed = close_doubtful(&t).unwrap();
        assert_eq!(closed.reconciliation, Reconciliation::Closed);
        assert_eq!(
            reconcile_late(&closed, &customer(100, 0)),
            Err(Refusal::AlreadyReconciled)
        );
        assert_eq!(close_doubtful(&closed), Err(Refusal::AlreadyReconciled));

        let mut other = customer(100, 0);
        other.id = AccountId::Customer("C-2".parse().unwrap());
        assert_eq!(reconcile_late(&t, &other), Err(Refusal::AccountMismatch));
        assert_eq!(
            reconcile_late(&t, &sys(AccountKind::Float)),
            Err(Refusal::AccountKindMismatch)
        );
        let mut usd = customer(100, 0);
        usd.currency = "USD".parse().unwrap();
        assert_eq!(reconcile_late(&t, &usd), Err(Refusal::CurrencyMismatch));
    }

    #[test]
    fn a_stored_transfer_with_the_wrong_accounts_is_refused() {
        let t = pending(100, 40);
        let mut to_customer = t.clone();
        to_customer.credit = t.debit.clone();
        assert_eq!(post(&to_customer), Err(Refusal::AccountKindMismatch));
        let mut from_float = t.clone();
        from_float.debit = t.credit.clone();
        assert_eq!(
            void(&from_float, VoidReason::Failure),
            Err(Refusal::AccountKindMismatch)
        );
        let (mut doubtful, _) = void(&t, VoidReason::Timeout).unwrap();
        doubtful.credit = AccountId::sys(AccountKind::Float, "USD".parse().unwrap());
        assert_eq!(close_doubtful(&doubtful), Err(Refusal::AccountKindMismatch));
        let mut credit = credit_external(&customer(0, 0), tid(2), amount(1))
            .unwrap()
            .0;
        assert_eq!(credit.check_shape(), Ok(()));
        credit.debit = AccountId::sys(AccountKind::Float, eur());
        assert_eq!(credit.check_shape(), Err(Refusal::AccountKindMismatch));
        let debit = debit_external(&customer(5, 0), tid(3), amount(1))
            .unwrap()
            .0;
        assert_eq!(debit.check_shape(), Ok(()));
    }

    #[test]
    fn external_credits_and_debits() {
        let c = customer(10, -5);
        let (t, p) = credit_external(&c, tid(2), amount(7)).unwrap();
        assert_eq!(t.state, TransferState::Posted);
        assert_eq!(
            deltas(&p),
            [
                ("sys:external:EUR".into(), -7, EntryKind::CreditExternal),
                ("C-1".into(), 7, EntryKind::CreditExternal)
            ]
        );
        assert_eq!(
            debit_external(&c, tid(3), amount(16)),
            Err(Refusal::ExceedsBalance)
        );
        let (_, p) = debit_external(&c, tid(3), amount(15)).unwrap();
        assert_eq!(p.balance_after(&c), Ok(Balance::new(-5)));
        assert_eq!(
            credit_external(&sys(AccountKind::External), tid(2), amount(7)),
            Err(Refusal::AccountKindMismatch)
        );
        assert_eq!(
            debit_external(&sys(AccountKind::Float), tid(2), amount(7)),
            Err(Refusal::AccountKindMismatch)
        );
        assert_eq!(post(&t), Err(Refusal::NotPending));
        assert_eq!(void(&t, VoidReason::Operator), Err(Refusal::NotPending));
        assert_eq!(close_doubtful(&t), Err(Refusal::NotDoubtful));
    }

    #[test]
    fn a_retry_is_the_same_request_or_a_conflict() {
        let t = pending(100, 40);
        let c = t.debit.clone();
        assert_eq!(
            check_retry(&t, &Transfer::load(tid(1), c.clone(), eur(), amount(40))),
            Ok(())
        );
        let (posted, _) = post(&t).unwrap();
        assert_eq!(
            check_retry(
                &posted,
                &Transfer::load(tid(1), c.clone(), eur(), amount(40))
            ),
            Ok(())
        );
        assert_eq!(
            check_retry(&t, &Transfer::load(tid(1), c.clone(), eur(), amount(41))),
            Err(Refusal::ExistsWithDifferentAmount)
        );
        let other = AccountId::Customer("C-2".parse().unwrap());
        assert_eq!(
            check_retry(&t, &Transfer::load(tid(1), other, eur(), amount(40))),
            Err(Refusal::ExistsWithDifferentAccounts)
        );
        assert_eq!(
            check_retry(
                &t,
                &Transfer::load(tid(1), c.clone(), "USD".parse().unwrap(), amount(40))
            ),
            Err(Refusal::ExistsWithDifferentAccounts)
        );
        assert_eq!(
            check_retry(&t, &Transfer::external_debit(tid(1), c, eur(), amount(40))),
            Err(Refusal::ExistsWithDifferentAccounts)
        );
    }
}
