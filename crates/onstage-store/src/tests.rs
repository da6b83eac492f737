//! The store against the trait's contract, on real SQLite files where concurrency
//! or persistence matters and in memory elsewhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use onstage_stage::StoreError;
use onstage_stage::ids::{Account, Arn, ResourceKind};
use onstage_stage::model::IngestState;
use onstage_stage::model::{
    ClientAttributes, EventErrorCode, Participant, ParticipantEvent, ParticipantFilter,
    ParticipantReplica, ParticipantState, ReplicationState, ReplicationType, StageSession, Tags,
};
use onstage_stage::store::{
    DeleteOutcome, IngestFilter, InsertOutcome, ResourceRecord, Store, TagOutcome,
};
use serde_json::json;

use crate::SqliteStore;

use onstage_testkit::fixtures::{account_in as account, event, participant, record, replica, tags};

// ----- fixtures ----------------------------------------------------------------------

fn home() -> Account {
    onstage_testkit::account()
}

async fn insert(store: &SqliteStore, record: &ResourceRecord) {
    assert_eq!(
        store.insert_resource(record, None).await.unwrap(),
        InsertOutcome::Inserted
    );
}

async fn stage(store: &SqliteStore, id: &str) -> Arn {
    let r = record(&home(), ResourceKind::Stage, id);
    insert(store, &r).await;
    r.arn
}

fn ids(records: &[ResourceRecord]) -> Vec<&str> {
    records.iter().map(|r| r.arn.id.as_str()).collect()
}

// What the media plane will write. Plain SQL on the writer, as it will be.

async fn insert_session(
    store: &SqliteStore,
    stage: &Arn,
    session_id: &str,
    start_time: i64,
    end_time: Option<i64>,
) {
    sqlx::query("INSERT INTO stage_sessions (stage_arn, session_id, start_time, end_time) VALUES (?1, ?2, ?3, ?4)")
        .bind(stage.to_string())
        .bind(session_id)
        .bind(start_time)
        .bind(end_time)
        .execute(&store.writer)
        .await
        .unwrap();
}

async fn end_session(store: &SqliteStore, stage: &Arn, session_id: &str, end_time: i64) {
    sqlx::query("UPDATE stage_sessions SET end_time = ?3 WHERE stage_arn = ?1 AND session_id = ?2")
        .bind(stage.to_string())
        .bind(session_id)
        .bind(end_time)
        .execute(&store.writer)
        .await
        .unwrap();
}

async fn insert_participant(store: &SqliteStore, stage: &Arn, session_id: &str, p: &Participant) {
    sqlx::query(
        "INSERT INTO participants (stage_arn, session_id, participant_id, user_id, state, first_join_time,
             attributes, published, client, recording_state, protocol, replication_type, replication_state,
             source_stage_arn, source_session_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .bind(stage.to_string())
    .bind(session_id)
    .bind(&p.participant_id)
    .bind(&p.user_id)
    .bind(p.state.as_str())
    .bind(p.first_join_time)
    .bind(serde_json::to_string(&p.attributes).unwrap())
    .bind(p.published)
    .bind(serde_json::to_string(&p.client).unwrap())
    .bind(p.recording_state.as_str())
    .bind(p.protocol.as_str())
    .bind(p.replication_type.as_str())
    .bind(p.replication_state.map(ReplicationState::as_str))
    .bind(&p.source_stage_arn)
    .bind(&p.source_session_id)
    .execute(&store.writer)
    .await
    .unwrap();
}

async fn insert_event(store: &SqliteStore, stage: &Arn, session_id: &str, e: &ParticipantEvent) {
    sqlx::query(
        "INSERT INTO participant_events (stage_arn, session_id, participant_id, name, event_time,
             remote_participant_id, error_code, destination_stage_arn, destination_session_id, replica)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(stage.to_string())
    .bind(session_id)
    .bind(&e.participant_id)
    .bind(e.name.as_str())
    .bind(e.event_time)
    .bind(&e.remote_participant_id)
    .bind(e.error_code.map(EventErrorCode::as_str))
    .bind(&e.destination_stage_arn)
    .bind(&e.destination_session_id)
    .bind(e.replica)
    .execute(&store.writer)
    .await
    .unwrap();
}

async fn insert_replica(store: &SqliteStore, r: &ParticipantReplica) {
    sqlx::query(
        "INSERT INTO participant_replicas (source_stage_arn, participant_id, source_session_id,
             destination_stage_arn, destination_session_id, replication_state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&r.source_stage_arn)
    .bind(&r.participant_id)
    .bind(&r.source_session_id)
    .bind(&r.destination_stage_arn)
    .bind(&r.destination_session_id)
    .bind(r.replication_state.as_str())
    .execute(&store.writer)
    .await
    .unwrap();
}

async fn count(store: &SqliteStore, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&store.reader)
        .await
        .unwrap()
}

// ----- configuration resources -------------------------------------------------------

#[tokio::test]
async fn resource_round_trip() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let storage = record(&home(), ResourceKind::StorageConfiguration, "storage00001");
    insert(&store, &storage).await;
    let mut r = record(&home(), ResourceKind::PublicKey, "key000000001");
    r.tags = tags(&[("team", "video"), ("empty", "")]);
    r.body = json!({ "name": "k", "material": "-----BEGIN PUBLIC KEY-----\n...", "nested": { "n": [1, 2.5, null] } });
    r.unique_key = Some("fingerprint".into());
    r.refers_to = Some(storage.arn.to_string());
    insert(&store, &r).await;

    assert_eq!(store.get_resource(&r.arn).await.unwrap(), Some(r.clone()));
    assert_eq!(
        store.get_resource(&storage.arn).await.unwrap(),
        Some(storage.clone())
    );
    let missing = Arn::new(&home(), ResourceKind::PublicKey, "key000000002");
    assert_eq!(store.get_resource(&missing).await.unwrap(), None);
    // The same id under another kind is another resource.
    let other_kind = Arn::new(&home(), ResourceKind::Stage, "key000000001");
    assert_eq!(store.get_resource(&other_kind).await.unwrap(), None);

    let body = json!({ "name": "renamed" });
    assert!(store.update_resource(&r.arn, &body, None).await.unwrap());
    let updated = store.get_resource(&r.arn).await.unwrap().unwrap();
    assert_eq!(
        updated,
        ResourceRecord {
            body: body.clone(),
            refers_to: None,
            ..r.clone()
        }
    );
    assert!(!store.update_resource(&missing, &body, None).await.unwrap());
}

#[tokio::test]
async fn references_to_missing_resources_are_refused() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let mut r = record(&home(), ResourceKind::Stage, "stage0000001");
    let gone = Arn::new(&home(), ResourceKind::StorageConfiguration, "gone00000000").to_string();
    r.refers_to = Some(gone.clone());
    match store.insert_resource(&r, None).await {
        Err(StoreError::MissingReference(target)) => assert_eq!(target, gone),
        other => panic!("expected a missing reference, got {other:?}"),
    }
    assert_eq!(store.get_resource(&r.arn).await.unwrap(), None);

    let arn = stage(&store, "stage0000002").await;
    assert!(matches!(
        store.update_resource(&arn, &json!({}), Some(&gone)).await,
        Err(StoreError::MissingReference(target)) if target == gone
    ));
    assert_eq!(
        store.get_resource(&arn).await.unwrap().unwrap().refers_to,
        None
    );
}

#[tokio::test]
async fn list_pages_are_stable_under_concurrent_inserts_and_deletes() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        stage(&store, &format!("stage0000000{id}")).await;
    }
    let first = store
        .list_resources(&home(), ResourceKind::Stage, None, 2)
        .await
        .unwrap();
    assert_eq!(ids(&first.items), ["stage0000000a", "stage0000000b"]);
    let cursor = first.next.unwrap();

    // New resources go to the end; a deleted one simply disappears.
    stage(&store, "stage0000000f").await;
    stage(&store, "stage0000000g").await;
    let c = Arn::new(&home(), ResourceKind::Stage, "stage0000000c");
    assert_eq!(
        store.delete_resource(&c).await.unwrap(),
        DeleteOutcome::Deleted
    );

    let second = store
        .list_resources(&home(), ResourceKind::Stage, Some(cursor), 2)
        .await
        .unwrap();
    assert_eq!(ids(&second.items), ["stage0000000d", "stage0000000e"]);
    let third = store
        .list_resources(&home(), ResourceKind::Stage, second.next, 2)
        .await
        .unwrap();
    assert_eq!(ids(&third.items), ["stage0000000f", "stage0000000g"]);
    assert_eq!(
        third.next, None,
        "no further page when the last one is exactly full"
    );

    let all = store
        .list_resources(&home(), ResourceKind::Stage, None, 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 6);
    assert_eq!(all.next, None);
    let empty = store
        .list_resources(&home(), ResourceKind::PublicKey, None, 100)
        .await
        .unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.next, None);
}

#[tokio::test]
async fn list_is_scoped_to_account_region_and_kind() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let other_account = account("111111111111", "us-east-1");
    let other_region = account("000000000000", "eu-west-1");
    insert(
        &store,
        &record(&home(), ResourceKind::Stage, "home00000001"),
    )
    .await;
    insert(
        &store,
        &record(&other_account, ResourceKind::Stage, "acct00000001"),
    )
    .await;
    insert(
        &store,
        &record(&other_region, ResourceKind::Stage, "regn00000001"),
    )
    .await;
    insert(
        &store,
        &record(&home(), ResourceKind::StorageConfiguration, "stor00000001"),
    )
    .await;

    let list = |a: Account, kind| {
        let store = store.clone();
        async move {
            store
                .list_resources(&a, kind, None, 50)
                .await
                .unwrap()
                .items
        }
    };
    assert_eq!(
        ids(&list(home(), ResourceKind::Stage).await),
        ["home00000001"]
    );
    assert_eq!(
        ids(&list(other_account.clone(), ResourceKind::Stage).await),
        ["acct00000001"]
    );
    assert_eq!(
        ids(&list(other_region, ResourceKind::Stage).await),
        ["regn00000001"]
    );
    assert_eq!(
        ids(&list(home(), ResourceKind::StorageConfiguration).await),
        ["stor00000001"]
    );
    assert!(
        list(other_account, ResourceKind::StorageConfiguration)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_inserts_respect_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.spawn(async move {
            let r = record(
                &home(),
                ResourceKind::StorageConfiguration,
                &format!("storage{i:05}"),
            );
            store.insert_resource(&r, Some(3)).await.unwrap()
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == InsertOutcome::Inserted)
            .count(),
        3
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == InsertOutcome::QuotaExceeded)
            .count(),
        47
    );
    let listed = store
        .list_resources(&home(), ResourceKind::StorageConfiguration, None, 100)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 3);

    // The quota counts one account, region and kind only.
    let elsewhere = record(
        &account("111111111111", "us-east-1"),
        ResourceKind::StorageConfiguration,
        "storage99999",
    );
    assert_eq!(
        store.insert_resource(&elsewhere, Some(3)).await.unwrap(),
        InsertOutcome::Inserted
    );
    let other_kind = record(&home(), ResourceKind::Stage, "stage0000001");
    assert_eq!(
        store.insert_resource(&other_kind, Some(3)).await.unwrap(),
        InsertOutcome::Inserted
    );
    assert_eq!(
        store
            .insert_resource(
                &record(&home(), ResourceKind::StorageConfiguration, "storage88888"),
                Some(0)
            )
            .await
            .unwrap(),
        InsertOutcome::QuotaExceeded
    );
}

#[tokio::test]
async fn duplicate_unique_keys_are_refused_within_a_scope() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let keyed = |a: &Account, kind, id: &str, key: Option<&str>| ResourceRecord {
        unique_key: key.map(str::to_owned),
        ..record(a, kind, id)
    };
    let first = keyed(&home(), ResourceKind::PublicKey, "key000000001", Some("fp"));
    insert(&store, &first).await;
    let again = keyed(&home(), ResourceKind::PublicKey, "key000000002", Some("fp"));
    assert_eq!(
        store.insert_resource(&again, None).await.unwrap(),
        InsertOutcome::DuplicateKey
    );
    assert_eq!(
        store.insert_resource(&again, Some(1)).await.unwrap(),
        InsertOutcome::DuplicateKey
    );
    assert_eq!(store.get_resource(&again.arn).await.unwrap(), None);

    // The same key elsewhere, or no key at all, is no duplicate.
    insert(
        &store,
        &keyed(
            &account("111111111111", "us-east-1"),
            ResourceKind::PublicKey,
            "key000000003",
            Some("fp"),
        ),
    )
    .await;
    insert(
        &store,
        &keyed(
            &account("000000000000", "eu-west-1"),
            ResourceKind::PublicKey,
            "key000000004",
            Some("fp"),
        ),
    )
    .await;
    insert(
        &store,
        &keyed(
            &home(),
            ResourceKind::StorageConfiguration,
            "key000000005",
            Some("fp"),
        ),
    )
    .await;
    insert(
        &store,
        &keyed(&home(), ResourceKind::PublicKey, "key000000006", None),
    )
    .await;
    insert(
        &store,
        &keyed(&home(), ResourceKind::PublicKey, "key000000007", None),
    )
    .await;

    // A deleted key can be imported again.
    assert_eq!(
        store.delete_resource(&first.arn).await.unwrap(),
        DeleteOutcome::Deleted
    );
    insert(&store, &again).await;
}

#[tokio::test]
async fn delete_is_refused_while_referenced() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let storage = record(&home(), ResourceKind::StorageConfiguration, "storage00001");
    insert(&store, &storage).await;
    let user = ResourceRecord {
        refers_to: Some(storage.arn.to_string()),
        ..record(&home(), ResourceKind::Stage, "stage0000001")
    };
    insert(&store, &user).await;

    assert_eq!(
        store.delete_resource(&storage.arn).await.unwrap(),
        DeleteOutcome::InUseBy(user.arn.to_string())
    );
    assert!(store.get_resource(&storage.arn).await.unwrap().is_some());

    assert!(
        store
            .update_resource(&user.arn, &user.body, None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.delete_resource(&storage.arn).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        store.delete_resource(&storage.arn).await.unwrap(),
        DeleteOutcome::NotFound
    );
    assert_eq!(store.get_resource(&storage.arn).await.unwrap(), None);
}

#[tokio::test]
async fn change_tags_merges_removes_and_limits() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let mut r = record(&home(), ResourceKind::Stage, "stage0000001");
    r.tags = tags(&[("a", "1"), ("b", "2")]);
    insert(&store, &r).await;
    let stored_tags = || async { store.get_resource(&r.arn).await.unwrap().unwrap().tags };

    let outcome = store
        .change_tags(&r.arn, &tags(&[("b", "two"), ("c", "3")]), &[], 50)
        .await
        .unwrap();
    assert_eq!(outcome, TagOutcome::Changed);
    assert_eq!(
        stored_tags().await,
        tags(&[("a", "1"), ("b", "two"), ("c", "3")])
    );

    let outcome = store
        .change_tags(&r.arn, &Tags::new(), &["a".into(), "absent".into()], 50)
        .await
        .unwrap();
    assert_eq!(outcome, TagOutcome::Changed);
    assert_eq!(stored_tags().await, tags(&[("b", "two"), ("c", "3")]));

    // Over the limit: nothing changes, not even the overwrite of an existing key.
    let outcome = store
        .change_tags(
            &r.arn,
            &tags(&[("b", "new"), ("d", "4"), ("e", "5")]),
            &[],
            3,
        )
        .await
        .unwrap();
    assert_eq!(outcome, TagOutcome::TooMany);
    assert_eq!(stored_tags().await, tags(&[("b", "two"), ("c", "3")]));
    // Exactly at the limit is fine, and a removal in the same change counts.
    let outcome = store
        .change_tags(&r.arn, &tags(&[("d", "4"), ("e", "5")]), &["c".into()], 3)
        .await
        .unwrap();
    assert_eq!(outcome, TagOutcome::Changed);
    assert_eq!(
        stored_tags().await,
        tags(&[("b", "two"), ("d", "4"), ("e", "5")])
    );

    let missing = Arn::new(&home(), ResourceKind::Stage, "stage0000002");
    assert_eq!(
        store
            .change_tags(&missing, &tags(&[("a", "1")]), &[], 50)
            .await
            .unwrap(),
        TagOutcome::NotFound
    );
}

#[tokio::test]
async fn the_first_secret_wins() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    assert_eq!(
        store.secret("signing-key", b"first").await.unwrap(),
        b"first"
    );
    assert_eq!(
        store.secret("signing-key", b"second").await.unwrap(),
        b"first"
    );
    assert_eq!(
        store.secret("other", &[0, 255, 7]).await.unwrap(),
        [0, 255, 7]
    );
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let store = SqliteStore::open(&data_dir).await.unwrap();
    let mut r = record(&home(), ResourceKind::Stage, "stage0000001");
    r.tags = tags(&[("k", "v")]);
    insert(&store, &r).await;
    insert_session(&store, &r.arn, "st-aaaaaaaaaaaaa", 1, None).await;
    assert_eq!(store.secret("signing-key", b"kept").await.unwrap(), b"kept");
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&data_dir).await.unwrap();
    let back = store.get_resource(&r.arn).await.unwrap().unwrap();
    assert_eq!(
        back,
        ResourceRecord {
            active_session_id: Some("st-aaaaaaaaaaaaa".into()),
            ..r.clone()
        }
    );
    assert_eq!(
        store.secret("signing-key", b"replacement").await.unwrap(),
        b"kept"
    );
    // Inserts after a reopen continue the order.
    stage(&store, "stage0000002").await;
    let listed = store
        .list_resources(&home(), ResourceKind::Stage, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&listed.items), ["stage0000001", "stage0000002"]);
    store.close().await;
}

#[tokio::test]
async fn undecodable_documents_are_reported_as_corrupt() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    sqlx::query("UPDATE resources SET body = 'not json' WHERE arn = ?1")
        .bind(arn.to_string())
        .execute(&store.writer)
        .await
        .unwrap();
    assert!(matches!(
        store.get_resource(&arn).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store
            .list_resources(&home(), ResourceKind::Stage, None, 10)
            .await,
        Err(StoreError::Corrupt(_))
    ));
}

// ----- sessions, participants, events, replicas ------------------------------------

#[tokio::test]
async fn the_running_session_is_the_stages_active_session() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    insert_session(&store, &arn, "st-0000000000001", 10, Some(20)).await;
    assert_eq!(
        store
            .get_resource(&arn)
            .await
            .unwrap()
            .unwrap()
            .active_session_id,
        None
    );

    insert_session(&store, &arn, "st-0000000000002", 30, None).await;
    assert_eq!(
        store
            .get_resource(&arn)
            .await
            .unwrap()
            .unwrap()
            .active_session_id
            .as_deref(),
        Some("st-0000000000002")
    );
    let listed = store
        .list_resources(&home(), ResourceKind::Stage, None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.items[0].active_session_id.as_deref(),
        Some("st-0000000000002")
    );

    end_session(&store, &arn, "st-0000000000002", 40).await;
    assert_eq!(
        store
            .get_resource(&arn)
            .await
            .unwrap()
            .unwrap()
            .active_session_id,
        None
    );
}

#[tokio::test]
async fn sessions_are_listed_newest_first() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    let other = stage(&store, "stage0000002").await;
    for i in 1..=4 {
        insert_session(
            &store,
            &arn,
            &format!("st-000000000000{i}"),
            i * 10,
            Some(i * 10 + 5),
        )
        .await;
    }
    insert_session(&store, &other, "st-0000000000009", 1, None).await;

    let first = store.list_sessions(&arn, None, 3).await.unwrap();
    let session_ids =
        |p: &[StageSession]| p.iter().map(|s| s.session_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        session_ids(&first.items),
        ["st-0000000000004", "st-0000000000003", "st-0000000000002"]
    );
    // A session started between pages belongs before the first page, not in the next.
    insert_session(&store, &arn, "st-0000000000005", 50, None).await;
    let second = store.list_sessions(&arn, first.next, 3).await.unwrap();
    assert_eq!(session_ids(&second.items), ["st-0000000000001"]);
    assert_eq!(second.next, None);

    assert_eq!(
        store.get_session(&arn, "st-0000000000001").await.unwrap(),
        Some(StageSession {
            session_id: "st-0000000000001".into(),
            start_time: 10,
            end_time: Some(15)
        })
    );
    assert_eq!(
        store.get_session(&arn, "st-0000000000009").await.unwrap(),
        None,
        "another stage's session"
    );
    assert_eq!(store.get_session(&arn, "st-unknown").await.unwrap(), None);
}

#[tokio::test]
async fn participants_are_listed_oldest_first_with_filters() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    let session = "st-0000000000001";
    insert_session(&store, &arn, session, 1, None).await;
    insert_session(&store, &arn, "st-0000000000000", 0, Some(1)).await;

    let alice = Participant {
        user_id: Some("alice".into()),
        attributes: BTreeMap::from([("role".to_string(), "host".to_string())]),
        published: true,
        client: ClientAttributes {
            os_name: Some("Linux".into()),
            sdk_version: Some("1.2.3".into()),
            ..Default::default()
        },
        ..participant("p1")
    };
    let bob = Participant {
        user_id: Some("bob".into()),
        state: ParticipantState::Disconnected,
        ..participant("p2")
    };
    let replica = Participant {
        user_id: Some("alice".into()),
        published: true,
        recording_state: onstage_stage::model::RecordingState::Active,
        recording: None,
        replication_type: ReplicationType::Replica,
        replication_state: Some(ReplicationState::Active),
        source_stage_arn: Some("arn:aws:ivs:us-east-1:000000000000:stage/source000001".into()),
        source_session_id: Some("st-000000000000s".into()),
        ..participant("p3")
    };
    for p in [&alice, &bob, &replica] {
        insert_participant(&store, &arn, session, p).await;
    }
    insert_participant(&store, &arn, "st-0000000000000", &participant("p0")).await;

    let list = |filter: ParticipantFilter, after, limit| {
        let (store, arn) = (store.clone(), arn.clone());
        async move {
            store
                .list_participants(&arn, session, &filter, after, limit)
                .await
                .unwrap()
        }
    };
    let pids = |p: &[Participant]| {
        p.iter()
            .map(|p| p.participant_id.clone())
            .collect::<Vec<_>>()
    };

    let all = list(ParticipantFilter::None, None, 10).await;
    assert_eq!(all.items, [alice.clone(), bob.clone(), replica.clone()]);
    assert_eq!(all.next, None);

    let first = list(ParticipantFilter::None, None, 2).await;
    assert_eq!(pids(&first.items), ["p1", "p2"]);
    let rest = list(ParticipantFilter::None, first.next, 2).await;
    assert_eq!(pids(&rest.items), ["p3"]);
    assert_eq!(rest.next, None);

    assert_eq!(
        pids(
            &list(ParticipantFilter::UserId("alice".into()), None, 10)
                .await
                .items
        ),
        ["p1", "p3"]
    );
    assert_eq!(
        pids(
            &list(ParticipantFilter::UserId("carol".into()), None, 10)
                .await
                .items
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        pids(
            &list(ParticipantFilter::Published(true), None, 10)
                .await
                .items
        ),
        ["p1", "p3"]
    );
    assert_eq!(
        pids(
            &list(ParticipantFilter::Published(false), None, 10)
                .await
                .items
        ),
        ["p2"]
    );
    assert_eq!(
        pids(
            &list(
                ParticipantFilter::State(ParticipantState::Connected),
                None,
                10
            )
            .await
            .items
        ),
        ["p1", "p3"]
    );
    assert_eq!(
        pids(
            &list(
                ParticipantFilter::State(ParticipantState::Disconnected),
                None,
                10
            )
            .await
            .items
        ),
        ["p2"]
    );
    assert_eq!(
        pids(
            &list(
                ParticipantFilter::RecordingState(onstage_stage::model::RecordingState::Active),
                None,
                10
            )
            .await
            .items
        ),
        ["p3"]
    );

    // The filter applies before the page is cut, so pages are full.
    let filtered = list(ParticipantFilter::UserId("alice".into()), None, 1).await;
    assert_eq!(pids(&filtered.items), ["p1"]);
    let filtered = list(ParticipantFilter::UserId("alice".into()), filtered.next, 1).await;
    assert_eq!(pids(&filtered.items), ["p3"]);
    assert_eq!(filtered.next, None);

    assert_eq!(
        store.get_participant(&arn, session, "p3").await.unwrap(),
        Some(replica)
    );
    assert_eq!(
        store.get_participant(&arn, session, "p0").await.unwrap(),
        None,
        "in another session"
    );
    assert_eq!(
        store
            .get_participant(&arn, "st-0000000000000", "p0")
            .await
            .unwrap(),
        Some(participant("p0"))
    );
}

#[tokio::test]
async fn events_are_listed_newest_first() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    let session = "st-0000000000001";
    insert_session(&store, &arn, session, 1, None).await;
    let joined = event("p1", "JOINED", 100);
    let published = event("p1", "PUBLISH_STARTED", 200);
    let replication = ParticipantEvent {
        destination_stage_arn: Some("arn:aws:ivs:us-east-1:000000000000:stage/destination1".into()),
        destination_session_id: Some("st-000000000000d".into()),
        ..event("p1", "REPLICATION_STARTED", 300)
    };
    let subscribed = ParticipantEvent {
        remote_participant_id: Some("p9".into()),
        replica: true,
        ..event("p1", "SUBSCRIBE_STARTED", 400)
    };
    for e in [&joined, &published, &replication, &subscribed] {
        insert_event(&store, &arn, session, e).await;
    }
    insert_event(&store, &arn, session, &event("p2", "JOINED", 150)).await;

    let first = store
        .list_events(&arn, session, "p1", None, 3)
        .await
        .unwrap();
    assert_eq!(
        first.items,
        [subscribed.clone(), replication.clone(), published.clone()]
    );
    insert_event(&store, &arn, session, &event("p1", "LEFT", 500)).await;
    let second = store
        .list_events(&arn, session, "p1", first.next, 3)
        .await
        .unwrap();
    assert_eq!(second.items, [joined]);
    assert_eq!(second.next, None);

    assert!(
        store
            .list_events(&arn, "st-unknown", "p1", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let error = ParticipantEvent {
        error_code: Some(EventErrorCode::InsufficientCapabilities),
        ..event("p3", "JOIN_ERROR", 600)
    };
    insert_event(&store, &arn, session, &error).await;
    assert_eq!(
        store
            .list_events(&arn, session, "p3", None, 10)
            .await
            .unwrap()
            .items,
        [error]
    );
}

#[tokio::test]
async fn replicas_are_listed_oldest_first() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let source = stage(&store, "source000001").await;
    let destinations = [
        stage(&store, "destin000001").await,
        stage(&store, "destin000002").await,
        stage(&store, "destin000003").await,
    ];
    insert_session(&store, &source, "st-000000000000s", 1, None).await;
    let rows: Vec<ParticipantReplica> = destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            replica(
                &source,
                "p1",
                "st-000000000000s",
                d,
                &format!("st-00000000000d{i}"),
                if i == 0 {
                    ReplicationState::Stopped
                } else {
                    ReplicationState::Active
                },
            )
        })
        .collect();
    for r in &rows {
        insert_replica(&store, r).await;
    }
    insert_replica(
        &store,
        &replica(
            &source,
            "p2",
            "st-000000000000s",
            &destinations[0],
            "st-00000000000d0",
            ReplicationState::Active,
        ),
    )
    .await;

    let first = store.list_replicas(&source, "p1", None, 2).await.unwrap();
    assert_eq!(first.items, rows[..2]);
    let second = store
        .list_replicas(&source, "p1", first.next, 2)
        .await
        .unwrap();
    assert_eq!(second.items, rows[2..]);
    assert_eq!(second.next, None);
    assert!(
        store
            .list_replicas(&destinations[0], "p1", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_replicas(&source, "p9", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn deleting_a_stage_takes_its_history_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let source = stage(&store, "source000001").await;
    let doomed = stage(&store, "doomed000001").await;
    let survivor = stage(&store, "surviv000001").await;
    for (arn, session) in [
        (&source, "st-000000000000s"),
        (&doomed, "st-000000000000d"),
        (&survivor, "st-000000000000v"),
    ] {
        insert_session(&store, arn, session, 1, None).await;
        insert_participant(&store, arn, session, &participant("p1")).await;
        insert_event(&store, arn, session, &event("p1", "JOINED", 2)).await;
    }
    // `doomed` is the destination of one replication and the source of another.
    let into_doomed = replica(
        &source,
        "p1",
        "st-000000000000s",
        &doomed,
        "st-000000000000d",
        ReplicationState::Active,
    );
    let out_of_doomed = replica(
        &doomed,
        "p1",
        "st-000000000000d",
        &survivor,
        "st-000000000000v",
        ReplicationState::Active,
    );
    insert_replica(&store, &into_doomed).await;
    insert_replica(&store, &out_of_doomed).await;

    assert_eq!(
        store.delete_resource(&doomed).await.unwrap(),
        DeleteOutcome::Deleted
    );

    assert_eq!(store.get_resource(&doomed).await.unwrap(), None);
    assert!(
        store
            .list_sessions(&doomed, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_participants(
                &doomed,
                "st-000000000000d",
                &ParticipantFilter::None,
                None,
                10
            )
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_events(&doomed, "st-000000000000d", "p1", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_replicas(&doomed, "p1", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Replications into the deleted stage stay listed under their source (BEHAVIOUR §5).
    assert_eq!(
        store
            .list_replicas(&source, "p1", None, 10)
            .await
            .unwrap()
            .items,
        [into_doomed]
    );
    // Nothing of the other stages went.
    assert_eq!(count(&store, "stage_sessions").await, 2);
    assert_eq!(count(&store, "participants").await, 2);
    assert_eq!(count(&store, "participant_events").await, 2);
    assert_eq!(count(&store, "participant_replicas").await, 1);
    store.close().await;
}

/// Not a correctness test: how many `get_resource` calls a second the store serves
/// (the server must answer 5,000 GetStage/s on two cores, HTTP and signatures
/// included). `cargo test -p onstage-store --release -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn get_resource_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).await.unwrap());
    let mut arns = Vec::new();
    for i in 0..1000 {
        let arn = stage(&store, &format!("stage{i:07}")).await;
        if i % 2 == 0 {
            insert_session(&store, &arn, &format!("st-{i:013}"), 1, None).await;
        }
        arns.push(arn);
    }
    let arns = Arc::new(arns);
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    const TASKS: usize = 16;
    const CALLS: usize = 5_000;
    for t in 0..TASKS {
        let (store, arns) = (store.clone(), arns.clone());
        tasks.spawn(async move {
            for i in 0..CALLS {
                let arn = &arns[(t * 7919 + i) % arns.len()];
                assert!(store.get_resource(arn).await.unwrap().is_some());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{} get_resource in {elapsed:?}: {:.0}/s",
        TASKS * CALLS,
        (TASKS * CALLS) as f64 / elapsed.as_secs_f64()
    );
}

// ----- ingest configurations ------------------------------------------------------------

#[tokio::test]
async fn ingest_configurations_filter_by_stage_and_live_stream() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let s1 = stage(&store, "s1").await;
    let s2 = stage(&store, "s2").await;
    let mut on1 = record(&home(), ResourceKind::IngestConfiguration, "i1");
    on1.refers_to = Some(s1.to_string());
    let mut on2 = record(&home(), ResourceKind::IngestConfiguration, "i2");
    on2.refers_to = Some(s2.to_string());
    let loose = record(&home(), ResourceKind::IngestConfiguration, "i3");
    let foreign = record(
        &account("111111111111", "us-east-1"),
        ResourceKind::IngestConfiguration,
        "i4",
    );
    for r in [&on1, &on2, &loose, &foreign] {
        insert(&store, r).await;
    }
    let list = |stage: Option<&Arn>, state: Option<IngestState>| {
        let store = store.clone();
        let filter = IngestFilter {
            stage_arn: stage.map(|s| s.to_string()),
            state,
        };
        async move {
            store
                .list_ingest_configurations(&home(), &filter, None, 10)
                .await
                .unwrap()
                .items
        }
    };
    assert_eq!(ids(&list(None, None).await), ["i1", "i2", "i3"]);
    assert_eq!(ids(&list(Some(&s1), None).await), ["i1"]);
    assert!(list(None, Some(IngestState::Active)).await.is_empty());

    // A live stream: ACTIVE, with the session it is in.
    store
        .set_ingest_stream(&on2.arn, Some((&s2, "st-live")), 5)
        .await
        .unwrap();
    let active = list(None, Some(IngestState::Active)).await;
    assert_eq!(ids(&active), ["i2"]);
    assert_eq!(active[0].active_session_id.as_deref(), Some("st-live"));
    assert_eq!(
        ids(&list(None, Some(IngestState::Inactive)).await),
        ["i1", "i3"]
    );
    // A stage is not "in use" by its configurations once they let go of it.
    assert!(matches!(
        store.delete_resource(&s1).await.unwrap(),
        DeleteOutcome::InUseBy(_)
    ));
    assert_eq!(
        store
            .release_references(&s1, ResourceKind::IngestConfiguration)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.delete_resource(&s1).await.unwrap(),
        DeleteOutcome::Deleted
    );
    let got = store.get_resource(&on1.arn).await.unwrap().unwrap();
    assert_eq!(got.refers_to, None);

    // A restart forgets every live stream; so does the stream's end.
    store.close_interrupted_sessions(10).await.unwrap();
    assert!(list(None, Some(IngestState::Active)).await.is_empty());
    store
        .set_ingest_stream(&on2.arn, Some((&s2, "st-2")), 11)
        .await
        .unwrap();
    store.set_ingest_stream(&on2.arn, None, 12).await.unwrap();
    assert!(list(None, Some(IngestState::Active)).await.is_empty());
    // A deleted configuration cannot go live.
    store.delete_resource(&loose.arn).await.unwrap();
    store
        .set_ingest_stream(&loose.arn, Some((&s2, "st-3")), 13)
        .await
        .unwrap();
    assert!(list(None, Some(IngestState::Active)).await.is_empty());
}
