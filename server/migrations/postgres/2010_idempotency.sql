-- Idempotency keys (PostgreSQL): the first answer to a mutating request sent
-- with an `Idempotency-Key` header, so that a retry with the same key gets
-- that answer instead of doing the work twice (server/src/http/idempotency.rs).
-- Keyed per principal (the client certificate), so two clients' keys never
-- meet. `state` is `running` until the answer is stored. Rows are purged a
-- day after they were made. Keep in step with ../sqlite/2010_idempotency.sql.

CREATE TABLE http_idempotency (
    principal     TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    body_sha256   TEXT    NOT NULL CHECK (length(body_sha256) = 64),
    state         TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    status        BIGINT,
    content_type  TEXT,
    body          BYTEA,
    created_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (principal, key)
);

CREATE INDEX http_idempotency_created ON http_idempotency (created_at_ms);
