//! [`OnlineStore`]: the online protocols' tables (challenges, sessions,
//! failure counters, pending key versions, ledger, outbox) in the catalog's
//! database, so that any replica can take any step of a protocol. Each
//! protocol adds its table group here as a submodule, with its migrations
//! beside the audit trail's (`server/migrations/`, versions 2001+).

use keyward_config::DatabaseKind;
use sqlx::AnyPool;

/// Handle on the online protocols' tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct OnlineStore {
    pool: AnyPool,
    kind: DatabaseKind,
}

impl OnlineStore {
    /// A store over the catalog's database.
    pub fn new(pool: AnyPool, kind: DatabaseKind) -> Self {
        Self { pool, kind }
    }

    /// The database the protocols' tables live in.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which SQL dialect the store speaks.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }
}
