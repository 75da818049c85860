//! Device login end to end: a terminal (the simulator, over real mutual TLS with
//! its own key and certificate) logs in to `keyward serve` on SoftHSM after
//! a provisioning through `kwctl`/`kwsim`; rotation through `kwctl key`;
//! the lockout seen in `openssl ocsp`-backed revocation; and two replicas on
//! one database and token sharing every piece of login state: a login
//! started on one is finished on the other, and failures on both count
//! towards one lockout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::station::{ACCOUNT, D1, D2, Station, code_in, confirm_body, webhook_confirmations};
use common::{Server, require_tool, stdout_json};
use keyward_kms::types::DeviceId;
use keyward_server::wire::login as wire;
use keyward_tests::terminal::{self, LoginOptions};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_logs_in_rotates_and_is_locked_out_over_mtls() {
    require_tool("openssl", "openssl");
    let s = Server::started().await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let chain = st.chain(D1);
    let chain_file = s.dir.path().join("d1.pem");
    std::fs::write(&chain_file, &chain).unwrap();

    // kwsim logs in: the first login takes and confirms the first keys.
    let login = |extra: &[&str]| {
        let mut args = vec![
            "login",
            D1,
            "--issuer",
            "bank-a",
            "--server",
            &format!("https://{}", s.public),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(
            [
                "--ca",
                s.ca_pem().to_str().unwrap(),
                "--cert",
                chain_file.to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        st.kwsim(&refs)
    };
    let out = login(&[]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let first: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["key_update"], "activated", "{first}");
    assert_eq!(first["key_version"], 1);

    // A rotation asked for with kwctl reaches the device at its next login.
    st.ok(
        "alice",
        &["key", "rotate", "--issuer", "bank-a", "--device", D1],
    );
    let pending = st.ok("alice", &["key", "pending", "--issuer", "bank-a"]);
    assert!(pending.to_string().contains(D1), "{pending}");
    let out = login(&[]);
    let second: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            second["offered_version"].clone(),
            second["key_update"].clone()
        ),
        (json!(2), json!("activated")),
        "{second}"
    );
    let keys = st.ok(
        "alice",
        &["key", "list", "--device", D1, "--issuer", "bank-a"],
    );
    assert_eq!(keys["versions"][0]["state"], "active");
    assert_eq!(keys["versions"][1]["state"], "retiring");

    // A transaction over the session: its CMAC verified in the HSM.
    let out = login(&["--transaction", "0200|6222020200112233|000000012345"]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let text = String::from_utf8(out.stdout).unwrap();
    let verdict: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(
        (verdict["result"].clone(), verdict["key_version"].clone()),
        (json!("valid"), json!(2)),
        "{text}"
    );

    // The session works over this certificate, through the real listener.
    let mut d1 = st.device(D1);
    let term = st.terminal(&s.public, &d1, &chain);
    let o = terminal::login(&term, &mut d1, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    let token = o.answer().unwrap().session_token;
    let info = term
        .call(hyper::Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(info.status, 200, "{:?}", info.body);
    // Another device's certificate with this token: refused.
    let d2 = st.device(D2);
    let term2 = st.terminal(&s.public, &d2, &st.chain(D2));
    let other = term2
        .call(hyper::Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(other.code(), "session_device_mismatch", "{:?}", other.body);

    // Ten wrong answers: locked, the certificate revoked (OCSP says so).
    let out = login(&["--wrong-response", "--times", "10"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let last = String::from_utf8(out.stdout).unwrap();
    assert!(
        last.lines().last().unwrap().contains("credential_locked"),
        "{last}"
    );
    let serial = st.ok("alice", &["device", "show", D1])["cert_serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let cert = st.ok("alice", &["ca", "show", &serial]);
    assert_eq!(cert["status"], "revoked");
    assert_eq!(cert["reason"], "privilegeWithdrawn");
    // The listener refuses the handshake's certificate from now on.
    let refused = terminal::login(&term, &mut d1, "bank-a", LoginOptions::default()).await;
    assert!(refused.is_err() || refused.unwrap().finish.status != 200);
    let unlocked = st.ok(
        "admin",
        &[
            "device", "unlock", D1, "--issuer", "bank-a", "--reason", "repaired",
        ],
    );
    assert_eq!(unlocked["recertification_required"], true);
    s.assert_log_holds_none(&[("session token", &token)]);
    let metrics = s.metrics();
    for series in [
        "keyward_logins_total{outcome=\"success\"}",
        "keyward_login_lockouts_total{issuer=\"bank-a\"}",
        "keyward_key_rotations_total{issuer=\"bank-a\",trigger=\"requested\"}",
        "keyward_login_challenges_total{event=\"issued\"}",
    ] {
        assert!(
            common::sample(&metrics, series).unwrap_or(0.0) >= 1.0,
            "{series}\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_challenges_sessions_and_the_failure_count() {
    let s = Server::started().await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "aes")]);
    let b = s.replica("b");
    let mut d = st.device(D1);
    let chain = st.chain(D1);
    let on_a = st.terminal(&s.public, &d, &chain);
    let on_b = st.terminal(&b.public, &d, &chain);

    // First login (keys) on A; then started on A, finished on B.
    terminal::login(&on_a, &mut d, "bank-a", LoginOptions::default())
        .await
        .unwrap()
        .answer()
        .unwrap();
    let c = on_a
        .post(
            "/v1/login/start",
            &serde_json::to_value(terminal::start_body(&d, "bank-a")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(c.status, 201, "{:?}", c.body);
    let c: wire::LoginChallenge = serde_json::from_value(c.body).unwrap();
    let f = serde_json::to_value(
        terminal::finish_body(&d, "bank-a", &c, None, LoginOptions::default()).unwrap(),
    )
    .unwrap();
    let done = on_b.post("/v1/login/finish", &f).await.unwrap();
    assert_eq!(done.status, 200, "{:?}", done.body);
    let token = done.body["session_token"].as_str().unwrap().to_owned();
    // The session opened on B is good on A; the challenge is gone on both.
    let seen = on_a
        .call(hyper::Method::GET, "/v1/session", None, Some(&token))
        .await
        .unwrap();
    assert_eq!(seen.status, 200, "{:?}", seen.body);
    let again = on_a.post("/v1/login/finish", &f).await.unwrap();
    assert_eq!(again.code(), "challenge_invalid");

    // Failures alternate between the replicas and lock at ten in all.
    let wrong = LoginOptions {
        wrong_response: true,
    };
    for i in 0..10 {
        let term = if i % 2 == 0 { &on_a } else { &on_b };
        let o = terminal::login(term, &mut d, "bank-a", wrong)
            .await
            .unwrap();
        let want = if i == 9 {
            "credential_locked"
        } else {
            "response_invalid"
        };
        assert_eq!(o.finish.code(), want, "failure {i}: {:?}", o.finish.body);
    }
    let cred = st.ok("alice", &["device", "credential", D1, "--issuer", "bank-a"]);
    assert_eq!(
        (cred["failures"].clone(), cred["locked"].clone()),
        (json!(10), json!(true))
    );
    drop(b);
}

/// Bulk MAC verification end to end: a terminal takes its keys by logging in with
/// kwsim; the transaction switch gets a `service` certificate with `kwctl
/// service issue`, and `kwctl mac verify --file` as the switch (over real
/// mutual TLS on the admin listener) checks MACs the simulator computed, from
/// CSV, JSON and binary files; a 10 000-item file shows the throughput.
#[tokio::test(flavor = "multi_thread")]
async fn a_switch_verifies_a_terminals_macs_with_kwctl() {
    use base64::Engine;
    use keyward_server::wire::macs;
    require_tool("openssl", "openssl");
    let s = Server::started().await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let chain_file = s.dir.path().join("d1.pem");
    std::fs::write(&chain_file, st.chain(D1)).unwrap();
    let out = st.kwsim(&[
        "login",
        D1,
        "--issuer",
        "bank-a",
        "--server",
        &format!("https://{}", s.public),
        "--ca",
        s.ca_pem().to_str().unwrap(),
        "--cert",
        chain_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let d1 = st.device(D1);
    let v = d1.key_version("bank-a").unwrap();

    // The switch's certificate, from its own key.
    let (_, csr) = s.openssl_csr("switch-1");
    let csr_path = s.dir.path().join("switch-1.csr");
    std::fs::write(&csr_path, csr).unwrap();
    let cert = s.dir.path().join("switch-1.pem");
    let issued = st.ok(
        "admin",
        &[
            "service",
            "issue",
            "--name",
            "switch-1",
            "--csr",
            csr_path.to_str().unwrap(),
            "--out",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(issued["profile"], "service");
    let listed = st.ok("admin", &["service", "list"]);
    assert!(listed.to_string().contains("switch-1"), "{listed}");
    let switch = |args: &[&str]| s.kwctl(s.dir.path(), "switch-1", args);

    // CSV: valid, invalid, another algorithm, an unknown version.
    let msg = b"0200|6222020200112233|000000010000";
    let m3 = d1
        .transaction_mac("bank-a", "ISO9797-1-M3", 1, msg)
        .unwrap();
    let cup = d1.transaction_mac("bank-a", "CUP-ECB", 0, msg).unwrap();
    let mut bad = m3.clone();
    bad[0] ^= 1;
    let hexm = hex::encode(msg);
    let csv = format!(
        "device_id,issuer_id,key_version,algorithm,padding,message_hex,mac_hex\n\
         {D1},bank-a,{v},ISO9797-1-M3,1,{hexm},{}\n\
         {D1},bank-a,{v},ISO9797-1-M3,1,{hexm},{}\n\
         {D1},bank-a,{v},CUP-ECB,,{hexm},{}\n\
         {D1},bank-a,{},ISO9797-1-M3,1,{hexm},{}\n",
        hex::encode(&m3[..4]),
        hex::encode(&bad),
        hex::encode(&cup),
        v + 9,
        hex::encode(&m3),
    );
    let file = s.dir.path().join("batch.csv");
    std::fs::write(&file, csv).unwrap();
    let out = switch(&[
        "-o",
        "json",
        "mac",
        "verify",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let r = stdout_json(&out);
    let results: Vec<(&str, &str)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["result"].as_str().unwrap(),
                x["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("valid", ""),
            ("invalid", ""),
            ("valid", ""),
            ("error", "unknown_key_version")
        ],
        "{r}"
    );

    // 10 000 items (CMAC-TDES, ISO9797-1-M1-TDES), JSON then binary, in
    // chunks: progress and the rate on stderr.
    let mut json_items = Vec::new();
    let mut bin_items = Vec::new();
    for i in 0..10_000u32 {
        let msg = format!("0200|{i:08}|000000010000").into_bytes();
        let (alg, pad) = if i % 2 == 0 {
            ("CMAC-TDES", 0)
        } else {
            ("ISO9797-1-M1-TDES", 2)
        };
        let mac = d1.transaction_mac("bank-a", alg, pad, &msg).unwrap()[..8].to_vec();
        json_items.push(macs::Item {
            device_id: D1.into(),
            issuer_id: "bank-a".into(),
            key_version: v,
            algorithm: alg.into(),
            padding: (pad != 0).then_some(pad),
            message: base64::engine::general_purpose::STANDARD.encode(&msg),
            mac: base64::engine::general_purpose::STANDARD.encode(&mac),
        });
        bin_items.push(macs::BinaryItem {
            device_id: D1.parse::<DeviceId>().unwrap().bytes(),
            issuer_id: b"bank-a".to_vec(),
            key_version: v,
            algorithm: macs::algorithm_code(alg).unwrap(),
            padding: pad,
            message: msg,
            mac,
        });
    }
    let jfile = s.dir.path().join("big.json");
    std::fs::write(
        &jfile,
        serde_json::to_vec(&macs::VerifyRequest { items: json_items }).unwrap(),
    )
    .unwrap();
    let bfile = s.dir.path().join("big.bin");
    std::fs::write(&bfile, macs::encode_request(&bin_items).unwrap()).unwrap();
    for f in [&jfile, &bfile] {
        let out = switch(&[
            "mac",
            "verify",
            "--file",
            f.to_str().unwrap(),
            "--chunk",
            "5000",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("valid:   10000"), "{stdout}");
        assert!(stderr.contains("verified 5000/10000"), "{stderr}");
        if f == &bfile {
            // The binary answer is streamed over the TLS connection: results
            // arrive job by job (`JOB_ITEMS`) within one 5 000-item request,
            // so progress is seen before the request's end.
            let job = keyward_config::bulk::JOB_ITEMS;
            let partial =
                (1..5000 / job).any(|n| stderr.contains(&format!("verified {}/10000", n * job)));
            assert!(partial, "{stderr}");
        }
        eprintln!("{}: {stderr}", f.display());
    }

    // An auditor may not; a device certificate does not pass as a service.
    s.new_operator("audrey", "auditor");
    let out = s.kwctl(
        s.dir.path(),
        "audrey",
        &[
            "-o",
            "json",
            "mac",
            "verify",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stdout_json(&out)["code"], "forbidden_role");
    let metrics = s.metrics();
    assert!(
        common::sample(
            &metrics,
            "keyward_mac_verifications_total{algorithm=\"CMAC-TDES\",result=\"valid\"}"
        )
        .unwrap_or(0.0)
            >= 10_000.0,
        "{metrics}"
    );
}

/// Transaction confirmation end to end, over mutual TLS against a real
/// `keyward serve`: the terminal submits, the code reaches the customer's
/// second channel (the file sender's file, as a phone would show it), the
/// device signs `tx ‖ code` and confirms; the execution goes out through
/// the outbox with its own message id. A PC that alters the amount is
/// caught as tampering.
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_confirms_a_transaction_read_from_the_second_channel() {
    use axum::http::Method;
    require_tool("openssl", "openssl");
    let s = Server::started_with(common::Options {
        extra: "[outbox]\ninterval_ms = 100\n[outbox.file]\npath = \"outbox.jsonl\"\n".into(),
        ..Default::default()
    })
    .await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let mut dev = st.device(D1);
    let terminal = st.terminal(&s.public, &dev, &st.chain(D1));
    let out = terminal::login(&terminal, &mut dev, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    let token = out.answer().unwrap().session_token;

    let tx = json!({
        "payer_account": ACCOUNT,
        "payee_account": "DE89370400440532013000",
        "payee_name": "ACME GmbH",
        "amount": 123456,
        "currency": "EUR",
        "reference": "Invoice 2026-118",
    });
    let bytes = serde_json::to_vec(&tx).unwrap();
    let outbox_file = s.data.join("outbox.jsonl");
    // What the customer's phone shows: the one code message delivered.
    let code_sent = || -> keyward_protocol::confirmation::Code {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&outbox_file).unwrap_or_default();
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["topic"] != "confirmation.code" {
                    continue;
                }
                return code_in(v["payload"].as_str().unwrap().as_bytes());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("no code delivered\n{}", s.log());
    };
    let sub = terminal
        .call(Method::POST, "/v1/confirmations", Some(&tx), Some(&token))
        .await
        .unwrap();
    assert_eq!(sub.status, 201, "{}", sub.body);
    let id = sub.body["confirmation_id"].as_str().unwrap().to_owned();
    let code = code_sent();

    let path = format!("/v1/confirmations/{id}/confirm");
    let done = terminal
        .call(
            Method::POST,
            &path,
            Some(&confirm_body(&dev, &bytes, &code)),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["state"], "executed");

    // The execution leaves through the outbox, once.
    let mut executions = 0;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&outbox_file).unwrap_or_default();
        executions = text.matches("confirmation.execute").count();
        if executions > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(executions, 1, "{}", s.log());
    // What support sees with kwctl: executed, both deliveries, no code.
    let shown = st.ok("alice", &["confirmation", "show", &id]);
    assert_eq!(shown["state"], "executed", "{shown}");
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 2, "{shown}");
    assert!(!shown.to_string().contains(code.as_str()), "{shown}");
    // Nor does the server's own log, at debug: no code, token or account.
    s.assert_log_holds_none(&[
        ("confirmation code", code.as_str()),
        ("session token", &token),
        ("payer account", ACCOUNT),
        ("payee account", "DE89370400440532013000"),
    ]);

    // The evidence, exported by an auditor with kwctl and checked outside
    // Keyward as docs/protocol.md §11.6 says.
    s.new_operator("audra", "auditor");
    let evidence = s.dir.path().join("evidence");
    let out = s.kwctl(
        s.dir.path(),
        "audra",
        &[
            "confirmation",
            "evidence",
            &id,
            "--out",
            evidence.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(s.ca_pem(), evidence.join("ca.pem")).unwrap();
    let checked = common::run_evidence_check(&evidence);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success()
            && said.contains("Verified OK")
            && said.contains("receipt hashes match"),
        "{said}{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // The PC shows the customer one amount and hands the device another: the
    // device signs what it was given, the server refuses it as tampered.
    let sub = terminal
        .call(Method::POST, "/v1/confirmations", Some(&tx), Some(&token))
        .await
        .unwrap();
    let id = sub.body["confirmation_id"].as_str().unwrap().to_owned();
    let mut altered = tx.clone();
    altered["amount"] = json!(9_999_999);
    let altered = serde_json::to_vec(&altered).unwrap();
    let path = format!("/v1/confirmations/{id}/confirm");
    let refused = terminal
        .call(
            Method::POST,
            &path,
            Some(&confirm_body(&dev, &altered, &code)),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "confirmation_tampered");

    // kwsim confirms the way a person does: the code read from the file
    // sender's output, tx ‖ code signed by the device.
    dev.save(&st.devices).unwrap();
    let chain_file = s.dir.path().join("d1-confirm.pem");
    std::fs::write(&chain_file, st.chain(D1)).unwrap();
    let tx_file = s.dir.path().join("tx.json");
    std::fs::write(&tx_file, serde_json::to_vec(&tx).unwrap()).unwrap();
    let mut altered = tx.clone();
    altered["amount"] = json!(9_999_999);
    let altered_file = s.dir.path().join("altered.json");
    std::fs::write(&altered_file, serde_json::to_vec(&altered).unwrap()).unwrap();
    let server = format!("https://{}", s.public);
    let ca_pem = s.ca_pem();
    let kwsim_confirm = |extra: &[&str]| {
        let mut args = vec![
            "confirm",
            D1,
            "--issuer",
            "bank-a",
            "--server",
            &server,
            "--ca",
            ca_pem.to_str().unwrap(),
            "--cert",
            chain_file.to_str().unwrap(),
            "--outbox",
            outbox_file.to_str().unwrap(),
            "--transaction",
            tx_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = st.kwsim(&args);
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.success(),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, lines, err) = kwsim_confirm(&[]);
    assert!(ok, "{lines:?} {err}\n{}", s.log());
    assert_eq!(
        lines[1]["shown"],
        "Pay EUR 1234.56 to ACME GmbH (DE89..3000)"
    );
    assert_eq!(lines[2]["answer"]["state"], "executed", "{lines:?}");
    let (ok, lines, _) = kwsim_confirm(&["--device-sees", altered_file.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(
        lines[2]["answer"]["error"]["code"], "confirmation_tampered",
        "{lines:?}"
    );
    let (ok, lines, _) = kwsim_confirm(&["--wrong-code"]);
    assert!(!ok);
    assert_eq!(
        lines[2]["answer"]["error"]["code"], "confirmation_refused",
        "{lines:?}"
    );
}

/// The same confirmation confirmed 20 times at once, ten times on each of
/// two replicas on one database (SQLite file or PostgreSQL): executed once,
/// handed to the executor (a real local HTTPS receiver) under one message
/// id, and the other 19 answered `403 confirmation_refused`.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_confirms_on_two_replicas_execute_once() {
    use axum::http::Method;
    use keyward_tests::webhook::Receiver;
    require_tool("openssl", "openssl");
    let receiver = Receiver::start().await;
    let files = tempfile::tempdir().unwrap();
    let s = Server::started_with(common::Options {
        extra: webhook_confirmations(&receiver, files.path()),
        ..Default::default()
    })
    .await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let b = s.replica("b");
    let mut dev = st.device(D1);
    let chain = st.chain(D1);
    let on_a = st.terminal(&s.public, &dev, &chain);
    let on_b = st.terminal(&b.public, &dev, &chain);
    let token = terminal::login(&on_a, &mut dev, "bank-a", LoginOptions::default())
        .await
        .unwrap()
        .answer()
        .unwrap()
        .session_token;

    let tx = json!({
        "payer_account": ACCOUNT,
        "payee_account": "DE89370400440532013000",
        "payee_name": "ACME GmbH",
        "amount": 4200,
        "currency": "EUR",
        "reference": "Twenty at once",
    });
    let sub = on_b
        .call(Method::POST, "/v1/confirmations", Some(&tx), Some(&token))
        .await
        .unwrap();
    assert_eq!(sub.status, 201, "{}", sub.body);
    let id = sub.body["confirmation_id"].as_str().unwrap().to_owned();
    let shown = st.ok("alice", &["confirmation", "show", &id]);
    let delivery = shown["deliveries"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut code = None;
    for _ in 0..200 {
        code = receiver.seen.bodies().get(&delivery).map(|b| code_in(b));
        if code.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let code = code.unwrap_or_else(|| panic!("no code delivered\n{}", s.log()));

    let body = confirm_body(&dev, &serde_json::to_vec(&tx).unwrap(), &code);
    let path = format!("/v1/confirmations/{id}/confirm");
    let confirms = (0..20).map(|i| {
        let term = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        let (body, path, token) = (body.clone(), path.clone(), token.clone());
        tokio::spawn(async move {
            term.call(Method::POST, &path, Some(&body), Some(&token))
                .await
                .unwrap()
        })
    });
    let mut answers = Vec::new();
    for c in confirms.collect::<Vec<_>>() {
        let r = c.await.unwrap();
        answers.push((r.status.as_u16(), r.code().to_owned()));
    }
    answers.sort();
    let mut want = vec![(200, String::new())];
    want.extend(std::iter::repeat_n(
        (403, "confirmation_refused".to_owned()),
        19,
    ));
    assert_eq!(answers, want, "{}", s.log());

    // One execution, under one message id, received once per attempt.
    let mut executions = Vec::new();
    for _ in 0..200 {
        executions = receiver
            .seen
            .bodies()
            .into_iter()
            .filter(|(_, b)| {
                serde_json::from_slice::<Value>(b).unwrap()["confirmation_id"] == id.as_str()
            })
            .map(|(message_id, _)| message_id)
            .collect();
        if !executions.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shown = st.ok("alice", &["confirmation", "show", &id]);
    assert_eq!(shown["state"], "executed", "{shown}");
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 2, "{shown}");
    let execution = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["topic"] == "confirmation.execute")
        .unwrap()["message_id"]
        .clone();
    assert_eq!(executions, [execution.as_str().unwrap()], "{shown}");
    drop(b);
}

/// A customer whose contact is an e-mail address reads the code from a
/// real local SMTP relay (STARTTLS, AUTH over TLS only, the relay's
/// certificate checked against its CA), and the device confirms: the
/// second channel end to end through SMTP.
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_reads_the_code_from_a_real_smtp_relay_and_confirms() {
    use axum::http::Method;
    let ca = keyward_tests::webhook::test_ca();
    let (port, relay) = keyward_tests::smtp::start_relay(&ca, false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("relay-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let password_file = dir.path().join("relay.password");
    std::fs::write(&password_file, "relay-password\n").unwrap();
    let extra = format!(
        "[confirmation.channels]\nemail = \"smtp\"\nsms = \"file\"\nim = \"file\"\n[outbox]\ninterval_ms = 100\n\
         [outbox.file]\npath = \"outbox.jsonl\"\n[outbox.smtp]\nhost = \"127.0.0.1\"\n\
         port = {port}\ntls = \"starttls\"\nca_file = {ca:?}\nusername = \"keyward\"\n\
         password_file = {pw:?}\nfrom = \"no-reply@bank.example\"\nsubject = \"Your code\"\n",
        ca = ca_file.display().to_string(),
        pw = password_file.display().to_string(),
    );
    let s = Server::started_with(common::Options {
        extra,
        ..Default::default()
    })
    .await;
    let st = Station::with_operators(&s);
    st.provision_with_contact(&[("bank-a", "tdes")], "email", "li.lei@example.org");
    let mut dev = st.device(D1);
    let terminal = st.terminal(&s.public, &dev, &st.chain(D1));
    let out = terminal::login(&terminal, &mut dev, "bank-a", LoginOptions::default())
        .await
        .unwrap();
    let token = out.answer().unwrap().session_token;
    let tx = json!({
        "payer_account": ACCOUNT,
        "payee_account": "DE89370400440532013000",
        "payee_name": "ACME GmbH",
        "amount": 4200,
        "currency": "EUR",
        "reference": "Invoice 7",
    });
    let bytes = serde_json::to_vec(&tx).unwrap();
    let sub = terminal
        .call(Method::POST, "/v1/confirmations", Some(&tx), Some(&token))
        .await
        .unwrap();
    assert_eq!(sub.status, 201, "{}", sub.body);
    let id = sub.body["confirmation_id"].as_str().unwrap().to_owned();
    // The customer's mailbox: one mail, to the contact, with the code.
    let mut mail = None;
    for _ in 0..100 {
        if let Some(m) = relay.mails.lock().unwrap().first() {
            mail = Some(m.clone());
        }
        if mail.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mail = mail.unwrap_or_else(|| panic!("no mail reached the relay\n{}", s.log()));
    assert!(mail.contains("To: li.lei@example.org"), "{mail}");
    assert!(mail.contains("@keyward>"), "a stable Message-ID: {mail}");
    assert_eq!(
        relay
            .auth_in_clear
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // The body as the mail reader shows it: quoted-printable undone.
    let body = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    assert!(
        !body.contains("\"kind\""),
        "the mail is the text, not a payload: {body}"
    );
    assert!(body.contains("Pay EUR 42.00 to ACME GmbH"), "{body}");
    let digits = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("Code "))
        .unwrap_or_else(|| panic!("no code line: {mail}"))
        .trim()
        .to_owned();
    let code = keyward_protocol::confirmation::Code::parse(&digits).unwrap();
    let done = terminal
        .call(
            Method::POST,
            &format!("/v1/confirmations/{id}/confirm"),
            Some(&confirm_body(&dev, &bytes, &code)),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["state"], "executed");
    assert_eq!(relay.mails.lock().unwrap().len(), 1, "one mail, sent once");
}
