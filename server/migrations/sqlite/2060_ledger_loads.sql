-- The ledger (rules in server/ledger, keyward-ledger) and the e-purse load
-- (server/src/load, docs/protocol.md §13). Keep in step with
-- ../postgres/2060_ledger_loads.sql.
--
-- Customer accounts keep their balance in their row, and the CHECK holds
-- it at or above the floor whatever the code does. System accounts (loads
-- in flight, the e-purse float, receivables, external) keep 0 in theirs:
-- their balance is the sum of their entries, so no load ever rewrites one
-- hot row.
CREATE TABLE ledger_accounts (
    id             TEXT    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL
                   CHECK (kind IN ('customer', 'loads_in_flight', 'float', 'receivable', 'external')),
    currency       TEXT    NOT NULL CHECK (length(currency) = 3),
    customer_id    TEXT,
    floor_minor    INTEGER NOT NULL CHECK (floor_minor <= 0),
    balance_minor  INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    CHECK (kind <> 'customer' OR (customer_id IS NOT NULL AND balance_minor >= floor_minor)),
    CHECK (kind = 'customer' OR balance_minor = 0)
) STRICT;

-- Two-phase transfers: pending, then posted or voided, once.
CREATE TABLE ledger_transfers (
    id             TEXT    NOT NULL PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('load', 'external_credit', 'external_debit')),
    debit_account  TEXT    NOT NULL REFERENCES ledger_accounts (id),
    credit_account TEXT    NOT NULL REFERENCES ledger_accounts (id),
    amount_minor   INTEGER NOT NULL CHECK (amount_minor > 0),
    currency       TEXT    NOT NULL CHECK (length(currency) = 3),
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'posted', 'voided')),
    void_reason    TEXT    CHECK (void_reason IN ('failure', 'bad_report', 'timeout', 'operator')),
    -- A load voided without proof (no report in time, a bad report),
    -- settled at the device's next contact: re-debited from the
    -- `customer`, or from the `receivable` when the customer was short,
    -- or `closed` (the reversal stands).
    late           TEXT    CHECK (late IN ('customer', 'receivable', 'closed')),
    created_at_ms  INTEGER NOT NULL,
    decided_at_ms  INTEGER
) STRICT;

-- Append-only entries. (transfer, step, account) is unique: a step cannot
-- book twice, whatever retries or replicas do. `chain_seq`/`chain_hash`
-- are set once by the sealing job (chain order = sealing order).
CREATE TABLE ledger_entries (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id    TEXT    NOT NULL REFERENCES ledger_transfers (id),
    step           TEXT    NOT NULL
                   CHECK (step IN ('open', 'post', 'void', 're_debit', 'credit_external', 'debit_external')),
    account_id     TEXT    NOT NULL REFERENCES ledger_accounts (id),
    delta_minor    INTEGER NOT NULL CHECK (delta_minor <> 0),
    currency       TEXT    NOT NULL CHECK (length(currency) = 3),
    created_at_ms  INTEGER NOT NULL,
    chain_seq      INTEGER UNIQUE,
    chain_hash     BLOB,
    UNIQUE (transfer_id, step, account_id)
) STRICT;

CREATE INDEX ledger_entries_account ON ledger_entries (account_id, id);
CREATE INDEX ledger_entries_unsealed ON ledger_entries (id) WHERE chain_seq IS NULL;

-- The chain's head, signed in the HSM (the audit trail's method).
CREATE TABLE ledger_checkpoints (
    chain_seq      INTEGER NOT NULL PRIMARY KEY,
    chain_hash     BLOB    NOT NULL CHECK (length(chain_hash) = 32),
    signature      BLOB    NOT NULL,
    signed_at_ms   INTEGER NOT NULL
) STRICT;

-- The last sequence number each device used: strictly increasing.
CREATE TABLE purse_sequences (
    device_id      TEXT    NOT NULL PRIMARY KEY,
    last_sequence  INTEGER NOT NULL CHECK (last_sequence > 0)
) STRICT;

-- E-purse loads: the request and permit bytes as signed (never changed),
-- the report, and what became of the money.
CREATE TABLE loads (
    id             TEXT    NOT NULL PRIMARY KEY REFERENCES ledger_transfers (id),
    device_id      TEXT    NOT NULL,
    issuer_id      TEXT    NOT NULL,
    sequence       INTEGER NOT NULL CHECK (sequence > 0),
    customer_id    TEXT    NOT NULL,
    account_id     TEXT    NOT NULL REFERENCES ledger_accounts (id),
    amount_minor   INTEGER NOT NULL CHECK (amount_minor > 0),
    currency       TEXT    NOT NULL CHECK (length(currency) = 3),
    wallet_before  INTEGER NOT NULL CHECK (wallet_before >= 0),
    request        BLOB    NOT NULL,
    request_sig    BLOB    NOT NULL,
    permit         BLOB    NOT NULL,
    permit_sig     BLOB    NOT NULL,
    state          TEXT    NOT NULL
                   CHECK (state IN ('pending', 'posted', 'voided', 'doubtful', 'late_applied', 'not_applied')),
    reason         TEXT,
    device_reason  INTEGER,
    report         BLOB,
    report_sig     BLOB,
    wallet_after   INTEGER,
    flagged        INTEGER NOT NULL DEFAULT 0 CHECK (flagged IN (0, 1)),
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    decided_at_ms  INTEGER,
    settled_at_ms  INTEGER,
    UNIQUE (device_id, sequence)
) STRICT;

CREATE INDEX loads_open ON loads (expires_at_ms) WHERE state = 'pending';
CREATE INDEX loads_unsettled ON loads (device_id, sequence) WHERE state IN ('pending', 'doubtful');
CREATE INDEX loads_state ON loads (state, created_at_ms);

-- Operators' credits to customer accounts. A credit above the configured
-- amount waits `pending` until a second operator approves it; the ledger
-- transfer exists only once it is posted.
CREATE TABLE ledger_credits (
    id             TEXT    NOT NULL PRIMARY KEY,
    account_id     TEXT    NOT NULL REFERENCES ledger_accounts (id),
    amount_minor   INTEGER NOT NULL CHECK (amount_minor > 0),
    reference      TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'posted')),
    requested_by   TEXT    NOT NULL,
    approved_by    TEXT,
    transfer_id    TEXT    REFERENCES ledger_transfers (id),
    requested_at_ms INTEGER NOT NULL,
    posted_at_ms   INTEGER,
    CHECK (state = 'pending' OR transfer_id IS NOT NULL)
) STRICT;
