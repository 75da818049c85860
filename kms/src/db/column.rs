//! Reading stored columns back into domain types. Every store keeps domain
//! values as text (ids, states, hex); a value that does not parse means the
//! database was edited by hand or by a newer release, and the error names the
//! column, never the value.

use sqlx::Row;
use sqlx::any::AnyRow;

/// A column that could not be read ([`ColumnError::Read`]) or did not parse
/// ([`ColumnError::Corrupt`], naming the column). Each crate's error converts
/// it into its own `Database` / `CorruptRecord` variants.
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    #[error(transparent)]
    Read(#[from] sqlx::Error),
    #[error("malformed {0}")]
    Corrupt(&'static str),
}

/// A text column parsed into a domain type; `what` names the column
/// (`table.column`) in the error.
pub fn parse_col<T: std::str::FromStr>(
    row: &AnyRow,
    col: &str,
    what: &'static str,
) -> Result<T, ColumnError> {
    let s: String = row.try_get(col)?;
    s.parse().map_err(|_| ColumnError::Corrupt(what))
}

/// An optional (nullable) text column parsed into a domain type.
pub fn parse_opt<T: std::str::FromStr>(
    row: &AnyRow,
    col: &str,
    what: &'static str,
) -> Result<Option<T>, ColumnError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| s.parse().map_err(|_| ColumnError::Corrupt(what)))
        .transpose()
}

/// An integer column that must fit `T` (a version, a count): SQL integers
/// are `i64` on both backends.
pub fn int_col<T: TryFrom<i64>>(
    row: &AnyRow,
    col: &str,
    what: &'static str,
) -> Result<T, ColumnError> {
    let v: i64 = row.try_get(col)?;
    T::try_from(v).map_err(|_| ColumnError::Corrupt(what))
}
