//! `kwctl mac verify --file F`: bulk MAC verification through the admin API
//! (`POST /admin/v1/macs/verify`, the route the transaction switch uses).
//!
//! The file is JSON (`{"items": [...]}` or a bare array of the route's
//! items), the binary request encoding (docs/protocol.md §6.6), or CSV with
//! the header `device_id,issuer_id,key_version,algorithm,padding,message_hex,mac_hex`
//! (padding empty or 0 for none; for `CUP-ECB` `mac_hex` is the hex of the
//! 8 ASCII characters). It is sent in requests of `--chunk` items (a
//! binary file asks for a streamed answer, so progress moves within a
//! request), with progress on stderr; the summary (counts by result and error code) is
//! printed, and with `-o json` every item's result, in file order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use keyward_server::wire::macs as wire;
use serde_json::{Value, json};

use crate::Ctx;

#[derive(Debug, Subcommand)]
pub enum MacCommand {
    /// Verify the MACs of a file (.json, .bin or .csv).
    Verify {
        #[arg(long)]
        file: PathBuf,
        /// json, bin or csv (default: by the file's extension).
        #[arg(long)]
        format: Option<String>,
        /// Items per request (at most the server's `bulk_max_items`).
        #[arg(long, default_value_t = 10_000)]
        chunk: usize,
    },
}

/// A file's items, in the encoding they are sent in.
enum Items {
    Json(Vec<Value>),
    Binary(Vec<wire::BinaryItem>),
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Self::Json(v) => v.len(),
            Self::Binary(v) => v.len(),
        }
    }
}

pub async fn run(ctx: &Ctx, cmd: MacCommand) -> anyhow::Result<()> {
    let MacCommand::Verify {
        file,
        format,
        chunk,
    } = cmd;
    if chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let format = match format {
        Some(f) => f,
        None => file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase(),
    };
    let items = read(&file, &format)?;
    let total = items.len();
    let mut verdicts: Vec<wire::Verdict> = Vec::with_capacity(total);
    let started = std::time::Instant::now();
    match &items {
        Items::Json(all) => {
            for part in all.chunks(chunk) {
                let body = serde_json::to_vec(&json!({ "items": part }))?;
                let bytes = ctx
                    .client
                    .post_raw("/macs/verify", "application/json", body)
                    .await?;
                let answer: wire::VerifyAnswer =
                    serde_json::from_slice(&bytes).context("reading the answer")?;
                if answer.results.len() != part.len() {
                    bail!(
                        "the server answered {} results for {} items",
                        answer.results.len(),
                        part.len()
                    );
                }
                verdicts.extend(answer.results.iter().map(wire::ItemResult::verdict));
                progress(ctx, verdicts.len(), total);
            }
        }
        Items::Binary(all) => {
            // Streamed: results (and progress) arrive as the server's
            // chunks finish, not once per request.
            for part in all.chunks(chunk) {
                let body = wire::encode_request(part)?;
                let before = verdicts.len();
                let mut answer = wire::AnswerDecoder::default();
                ctx.client
                    .post_streamed("/macs/verify?stream=1", wire::BINARY, body, |piece| {
                        let got = answer.push(piece).context("reading the answer")?;
                        if !got.is_empty() {
                            verdicts.extend(got);
                            progress(ctx, verdicts.len(), total);
                        }
                        Ok(())
                    })
                    .await?;
                answer.finish().context("reading the answer")?;
                let got = verdicts.len() - before;
                if got != part.len() {
                    bail!("the server answered {got} results for {} items", part.len());
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let mut summary = wire::Summary::default();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for v in &verdicts {
        summary.add(v);
        if let wire::Verdict::Error(c) = v {
            *codes.entry(c.clone()).or_default() += 1;
        }
    }
    let results: Vec<Value> = verdicts
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let r = wire::ItemResult::from(v);
            json!({"index": i, "result": r.result, "code": r.code})
        })
        .collect();
    let v = json!({
        "count": total,
        "summary": summary,
        "error_codes": codes,
        "results": results,
    });
    ctx.print_with(&v, || {
        let mut out = format!(
            "items:   {total}\nvalid:   {}\ninvalid: {}\nerror:   {}\n",
            summary.valid, summary.invalid, summary.error
        );
        for (code, n) in &codes {
            out.push_str(&format!("  {code}: {n}\n"));
        }
        out
    })?;
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        ctx.note(format!(
            "{total} items in {secs:.2} s ({:.0} items/s)",
            total as f64 / secs
        ));
    }
    Ok(())
}

fn progress(ctx: &Ctx, done: usize, total: usize) {
    ctx.note(format!("verified {done}/{total}"));
}

fn read(path: &Path, format: &str) -> anyhow::Result<Items> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match format {
        "json" => {
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let items = match v {
                Value::Array(items) => items,
                Value::Object(mut o) => match o.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => bail!("{}: expected {{\"items\": [...]}}", path.display()),
                },
                _ => bail!("{}: expected an array of items", path.display()),
            };
            Ok(Items::Json(items))
        }
        "bin" => Ok(Items::Binary(
            wire::decode_request(&bytes).with_context(|| format!("{}", path.display()))?,
        )),
        "csv" => {
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            csv(&text).with_context(|| format!("{}", path.display()))
        }
        other => bail!("unknown format {other:?}: json, bin or csv"),
    }
}

/// The CSV header `kwctl mac verify` reads.
pub const CSV_HEADER: &str =
    "device_id,issuer_id,key_version,algorithm,padding,message_hex,mac_hex";

fn csv(text: &str) -> anyhow::Result<Items> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == CSV_HEADER => {}
        _ => bail!("the first line must be {CSV_HEADER}"),
    }
    let mut items = Vec::new();
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let line_no = n + 1;
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let [
            device_id,
            issuer_id,
            version,
            algorithm,
            padding,
            message,
            mac,
        ] = cols[..]
        else {
            bail!("line {line_no}: expected 7 columns");
        };
        let key_version: u32 = version
            .parse()
            .with_context(|| format!("line {line_no}: key_version"))?;
        let padding: Option<u8> = match padding {
            "" | "0" => None,
            p => Some(
                p.parse()
                    .with_context(|| format!("line {line_no}: padding"))?,
            ),
        };
        let message =
            hex::decode(message).with_context(|| format!("line {line_no}: message_hex"))?;
        let mac = hex::decode(mac).with_context(|| format!("line {line_no}: mac_hex"))?;
        items.push(serde_json::to_value(wire::Item {
            device_id: device_id.to_owned(),
            issuer_id: issuer_id.to_owned(),
            key_version,
            algorithm: algorithm.to_owned(),
            padding,
            message: B64.encode(message),
            mac: B64.encode(mac),
        })?);
    }
    Ok(Items::Json(items))
}
