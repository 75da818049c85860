//! Loading, overrides, redaction and validation of whole files.

use super::*;

const MINIMAL: &str = r#"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyward"
pin_env = "KW_PIN"
"#;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_parts(
        text,
        Path::new("/etc/keyward/keyward.toml"),
        &env,
        Path::new("/etc/keyward"),
    )
}

#[test]
fn defaults_resolve_against_the_config_dir() -> Result<(), ConfigError> {
    let c = parse(MINIMAL, &[])?;
    assert_eq!(c.data_dir, Path::new("/etc/keyward/var"));
    assert_eq!(c.database.url, "sqlite:///etc/keyward/var/keyward.db");
    assert_eq!(c.database.kind(), DatabaseKind::Sqlite);
    assert_eq!(c.hsm.sessions, 2);
    let up = parse(
        &MINIMAL.replace("[hsm]", "data_dir = \"../var\"\n[hsm]"),
        &[],
    )?;
    assert_eq!(up.database.url, "sqlite:///etc/var/keyward.db");
    Ok(())
}

#[test]
fn env_overrides_typed_values() -> Result<(), ConfigError> {
    let c = parse(
        MINIMAL,
        &[
            ("KEYWARD__HSM__SESSIONS", "4"),
            ("KEYWARD__DATABASE__URL", "postgres://u:p@127.0.0.1/db"),
            ("KEYWARD__HSM__MECHANISMS__DES3_RETAIL_MAC", "0x80000150"),
        ],
    )?;
    assert_eq!(c.hsm.sessions, 4);
    assert_eq!(c.database.kind(), DatabaseKind::Postgres);
    assert_eq!(c.hsm.mechanisms.des3_retail_mac, Some(0x8000_0150));
    Ok(())
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\nsesions = 3\n"), &[])
        .map(|_| ())
        .err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("sesions"), "{msg}");
}

#[test]
fn wrong_type_names_key_not_value() {
    let text = MINIMAL.replace(
        "token_label = \"keyward\"",
        "token_label = \"keyward\"\nsessions = \"s3cr3t-1234\"",
    );
    let msg = parse(&text, &[])
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("hsm.sessions"), "{msg}");
    assert!(!msg.contains("s3cr3t"), "{msg}");
}

#[test]
fn inline_pin_is_refused_and_not_echoed() {
    let text = MINIMAL.replace("pin_env = \"KW_PIN\"", "pin = \"987654\"");
    let msg = parse(&text, &[])
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("pin"), "{msg}");
    assert!(!msg.contains("987654"), "{msg}");
}

#[test]
fn exactly_one_pin_source() {
    let text = MINIMAL.replace("pin_env = \"KW_PIN\"", "");
    let msg = parse(&text, &[])
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("hsm.pin_file"), "{msg}");
}

#[test]
fn bad_database_scheme() {
    let msg = parse(MINIMAL, &[("KEYWARD__DATABASE__URL", "mysql://x")])
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("database.url"), "{msg}");
    assert!(!msg.contains("mysql://x"), "{msg}");
}

#[test]
fn ca_key_algorithm_is_typed_at_load() -> Result<(), ConfigError> {
    assert_eq!(parse(MINIMAL, &[])?.ca.key_algorithm, CaKeyAlgorithm::P256);
    let rsa = parse(
        &format!("{MINIMAL}\n[ca]\nkey_algorithm = \"rsa3072\"\n"),
        &[],
    )?;
    assert_eq!(rsa.ca.key_algorithm, CaKeyAlgorithm::Rsa3072);
    let env = parse(MINIMAL, &[("KEYWARD__CA__KEY_ALGORITHM", "rsa3072")])?;
    assert_eq!(env.ca.key_algorithm, CaKeyAlgorithm::Rsa3072);
    // A bad value is refused by the load (before any HSM is opened),
    // naming the key and the choices, never the value.
    let msg = parse(
        &format!("{MINIMAL}\n[ca]\nkey_algorithm = \"s3cr3t-ed25519\"\n"),
        &[],
    )
    .map(|_| ())
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.contains("ca.key_algorithm"), "{msg}");
    assert!(msg.contains("p256") && msg.contains("rsa3072"), "{msg}");
    assert!(!msg.contains("s3cr3t"), "{msg}");
    Ok(())
}

#[test]
fn pin_from_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234\n")?;
    let text = MINIMAL.replace("pin_env = \"KW_PIN\"", &format!("pin_file = {:?}", pin));
    let c = parse(&text, &[])?;
    use secrecy::ExposeSecret;
    assert_eq!(c.hsm.pin()?.expose_secret(), "1234");
    Ok(())
}

/// The slow-client and OCSP limits have defaults and refuse 0.
#[test]
fn traffic_limits_default_and_refuse_zero() -> Result<(), ConfigError> {
    let c = parse(MINIMAL, &[])?;
    assert_eq!(c.server.ocsp_max_concurrent_requests, 64);
    assert_eq!(c.server.idle_timeout_ms, 60_000);
    assert_eq!(c.server.max_connections_per_address, 128);
    for key in [
        "OCSP_MAX_CONCURRENT_REQUESTS",
        "IDLE_TIMEOUT_MS",
        "MAX_CONNECTIONS_PER_ADDRESS",
        "OCSP_SIGNATURES_PER_SECOND",
    ] {
        let var = format!("KEYWARD__SERVER__{key}");
        let msg = parse(MINIMAL, &[(var.as_str(), "0")])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(&key.to_ascii_lowercase()), "{key}: {msg}");
    }
    Ok(())
}

#[test]
fn shipped_examples_parse() -> Result<(), ConfigError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["example.toml", "dev.toml"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::from_parts(&text, &path, &BTreeMap::new(), dir)?;
    }
    Ok(())
}

#[test]
fn bulk_max_items_is_bounded_by_one_kms_call() {
    let at = crate::bulk::MAX_CALL_ITEMS.to_string();
    let over = (crate::bulk::MAX_CALL_ITEMS + 1).to_string();
    assert!(parse(MINIMAL, &[("KEYWARD__SERVER__BULK_MAX_ITEMS", at.as_str())]).is_ok());
    let msg = parse(
        MINIMAL,
        &[("KEYWARD__SERVER__BULK_MAX_ITEMS", over.as_str())],
    )
    .map(|_| ())
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(msg.contains("server.bulk_max_items"), "{msg}");
}

#[test]
fn outbox_senders_resolve_and_are_checked() -> Result<(), ConfigError> {
    let hook = |url: &str, lease: u64| {
        format!(
            "{MINIMAL}\n[outbox]\nlease_ms = {lease}\n[outbox.file]\npath = \"out.jsonl\"\n\
             [outbox.webhooks.sms]\nurl = \"{url}\"\nca_file = \"gw-ca.pem\"\n\
             secret_files = [\"gw.whsec\"]\n"
        )
    };
    let c = parse(&hook("https://gw.example:8443/v1/messages", 60_000), &[])?;
    assert_eq!(
        c.outbox.file.as_ref().map(|f| f.path.clone()),
        Some(PathBuf::from("/etc/keyward/var/out.jsonl"))
    );
    let sms = &c.outbox.webhooks["sms"];
    assert_eq!(sms.ca_file, Path::new("/etc/keyward/gw-ca.pem"));
    assert_eq!(sms.secret_files, [PathBuf::from("/etc/keyward/gw.whsec")]);

    let refused = |text: &str| {
        parse(text, &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for url in [
        "http://gw.example/v1",
        "https://",
        "https://user:pw@gw.example/",
    ] {
        let msg = refused(&hook(url, 60_000));
        assert!(msg.contains("outbox.webhooks.sms.url"), "{url}: {msg}");
        assert!(!msg.contains("pw@"), "{msg}");
    }
    // A claim shorter than a slow send would let two replicas send it.
    assert!(refused(&hook("https://gw.example/", 5_000)).contains("outbox.lease_ms"));
    assert!(
        refused(&format!(
            "{MINIMAL}\n[outbox]\nbackoff_base_ms = 5000\nbackoff_max_ms = 10"
        ))
        .contains("outbox.backoff_max_ms")
    );
    Ok(())
}

#[test]
fn outbox_smtp_needs_tls_and_a_password_file_with_a_user() -> Result<(), ConfigError> {
    let smtp = |extra: &str| {
        format!(
            "{MINIMAL}\n[outbox.smtp]\nhost = \"smtp.example\"\nport = 587\ntls = \"starttls\"\n\
             ca_file = \"smtp-ca.pem\"\nfrom = \"no-reply@bank.example\"\nsubject = \"Code\"\n{extra}"
        )
    };
    let c = parse(
        &smtp("username = \"kw\"\npassword_file = \"smtp.pw\"\n"),
        &[],
    )?;
    let s = c
        .outbox
        .smtp
        .as_ref()
        .map(|s| (s.tls, s.password_file.clone()));
    assert_eq!(
        s,
        Some((
            SmtpTls::Starttls,
            Some(PathBuf::from("/etc/keyward/smtp.pw"))
        ))
    );
    let refused = |text: &str| {
        parse(text, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(refused(&smtp("username = \"kw\"\n")).contains("outbox.smtp.password_file"));
    assert!(refused(&smtp("password = \"hunter2\"\n")).contains("unknown field"));
    assert!(!refused(&smtp("password = \"hunter2\"\n")).contains("hunter2"));
    assert!(refused(&smtp("").replace("starttls", "none")).contains("outbox.smtp.tls"));
    Ok(())
}

#[test]
fn receipt_secrets_resolve_and_are_checked() -> Result<(), ConfigError> {
    let receipts = |body: &str| format!("{MINIMAL}\n[outbox.receipts]\n{body}\n");
    let c = parse(&receipts("secret_files = [\"receipts.whsec\"]"), &[])?;
    let r = c
        .outbox
        .receipts
        .as_ref()
        .map(|r| (r.secret_files.clone(), r.window_secs));
    assert_eq!(
        r,
        Some((vec![PathBuf::from("/etc/keyward/receipts.whsec")], 300))
    );
    for (body, key) in [
        ("secret_files = []", "outbox.receipts.secret_files"),
        (
            "secret_files = [\"a\"]\nwindow_secs = 5",
            "outbox.receipts.window_secs",
        ),
        ("secret = \"whsec_inline\"", "secret"),
    ] {
        let msg = parse(&receipts(body), &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(key), "{body}: {msg}");
        assert!(!msg.contains("whsec_inline"), "{msg}");
    }
    Ok(())
}

#[test]
fn presend_check_resolves_and_is_checked() -> Result<(), ConfigError> {
    let presend = |body: &str| format!("{MINIMAL}\n[confirmation.presend]\n{body}\n");
    let c = parse(
        &presend(
            "sim_swap_url = \"https://op.example/check\"\nca_file = \"op-ca.pem\"\n\
             token_file = \"op.token\"\non_sim_swap = \"step_up\"",
        ),
        &[],
    )?;
    let p = &c.confirmation.presend;
    assert_eq!(
        p.ca_file.as_deref(),
        Some(Path::new("/etc/keyward/op-ca.pem"))
    );
    assert_eq!(
        p.token_file.as_deref(),
        Some(Path::new("/etc/keyward/op.token"))
    );
    assert_eq!((p.max_age_hours, p.contact_changed_days), (240, 0));
    for (body, key) in [
        ("on_sim_swap = \"ignore\"", "presend.on_sim_swap"),
        ("on_contact_change = \"flag\"", "presend.on_contact_change"),
        ("max_age_hours = 0", "presend.max_age_hours"),
        (
            "sim_swap_url = \"http://op.example/check\"\nca_file = \"a\"",
            "presend.sim_swap_url",
        ),
        (
            "sim_swap_url = \"https://op.example/check\"",
            "presend.ca_file",
        ),
    ] {
        let msg = parse(&presend(body), &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains(key), "{body}: {msg}");
    }
    Ok(())
}

#[test]
fn channel_padding_defaults_to_oaep_and_takes_pkcs1v15_only_by_name() -> Result<(), ConfigError> {
    assert_eq!(parse(MINIMAL, &[])?.channel.padding, ChannelPadding::Oaep);
    let c = parse(
        &format!("{MINIMAL}\n[channel]\npadding = \"pkcs1v15\"\n"),
        &[],
    )?;
    assert_eq!(c.channel.padding, ChannelPadding::Pkcs1v15);
    let c = parse(MINIMAL, &[("KEYWARD__CHANNEL__PADDING", "pkcs1v15")])?;
    assert_eq!(c.channel.padding, ChannelPadding::Pkcs1v15);
    let err = parse(&format!("{MINIMAL}\n[channel]\npadding = \"raw\"\n"), &[])
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("channel.padding"), "{err}");
    Ok(())
}

#[test]
fn channel_modes_are_typed_distinct_and_ecdhe_first_by_default() -> Result<(), ConfigError> {
    assert_eq!(
        parse(MINIMAL, &[])?.channel.modes,
        [ChannelMode::EcdheP256, ChannelMode::RsaTransport]
    );
    let rsa = parse(
        &format!("{MINIMAL}\n[channel]\nmodes = [\"rsa-transport\"]\n"),
        &[],
    )?;
    assert_eq!(rsa.channel.modes, [ChannelMode::RsaTransport]);
    for bad in [
        "[]",
        "[\"rsa-transport\", \"rsa-transport\"]",
        "[\"x25519\"]",
    ] {
        let msg = parse(&format!("{MINIMAL}\n[channel]\nmodes = {bad}\n"), &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("channel.modes"), "{bad}: {msg}");
    }
    Ok(())
}
