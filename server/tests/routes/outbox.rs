//! The outbox on a real database (SQLite, or PostgreSQL with
//! `KEYWARD_TEST_DATABASE_URL`) delivering to a real local HTTPS receiver
//! started here (`keyward_tests::webhook`), which checks every Standard
//! Webhooks signature with its own HMAC and keeps the message ids it saw,
//! in order. Two `Outbox`es on their own pools play two replicas.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use keyward_config::OutboxConfig;
use keyward_kms::db::{Database, now_ms};
use keyward_server::metrics::Metrics;
use keyward_server::outbox::{
    Channel, MessageId, NewMessage, Outbox, ReceiptStatus, Senders, State, enqueue_in,
    record_receipt_in,
};
use keyward_tests::db::{TestDb, test_database};
use keyward_tests::smtp::start_relay;
use keyward_tests::webhook::{Receiver, TestCa, test_ca};

/// The gateway's endpoint name (a webhook message's recipient).
const GATEWAY: &str = "gateway";

fn config() -> OutboxConfig {
    OutboxConfig {
        batch: 20,
        concurrency: 8,
        max_attempts: 5,
        backoff_base_ms: 10,
        backoff_max_ms: 40,
        lease_ms: 20_000,
        ..OutboxConfig::default()
    }
}

/// A fresh database with the server's schema.
async fn database() -> (TestDb, Database) {
    let tdb = test_database().await.unwrap();
    let db = Database::connect(&tdb.config).await.unwrap();
    keyward_server::migrate::run(db.pool(), db.kind())
        .await
        .unwrap();
    (tdb, db)
}

/// An outbox on `db` (a replica) sending to `receiver` with `cfg`.
fn outbox(db: Database, receiver: &Receiver, cfg: &OutboxConfig) -> (Outbox, Metrics) {
    let metrics = Metrics::new().unwrap();
    let senders = Senders {
        webhooks: BTreeMap::from([(GATEWAY.to_owned(), receiver.sender(&receiver.ca.ca_der))]),
        ..Senders::default()
    };
    (
        Outbox::with_senders(db, cfg, senders, metrics.clone()),
        metrics,
    )
}

fn message(subject: &str, n: usize) -> NewMessage {
    NewMessage {
        topic: "confirmation.code".to_owned(),
        channel: Channel::Webhook,
        recipient: GATEWAY.to_owned(),
        subject_id: subject.to_owned(),
        payload: format!(r#"{{"to":"+4915112345678","text":"code {n:08}"}}"#).into_bytes(),
    }
}

/// Enqueues `msgs` in one transaction (as a protocol step would).
async fn enqueue(db: &Database, msgs: &[NewMessage]) -> Vec<MessageId> {
    db.write("test.enqueue", |mut tx| async move {
        let mut ids = Vec::new();
        for m in msgs {
            ids.push(enqueue_in(&mut tx, m).await?);
        }
        Ok::<_, sqlx::Error>((tx, ids))
    })
    .await
    .unwrap()
}

/// Drains until nothing is left to send (retries come due quickly here).
async fn drain_until_settled(outbox: &Outbox, owner: &str) {
    for _ in 0..200 {
        outbox.drain(owner).await.unwrap();
        if outbox.backlog().await.unwrap().messages == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the outbox did not settle");
}

fn deliveries(m: &Metrics, outcome: &str) -> u64 {
    m.outbox_deliveries
        .with_label_values(&["webhook", outcome])
        .get()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_message_is_delivered_once_under_its_id() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    let (outbox, metrics) = outbox(db.clone(), &receiver, &config());
    let msg = message("conf-1", 1);
    let [id] = enqueue(&db, std::slice::from_ref(&msg)).await[..] else {
        panic!("one id")
    };
    let backlog = outbox.refresh_gauges().await.unwrap();
    assert_eq!(backlog.messages, 1);
    assert_eq!(metrics.outbox_backlog.get(), 1);

    let drained = outbox.drain("replica-a").await.unwrap();
    assert_eq!((drained.sent, drained.retrying, drained.gave_up), (1, 0, 0));
    // Nothing more to send: a second drain sends nothing.
    assert_eq!(outbox.drain("replica-a").await.unwrap().sent, 0);

    assert_eq!(receiver.seen.ids(), [id.to_string()]);
    assert_eq!(
        receiver.seen.bodies.lock().unwrap()[&id.to_string()],
        msg.payload
    );
    assert_eq!(receiver.seen.bad_signatures.load(Ordering::SeqCst), 0);
    let view = outbox.messages_of("conf-1").await.unwrap();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].message_id, id.to_string());
    assert_eq!(
        (
            view[0].state.as_str(),
            view[0].attempts,
            view[0].last_error.as_deref()
        ),
        ("sent", 1, None)
    );
    assert!(view[0].sent_at_ms.is_some());
    // Sent, its body (a one-time code) is erased from the database.
    let kept: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox WHERE message_id = $1")
        .bind(id.to_string())
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(kept.is_empty());
    // The admin view carries neither recipient nor payload.
    let shown = serde_json::to_string(&view).unwrap();
    assert!(
        !shown.contains("4915112345678") && !shown.contains(GATEWAY),
        "{shown}"
    );
    assert_eq!(deliveries(&metrics, "sent"), 1);
    assert_eq!(outbox.refresh_gauges().await.unwrap().messages, 0);
    assert_eq!(metrics.outbox_backlog.get(), 0);

    // The gateway's delivery receipt, recorded in the receipt route's
    // transaction; an unknown id changes nothing.
    let at = now_ms();
    let (known, unknown) = db
        .write("test.receipt", |mut tx| async move {
            let known =
                record_receipt_in(&mut tx, &id, ReceiptStatus::Delivered, "rcpt-1", at).await?;
            let unknown = record_receipt_in(
                &mut tx,
                &MessageId::new(),
                ReceiptStatus::Failed,
                "rcpt-2",
                at,
            )
            .await?;
            Ok::<_, sqlx::Error>((tx, (known, unknown)))
        })
        .await
        .unwrap();
    assert!(known && !unknown);
    let view = &outbox.messages_of("conf-1").await.unwrap()[0];
    assert_eq!(
        (view.receipt_status.as_deref(), view.receipt_at_ms),
        (Some("delivered"), Some(at))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_is_retried_with_the_same_id_until_it_is_sent() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    receiver.seen.script.lock().unwrap().extend([503, 503]);
    let (outbox, metrics) = outbox(db.clone(), &receiver, &config());
    let ids = enqueue(&db, &[message("conf-2", 2)]).await;

    drain_until_settled(&outbox, "replica-a").await;

    let id = ids[0].to_string();
    assert_eq!(receiver.seen.ids(), [id.clone(), id.clone(), id]);
    let view = &outbox.messages_of("conf-2").await.unwrap()[0];
    assert_eq!(
        (
            view.state.as_str(),
            view.attempts,
            view.last_error.as_deref()
        ),
        ("sent", 3, Some("http_5xx"))
    );
    assert_eq!(deliveries(&metrics, "retry"), 2);
    assert_eq!(deliveries(&metrics, "sent"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_400_gives_up_at_once_and_running_out_of_attempts_gives_up_too() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    receiver.seen.script.lock().unwrap().push_back(400);
    let cfg = OutboxConfig {
        max_attempts: 3,
        ..config()
    };
    let (outbox, metrics) = outbox(db.clone(), &receiver, &cfg);
    let refused = enqueue(&db, &[message("conf-3", 3)]).await;
    drain_until_settled(&outbox, "replica-a").await;
    assert_eq!(receiver.seen.ids(), [refused[0].to_string()]);
    let view = &outbox.messages_of("conf-3").await.unwrap()[0];
    assert_eq!(
        (
            view.state.as_str(),
            view.attempts,
            view.last_error.as_deref()
        ),
        ("gave_up", 1, Some("http_4xx"))
    );

    // Always 503: three attempts, then given up.
    receiver.seen.script.lock().unwrap().extend([503; 10]);
    let failing = enqueue(&db, &[message("conf-4", 4)]).await;
    drain_until_settled(&outbox, "replica-a").await;
    let failing = failing[0].to_string();
    assert_eq!(
        receiver.seen.ids()[1..],
        [failing.clone(), failing.clone(), failing]
    );
    let view = &outbox.messages_of("conf-4").await.unwrap()[0];
    assert_eq!(
        (
            view.state.as_str(),
            view.attempts,
            view.last_error.as_deref()
        ),
        ("gave_up", 3, Some("http_5xx"))
    );
    assert_eq!(deliveries(&metrics, "gave_up"), 2);
    // Nothing given up is tried again.
    outbox.drain("replica-a").await.unwrap();
    assert_eq!(receiver.seen.ids().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_transaction_enqueues_nothing() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    let (outbox, _) = outbox(db.clone(), &receiver, &config());
    let msg = message("conf-5", 5);
    let failed: Result<(), sqlx::Error> = db
        .write("test.rollback", |mut tx| {
            let msg = msg.clone();
            async move {
                enqueue_in(&mut tx, &msg).await?;
                // The step fails after its message was written.
                Err(sqlx::Error::RowNotFound)
            }
        })
        .await;
    assert!(failed.is_err());
    assert!(outbox.messages_of("conf-5").await.unwrap().is_empty());
    assert_eq!(outbox.backlog().await.unwrap().messages, 0);
    assert_eq!(outbox.drain("replica-a").await.unwrap().sent, 0);
    assert!(receiver.seen.ids().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_draining_at_once_send_each_message_once() {
    let (tdb, db_a) = database().await;
    let db_b = Database::connect(&tdb.config).await.unwrap();
    let receiver = Receiver::start().await;
    let cfg = OutboxConfig {
        batch: 10,
        ..config()
    };
    let (a, metrics_a) = outbox(db_a.clone(), &receiver, &cfg);
    let (b, metrics_b) = outbox(db_b, &receiver, &cfg);
    let msgs: Vec<NewMessage> = (0..120).map(|n| message(&format!("race-{n}"), n)).collect();
    let ids = enqueue(&db_a, &msgs).await;

    let (ra, rb) = tokio::join!(
        drain_until_settled(&a, "replica-a"),
        drain_until_settled(&b, "replica-b")
    );
    let ((), ()) = (ra, rb);

    let mut seen = receiver.seen.ids();
    assert_eq!(seen.len(), 120, "each message once, no more");
    seen.sort();
    let mut expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(seen, expected);
    let (sent_a, sent_b) = (
        deliveries(&metrics_a, "sent"),
        deliveries(&metrics_b, "sent"),
    );
    assert_eq!(sent_a + sent_b, 120);
    eprintln!("replica a sent {sent_a}, replica b sent {sent_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_cut_off_before_its_outcome_is_sent_again_with_the_same_id() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    // The receiver takes its time with the first request; the replica dies
    // meanwhile, after sending and before recording.
    receiver.seen.stall_ms.lock().unwrap().push_back(3_000);
    let cfg = OutboxConfig {
        lease_ms: 1_500,
        ..config()
    };
    let (outbox, _) = outbox(db.clone(), &receiver, &cfg);
    let ids = enqueue(&db, &[message("conf-6", 6)]).await;
    let dying = outbox.clone();
    let run = tokio::spawn(async move { dying.drain("replica-a").await });
    for _ in 0..100 {
        if !receiver.seen.ids().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.abort();
    let _ = run.await;
    let view = &outbox.messages_of("conf-6").await.unwrap()[0];
    assert_eq!((view.state.as_str(), view.attempts), ("pending", 1));

    // Another replica finds nothing due while the lease holds, then resends.
    assert_eq!(outbox.drain("replica-b").await.unwrap().sent, 0);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    drain_until_settled(&outbox, "replica-b").await;
    let id = ids[0].to_string();
    assert_eq!(receiver.seen.ids(), [id.clone(), id]);
    let view = &outbox.messages_of("conf-6").await.unwrap()[0];
    assert_eq!((view.state.as_str(), view.attempts), ("sent", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_receiver_or_unknown_endpoint_is_not_sent_to() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    let other_ca = test_ca();
    let cfg = config();
    let senders = Senders {
        webhooks: BTreeMap::from([(GATEWAY.to_owned(), receiver.sender(&other_ca.ca_der))]),
        ..Senders::default()
    };
    let outbox = Outbox::with_senders(db.clone(), &cfg, senders, Metrics::new().unwrap());
    assert!(outbox.can_send(Channel::Webhook, GATEWAY));
    assert!(!outbox.can_send(Channel::Webhook, "elsewhere"));
    assert!(!outbox.can_send(Channel::Smtp, "jane@example.org"));
    assert!(!outbox.can_send(Channel::File, "anyone"));
    let unknown = NewMessage {
        recipient: "elsewhere".to_owned(),
        subject_id: "conf-8".to_owned(),
        ..message("conf-8", 8)
    };
    enqueue(&db, &[message("conf-7", 7), unknown]).await;

    let drained = outbox.drain("replica-a").await.unwrap();
    assert_eq!((drained.retrying, drained.gave_up), (1, 1));
    let view = &outbox.messages_of("conf-7").await.unwrap()[0];
    assert_eq!(
        (view.state.as_str(), view.last_error.as_deref()),
        (State::Failed.as_str(), Some("tls_failed"))
    );
    let view = &outbox.messages_of("conf-8").await.unwrap()[0];
    assert_eq!(
        (view.state.as_str(), view.last_error.as_deref()),
        ("gave_up", Some("not_configured"))
    );
    assert!(receiver.seen.ids().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_woken_drain_sends_at_once_not_at_the_next_interval() {
    let (_tdb, db) = database().await;
    let receiver = Receiver::start().await;
    let cfg = OutboxConfig {
        interval_ms: 60_000,
        ..config()
    };
    let (outbox, _) = outbox(db.clone(), &receiver, &cfg);
    let running = outbox.clone();
    let drain = tokio::spawn(async move {
        running
            .drain_for("replica-a", Duration::from_secs(60))
            .await
    });
    // Commit → receiver, one message at a time.
    let mut took = Vec::new();
    for n in 0..50 {
        let t0 = std::time::Instant::now();
        enqueue(&db, &[message(&format!("wake-{n}"), n)]).await;
        outbox.wake();
        while receiver.seen.ids().len() <= n {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "not sent after a wake"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        took.push(t0.elapsed());
    }
    drain.abort();
    took.sort();
    eprintln!(
        "commit to receiver, {:?}: p50 {:?}, max {:?}",
        db.kind(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(took[took.len() / 2] < Duration::from_secs(1));
}

/// An outbox whose only sender is the SMTP relay at `port`.
fn smtp_outbox(
    db: Database,
    ca: &TestCa,
    port: u16,
    implicit: bool,
) -> (Outbox, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("relay-ca.pem");
    std::fs::write(
        &ca_file,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            BASE64.encode(&ca.ca_der)
        ),
    )
    .unwrap();
    let password_file = dir.path().join("relay.password");
    std::fs::write(&password_file, "relay-password\n").unwrap();
    let cfg = OutboxConfig {
        smtp: Some(keyward_config::SmtpConfig {
            host: "127.0.0.1".to_owned(),
            port,
            tls: if implicit {
                keyward_config::SmtpTls::Implicit
            } else {
                keyward_config::SmtpTls::Starttls
            },
            ca_file,
            username: Some("keyward".to_owned()),
            password_file: Some(password_file),
            from: "no-reply@bank.example".to_owned(),
            subject: "Your confirmation".to_owned(),
            timeout_ms: 3_000,
        }),
        ..config()
    };
    let outbox = Outbox::new(db, &cfg, Metrics::new().unwrap()).unwrap();
    (outbox, dir)
}

fn mail(subject: &str, text: &str) -> NewMessage {
    NewMessage {
        topic: "confirmation.code".to_owned(),
        channel: Channel::Smtp,
        recipient: "jane@example.org".to_owned(),
        subject_id: subject.to_owned(),
        payload: text.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_over_starttls_delivers_with_the_message_id() {
    let (_tdb, db) = database().await;
    let ca = test_ca();
    let (port, relay) = start_relay(&ca, false).await;
    let (outbox, _dir) = smtp_outbox(db.clone(), &ca, port, false);
    assert!(outbox.can_send(Channel::Smtp, "jane@example.org"));
    let ids = enqueue(
        &db,
        &[mail("mail-1", "Pay EUR 12.00 to ACME\r\nCode 12345678")],
    )
    .await;
    drain_until_settled(&outbox, "replica-a").await;

    let view = &outbox.messages_of("mail-1").await.unwrap()[0];
    assert_eq!(
        (view.state.as_str(), view.attempts),
        ("sent", 1),
        "{view:?}"
    );
    let mails = relay.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0].contains(&format!("Message-ID: <{}@keyward>", ids[0])),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("To: jane@example.org"), "{}", mails[0]);
    assert!(mails[0].contains("Code 12345678"), "{}", mails[0]);
    assert_eq!(relay.auth_in_clear.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_over_implicit_tls_retries_a_4xx_and_gives_up_on_a_5xx() {
    let (_tdb, db) = database().await;
    let ca = test_ca();
    let (port, relay) = start_relay(&ca, true).await;
    let (outbox, _dir) = smtp_outbox(db.clone(), &ca, port, true);
    relay
        .mail_from
        .lock()
        .unwrap()
        .extend(["451 try later", "250 ok", "550 no such user"]);
    let ids = enqueue(&db, &[mail("mail-2", "Code 11111111")]).await;
    drain_until_settled(&outbox, "replica-a").await;
    enqueue(&db, &[mail("mail-3", "Code 22222222")]).await;
    drain_until_settled(&outbox, "replica-a").await;

    let view = &outbox.messages_of("mail-2").await.unwrap()[0];
    assert_eq!(
        (
            view.state.as_str(),
            view.attempts,
            view.last_error.as_deref()
        ),
        ("sent", 2, Some("smtp_4xx"))
    );
    let view = &outbox.messages_of("mail-3").await.unwrap()[0];
    assert_eq!(
        (
            view.state.as_str(),
            view.attempts,
            view.last_error.as_deref()
        ),
        ("gave_up", 1, Some("smtp_5xx"))
    );
    let mails = relay.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains(&format!("<{}@keyward>", ids[0])));
}
