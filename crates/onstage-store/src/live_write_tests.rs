//! The live plane's writes: sessions, participant records, events, revocations and
//! the clean-up at start-up, read back through the same trait the control plane
//! uses.

use onstage_stage::ids::{Arn, ResourceKind};
use onstage_stage::model::{
    Attributes, ClientAttributes, EventName, Participant, ParticipantEvent, ParticipantFilter,
    ParticipantState, ReplicationState, ReplicationType, StopReason,
};
use onstage_stage::store::{InsertOutcome, InterruptedSessions, LiveWrite, Store};

use crate::SqliteStore;

use onstage_testkit::fixtures::{self, record};

const SESSION: &str = "st-aaaaaaaaaaaaa";

async fn stage(store: &SqliteStore, id: &str) -> Arn {
    let record = record(&onstage_testkit::account(), ResourceKind::Stage, id);
    assert_eq!(
        store.insert_resource(&record, None).await.unwrap(),
        InsertOutcome::Inserted
    );
    record.arn
}

fn participant(
    id: &str,
    state: ParticipantState,
    first_join_time: i64,
    published: bool,
) -> Participant {
    Participant {
        user_id: Some(format!("user-{id}")),
        state,
        first_join_time,
        attributes: Attributes::from([("seat".to_owned(), "3".to_owned())]),
        published,
        client: ClientAttributes {
            browser_name: Some("Chrome".into()),
            ..Default::default()
        },
        ..fixtures::participant(id)
    }
}

fn event(id: &str, name: &str, at: i64) -> LiveWrite {
    LiveWrite::AppendEvent {
        session_id: SESSION.into(),
        event: ParticipantEvent {
            remote_participant_id: (name == "SUBSCRIBE_STARTED").then(|| "pub".to_owned()),
            ..fixtures::event(id, name, at)
        },
    }
}

fn upsert(p: Participant) -> LiveWrite {
    LiveWrite::UpsertParticipant {
        session_id: SESSION.into(),
        participant: Box::new(p),
    }
}

#[tokio::test]
async fn a_session_is_recorded_as_it_happens() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    store
        .write_live(
            &arn,
            &[
                LiveWrite::StartSession {
                    session_id: SESSION.into(),
                    start_time: 100,
                },
                upsert(participant("a", ParticipantState::Connected, 100, false)),
                event("a", "JOINED", 100),
                event("a", "SUBSCRIBE_STARTED", 101),
            ],
        )
        .await
        .unwrap();
    let record = store.get_resource(&arn).await.unwrap().unwrap();
    assert_eq!(record.active_session_id.as_deref(), Some(SESSION));
    let session = store.get_session(&arn, SESSION).await.unwrap().unwrap();
    assert_eq!((session.start_time, session.end_time), (100, None));

    // Publishing, leaving and rejoining within the session: first_join_time stays,
    // published never turns back.
    store
        .write_live(
            &arn,
            &[
                upsert(participant("a", ParticipantState::Connected, 100, true)),
                event("a", "PUBLISH_STARTED", 102),
            ],
        )
        .await
        .unwrap();
    store
        .write_live(
            &arn,
            &[
                upsert(participant("a", ParticipantState::Disconnected, 100, true)),
                event("a", "LEFT", 103),
            ],
        )
        .await
        .unwrap();
    store
        .write_live(
            &arn,
            &[
                upsert(participant("a", ParticipantState::Connected, 200, false)),
                event("a", "JOINED", 200),
            ],
        )
        .await
        .unwrap();
    let a = store
        .get_participant(&arn, SESSION, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.state, ParticipantState::Connected);
    assert_eq!(a.first_join_time, 100);
    assert!(a.published);
    assert_eq!(a.user_id.as_deref(), Some("user-a"));
    assert_eq!(a.attributes["seat"], "3");
    assert_eq!(a.client.browser_name.as_deref(), Some("Chrome"));
    let published = store
        .list_participants(&arn, SESSION, &ParticipantFilter::Published(true), None, 10)
        .await
        .unwrap();
    assert_eq!(published.items.len(), 1);

    let events = store
        .list_events(&arn, SESSION, "a", None, 10)
        .await
        .unwrap();
    let names: Vec<&str> = events.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "JOINED",
            "LEFT",
            "PUBLISH_STARTED",
            "SUBSCRIBE_STARTED",
            "JOINED"
        ]
    );
    assert_eq!(
        events.items[3].remote_participant_id.as_deref(),
        Some("pub")
    );

    store
        .write_live(
            &arn,
            &[
                upsert(participant("a", ParticipantState::Disconnected, 200, false)),
                event("a", "LEFT", 300),
                LiveWrite::EndSession {
                    session_id: SESSION.into(),
                    end_time: 300,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_resource(&arn)
            .await
            .unwrap()
            .unwrap()
            .active_session_id,
        None
    );
    assert_eq!(
        store
            .get_session(&arn, SESSION)
            .await
            .unwrap()
            .unwrap()
            .end_time,
        Some(300)
    );
}

#[tokio::test]
async fn a_batch_is_written_whole_or_not_at_all() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    store
        .write_live(
            &arn,
            &[LiveWrite::StartSession {
                session_id: SESSION.into(),
                start_time: 1,
            }],
        )
        .await
        .unwrap();
    // A second running session is refused, and the participant of the same batch
    // is not written either.
    let refused = store
        .write_live(
            &arn,
            &[
                LiveWrite::StartSession {
                    session_id: "st-bbbbbbbbbbbbb".into(),
                    start_time: 2,
                },
                LiveWrite::UpsertParticipant {
                    session_id: "st-bbbbbbbbbbbbb".into(),
                    participant: Box::new(participant("b", ParticipantState::Connected, 2, false)),
                },
            ],
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(
        store
            .list_sessions(&arn, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(
        store
            .get_participant(&arn, "st-bbbbbbbbbbbbb", "b")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn writes_for_a_deleted_stage_are_dropped() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    store.delete_resource(&arn).await.unwrap();
    store
        .write_live(
            &arn,
            &[
                LiveWrite::StartSession {
                    session_id: SESSION.into(),
                    start_time: 1,
                },
                event("a", "JOINED", 1),
            ],
        )
        .await
        .unwrap();
    assert!(
        store
            .list_sessions(&arn, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn revocations_persist_and_go_with_their_stage() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    let other = stage(&store, "stage0000002").await;
    assert!(!store.is_participant_revoked(&arn, "a").await.unwrap());
    let revoke = |reason: &str| LiveWrite::RevokeParticipant {
        participant_id: "a".into(),
        reason: Some(reason.into()),
        at: 5,
    };
    store.write_live(&arn, &[revoke("spam")]).await.unwrap();
    store.write_live(&arn, &[revoke("again")]).await.unwrap();
    assert!(store.is_participant_revoked(&arn, "a").await.unwrap());
    assert!(!store.is_participant_revoked(&other, "a").await.unwrap());
    store.close().await;
    drop(store);

    let store = SqliteStore::open(dir.path()).await.unwrap();
    assert!(
        store.is_participant_revoked(&arn, "a").await.unwrap(),
        "a revocation survives a restart"
    );
    let reason: Option<String> =
        sqlx::query_scalar("SELECT reason FROM revoked_participants WHERE participant_id = 'a'")
            .fetch_one(&store.reader)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("again"));
    store.delete_resource(&arn).await.unwrap();
    assert!(!store.is_participant_revoked(&arn, "a").await.unwrap());
    store.close().await;
}

#[tokio::test]
async fn start_up_closes_what_a_crash_left_open() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let arn = stage(&store, "stage0000001").await;
    let destination = stage(&store, "stage0000002").await;
    let mut source = participant("a", ParticipantState::Connected, 100, true);
    source.replication_type = ReplicationType::Source;
    source.replication_state = Some(ReplicationState::Active);
    store
        .write_live(
            &arn,
            &[
                LiveWrite::StartSession {
                    session_id: SESSION.into(),
                    start_time: 100,
                },
                upsert(source),
                upsert(participant("b", ParticipantState::Disconnected, 100, false)),
            ],
        )
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO participant_replicas (source_stage_arn, participant_id, source_session_id, destination_stage_arn,
             destination_session_id, replication_state) VALUES (?1, 'a', ?2, ?3, 'st-ddddddddddddd', 'ACTIVE')",
    )
    .bind(arn.to_string())
    .bind(SESSION)
    .bind(destination.to_string())
    .execute(&store.writer)
    .await
    .unwrap();

    let closed = store.close_interrupted_sessions(500).await.unwrap();
    assert_eq!(
        closed,
        InterruptedSessions {
            sessions: 1,
            participants: 1,
            replications: 1,
            recordings: vec![],
        }
    );
    assert_eq!(
        store
            .get_resource(&arn)
            .await
            .unwrap()
            .unwrap()
            .active_session_id,
        None
    );
    assert_eq!(
        store
            .get_session(&arn, SESSION)
            .await
            .unwrap()
            .unwrap()
            .end_time,
        Some(500)
    );
    let a = store
        .get_participant(&arn, SESSION, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.state, ParticipantState::Disconnected);
    assert_eq!(a.replication_state, Some(ReplicationState::Stopped));
    let events = store
        .list_events(&arn, SESSION, "a", None, 10)
        .await
        .unwrap();
    assert_eq!(events.items[0].name, EventName::Left);
    assert_eq!(events.items[0].event_time, 500);
    assert!(
        store
            .list_events(&arn, SESSION, "b", None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "b had left already"
    );
    let replicas = store.list_replicas(&arn, "a", None, 10).await.unwrap();
    assert_eq!(
        replicas.items[0].replication_state,
        ReplicationState::Stopped
    );

    // Nothing is left to close the second time.
    assert_eq!(
        store.close_interrupted_sessions(600).await.unwrap(),
        InterruptedSessions::default()
    );
}

fn start_replication(destination: &Arn, destination_session: &str) -> LiveWrite {
    LiveWrite::StartReplication {
        participant_id: "a".into(),
        source_session_id: SESSION.into(),
        destination_stage_arn: destination.to_string(),
        destination_session_id: destination_session.into(),
    }
}

fn stop_replication(destination: &Arn, reason: StopReason) -> LiveWrite {
    LiveWrite::StopReplication {
        participant_id: "a".into(),
        destination_stage_arn: destination.to_string(),
        reason,
    }
}

async fn reasons(store: &SqliteStore) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT reason FROM participant_replicas ORDER BY seq")
        .fetch_all(&store.reader)
        .await
        .unwrap()
}

#[tokio::test]
async fn replications_are_recorded_stopped_and_listed() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let source = stage(&store, "stage0000001").await;
    let b = stage(&store, "stage0000002").await;
    let c = stage(&store, "stage0000003").await;
    let start = LiveWrite::StartSession {
        session_id: SESSION.into(),
        start_time: 100,
    };
    let mut a = participant("a", ParticipantState::Connected, 100, true);
    a.replication_type = ReplicationType::Source;
    a.replication_state = Some(ReplicationState::Active);
    store
        .write_live(
            &source,
            &[
                start,
                upsert(a),
                start_replication(&b, "st-bbbbbbbbbbbbb"),
                start_replication(&c, "st-ccccccccccccc"),
            ],
        )
        .await
        .unwrap();
    // One ACTIVE replication per (source, participant, destination): a second is
    // refused, and its whole batch with it.
    assert!(
        store
            .write_live(
                &source,
                &[
                    event("a", "REPLICATION_STARTED", 101),
                    start_replication(&b, "st-bbbbbbbbbbbbb")
                ]
            )
            .await
            .is_err()
    );
    assert_eq!(
        store
            .list_events(&source, SESSION, "a", None, 10)
            .await
            .unwrap()
            .items
            .len(),
        0
    );

    store
        .write_live(
            &source,
            &[stop_replication(&b, StopReason::StoppedByRequest)],
        )
        .await
        .unwrap();
    // Stopping what is not active changes nothing.
    store
        .write_live(&source, &[stop_replication(&b, StopReason::ServerShutdown)])
        .await
        .unwrap();
    // The same destination again, after the stop.
    store
        .write_live(&source, &[start_replication(&b, "st-bbbbbbbbbbbb2")])
        .await
        .unwrap();

    let listed = store.list_replicas(&source, "a", None, 10).await.unwrap();
    let rows: Vec<(&str, &str, &str)> = listed
        .items
        .iter()
        .map(|r| {
            (
                r.destination_stage_arn.as_str(),
                r.destination_session_id.as_str(),
                r.replication_state.as_str(),
            )
        })
        .collect();
    let (b_arn, c_arn) = (b.to_string(), c.to_string());
    assert_eq!(
        rows,
        [
            (b_arn.as_str(), "st-bbbbbbbbbbbbb", "STOPPED"),
            (c_arn.as_str(), "st-ccccccccccccc", "ACTIVE"),
            (b_arn.as_str(), "st-bbbbbbbbbbbb2", "ACTIVE"),
        ]
    );
    assert!(
        listed
            .items
            .iter()
            .all(|r| r.source_session_id == SESSION && r.participant_id == "a")
    );
    assert_eq!(
        reasons(&store).await,
        [Some("StopParticipantReplication".to_owned()), None, None]
    );

    // Pages, oldest first.
    let first = store.list_replicas(&source, "a", None, 2).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let second = store
        .list_replicas(&source, "a", first.next, 2)
        .await
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.next, None);
    assert!(
        store
            .list_replicas(&source, "nobody", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Only the replication fields of the record change.
    store
        .write_live(
            &source,
            &[LiveWrite::SetReplicationState {
                session_id: SESSION.into(),
                participant_id: "a".into(),
                replication_type: ReplicationType::Source,
                replication_state: Some(ReplicationState::Stopped),
            }],
        )
        .await
        .unwrap();
    let a = store
        .get_participant(&source, SESSION, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.replication_type, a.replication_state),
        (ReplicationType::Source, Some(ReplicationState::Stopped))
    );
    assert_eq!(
        (a.state, a.published, a.user_id.as_deref()),
        (ParticipantState::Connected, true, Some("user-a"))
    );

    // A deleted destination's replications stay listed under the source...
    store.delete_resource(&c).await.unwrap();
    assert_eq!(
        store
            .list_replicas(&source, "a", None, 10)
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    // ...and a deleted source's go with it.
    store.delete_resource(&source).await.unwrap();
    assert!(
        store
            .list_replicas(&source, "a", None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn start_up_stops_the_replications_of_a_source_that_had_left() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let source = stage(&store, "stage0000001").await;
    let b = stage(&store, "stage0000002").await;
    // The publisher dropped inside its reconnect window: LEFT, but still ACTIVE.
    let mut a = participant("a", ParticipantState::Disconnected, 100, true);
    a.replication_type = ReplicationType::Source;
    a.replication_state = Some(ReplicationState::Active);
    store
        .write_live(
            &source,
            &[
                LiveWrite::StartSession {
                    session_id: SESSION.into(),
                    start_time: 100,
                },
                upsert(a),
                start_replication(&b, "st-bbbbbbbbbbbbb"),
            ],
        )
        .await
        .unwrap();
    let closed = store.close_interrupted_sessions(500).await.unwrap();
    assert_eq!(
        (closed.sessions, closed.participants, closed.replications),
        (1, 0, 1)
    );
    let a = store
        .get_participant(&source, SESSION, "a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.replication_state, Some(ReplicationState::Stopped));
    assert_eq!(
        reasons(&store).await,
        [Some(StopReason::ServerRestarted.as_str().to_owned())]
    );
    assert_eq!(
        store
            .list_replicas(&source, "a", None, 10)
            .await
            .unwrap()
            .items[0]
            .replication_state,
        ReplicationState::Stopped
    );
}
