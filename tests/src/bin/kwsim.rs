//! `kwsim`: software secure devices (PSAM/ESAM terminals) kept on disk, for
//! demos and end-to-end tests. It is the factory that makes devices and their
//! manufacturing manifest, and the device agent a provisioning station
//! (`kwctl`) calls to reach a device.
//!
//! Every command takes `--state DIR` (env `KWSIM_STATE`, default
//! `var/devices`), given before or after the subcommand; each device lives in
//! `DIR/<device_id>.json` (mode 0600: it is the emulated secure element's
//! storage, private key and issuer keys included).
//!
//! - `make --count N [--key p256|rsa] [--first-id HEX16] [--manifest FILE]`:
//!   makes N devices with consecutive ids (default from `F000000000000001`),
//!   PSAM `PSAM<last 8 hex of id>`, ESAM `ESAM<same>`, model `KW-SIM-1`,
//!   firmware `1.0.0`, and writes their manifest (header
//!   `device_id,psam_serial,esam_serial,model,firmware,csr`) to FILE or
//!   stdout. Refuses ids already in DIR.
//! - `sign-challenge DEVICE_ID CHALLENGE_HEX`: the device's signature over the
//!   challenge bytes (ECDSA P-256/SHA-256 DER, or RSASSA-PKCS1-v1_5/SHA-256),
//!   standard base64, one line.
//! - `load-init DEVICE_ID`: reads the init package JSON (admin API
//!   `POST /admin/v1/devices/{id}/init`) on stdin, opens it, keeps the keys
//!   only if every KCV matches, and prints the `init/confirm` body on one line.
//!   A KCV mismatch still exits 0 with the device's KCVs (the server decides),
//!   with a warning on stderr.
//! - `show DEVICE_ID`: a JSON summary (id, key kind, serials, the issuers it
//!   holds keys for, with their KCVs); never key bytes.
//! - `forge-csr --signer ID --victim ID`: a manifest row for the victim whose
//!   CSR carries the victim's key but is signed by the signer's (both P-256),
//!   so a batch holding it is refused (`csr_signature`).
//!
//! - `login DEVICE_ID --issuer I --server URL --ca FILE --cert FILE
//!   [--wrong-response] [--times N]`: the device's login (docs/protocol.md
//!   §10) over mutual TLS with its own key and certificate chain (FILE, PEM,
//!   e.g. from `kwctl ca show SERIAL --out`): start, take and confirm a key
//!   update if one is offered (the new keys are kept only if every KCV
//!   matches), answer the challenge. Prints one JSON line per login: the
//!   server's answer (without the session token) or its refusal; exits 1 if
//!   the last login was refused. `--wrong-response` answers wrongly (the
//!   lockout demo). `--transaction TEXT`: after the login, the transaction
//!   TEXT with its CMAC over the session (`POST /v1/transactions`), and the
//!   server's verdict on a second line.
//!   When the device holds a purse, its signed status follows each login
//!   (`POST /v1/loads/status`, one more line): what settles a load whose
//!   report was lost.
//! - `load DEVICE_ID --amount N [--customer C --account A --currency CNY]`
//!   with `login`'s `--issuer --server --ca --cert`: the e-purse load
//!   (docs/protocol.md §13). The purse (`DIR/<device_id>.purse.json`) is
//!   made from `--customer --account --currency` at the first load and read
//!   from disk afterwards. Logs in, sends the purse's status (settling any
//!   earlier load by what the purse proves), then the request; checks the
//!   permit under its certificate chain up to the root in `--ca`, applies
//!   it and reports. Faults: `--fail REASON` (1..=255) reports a failure
//!   instead, `--lose-report` applies but never reports, `--no-apply`
//!   neither applies nor reports. One JSON line per step (`"step"`: login,
//!   status, permit, report, purse); exits 1 on a refusal. No key, token or
//!   account number is printed.
//! - `channel DEVICE_ID` with `login`'s `--issuer --server --ca --cert`
//!   (`--cert`: the **card's** certificate chain, PEM) `[--terminal ID
//!   --terminal-cert FILE] [--transaction TEXT] [--continue-on URL]
//!   [--carry PATH]… [--no-login] [--after-close] [--mode ecdhe|rsa]
//!   [--resume-on URL]`: the device as a bank card in the secure channel
//!   (docs/protocol.md §14) relayed by the
//!   terminal ID (its own mutual TLS; default: the card itself): the
//!   handshake, a carried ping, a carried login (start and finish), the
//!   transaction TEXT's CMAC, a key update and a ping under the new key, a
//!   close. `--mode`: the handshake mode the card offers (default `ecdhe`,
//!   forward secret; `rsa`: RSA transport). `--continue-on URL`: everything after the login goes to that
//!   (another replica's) public listener. `--carry PATH`: a carried
//!   `GET PATH` after the first ping (a route the channel does not carry is
//!   refused inside it). `--after-close`: the card's next record after the
//!   close (refused: the channel is closed). One JSON line per step
//!   (`"step"`: handshake with the channel id and mode, ping with the identity the
//!   server saw, carry, login, transaction, key_update, close,
//!   after_close); exits 1 if a step was refused (the carried probes and
//!   the after-close record excepted). `--resume-on URL`: at the end, the
//!   card resumes with the opening's ticket on that (another replica's)
//!   public listener, no RSA operation (steps resume with the new channel
//!   id, resumed_ping). No key or token is printed.
//! - `purse DEVICE_ID`: the purse as JSON (the account number masked).
//! - `confirm DEVICE_ID --issuer I --server URL --ca FILE --cert FILE
//!   --outbox FILE --transaction FILE [--device-sees FILE] [--wrong-code]`:
//!   a transaction confirmed the way a person does (docs/protocol.md §11):
//!   log in, submit the transaction (JSON in FILE, as the PC sends it), read
//!   the code from the message the file sender appends to the outbox FILE
//!   (the `@origin #code` last line a phone autofills from), sign
//!   `tx ‖ code` with the device key and confirm. `--device-sees`: the
//!   device is handed (and signs) this other transaction — a PC that
//!   altered it, which the server refuses as tampered; `--wrong-code`: one
//!   digit typed wrong. One JSON line each for the submit, the message's
//!   first line (what the customer compares) and the confirm; exits 1 if
//!   the submit or the confirm was refused.
//! - `macs DEVICE_ID --issuer I [--count N] --out FILE`: a MAC batch in the
//!   CSV `kwctl mac verify` reads, MACed with the device's current TAK
//!   (every tenth MAC wrong), for the bulk-verification demo.
//! - `tamper DEVICE_ID --issuer I`: corrupts the device's `TMK_d` for the
//!   issuer, so its next key update shows a KCV mismatch (intrusion demo).
//!
//! Agent contract (what `kwctl` relies on):
//! `kwsim --state DIR sign-challenge <device_id> <challenge_hex>` → stdout:
//! base64 DER signature; `kwsim --state DIR load-init <device_id>` with the
//! package JSON on stdin → stdout: confirm JSON. Errors: `kwsim: <message>` on
//! stderr, exit status 2.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward_kms::types::DeviceId;
use keyward_protocol::channel::Mode;
use keyward_tests::channel::Carrier;
use keyward_tests::purse::Purse;
use keyward_tests::simulator::{SimDevice, forged_csr};
use keyward_tests::terminal::{self, Caller as _, LoginOptions, Reply, Terminal};
use keyward_tests::wire;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

/// Largest init package read from stdin.
const MAX_PACKAGE_BYTES: u64 = 1 << 20;
/// Largest challenge accepted, in bytes.
const MAX_CHALLENGE_BYTES: usize = 4096;
/// Most devices one `make` makes.
const MAX_COUNT: u64 = 100_000;
const MANIFEST_HEADER: &str = "device_id,psam_serial,esam_serial,model,firmware,csr";

/// Software secure devices: factory and device agent.
#[derive(Debug, Parser)]
#[command(name = "kwsim", version)]
struct Cli {
    /// Directory holding the devices.
    #[arg(
        long,
        global = true,
        env = "KWSIM_STATE",
        default_value = "var/devices",
        value_name = "DIR"
    )]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyKind {
    P256,
    Rsa,
}

/// How a device reaches the public listener.
#[derive(Debug, Args)]
struct OnlineArgs {
    #[arg(long)]
    issuer: String,
    /// Public listener URL.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    server: String,
    /// The Keyward root (PEM): the server's TLS certificate and the load
    /// permit's certificate chain to it.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The device certificate and its chain (PEM).
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
}

/// `kwsim channel`'s options.
#[derive(Debug, Args)]
struct ChannelArgs {
    #[command(flatten)]
    online: OnlineArgs,
    /// The terminal that relays (a device in DIR); default: the card.
    #[arg(long, value_name = "ID", requires = "terminal_cert")]
    terminal: Option<String>,
    /// The terminal's certificate chain (PEM), for its mutual TLS.
    #[arg(long, value_name = "FILE")]
    terminal_cert: Option<PathBuf>,
    /// After the login, continue the channel on this public listener
    /// (another replica).
    #[arg(long, value_name = "URL")]
    continue_on: Option<String>,
    /// After the login, this transaction message with its CMAC.
    #[arg(long, value_name = "TEXT")]
    transaction: Option<String>,
    /// Carry `GET PATH` after the first ping.
    #[arg(long, value_name = "PATH")]
    carry: Vec<String>,
    /// No login (nor transaction).
    #[arg(long, conflicts_with = "transaction")]
    no_login: bool,
    /// Send the card's next record after the close.
    #[arg(long)]
    after_close: bool,
    /// The handshake mode the card offers.
    #[arg(long, value_enum, default_value = "ecdhe")]
    mode: HandshakeMode,
    /// At the end, resume with the opening's ticket on this public
    /// listener (another replica) and carry a ping in the new channel.
    #[arg(long, value_name = "URL")]
    resume_on: Option<String>,
}

/// `kwsim channel --mode`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum HandshakeMode {
    /// ECDHE-P256 (forward secret).
    Ecdhe,
    /// RSA transport of the pre-master.
    Rsa,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make devices and print their manufacturing manifest.
    Make {
        /// How many devices.
        #[arg(long)]
        count: u64,
        /// Key pair kind.
        #[arg(long, value_enum, default_value = "p256")]
        key: KeyKind,
        /// Id of the first device (16 hex digits); the others follow it.
        #[arg(long, value_name = "HEX16", default_value = "F000000000000001")]
        first_id: String,
        /// Write the manifest here instead of stdout.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
    },
    /// Sign a genuine-device challenge; prints the base64 DER signature.
    SignChallenge {
        device_id: String,
        challenge_hex: String,
    },
    /// Load an init package (JSON on stdin); prints the init/confirm body.
    LoadInit { device_id: String },
    /// Print a JSON summary of a device (no key bytes).
    Show { device_id: String },
    /// Log in to the public listener as the device (mutual TLS).
    Login {
        device_id: String,
        #[command(flatten)]
        online: OnlineArgs,
        /// Answer the challenge wrongly.
        #[arg(long)]
        wrong_response: bool,
        /// Log in this many times in a row.
        #[arg(long, default_value_t = 1)]
        times: u32,
        /// After a successful login, send this transaction message with its
        /// CMAC (CMAC-TDES or CMAC-AES by the issuer's family) over the
        /// session and print the server's verdict.
        #[arg(long, value_name = "TEXT")]
        transaction: Option<String>,
    },
    /// Log in and load the device's e-purse (made at the first load).
    Load {
        device_id: String,
        #[command(flatten)]
        online: OnlineArgs,
        /// Minor units to load.
        #[arg(long)]
        amount: u64,
        /// The customer id the purse loads for (first load only).
        #[arg(long)]
        customer: Option<String>,
        /// The account the purse loads from (first load only).
        #[arg(long)]
        account: Option<String>,
        /// ISO 4217 alphabetic code (first load only).
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// Do not load: report a failure with this reason (1..=255).
        #[arg(long, value_name = "REASON", value_parser = clap::value_parser!(u8).range(1..),
              conflicts_with_all = ["lose_report", "no_apply"])]
        fail: Option<u8>,
        /// Load, but never send the report (it is lost).
        #[arg(long, conflicts_with = "no_apply")]
        lose_report: bool,
        /// Take the permit, but neither load nor report.
        #[arg(long)]
        no_apply: bool,
    },
    /// Open a secure channel as the card, relayed by a terminal, and carry
    /// a ping, a login and a transaction through it.
    Channel {
        device_id: String,
        #[command(flatten)]
        args: ChannelArgs,
    },
    /// Print the device's purse (the account number masked).
    Purse { device_id: String },
    /// Submit a transaction, read its code from the file sender's output,
    /// sign `tx ‖ code` and confirm it.
    Confirm {
        device_id: String,
        #[arg(long)]
        issuer: String,
        /// Public listener URL.
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
        /// CA certificate(s) the server's TLS certificate chains to (PEM).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The device certificate and its chain (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The file sender's output (`[outbox.file] path`).
        #[arg(long, value_name = "FILE")]
        outbox: PathBuf,
        /// The transaction the PC submits (JSON).
        #[arg(long, value_name = "FILE")]
        transaction: PathBuf,
        /// The transaction the device is handed to sign, if the PC altered
        /// it.
        #[arg(long, value_name = "FILE")]
        device_sees: Option<PathBuf>,
        /// Type one digit of the code wrong.
        #[arg(long)]
        wrong_code: bool,
    },
    /// Write a MAC batch (the CSV `kwctl mac verify` reads) of COUNT
    /// transactions this device MACs with its current TAK, every tenth with
    /// a wrong MAC.
    Macs {
        device_id: String,
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Corrupt the device's TMK for an issuer (its next key update mismatches).
    Tamper {
        device_id: String,
        #[arg(long)]
        issuer: String,
    },
    /// Print a manifest row for VICTIM with a CSR signed by SIGNER's key.
    ForgeCsr {
        #[arg(long, value_name = "ID")]
        signer: String,
        #[arg(long, value_name = "ID")]
        victim: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "kwsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn device_id(s: &str) -> Result<DeviceId> {
    s.parse()
        .with_context(|| format!("bad device id {s:?} (16 hex digits)"))
}

/// Writes `text` and a newline to stdout.
fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{text}")
        .and_then(|()| o.flush())
        .context("writing to stdout")
}

fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "kwsim: {text}");
}

/// How `kwsim login` runs.
struct LoginRun {
    wrong_response: bool,
    times: u32,
    transaction: Option<String>,
}

/// A device at the public listener: its terminal (mutual TLS with its own
/// key and certificate) and the Keyward root.
struct Contact {
    dir: PathBuf,
    dev: SimDevice,
    issuer: String,
    term: Terminal,
    root_pem: String,
    runtime: tokio::runtime::Runtime,
}

impl Contact {
    fn open(dir: &Path, id: DeviceId, o: &OnlineArgs) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let dev = SimDevice::load(dir, id)?;
        let root_pem = read(&o.ca)?;
        let term = Terminal::new(&o.server, &root_pem, &read(&o.cert)?, &dev)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            dir: dir.to_owned(),
            dev,
            issuer: o.issuer.clone(),
            term,
            root_pem,
            runtime,
        })
    }

    /// One login; prints the server's answer (without the session token).
    /// The session token when it was accepted.
    fn login(&mut self, wrong_response: bool) -> Result<Option<String>> {
        let outcome = self.runtime.block_on(terminal::login(
            &self.term,
            &mut self.dev,
            &self.issuer,
            LoginOptions { wrong_response },
        ))?;
        self.dev.save(&self.dir)?;
        if outcome.keys_matched == Some(false) {
            warn("the offered working keys do not match this device's TMK (KCV mismatch)");
        }
        let mut shown = outcome.finish.body.clone();
        if let Some(o) = shown.as_object_mut() {
            o.remove("session_token");
            o.insert("step".into(), json!("login"));
            o.insert("status".into(), json!(outcome.finish.status.as_u16()));
            o.insert(
                "offered_version".into(),
                json!(outcome.challenge.key_update.as_ref().map(|u| u.version)),
            );
        }
        out(&shown.to_string())?;
        if !outcome.finish.status.is_success() {
            return Ok(None);
        }
        Ok(Some(outcome.answer()?.session_token))
    }

    fn post(&self, path: &str, body: &Value, token: &str) -> Result<Reply> {
        self.runtime.block_on(
            self.term
                .call(hyper::Method::POST, path, Some(body), Some(token)),
        )
    }

    /// Sends the purse's signed status (its sequence number saved first)
    /// and prints what it settled. Whether the server took it.
    fn status(&self, purse: &mut Purse, token: &str) -> Result<bool> {
        let signed = purse.status(&self.dev)?;
        purse.save(&self.dir)?;
        let r = self.post("/v1/loads/status", &signed.body, token)?;
        step("status", &r, json!({ "settled": r.body["settled"] }))?;
        Ok(r.status.is_success())
    }
}

/// Prints one step of a load: its name, the HTTP status, then `fields`
/// (or a refusal's code).
fn step(name: &str, r: &Reply, fields: Value) -> Result<()> {
    let mut line = json!({ "step": name, "status": r.status.as_u16() });
    if r.status.is_success() {
        if let (Some(l), Value::Object(f)) = (line.as_object_mut(), fields) {
            l.extend(f);
        }
    } else {
        line["code"] = json!(r.code());
    }
    out(&line.to_string())
}

/// What the purse does with a checked permit (the faults `kwsim load`
/// simulates).
#[derive(Debug, Clone, Copy)]
enum Handling {
    /// Loads it and reports.
    Report,
    /// Does not load it, and reports a failure with this reason.
    Fail(u8),
    /// Loads it; the report is lost on its way.
    LoseReport,
    /// Neither loads nor reports.
    NoApply,
}

/// `kwsim login`: see the module docs. Whether the last login (or what
/// followed it) was refused.
fn login(dir: &Path, id: DeviceId, online: &OnlineArgs, run: &LoginRun) -> Result<bool> {
    let mut c = Contact::open(dir, id, online)?;
    let issuer = online.issuer.as_str();
    let mut refused = false;
    for _ in 0..run.times.max(1) {
        let Some(token) = c.login(run.wrong_response)? else {
            refused = true;
            continue;
        };
        refused = false;
        // The purse's status at every contact: it settles a lost report.
        if let Some(mut purse) = Purse::open(dir, id)? {
            refused = !c.status(&mut purse, &token)?;
        }
        if let Some(text) = &run.transaction {
            let body = terminal::transaction_body(&c.dev, issuer, text)?;
            let reply = c.post("/v1/transactions", &body, &token)?;
            out(&reply.body.to_string())?;
            refused |= !reply.status.is_success() || reply.body["result"] != "valid";
        }
    }
    Ok(refused)
}

/// `kwsim channel`: see the module docs. Whether a step was refused.
fn channel(dir: &Path, id: DeviceId, a: &ChannelArgs) -> Result<bool> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let o = &a.online;
    let mut card = SimDevice::load(dir, id)?;
    let root_pem = read(&o.ca)?;
    let card_chain = read(&o.cert)?;
    let card_cert = rustls::pki_types::CertificateDer::pem_slice_iter(card_chain.as_bytes())
        .next()
        .context("no card certificate given")??
        .to_vec();
    // The terminal relays with its own certificate; the card's is only
    // ever in the key exchange.
    let (relay, relay_chain) = match (&a.terminal, &a.terminal_cert) {
        (Some(t), Some(chain)) => (SimDevice::load(dir, device_id(t)?)?, read(chain)?),
        _ => (SimDevice::load(dir, id)?, card_chain.clone()),
    };
    let term = Terminal::new(&o.server, &root_pem, &relay_chain, &relay)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let conn = term.connect().await?;
        let mode = match a.mode {
            HandshakeMode::Ecdhe => Mode::EcdheP256,
            HandshakeMode::Rsa => Mode::RsaTransport,
        };
        let opened = Carrier::open_offering(conn, &card, &card_cert, &root_pem, &[mode]).await?;
        let mut c = match opened {
            Ok(c) => c,
            Err(r) => {
                step("handshake", &r, json!({}))?;
                return Ok(true);
            }
        };
        let id = c.channel.id.to_string();
        let mode = match c.mode {
            Mode::EcdheP256 => "ecdhe",
            _ => "rsa",
        };
        out(
            &json!({"step": "handshake", "status": 200, "channel_id": id, "mode": mode})
                .to_string(),
        )?;
        let mut refused = !ping(&mut c, "ping").await?;
        for path in &a.carry {
            let r = c.request(hyper::Method::GET, path, None, None).await?;
            // A probe: its refusal is the answer looked for.
            step("carry", &r, json!({ "path": path }))?;
        }
        let mut token = None;
        if !a.no_login {
            let outcome =
                terminal::login_over(&mut c, &mut card, &o.issuer, LoginOptions::default()).await?;
            card.save(dir)?;
            let offered = outcome.challenge.key_update.as_ref().map(|u| u.version);
            step(
                "login",
                &outcome.finish,
                json!({ "offered_version": offered }),
            )?;
            if outcome.finish.status.is_success() {
                token = Some(outcome.answer()?.session_token);
            } else {
                refused = true;
            }
        }
        if let Some(url) = &a.continue_on {
            c.conn = Terminal::new(url, &root_pem, &relay_chain, &relay)?
                .connect()
                .await?;
        }
        if let (Some(text), Some(token)) = (&a.transaction, &token) {
            let body = terminal::transaction_body(&card, &o.issuer, text)?;
            let r = c
                .request(
                    hyper::Method::POST,
                    "/v1/transactions",
                    Some(&body),
                    Some(token),
                )
                .await?;
            step("transaction", &r, json!({ "result": r.body["result"] }))?;
            refused |= !r.status.is_success() || r.body["result"] != "valid";
        }
        c.update_key().await?;
        let (generation, _) = c.channel.send_state();
        out(&json!({"step": "key_update", "generation": generation}).to_string())?;
        refused |= !ping(&mut c, "ping").await?;
        // The record the card would send next, were the channel not closed.
        let mut ghost = c.channel.clone();
        ghost.seal(b"{}")?;
        let closed = c.close().await?;
        out(&json!({"step": "close", "closed": closed}).to_string())?;
        refused |= !closed;
        if a.after_close {
            let record = ghost.seal(&ghost.carried("GET", "/v1/ping", None, None))?;
            let r = c.send(&record[0]).await?;
            step("after_close", &r, json!({}))?;
        }
        if let Some(url) = &a.resume_on {
            let conn = Terminal::new(url, &root_pem, &relay_chain, &relay)?
                .connect()
                .await?;
            match Carrier::resume(conn, &c.ticket).await? {
                Ok(mut resumed) => {
                    let id = resumed.channel.id.to_string();
                    out(&json!({"step": "resume", "status": 200, "channel_id": id}).to_string())?;
                    refused |= !ping(&mut resumed, "resumed_ping").await?;
                }
                Err(r) => {
                    step("resume", &r, json!({}))?;
                    refused = true;
                }
            }
        }
        Ok(refused)
    })
}

/// A carried `GET /v1/ping`, printed with the identity the server saw.
/// Whether it was answered.
async fn ping(c: &mut Carrier, name: &str) -> Result<bool> {
    let r = c
        .request(hyper::Method::GET, "/v1/ping", None, None)
        .await?;
    let client = &r.body["client"];
    step(
        name,
        &r,
        json!({"kind": client["kind"], "device_id": client["device_id"]}),
    )?;
    Ok(r.status.is_success())
}

/// The purse `kwsim load` uses: the device's, or a new one from the
/// first load's flags.
fn purse_for(
    dir: &Path,
    id: DeviceId,
    customer: Option<&str>,
    account: Option<&str>,
    currency: &str,
) -> Result<Purse> {
    match Purse::open(dir, id)? {
        Some(p) => {
            ensure!(
                customer.is_none_or(|c| c == p.customer) && account.is_none_or(|a| a == p.account),
                "the device's purse is for another customer or account"
            );
            Ok(p)
        }
        None => {
            let (Some(customer), Some(account)) = (customer, account) else {
                bail!("device {id} has no purse yet: give --customer and --account");
            };
            Ok(Purse::new(id, customer, account, currency))
        }
    }
}

/// `kwsim load`: see the module docs. Whether a step was refused.
fn load(
    dir: &Path,
    id: DeviceId,
    online: &OnlineArgs,
    mut purse: Purse,
    amount: u64,
    handling: Handling,
) -> Result<bool> {
    let mut c = Contact::open(dir, id, online)?;
    let Some(token) = c.login(false)? else {
        return Ok(true);
    };
    if !c.status(&mut purse, &token)? {
        return Ok(true);
    }
    let request = purse.request(&c.dev, amount)?;
    // The sequence number is spent once sent: kept before sending.
    purse.save(dir)?;
    let r = c.post("/v1/loads", &request.body, &token)?;
    if !r.status.is_success() {
        step("permit", &r, json!({}))?;
        return Ok(true);
    }
    let permit = purse
        .check_permit(&r.body, &c.root_pem)
        .context("the permit is refused")?;
    let load_id = hex::encode(permit.load);
    ensure!(
        r.body["load_id"] == load_id.as_str(),
        "the answer's load id is not the permit's"
    );
    step(
        "permit",
        &r,
        json!({ "load_id": load_id, "amount_minor": permit.amount.minor_units(),
                "account_balance_after_minor": r.body["balance_after_minor"] }),
    )?;
    let report = match handling {
        Handling::Report | Handling::LoseReport => Some(purse.apply(&c.dev, &permit)?),
        Handling::Fail(reason) => Some(purse.fail(&c.dev, &permit, reason)?),
        Handling::NoApply => None,
    };
    // A purse never forgets a load it applied, whatever becomes of the
    // report.
    purse.save(dir)?;
    let refused = match (report, handling) {
        (Some(report), Handling::Report | Handling::Fail(_)) => {
            let path = format!("/v1/loads/{load_id}/report");
            let r = c.post(&path, &report.body, &token)?;
            step(
                "report",
                &r,
                json!({ "load_id": load_id, "state": r.body["state"] }),
            )?;
            !r.status.is_success()
        }
        (_, why) => {
            let why = match why {
                Handling::NoApply => "not_applied",
                _ => "lost",
            };
            out(
                &json!({ "step": "report", "sent": false, "why": why, "load_id": load_id })
                    .to_string(),
            )?;
            false
        }
    };
    out(&purse_line(&purse).to_string())?;
    Ok(refused)
}

/// The purse as `kwsim` shows it: the account number masked.
fn purse_line(p: &Purse) -> Value {
    let tail = p
        .account
        .get(p.account.len().saturating_sub(4)..)
        .unwrap_or("");
    json!({
        "step": "purse",
        "device_id": p.device,
        "customer_id": p.customer,
        "account": format!("****{tail}"),
        "currency": p.currency,
        "balance_minor": p.balance,
        "sequence": p.sequence,
        "last_applied": p.last_applied,
    })
}

/// How `kwsim confirm` runs.
struct ConfirmRun {
    issuer: String,
    server: String,
    ca: PathBuf,
    cert: PathBuf,
    outbox: PathBuf,
    transaction: PathBuf,
    device_sees: Option<PathBuf>,
    wrong_code: bool,
}

/// `kwsim confirm`: see the module docs. Whether it was refused.
fn confirm(dir: &Path, id: DeviceId, run: &ConfirmRun) -> Result<bool> {
    use keyward_protocol::confirmation::Code;
    use keyward_tests::terminal::{self, LoginOptions, Terminal};
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let json = |p: &Path| -> Result<serde_json::Value> {
        serde_json::from_str(&read(p)?).with_context(|| format!("{} is not JSON", p.display()))
    };
    let submitted = json(&run.transaction)?;
    let signed = match &run.device_sees {
        Some(p) => json(p)?,
        None => submitted.clone(),
    };
    let mut dev = SimDevice::load(dir, id)?;
    let term = Terminal::new(&run.server, &read(&run.ca)?, &read(&run.cert)?, &dev)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let login = runtime.block_on(terminal::login(
        &term,
        &mut dev,
        &run.issuer,
        LoginOptions::default(),
    ))?;
    dev.save(dir)?;
    let token = login.answer()?.session_token;
    // Messages the file sender writes from now on are this submit's.
    let before = std::fs::metadata(&run.outbox).map_or(0, |m| m.len());
    let sub = runtime.block_on(term.call(
        hyper::Method::POST,
        "/v1/confirmations",
        Some(&submitted),
        Some(&token),
    ))?;
    out(&json!({"submit": sub.status.as_u16(), "answer": sub.body}).to_string())?;
    if !sub.status.is_success() {
        return Ok(true);
    }
    let cid = sub.body["confirmation_id"]
        .as_str()
        .context("no confirmation id")?
        .to_owned();
    let text = code_message(&run.outbox, before)?;
    let shown = text.lines().next().unwrap_or_default();
    out(&json!({ "shown": shown }).to_string())?;
    // The last line is `@origin #12345678`: the code a phone offers.
    let digits = text
        .lines()
        .last()
        .and_then(|l| l.rsplit_once('#'))
        .map(|(_, c)| c.trim().to_owned())
        .context("the message has no `@origin #code` line")?;
    let mut typed = digits.into_bytes();
    if run.wrong_code {
        typed[0] = if typed[0] == b'9' { b'0' } else { typed[0] + 1 };
    }
    let typed = String::from_utf8(typed).context("the code is not ASCII")?;
    let code = Code::parse(&typed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = serde_json::to_vec(&signed)?;
    let sig = dev.sign_confirmation(&bytes, &code);
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({"transaction": b64.encode(&bytes), "code": code.as_str(),
                      "signature": b64.encode(sig)});
    let reply = runtime.block_on(term.call(
        hyper::Method::POST,
        &format!("/v1/confirmations/{cid}/confirm"),
        Some(&body),
        Some(&token),
    ))?;
    out(&json!({"confirm": reply.status.as_u16(), "answer": reply.body}).to_string())?;
    Ok(!reply.status.is_success())
}

/// The text of the first code message the file sender appended to `path`
/// past byte `from`, waiting up to 10 s for the outbox to deliver it.
fn code_message(path: &Path, from: u64) -> Result<String> {
    for _ in 0..100 {
        let all = std::fs::read(path).unwrap_or_default();
        let fresh = all
            .get(usize::try_from(from).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        for line in String::from_utf8_lossy(fresh).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["topic"] != "confirmation.code" {
                continue;
            }
            let payload: serde_json::Value =
                serde_json::from_str(v["payload"].as_str().unwrap_or_default())?;
            if let Some(text) = payload["text"].as_str() {
                return Ok(text.to_owned());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("no code message in {} within 10 s", path.display())
}

fn run(cli: Cli) -> Result<()> {
    let dir = cli.state.as_path();
    match cli.cmd {
        Cmd::Make {
            count,
            key,
            first_id,
            manifest,
        } => make(dir, count, key, &first_id, manifest.as_deref()),
        Cmd::SignChallenge {
            device_id: id,
            challenge_hex,
        } => {
            let dev = SimDevice::load(dir, device_id(&id)?)?;
            let challenge = hex::decode(challenge_hex.trim())
                .context("the challenge is not hex (an even number of hex digits)")?;
            ensure!(!challenge.is_empty(), "the challenge is empty");
            ensure!(
                challenge.len() <= MAX_CHALLENGE_BYTES,
                "the challenge is longer than {MAX_CHALLENGE_BYTES} bytes"
            );
            let sig = dev.sign_challenge(&challenge);
            out(&base64::engine::general_purpose::STANDARD.encode(sig))
        }
        Cmd::LoadInit { device_id: id } => load_init(dir, device_id(&id)?),
        Cmd::Show { device_id: id } => show(dir, device_id(&id)?),
        Cmd::Login {
            device_id: id,
            online,
            wrong_response,
            times,
            transaction,
        } => {
            let id = device_id(&id)?;
            let opts = LoginRun {
                wrong_response,
                times,
                transaction,
            };
            if login(dir, id, &online, &opts)? {
                // The refusal is on stdout; 1 tells a script it was one.
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Load {
            device_id: id,
            online,
            amount,
            customer,
            account,
            currency,
            fail,
            lose_report,
            no_apply,
        } => {
            let id = device_id(&id)?;
            let purse = purse_for(dir, id, customer.as_deref(), account.as_deref(), &currency)?;
            let handling = match (fail, lose_report, no_apply) {
                (Some(reason), _, _) => Handling::Fail(reason),
                (_, true, _) => Handling::LoseReport,
                (_, _, true) => Handling::NoApply,
                _ => Handling::Report,
            };
            if load(dir, id, &online, purse, amount, handling)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Confirm {
            device_id: id,
            issuer,
            server,
            ca,
            cert,
            outbox,
            transaction,
            device_sees,
            wrong_code,
        } => {
            let run = ConfirmRun {
                issuer,
                server,
                ca,
                cert,
                outbox,
                transaction,
                device_sees,
                wrong_code,
            };
            if confirm(dir, device_id(&id)?, &run)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Channel {
            device_id: id,
            args,
        } => {
            let id = device_id(&id)?;
            if channel(dir, id, &args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Purse { device_id: id } => {
            let id = device_id(&id)?;
            let purse =
                Purse::open(dir, id)?.with_context(|| format!("device {id} has no purse"))?;
            let mut shown = purse_line(&purse);
            if let Some(o) = shown.as_object_mut() {
                o.remove("step");
            }
            out(&serde_json::to_string_pretty(&shown)?)
        }
        Cmd::Macs {
            device_id: id,
            issuer,
            count,
            out: path,
        } => {
            let dev = SimDevice::load(dir, device_id(&id)?)?;
            let version = dev
                .key_version(&issuer)
                .context("no working keys: log in first")?;
            let algorithm = match dev.held_keys().iter().find(|k| k.issuer == issuer) {
                Some(k) if k.family == keyward_kms::types::KeyFamily::Aes => "CMAC-AES",
                _ => "CMAC-TDES",
            };
            let mut text = String::from(
                "device_id,issuer_id,key_version,algorithm,padding,message_hex,mac_hex\n",
            );
            for i in 0..count {
                let msg = format!("0200|{}|{:012}", dev.id, u64::from(i) * 100);
                let mut mac = dev.mac(&issuer, algorithm, None, msg.as_bytes(), 8)?;
                if i % 10 == 9 {
                    mac[0] ^= 0x01;
                }
                text.push_str(&format!(
                    "{},{issuer},{version},{algorithm},,{},{}\n",
                    dev.id,
                    hex::encode_upper(msg.as_bytes()),
                    hex::encode_upper(mac)
                ));
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        Cmd::Tamper {
            device_id: id,
            issuer,
        } => {
            let mut dev = SimDevice::load(dir, device_id(&id)?)?;
            dev.tamper_tmk(&issuer)?;
            dev.save(dir)?;
            warn(&format!("device {id}: TMK for {issuer} corrupted"));
            Ok(())
        }
        Cmd::ForgeCsr { signer, victim } => {
            let (signer, victim) = (device_id(&signer)?, device_id(&victim)?);
            ensure!(signer != victim, "the signer and the victim must differ");
            let signer = SimDevice::load(dir, signer)?;
            let victim = SimDevice::load(dir, victim)?;
            let csr = forged_csr(&signer, &victim)?;
            out(&victim.manifest_row_with_csr(&csr))
        }
    }
}

fn make(
    dir: &Path,
    count: u64,
    key: KeyKind,
    first_id: &str,
    manifest: Option<&Path>,
) -> Result<()> {
    ensure!(
        (1..=MAX_COUNT).contains(&count),
        "--count must be 1 to {MAX_COUNT}"
    );
    let first = u64::from_be_bytes(device_id(first_id)?.bytes());
    let ids: Vec<DeviceId> = (0..count)
        .map(|i| {
            first
                .checked_add(i)
                .map(|n| DeviceId::from_bytes(n.to_be_bytes()))
        })
        .collect::<Option<_>>()
        .context("the device ids run past FFFFFFFFFFFFFFFF")?;
    for id in &ids {
        let path = SimDevice::state_path(dir, *id);
        if path.exists() {
            bail!("device {id} already exists ({})", path.display());
        }
    }
    let mut text = String::from(MANIFEST_HEADER);
    text.push('\n');
    for id in &ids {
        let mut dev = match key {
            KeyKind::P256 => SimDevice::p256(*id),
            KeyKind::Rsa => SimDevice::rsa(*id),
        }
        .with_context(|| format!("making device {id}"))?;
        let tail = &id.to_string()[8..];
        dev.psam = Some(format!("PSAM{tail}"));
        dev.esam = Some(format!("ESAM{tail}"));
        dev.model = "KW-SIM-1".into();
        dev.firmware = "1.0.0".into();
        dev.save(dir)
            .with_context(|| format!("saving device {id}"))?;
        text.push_str(&dev.manifest_row());
        text.push('\n');
    }
    match manifest {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("writing the manifest to {}", path.display()))?,
        None => {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())
                .and_then(|()| o.flush())
                .context("writing to stdout")?;
        }
    }
    let (lo, hi) = (ids.first(), ids.last());
    if let (Some(lo), Some(hi)) = (lo, hi) {
        warn(&format!(
            "made {count} {} device(s) {lo}..{hi} in {}",
            match key {
                KeyKind::P256 => "p256",
                KeyKind::Rsa => "rsa",
            },
            dir.display()
        ));
    }
    Ok(())
}

fn load_init(dir: &Path, id: DeviceId) -> Result<()> {
    let mut text = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_PACKAGE_BYTES + 1)
        .read_to_end(&mut text)
        .context("reading the init package from stdin")?;
    ensure!(
        text.len() as u64 <= MAX_PACKAGE_BYTES,
        "the init package is larger than {MAX_PACKAGE_BYTES} bytes"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&text).context("the init package is not JSON")?;
    let pkg = wire::init_package_from_json(&v)?;
    ensure!(
        pkg.device == id,
        "the init package is for device {}, not {id}",
        pkg.device
    );
    let mut dev = SimDevice::load(dir, id)?;
    let answer = dev
        .load_init_package(&pkg)
        .context("opening the init package")?;
    if answer.accepted {
        dev.save(dir)
            .with_context(|| format!("saving device {id}"))?;
    } else {
        warn(&format!(
            "warning: device {id} refused the {} keys: a KCV does not match the package (keys not kept)",
            pkg.issuer
        ));
    }
    out(&serde_json::to_string(&wire::confirm_body(
        pkg.issuer.as_str(),
        &answer,
    ))?)
}

fn show(dir: &Path, id: DeviceId) -> Result<()> {
    let dev = SimDevice::load(dir, id)?;
    let issuers: Vec<_> = dev
        .held_keys()
        .iter()
        .map(|h| {
            json!({
                "issuer_id": h.issuer,
                "family": h.family.as_str(),
                "kcvs": h.kcvs.iter().map(|(name, kcv)| json!({
                    "name": name, "method": kcv.method.as_str(), "value": kcv.hex(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let summary = json!({
        "device_id": dev.id.to_string(),
        "key_kind": dev.key_kind(),
        "psam_serial": dev.psam,
        "esam_serial": dev.esam,
        "model": dev.model,
        "firmware": dev.firmware,
        "issuers": issuers,
    });
    out(&serde_json::to_string_pretty(&summary)?)
}
