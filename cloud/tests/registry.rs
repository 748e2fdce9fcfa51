//! The store on its own: never re-keyed, bounded event history, aggregated
//! refusals, the audit log's groups, and what it forgets by itself. Each
//! test runs twice, on a fresh SQLite file and on a real PostgreSQL server
//! (`store_tests!` below); the last ones are SQLite's own.

use cloud::roles::Role;
use cloud::store::registry::{
    AuthEventKind, DeviceStatus, Registration, Registry, DEVICE_EVENTS_KEPT,
};
use serde_json::json;
use testkit::TestDatabase;

/// Runs each named test (an `async fn(TestDatabase)`) once on SQLite, as
/// `on_sqlite::NAME`, and once on PostgreSQL, as `on_postgres::NAME`.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(testkit::TestDatabase::sqlite().await).await
            })*
        }
        mod on_postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(testkit::TestDatabase::postgres().await).await
            })*
        }
    };
}

store_tests!(
    a_registered_id_keeps_its_first_key,
    only_the_latest_container_events_are_kept,
    new_ids_stop_at_the_pending_cap_and_known_ones_are_not_counted_again,
    registrations_at_once_from_two_instances_stop_at_the_cap,
    refused_attempts_on_a_device_share_one_row_an_hour,
    pending_devices_not_seen_for_long_are_forgotten_and_the_others_kept,
    the_audit_log_keeps_its_retention_and_its_most_rows,
    actions_recorded_at_once_are_each_stored_and_told_their_own_entry,
    an_operator_signs_in_with_a_session_and_a_token_until_they_end,
    sign_in_failures_count_within_a_minute_from_the_first,
    where_each_device_is_connected_follows_its_instances,
    roles_sessions_and_tokens_are_kept_per_operator,
    a_preauthorized_device_is_accepted_before_it_first_connects,
    a_key_is_rotated_only_away_from_the_registered_key,
    tags_change_in_one_transaction_within_their_cap,
    a_queued_call_is_claimed_once_and_expires_unclaimed,
    job_outcomes_read_in_order_and_old_jobs_are_forgotten,
);

async fn open(db: &TestDatabase) -> Registry {
    Registry::open(&db.url()).await.unwrap()
}

async fn a_key_is_rotated_only_away_from_the_registered_key(db: TestDatabase) {
    let registry = open(&db).await;
    registry
        .register_new_key("dev-1", "PEM-1", "SHA256:one", None, 10, 1)
        .await
        .unwrap();
    let required = registry.require_key_rotation("dev-1", 2).await.unwrap();
    assert_eq!(required.unwrap().key_rotation_required_at, Some(2));
    assert!(registry
        .require_key_rotation("dev-9", 2)
        .await
        .unwrap()
        .is_none());

    let rotated = registry
        .rotate_key(
            "dev-1",
            "PEM-1",
            "PEM-2",
            "SHA256:two",
            "one replaced by two",
            3,
        )
        .await
        .unwrap()
        .expect("rotated away from the registered key");
    assert_eq!(
        (rotated.event.as_str(), rotated.detail.as_str()),
        ("key_rotated", "one replaced by two")
    );
    let device = registry.device("dev-1").await.unwrap().unwrap();
    assert_eq!(
        (device.public_key.as_str(), device.fingerprint.as_str()),
        ("PEM-2", "SHA256:two")
    );
    assert_eq!(
        device.key_rotation_required_at, None,
        "done, no longer required"
    );

    // A second rotation from the old key (a replay, or a race lost) changes nothing.
    let stale = registry
        .rotate_key(
            "dev-1",
            "PEM-1",
            "PEM-3",
            "SHA256:three",
            "one replaced by three",
            4,
        )
        .await
        .unwrap();
    assert!(stale.is_none());
    assert_eq!(
        registry.device("dev-1").await.unwrap().unwrap().public_key,
        "PEM-2"
    );
    let unknown = registry
        .rotate_key("dev-9", "PEM-1", "PEM-3", "SHA256:three", "", 4)
        .await
        .unwrap();
    assert!(unknown.is_none());
    let events = registry.auth_events(Some("dev-1"), 10).await.unwrap();
    assert_eq!(events.len(), 2, "one key_rotated after new_key: {events:?}");
}

async fn a_registered_id_keeps_its_first_key(db: TestDatabase) {
    let registry = open(&db).await;
    let Registration::Registered(new_key) = registry
        .register_new_key("dev-1", "PEM-1", "SHA256:one", Some("1.0"), 10, 1)
        .await
        .unwrap()
    else {
        panic!("registered")
    };
    assert_eq!(
        (new_key.event.as_str(), new_key.detail.as_str()),
        ("new_key", "SHA256:one")
    );
    assert!(matches!(
        registry
            .register_new_key("dev-1", "PEM-2", "SHA256:two", Some("2.0"), 10, 2)
            .await
            .unwrap(),
        Registration::Exists
    ));
    let device = registry.device("dev-1").await.unwrap().unwrap();
    assert_eq!(
        (device.public_key.as_str(), device.status),
        ("PEM-1", DeviceStatus::Pending)
    );
    let events = registry.auth_events(Some("dev-1"), 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "new_key");
}

async fn only_the_latest_container_events_are_kept(db: TestDatabase) {
    let registry = open(&db).await;
    registry
        .register_new_key("dev-1", "PEM", "SHA256:x", None, 10, 0)
        .await
        .unwrap();
    let total = DEVICE_EVENTS_KEPT + 5;
    for n in 0..total {
        registry
            .add_device_event("dev-1", "device.container_event", &json!({ "n": n }), n)
            .await
            .unwrap();
    }
    let events = registry.device_events("dev-1", 5000).await.unwrap();
    assert_eq!(events.len() as i64, DEVICE_EVENTS_KEPT);
    assert_eq!(events[0].payload, json!({ "n": total - 1 }));
    assert_eq!(events.last().unwrap().payload, json!({ "n": 5 }));
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_file_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.db");
    let registry = Registry::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    registry
        .register_new_key("dev-1", "PEM", "SHA256:x", None, 10, 1)
        .await
        .unwrap();
    for file in ["cloud.db", "cloud.db-wal"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

async fn new_ids_stop_at_the_pending_cap_and_known_ones_are_not_counted_again(db: TestDatabase) {
    let registry = open(&db).await;
    for n in 0..3 {
        let registered = registry
            .register_new_key(&format!("dev-{n}"), "PEM", "SHA256:x", None, 3, n)
            .await
            .unwrap();
        assert!(matches!(registered, Registration::Registered(_)), "{n}");
    }
    let full = registry
        .register_new_key("dev-9", "PEM", "SHA256:x", None, 3, 9)
        .await
        .unwrap();
    assert!(matches!(full, Registration::PendingFull));
    assert!(registry.device("dev-9").await.unwrap().is_none());
    // Deciding on one frees its place.
    registry
        .set_status("dev-0", DeviceStatus::Accepted, "", 10)
        .await
        .unwrap();
    let registered = registry
        .register_new_key("dev-9", "PEM", "SHA256:x", None, 3, 11)
        .await
        .unwrap();
    assert!(matches!(registered, Registration::Registered(_)));
}

async fn registrations_at_once_from_two_instances_stop_at_the_cap(db: TestDatabase) {
    // Two handles on one database, as two cloud instances have.
    let (first, second) = (open(&db).await, open(&db).await);
    let attempts = (0..24).map(|n| {
        let registry = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tokio::spawn(async move {
            registry
                .register_new_key(&format!("dev-{n}"), "PEM", "SHA256:x", None, 5, n)
                .await
                .unwrap()
        })
    });
    let registered = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|outcome| matches!(outcome.as_ref().unwrap(), Registration::Registered(_)))
        .count();
    assert_eq!(registered, 5);
    let pending = first.count_by_status().await.unwrap();
    assert_eq!(pending, [(DeviceStatus::Pending, 5)]);
}

async fn refused_attempts_on_a_device_share_one_row_an_hour(db: TestDatabase) {
    let registry = open(&db).await;
    registry
        .register_new_key("dev-1", "PEM", "SHA256:x", None, 10, 0)
        .await
        .unwrap();
    let hour = cloud::store::registry::AGGREGATION_WINDOW.as_millis() as i64;
    for n in 0..50 {
        let detail = format!("attempt {n}");
        registry
            .add_refused_attempt("dev-1", AuthEventKind::KeyMismatch, &detail, 1 + n)
            .await
            .unwrap();
    }
    let events = registry.auth_events(Some("dev-1"), 100).await.unwrap();
    let mismatches: Vec<_> = events
        .iter()
        .filter(|e| e.event == "key_mismatch")
        .collect();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(
        (
            mismatches[0].count,
            mismatches[0].detail.as_str(),
            mismatches[0].at
        ),
        (50, "attempt 49", 50)
    );
    // In the next clock hour, a new row starts.
    let later = registry
        .add_refused_attempt("dev-1", AuthEventKind::KeyMismatch, "later", 51 + hour)
        .await
        .unwrap();
    assert_eq!(later.count, 1);
    assert_ne!(later.id, mismatches[0].id);
}

async fn pending_devices_not_seen_for_long_are_forgotten_and_the_others_kept(db: TestDatabase) {
    let registry = open(&db).await;
    for (id, seen) in [("stale", 10), ("fresh", 1_000), ("accepted-stale", 10)] {
        registry
            .register_new_key(id, "PEM", "SHA256:x", None, 10, seen)
            .await
            .unwrap();
    }
    registry
        .set_status("accepted-stale", DeviceStatus::Accepted, "", 20)
        .await
        .unwrap();
    let forgotten = registry.forget_stale_pending(500, 2_000).await.unwrap();
    assert_eq!(forgotten, ["stale"]);
    assert!(registry.device("stale").await.unwrap().is_none());
    assert!(registry.device("fresh").await.unwrap().is_some());
    assert!(registry.device("accepted-stale").await.unwrap().is_some());
    let events = registry.auth_events(Some("stale"), 10).await.unwrap();
    assert_eq!(
        (events[0].event.as_str(), events[0].detail.as_str()),
        ("deleted", "pending expired")
    );
}

async fn the_audit_log_keeps_its_retention_and_its_most_rows(db: TestDatabase) {
    use cloud::store::audit::{Action, AuditLog};
    use std::time::Duration;

    let registry = open(&db).await;
    let audit = AuditLog::new(registry.pool().clone());
    let action = Action {
        actor: "alice",
        action: "rpc",
        target: "dev-1",
        outcome: "ok",
        detail: "",
        latency_ms: None,
    };
    for at in 0..10 {
        audit.record(&action, at * 1_000).await.unwrap();
        registry
            .add_auth_event("dev-1", AuthEventKind::Authenticated, "", at * 1_000)
            .await
            .unwrap();
    }
    // Older than 5 s at 10 s: 0..=4 go; of the rest, the newest 3 stay.
    let pruned = audit
        .prune(10_000, Duration::from_millis(5_000), 3)
        .await
        .unwrap();
    assert_eq!(pruned, 14);
    let page = audit.page(&Default::default(), 0, 100).await.unwrap();
    let kept: Vec<(String, i64)> = page
        .entries
        .iter()
        .map(|e| (e.source.clone(), e.at))
        .collect();
    let expected: Vec<(String, i64)> = [9_000, 8_000, 7_000]
        .into_iter()
        .flat_map(|at| [("device".to_owned(), at), ("operator".to_owned(), at)])
        .collect();
    assert_eq!(kept, expected);
}

#[tokio::test]
async fn a_checkpoint_empties_the_write_ahead_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a/b/cloud.db").display());
    let registry = Registry::open(&url).await.unwrap();
    let wal = dir.path().join("a/b/cloud.db-wal");
    for n in 0..200 {
        registry
            .register_new_key(&format!("dev-{n}"), "PEM", "SHA256:x", None, 1_000, n)
            .await
            .unwrap();
    }
    let before = std::fs::metadata(&wal).unwrap().len();
    assert!(before > 0, "writes go to the log first");
    registry.checkpoint().await.unwrap();
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        0,
        "the log is emptied (it held {before} bytes)"
    );
}

async fn actions_recorded_at_once_are_each_stored_and_told_their_own_entry(db: TestDatabase) {
    use cloud::store::audit::{Action, AuditFilter, AuditLog};

    let registry = open(&db).await;
    let audit = AuditLog::new(registry.pool().clone());
    // Far more than one group, all waiting at once.
    let recorders = (0..600).map(|n| {
        let audit = audit.clone();
        tokio::spawn(async move {
            let target = format!("dev-{n}");
            let action = Action {
                actor: "alice",
                action: "rpc",
                target: &target,
                outcome: "ok",
                detail: "containers.list",
                latency_ms: Some(n),
            };
            audit.record(&action, 1_000 + n).await.unwrap()
        })
    });
    let told: Vec<_> = futures::future::join_all(recorders)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let mut ids: Vec<i64> = told.iter().map(|entry| entry.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 600, "every action has an id of its own");
    let page = audit.page(&AuditFilter::default(), 0, 500).await.unwrap();
    assert_eq!(page.total, 600);
    for stored in &page.entries {
        let recorded = told.iter().find(|entry| entry.id == stored.id).unwrap();
        assert_eq!(recorded, stored, "the recorder was told the row as stored");
        assert_eq!(stored.target, format!("dev-{}", stored.at - 1_000));
    }
}

async fn an_operator_signs_in_with_a_session_and_a_token_until_they_end(db: TestDatabase) {
    let registry = open(&db).await;
    let accounts = cloud::store::Accounts::new(registry.pool().clone());
    let alice = accounts
        .add_operator("alice", "correct horse", Role::Admin, 1)
        .await
        .unwrap();
    assert!(accounts
        .add_operator("alice", "other", Role::Admin, 2)
        .await
        .is_err());
    let checked = accounts
        .check_password("alice", "correct horse")
        .await
        .unwrap();
    assert_eq!(checked.as_ref().map(|o| o.id), Some(alice.id));
    assert!(accounts
        .check_password("alice", "wrong")
        .await
        .unwrap()
        .is_none());

    let session = accounts.start_session(&alice, "", 10).await.unwrap();
    let live = accounts
        .session(&session.secret, 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (live.operator.name.as_str(), live.csrf_token),
        ("alice", session.csrf_token)
    );
    accounts.end_session(&session.secret).await.unwrap();
    assert!(accounts
        .session(&session.secret, 30)
        .await
        .unwrap()
        .is_none());

    let (token, secret) = accounts
        .create_token(&alice, "ci", Role::Admin, 40)
        .await
        .unwrap();
    let (owner, _) = accounts.token_owner(&secret, 50).await.unwrap().unwrap();
    assert_eq!(owner.name, "alice");
    accounts.revoke_token(token.id, 60).await.unwrap();
    assert!(accounts.token_owner(&secret, 70).await.unwrap().is_none());
}

async fn roles_sessions_and_tokens_are_kept_per_operator(db: TestDatabase) {
    let registry = open(&db).await;
    let accounts = cloud::store::Accounts::new(registry.pool().clone());
    let alice = accounts
        .add_operator("alice", "correct horse", Role::Admin, 1)
        .await
        .unwrap();
    let bob = accounts
        .add_operator("bob", "battery staple", Role::Viewer, 2)
        .await
        .unwrap();
    assert_eq!(bob.role, Role::Viewer);
    let bob = accounts.set_role("bob", Role::Operator).await.unwrap();
    assert_eq!(bob.role, Role::Operator);
    assert!(accounts.set_role("nobody", Role::Admin).await.is_err());
    let roles: Vec<_> = accounts
        .operators()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("alice".into(), Role::Admin),
            ("bob".into(), Role::Operator)
        ]
    );
    // A session reads its operator's role as it is now.
    let laptop = accounts
        .start_session(&bob, "10.0.0.1 · Firefox", 10)
        .await
        .unwrap();
    let phone = accounts
        .start_session(&bob, "10.0.0.2 · Safari", 20)
        .await
        .unwrap();
    accounts.set_role("bob", Role::Viewer).await.unwrap();
    let live = accounts.session(&laptop.secret, 30).await.unwrap().unwrap();
    assert_eq!(live.operator.role, Role::Viewer);

    let sessions = accounts.sessions_of(&bob, 40).await.unwrap();
    let clients: Vec<_> = sessions.iter().map(|s| s.client.as_str()).collect();
    assert_eq!(
        clients,
        ["10.0.0.2 · Safari", "10.0.0.1 · Firefox"],
        "the latest used first"
    );
    let laptop_id = sessions[1].id.clone();
    // Alice cannot end Bob's session by its id; Bob can.
    assert!(accounts.end_session_of(&alice, &laptop_id).await.is_err());
    assert!(accounts.end_session_of(&bob, "not-an-id").await.is_err());
    accounts.end_session_of(&bob, &laptop_id).await.unwrap();
    assert!(accounts
        .session(&laptop.secret, 50)
        .await
        .unwrap()
        .is_none());
    assert!(accounts.session(&phone.secret, 50).await.unwrap().is_some());

    let (_, bobs_secret) = accounts
        .create_token(&bob, "script", Role::Viewer, 60)
        .await
        .unwrap();
    accounts
        .create_token(&alice, "ci", Role::Operator, 61)
        .await
        .unwrap();
    let names = |tokens: Vec<cloud::store::ApiToken>| -> Vec<String> {
        tokens.into_iter().map(|t| t.name).collect()
    };
    assert_eq!(
        names(accounts.tokens(Some(&bob)).await.unwrap()),
        ["script"]
    );
    assert_eq!(
        names(accounts.tokens(None).await.unwrap()),
        ["ci", "script"]
    );
    let (owner, token) = accounts
        .token_owner(&bobs_secret, 70)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((owner.role, token.role), (Role::Viewer, Role::Viewer));
}

async fn a_preauthorized_device_is_accepted_before_it_first_connects(db: TestDatabase) {
    let registry = open(&db).await;
    let record = registry
        .preauthorize("dev-1", "PEM-1", "SHA256:one", "alice", 5)
        .await
        .unwrap()
        .expect("a new id is registered");
    assert_eq!(record.status, DeviceStatus::Accepted);
    assert_eq!(record.preauthorized_by.as_deref(), Some("alice"));
    assert!(record.never_connected());
    // A known id is left as it is.
    assert!(registry
        .preauthorize("dev-1", "PEM-2", "SHA256:two", "mallory", 6)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        registry.device("dev-1").await.unwrap().unwrap().public_key,
        "PEM-1"
    );
    let events = registry.auth_events(Some("dev-1"), 10).await.unwrap();
    assert_eq!(events[0].event, AuthEventKind::Preauthorized.as_str());
    assert!(events[0].detail.contains("alice"), "{}", events[0].detail);

    let first = registry
        .record_authenticated(&record, Some("1.0"), 10)
        .await
        .unwrap();
    assert!(
        first.detail.contains("preauthorized by alice"),
        "the first connection says it was preauthorized: {}",
        first.detail
    );
    let record = registry.device("dev-1").await.unwrap().unwrap();
    assert!(!record.never_connected());
    let second = registry
        .record_authenticated(&record, Some("1.0"), 20)
        .await
        .unwrap();
    assert_eq!(second.detail, "accepted");
}

async fn sign_in_failures_count_within_a_minute_from_the_first(db: TestDatabase) {
    use std::time::Duration;
    let registry = open(&db).await;
    let accounts = cloud::store::Accounts::new(registry.pool().clone());
    let minute = Duration::from_secs(60);
    let sources = [
        "address 10.0.0.1".to_owned(),
        "name alice 10.0.0.1".to_owned(),
    ];
    for at in [1_000, 2_000, 3_000] {
        accounts
            .record_sign_in_failure(&sources, minute, at)
            .await
            .unwrap();
    }
    let counted = accounts
        .sign_in_failures(&sources[1], minute, 4_000)
        .await
        .unwrap();
    assert_eq!(counted, Some((3, 1_000)));
    // The minute from the first failure is over: nothing counts, and the
    // next failure starts a new window.
    assert_eq!(
        accounts
            .sign_in_failures(&sources[0], minute, 61_000)
            .await
            .unwrap(),
        None
    );
    accounts
        .record_sign_in_failure(&sources, minute, 62_000)
        .await
        .unwrap();
    let counted = accounts
        .sign_in_failures(&sources[0], minute, 62_500)
        .await
        .unwrap();
    assert_eq!(counted, Some((1, 62_000)));
}

async fn where_each_device_is_connected_follows_its_instances(db: TestDatabase) {
    let registry = open(&db).await;
    for id in ["dev-1", "dev-2"] {
        registry
            .register_new_key(id, "PEM", "SHA256:x", None, 10, 0)
            .await
            .unwrap();
    }
    registry
        .record_instance_alive("cloud-1", true, 1_000)
        .await
        .unwrap();
    registry
        .record_instance_alive("cloud-2", true, 1_000)
        .await
        .unwrap();
    registry
        .record_connected("dev-1", "cloud-1", 7)
        .await
        .unwrap();
    registry
        .record_connected("dev-2", "cloud-2", 3)
        .await
        .unwrap();
    // Seen from cloud-2: dev-1 is on cloud-1 (its own are not listed here).
    let elsewhere = registry
        .connected_elsewhere("cloud-2", 500, None)
        .await
        .unwrap();
    assert_eq!(elsewhere, [("dev-1".to_owned(), "cloud-1".to_owned())]);
    // An older connection closing does not undo a newer one's record.
    registry
        .record_disconnected("dev-1", "cloud-1", 6, 2_000)
        .await
        .unwrap();
    assert_eq!(
        registry
            .connected_elsewhere("cloud-2", 500, Some("dev-1"))
            .await
            .unwrap()
            .len(),
        1
    );
    registry
        .record_disconnected("dev-1", "cloud-1", 7, 2_000)
        .await
        .unwrap();
    assert!(registry
        .connected_elsewhere("cloud-2", 500, Some("dev-1"))
        .await
        .unwrap()
        .is_empty());
    // An instance not alive since `alive_since` holds nothing any more.
    let from_one = registry
        .connected_elsewhere("cloud-1", 1_500, None)
        .await
        .unwrap();
    assert!(from_one.is_empty(), "{from_one:?}");
    // Restarting, an instance forgets what it held before.
    registry
        .record_instance_alive("cloud-2", true, 3_000)
        .await
        .unwrap();
    assert!(registry
        .connected_elsewhere("cloud-1", 2_500, None)
        .await
        .unwrap()
        .is_empty());
}

async fn tags_change_in_one_transaction_within_their_cap(db: TestDatabase) {
    use cloud::store::tags::{DeviceTags, TagUpdate};
    use cloud::store::TagSet;
    let registry = open(&db).await;
    registry
        .register_new_key("dev-1", "PEM-1", "SHA256:one", None, 10, 1)
        .await
        .unwrap();
    let tags = DeviceTags::new(registry.pool().clone());
    let set = |pairs: &[(&str, &str)]| -> TagSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let update = tags
        .update(
            "dev-1",
            &set(&[("site", "berlin"), ("env", "prod")]),
            &[],
            false,
            2,
        )
        .await
        .unwrap();
    assert_eq!(
        update,
        TagUpdate::Updated(set(&[("env", "prod"), ("site", "berlin")]))
    );
    // Over the cap: nothing changes.
    let update = tags
        .update("dev-1", &set(&[("rack", "7")]), &[], false, 2)
        .await
        .unwrap();
    assert_eq!(update, TagUpdate::TooMany);
    assert_eq!(tags.of("dev-1").await.unwrap().len(), 2);
    // A value replaced, a key removed, in one change.
    let update = tags
        .update(
            "dev-1",
            &set(&[("site", "paris")]),
            &["env".into()],
            false,
            2,
        )
        .await
        .unwrap();
    assert_eq!(update, TagUpdate::Updated(set(&[("site", "paris")])));
    let update = tags
        .update("nobody", &set(&[("a", "b")]), &[], true, 2)
        .await
        .unwrap();
    assert_eq!(update, TagUpdate::UnknownDevice);
    assert_eq!(
        tags.all().await.unwrap()["dev-1"],
        set(&[("site", "paris")])
    );
    // A deleted device's tags go with it.
    registry.delete("dev-1", "by test", 2).await.unwrap();
    assert!(tags.all().await.unwrap().is_empty());
}

async fn a_queued_call_is_claimed_once_and_expires_unclaimed(db: TestDatabase) {
    use cloud::store::queued_calls::{Enqueued, NewQueuedCall, QueuedCalls};
    let registry = open(&db).await;
    let calls = QueuedCalls::new(registry.pool().clone());
    let params = json!({"id": "web"});
    let call = |key: Option<&'static str>, expires_at| NewQueuedCall {
        device_id: "dev-1",
        method: "containers.restart",
        params: Some(&params),
        timeout_ms: 1000,
        created_by: "ann",
        expires_at,
        idempotency_key: key,
    };
    let Enqueued::New(first) = calls
        .enqueue(&call(Some("k"), 100), 2, 10, 1)
        .await
        .unwrap()
    else {
        panic!("stored");
    };
    assert_eq!(
        (first.state.as_str(), first.params.as_ref()),
        ("queued", Some(&params))
    );
    let Enqueued::Existing(again) = calls
        .enqueue(&call(Some("k"), 100), 2, 10, 1)
        .await
        .unwrap()
    else {
        panic!("the key names the first call");
    };
    assert_eq!(again.id, first.id);
    let Enqueued::New(second) = calls.enqueue(&call(None, 5), 2, 10, 1).await.unwrap() else {
        panic!("no key: a new call");
    };
    assert!(matches!(
        calls.enqueue(&call(None, 5), 2, 10, 1).await.unwrap(),
        Enqueued::DeviceFull
    ));
    assert_eq!(calls.devices_waiting(2).await.unwrap(), ["dev-1"]);
    assert_eq!(
        calls.waiting_for("dev-1", 2).await.unwrap(),
        [first.id, second.id]
    );

    // Claimed once: a second claim (another instance) gets nothing.
    let sent = calls.claim(first.id, 3).await.unwrap().expect("claimed");
    assert_eq!((sent.state.as_str(), sent.sent_at), ("sent", Some(3)));
    assert!(calls.claim(first.id, 3).await.unwrap().is_none());
    let done = calls
        .complete(first.id, Ok(&json!({"ok": true})), 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.result),
        ("successful", Some(json!({"ok": true})))
    );
    assert!(
        calls
            .complete(first.id, Err(("timed_out", "late")), 5)
            .await
            .unwrap()
            .is_none(),
        "ended once"
    );

    // Past its time, the other expires and can no longer be claimed.
    let expired = calls.expire(6).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].id, expired[0].state.as_str()),
        (second.id, "expired")
    );
    assert!(calls.claim(second.id, 7).await.unwrap().is_none());

    // A sent call nobody answered fails `lost` once its timeout has passed.
    let Enqueued::New(third) = calls.enqueue(&call(None, 10_000), 5, 10, 10).await.unwrap() else {
        panic!("stored");
    };
    calls.claim(third.id, 10).await.unwrap().unwrap();
    assert!(
        calls.fail_lost(1000, 11).await.unwrap().is_empty(),
        "within its timeout"
    );
    let lost = calls.fail_lost(1011, 1011).await.unwrap();
    assert_eq!(
        (lost[0].state.as_str(), lost[0].outcome.as_deref()),
        ("failed", Some("lost"))
    );
    assert_eq!(calls.prune(1012).await.unwrap(), 3);
    assert!(calls.of_device("dev-1", 10).await.unwrap().is_empty());
}

async fn job_outcomes_read_in_order_and_old_jobs_are_forgotten(db: TestDatabase) {
    use cloud::store::jobs::{JobOutcome, Jobs, NewJob};
    let registry = open(&db).await;
    let jobs = Jobs::new(registry.pool().clone());
    let new_job = NewJob {
        created_by: "ann",
        instance: "cloud-1",
        method: "containers.list",
        params: None,
        filter: "tag=site%3Dberlin",
        total: 600,
    };
    let id = jobs.create(&new_job, 1).await.unwrap();
    let outcomes: Vec<JobOutcome> = (1..=600)
        .map(|seq| JobOutcome {
            seq,
            device_id: format!("dev-{seq}"),
            outcome: if seq % 3 == 0 {
                "timed_out".into()
            } else {
                "ok".into()
            },
            result: json!({"n": seq}),
            latency_ms: 5,
            finished_at: 2,
        })
        .collect();
    // More than one insert holds.
    jobs.record(id, &outcomes).await.unwrap();
    let page = jobs.outcomes(id, 550, 1000).await.unwrap();
    assert_eq!(page.len(), 50);
    assert_eq!(
        (page[0].seq, page[0].result.clone()),
        (551, json!({"n": 551}))
    );
    assert_eq!(
        jobs.tally(id).await.unwrap(),
        [("ok".to_owned(), 400), ("timed_out".to_owned(), 200)]
    );
    assert_eq!(jobs.job(id).await.unwrap().unwrap().state, "running");
    assert_eq!(jobs.interrupt_all_of("cloud-2", 3).await.unwrap(), 0);
    assert_eq!(jobs.interrupt_all_of("cloud-1", 3).await.unwrap(), 1);
    jobs.finish(id, "finished", 4).await.unwrap();
    assert_eq!(
        jobs.job(id).await.unwrap().unwrap().state,
        "interrupted",
        "ended once"
    );
    let newer = jobs.create(&new_job, 5).await.unwrap();
    let newest = jobs.create(&new_job, 6).await.unwrap();
    assert_eq!(jobs.prune(2).await.unwrap(), 1);
    assert!(jobs.job(id).await.unwrap().is_none());
    assert!(jobs.outcomes(id, 0, 10).await.unwrap().is_empty());
    let latest: Vec<i64> = jobs
        .latest(10)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(latest, [newest, newer]);
}
