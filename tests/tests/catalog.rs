//! The key catalog on a real database: SQLite by default, PostgreSQL when
//! `KEYWARD_TEST_DATABASE_URL` is set (see `keyward_tests::db`). Every test
//! gets its own database, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use keyward_kms::KmsError;
use keyward_kms::catalog::{
    Catalog, IssuerRecord, KeyState, MasterKeyRecord, MasterKeyRole, NewWorkingKey,
};
use keyward_kms::db::now_ms;
use keyward_kms::types::{
    DeviceId, IssuerId, Kcv, KcvMethod, KeyFamily, KeyVersion, WorkingKeyRole,
};
use keyward_tests::db::{TestDb, test_database};

fn issuer_id(s: &str) -> IssuerId {
    s.parse().unwrap()
}

fn device(s: &str) -> DeviceId {
    s.parse().unwrap()
}

fn kcv(method: KcvMethod, v: [u8; 3]) -> Kcv {
    Kcv { method, value: v }
}

fn issuer_record(id: &str, family: KeyFamily) -> IssuerRecord {
    let method = match family {
        KeyFamily::Tdes => KcvMethod::Tdes,
        KeyFamily::Aes => KcvMethod::AesEcb,
    };
    IssuerRecord {
        id: issuer_id(id),
        family,
        master_keys: vec![
            MasterKeyRecord {
                role: MasterKeyRole::ImkTmk,
                label: format!("keyward/{id}/IMK-TMK"),
                kcv: kcv(method, [0x08, 0xD7, 0xB4]),
            },
            MasterKeyRecord {
                role: MasterKeyRole::ImkAuth,
                label: format!("keyward/{id}/IMK-AUTH"),
                kcv: kcv(method, [0xAB, 0xCD, 0xEF]),
            },
        ],
        created_at_ms: 1_700_000_000_123,
    }
}

/// A full set of working keys; `seed` makes each version's `R`s distinct.
fn working_keys(family: KeyFamily, seed: u8) -> Vec<NewWorkingKey> {
    WorkingKeyRole::ALL
        .iter()
        .enumerate()
        .map(|(i, role)| NewWorkingKey {
            role: *role,
            r: [seed.wrapping_mul(16).wrapping_add(i as u8); 16],
            kcv: kcv(family.kcv_method(), [seed, i as u8, 0x5A]),
        })
        .collect()
}

async fn setup() -> (TestDb, Catalog) {
    let db = test_database().await.unwrap();
    let catalog = db.catalog().await.unwrap();
    (db, catalog)
}

async fn states(c: &Catalog, i: &IssuerId, d: DeviceId) -> Vec<(u32, KeyState)> {
    c.versions(i, d)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.version.0, v.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn issuers_create_get_list_and_refuse_duplicates() {
    let (db, c) = setup().await;
    assert_eq!(c.db().kind(), db.kind());
    c.ping().await.unwrap();
    assert!(c.issuers().await.unwrap().is_empty());
    assert_eq!(c.issuer(&issuer_id("bank-b")).await.unwrap(), None);

    let b = issuer_record("bank-b", KeyFamily::Aes);
    let a = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&b).await.unwrap();
    c.create_issuer(&a).await.unwrap();

    assert_eq!(c.issuer(&b.id).await.unwrap().as_ref(), Some(&b));
    let got_a = c.issuer(&a.id).await.unwrap().unwrap();
    assert_eq!(got_a, a);
    assert_eq!(
        got_a
            .master_key(MasterKeyRole::ImkAuth)
            .unwrap()
            .kcv
            .to_string(),
        "KCV-TDES:ABCDEF"
    );
    assert_eq!(c.issuers().await.unwrap(), vec![a.clone(), b.clone()]);

    // Same id again, even with other labels: refused, nothing changed.
    let mut again = issuer_record("bank-a", KeyFamily::Aes);
    for k in &mut again.master_keys {
        k.label.push_str("-2");
    }
    let err = c.create_issuer(&again).await.unwrap_err();
    assert!(
        matches!(err, KmsError::IssuerExists(ref id) if id.as_str() == "bank-a"),
        "{err}"
    );
    assert_eq!(err.code(), "issuer_exists");
    assert_eq!(c.issuer(&a.id).await.unwrap().unwrap(), a);

    // An issuer without keys yet is allowed; repeated roles are not.
    let bare = IssuerRecord {
        master_keys: vec![],
        ..issuer_record("bank-c", KeyFamily::Tdes)
    };
    c.create_issuer(&bare).await.unwrap();
    assert_eq!(c.issuer(&bare.id).await.unwrap().unwrap(), bare);
    let mut twice = issuer_record("bank-d", KeyFamily::Tdes);
    twice.master_keys[1].role = MasterKeyRole::ImkTmk;
    let err = c.create_issuer(&twice).await.unwrap_err();
    assert!(
        matches!(err, KmsError::Invalid { field: "role", .. }),
        "{err}"
    );
    assert_eq!(c.issuers().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn version_lifecycle_pending_active_retiring_retired() {
    let (_db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    let d = device("0123456789abcdef");
    let other = device("FEDCBA9876543210");

    let v1 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap();
    assert_eq!(v1, KeyVersion(1));
    // Versions count per device.
    let o1 = c
        .add_pending_version(&bank.id, other, &working_keys(KeyFamily::Tdes, 9))
        .await
        .unwrap();
    assert_eq!(o1, KeyVersion(1));

    let tak = c
        .working_key(&bank.id, d, v1, WorkingKeyRole::Tak)
        .await
        .unwrap()
        .unwrap();
    let offered = working_keys(KeyFamily::Tdes, 1);
    assert_eq!(tak.r, offered[1].r);
    assert!(tak.kcv.matches(&offered[1].kcv));
    assert_eq!(
        (tak.state, tak.version, tak.device),
        (KeyState::Pending, v1, d)
    );
    assert!(!tak.state.usable());

    c.activate_version(&bank.id, d, v1, Duration::from_secs(3600))
        .await
        .unwrap();
    let v = c.versions(&bank.id, d).await.unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, KeyState::Active);
    assert!(v[0].activated_at_ms.is_some());
    assert_eq!(v[0].retire_at_ms, None);

    let v2 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 2))
        .await
        .unwrap();
    assert_eq!(v2, KeyVersion(2));
    let before = now_ms();
    c.activate_version(&bank.id, d, v2, Duration::from_secs(600))
        .await
        .unwrap();
    let after = now_ms();
    let v = c.versions(&bank.id, d).await.unwrap();
    assert_eq!(
        v.iter().map(|v| (v.version.0, v.state)).collect::<Vec<_>>(),
        [(2, KeyState::Active), (1, KeyState::Retiring)]
    );
    let retire_at = v[1].retire_at_ms.unwrap();
    assert!((before + 600_000..=after + 600_000).contains(&retire_at));
    let old_tak = c
        .working_key(&bank.id, d, v1, WorkingKeyRole::Tak)
        .await
        .unwrap()
        .unwrap();
    assert!(old_tak.state.usable(), "grace period: v1 still accepted");

    assert_eq!(c.retire_due(retire_at - 1).await.unwrap(), 0);
    assert_eq!(c.retire_due(retire_at).await.unwrap(), 1);
    assert_eq!(
        states(&c, &bank.id, d).await,
        [(2, KeyState::Active), (1, KeyState::Retired)]
    );
    let old_tak = c
        .working_key(&bank.id, d, v1, WorkingKeyRole::Tak)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old_tak.state, KeyState::Retired);
    assert!(!old_tak.state.usable());
    assert_eq!(c.retire_due(i64::MAX).await.unwrap(), 0);
    // The other device was never touched.
    assert_eq!(states(&c, &bank.id, other).await, [(1, KeyState::Pending)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn retire_due_works_through_more_than_one_batch() {
    let (db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Aes);
    c.create_issuer(&bank).await.unwrap();
    // A fleet-wide rotation's worth of versions in their grace period, one
    // more than a batch, written directly (4000 API round trips are slow).
    let n = 1_001u64;
    let rows: Vec<String> = (0..n)
        .map(|i| {
            let d = DeviceId::from_bytes(i.to_be_bytes());
            format!("('bank-a', '{d}', 1, 'retiring', 0, 0, {i})")
        })
        .collect();
    let pool = sqlx::AnyPool::connect(&db.config.url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO working_key_versions \
         (issuer_id, device_id, version, state, created_at_ms, activated_at_ms, retire_at_ms) \
         VALUES {}",
        rows.join(", ")
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    assert_eq!(c.retire_due(-1).await.unwrap(), 0);
    assert_eq!(c.retire_due(9).await.unwrap(), 10);
    assert_eq!(c.retire_due(i64::MAX).await.unwrap(), n - 10);
    assert_eq!(c.retire_due(i64::MAX).await.unwrap(), 0);
    let d = DeviceId::from_bytes(5u64.to_be_bytes());
    assert_eq!(states(&c, &bank.id, d).await, [(1, KeyState::Retired)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_version_can_never_become_active() {
    let (_db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    let d = device("0000000000000001");
    let v1 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap();
    c.activate_version(&bank.id, d, v1, Duration::from_secs(60))
        .await
        .unwrap();
    let v2 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 2))
        .await
        .unwrap();
    c.reject_version(&bank.id, d, v2).await.unwrap();
    assert_eq!(
        states(&c, &bank.id, d).await,
        [(2, KeyState::Rejected), (1, KeyState::Active)],
        "the device keeps its old keys"
    );
    let err = c
        .activate_version(&bank.id, d, v2, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KmsError::KeyVersionNotPending { ref state, .. } if state == "rejected"),
        "{err}"
    );
    let err = c.reject_version(&bank.id, d, v2).await.unwrap_err();
    assert_eq!(err.code(), "key_version_not_pending");
    // The next offer gets a fresh number; a rejected number is never reused.
    let v3 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 3))
        .await
        .unwrap();
    assert_eq!(v3, KeyVersion(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_pending_versions_can_be_activated_or_rejected() {
    let (_db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    let d = device("0000000000000002");
    let v1 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap();
    c.activate_version(&bank.id, d, v1, Duration::from_secs(60))
        .await
        .unwrap();
    for result in [
        c.activate_version(&bank.id, d, v1, Duration::from_secs(60))
            .await,
        c.reject_version(&bank.id, d, v1).await,
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, KmsError::KeyVersionNotPending { version, ref state } if version == v1 && state == "active"),
            "{err}"
        );
    }
    assert_eq!(states(&c, &bank.id, d).await, [(1, KeyState::Active)]);

    // One offer at a time: a second while one is pending is refused with
    // the pending one's number (the database enforces it too).
    let v2 = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 2))
        .await
        .unwrap();
    let err = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 3))
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::OfferPending(v) if v == v2), "{err}");
    assert_eq!(
        states(&c, &bank.id, d).await,
        [(2, KeyState::Pending), (1, KeyState::Active)],
        "a refused offer changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_issuer_and_version_are_reported() {
    let (_db, c) = setup().await;
    let ghost = issuer_id("ghost");
    let d = device("0000000000000003");
    let err = c
        .add_pending_version(&ghost, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KmsError::UnknownIssuer(ref i) if *i == ghost),
        "{err}"
    );
    assert_eq!(err.code(), "unknown_issuer");
    assert!(c.versions(&ghost, d).await.unwrap().is_empty());

    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    for err in [
        c.activate_version(&bank.id, d, KeyVersion(1), Duration::ZERO)
            .await
            .unwrap_err(),
        c.reject_version(&bank.id, d, KeyVersion(1))
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(err, KmsError::UnknownKeyVersion { version: KeyVersion(1), device, .. } if device == d),
            "{err}"
        );
        assert_eq!(err.code(), "unknown_key_version");
    }
    assert_eq!(
        c.working_key(&bank.id, d, KeyVersion(1), WorkingKeyRole::Tak)
            .await
            .unwrap(),
        None
    );
    // A version with only a TAK has no TPK.
    let v = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1)[1..2])
        .await
        .unwrap();
    assert!(
        c.working_key(&bank.id, d, v, WorkingKeyRole::Tak)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        c.working_key(&bank.id, d, v, WorkingKeyRole::Tpk)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_operations_leave_nothing_half_written() {
    let (_db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();

    // The second master key's label is taken: the database refuses it after the
    // issuer row and the first key were written, and all of it is rolled back.
    let mut clash = issuer_record("bank-b", KeyFamily::Tdes);
    clash.master_keys[1].label = bank.master_keys[0].label.clone();
    let err = c.create_issuer(&clash).await.unwrap_err();
    assert!(
        matches!(err, KmsError::Invalid { field: "label", .. }),
        "{err}"
    );
    assert_eq!(c.issuer(&clash.id).await.unwrap(), None);
    assert_eq!(c.issuers().await.unwrap(), vec![bank.clone()]);
    // Its first label was not left behind either.
    c.create_issuer(&issuer_record("bank-b", KeyFamily::Tdes))
        .await
        .unwrap();

    // Working keys with the wrong KCV method for the family: no version row.
    let d = device("0000000000000004");
    let err = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Aes, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KmsError::Invalid {
                field: "kcv_method",
                ..
            }
        ),
        "{err}"
    );
    let mut twice = working_keys(KeyFamily::Tdes, 1);
    twice[2].role = WorkingKeyRole::Tpk;
    let err = c
        .add_pending_version(&bank.id, d, &twice)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KmsError::Invalid { field: "role", .. }),
        "{err}"
    );
    let err = c.add_pending_version(&bank.id, d, &[]).await.unwrap_err();
    assert!(matches!(err, KmsError::Invalid { .. }), "{err}");
    assert!(c.versions(&bank.id, d).await.unwrap().is_empty());
    let v = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap();
    assert_eq!(v, KeyVersion(1), "no version number was consumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_offers_make_one_pending_version_and_one_active() {
    let (_db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    let d = device("0000000000000005");

    let offers: Vec<_> = (1..=8u8)
        .map(|seed| {
            let (c, id) = (c.clone(), bank.id.clone());
            tokio::spawn(async move {
                c.add_pending_version(&id, d, &working_keys(KeyFamily::Tdes, seed))
                    .await
            })
        })
        .collect();
    let (mut made, mut refused) = (Vec::new(), 0);
    for o in offers {
        match o.await.unwrap() {
            Ok(v) => made.push(v.0),
            Err(KmsError::OfferPending(v)) => {
                assert_eq!(v, KeyVersion(1));
                refused += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((made, refused), (vec![1], 7));

    let activations: Vec<_> = (0..8)
        .map(|_| {
            let (c, id) = (c.clone(), bank.id.clone());
            tokio::spawn(async move {
                c.activate_version(&id, d, KeyVersion(1), Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    let mut activated = 0;
    for a in activations {
        match a.await.unwrap() {
            Ok(()) => activated += 1,
            Err(KmsError::KeyVersionNotPending { .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(activated, 1);
    let s = states(&c, &bank.id, d).await;
    assert_eq!(s, [(1, KeyState::Active)], "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_keeps_data_and_migrations_are_idempotent() {
    let db = test_database().await.unwrap();
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    {
        let c = db.catalog().await.unwrap();
        c.create_issuer(&bank).await.unwrap();
    }
    let c = db.catalog().await.unwrap();
    assert_eq!(c.issuers().await.unwrap(), vec![bank]);
    if let Some(path) = db.config.url.strip_prefix("sqlite://") {
        assert!(
            std::path::Path::new(path).is_file(),
            "the SQLite file and its directory were created"
        );
        let pool = sqlx::AnyPool::connect(&db.config.url).await.unwrap();
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        let mode: String = sqlx::Row::try_get(&row, 0).unwrap();
        assert_eq!(mode.to_ascii_lowercase(), "wal");
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_stored_values_are_reported_not_trusted() {
    let (db, c) = setup().await;
    let bank = issuer_record("bank-a", KeyFamily::Tdes);
    c.create_issuer(&bank).await.unwrap();
    let d = device("0000000000000006");
    let v = c
        .add_pending_version(&bank.id, d, &working_keys(KeyFamily::Tdes, 1))
        .await
        .unwrap();

    // Edit a row behind the catalog's back (the schema cannot know every
    // future KCV method, so it does not constrain the name).
    let pool = sqlx::AnyPool::connect(&db.config.url).await.unwrap();
    sqlx::query("UPDATE working_keys SET kcv_method = 'KCV-BOGUS' WHERE role = 'TAK'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let err = c
        .working_key(&bank.id, d, v, WorkingKeyRole::Tak)
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::CorruptRecord(_)), "{err}");
    assert_eq!(err.code(), "database_error");
    assert!(!err.is_client_error());
    // Rows that were not touched still read.
    assert!(
        c.working_key(&bank.id, d, v, WorkingKeyRole::Tpk)
            .await
            .unwrap()
            .is_some()
    );
}

/// The catalog's futures must be `Send`: the server awaits them in handlers
/// that run on any worker thread.
#[allow(dead_code)]
fn futures_are_send(c: &Catalog, i: &IssuerId, d: DeviceId, keys: &[NewWorkingKey]) {
    fn send<T: Send>(_: T) {}
    send(c.create_issuer(&issuer_record("x", KeyFamily::Tdes)));
    send(c.add_pending_version(i, d, keys));
    send(c.activate_version(i, d, KeyVersion(1), Duration::ZERO));
    send(c.reject_version(i, d, KeyVersion(1)));
    send(c.retire_due(0));
    send(c.working_key(i, d, KeyVersion(1), WorkingKeyRole::Tak));
    send(c.issuers());
}

/// The SQLite catalog (national ids, contacts) is created 0600 in
/// a 0700 directory, and a catalog file other users can read is refused with
/// its path and the fix. SQLite only: the file is what is checked.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_catalog_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data").join("keyward.db");
    let cfg = keyward_config::DatabaseConfig {
        url: format!("sqlite://{}", path.display()),
        max_connections: 2,
        acquire_timeout_ms: keyward_tests::db::TEST_ACQUIRE_TIMEOUT_MS,
    };
    let catalog = Catalog::connect(&cfg).await.unwrap();
    drop(catalog);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = keyward_kms::db::Database::connect(&cfg)
        .await
        .map(|_| ())
        .unwrap_err();
    let sqlx::Error::Configuration(inner) = &err else {
        panic!("{err}");
    };
    let refused = inner
        .downcast_ref::<keyward_kms::db::InsecurePermissions>()
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(refused.path, path);
    assert!(refused.to_string().contains("chmod 600"), "{refused}");
    assert!(Catalog::connect(&cfg).await.is_err());
}
