//! A real local SMTP relay (tokio + rustls, the test CA of
//! [`crate::webhook`]) for the outbox's SMTP sender: STARTTLS or implicit
//! TLS, AUTH PLAIN only over TLS, every accepted mail kept — the customer's
//! mailbox of the tests (route and end-to-end).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::net::TcpListener;

use crate::webhook::TestCa;

/// What the SMTP relay saw and how it answers.
#[derive(Debug, Default)]
pub struct Relay {
    /// Each accepted mail's DATA, in order.
    pub mails: Mutex<Vec<String>>,
    /// Replies to the next MAIL FROM commands (then `250`).
    pub mail_from: Mutex<VecDeque<&'static str>>,
    /// Whether AUTH was offered or attempted before TLS.
    pub auth_in_clear: AtomicUsize,
}

/// A local SMTP relay on 127.0.0.1: STARTTLS (`implicit` false) or TLS from
/// the first byte; AUTH PLAIN `keyward`/`relay-password` offered over TLS
/// only.
pub async fn start_relay(ca: &TestCa, implicit: bool) -> (u16, Arc<Relay>) {
    let acceptor = crate::webhook::tls_acceptor(ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let relay = Arc::new(Relay::default());
    let seen = relay.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                if implicit {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = converse(tls, true, true, &seen).await;
                } else if let Ok(Some(tcp)) = converse(tcp, false, true, &seen).await {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = converse(tls, true, false, &seen).await;
                }
            });
        }
    });
    (port, relay)
}

/// One SMTP conversation; hands the stream back when the client asked for
/// STARTTLS.
async fn converse<S>(io: S, secure: bool, greet: bool, relay: &Relay) -> std::io::Result<Option<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut io = BufReader::new(io);
    if greet {
        io.write_all(b"220 relay.test ESMTP\r\n").await?;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let cmd = line.trim_end().to_owned();
        let verb = cmd
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" if secure => "250-relay.test\r\n250 AUTH PLAIN\r\n".into(),
            "EHLO" => "250-relay.test\r\n250 STARTTLS\r\n".into(),
            "STARTTLS" if !secure => {
                io.write_all(b"220 go ahead\r\n").await?;
                return Ok(Some(io.into_inner()));
            }
            "AUTH" => {
                if !secure {
                    relay.auth_in_clear.fetch_add(1, Ordering::SeqCst);
                }
                let b64 = cmd.rsplit(' ').next().unwrap_or_default();
                let plain = BASE64.decode(b64).unwrap_or_default();
                if secure && plain == b"\0keyward\0relay-password" {
                    "235 ok\r\n".into()
                } else {
                    "535 no\r\n".into()
                }
            }
            "MAIL" => {
                relay
                    .mail_from
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or("250 ok")
                    .to_owned()
                    + "\r\n"
            }
            "RCPT" | "RSET" | "NOOP" => "250 ok\r\n".into(),
            "DATA" => {
                io.write_all(b"354 go on\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 {
                        return Ok(None);
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                relay.mails.lock().unwrap().push(data);
                "250 queued\r\n".into()
            }
            "QUIT" => {
                io.write_all(b"221 bye\r\n").await?;
                return Ok(None);
            }
            _ => "502 unknown\r\n".into(),
        };
        io.write_all(reply.as_bytes()).await?;
    }
}
