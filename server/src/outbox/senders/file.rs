//! The file sender, for development and the demo (the simulator reads its
//! codes here): appends one JSON line per message — `message_id`, `topic`,
//! `recipient`, `payload` (text; `payload_base64` when not UTF-8), `at_ms` —
//! and syncs it to disk before the message counts as sent. The file is made
//! readable by its owner only: it holds personal data.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use keyward_kms::db::now_ms;
use serde_json::json;

use super::{Outgoing, SendError, Sender};

#[derive(Debug)]
pub struct FileSender {
    path: PathBuf,
    /// One append at a time, so lines never interleave.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl FileSender {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: Arc::default(),
        }
    }

    /// The JSON line (with its newline) for `msg`.
    pub fn line(msg: &Outgoing, at_ms: i64) -> Vec<u8> {
        let mut v = json!({
            "message_id": msg.message_id.to_string(),
            "topic": msg.topic,
            "recipient": msg.recipient,
            "at_ms": at_ms,
        });
        match std::str::from_utf8(&msg.payload) {
            Ok(text) => v["payload"] = text.into(),
            Err(_) => {
                v["payload_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&msg.payload)
                    .into();
            }
        }
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

impl Sender for FileSender {
    async fn send(&self, msg: &Outgoing) -> Result<(), SendError> {
        let line = Self::line(msg, now_ms());
        let path = self.path.clone();
        let _turn = self.lock.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || {
            let mut open = std::fs::OpenOptions::new();
            open.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
            let mut file = open.open(&path)?;
            file.write_all(&line)?;
            file.flush()?;
            file.sync_data()
        })
        .await
        .map_err(|e| SendError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Channel, MessageId};

    #[tokio::test]
    async fn appends_one_synced_line_per_message() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("out.jsonl");
        let sender = FileSender::new(path.clone());
        let mut msg = Outgoing {
            message_id: MessageId::new(),
            topic: "confirmation.code".into(),
            channel: Channel::File,
            recipient: "+4915112345678".into(),
            payload: "EUR 12.00 to ACME\ncode 12345678".into(),
            attempt: 1,
        };
        assert!(sender.send(&msg).await.is_ok());
        msg.payload = vec![0xff, 0x00];
        assert!(sender.send(&msg).await.is_ok());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message_id"], msg.message_id.to_string());
        assert_eq!(lines[0]["payload"], "EUR 12.00 to ACME\ncode 12345678");
        assert_eq!(lines[0]["recipient"], "+4915112345678");
        assert_eq!(lines[1]["payload_base64"], "/wA=");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode());
            assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
        }
    }
}
