//! `kwctl device import`: a factory manifest sent as one batch
//! (`POST /admin/v1/batches`).
//!
//! The manifest format is the server's (`device-provisioning/src/intake.rs`);
//! kwctl checks only what it can without the registry (the header, the
//! number of rows) and expands a CSR field `@path` into the base64 of that
//! file (relative to the manifest's directory). Every other line is sent as
//! it is, so the line numbers of the server's report are the file's.

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use keyward_device_provisioning::intake::{MANIFEST_HEADER, MAX_ROWS};
use keyward_server::wire::devices::ImportRequest;
use serde_json::Value;

use crate::Ctx;
use crate::client::{Refused, post};
use crate::output::{self, grid};

/// Progress on stderr every this many rows.
const PROGRESS_EVERY: usize = 500;

/// A manifest ready to send.
#[derive(Debug)]
struct Manifest {
    text: String,
    rows: usize,
}

/// Reads, checks and uploads a manifest, and prints the server's report.
pub async fn import(ctx: &Ctx, batch_id: &str, path: &Path) -> anyhow::Result<()> {
    let manifest = read(ctx, path)?;
    let call = post(
        "/batches",
        ImportRequest {
            batch_id: batch_id.to_owned(),
            manifest: manifest.text.clone(),
        },
    );
    let started = Instant::now();
    let what = format!(
        "importing {} devices, {} KiB (the server certifies each one in the HSM)",
        manifest.rows,
        manifest.text.len().div_ceil(1024)
    );
    let answer = waiting(ctx, &what, ctx.call(call)).await;
    let answered = match &answer {
        Ok(_) => true,
        Err(e) => e.is::<Refused>(),
    };
    if answered {
        let after = clock(started.elapsed());
        ctx.note(format!("the server answered after {after}"));
    }
    let report = match answer {
        Ok(report) => report,
        Err(e) => {
            if let Some(refused) = e.downcast_ref::<Refused>()
                && refused.code() == "batch_rejected"
                && !ctx.json()
            {
                print_rejected(ctx, refused)?;
            }
            return Err(e);
        }
    };
    ctx.print_with(&report, || {
        let rows = report
            .get("rows")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        format!(
            "batch {}: {}, {} devices registered\n\n{}",
            output::cell(&report["batch_id"]),
            output::cell(&report["state"]),
            rows.len(),
            grid(rows, &["line", "device_id", "outcome", "cert_serial"], ""),
        )
    })
}

/// The rows that refused the batch, and what to do about it.
fn print_rejected(ctx: &Ctx, refused: &Refused) -> anyhow::Result<()> {
    let rows = refused
        .error
        .get("rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rejected: Vec<Value> = rows
        .iter()
        .filter(|r| r.get("outcome").and_then(Value::as_str) == Some("rejected"))
        .cloned()
        .collect();
    output::stdout(&grid(
        &rejected,
        &["line", "device_id", "code", "reason"],
        "",
    ))?;
    ctx.note(format!(
        "{} of {} rows rejected: nothing was imported (a batch is all or nothing); \
         correct the file and import it again",
        rejected.len(),
        rows.len()
    ));
    Ok(())
}

/// Reads the manifest: local checks, `@file` CSRs expanded, progress on
/// stderr.
fn read(ctx: &Ctx, path: &Path) -> anyhow::Result<Manifest> {
    let name = path.display();
    let raw = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    // A spreadsheet's byte order mark is not part of the header.
    let raw = raw.strip_prefix('\u{feff}').unwrap_or(&raw);
    let lines: Vec<&str> = raw.lines().collect();
    let header = lines
        .iter()
        .position(|l| is_row(l))
        .with_context(|| format!("{name}: no header line ({MANIFEST_HEADER})"))?;
    let header_ok = lines
        .get(header)
        .is_some_and(|h| h.split(',').map(str::trim).eq(MANIFEST_HEADER.split(',')));
    if !header_ok {
        bail!(
            "{name}: line {} must be the header {MANIFEST_HEADER}",
            header + 1
        );
    }
    let total = lines.iter().skip(header + 1).filter(|l| is_row(l)).count();
    if total == 0 {
        bail!("{name}: no device rows after the header");
    }
    if total > MAX_ROWS {
        bail!("{name}: {total} device rows; a batch holds at most {MAX_ROWS}");
    }
    ctx.note(format!("{name}: header ok, {total} device rows"));

    let base = path.parent().unwrap_or(Path::new(""));
    let mut text = String::with_capacity(raw.len());
    let (mut done, mut from_files) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        if i <= header || !is_row(line) {
            text += line;
        } else {
            match expand(line, base).with_context(|| format!("{name}: line {}", i + 1))? {
                Some(expanded) => {
                    text += &expanded;
                    from_files += 1;
                }
                None => text += line,
            }
            done += 1;
            if total >= PROGRESS_EVERY && (done % PROGRESS_EVERY == 0 || done == total) {
                ctx.note(format!("  read {done}/{total} rows"));
            }
        }
        text.push('\n');
    }
    if from_files > 0 {
        ctx.note(format!("{name}: {from_files} CSRs read from @files"));
    }
    Ok(Manifest { text, rows: total })
}

/// Whether a manifest line is the header or a device row (not blank, not a
/// `#` comment).
fn is_row(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// The row with its `@path` CSR replaced by the file's bytes in base64;
/// `None` when there is nothing to expand (a row without 6 fields is left to
/// the server's report).
fn expand(line: &str, base: &Path) -> anyhow::Result<Option<String>> {
    let fields: Vec<&str> = line.split(',').collect();
    let [_, _, _, _, _, csr] = fields[..] else {
        return Ok(None);
    };
    let Some(file) = csr.trim().strip_prefix('@') else {
        return Ok(None);
    };
    if file.is_empty() {
        bail!("the csr field `@` names no file");
    }
    let file = base.join(file);
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let Some((head, _)) = line.rsplit_once(',') else {
        return Ok(None);
    };
    Ok(Some(format!(
        "{head},{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )))
}

/// Awaits the import, telling people on stderr: an elapsed-time ticker on a
/// terminal, one line otherwise, nothing in `-o json`.
async fn waiting<T>(ctx: &Ctx, what: &str, answer: impl Future<Output = T>) -> T {
    if ctx.json() {
        return answer.await;
    }
    if !std::io::stderr().is_terminal() {
        eprintln!("{what}…");
        return answer.await;
    }
    let started = Instant::now();
    let mut answer = std::pin::pin!(answer);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let out = loop {
        tokio::select! {
            out = &mut answer => break out,
            _ = tick.tick() => eprint!("\r{what}… {}", clock(started.elapsed())),
        }
    };
    // Clear the ticker's line.
    eprint!("\r\x1b[2K");
    out
}

/// `m:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}
