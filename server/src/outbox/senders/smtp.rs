//! The SMTP sender (`lettre`): one plain-text e-mail per message to the
//! recipient address, through the configured relay over STARTTLS (required,
//! never opportunistic) or implicit TLS, the relay's certificate verified
//! against the configured CA only, with AUTH when a user is configured. The
//! Message-ID is `<message id@keyward>`, the same on every attempt, so a
//! relay or mailbox can drop repeats. A relay's 5xx is final, its 4xx and
//! trouble on the way are retried.

use std::fmt;
use std::time::Duration;

use keyward_config::{SmtpConfig, SmtpTls};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use zeroize::Zeroizing;

use super::{Outgoing, SendError, Sender, SetupError};

pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    subject: String,
    timeout: Duration,
}

impl fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSender")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Reads the CA and password files.
    pub fn from_config(cfg: &SmtpConfig) -> Result<Self, SetupError> {
        let problem = |problem: String| SetupError::Smtp { problem };
        let ca = std::fs::read(&cfg.ca_file).map_err(|e| {
            problem(format!(
                "cannot read ca_file {}: {}",
                cfg.ca_file.display(),
                e.kind()
            ))
        })?;
        let password = match &cfg.password_file {
            Some(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    problem(format!(
                        "cannot read password_file {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?);
                Some(Zeroizing::new(
                    text.lines().next().unwrap_or_default().to_owned(),
                ))
            }
            None => None,
        };
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|_| problem("from is not an e-mail address".to_owned()))?;
        Self::new(
            cfg,
            &ca,
            cfg.username
                .as_deref()
                .zip(password.as_deref().map(String::as_str)),
            from,
        )
        .map_err(problem)
    }

    fn new(
        cfg: &SmtpConfig,
        ca_pem: &[u8],
        credentials: Option<(&str, &str)>,
        from: Mailbox,
    ) -> Result<Self, String> {
        let ca =
            Certificate::from_pem(ca_pem).map_err(|_| "ca_file holds no usable certificate")?;
        let tls = TlsParameters::builder(cfg.host.clone())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(ca)
            .build_rustls()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host)
            .port(cfg.port)
            .timeout(Some(timeout))
            .tls(match cfg.tls {
                SmtpTls::Starttls => Tls::Required(tls),
                SmtpTls::Implicit => Tls::Wrapper(tls),
            });
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user.to_owned(), password.to_owned()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            subject: cfg.subject.clone(),
            timeout,
        })
    }
}

impl Sender for SmtpSender {
    async fn send(&self, msg: &Outgoing) -> Result<(), SendError> {
        let to: Mailbox = msg.recipient.parse().map_err(|_| SendError::BadRecipient)?;
        let body = String::from_utf8(msg.payload.clone()).map_err(|_| SendError::BadPayload)?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(self.subject.clone())
            .message_id(Some(format!("<{}@keyward>", msg.message_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|_| SendError::BadPayload)?;
        // Connecting, TLS, AUTH and the exchange: each step has the
        // transport's timeout; the whole has four of them.
        let sent = tokio::time::timeout(self.timeout * 4, self.transport.send(email))
            .await
            .map_err(|_| SendError::Timeout)?;
        sent.map(|_| ()).map_err(classify)
    }
}

/// The relay's answer or the trouble on the way, as a [`SendError`].
fn classify(e: lettre::transport::smtp::Error) -> SendError {
    if let Some(code) = e.status() {
        return SendError::SmtpReply(u16::from(code));
    }
    if e.is_timeout() {
        SendError::Timeout
    } else if e.is_tls() {
        SendError::Tls(e.to_string())
    } else {
        SendError::Connect(e.to_string())
    }
}
