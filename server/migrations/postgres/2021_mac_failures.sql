-- Consecutive transaction MAC failures per (issuer, device) credential
-- (server/src/online/transaction.rs): reset by a valid MAC; the one that
-- reaches the alert threshold is counted in
-- keyward_transaction_mac_failure_streaks_total{issuer} and audited, so an
-- alert needs no device label.
ALTER TABLE online_credentials ADD COLUMN mac_failures BIGINT NOT NULL DEFAULT 0;
