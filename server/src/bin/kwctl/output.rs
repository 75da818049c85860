//! Everything kwctl prints: the server's JSON for scripts, tables and
//! `key: value` lines for people, and the report of a refusal.

use std::io::Write;

use clap::ValueEnum;
use serde_json::{Map, Value};

use crate::client::Refused;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

/// Writes `text` to stdout (a closed pipe is an error, not a panic).
pub fn stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The server's document as kwctl prints it in `-o json`.
pub fn json(v: &Value) -> String {
    format!("{v:#}\n")
}

/// The table for any answer: a list answer (`{"devices": […]}`, or a bare
/// array of objects) as aligned columns, an object as `key: value` lines
/// followed by its lists of objects as tables, PEM and other multi-line
/// strings whole.
pub fn render(v: &Value) -> String {
    match v {
        Value::Array(rows) if rows.iter().all(Value::is_object) => grid(rows, &[], ""),
        Value::Object(m) => match list_of(v) {
            Some(rows) if m.len() <= 2 => grid(rows, &[], ""),
            _ => fields(m),
        },
        Value::String(s) => format!("{}\n", clean(s, true)),
        other => format!("{other}\n"),
    }
}

/// The rows of a list answer: the first field of `v` that is an array of
/// objects.
pub fn list_of(v: &Value) -> Option<&[Value]> {
    v.as_object()?.values().find_map(object_rows)
}

fn object_rows(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) if a.iter().all(Value::is_object) => Some(a.as_slice()),
        _ => None,
    }
}

/// Columns for the lists of objects inside single answers, by field name;
/// other lists show every field.
const NESTED_COLUMNS: &[(&str, &[&str])] = &[
    ("master_keys", &["role", "label", "kcv"]),
    ("keys", &["name", "kcv", "wrapped"]),
    (
        "inits",
        &[
            "issuer_id",
            "state",
            "tmk_kcv",
            "auth_kcv",
            "packages",
            "packaged_at_ms",
            "confirmed_at_ms",
            "reinit_by",
        ],
    ),
    (
        "bindings",
        &[
            "issuer_id",
            "customer_id",
            "secure_element",
            "psam_serial",
            "esam_serial",
            "accounts",
            "bound_by",
            "bound_at_ms",
        ],
    ),
];

/// `key: value` lines, then each non-empty list of objects as an indented
/// table under its name.
fn fields(m: &Map<String, Value>) -> String {
    let is_table = |v: &Value| object_rows(v).is_some_and(|r| !r.is_empty());
    let w = m
        .iter()
        .filter(|(_, v)| !is_table(v))
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in m.iter().filter(|(_, v)| !is_table(v)) {
        match v {
            Value::String(s) if s.contains('\n') => {
                out += &format!("{k}:\n{}\n", clean(s, true).trim_end());
            }
            other => out += &format!("{:<w$}  {}\n", format!("{k}:"), cell(other)),
        }
    }
    for (k, v) in m {
        if let Some(rows) = object_rows(v).filter(|r| !r.is_empty()) {
            let cols = NESTED_COLUMNS
                .iter()
                .find_map(|(name, cols)| (name == k).then_some(*cols))
                .unwrap_or_default();
            out += &format!("\n{k}:\n{}", grid(rows, cols, "  "));
        }
    }
    out
}

/// Aligned columns, one line per row, each line starting with `indent`.
/// `cols` picks and orders the columns (those no row has are left out);
/// empty means every field of the rows except PEM bodies.
pub fn grid(rows: &[Value], cols: &[&str], indent: &str) -> String {
    if rows.is_empty() {
        return format!("{indent}(none)\n");
    }
    let cols: Vec<String> = if cols.is_empty() {
        let mut all: Vec<String> = Vec::new();
        for k in rows.iter().filter_map(Value::as_object).flat_map(Map::keys) {
            if !all.contains(k) && !k.ends_with("pem") {
                all.push(k.clone());
            }
        }
        all
    } else {
        cols.iter()
            .filter(|c| rows.iter().any(|r| r.get(c).is_some()))
            .map(|c| (*c).to_owned())
            .collect()
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| cell(r.get(c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| width(&r[i]))
                .chain([width(c)])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        let text = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v}{}", " ".repeat(w.saturating_sub(width(v)))))
            .collect::<Vec<_>>()
            .join("  ");
        format!("{indent}{}\n", text.trim_end())
    };
    let mut out = line(&cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
    for r in &cells {
        out += &line(r);
    }
    out
}

/// Columns a string takes on a terminal: East Asian wide characters (a
/// customer's name in Chinese, say) take two.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match u32::from(c) {
            0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// One value on one line: `-` for null or nothing, lists comma-separated,
/// objects (a KCV, a contact) as `k=v` pairs.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s, false),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Server text as it may reach a terminal: no control characters (escape
/// sequences), newlines only where a block is expected.
fn clean(s: &str, multi_line: bool) -> String {
    s.chars()
        .map(|c| match c {
            '\n' if multi_line => c,
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// Reports a refusal: the error object on stdout for `-o json`, else one
/// line on stderr with the status, code, message and request id.
pub fn refusal(output: Output, r: &Refused) -> anyhow::Result<()> {
    match output {
        Output::Json => stdout(&format!("{}\n", r.error)),
        Output::Table => {
            eprintln!(
                "kwctl: {} {}: {} (request id {})",
                r.status.as_u16(),
                clean(r.code(), false),
                clean(r.message(), false),
                clean(r.request_id(), false),
            );
            Ok(())
        }
    }
}
