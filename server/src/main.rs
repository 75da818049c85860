//! `keyward`: the Keyward server binary.
//!
//! # Layout
//! - [`cli`]: the commands (`check`, `init`, `serve`, `issuer`, `audit verify`).
//! - [`bootstrap`]: opening HSM, database and CA; `init` (TLS key and
//!   certificate, first admin operator).
//! - [`serve`]: the two TLS listeners, connection handling, graceful shutdown.
//! - [`tls`]: the HSM-backed rustls key, client verification with CRLs,
//!   config hot swap; [`pki`]: server certificate checks and CRL refresh.
//! - [`http`]: middleware stack, error mapping, the public (device) routes.
//! - [`admin`]: health, metrics and the admin API (operator roles).
//! - [`identity`]: the client certificate seen on a connection.
//! - [`audit`]: the hash-chained audit trail; [`migrate`]: its schema.
//! - [`metrics`]: the Prometheus registry.
//! - [`state`]: what handlers share.
//!
//! Must not: hold a server or CA private key outside the HSM; send an
//! internal error's detail to a client; perform a security operation whose
//! audit record could not be written.

use std::process::ExitCode;

use clap::Parser;
use keyward_config::{Config, LogFormat};

mod admin;
mod audit;
mod bootstrap;
mod cli;
mod http;
mod identity;
mod metrics;
mod migrate;
mod pki;
mod serve;
mod state;
mod tls;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyward: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keyward: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::run(cli, config));
    drop(runtime);
    bootstrap::close_hsm();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("keyward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
