//! Random operation sequences over a [`Book`], through the public API only:
//! several customers and currencies, concurrent pending loads, reports
//! (success, failure, bad), timeouts with the purse having applied the load
//! or not, later contacts that reconcile, operator voids, external credits
//! and debits, and retries with the same or another amount or kind, in any
//! order and repeated. After every step no invariant is violated, a refusal
//! changed nothing, and each outcome is the one the rules give. At the end,
//! once every doubtful load is reconciled, the float holds exactly what the
//! purses received: no money lost or created.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keyward_ledger::{
    Account, AccountId, AccountKind, Amount, Applied, Balance, Book, Currency, Payer,
    Reconciliation, Refusal, Transfer, TransferId, TransferKind, TransferState, VoidReason,
};
use proptest::prelude::*;

const CUSTOMERS: [(&str, &str, i64); 4] = [
    ("C-0", "EUR", 0),
    ("C-1", "EUR", -100),
    ("C-2", "EUR", 0),
    ("C-3", "USD", 0),
];

#[derive(Debug, Clone)]
enum Op {
    Credit {
        customer: usize,
        id: u8,
        amount: i64,
    },
    Debit {
        customer: usize,
        id: u8,
        amount: i64,
    },
    Load {
        customer: usize,
        id: u8,
        amount: i64,
    },
    /// The purse's report: success posts, failure voids.
    Report {
        id: u8,
        success: bool,
    },
    /// A report that could not be trusted; whether the purse had in fact
    /// applied the load.
    BadReport {
        id: u8,
        purse_applied: bool,
    },
    /// No report in time; whether the purse had applied the load.
    Timeout {
        id: u8,
        purse_applied: bool,
    },
    /// The device's next contact: its doubtful load is reconciled.
    Contact {
        id: u8,
    },
    Operator {
        id: u8,
    },
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        20 => 1..300i64,
        1 => Just(0),
        1 => Just(-7),
        1 => Just(Amount::MAX),
        1 => Just(Amount::MAX + 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let customer = 0..CUSTOMERS.len();
    // A small id pool: retries, clashes and steps on unknown ids are common.
    let id = 0..12u8;
    prop_oneof![
        2 => (customer.clone(), id.clone(), amount())
            .prop_map(|(customer, id, amount)| Op::Credit { customer, id, amount }),
        1 => (customer.clone(), id.clone(), amount())
            .prop_map(|(customer, id, amount)| Op::Debit { customer, id, amount }),
        5 => (customer, id.clone(), amount())
            .prop_map(|(customer, id, amount)| Op::Load { customer, id, amount }),
        3 => (id.clone(), any::<bool>()).prop_map(|(id, success)| Op::Report { id, success }),
        1 => (id.clone(), any::<bool>())
            .prop_map(|(id, purse_applied)| Op::BadReport { id, purse_applied }),
        2 => (id.clone(), any::<bool>())
            .prop_map(|(id, purse_applied)| Op::Timeout { id, purse_applied }),
        2 => id.clone().prop_map(|id| Op::Contact { id }),
        1 => id.prop_map(|id| Op::Operator { id }),
    ]
}

fn tid(id: u8) -> TransferId {
    TransferId::from_bytes([id; 16])
}

fn customer_id(i: usize) -> AccountId {
    CUSTOMERS[i].0.parse().unwrap()
}

fn currency(i: usize) -> Currency {
    CUSTOMERS[i].1.parse().unwrap()
}

/// What is observable of a book: a refused step must leave it as it was.
fn snapshot(b: &Book) -> (Vec<Account>, Vec<Transfer>, usize) {
    (
        b.accounts().cloned().collect(),
        b.transfers().cloned().collect(),
        b.entries().count(),
    )
}

/// The world outside the ledger: what each purse really holds.
#[derive(Default)]
struct Purses {
    /// Loads whose value the purse holds although the ledger voided them.
    applied_after_timeout: BTreeMap<TransferId, bool>,
    /// Value received by purses, per currency.
    received: BTreeMap<Currency, i64>,
}

/// The outcome the rules give for creating a transfer, from the book alone.
fn expected_create(
    b: &Book,
    proposed: &Transfer,
    debits_customer: bool,
) -> Result<Applied, Refusal> {
    if let Some(existing) = b.transfer(&proposed.id) {
        if existing.kind != proposed.kind
            || existing.debit != proposed.debit
            || existing.credit != proposed.credit
        {
            return Err(Refusal::ExistsWithDifferentAccounts);
        }
        if existing.amount != proposed.amount {
            return Err(Refusal::ExistsWithDifferentAmount);
        }
        return Ok(Applied::Replayed);
    }
    let customer = if debits_customer {
        &proposed.debit
    } else {
        &proposed.credit
    };
    let a = b.account(customer).unwrap();
    if debits_customer
        && a.balance.minor_units() - proposed.amount.minor_units() < a.floor.minor_units()
    {
        return Err(Refusal::ExceedsBalance);
    }
    Ok(Applied::Moved)
}

/// The outcome the rules give for posting or voiding `id`.
fn expected_settle(b: &Book, id: TransferId) -> Result<Applied, Refusal> {
    let t = b.transfer(&id).ok_or(Refusal::TransferNotFound)?;
    match (t.kind, t.state) {
        (TransferKind::Load, TransferState::Pending) => Ok(Applied::Moved),
        (TransferKind::Load, TransferState::Posted) => Err(Refusal::AlreadyPosted),
        (TransferKind::Load, TransferState::Voided(_)) => Err(Refusal::AlreadyVoided),
        _ => Err(Refusal::NotPending),
    }
}

fn step(b: &mut Book, purses: &mut Purses, op: &Op) -> Result<(), TestCaseError> {
    let before = snapshot(b);
    let (result, expected) = match *op {
        Op::Credit {
            customer,
            id,
            amount,
        }
        | Op::Debit {
            customer,
            id,
            amount,
        }
        | Op::Load {
            customer,
            id,
            amount,
        } => {
            let a = match Amount::new(amount) {
                Ok(a) => a,
                Err(r) => {
                    let code = if amount <= 0 {
                        "amount_not_positive"
                    } else {
                        "amount_exceeds_maximum"
                    };
                    prop_assert_eq!(r.code(), code);
                    return Ok(());
                }
            };
            let c = customer_id(customer);
            let cur = currency(customer);
            match op {
                Op::Credit { .. } => {
                    let expected = expected_create(
                        b,
                        &Transfer::external_credit(tid(id), c.clone(), cur, a),
                        false,
                    );
                    (b.credit_external(&c, tid(id), a), expected)
                }
                Op::Debit { .. } => {
                    let expected = expected_create(
                        b,
                        &Transfer::external_debit(tid(id), c.clone(), cur, a),
                        true,
                    );
                    (b.debit_external(&c, tid(id), a), expected)
                }
                _ => {
                    let expected =
                        expected_create(b, &Transfer::load(tid(id), c.clone(), cur, a), true);
                    (b.open_pending(&c, tid(id), a), expected)
                }
            }
        }
        Op::Report { id, success } => {
            let expected = expected_settle(b, tid(id));
            let result = if success {
                b.post(&tid(id))
            } else {
                b.void(&tid(id), VoidReason::Failure)
            };
            if success && result.is_ok() {
                let t = b.transfer(&tid(id)).unwrap();
                *purses.received.entry(t.currency).or_default() += t.amount.minor_units();
            }
            (result, expected)
        }
        Op::Operator { id } => {
            let expected = expected_settle(b, tid(id));
            (b.void(&tid(id), VoidReason::Operator), expected)
        }
        Op::Timeout { id, purse_applied } | Op::BadReport { id, purse_applied } => {
            let expected = expected_settle(b, tid(id));
            let reason = if matches!(op, Op::Timeout { .. }) {
                VoidReason::Timeout
            } else {
                VoidReason::BadReport
            };
            let result = b.void(&tid(id), reason);
            if result.is_ok() {
                purses.applied_after_timeout.insert(tid(id), purse_applied);
                if purse_applied {
                    let t = b.transfer(&tid(id)).unwrap();
                    *purses.received.entry(t.currency).or_default() += t.amount.minor_units();
                }
            }
            (result, expected)
        }
        Op::Contact { id } => {
            let expected = match b.transfer(&tid(id)) {
                None => Err(Refusal::TransferNotFound),
                Some(t) if t.is_doubtful() => Ok(()),
                Some(t) if t.state.is_unproven_void() && t.kind == TransferKind::Load => {
                    Err(Refusal::AlreadyReconciled)
                }
                Some(_) => Err(Refusal::NotDoubtful),
            };
            let result = contact(b, purses, tid(id));
            let expected = expected.map(|()| {
                if purses.applied_after_timeout.get(&tid(id)) == Some(&true) {
                    Applied::Moved
                } else {
                    Applied::Marked
                }
            });
            (result, expected)
        }
    };
    prop_assert_eq!(result, expected, "{:?}", op);
    if !matches!(result, Ok(Applied::Moved | Applied::Marked)) {
        prop_assert!(
            snapshot(b) == before,
            "a refusal or a replay changed the book: {:?}",
            op
        );
    }
    let violations = b.check();
    prop_assert!(violations.is_empty(), "{:?} after {:?}", violations, op);
    Ok(())
}

/// Reconciles a doubtful load against what the purse really did.
fn contact(b: &mut Book, purses: &Purses, id: TransferId) -> Result<Applied, Refusal> {
    if purses.applied_after_timeout.get(&id) == Some(&true) {
        b.reconcile_late(&id)
    } else {
        b.close_doubtful(&id)
    }
}

fn new_book() -> Book {
    let mut b = Book::new();
    for (number, cur, floor) in CUSTOMERS {
        let a = Account::customer(
            number.parse().unwrap(),
            cur.parse().unwrap(),
            Balance::new(floor),
        )
        .unwrap();
        b.open_account(a).unwrap();
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_sequence_keeps_every_invariant(ops in prop::collection::vec(op(), 1..80)) {
        let mut b = new_book();
        let mut purses = Purses::default();
        for op in &ops {
            step(&mut b, &mut purses, op)?;
        }

        // Every device makes contact again; every pending load is reported or times out.
        let pending: Vec<TransferId> = b.transfers().filter(|t| t.state == TransferState::Pending).map(|t| t.id).collect();
        for id in pending {
            b.void(&id, VoidReason::Timeout).unwrap();
            purses.applied_after_timeout.insert(id, false);
        }
        let doubtful: Vec<TransferId> = b.transfers().filter(|t| t.is_doubtful()).map(|t| t.id).collect();
        for id in doubtful {
            contact(&mut b, &purses, id).unwrap();
        }
        prop_assert!(b.check().is_empty());
        prop_assert!(b.transfers().all(|t| t.state != TransferState::Pending && !t.is_doubtful()));

        // Money created 0, money lost 0: the float is what the purses received.
        for cur in ["EUR", "USD"] {
            let cur: Currency = cur.parse().unwrap();
            let float = AccountId::system(AccountKind::Float, cur).unwrap();
            let in_float = b.account(&float).map_or(0, |a| a.balance.minor_units());
            prop_assert_eq!(in_float, purses.received.get(&cur).copied().unwrap_or(0));
            let in_flight = AccountId::system(AccountKind::LoadsInFlight, cur).unwrap();
            prop_assert_eq!(b.account(&in_flight).map_or(0, |a| a.balance.minor_units()), 0);
        }
    }
}

/// The lost-report drill in the ledger alone: 1,000 loads, every one applied
/// by the purse, 10 % of the reports lost so that the load times out. At the
/// device's next contact each of those is late-applied, from the receivable
/// when the customer spent the credit-back meanwhile. No money is created:
/// the float holds exactly what the purse received.
#[test]
fn lost_report_drill() {
    let mut b = new_book();
    let c = customer_id(0);
    let eur = currency(0);
    let id = |n: u32| {
        let mut bytes = [0u8; 16];
        bytes[12..].copy_from_slice(&n.to_be_bytes());
        TransferId::from_bytes(bytes)
    };
    let amount_of = |n: u32| Amount::new(i64::from(n % 997) + 1).unwrap();
    let total: i64 = (0..1_000).map(|n| amount_of(n).minor_units()).sum();
    b.credit_external(&c, id(1_000_000), Amount::new(total).unwrap())
        .unwrap();

    let mut lost = Vec::new();
    let mut top_up = None;
    for n in 0..1_000u32 {
        // The next contact reconciles the previous lost report first.
        for doubtful in lost.drain(..) {
            assert_eq!(b.reconcile_late(&doubtful), Ok(Applied::Moved));
        }
        // Money the customer spent comes back in, after the reconciliation.
        if let Some(amount) = top_up.take() {
            b.credit_external(&c, id(3_000_000 + n), amount).unwrap();
        }
        assert_eq!(b.open_pending(&c, id(n), amount_of(n)), Ok(Applied::Moved));
        if n % 10 == 7 {
            b.void(&id(n), VoidReason::Timeout).unwrap();
            lost.push(id(n));
            if n % 50 == 7 {
                // The customer spends the credit-back before the next contact.
                let balance = b.account(&c).unwrap().balance.minor_units();
                let balance = Amount::new(balance).unwrap();
                b.debit_external(&c, id(2_000_000 + n), balance).unwrap();
                top_up = Some(balance);
            }
        } else {
            b.post(&id(n)).unwrap();
        }
    }
    for doubtful in lost.drain(..) {
        b.reconcile_late(&doubtful).unwrap();
    }
    assert_eq!(b.check(), []);

    let balance = |kind| {
        let a = AccountId::system(kind, eur).unwrap();
        b.account(&a).unwrap().balance.minor_units()
    };
    assert_eq!(balance(AccountKind::Float), total);
    assert_eq!(balance(AccountKind::LoadsInFlight), 0);
    let late: Vec<&Transfer> = b
        .transfers()
        .filter(|t| matches!(t.reconciliation, Reconciliation::LateApplied(_)))
        .collect();
    assert_eq!(late.len(), 100);
    // What the customer could not pay is owed, and visible; the customer
    // holds exactly that much.
    let owed = -balance(AccountKind::Receivable);
    assert!(owed > 0);
    assert_eq!(b.account(&c).unwrap().balance.minor_units(), owed);
    let from_receivable = late
        .iter()
        .filter(|t| t.reconciliation == Reconciliation::LateApplied(Payer::Receivable))
        .count();
    assert_eq!(from_receivable, 20);
}
