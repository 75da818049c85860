//! Loader for the published test vectors, vendored in this repository as
//! `tests/vectors/vectors.json` (sources and licences: `tests/vectors/README.md`).
//!
//! Format: `{generated_by, hex, vectors: [{id, algorithm, inputs{…}, expected,
//! source, checked_with[], notes?}]}`; all hex is upper case. Lookups are by
//! id and fail (never skip) when the id is missing, so a renamed or deleted
//! vector turns a known-answer test red instead of silently passing.
//!
//! `KEYWARD_VECTORS` overrides the file's path.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Environment variable that overrides [`default_path`].
pub const PATH_ENV: &str = "KEYWARD_VECTORS";

/// `$CARGO_MANIFEST_DIR/vectors/vectors.json`: the copy vendored in the
/// repository, so a clone alone runs every known-answer test.
pub fn default_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vectors")
        .join("vectors.json")
}

/// The path in force: `$KEYWARD_VECTORS`, else [`default_path`].
pub fn path() -> PathBuf {
    std::env::var_os(PATH_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default_path)
}

/// One published vector.
#[derive(Debug, Clone)]
pub struct Vector {
    pub id: String,
    pub algorithm: String,
    pub inputs: Value,
    pub expected: Value,
    pub source: String,
    pub notes: Option<String>,
}

impl Vector {
    /// An input field as a string.
    pub fn input_str(&self, name: &str) -> Result<&str> {
        self.inputs
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("vector {}: no string input {name:?}", self.id))
    }

    /// An input field decoded from hex (empty string → empty bytes).
    pub fn input_hex(&self, name: &str) -> Result<Vec<u8>> {
        let s = self.input_str(name)?;
        hex::decode(s).with_context(|| format!("vector {}: input {name:?} is not hex", self.id))
    }

    /// An integer input field (e.g. `padding`, `block_size`).
    pub fn input_u64(&self, name: &str) -> Result<u64> {
        self.inputs
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("vector {}: no integer input {name:?}", self.id))
    }

    /// `expected` when it is a single hex string.
    pub fn expected_hex(&self) -> Result<Vec<u8>> {
        let s = self
            .expected
            .as_str()
            .ok_or_else(|| anyhow!("vector {}: expected is not a single string", self.id))?;
        hex::decode(s).with_context(|| format!("vector {}: expected is not hex", self.id))
    }

    /// A field of `expected` when it is an object, as a string.
    pub fn expected_str(&self, field: &str) -> Result<&str> {
        self.expected
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("vector {}: no expected field {field:?}", self.id))
    }

    /// A field of `expected` when it is an object, decoded from hex.
    pub fn expected_field_hex(&self, field: &str) -> Result<Vec<u8>> {
        let s = self.expected_str(field)?;
        hex::decode(s).with_context(|| format!("vector {}: expected {field:?} is not hex", self.id))
    }

    /// The hex value that follows `label` in the notes, e.g.
    /// `note_hex("odd-parity form = ")`.
    pub fn note_hex(&self, label: &str) -> Result<Vec<u8>> {
        let notes = self
            .notes
            .as_deref()
            .ok_or_else(|| anyhow!("vector {}: has no notes", self.id))?;
        let start = notes
            .find(label)
            .ok_or_else(|| anyhow!("vector {}: notes lack {label:?}", self.id))?
            + label.len();
        let digits: String = notes[start..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect();
        if digits.is_empty() {
            bail!("vector {}: no hex after {label:?} in the notes", self.id);
        }
        hex::decode(&digits)
            .with_context(|| format!("vector {}: value after {label:?} is not hex", self.id))
    }
}

/// All vectors of the file, in file order.
#[derive(Debug, Clone)]
pub struct Vectors {
    pub generated_by: String,
    vectors: Vec<Vector>,
}

impl Vectors {
    /// Reads and parses [`path`]; a missing file is an error that says where it
    /// was looked for and how to point elsewhere.
    pub fn load() -> Result<Self> {
        let path = path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the published test vectors at {} (vendored as \
                 tests/vectors/vectors.json; set {PATH_ENV} to override)",
                path.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses the JSON text of a vectors file.
    pub fn parse(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text)?;
        let generated_by = root
            .get("generated_by")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let list = root
            .get("vectors")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("no \"vectors\" array"))?;
        let mut vectors = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let field = |name: &str| -> Result<String> {
                v.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("vector #{i}: missing string field {name:?}"))
            };
            let id = field("id")?;
            if vectors.iter().any(|x: &Vector| x.id == id) {
                bail!("duplicate vector id {id:?}");
            }
            vectors.push(Vector {
                algorithm: field("algorithm")?,
                source: field("source").unwrap_or_default(),
                inputs: v.get("inputs").cloned().unwrap_or(Value::Null),
                expected: v
                    .get("expected")
                    .cloned()
                    .ok_or_else(|| anyhow!("vector {id:?}: missing \"expected\""))?,
                notes: v.get("notes").and_then(Value::as_str).map(str::to_owned),
                id,
            });
        }
        Ok(Self {
            generated_by,
            vectors,
        })
    }

    /// The vector with this id; an error if there is none.
    pub fn get(&self, id: &str) -> Result<&Vector> {
        self.vectors
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| anyhow!("vector {id:?} is missing from {}", path().display()))
    }

    /// Every vector whose id starts with `prefix`; an error if there is none.
    pub fn with_prefix(&self, prefix: &str) -> Result<Vec<&Vector>> {
        let found: Vec<&Vector> = self
            .vectors
            .iter()
            .filter(|v| v.id.starts_with(prefix))
            .collect();
        if found.is_empty() {
            bail!(
                "no vector id starts with {prefix:?} in {}",
                path().display()
            );
        }
        Ok(found)
    }

    /// All vectors, in file order.
    pub fn all(&self) -> &[Vector] {
        &self.vectors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"generated_by":"t","hex":"uppercase","vectors":[
        {"id":"a-1","algorithm":"x","inputs":{"key":"0A0B","padding":2},"expected":"CAFE",
         "source":"s","checked_with":[],"notes":"odd-parity form = 0101FE (and more)"},
        {"id":"b-1","algorithm":"y","inputs":{},"expected":{"mac_ascii":"E267B6E2"},
         "source":"s","checked_with":[]}]}"#;

    #[test]
    fn parses_and_looks_up_by_id() {
        let v = Vectors::parse(SAMPLE).unwrap();
        let a = v.get("a-1").unwrap();
        assert_eq!(a.input_hex("key").unwrap(), [0x0A, 0x0B]);
        assert_eq!(a.input_u64("padding").unwrap(), 2);
        assert_eq!(a.expected_hex().unwrap(), [0xCA, 0xFE]);
        assert_eq!(a.note_hex("odd-parity form = ").unwrap(), [1, 1, 0xFE]);
        assert!(a.note_hex("nothing ").is_err());
        let b = v.get("b-1").unwrap();
        assert_eq!(b.expected_str("mac_ascii").unwrap(), "E267B6E2");
        assert!(b.expected_hex().is_err());
        assert!(v.get("c-1").is_err());
        assert_eq!(v.with_prefix("a-").unwrap().len(), 1);
        assert!(v.with_prefix("z-").is_err());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dup = SAMPLE.replace("\"b-1\"", "\"a-1\"");
        assert!(Vectors::parse(&dup).is_err());
    }

    #[test]
    fn the_vendored_file_loads() {
        let v = Vectors::load().unwrap();
        assert!(v.get("kcv-tdes-1").is_ok());
    }
}
