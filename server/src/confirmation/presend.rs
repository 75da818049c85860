//! The pre-send check (docs/protocol.md §11.7): before a code goes to a
//! phone, whether someone may be holding that phone's number. Two rules,
//! each `refuse` or `step_up` by configuration: the customer's contact
//! changed within `contact_changed_days`, and — for an SMS contact in
//! international form — a CAMARA SIM-swap `check` endpoint says its SIM was
//! swapped within `max_age_hours`. A step-up lets the confirmation go on and
//! names the risk in the executor's order. An endpoint that does not answer
//! `200 {"swapped": bool}` in time fails the submit closed. The number goes
//! to the endpoint only; never into a log, metric or error.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use keyward_config::PresendConfig;
use keyward_device_provisioning::{Contact, ContactKind};
use serde_json::json;
use zeroize::Zeroizing;

use super::{ConfigProblem, ConfirmError};
use crate::outbox::senders::{HttpsClient, read_roots};

/// What a rule found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// The SIM-swap endpoint says the number's SIM changed recently.
    SimSwap,
    /// The customer's contact changed recently.
    ContactChanged,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SimSwap => "sim_swap",
            Self::ContactChanged => "contact_changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::SimSwap, Self::ContactChanged]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// The configured rules; without configuration, nothing is asked.
#[derive(Debug, Clone, Default)]
pub struct PreSend {
    sim_swap: Option<SimSwap>,
    max_age_hours: u32,
    refuse_sim_swap: bool,
    contact_changed_ms: i64,
    refuse_contact_change: bool,
}

#[derive(Clone)]
struct SimSwap {
    url: Uri,
    http: HttpsClient,
    token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SimSwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSwap")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl PreSend {
    /// Reads the endpoint's CA and token files (a bad one stops start-up).
    pub fn from_config(cfg: &PresendConfig) -> Result<Self, ConfigProblem> {
        let problem = |what: &str, e: String| ConfigProblem(format!("presend.{what}: {e}"));
        let sim_swap = match &cfg.sim_swap_url {
            None => None,
            Some(url) => {
                let ca = cfg
                    .ca_file
                    .as_deref()
                    .ok_or_else(|| problem("ca_file", "required".into()))?;
                let roots = read_roots(ca).map_err(|e| problem("ca_file", e))?;
                let timeout = Duration::from_millis(cfg.timeout_ms);
                let token = cfg
                    .token_file
                    .as_deref()
                    .map(|path| {
                        let text = Zeroizing::new(
                            std::fs::read_to_string(path)
                                .map_err(|e| problem("token_file", e.kind().to_string()))?,
                        );
                        Ok(Zeroizing::new(
                            text.lines().next().unwrap_or_default().trim().to_owned(),
                        ))
                    })
                    .transpose()?;
                Some(SimSwap {
                    url: url
                        .parse()
                        .map_err(|_| problem("sim_swap_url", "not a URL".into()))?,
                    http: HttpsClient::new(roots, timeout, timeout)
                        .map_err(|e| problem("sim_swap_url", e))?,
                    token,
                })
            }
        };
        Ok(Self {
            sim_swap,
            max_age_hours: cfg.max_age_hours,
            refuse_sim_swap: cfg.on_sim_swap == "refuse",
            contact_changed_ms: i64::from(cfg.contact_changed_days) * 86_400_000,
            refuse_contact_change: cfg.on_contact_change == "refuse",
        })
    }

    /// The risks to step up for, or the refusal of the first risk whose
    /// policy refuses. `contact_since_ms`: when the contact was set.
    pub async fn check(
        &self,
        contact: &Contact,
        contact_since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Risk>, ConfirmError> {
        let mut step_up = Vec::new();
        let mut found = |risk: Risk, refuse: bool| {
            if refuse {
                Err(ConfirmError::RefusedPreSend(risk))
            } else {
                step_up.push(risk);
                Ok(())
            }
        };
        if self.contact_changed_ms > 0 && now_ms - contact_since_ms < self.contact_changed_ms {
            found(Risk::ContactChanged, self.refuse_contact_change)?;
        }
        if let Some(s) = &self.sim_swap
            && contact.kind == ContactKind::Sms
            && contact.address().starts_with('+')
            && self.swapped(s, contact.address()).await?
        {
            found(Risk::SimSwap, self.refuse_sim_swap)?;
        }
        Ok(step_up)
    }

    /// Asks the endpoint (CAMARA SIM Swap `check`).
    async fn swapped(&self, s: &SimSwap, number: &str) -> Result<bool, ConfirmError> {
        let body = json!({ "phoneNumber": number, "maxAge": self.max_age_hours }).to_string();
        let mut req = hyper::Request::post(s.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "keyward-presend");
        if let Some(token) = &s.token {
            req = req.header(AUTHORIZATION, format!("Bearer {}", token.as_str()));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ConfirmError::PresendUnavailable("request"))?;
        let (status, answer) = s.http.exchange(req).await.map_err(|e| {
            tracing::warn!(error = %e, "SIM-swap check failed");
            ConfirmError::PresendUnavailable("exchange")
        })?;
        if status != hyper::StatusCode::OK {
            tracing::warn!(status = status.as_u16(), "SIM-swap check answered");
            return Err(ConfirmError::PresendUnavailable("status"));
        }
        serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("swapped").and_then(serde_json::Value::as_bool))
            .ok_or(ConfirmError::PresendUnavailable("answer"))
    }
}
