//! `kwctl`: the operators' command line. It talks only to Keyward's admin API
//! over mutual TLS with an operator certificate — never to the database or the
//! HSM — so every action it takes is authorised by role and audited by the
//! server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "kwctl",
    version,
    about = "Operate a Keyward server through its admin API"
)]
struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        env = "KWCTL_SERVER",
        default_value = "https://127.0.0.1:9443",
        global = true
    )]
    server: String,
    /// CA certificate (PEM) that issued the server's TLS certificate.
    #[arg(
        long,
        env = "KWCTL_CA_CERT",
        default_value = "var/operators/ca.pem",
        global = true
    )]
    ca_cert: PathBuf,
    /// Operator certificate (PEM).
    #[arg(
        long,
        env = "KWCTL_CERT",
        default_value = "var/operators/admin.pem",
        global = true
    )]
    cert: PathBuf,
    /// Operator private key (PEM).
    #[arg(
        long,
        env = "KWCTL_KEY",
        default_value = "var/operators/admin.key",
        global = true
    )]
    key: PathBuf,
    /// Output for scripts (json) or people (table).
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Json,
    Table,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the operator identity and role the server sees.
    Whoami,
    /// Certificates issued by Keyward's CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Operator (admin client) certificates.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// List certificates, newest first.
    List {
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        offset: Option<u32>,
    },
    /// Show one certificate.
    Show { serial: String },
    /// Issue a certificate for a CSR under a profile.
    Issue {
        /// PKCS#10 request (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// device, server-tls or load-permit.
        #[arg(long)]
        profile: String,
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        #[arg(long)]
        common_name: Option<String>,
        /// Write the certificate PEM here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate.
    Revoke {
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
        /// superseded, cessationOfOperation, privilegeWithdrawn.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Fetch the current CRL (PEM).
    Crl {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Certify a new operator's CSR with a role (admin only).
    Issue {
        #[arg(long)]
        csr: PathBuf,
        #[arg(long)]
        name: String,
        /// admin, operator or auditor.
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke an operator certificate.
    Revoke {
        serial: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// The newest audit records.
    List {
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Check the hash chain of the whole trail.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = &cli.command {
        clap_complete::generate(*shell, &mut Cli::command(), "kwctl", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kwctl: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kwctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One admin API call.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

fn get(path: impl Into<String>) -> Call {
    Call {
        method: "GET",
        path: path.into(),
        body: None,
    }
}

fn post(path: impl Into<String>, body: Value) -> Call {
    Call {
        method: "POST",
        path: path.into(),
        body: Some(body),
    }
}

fn read_pem(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out_file = None;
    let call = match cli.command {
        Command::Completions { .. } => return Ok(ExitCode::SUCCESS),
        Command::Whoami => get("/admin/v1/whoami"),
        Command::Ca(CaCommand::List {
            profile,
            status,
            device_id,
            limit,
            offset,
        }) => get(format!(
            "/admin/v1/ca/certificates{}",
            query(&[
                ("profile", profile),
                ("status", status),
                ("device_id", device_id),
                ("limit", limit.map(|l| l.to_string())),
                ("offset", offset.map(|o| o.to_string())),
            ])
        )),
        Command::Ca(CaCommand::Show { serial }) => {
            get(format!("/admin/v1/ca/certificates/{}", encode(&serial)))
        }
        Command::Ca(CaCommand::Issue {
            csr,
            profile,
            device_id,
            dns_names,
            common_name,
            out,
        }) => {
            out_file = out;
            post(
                "/admin/v1/ca/certificates",
                json!({
                    "csr_pem": read_pem(&csr)?,
                    "profile": profile,
                    "device_id": device_id,
                    "dns_names": dns_names,
                    "common_name": common_name,
                }),
            )
        }
        Command::Ca(CaCommand::Revoke { serial, reason })
        | Command::Operator(OperatorCommand::Revoke { serial, reason }) => post(
            format!("/admin/v1/ca/certificates/{}/revoke", encode(&serial)),
            json!({ "reason": reason }),
        ),
        Command::Ca(CaCommand::Crl { out }) => {
            out_file = out;
            get("/admin/v1/ca/crl")
        }
        Command::Operator(OperatorCommand::Issue {
            csr,
            name,
            role,
            out,
        }) => {
            out_file = out;
            post(
                "/admin/v1/operators",
                json!({ "csr_pem": read_pem(&csr)?, "name": name, "role": role }),
            )
        }
        Command::Audit(AuditCommand::List { limit }) => get(format!(
            "/admin/v1/audit{}",
            query(&[("limit", limit.map(|l| l.to_string()))])
        )),
        Command::Audit(AuditCommand::Verify) => get("/admin/v1/audit/verify"),
    };
    let client = Client::new(&cli.server, &cli.ca_cert, &cli.cert, &cli.key)?;
    let (status, body) = client.send(call).await?;
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if !status.is_success() {
        let err = value.get("error").cloned().unwrap_or(value);
        match cli.output {
            Output::Json => println!("{err}"),
            Output::Table => eprintln!(
                "kwctl: {} {}: {} (request id {})",
                status.as_u16(),
                err.get("code").and_then(Value::as_str).unwrap_or("error"),
                err.get("message").and_then(Value::as_str).unwrap_or(""),
                err.get("request_id").and_then(Value::as_str).unwrap_or("-"),
            ),
        }
        return Ok(ExitCode::FAILURE);
    }
    if let Some(path) = out_file {
        let pem = find_pem(&value).context("the response carries no PEM to write")?;
        write_file(&path, pem.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Table => print!("{}", table(&value)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The first PEM block in a response (a certificate or a CRL).
fn find_pem(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.contains("-----BEGIN") => Some(s.clone()),
        Value::Object(m) => m.values().find_map(find_pem),
        Value::Array(a) => a.iter().find_map(find_pem),
        _ => None,
    }
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// Tables for people: arrays of objects as columns, objects as key/value
/// lines, PEM and other long strings left whole.
fn table(v: &Value) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let rows = match v {
        Value::Array(a) => Some(a.as_slice()),
        Value::Object(m) => m.values().find_map(|x| match x {
            Value::Array(a) if a.iter().all(Value::is_object) && m.len() <= 2 => Some(a.as_slice()),
            _ => None,
        }),
        _ => None,
    };
    if let Some(rows) = rows {
        let mut cols: Vec<String> = Vec::new();
        for r in rows {
            if let Value::Object(m) = r {
                for k in m.keys() {
                    if !cols.contains(k) && !k.ends_with("pem") {
                        cols.push(k.clone());
                    }
                }
            }
        }
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
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |vals: &[String]| {
            vals.iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
                + "\n"
        };
        let mut out = line(&cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
        for r in &cells {
            out += &line(r);
        }
        return out;
    }
    match v {
        Value::Object(m) => {
            let w = m.keys().map(String::len).max().unwrap_or(0);
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) if s.contains('\n') => format!("{k}:\n{s}\n"),
                    other => format!("{k:<w$}  {}\n", cell(other)),
                })
                .collect()
        }
        Value::String(s) => format!("{s}\n"),
        other => format!("{other}\n"),
    }
}

/// A mutual-TLS HTTP/1.1 client for the admin API.
struct Client {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
}

impl Client {
    fn new(server: &str, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let rest = server
            .strip_prefix("https://")
            .context("--server must be an https:// URL")?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().context("bad port in --server")?),
            None => (rest.to_owned(), 443),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<_, _>>()?;
        if chain.is_empty() {
            bail!("{} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Self {
            host,
            port,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    async fn send(&self, call: Call) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = self.connector.connect(name, tcp).await.context(
            "TLS handshake with the admin API (is the operator certificate valid and not revoked?)",
        )?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let body = match &call.body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(call.method)
            .uri(&call.path)
            .header(HOST, format!("{}:{}", self.host, self.port))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
