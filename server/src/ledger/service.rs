//! [`Ledger`]: what operators do with the ledger — open customer accounts,
//! credit them (a second operator above the configured amount), read
//! balances and statements — and the two jobs that keep it provable:
//! sealing new entries into the hash chain with a checkpoint signed in the
//! HSM, and [`Ledger::verify`], which replays every row through the rules'
//! model (`keyward_ledger::Book`) and checks what only the server knows
//! (sequence numbers, permit signatures, timeouts).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use keyward_config::DatabaseKind;
use keyward_config::LoadConfig;
use keyward_device_provisioning::Provisioning;
use keyward_kms::Kms;
use keyward_kms::db::{Database, now_ms};
use keyward_kms::hsm::SignMechanism;
use keyward_kms::signing::verify;
use keyward_ledger::{
    AccountId, AccountKind, Amount, Balance, Book, ChainHead, Currency, Delta, Entry, EntryKind,
    Refusal, TransferId, chain_hash, checkpoint_message,
};
use serde_json::json;
use sqlx::Row;

use super::store::{self, AccountRow, Checkpoint, EntryRow};
use crate::audit::{Actor, AuditEvent, AuditLog, Outcome};

/// The HSM key that signs the ledger's chain checkpoints (P-256).
pub const CHECKPOINT_KEY_LABEL: &str = "keyward/ledger/checkpoint";

/// Why a ledger operation failed, with its stable code.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {0}")]
    Refusal(#[from] Refusal),
    /// The credit's requester may not approve it.
    #[error("a credit needs a second operator to approve it")]
    SelfApproval,
    #[error("no such pending credit")]
    UnknownCredit,
    /// The account is not one provisioning approved for the customer.
    #[error("the account is not one of the customer's approved accounts")]
    NotCustomers,
    /// A credit's reference is 1 to 64 printable ASCII characters.
    #[error("the reference is 1 to 64 printable ASCII characters")]
    ReferenceInvalid,
    #[error(transparent)]
    Provisioning(#[from] keyward_device_provisioning::ProvisioningError),
    #[error(transparent)]
    Kms(#[from] keyward_kms::KmsError),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("ledger store: {0}")]
    Database(#[from] sqlx::Error),
}

impl keyward_kms::db::TxError for LedgerError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Database(e) => Some(e),
            Self::Audit(e) => keyward_kms::db::TxError::database_error(e),
            _ => None,
        }
    }
}

impl LedgerError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Refusal(r) => r.code(),
            Self::SelfApproval => "self_approval",
            Self::UnknownCredit => "unknown_credit",
            Self::NotCustomers => "accounts_not_held",
            Self::ReferenceInvalid => "field_invalid",
            Self::Provisioning(e) => e.code(),
            Self::Kms(e) => e.code(),
            Self::Audit(_) => "audit_unavailable",
            Self::Database(e) => keyward_kms::db::error_code(e),
        }
    }

    pub fn kind(&self) -> keyward_kms::ErrorKind {
        use keyward_kms::ErrorKind as K;
        match self {
            Self::Refusal(r) => crate::load::ledger_kind(r),
            Self::SelfApproval => K::Forbidden,
            Self::UnknownCredit => K::NotFound,
            Self::NotCustomers | Self::ReferenceInvalid => K::Invalid,
            Self::Provisioning(e) => e.kind(),
            Self::Kms(e) => e.kind(),
            Self::Audit(_) => K::Unavailable,
            Self::Database(e) => keyward_kms::db::error_kind(e),
        }
    }
}

type Result<T> = std::result::Result<T, LedgerError>;

/// An account to open for a customer of provisioning.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub number: String,
    pub customer_id: String,
    pub currency: String,
    /// How far below zero the balance may go (0: none).
    pub overdraft_minor: i64,
}

/// An account and its balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub row: AccountRow,
    pub balance_minor: i64,
}

/// An operator's credit: posted (with the balance after) or waiting for a
/// second operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    pub credit_id: String,
    pub state: &'static str,
    pub transfer_id: Option<String>,
    pub balance_after_minor: Option<i64>,
}

/// One statement line: an entry and the balance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementLine {
    pub entry: EntryRow,
    pub balance_after_minor: i64,
}

/// What `ledger verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub accounts: usize,
    pub transfers: usize,
    pub entries: usize,
    pub sealed: usize,
    pub checkpoints: usize,
    pub loads: usize,
    /// Each violation: its invariant code and what it names (ids only).
    pub violations: Vec<String>,
}

/// The ledger service; cheap to clone.
#[derive(Clone)]
pub struct Ledger(Arc<Parts>);

struct Parts {
    kms: Kms,
    provisioning: Provisioning,
    audit: AuditLog,
    config: LoadConfig,
    checkpoint_key: tokio::sync::OnceCell<keyward_kms::signing::SigningKey>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    pub fn new(kms: Kms, provisioning: Provisioning, audit: AuditLog, config: LoadConfig) -> Self {
        Self(Arc::new(Parts {
            kms,
            provisioning,
            audit,
            config,
            checkpoint_key: tokio::sync::OnceCell::new(),
        }))
    }

    fn db(&self) -> &Database {
        self.0.kms.db()
    }

    /// Opens a customer's account (and its currency's system accounts).
    pub async fn create_account(
        &self,
        actor: &Actor,
        request_id: &str,
        new: NewAccount,
    ) -> Result<AccountView> {
        let id = AccountId::from_str(&new.number)?;
        if id.kind() != AccountKind::Customer {
            return Err(Refusal::AccountKindMismatch.into());
        }
        let currency = Currency::from_str(&new.currency)?;
        let floor = new
            .overdraft_minor
            .checked_neg()
            .filter(|f| *f <= 0)
            .ok_or(Refusal::FloorInvalid)?;
        let customer: keyward_device_provisioning::CustomerId = new.customer_id.parse()?;
        let held = self.0.provisioning.customer(&customer).await?;
        // Only an account provisioning approved for this customer.
        if !held.accounts.iter().any(|a| a.as_str() == id.to_string()) {
            return Err(LedgerError::NotCustomers);
        }
        let now = now_ms();
        let row = AccountRow {
            id: id.to_string(),
            kind: "customer".into(),
            currency: currency.to_string(),
            customer_id: Some(customer.to_string()),
            floor_minor: floor,
            balance_minor: 0,
            created_at_ms: now,
        };
        let event = event(
            "ledger.account_create",
            &row.id,
            json!({ "customer": row.customer_id, "currency": row.currency, "floor_minor": floor }),
        );
        let audit = &self.0.audit;
        let (row, event) = (&row, &event);
        self.db()
            .write_in_turn(
                "ledger.account_create",
                crate::ledger::TURN,
                |mut tx| async move {
                    for kind in AccountKind::SYSTEM {
                        let system = AccountRow {
                            id: AccountId::system(kind, currency)?.to_string(),
                            kind: kind.as_str().into(),
                            customer_id: None,
                            floor_minor: 0,
                            ..row.clone()
                        };
                        store::insert_account_in(&mut tx, &system).await?;
                    }
                    if !store::insert_account_in(&mut tx, row).await? {
                        return Err(LedgerError::Refusal(Refusal::AccountExists));
                    }
                    audit
                        .stage_in(&mut tx, actor, event, Outcome::Success, request_id)
                        .await?;
                    Ok::<_, LedgerError>((tx, ()))
                },
            )
            .await?;
        audit.chain_staged().await;
        Ok(AccountView {
            row: row.clone(),
            balance_minor: 0,
        })
    }

    /// An account and its balance.
    pub async fn account(&self, id: &str) -> Result<AccountView> {
        let row = store::account(self.db(), id)
            .await?
            .ok_or(Refusal::AccountNotFound)?;
        let balance_minor = store::balance(self.db(), &row).await?;
        Ok(AccountView { row, balance_minor })
    }

    /// Credits a customer account from outside the ledger. Up to the
    /// configured amount it posts at once; above, it waits for a second
    /// operator ([`Self::approve_credit`]).
    pub async fn credit(
        &self,
        operator: &str,
        actor: &Actor,
        request_id: &str,
        account: &str,
        amount_minor: i64,
        reference: &str,
    ) -> Result<Credit> {
        let amount = Amount::new(amount_minor)?;
        if !(1..=64).contains(&reference.len())
            || !reference.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(LedgerError::ReferenceInvalid);
        }
        let view = self.account(account).await?;
        if view.row.kind != "customer" {
            return Err(Refusal::AccountKindMismatch.into());
        }
        let credit_id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let dual = u64::try_from(amount_minor).unwrap_or(u64::MAX)
            > self.0.config.dual_control_above_minor;
        let transfer = if dual {
            None
        } else {
            Some(TransferId::from_bytes(self.0.kms.random::<16>().await?))
        };
        let event = event(
            if dual {
                "ledger.credit_request"
            } else {
                "ledger.credit"
            },
            account,
            json!({ "credit": credit_id, "amount_minor": amount_minor, "reference": reference,
                    "transfer": transfer.map(|t| t.to_string()) }),
        );
        let audit = &self.0.audit;
        let (event, credit_id_ref) = (&event, &credit_id);
        let after = self
            .db()
            .write_in_turn("ledger.credit", crate::ledger::TURN, |mut tx| async move {
                let after = match transfer {
                    Some(t) => Some(
                        super::credit_external_in::<LedgerError>(&mut tx, account, t, amount, now)
                            .await?,
                    ),
                    None => None,
                };
                sqlx::query(
                    "INSERT INTO ledger_credits (id, account_id, amount_minor, reference, state, \
                     requested_by, transfer_id, requested_at_ms, posted_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(credit_id_ref)
                .bind(account)
                .bind(amount_minor)
                .bind(reference)
                .bind(if dual { "pending" } else { "posted" })
                .bind(operator)
                .bind(transfer.map(|t| t.to_string()))
                .bind(now)
                .bind((!dual).then_some(now))
                .execute(&mut *tx)
                .await?;
                audit
                    .stage_in(&mut tx, actor, event, Outcome::Success, request_id)
                    .await?;
                Ok::<_, LedgerError>((tx, after))
            })
            .await?;
        audit.chain_staged().await;
        Ok(Credit {
            credit_id,
            state: if dual { "pending" } else { "posted" },
            transfer_id: transfer.map(|t| t.to_string()),
            balance_after_minor: after.map(Balance::minor_units),
        })
    }

    /// A second operator approves a pending credit: it posts.
    pub async fn approve_credit(
        &self,
        operator: &keyward_device_provisioning::OperatorId,
        actor: &Actor,
        request_id: &str,
        credit_id: &str,
    ) -> Result<Credit> {
        let row = sqlx::query(
            "SELECT account_id, amount_minor, requested_by FROM ledger_credits \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(credit_id)
        .fetch_optional(self.db().pool())
        .await?
        .ok_or(LedgerError::UnknownCredit)?;
        let account: String = row.try_get("account_id")?;
        let amount_minor: i64 = row.try_get("amount_minor")?;
        let requested_by: String = row.try_get("requested_by")?;
        // Compared as maker-checker compares operators: look-alikes of
        // one name are one person.
        if operator.same_person(&requested_by) {
            return Err(LedgerError::SelfApproval);
        }
        let amount = Amount::new(amount_minor)?;
        let transfer = TransferId::from_bytes(self.0.kms.random::<16>().await?);
        let event = event(
            "ledger.credit_approve",
            &account,
            json!({ "credit": credit_id, "amount_minor": amount_minor,
                    "requested_by": requested_by, "transfer": transfer.to_string() }),
        );
        let audit = &self.0.audit;
        let (event, account_ref) = (&event, &account);
        let after = self
            .db()
            .write_in_turn(
                "ledger.credit_approve",
                crate::ledger::TURN,
                |mut tx| async move {
                    let now = now_ms();
                    // The transfer row first: the credit row names it.
                    let after = super::credit_external_in::<LedgerError>(
                        &mut tx,
                        account_ref,
                        transfer,
                        amount,
                        now,
                    )
                    .await?;
                    let done = sqlx::query(
                        "UPDATE ledger_credits SET state = 'posted', approved_by = $1, \
                     transfer_id = $2, posted_at_ms = $3 WHERE id = $4 AND state = 'pending'",
                    )
                    .bind(operator.as_str())
                    .bind(transfer.to_string())
                    .bind(now)
                    .bind(credit_id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(LedgerError::UnknownCredit);
                    }
                    audit
                        .stage_in(&mut tx, actor, event, Outcome::Success, request_id)
                        .await?;
                    Ok::<_, LedgerError>((tx, after))
                },
            )
            .await?;
        audit.chain_staged().await;
        Ok(Credit {
            credit_id: credit_id.to_owned(),
            state: "posted",
            transfer_id: Some(transfer.to_string()),
            balance_after_minor: Some(after.minor_units()),
        })
    }

    /// An account's entries with the running balance, up to `at_ms` when
    /// given (point in time: every entry booked at or before it), and the
    /// balance then.
    pub async fn statement(
        &self,
        account: &str,
        at_ms: Option<i64>,
        limit: i64,
    ) -> Result<(AccountView, i64, Vec<StatementLine>)> {
        let view = self.account(account).await?;
        let entries = store::account_entries(self.db(), account, 0, i64::MAX).await?;
        let mut running = 0i64;
        let mut at_balance = 0i64;
        let mut lines = Vec::new();
        for e in entries {
            running = running
                .checked_add(e.delta_minor)
                .ok_or(Refusal::Overflow)?;
            if at_ms.is_some_and(|at| e.created_at_ms > at) {
                break;
            }
            at_balance = running;
            lines.push(StatementLine {
                entry: e,
                balance_after_minor: running,
            });
        }
        let skip = lines
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok((view, at_balance, lines.split_off(skip)))
    }

    /// Seals new entries into the hash chain and signs the new head in the
    /// HSM. Returns how many it sealed. Runs once across replicas.
    pub async fn seal(&self) -> Result<usize> {
        let db = self.db();
        let batch = store::unsealed(db, 2_000).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let mut head = match store::chain_head(db).await? {
            Some((seq, hash)) => ChainHead {
                seq: u64::try_from(seq).unwrap_or_default(),
                hash: hash.try_into().map_err(|_| corrupt("chain hash"))?,
            },
            None => ChainHead::GENESIS,
        };
        let mut sealed = Vec::with_capacity(batch.len());
        for row in &batch {
            let entry = entry_of(row)?;
            let seq = head.seq + 1;
            let hash = chain_hash(&head.hash, seq, &entry);
            sealed.push((row.id, seq, hash));
            head = ChainHead { seq, hash };
        }
        // Signed before the transaction opens.
        let signature = self.sign_checkpoint(&checkpoint_message(&head)).await?;
        crate::fault_point!("ledger.seal.signed");
        let checkpoint = Checkpoint {
            chain_seq: i64::try_from(head.seq).unwrap_or(i64::MAX),
            chain_hash: head.hash.to_vec(),
            signature,
            signed_at_ms: now_ms(),
        };
        let (sealed_ref, checkpoint) = (&sealed, &checkpoint);
        db.write_in_turn("ledger.seal", crate::ledger::TURN, |mut tx| async move {
            for (id, seq, hash) in sealed_ref {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                if !store::seal_in(&mut tx, *id, seq, hash).await? {
                    // Another sealer got there first: this round is void.
                    return Err(LedgerError::Database(sqlx::Error::RowNotFound));
                }
            }
            store::insert_checkpoint_in(&mut tx, checkpoint).await?;
            Ok::<_, LedgerError>((tx, ()))
        })
        .await?;
        crate::fault_point!("ledger.seal.committed");
        Ok(sealed.len())
    }

    /// The checkpoint key `keyward init` made, looked up once.
    async fn checkpoint_key(&self) -> Result<&keyward_kms::signing::SigningKey> {
        let p = &self.0;
        Ok(p.checkpoint_key
            .get_or_try_init(|| p.kms.signing_key(CHECKPOINT_KEY_LABEL))
            .await?)
    }

    async fn sign_checkpoint(&self, message: &[u8]) -> Result<Vec<u8>> {
        let key = self.checkpoint_key().await?;
        Ok(key.sign(SignMechanism::EcdsaSha256, message).await?)
    }

    /// Recomputes the ledger from its rows and checks every invariant: the
    /// rules' (conservation, each transfer's entries, floors, stored
    /// balances, the chain) through `keyward_ledger::Book`, then the
    /// checkpoint signatures, the permits' signatures and bytes, sequence
    /// numbers and timeouts.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let db = self.db();
        let mut conn = keyward_kms::db::Tx::from(db.pool().begin().await?);
        if db.kind() == DatabaseKind::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *conn)
                .await?;
        }
        let sql = format!(
            "SELECT {} FROM ledger_accounts ORDER BY id",
            store::ACCOUNT_COLUMNS
        );
        let account_rows: Vec<AccountRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(store::account_row)
            .collect::<std::result::Result<_, _>>()?;
        let sql = format!(
            "SELECT {} FROM ledger_transfers ORDER BY id",
            store::TRANSFER_COLUMNS
        );
        let transfers = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| super::transfer_of(&store::transfer_row(r)?))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        // Sealed entries in chain order, then the unsealed tail in booking
        // order.
        let sql = format!(
            "SELECT {} FROM ledger_entries \
             ORDER BY CASE WHEN chain_seq IS NULL THEN 1 ELSE 0 END, chain_seq, id",
            store::ENTRY_COLUMNS
        );
        let entry_rows: Vec<EntryRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(store::entry_row)
            .collect::<std::result::Result<_, _>>()?;
        let checkpoints = store::checkpoints_in(&mut conn).await?;
        let loads = sqlx::query(
            "SELECT id, device_id, sequence, permit, permit_sig, state, expires_at_ms, flagged \
             FROM loads ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let sequences: BTreeMap<String, i64> =
            sqlx::query("SELECT device_id, last_sequence FROM purse_sequences")
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("device_id")?, r.try_get("last_sequence")?)))
                .collect::<std::result::Result<_, sqlx::Error>>()?;
        conn.rollback().await?;

        let mut report = VerifyReport {
            accounts: account_rows.len(),
            transfers: transfers.len(),
            entries: entry_rows.len(),
            sealed: entry_rows.iter().filter(|e| e.chain_seq.is_some()).count(),
            checkpoints: checkpoints.len(),
            loads: loads.len(),
            ..Default::default()
        };
        let v = &mut report.violations;

        // The rules' model over the rows. System accounts keep no balance
        // in their row: theirs is the sum of their entries.
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for e in &entry_rows {
            let s = sums.entry(e.account_id.clone()).or_default();
            *s = s.saturating_add(e.delta_minor);
        }
        let mut accounts = Vec::with_capacity(account_rows.len());
        for row in &account_rows {
            let mut a = super::account_of(row)?;
            if a.kind != AccountKind::Customer {
                a.balance = Balance::new(sums.get(&row.id).copied().unwrap_or_default());
            }
            accounts.push(a);
        }
        // Sealed entries with their stored hashes, then the unsealed tail
        // chained on (it has no stored hash yet to compare).
        let mut chained = Vec::with_capacity(entry_rows.len());
        let mut head = ChainHead::GENESIS;
        for row in &entry_rows {
            let entry = entry_of(row)?;
            let seq = head.seq + 1;
            let stored = match &row.chain_hash {
                Some(h) => <[u8; 32]>::try_from(h.as_slice()).unwrap_or_default(),
                None => chain_hash(&head.hash, seq, &entry),
            };
            head = ChainHead { seq, hash: stored };
            chained.push((entry, stored));
        }
        let book = Book::from_parts(accounts, transfers, chained);
        for violation in book.check() {
            v.push(format!("{}: {violation:?}", violation.code()));
        }

        // I7: each checkpoint signs a head the chain reaches.
        let key = self.checkpoint_key().await?.public_key();
        let hashes: BTreeMap<i64, &Vec<u8>> = entry_rows
            .iter()
            .filter_map(|e| Some((e.chain_seq?, e.chain_hash.as_ref()?)))
            .collect();
        for c in &checkpoints {
            let Ok(hash) = <[u8; 32]>::try_from(c.chain_hash.as_slice()) else {
                v.push(format!("i7_checkpoint_malformed: {}", c.chain_seq));
                continue;
            };
            let message = checkpoint_message(&ChainHead {
                seq: u64::try_from(c.chain_seq).unwrap_or_default(),
                hash,
            });
            if !verify(key, &message, &c.signature) {
                v.push(format!("i7_checkpoint_signature: {}", c.chain_seq));
            }
            if hashes.get(&c.chain_seq).map(|h| h.as_slice()) != Some(&hash[..]) {
                v.push(format!("i7_checkpoint_not_in_chain: {}", c.chain_seq));
            }
        }

        // I3, I4, I8, I9: the loads.
        let permit_key = self
            .0
            .kms
            .signing_key(crate::load::PERMIT_KEY_LABEL)
            .await
            .ok();
        let grace = i64::try_from(self.0.config.sweep_interval_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(5_000);
        let now = now_ms();
        for l in &loads {
            let id: String = l.try_get("id")?;
            let device: String = l.try_get("device_id")?;
            let sequence: i64 = l.try_get("sequence")?;
            let permit: Vec<u8> = l.try_get("permit")?;
            let permit_sig: Vec<u8> = l.try_get("permit_sig")?;
            let state: String = l.try_get("state")?;
            let expires: i64 = l.try_get("expires_at_ms")?;
            let flagged: i64 = l.try_get("flagged")?;
            if sequences.get(&device).is_none_or(|last| *last < sequence) {
                v.push(format!("i3_sequence_not_taken: {id}"));
            }
            let permit_ok = permit_key
                .as_ref()
                .is_some_and(|k| verify(k.public_key(), &permit, &permit_sig));
            let names_load = keyward_protocol::load::LoadPermit::decode(&permit)
                .is_ok_and(|p| TransferId::from_bytes(p.load).to_string() == id);
            if !permit_ok || !names_load {
                v.push(format!("i4_permit_altered: {id}"));
            }
            if state == "pending" && expires.saturating_add(grace) < now {
                v.push(format!("i8_overdue: {id}"));
            }
            if flagged != 0 {
                v.push(format!("i9_flagged: {id}"));
            }
        }
        // A flagged load is reported, not a broken ledger.
        report.ok = report.violations.iter().all(|s| s.starts_with("i9_"));
        Ok(report)
    }
}

/// The rules' view of an entry row.
fn entry_of(row: &EntryRow) -> std::result::Result<Entry, sqlx::Error> {
    let kind = EntryKind::ALL
        .into_iter()
        .find(|k| k.as_str() == row.step)
        .ok_or_else(|| corrupt("entry step"))?;
    Ok(Entry {
        transfer: TransferId::from_str(&row.transfer_id).map_err(|_| corrupt("transfer id"))?,
        account: AccountId::from_str(&row.account_id).map_err(|_| corrupt("account id"))?,
        currency: Currency::from_str(&row.currency).map_err(|_| corrupt("currency"))?,
        delta: Delta::from_minor_units(row.delta_minor).map_err(|_| corrupt("delta"))?,
        kind,
    })
}

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("ledger row does not parse: {what}"))
}

fn event(action: &'static str, account: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::Online {
        action,
        target: format!("account:{account}"),
        detail,
    }
}
