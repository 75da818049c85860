//! What a database error means for the caller: the one classification every
//! store's `Database` error variant uses, so a database that is away answers
//! `503 database_unavailable` with `Retry-After` from every path, and a real
//! fault stays a 500.

use crate::error::ErrorKind;

/// The code of an answer caused by the database being away or saturated.
pub const UNAVAILABLE_CODE: &str = "database_unavailable";
/// The code of any other database failure.
pub const ERROR_CODE: &str = "database_error";

/// The kind of `e`: `Unavailable` when the database cannot be reached or
/// refuses work for now (no connection in time, connection lost or refused,
/// server shutting down or starting, too many connections, SQLite busy or
/// locked past its timeout); `Busy` when a transaction kept losing races
/// (serialization failure, deadlock) past its retries; `Internal` otherwise.
pub fn error_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL: class 08 (connection exception), admin/crash
            // shutdown, cannot connect now, too many connections.
            Some(c) if c.starts_with("08") => ErrorKind::Unavailable,
            Some("57P01" | "57P02" | "57P03" | "53300") => ErrorKind::Unavailable,
            Some("40001" | "40P01") => ErrorKind::Busy,
            // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended
            // codes (busy_recovery 261, busy_snapshot 517, busy_timeout 773,
            // locked_sharedcache 262).
            Some("5" | "6" | "261" | "262" | "517" | "773") => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        _ => ErrorKind::Internal,
    }
}

/// The stable code for `e` ([`UNAVAILABLE_CODE`] or [`ERROR_CODE`]).
pub fn error_code(e: &sqlx::Error) -> &'static str {
    match error_kind(e) {
        ErrorKind::Unavailable | ErrorKind::Busy => UNAVAILABLE_CODE,
        _ => ERROR_CODE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert_eq!(error_kind(&e), ErrorKind::Unavailable, "{e}");
            assert_eq!(error_code(&e), UNAVAILABLE_CODE);
        }
        let e = sqlx::Error::RowNotFound;
        assert_eq!(error_kind(&e), ErrorKind::Internal);
        assert_eq!(error_code(&e), ERROR_CODE);
    }
}
