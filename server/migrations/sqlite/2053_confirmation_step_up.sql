-- The risks the pre-send check stepped a confirmation up for
-- (docs/protocol.md §11.7), comma-separated (`sim_swap`,
-- `contact_changed`; empty: none); the executor's order names them. Keep
-- in step with ../postgres/2053_confirmation_step_up.sql.
ALTER TABLE confirmations ADD COLUMN step_up TEXT NOT NULL DEFAULT '';
