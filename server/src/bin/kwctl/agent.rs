//! Device agents: a program that talks to the device itself (a station
//! driver, or the `kwsim` simulator), run without a shell.
//!
//! Contract:
//! - `AGENT sign-challenge <device_id> <challenge_hex>` → stdout: the
//!   device's signature, base64 of DER;
//! - `AGENT load-init <device_id>`, the init package JSON on stdin → stdout:
//!   the confirm body JSON `{"issuer_id": …, "kcvs": […]}`.
//!
//! A non-zero exit is an error carrying the agent's stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use base64::Engine;
use keyward_server::wire::devices::ConfirmRequest;
use serde_json::Value;

/// An agent command line, split on ASCII whitespace (no shell, no quoting).
#[derive(Debug, Clone)]
pub struct Agent {
    program: String,
    args: Vec<String>,
}

impl Agent {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split_ascii_whitespace().map(str::to_owned);
        let program = words.next().context("--agent is empty")?;
        Ok(Self {
            program,
            args: words.collect(),
        })
    }

    /// `AGENT sign-challenge <device_id> <challenge_hex>`: the base64 DER
    /// signature it prints.
    pub fn sign_challenge(&self, device_id: &str, challenge_hex: &str) -> anyhow::Result<String> {
        let out = self.run("sign-challenge", &[device_id, challenge_hex], None)?;
        let signature = out.trim();
        let ok = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .is_ok_and(|der| !der.is_empty());
        if !ok {
            bail!(
                "agent `{}` sign-challenge printed no base64 signature",
                self.program
            );
        }
        Ok(signature.to_owned())
    }

    /// `AGENT load-init <device_id>` with the package on stdin: the confirm
    /// body it prints.
    pub fn load_init(&self, device_id: &str, package: &Value) -> anyhow::Result<ConfirmRequest> {
        let input = serde_json::to_vec(package)?;
        let out = self.run("load-init", &[device_id], Some(input))?;
        serde_json::from_str(out.trim()).with_context(|| {
            format!(
                "agent `{}` load-init printed no JSON confirm body {{\"issuer_id\", \"kcvs\"}}",
                self.program
            )
        })
    }

    /// Runs `AGENT VERB ARGS…`, `stdin` on its standard input; its stdout.
    fn run(&self, verb: &str, args: &[&str], stdin: Option<Vec<u8>>) -> anyhow::Result<String> {
        let what = format!("agent `{}` {verb}", self.program);
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg(verb)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        // Written from another thread so that an agent writing before it has
        // read all its input cannot dead-lock us; an agent that exits without
        // reading it is judged by its exit status.
        let writer = match (stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || pipe.write_all(&data))),
            _ => None,
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for {what}"))?;
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            bail!(
                "{what} failed ({}){}{}",
                out.status,
                if stderr.is_empty() { "" } else { ": " },
                stderr
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("{what} printed no UTF-8 text"))
    }
}
