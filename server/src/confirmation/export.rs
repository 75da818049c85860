//! An evidence export as files (docs/protocol.md §11.6), what `kwctl
//! confirmation evidence --out DIR` writes and the documented `openssl` and
//! Python check reads: one definition of the file names.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::wire::confirmations::EvidenceExport;

/// The receipt bytes.
pub const RECEIPT: &str = "receipt.txt";
/// The evidence key's DER signature over them.
pub const SIGNATURE: &str = "receipt.sig";
/// Evidence certificate, issuing CA, root CA.
pub const CHAIN: &str = "evidence-chain.pem";
pub const DEVICE_CERT: &str = "device.pem";
/// The transaction bytes as received.
pub const TRANSACTION: &str = "transaction.json";
/// The rendered message (absent when the export has none).
pub const MESSAGE: &str = "message.txt";

/// Writes `e` into `dir` (created 0700: the files hold personal data; each
/// file 0600). Returns the names written.
pub fn write_dir(e: &EvidenceExport, dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    keyward_kms::db::create_private_dir(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let b64 = |what: &str, v: &str| {
        B64.decode(v)
            .with_context(|| format!("the server's {what} is not base64"))
    };
    let mut files = vec![
        (RECEIPT, b64("receipt", &e.receipt)?),
        (SIGNATURE, b64("signature", &e.signature)?),
        (CHAIN, e.evidence_chain_pem.as_bytes().to_vec()),
        (DEVICE_CERT, e.device_certificate_pem.as_bytes().to_vec()),
        (TRANSACTION, b64("transaction", &e.transaction)?),
    ];
    if let Some(m) = &e.message {
        files.push((MESSAGE, b64("message", m)?));
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        write_private(&dir.join(name), &bytes)?;
        written.push(name);
    }
    Ok(written)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}
